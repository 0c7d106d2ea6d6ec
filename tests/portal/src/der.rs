//! Just enough DER and X.509 to check certificate chains: elements,
//! certificates (to-be-signed part, names, public key, signature), PEM
//! bundles, and the two signature algorithms the portal accepts
//! (sha256WithRSAEncryption and ecdsa-with-SHA256 on P-256).
//!
//! Everything here refuses malformed input with `None` or an error and
//! never panics: the input comes from devices.

use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

/// 1.2.840.113549.1.1.11
pub const OID_SHA256_WITH_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B];
/// 1.2.840.10045.4.3.2
pub const OID_ECDSA_WITH_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
/// 1.2.840.113549.1.1.1
pub const OID_RSA_ENCRYPTION: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];

/// One DER element: (tag, whole element, contents, rest).
pub type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// The first element of `data` and what follows it.
pub fn element(data: &[u8]) -> Option<Element<'_>> {
    let tag = *data.first()?;
    let first = *data.get(1)?;
    let (len, header): (usize, usize) = match first {
        n if n < 0x80 => (usize::from(n), 2),
        0x81 => (usize::from(*data.get(2)?), 3),
        0x82 => (
            usize::from(*data.get(2)?) << 8 | usize::from(*data.get(3)?),
            4,
        ),
        0x83 => (
            usize::from(*data.get(2)?) << 16
                | usize::from(*data.get(3)?) << 8
                | usize::from(*data.get(4)?),
            5,
        ),
        _ => return None,
    };
    let end = header.checked_add(len)?;
    let whole = data.get(..end)?;
    Some((tag, whole, whole.get(header..)?, data.get(end..)?))
}

/// The contents of the element of `tag` at the start of `data`, and the rest.
fn expect(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, _, contents, rest) = element(data)?;
    (found == tag).then_some((contents, rest))
}

/// The parts of an X.509 certificate a chain check needs.
#[derive(Debug, Clone, Copy)]
pub struct Certificate<'a> {
    /// The whole certificate's DER.
    pub der: &'a [u8],
    /// The signed part (TBSCertificate), whole element.
    pub tbs: &'a [u8],
    /// The outer signature algorithm's OID (contents).
    pub signature_algorithm: &'a [u8],
    /// The signature (BIT STRING contents without the unused-bits byte).
    pub signature: &'a [u8],
    /// Issuer Name, whole element.
    pub issuer: &'a [u8],
    /// Subject Name, whole element.
    pub subject: &'a [u8],
    /// SubjectPublicKeyInfo, whole element.
    pub spki: &'a [u8],
}

impl Certificate<'_> {
    /// Whether the certificate names itself as its issuer.
    pub fn self_issued(&self) -> bool {
        self.issuer == self.subject
    }
}

/// Parses a certificate; returns it and what follows it.
pub fn certificate(data: &[u8]) -> Option<(Certificate<'_>, &[u8])> {
    let (tag, der, body, rest) = element(data)?;
    if tag != 0x30 {
        return None;
    }
    let (tbs_tag, tbs, tbs_body, after_tbs) = element(body)?;
    let (alg, after_alg) = expect(after_tbs, 0x30)?;
    let (signature_algorithm, _) = expect(alg, 0x06)?;
    let (bits, _) = expect(after_alg, 0x03)?;
    if tbs_tag != 0x30 || bits.first() != Some(&0) {
        return None;
    }
    // version [0], serial, signature algorithm, issuer, validity, subject,
    // subjectPublicKeyInfo.
    let mut fields = tbs_body;
    let mut parts: [&[u8]; 7] = [&[]; 7];
    for (index, part) in parts.iter_mut().enumerate() {
        let (tag, whole, _, rest) = element(fields)?;
        if index == 0 && tag != 0xA0 {
            return None;
        }
        *part = whole;
        fields = rest;
    }
    let [_, _, _, issuer, _, subject, spki] = parts;
    Some((
        Certificate {
            der,
            tbs,
            signature_algorithm,
            signature: bits.get(1..)?,
            issuer,
            subject,
            spki,
        },
        rest,
    ))
}

/// The DER certificates of a PEM file, in order. Each block is decoded by
/// `pem-rfc7468` (strict RFC 7468 base64); blocks with another label than
/// CERTIFICATE are skipped, and text between blocks is ignored.
pub fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, String> {
    const BEGIN: &str = "-----BEGIN ";
    const END: &str = "-----END ";
    let mut certificates = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let block = rest.get(start..).unwrap_or_default();
        let end = block
            .find(END)
            .ok_or("a PEM block has no END line (-----END CERTIFICATE-----)")?;
        let after_end = block.get(end..).unwrap_or_default();
        let end_line = after_end.find('\n').map_or(after_end.len(), |i| i + 1);
        let (pem, next) = block
            .split_at_checked(end + end_line)
            .unwrap_or((block, ""));
        rest = next;
        let number = certificates.len() + 1;
        let (label, der) = pem_rfc7468::decode_vec(pem.trim_end().as_bytes())
            .map_err(|e| format!("PEM block {number} is not valid PEM: {e}"))?;
        if label != "CERTIFICATE" {
            continue;
        }
        match certificate(&der) {
            Some((_, [])) => {}
            _ => return Err(format!("certificate {number} is not valid X.509 DER")),
        }
        certificates.push(der);
    }
    if certificates.is_empty() {
        return Err("no certificate in the file".into());
    }
    Ok(certificates)
}

/// An OID's dotted text, e.g. `1.2.840.113549.1.1.5`.
pub fn oid_text(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    for byte in oid {
        value = value.saturating_mul(128) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A Name as text, e.g. `CN=swtpm-localca,O=Example`, for people.
pub fn name_text(name: &[u8]) -> String {
    let mut parts = Vec::new();
    let Some((mut sets, _)) = expect(name, 0x30) else {
        return "(unreadable name)".into();
    };
    while let Some((set, rest)) = expect(sets, 0x31) {
        sets = rest;
        let mut attributes = set;
        while let Some((attribute, rest)) = expect(attributes, 0x30) {
            attributes = rest;
            let Some((oid, value)) = expect(attribute, 0x06) else {
                continue;
            };
            let Some((_, _, text, _)) = element(value) else {
                continue;
            };
            let label = match oid {
                [0x55, 0x04, 0x03] => "CN".to_string(),
                [0x55, 0x04, 0x06] => "C".to_string(),
                [0x55, 0x04, 0x0A] => "O".to_string(),
                [0x55, 0x04, 0x0B] => "OU".to_string(),
                other => oid_text(other),
            };
            parts.push(format!("{label}={}", String::from_utf8_lossy(text)));
        }
    }
    if parts.is_empty() {
        "(empty name)".into()
    } else {
        parts.join(",")
    }
}

/// The algorithm OID and the key bits of a SubjectPublicKeyInfo.
fn spki_parts(spki: &[u8]) -> Option<(&[u8], &[u8])> {
    let (body, _) = expect(spki, 0x30)?;
    let (algorithm, rest) = expect(body, 0x30)?;
    let (oid, _) = expect(algorithm, 0x06)?;
    let (bits, _) = expect(rest, 0x03)?;
    if bits.first() != Some(&0) {
        return None;
    }
    Some((oid, bits.get(1..)?))
}

/// An INTEGER's magnitude without leading zero bytes.
fn unsigned(integer: &[u8]) -> &[u8] {
    let start = integer
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(integer.len());
    integer.get(start..).unwrap_or_default()
}

/// The modulus and public exponent (big-endian, no leading zeros) of an
/// RSA SubjectPublicKeyInfo.
pub fn rsa_public_key(spki: &[u8]) -> Option<(&[u8], &[u8])> {
    let (oid, key) = spki_parts(spki)?;
    if oid != OID_RSA_ENCRYPTION {
        return None;
    }
    let (sequence, _) = expect(key, 0x30)?;
    let (modulus, rest) = expect(sequence, 0x02)?;
    let (exponent, _) = expect(rest, 0x02)?;
    Some((unsigned(modulus), unsigned(exponent)))
}

/// Checks that `issuer_spki` signed `cert`; the error says why not.
pub fn check_signature(cert: &Certificate<'_>, issuer_spki: &[u8]) -> Result<(), String> {
    match cert.signature_algorithm {
        OID_SHA256_WITH_RSA => {
            let (modulus, exponent) =
                rsa_public_key(issuer_spki).ok_or("the issuer's key is not an RSA key")?;
            let key = rsa::PublicKey::new(
                rsa_uint(modulus).ok_or("the issuer's RSA modulus is unusable")?,
                rsa_uint(exponent).ok_or("the issuer's RSA exponent is unusable")?,
            )
            .map_err(|e| format!("the issuer's RSA key is unusable: {e}"))?;
            key.pkcs1v15_verify_prehash::<Sha256>(&Sha256::digest(cert.tbs), cert.signature)
                .map_err(|_| "the RSA signature does not verify".to_string())
        }
        OID_ECDSA_WITH_SHA256 => {
            let key = p256::ecdsa::VerifyingKey::from_public_key_der(issuer_spki)
                .map_err(|_| "the issuer's key is not a P-256 key")?;
            let signature = p256::ecdsa::Signature::from_der(cert.signature)
                .map_err(|_| "the ECDSA signature is malformed")?;
            key.verify(cert.tbs, &signature)
                .map_err(|_| "the ECDSA signature does not verify".to_string())
        }
        other => Err(format!(
            "signature algorithm {} is not supported (only sha256WithRSAEncryption and ecdsa-with-SHA256)",
            oid_text(other)
        )),
    }
}

/// A big-endian unsigned integer for the `rsa` crate.
pub fn rsa_uint(bytes: &[u8]) -> Option<rsa::BoxedUint> {
    let bytes = unsigned(bytes);
    if bytes.is_empty() || bytes.len() > 1024 {
        return None;
    }
    let bits = u32::try_from(bytes.len().checked_mul(8)?).ok()?;
    rsa::BoxedUint::from_be_slice(bytes, bits).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bundles_are_read_block_by_block() {
        assert!(pem_certificates("nothing").is_err());
        // Bad base64 inside a block.
        let bad = "-----BEGIN CERTIFICATE-----\na*==\n-----END CERTIFICATE-----\n";
        assert!(pem_certificates(bad).unwrap_err().contains("not valid PEM"));
        let unterminated = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(pem_certificates(unterminated).unwrap_err().contains("END"));
        // Valid base64 that is not a certificate.
        let not_x509 = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(pem_certificates(not_x509).unwrap_err().contains("X.509"));
    }

    #[test]
    fn oids_read_as_text() {
        assert_eq!(oid_text(OID_SHA256_WITH_RSA), "1.2.840.113549.1.1.11");
        assert_eq!(oid_text(OID_ECDSA_WITH_SHA256), "1.2.840.10045.4.3.2");
    }

    #[test]
    fn elements_refuse_truncation() {
        assert!(element(&[0x30]).is_none());
        assert!(element(&[0x30, 0x03, 0x01]).is_none());
        assert!(element(&[0x30, 0x81]).is_none());
        assert!(element(&[0x30, 0x84, 0, 0, 0, 1, 0]).is_none());
        let (tag, whole, contents, rest) = element(&[0x04, 0x01, 0xAA, 0xBB]).unwrap();
        assert_eq!(
            (tag, whole, contents, rest),
            (4, &[4, 1, 0xAA][..], &[0xAA][..], &[0xBB][..])
        );
        assert!(certificate(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_none());
    }
}
