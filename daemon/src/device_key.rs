//! The device's own signing key, with which it speaks for itself to the
//! portal (registration, enrollment, revocation). Made at activation.

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::elliptic_curve::Generate;
use p256::pkcs8::EncodePublicKey;
use zeroize::Zeroizing;

use fleetkey_proto::{Failure, Reason};

pub struct DeviceKey {
    key: SigningKey,
}

impl DeviceKey {
    pub fn generate() -> Result<Self, Failure> {
        let key = SigningKey::try_generate().map_err(|e| {
            Failure::new(
                Reason::Internal,
                format!("no randomness for the device key: {e}"),
            )
        })?;
        Ok(Self { key })
    }

    pub fn from_secret(secret: &[u8]) -> Result<Self, Failure> {
        let key = SigningKey::from_slice(secret)
            .map_err(|_| Failure::new(Reason::StateError, "the stored device key is damaged"))?;
        Ok(Self { key })
    }

    pub fn secret(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.key.to_bytes().to_vec())
    }

    pub fn public_key_der(&self) -> Result<Vec<u8>, Failure> {
        self.key
            .verifying_key()
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|e| {
                Failure::new(
                    Reason::Internal,
                    format!("cannot encode the device key: {e}"),
                )
            })
    }

    /// DER ECDSA signature over a SHA-256 digest.
    pub fn sign_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>, Failure> {
        let signature: DerSignature = self.key.sign_prehash(digest).map_err(|e| {
            Failure::new(
                Reason::Internal,
                format!("device key signature failed: {e}"),
            )
        })?;
        Ok(signature.as_bytes().to_vec())
    }
}
