//! Just enough X.509 (DER) for the simulated card's attestation: a
//! manufacturer CA, the card's attestation certificate (slot F9) that the
//! CA signs, and per-key attestation certificates the F9 key signs, in
//! the shape of YubiKey PIV attestation.

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha256};

const ECDSA_SHA256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
const COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];

fn der(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
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

/// A certificate for `subject_key` named `subject`, signed by
/// `issuer_key` as `issuer`. CA certificates carry basicConstraints CA.
pub fn certificate(
    subject: &str,
    subject_key: &p256::PublicKey,
    issuer: &str,
    issuer_key: &SigningKey,
    serial: &[u8],
    ca: bool,
) -> Result<Vec<u8>, String> {
    let spki = subject_key
        .to_public_key_der()
        .map_err(|e| format!("encoding a public key: {e}"))?;
    let mut serial = serial.to_vec();
    if serial.first().is_some_and(|b| b & 0x80 != 0) {
        serial.insert(0, 0);
    }
    let validity = sequence(&[
        &der(0x18, b"20250101000000Z"),
        &der(0x18, b"99991231235959Z"),
    ]);
    let mut parts: Vec<Vec<u8>> = vec![
        der(0xA0, &der(0x02, &[0x02])),
        der(0x02, &serial),
        sequence(&[ECDSA_SHA256]),
        name(issuer),
        validity,
        name(subject),
        spki.as_bytes().to_vec(),
    ];
    if ca {
        // basicConstraints (2.5.29.19), critical, cA TRUE.
        let basic = sequence(&[
            &[0x06, 0x03, 0x55, 0x1D, 0x13],
            &der(0x01, &[0xFF]),
            &der(0x04, &sequence(&[&der(0x01, &[0xFF])])),
        ]);
        parts.push(der(0xA3, &sequence(&[&basic])));
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let tbs = sequence(&refs);
    let digest: [u8; 32] = Sha256::digest(&tbs).into();
    let signature: DerSignature = issuer_key
        .sign_prehash(&digest)
        .map_err(|e| format!("signing a certificate: {e}"))?;
    let mut bits = vec![0x00];
    bits.extend_from_slice(signature.as_bytes());
    Ok(sequence(&[
        &tbs,
        &sequence(&[ECDSA_SHA256]),
        &der(0x03, &bits),
    ]))
}

/// PEM of a DER certificate.
pub fn pem(der: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
