//! A minimal self-signed X.509 certificate for a key made on a card.
//!
//! PIV middleware (OpenSC, Windows, macOS) finds a slot's key through the
//! certificate stored beside it, as `yubico-piv-tool selfsign` and
//! `ykman piv` do after generating a key. fleetkey writes one too, so the
//! slot is visibly in use, and other tools see the key.

use sha2::{Digest, Sha256};

/// ecdsa-with-SHA256 (1.2.840.10045.4.3.2).
const ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
/// commonName (2.5.4.3).
const COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];

fn der(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    crate::apdu::push_len(&mut out, value.len());
    out.extend_from_slice(value);
    out
}

fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    der(0x30, &parts.concat())
}

fn name(common_name: &str) -> Vec<u8> {
    let attribute = sequence(&[COMMON_NAME, &der(0x0C, common_name.as_bytes())]);
    sequence(&[&der(0x31, &attribute)])
}

/// Civil date (UTC) of a Unix time, as GeneralizedTime text.
fn generalized_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Days to civil date (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The to-be-signed part: subject = issuer = `common_name`, valid from
/// `now` to the end of 9999 (RFC 5280's "no expiry").
pub fn tbs_certificate(common_name: &str, spki_der: &[u8], serial: &[u8; 16], now: i64) -> Vec<u8> {
    let mut serial = serial.to_vec();
    serial[0] &= 0x7F;
    serial[0] |= 0x01;
    let version = der(0xA0, &der(0x02, &[0x02]));
    let validity = sequence(&[
        &der(0x18, generalized_time(now).as_bytes()),
        &der(0x18, b"99991231235959Z"),
    ]);
    let name = name(common_name);
    sequence(&[
        &version,
        &der(0x02, &serial),
        &sequence(&[ECDSA_SHA256]),
        &name,
        &validity,
        &name,
        spki_der,
    ])
}

/// SHA-256 of what the card must sign.
pub fn tbs_digest(tbs: &[u8]) -> [u8; 32] {
    Sha256::digest(tbs).into()
}

/// The certificate, given the card's DER signature over the TBS digest.
pub fn certificate(tbs: &[u8], signature_der: &[u8]) -> Vec<u8> {
    let mut bits = vec![0x00];
    bits.extend_from_slice(signature_der);
    sequence(&[tbs, &sequence(&[ECDSA_SHA256]), &der(0x03, &bits)])
}

/// PIV's certificate object: the certificate, CertInfo 0 (not
/// compressed), an empty error detection code.
pub fn piv_certificate_object(certificate: &[u8]) -> Vec<u8> {
    let mut object = crate::apdu::tlv(&[0x70], certificate);
    object.extend(crate::apdu::tlv(&[0x71], &[0x00]));
    object.extend(crate::apdu::tlv(&[0xFE], &[]));
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(generalized_time(0), "19700101000000Z");
        assert_eq!(generalized_time(951_782_400), "20000229000000Z");
        assert_eq!(generalized_time(1_795_921_959), "20261129031239Z");
    }

    #[test]
    fn a_signed_certificate_parses_with_p256() {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        use p256::ecdsa::{DerSignature, SigningKey};
        use p256::elliptic_curve::Generate;
        use p256::pkcs8::EncodePublicKey;
        let key = SigningKey::try_generate().unwrap();
        let spki = key.verifying_key().to_public_key_der().unwrap();
        let tbs = tbs_certificate(
            "fleetkey alice",
            spki.as_bytes(),
            &[0xFF; 16],
            1_795_921_959,
        );
        let signature: DerSignature = key.sign_prehash(&tbs_digest(&tbs)).unwrap();
        let cert = certificate(&tbs, signature.as_bytes());
        // Outer SEQUENCE spans the whole certificate.
        let parsed = crate::apdu::parse_tlvs(&cert).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, vec![0x30]);
        let parts = crate::apdu::parse_tlvs(parsed[0].1).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].1, &tbs[tbs.len() - parts[0].1.len()..]);
    }
}
