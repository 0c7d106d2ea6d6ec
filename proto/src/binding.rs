//! The messages a device signs for the portal. Each is a domain-separation
//! label followed by length-prefixed fields, so no two messages of
//! different purpose or field split can collide. Signatures are ECDSA P-256
//! over SHA-256 of the message, DER-encoded.

use sha2::{Digest, Sha256};

fn message(purpose: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("fleetkey/{purpose}/v1").into_bytes();
    out.push(0);
    for field in fields {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

/// Signed by the device key when it redeems a device activation code.
pub fn activation_message(code: &str, device_public_key: &[u8]) -> Vec<u8> {
    message("activate", &[code.as_bytes(), device_public_key])
}

/// Signed by the device key to finish a TPM-attested activation: the
/// secret is what the device's TPM recovered from the portal's credential
/// challenge (TPM2_ActivateCredential).
pub fn tpm_activation_message(code: &str, device_public_key: &[u8], secret: &[u8]) -> Vec<u8> {
    message(
        "activate-tpm",
        &[code.as_bytes(), device_public_key, secret],
    )
}

/// The qualifying data of a user key's attestation (TPM2_Certify's
/// `qualifyingData`): SHA-256 of a message naming the enrollment, so a
/// certification made for one enrollment cannot be replayed for another.
pub fn key_attestation_nonce(device_id: &str, code: &str) -> [u8; 32] {
    digest(&message(
        "key-attestation",
        &[device_id.as_bytes(), code.as_bytes()],
    ))
}

/// Signed by both the new user key (proof of possession) and the device key.
pub fn enrollment_message(
    device_id: &str,
    code: &str,
    user_public_key: &[u8],
    backend: &str,
) -> Vec<u8> {
    message(
        "enroll",
        &[
            device_id.as_bytes(),
            code.as_bytes(),
            user_public_key,
            backend.as_bytes(),
        ],
    )
}

/// Signed by the device key to revoke a user's credential.
pub fn revocation_message(
    device_id: &str,
    user: &str,
    credential_id: &str,
    timestamp: i64,
) -> Vec<u8> {
    message(
        "revoke",
        &[
            device_id.as_bytes(),
            user.as_bytes(),
            credential_id.as_bytes(),
            &timestamp.to_be_bytes(),
        ],
    )
}

/// Signed by the device key to open its event stream with the portal: the
/// nonce is fresh from the portal, so a captured signature opens nothing.
pub fn device_stream_message(device_id: &str, nonce: &[u8]) -> Vec<u8> {
    message("device-stream", &[device_id.as_bytes(), nonce])
}

/// What a login challenge's answer says; the byte in the signed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    fn label(self) -> &'static [u8] {
        match self {
            Decision::Approve => b"approve",
            Decision::Deny => b"deny",
        }
    }
}

/// Signed to answer a login challenge (docs/approvals.md): by the user's
/// key for an approval, by the user's or the device key for a denial. It
/// names the challenge, its nonce, the SHA-256 of the context the device
/// showed, the number given, the decision and the device.
pub fn challenge_answer_message(
    challenge_id: &str,
    nonce: &[u8],
    context: &str,
    number: u32,
    decision: Decision,
    device_id: &str,
) -> Vec<u8> {
    let context_hash = digest(context.as_bytes());
    message(
        "challenge-answer",
        &[
            challenge_id.as_bytes(),
            nonce,
            &context_hash,
            &number.to_be_bytes(),
            decision.label(),
            device_id.as_bytes(),
        ],
    )
}

/// Signed by the device key to decommission the device at the portal.
pub fn deactivation_message(device_id: &str, timestamp: i64) -> Vec<u8> {
    message(
        "deactivate",
        &[device_id.as_bytes(), &timestamp.to_be_bytes()],
    )
}

/// Signed by the device key over the integrity evidence it submits.
pub fn integrity_submit_message(device_id: &str, evidence: &str) -> Vec<u8> {
    message(
        "integrity-submit",
        &[device_id.as_bytes(), evidence.as_bytes()],
    )
}

/// SHA-256 of a message: the digest that is signed.
pub fn digest(message: &[u8]) -> [u8; 32] {
    Sha256::digest(message).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cannot_shift() {
        assert_ne!(
            enrollment_message("ab", "c", b"k", "soft"),
            enrollment_message("a", "bc", b"k", "soft")
        );
        assert_ne!(
            activation_message("c", b"k"),
            revocation_message("c", "k", "", 0)
        );
        assert_ne!(
            tpm_activation_message("c", b"k", b""),
            activation_message("c", b"k")
        );
        assert_ne!(
            challenge_answer_message("c", b"n", "x", 42, Decision::Approve, "d"),
            challenge_answer_message("c", b"n", "x", 42, Decision::Deny, "d")
        );
        assert_ne!(
            challenge_answer_message("c", b"n", "x", 42, Decision::Approve, "d"),
            challenge_answer_message("c", b"n", "y", 42, Decision::Approve, "d")
        );
        assert_ne!(
            challenge_answer_message("c", b"n", "x", 42, Decision::Approve, "d"),
            challenge_answer_message("c", b"n", "x", 43, Decision::Approve, "d")
        );
        assert_ne!(
            device_stream_message("ab", b"c"),
            device_stream_message("a", b"bc")
        );
        assert_ne!(
            key_attestation_nonce("ab", "c"),
            key_attestation_nonce("a", "bc")
        );
    }
}
