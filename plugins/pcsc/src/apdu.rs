//! APDUs (ISO 7816-4) and BER-TLV, as PIV uses them: short APDUs with
//! command chaining for long data, `61 XX` / GET RESPONSE for long
//! answers.

/// A status word.
pub type StatusWord = u16;

pub const SW_OK: StatusWord = 0x9000;
pub const SW_SECURITY_NOT_SATISFIED: StatusWord = 0x6982;
pub const SW_AUTH_BLOCKED: StatusWord = 0x6983;
pub const SW_NOT_FOUND: StatusWord = 0x6A82;
pub const SW_INS_NOT_SUPPORTED: StatusWord = 0x6D00;

/// Whether a status word is "wrong secret, X tries left" (63 CX).
pub fn tries_left(sw: StatusWord) -> Option<u32> {
    (sw & 0xFFF0 == 0x63C0).then_some(u32::from(sw & 0x000F))
}

/// A card answer: data and status word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub data: Vec<u8>,
    pub sw: StatusWord,
}

impl Response {
    pub fn parse(raw: &[u8]) -> Option<Response> {
        let split = raw.len().checked_sub(2)?;
        let sw = u16::from_be_bytes([raw[split], raw[split + 1]]);
        Some(Response {
            data: raw[..split].to_vec(),
            sw,
        })
    }
}

/// Short command APDUs for `data`, chained (CLA bit 0x10) when it is
/// longer than 255 bytes. Every APDU asks for up to 256 bytes back.
pub fn chained(cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8]) -> Vec<Vec<u8>> {
    let mut apdus = Vec::new();
    let mut chunks: Vec<&[u8]> = data.chunks(255).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let cla = if i < last { cla | 0x10 } else { cla };
        let mut apdu = vec![cla, ins, p1, p2];
        if !chunk.is_empty() {
            apdu.push(chunk.len() as u8);
            apdu.extend_from_slice(chunk);
        }
        apdu.push(0x00);
        apdus.push(apdu);
    }
    apdus
}

/// GET RESPONSE for the `61 XX` continuation.
pub fn get_response(le: u8) -> Vec<u8> {
    vec![0x00, 0xC0, 0x00, 0x00, le]
}

/// BER-TLV length.
pub fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
}

/// A BER-TLV object.
pub fn tlv(tag: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = tag.to_vec();
    push_len(&mut out, value.len());
    out.extend_from_slice(value);
    out
}

/// Splits a sequence of BER-TLV objects into (tag, value) pairs; None when
/// the encoding is broken.
pub fn parse_tlvs(mut data: &[u8]) -> Option<Vec<(Vec<u8>, &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let mut tag_len = 1;
        if data[0] & 0x1F == 0x1F {
            tag_len += 1;
            while *data.get(tag_len - 1)? & 0x80 != 0 {
                tag_len += 1;
            }
        }
        let tag = data.get(..tag_len)?.to_vec();
        let rest = &data[tag_len..];
        let (len, header) = match *rest.first()? {
            n if n < 0x80 => (usize::from(n), 1),
            0x81 => (usize::from(*rest.get(1)?), 2),
            0x82 => (
                usize::from(*rest.get(1)?) << 8 | usize::from(*rest.get(2)?),
                3,
            ),
            _ => return None,
        };
        let value = rest.get(header..header + len)?;
        out.push((tag, value));
        data = &rest[header + len..];
    }
    Some(out)
}

/// The value of the first object with `tag`.
pub fn find<'a>(data: &'a [u8], tag: &[u8]) -> Option<&'a [u8]> {
    parse_tlvs(data)?
        .into_iter()
        .find(|(t, _)| t.as_slice() == tag)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_round_trip_with_long_lengths() {
        for len in [0usize, 1, 127, 128, 255, 256, 1000] {
            let value = vec![0xAB; len];
            let encoded = tlv(&[0x5F, 0xC1, 0x05], &value);
            let parsed = parse_tlvs(&encoded).unwrap();
            assert_eq!(parsed, vec![(vec![0x5F, 0xC1, 0x05], value.as_slice())]);
        }
        assert!(parse_tlvs(&[0x53, 0x05, 1, 2]).is_none());
        assert!(parse_tlvs(&[0x53, 0x84, 0, 0, 0, 1]).is_none());
    }

    #[test]
    fn long_data_is_chained() {
        let apdus = chained(0x00, 0xDB, 0x3F, 0xFF, &[7u8; 600]);
        assert_eq!(apdus.len(), 3);
        assert_eq!(apdus[0][0], 0x10);
        assert_eq!(apdus[1][0], 0x10);
        assert_eq!(apdus[2][0], 0x00);
        assert_eq!(apdus[0][4], 255);
        assert_eq!(apdus[2][4], 90);
        assert_eq!(chained(0, 0xFD, 0, 0, &[]), vec![vec![0, 0xFD, 0, 0, 0]]);
    }

    #[test]
    fn status_words() {
        assert_eq!(tries_left(0x63C2), Some(2));
        assert_eq!(tries_left(0x6983), None);
        let response = Response::parse(&[1, 2, 0x90, 0x00]).unwrap();
        assert_eq!((response.data, response.sw), (vec![1, 2], SW_OK));
        assert!(Response::parse(&[0x90]).is_none());
    }
}
