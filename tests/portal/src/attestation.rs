//! PIV key attestation (YubiKey style), checked against the roots the
//! portal was configured with (`serve --piv-attestation-roots FILE`).
//!
//! The device sends, one after the other, two DER certificates: the key's
//! attestation certificate (its public key is the user's key), signed by
//! the card's attestation key (slot F9), and that key's certificate,
//! signed by the card's maker. The chain verifies when the first holds
//! the user's key, the second's key signed the first, and a configured
//! root's key signed the second. All signatures are ECDSA P-256 with
//! SHA-256.

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

/// The attestation format this module checks.
pub const PIV_ATTESTATION: &str = "piv-attestation";

/// The parts of an X.509 certificate the chain check needs.
struct Certificate<'a> {
    tbs: &'a [u8],
    spki: &'a [u8],
    signature: &'a [u8],
}

/// One DER element: (tag, whole element, contents, rest).
type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

fn element(data: &[u8]) -> Option<Element<'_>> {
    let tag = *data.first()?;
    let first = *data.get(1)?;
    let (len, header): (usize, usize) = match first {
        n if n < 0x80 => (usize::from(n), 2),
        0x81 => (usize::from(*data.get(2)?), 3),
        0x82 => (
            usize::from(*data.get(2)?) << 8 | usize::from(*data.get(3)?),
            4,
        ),
        _ => return None,
    };
    let end = header.checked_add(len)?;
    let whole = data.get(..end)?;
    Some((tag, whole, &whole[header..], &data[end..]))
}

/// Parses a certificate; returns it and what follows it.
fn parse(data: &[u8]) -> Option<(Certificate<'_>, &[u8])> {
    let (tag, _, body, rest) = element(data)?;
    if tag != 0x30 {
        return None;
    }
    let (tbs_tag, tbs, tbs_body, after_tbs) = element(body)?;
    let (_, _, _, after_alg) = element(after_tbs)?;
    let (sig_tag, _, bits, _) = element(after_alg)?;
    if tbs_tag != 0x30 || sig_tag != 0x03 || bits.first() != Some(&0) {
        return None;
    }
    // version [0], serial, signature algorithm, issuer, validity, subject,
    // subjectPublicKeyInfo.
    let mut fields = tbs_body;
    let mut spki = None;
    for index in 0..7 {
        let (tag, whole, _, rest) = element(fields)?;
        if index == 0 && tag != 0xA0 {
            return None;
        }
        if index == 6 {
            spki = Some(whole);
        }
        fields = rest;
    }
    Some((
        Certificate {
            tbs,
            spki: spki?,
            signature: &bits[1..],
        },
        rest,
    ))
}

fn signed_by(cert: &Certificate<'_>, issuer_spki: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_public_key_der(issuer_spki) else {
        return false;
    };
    let Ok(signature) = Signature::from_der(cert.signature) else {
        return false;
    };
    key.verify(cert.tbs, &signature).is_ok()
}

/// The public keys (SubjectPublicKeyInfo DER) of the root certificates in
/// a PEM file.
pub fn roots_from_pem(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut roots = Vec::new();
    let mut inside: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match (line, inside.as_mut()) {
            ("-----BEGIN CERTIFICATE-----", None) => inside = Some(String::new()),
            ("-----END CERTIFICATE-----", Some(body)) => {
                let der = base64_decode(body).ok_or("a certificate is not valid base64")?;
                let (cert, _) = parse(&der).ok_or("a certificate is not valid X.509 DER")?;
                roots.push(cert.spki.to_vec());
                inside = None;
            }
            (line, Some(body)) => body.push_str(line),
            _ => {}
        }
    }
    if roots.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(roots)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(value(*c)?) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// Checks a PIV attestation of `user_key` (SubjectPublicKeyInfo DER)
/// against `roots`; the error says which link fails.
pub fn verify(data: &[u8], user_key: &[u8], roots: &[Vec<u8>]) -> Result<(), String> {
    let (attested, rest) = parse(data).ok_or("the key's attestation certificate is malformed")?;
    let (intermediate, rest) =
        parse(rest).ok_or("the card's attestation (F9) certificate is malformed")?;
    if !rest.is_empty() {
        return Err("unexpected data after the two certificates".into());
    }
    let attested_key = VerifyingKey::from_public_key_der(attested.spki)
        .map_err(|_| "the attested key is not a P-256 key")?;
    let user_key =
        VerifyingKey::from_public_key_der(user_key).map_err(|_| "the user key is not P-256")?;
    if attested_key != user_key {
        return Err("the attestation certifies another key than the one enrolled".into());
    }
    if !signed_by(&attested, intermediate.spki) {
        return Err("the card's attestation key did not sign the key's certificate".into());
    }
    if !roots.iter().any(|root| signed_by(&intermediate, root)) {
        return Err("the card's attestation certificate is not signed by a trusted root".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert!(base64_decode("a*==").is_none());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(verify(b"", b"", &[]).is_err());
        assert!(verify(&[0x30, 0x03, 0x02, 0x01, 0x01], b"", &[]).is_err());
        assert!(roots_from_pem("nothing").is_err());
    }
}
