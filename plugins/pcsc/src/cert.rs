//! A minimal self-signed X.509 certificate for a key made on a card.
//!
//! PIV middleware (OpenSC, Windows, macOS) finds a slot's key through the
//! certificate stored beside it, as `yubico-piv-tool selfsign` and
//! `ykman piv` do after generating a key. fleetkey writes one too, so the
//! slot is visibly in use, and other tools see the key.
//!
//! The card signs, so the certificate is built in two steps: the
//! to-be-signed part, then the certificate around the card's signature.
//! Both are encoded with the RustCrypto `der` family (x509-cert's name,
//! serial number and validity types; `der`'s calendar).

use std::str::FromStr;
use std::time::Duration;

use der::asn1::BitStringRef;
use der::oid::db::rfc5912::ECDSA_WITH_SHA_256;
use der::{AnyRef, DateTime, Encode, Sequence};
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierRef;
use x509_cert::Version;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

/// TBSCertificate (RFC 5280 4.1) as fleetkey writes it: v3, no
/// extensions, issuer = subject.
#[derive(Sequence)]
struct TbsCertificate<'a> {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    version: Version,
    serial_number: SerialNumber,
    signature: AlgorithmIdentifierRef<'a>,
    issuer: Name,
    validity: Validity,
    subject: Name,
    /// Already DER (SubjectPublicKeyInfo).
    subject_public_key_info: AnyRef<'a>,
}

/// Certificate (RFC 5280 4.1) around an encoded TBSCertificate.
#[derive(Sequence)]
struct Certificate<'a> {
    tbs_certificate: AnyRef<'a>,
    signature_algorithm: AlgorithmIdentifierRef<'a>,
    signature: BitStringRef<'a>,
}

const ECDSA_SHA256: AlgorithmIdentifierRef<'static> = AlgorithmIdentifierRef {
    oid: ECDSA_WITH_SHA_256,
    parameters: None,
};

/// The to-be-signed part: subject = issuer = `CN=common_name`, valid from
/// `now` (Unix time) to the end of 9999 (RFC 5280's "no expiry").
pub fn tbs_certificate(
    common_name: &str,
    spki_der: &[u8],
    serial: &[u8; 16],
    now: u64,
) -> der::Result<Vec<u8>> {
    // A positive serial number without a leading zero byte.
    let mut serial = *serial;
    serial[0] &= 0x7F;
    serial[0] |= 0x01;
    let name = Name::from_str(&format!("CN={}", escape_rdn(common_name)))?;
    // UTCTime through 2049, GeneralizedTime after (RFC 5280 4.1.2.5).
    let not_before = Time::from(DateTime::from_unix_duration(Duration::from_secs(now))?);
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial)?,
        signature: ECDSA_SHA256,
        issuer: name.clone(),
        validity: Validity::new(not_before, Time::INFINITY),
        subject: name,
        subject_public_key_info: AnyRef::try_from(spki_der)?,
    };
    tbs.to_der()
}

/// RFC 4514 escaping of an attribute value.
fn escape_rdn(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i + 1 == value.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// SHA-256 of what the card must sign.
pub fn tbs_digest(tbs: &[u8]) -> [u8; 32] {
    Sha256::digest(tbs).into()
}

/// The certificate, given the card's DER signature over the TBS digest.
pub fn certificate(tbs: &[u8], signature_der: &[u8]) -> der::Result<Vec<u8>> {
    Certificate {
        tbs_certificate: AnyRef::try_from(tbs)?,
        signature_algorithm: ECDSA_SHA256,
        signature: BitStringRef::from_bytes(signature_der)?,
    }
    .to_der()
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
    use der::Decode;

    fn signed(now: u64) -> (Vec<u8>, p256::ecdsa::VerifyingKey) {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        use p256::ecdsa::{DerSignature, SigningKey};
        use p256::elliptic_curve::Generate;
        use p256::pkcs8::EncodePublicKey;
        let key = SigningKey::try_generate().unwrap();
        let spki = key.verifying_key().to_public_key_der().unwrap();
        let tbs =
            tbs_certificate("fleetkey u-1, \"x\"", spki.as_bytes(), &[0xFF; 16], now).unwrap();
        let signature: DerSignature = key.sign_prehash(&tbs_digest(&tbs)).unwrap();
        (
            certificate(&tbs, signature.as_bytes()).unwrap(),
            *key.verifying_key(),
        )
    }

    #[test]
    fn a_signed_certificate_parses_and_verifies() {
        use p256::ecdsa::signature::Verifier;
        use p256::ecdsa::{DerSignature, VerifyingKey};
        use p256::pkcs8::DecodePublicKey;
        let (der, key) = signed(1_795_921_959);
        let cert = x509_cert::Certificate::from_der(&der).unwrap();
        let tbs = cert.tbs_certificate();
        assert_eq!(tbs.version(), Version::V3);
        assert_eq!(tbs.subject(), tbs.issuer());
        assert_eq!(tbs.subject().to_string(), "CN=fleetkey u-1\\, \\\"x\\\"");
        assert_eq!(tbs.serial_number().as_bytes()[0], 0x7F);
        assert_eq!(cert.signature_algorithm().oid, ECDSA_WITH_SHA_256);
        // Dates: UTCTime now, GeneralizedTime 9999-12-31 23:59:59.
        let validity = tbs.validity();
        assert!(matches!(validity.not_before, Time::UtcTime(_)));
        assert_eq!(validity.not_before.to_string(), "2026-11-29T03:12:39Z");
        assert_eq!(validity.not_after.to_string(), "9999-12-31T23:59:59Z");
        // The key in it is ours, and the signature verifies with it.
        let spki = tbs.subject_public_key_info().to_der().unwrap();
        assert_eq!(VerifyingKey::from_public_key_der(&spki).unwrap(), key);
        let signature = DerSignature::from_bytes(cert.signature().raw_bytes()).unwrap();
        let tbs_der = tbs.to_der().unwrap();
        key.verify(&tbs_der, &signature).unwrap();
    }

    #[test]
    fn dates_past_2049_are_generalized_time() {
        // 2050-01-01T00:00:00Z.
        let (der, _) = signed(2_524_608_000);
        let cert = x509_cert::Certificate::from_der(&der).unwrap();
        let not_before = cert.tbs_certificate().validity().not_before;
        assert!(matches!(not_before, Time::GeneralTime(_)), "{not_before:?}");
        assert_eq!(not_before.to_string(), "2050-01-01T00:00:00Z");
    }
}
