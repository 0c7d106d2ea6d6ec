//! The one way the engine calls a key store: the work runs on the blocking
//! pool (key stores talk to hardware, run Argon2, fsync), and the key
//! store's errors come back as `Failure`s. Operations whose error the
//! engine interprets itself (the PIN-checked ones) return it raw.

use fleetkey_plugin::{
    Attestation, BackendInfo, CardInfo, CreateOptions, CredentialChallenge, Enrolled,
    HardwareIdentity, KeyStore, KeyStoreError, Pin,
};
use fleetkey_proto::{Failure, Reason};
use zeroize::Zeroizing;

use super::failure::key_store_failure;
use crate::backends::Backend;

/// A usable key store, asynchronously.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

/// What a PIN-checked operation returns: the key store's own error is
/// kept for the engine to count wrong PINs.
pub type Checked<T> = Result<T, KeyStoreError>;

impl Store {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    pub fn name(&self) -> &str {
        &self.backend.info.name
    }

    pub fn info(&self) -> &BackendInfo {
        &self.backend.info
    }

    /// Wrong PINs in a row after which a user of this store is locked.
    pub fn max_attempts(&self, policy_max_attempts: u32) -> u32 {
        crate::backends::max_attempts(self.backend.store.as_ref(), policy_max_attempts)
    }

    /// Runs `work` on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn KeyStore) -> Checked<T> + Send + 'static,
    ) -> Result<Checked<T>, Failure> {
        let store = self.backend.store.clone();
        tokio::task::spawn_blocking(move || work(store.as_ref()))
            .await
            .map_err(|e| Failure::new(Reason::Internal, format!("a worker thread failed: {e}")))
    }

    /// Runs `work` on the blocking pool; its error becomes a `Failure`.
    async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn KeyStore) -> Checked<T> + Send + 'static,
    ) -> Result<T, Failure> {
        self.run(work)
            .await?
            .map_err(|e| key_store_failure(self.name(), e))
    }

    pub async fn create_key(
        &self,
        key_id: String,
        pin: Pin,
        options: CreateOptions,
    ) -> Result<Enrolled, Failure> {
        self.call(move |s| s.create_key_with(&key_id, &pin, &options))
            .await
    }

    pub async fn attest(
        &self,
        key_ref: Vec<u8>,
        pin: Pin,
        nonce: [u8; 32],
    ) -> Result<Checked<Attestation>, Failure> {
        self.run(move |s| s.attest(&key_ref, &pin, &nonce)).await
    }

    pub async fn sign_digest(
        &self,
        key_ref: Vec<u8>,
        pin: Pin,
        digest: [u8; 32],
    ) -> Result<Checked<Vec<u8>>, Failure> {
        self.run(move |s| s.sign_digest(&key_ref, &pin, &digest))
            .await
    }

    pub async fn change_pin(
        &self,
        key_ref: Vec<u8>,
        old_pin: Pin,
        new_pin: Pin,
    ) -> Result<Checked<Vec<u8>>, Failure> {
        self.run(move |s| s.change_pin(&key_ref, &old_pin, &new_pin))
            .await
    }

    pub async fn unblock_pin(
        &self,
        key_ref: Vec<u8>,
        puk: Pin,
        new_pin: Pin,
    ) -> Result<Checked<()>, Failure> {
        self.run(move |s| s.unblock_pin(&key_ref, &puk, &new_pin))
            .await
    }

    pub async fn delete_key(&self, key_ref: Vec<u8>) -> Result<Checked<()>, Failure> {
        self.run(move |s| s.delete_key(&key_ref)).await
    }

    pub async fn resident_keys(&self) -> Result<Checked<Vec<Vec<u8>>>, Failure> {
        self.run(|s| s.resident_keys()).await
    }

    pub async fn cards(&self) -> Result<Vec<CardInfo>, Failure> {
        self.call(|s| s.cards()).await
    }

    pub async fn details(&self) -> Result<Vec<(String, String)>, Failure> {
        self.call(|s| Ok(s.details())).await
    }

    pub async fn hardware_identity(&self) -> Result<Option<HardwareIdentity>, Failure> {
        self.call(|s| s.hardware_identity()).await
    }

    pub async fn activate_credential(
        &self,
        challenge: CredentialChallenge,
    ) -> Result<Zeroizing<Vec<u8>>, Failure> {
        self.call(move |s| s.activate_credential(&challenge)).await
    }
}
