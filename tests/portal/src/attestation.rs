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

use crate::der::{Certificate, certificate, pem_certificates};

fn parse(data: &[u8]) -> Option<(Certificate<'_>, &[u8])> {
    certificate(data)
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
    pem_certificates(text)?
        .iter()
        .map(|der| {
            parse(der)
                .map(|(cert, _)| cert.spki.to_vec())
                .ok_or_else(|| "a certificate is not valid X.509 DER".to_string())
        })
        .collect()
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
    fn garbage_is_refused() {
        assert!(verify(b"", b"", &[]).is_err());
        assert!(verify(&[0x30, 0x03, 0x02, 0x01, 0x01], b"", &[]).is_err());
        assert!(roots_from_pem("nothing").is_err());
    }
}
