//! User keys: their template, the blob the daemon stores, and conversion
//! of TPM public keys and signatures to the standard encodings.
//!
//! # Key blob format, version 1
//!
//! The `key_ref` of a TPM key is the key's public and private areas as the
//! TPM returned them from TPM2_Create. The private area is encrypted and
//! integrity-protected by the storage key of the TPM that made it, so the
//! blob is useless on any other TPM (TPM2_Load there fails its integrity
//! check). Integers are big-endian.
//!
//! | length | field |
//! | ---: | --- |
//! | 4 | magic, ASCII `FKTP` |
//! | 1 | format version, `0x01` |
//! | 2 | length `n` of the public area |
//! | n | TPM2B_PUBLIC contents, marshalled (TPMT_PUBLIC) |
//! | 2 | length `m` of the private area |
//! | m | TPM2B_PRIVATE contents |

use p256::pkcs8::EncodePublicKey;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{
    EccPoint, EccScheme, HashScheme, Private, Public, PublicBuilder, PublicEccParametersBuilder,
    Signature,
};
use tss_esapi::traits::{Marshall, UnMarshall};

use crate::error::TpmError;

const MAGIC: &[u8; 4] = b"FKTP";
const VERSION: u8 = 1;

/// The template of a user key: ECC P-256, ECDSA with SHA-256, signing
/// only, made inside this TPM (sensitiveDataOrigin) and never leaving it
/// (fixedTPM, fixedParent), used with its authorization value (the PIN,
/// userWithAuth) under the TPM's dictionary-attack protection (no noDA).
pub fn user_key_template() -> Result<Public, TpmError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(false)
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()
        .map_err(TpmError::Structure)?;
    let parameters = PublicEccParametersBuilder::new_unrestricted_signing_key(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
    .build()
    .map_err(TpmError::Structure)?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
        .map_err(TpmError::Structure)
}

/// A key's public and private areas.
#[derive(Debug)]
pub struct KeyBlob {
    pub public: Public,
    pub private: Private,
}

impl KeyBlob {
    pub fn encode(&self) -> Result<Vec<u8>, TpmError> {
        let public = self.public.marshall().map_err(TpmError::Structure)?;
        let private = self.private.value();
        let mut out = Vec::with_capacity(9 + public.len() + private.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        for part in [public.as_slice(), private] {
            let len = u16::try_from(part.len())
                .map_err(|_| TpmError::Unexpected("key area over 64 KiB".into()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyBlob, TpmError> {
        let bad = |what: &str| TpmError::BadBlob(what.to_string());
        let rest = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("not a fleetkey TPM key blob (wrong magic)"))?;
        let (&version, rest) = rest.split_first().ok_or_else(|| bad("truncated"))?;
        if version != VERSION {
            return Err(TpmError::BadBlob(format!(
                "format version {version} is not known to this fleetkeyd"
            )));
        }
        let (public, rest) = take_part(rest).ok_or_else(|| bad("truncated public area"))?;
        let (private, rest) = take_part(rest).ok_or_else(|| bad("truncated private area"))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let public = Public::unmarshall(public)
            .map_err(|e| TpmError::BadBlob(format!("public area: {e}")))?;
        let private = Private::try_from(private.to_vec())
            .map_err(|e| TpmError::BadBlob(format!("private area: {e}")))?;
        Ok(KeyBlob { public, private })
    }
}

fn take_part(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The P-256 public key of a TPM public area, as SubjectPublicKeyInfo DER.
pub fn public_key_der(public: &Public) -> Result<Vec<u8>, TpmError> {
    let Public::Ecc { unique, .. } = public else {
        return Err(TpmError::Unexpected("non-ECC public area".into()));
    };
    let mut sec1 = vec![0x04];
    for coordinate in [unique.x().value(), unique.y().value()] {
        sec1.extend_from_slice(&left_pad(coordinate)?);
    }
    let key = p256::PublicKey::from_sec1_bytes(&sec1)
        .map_err(|e| TpmError::Unexpected(format!("public point not on P-256: {e}")))?;
    key.to_public_key_der()
        .map(|der| der.as_bytes().to_vec())
        .map_err(|e| TpmError::Unexpected(format!("encoding the public key: {e}")))
}

/// An ECDSA signature from the TPM as ASN.1 DER (what OpenSSL reads).
pub fn signature_der(signature: &Signature) -> Result<Vec<u8>, TpmError> {
    let Signature::EcDsa(ecdsa) = signature else {
        return Err(TpmError::Unexpected("non-ECDSA signature".into()));
    };
    let r = left_pad(ecdsa.signature_r().value())?;
    let s = left_pad(ecdsa.signature_s().value())?;
    let signature = p256::ecdsa::Signature::from_scalars(r, s)
        .map_err(|e| TpmError::Unexpected(format!("signature scalars: {e}")))?;
    Ok(signature.to_der().as_bytes().to_vec())
}

/// A big-endian integer of at most 32 bytes, as exactly 32 bytes.
fn left_pad(value: &[u8]) -> Result<[u8; 32], TpmError> {
    let value = match value.iter().position(|b| *b != 0) {
        Some(first) => &value[first..],
        None => &[],
    };
    if value.len() > 32 {
        return Err(TpmError::Unexpected(format!(
            "{}-byte value where P-256 has 32",
            value.len()
        )));
    }
    let mut out = [0u8; 32];
    out[32 - value.len()..].copy_from_slice(value);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_round_trip_and_damage() {
        let public = user_key_template().unwrap();
        let blob = KeyBlob {
            public: public.clone(),
            private: Private::try_from(vec![7u8; 40]).unwrap(),
        };
        let bytes = blob.encode().unwrap();
        let back = KeyBlob::decode(&bytes).unwrap();
        assert_eq!(back.public, public);
        assert_eq!(back.private.value(), [7u8; 40]);

        assert!(matches!(
            KeyBlob::decode(b"FKSK\x01"),
            Err(TpmError::BadBlob(_))
        ));
        let mut newer = bytes.clone();
        newer[4] = 2;
        let err = KeyBlob::decode(&newer).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
        assert!(KeyBlob::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(KeyBlob::decode(&longer).is_err());
    }

    #[test]
    fn padding_keeps_values_and_refuses_long_ones() {
        assert_eq!(left_pad(&[1, 2]).unwrap()[30..], [1, 2]);
        assert_eq!(left_pad(&[0; 33]).unwrap(), [0; 32]);
        assert!(left_pad(&[1; 33]).is_err());
    }
}
