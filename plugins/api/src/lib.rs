//! The contract between fleetkeyd and its key-store backends.
//!
//! A backend implements [`KeyStore`]. Every operation but [`KeyStore::describe`],
//! [`KeyStore::create_key`] and [`KeyStore::sign_digest`] has a default that
//! answers [`KeyStoreError::unsupported`] (reason `UNSUPPORTED`), so a backend states what it can do
//! by what it implements, and says so as data in [`BackendInfo`].
//!
//! Operations are blocking (hardware is); the daemon runs them on blocking
//! threads. Keys are named by an opaque `key_ref` the backend returns at
//! creation and the daemon stores: a file name, a TPM blob, a card slot.
//!
//! # Crash-safe creation
//! The daemon creates a key ([`KeyStore::create_key`]), records it in its
//! state store, and deletes the key ([`KeyStore::delete_key`]) when the
//! record fails. At startup it asks each backend for the keys it holds
//! ([`KeyStore::resident_keys`]) and deletes those no record names, so a
//! crash between the two steps leaves nothing behind.

use std::fmt;
use std::path::PathBuf;

pub mod events;

pub use fleetkey_proto::{Failure, Reason};
use zeroize::Zeroizing;

/// A PIN: zeroized on drop, never shown by `Debug`.
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    pub fn new(pin: impl Into<String>) -> Self {
        Self(Zeroizing::new(pin.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Length in characters.
    pub fn char_count(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

/// An operation a key store may support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Create,
    Sign,
    Delete,
    ChangePin,
    PinStatus,
    Attest,
    UnblockPin,
    ListCards,
    /// Setting the parameters of a counter of wrong PINs the hardware
    /// shares between keys (a TPM's dictionary-attack parameters).
    SetLockoutParameters,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Sign => "sign",
            Operation::Delete => "delete",
            Operation::ChangePin => "change_pin",
            Operation::PinStatus => "pin_status",
            Operation::Attest => "attest",
            Operation::UnblockPin => "unblock_pin",
            Operation::ListCards => "list_cards",
            Operation::SetLockoutParameters => "set_lockout_parameters",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// PIN rules a backend itself imposes (on top of the deployment's policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PinRules {
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
}

/// What a backend is and can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// Stable name used in config, on the wire and in user records.
    pub name: String,
    /// One line for people.
    pub description: String,
    /// False for software keys: status and attestation say so everywhere.
    pub hardware_backed: bool,
    /// Attestation formats `attest` can produce ("none" for none).
    pub attestation_formats: Vec<String>,
    pub pin_rules: PinRules,
    pub operations: Vec<Operation>,
}

/// A key just made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedKey {
    /// What the daemon stores to name the key later.
    pub key_ref: Vec<u8>,
    /// The public key as SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
}

/// Where to make a key, for stores with a choice (a card reader, a key
/// slot). The default asks for nothing: the store chooses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// The reader (or other device) to use, by name.
    pub reader: Option<String>,
    /// The key slot to use, in the store's own notation (PIV: `9a`).
    pub slot: Option<String>,
}

impl CreateOptions {
    pub fn is_empty(&self) -> bool {
        self.reader.is_none() && self.slot.is_none()
    }
}

/// A key just made, with what the person enrolling should be told about
/// it (e.g. "the card's factory PIN was replaced by yours").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub key: CreatedKey,
    pub notes: Vec<String>,
}

/// A key made for an enrollment, with what the portal needs of it: the
/// store's attestation and the proof-of-possession signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentKey {
    pub enrolled: Enrolled,
    /// [`Attestation::none`] where the store cannot attest.
    pub attestation: Attestation,
    /// The key's signature over the proof-of-possession digest.
    pub user_signature: Vec<u8>,
}

/// A reader (or other device slot) and what is in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardInfo {
    /// The reader's name.
    pub reader: String,
    pub card_present: bool,
    /// Whether the card answers as the store's card application (PIV).
    pub application_found: bool,
    /// The card's stable identity (PIV: the CHUID's GUID, hex); empty
    /// when unknown.
    pub card_id: String,
    /// The card's serial number where it tells one; empty otherwise.
    pub serial: String,
    /// Why the card could not be read, when it could not.
    pub problem: String,
}

/// What the PIN guarding a key allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinStatus {
    /// None where the backend keeps no count of its own.
    pub tries_left: Option<u32>,
    pub locked: bool,
}

/// Evidence about a key for the portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// "none" when the backend has nothing to show.
    pub format: String,
    pub data: Vec<u8>,
}

impl Attestation {
    pub fn none() -> Self {
        Self {
            format: "none".into(),
            data: Vec::new(),
        }
    }
}

/// The identity of the hardware a key store runs on, for the portal to
/// check at device activation: a TPM's endorsement key (EK), its EK
/// certificate and an attestation key (AK) made in it, as
/// `docs/tpm-attestation.md` describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardwareIdentity {
    /// The EK's public area, a marshalled TPMT_PUBLIC.
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER) the TPM's maker stored; empty when none.
    pub ek_certificate: Vec<u8>,
    /// The AK's public area, a marshalled TPMT_PUBLIC.
    pub ak_public: Vec<u8>,
}

/// The portal's challenge to a [`HardwareIdentity`]: TPM2_MakeCredential's
/// output for the identity's EK and AK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialChallenge {
    /// TPM2B_ID_OBJECT contents.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents.
    pub encrypted_secret: Vec<u8>,
}

/// A counter of wrong PINs the hardware shares between all its keys (a
/// TPM's dictionary-attack counter): one user's wrong PINs spend what
/// every other user may still try. Read now, not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedLockout {
    /// Failures at which the hardware locks every key (TPM_PT_MAX_AUTH_FAIL).
    pub max_tries: u32,
    /// Failures counted now (TPM_PT_LOCKOUT_COUNTER).
    pub counter: u32,
    /// Seconds for the counter to drop by one (TPM_PT_LOCKOUT_INTERVAL);
    /// 0: the hardware does not count (protection disabled).
    pub interval_seconds: u32,
    /// Seconds before a wrong lockout authorization may be retried
    /// (TPM_PT_LOCKOUT_RECOVERY).
    pub lockout_recovery_seconds: u32,
    /// The hardware refuses every PIN now.
    pub in_lockout: bool,
    /// Whether an authorization protects changing these parameters and
    /// resetting the counter (a TPM's lockoutAuth); when not, anyone who
    /// can talk to the hardware can reset the counter.
    pub lockout_auth_set: bool,
}

/// New parameters for a [`SharedLockout`] (TPM2_DictionaryAttackParameters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutParameters {
    pub max_tries: u32,
    pub interval_seconds: u32,
    pub lockout_recovery_seconds: u32,
}

/// Why a key-store operation failed, said by the key store itself: a
/// reason from the same table as every other failure
/// ([`fleetkey_proto::Reason`]), a message saying what failed, a hint
/// saying what to do (written by the store, which knows its hardware), and
/// typed details. The daemon turns it into a [`Failure`] with
/// [`KeyStoreError::into_failure`], without knowing which store it came
/// from.
#[derive(Debug)]
pub struct KeyStoreError {
    /// What kind of failure, from the table `docs/errors.md` documents.
    pub reason: Reason,
    /// What failed and why, in one line.
    pub message: String,
    /// What to do about it; None: the reason's default hint.
    pub hint: Option<String>,
    /// Tries the hardware itself still allows (wrong PIN or PUK), where it
    /// counts.
    pub tries_left: Option<u32>,
    /// When the hardware accepts PINs again, where it can tell (a TPM in
    /// dictionary-attack lockout).
    pub retry_after_seconds: Option<u64>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// How `KeyStoreError::unavailable` begins its message.
const UNAVAILABLE_PREFIX: &str = "the key store is not available: ";

impl fmt::Display for KeyStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for KeyStoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl KeyStoreError {
    /// A failure of `reason`, with the reason's default hint.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            hint: None,
            tries_left: None,
            retry_after_seconds: None,
            source: None,
        }
    }

    /// What to do about it, in the store's own words.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_tries_left(mut self, tries_left: Option<u32>) -> Self {
        self.tries_left = tries_left;
        self
    }

    pub fn with_retry_after(mut self, seconds: Option<u64>) -> Self {
        self.retry_after_seconds = seconds;
        self
    }

    /// The store cannot do `operation`.
    pub fn unsupported(backend: &str, operation: Operation) -> Self {
        Self::new(
            Reason::Unsupported,
            format!("the {backend} key store does not support {operation}"),
        )
    }

    /// The PIN is wrong; `tries_left` where the hardware counts.
    pub fn pin_incorrect(tries_left: Option<u32>) -> Self {
        Self::new(Reason::PinWrong, "wrong PIN").with_tries_left(tries_left)
    }

    /// The store itself has blocked the PIN.
    pub fn pin_locked() -> Self {
        Self::new(Reason::PinLocked, "the PIN is blocked by the key store").with_tries_left(Some(0))
    }

    /// The PIN does not meet the store's own rules.
    pub fn pin_rules(detail: impl fmt::Display) -> Self {
        Self::new(
            Reason::PinPolicy,
            format!("the PIN does not meet the key store's rules: {detail}"),
        )
    }

    /// The store (its hardware, its service) cannot be used now.
    pub fn unavailable(detail: impl fmt::Display) -> Self {
        Self::new(
            Reason::BackendUnavailable,
            format!("{UNAVAILABLE_PREFIX}{detail}"),
        )
    }

    /// What went wrong, without the "the key store is not available"
    /// that `unavailable` puts before it: for a caller that says that in
    /// its own words (e.g. "key store 'pcsc' is not available: ...").
    pub fn detail(&self) -> String {
        let text = self.to_string();
        match text.strip_prefix(UNAVAILABLE_PREFIX) {
            Some(detail) => detail.to_string(),
            None => text,
        }
    }

    /// A creation option (reader, slot) that cannot be used.
    pub fn invalid_option(message: impl Into<String>) -> Self {
        Self::new(Reason::InvalidArgument, message)
    }

    /// The store has no key by that name.
    pub fn key_not_found(key: impl fmt::Display) -> Self {
        Self::new(Reason::Internal, format!("no key {key} in the key store"))
    }

    /// A stored key that cannot be read.
    pub fn corrupt(key: impl fmt::Display, detail: impl fmt::Display) -> Self {
        Self::new(
            Reason::Internal,
            format!("stored key {key} is damaged: {detail}"),
        )
    }

    /// A file-system failure.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let mut error = Self::new(Reason::Internal, context);
        error.source = Some(Box::new(source));
        error
    }

    /// Anything else that went wrong inside the store.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Reason::Internal, message)
    }

    /// Whether this is a failure of `reason`.
    pub fn is(&self, reason: Reason) -> bool {
        self.reason == reason
    }

    /// The failure the caller sees: the store's reason, message (naming
    /// the store), hint and details. This is the only mapping; the
    /// daemon adds what only it knows (its own PIN count).
    pub fn into_failure(self, backend: &str) -> Failure {
        let mut failure = Failure::new(self.reason, format!("key store '{backend}': {self}"))
            .with_meta("backend", backend);
        if let Some(hint) = self.hint {
            failure = failure.with_hint(hint);
        }
        if let Some(tries_left) = self.tries_left {
            failure = failure.with_meta("tries_left", tries_left);
        }
        if let Some(seconds) = self.retry_after_seconds {
            failure = failure.with_meta("retry_after_seconds", seconds);
        }
        failure
    }
}

/// A place where users' P-256 signing keys live.
pub trait KeyStore: Send + Sync {
    /// What this backend is and can do.
    fn describe(&self) -> BackendInfo;

    /// Makes a P-256 key guarded by `pin`. `key_id` is unique and chosen
    /// by the daemon; a backend may use it to name the key.
    fn create_key(&self, key_id: &str, pin: &Pin) -> Result<CreatedKey, KeyStoreError>;

    /// [`KeyStore::create_key`] with options (reader, slot) and notes for
    /// the person enrolling. Stores without choices need not implement it:
    /// the default refuses options and calls `create_key`.
    fn create_key_with(
        &self,
        key_id: &str,
        pin: &Pin,
        options: &CreateOptions,
    ) -> Result<Enrolled, KeyStoreError> {
        if !options.is_empty() {
            return Err(KeyStoreError::invalid_option(format!(
                "the {} key store has no readers or slots to choose from",
                self.describe().name
            )));
        }
        Ok(Enrolled {
            key: self.create_key(key_id, pin)?,
            notes: Vec::new(),
        })
    }

    /// An enrollment's key work in one go: makes the key
    /// ([`KeyStore::create_key_with`]), attests it with `nonce`
    /// ([`KeyStore::attest`]; unsupported: [`Attestation::none`]) and
    /// signs `pop_digest(public key DER)` with it. A store may do it in
    /// fewer hardware steps than the three calls (a TPM: one session, one
    /// load). On a failure after the key was made, the key is deleted.
    fn create_for_enrollment(
        &self,
        key_id: &str,
        pin: &Pin,
        options: &CreateOptions,
        nonce: &[u8; 32],
        pop_digest: &dyn Fn(&[u8]) -> [u8; 32],
    ) -> Result<EnrollmentKey, KeyStoreError> {
        let enrolled = self.create_key_with(key_id, pin, options)?;
        let key = &enrolled.key;
        let finish = || {
            let attestation = match self.attest(&key.key_ref, pin, nonce) {
                Ok(attestation) => attestation,
                Err(e) if e.is(Reason::Unsupported) => Attestation::none(),
                Err(e) => return Err(e),
            };
            let signature =
                self.sign_digest(&key.key_ref, pin, &pop_digest(&key.public_key_der))?;
            Ok((attestation, signature))
        };
        match finish() {
            Ok((attestation, user_signature)) => Ok(EnrollmentKey {
                enrolled,
                attestation,
                user_signature,
            }),
            Err(e) => {
                // A key that cannot be deleted now is an orphan the
                // daemon's cleanup finds at its next start
                // (`resident_keys`).
                let _ = self.delete_key(&key.key_ref);
                Err(e)
            }
        }
    }

    /// ECDSA P-256 over a SHA-256 digest; returns the DER signature.
    /// A wrong PIN is [`KeyStoreError::pin_incorrect`] (reason `PIN_WRONG`).
    fn sign_digest(
        &self,
        key_ref: &[u8],
        pin: &Pin,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, KeyStoreError>;

    /// Destroys a key. Deleting a key that is already gone succeeds.
    fn delete_key(&self, key_ref: &[u8]) -> Result<(), KeyStoreError> {
        let _ = key_ref;
        Err(self.unsupported(Operation::Delete))
    }

    /// Replaces the PIN; returns the key's (possibly new) `key_ref`.
    fn change_pin(
        &self,
        key_ref: &[u8],
        old_pin: &Pin,
        new_pin: &Pin,
    ) -> Result<Vec<u8>, KeyStoreError> {
        let _ = (key_ref, old_pin, new_pin);
        Err(self.unsupported(Operation::ChangePin))
    }

    /// Sets a new PIN with the PIN unblocking key (PUK), which also resets
    /// the key store's wrong-PIN counter. A wrong PUK is
    /// a failure of reason `PUK_WRONG`, with the PUK's tries left.
    fn unblock_pin(&self, key_ref: &[u8], puk: &Pin, new_pin: &Pin) -> Result<(), KeyStoreError> {
        let _ = (key_ref, puk, new_pin);
        Err(self.unsupported(Operation::UnblockPin))
    }

    /// The readers and cards this store can see.
    fn cards(&self) -> Result<Vec<CardInfo>, KeyStoreError> {
        Err(self.unsupported(Operation::ListCards))
    }

    /// Tries left and lock state as the key store itself counts them.
    fn pin_status(&self, key_ref: &[u8]) -> Result<PinStatus, KeyStoreError> {
        let _ = key_ref;
        Err(self.unsupported(Operation::PinStatus))
    }

    /// Evidence about where the key lives, for the portal. `pin` is the
    /// key's PIN (a TPM must authorize the key to certify it); `nonce`
    /// names the enrollment, where the evidence can carry it.
    fn attest(
        &self,
        key_ref: &[u8],
        pin: &Pin,
        nonce: &[u8; 32],
    ) -> Result<Attestation, KeyStoreError> {
        let _ = (key_ref, pin, nonce);
        Err(self.unsupported(Operation::Attest))
    }

    /// The hardware's identity for device activation, where the store
    /// has one to prove (a TPM); None otherwise.
    fn hardware_identity(&self) -> Result<Option<HardwareIdentity>, KeyStoreError> {
        Ok(None)
    }

    /// Answers the portal's challenge to [`KeyStore::hardware_identity`]:
    /// the secret only the hardware named there can recover.
    fn activate_credential(
        &self,
        challenge: &CredentialChallenge,
    ) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let _ = challenge;
        Err(self.unsupported(Operation::Attest))
    }

    /// A TPM2_Quote of the boot PCRs by the device's attestation key with
    /// `qualifying_data` (the integrity report, docs/integrity.md), where
    /// the store has such a key (a TPM); None otherwise.
    fn quote(&self, qualifying_data: &[u8; 32]) -> Result<Option<PcrQuote>, KeyStoreError> {
        let _ = qualifying_data;
        Ok(None)
    }

    /// The most wrong PINs in a row one key may see before its user must be
    /// locked, where the hardware needs fewer than the deployment's
    /// `pin.max_attempts` (a TPM locks every key after a few failures in
    /// total, so one user's guesses must stop earlier). None: no limit of
    /// the store's own.
    fn max_pin_attempts(&self) -> Option<u32> {
        None
    }

    /// The counter of wrong PINs the hardware shares between all keys,
    /// read now, where it has one (a TPM); None otherwise.
    fn shared_lockout(&self) -> Result<Option<SharedLockout>, KeyStoreError> {
        Ok(None)
    }

    /// Resets the shared counter to 0 where anyone who can open the
    /// hardware may (a TPM without a lockout authorization) and the store's
    /// config allows it. Ok(false): not done (an authorization is set, or
    /// the config says no), nothing changed.
    fn reset_shared_lockout(&self) -> Result<bool, KeyStoreError> {
        Ok(false)
    }

    /// Sets the shared counter's parameters, authorized by `lockout_auth`
    /// (empty when the hardware has none set).
    fn set_lockout_parameters(
        &self,
        parameters: &LockoutParameters,
        lockout_auth: &Zeroizing<Vec<u8>>,
    ) -> Result<(), KeyStoreError> {
        let _ = (parameters, lockout_auth);
        Err(self.unsupported(Operation::SetLockoutParameters))
    }

    /// Facts for `status` (e.g. a TPM's manufacturer and firmware), as
    /// key/value pairs; a key `warning` is shown prominently.
    fn details(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Frees memory the store keeps between operations (the soft store's
    /// Argon2 buffers); the daemon calls it once its key-store work has
    /// been idle for a moment. Stores that keep nothing ignore it.
    fn release_memory(&self) {}

    /// Every key this store holds, as `key_ref`s, for orphan cleanup.
    /// Stores whose keys live only in the daemon's records return none.
    fn resident_keys(&self) -> Result<Vec<Vec<u8>>, KeyStoreError> {
        Ok(Vec::new())
    }

    /// The standard "unsupported" answer for this backend.
    fn unsupported(&self, operation: Operation) -> KeyStoreError {
        KeyStoreError::unsupported(&self.describe().name, operation)
    }
}

/// A quote of PCRs by the hardware's attestation key ([`KeyStore::quote`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrQuote {
    /// The marshalled TPMS_ATTEST.
    pub attest: Vec<u8>,
    /// The marshalled TPMT_SIGNATURE.
    pub signature: Vec<u8>,
    /// The quoted PCRs (SHA-256 bank) and their values, ascending.
    pub pcrs: Vec<(u32, Vec<u8>)>,
    /// The attestation key's public key, SubjectPublicKeyInfo DER.
    pub ak_public_key_der: Vec<u8>,
}

/// Where the daemon lets a key store keep files, and other facts of the
/// daemon a store may need to open.
#[derive(Debug, Clone)]
pub struct OpenContext {
    /// The daemon's state directory; a store keeps its files in a
    /// directory of its own name inside it.
    pub state_dir: PathBuf,
}

/// A setting of a key store's config section that cannot be used: the
/// daemon reports it as `backends.NAME.KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The key inside the store's section (e.g. `default_slot`).
    pub key: &'static str,
    pub message: String,
}

impl SettingError {
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

/// How the daemon finds and opens a key store (as Parsec's provider
/// builders): a name, a typed config section, and `open`. Each store
/// crate exports one; the daemon's registry (`daemon/src/backends.rs`)
/// lists them, one line each, behind a cargo feature.
pub trait KeyStoreFactory {
    /// Stable name used in config (`[backends.NAME]`), on the wire and in
    /// user records.
    const NAME: &'static str;
    /// One line for people, also shown when the store cannot be opened.
    const DESCRIPTION: &'static str;
    /// False for software keys.
    const HARDWARE_BACKED: bool;
    /// The settings of `[backends.NAME]` besides `enabled`, read once when
    /// the daemon loads its config. Unknown keys should be refused
    /// (`#[serde(deny_unknown_fields)]`); a value that cannot be used is a
    /// deserialization error, or a [`SettingError`] from
    /// [`KeyStoreFactory::check`].
    type Config: serde::de::DeserializeOwned + Default + fmt::Debug + Send + Sync + 'static;

    /// Checks that need more than one field's type (ranges, combinations).
    fn check(config: &Self::Config) -> Result<(), SettingError> {
        let _ = config;
        Ok(())
    }

    /// Opens the store. A store whose hardware or service is missing
    /// answers an error (reason `BACKEND_UNAVAILABLE`), and the daemon
    /// runs with the others.
    fn open(
        config: &Self::Config,
        context: &OpenContext,
    ) -> Result<std::sync::Arc<dyn KeyStore>, KeyStoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct SignOnly;

    impl KeyStore for SignOnly {
        fn describe(&self) -> BackendInfo {
            BackendInfo {
                name: "sign-only".into(),
                description: "test".into(),
                hardware_backed: false,
                attestation_formats: vec![],
                pin_rules: PinRules::default(),
                operations: vec![Operation::Create, Operation::Sign],
            }
        }
        fn create_key(&self, _: &str, _: &Pin) -> Result<CreatedKey, KeyStoreError> {
            Err(KeyStoreError::unavailable("test"))
        }
        fn sign_digest(&self, _: &[u8], _: &Pin, _: &[u8; 32]) -> Result<Vec<u8>, KeyStoreError> {
            Err(KeyStoreError::pin_incorrect(None))
        }
    }

    #[test]
    fn defaults_answer_unsupported_with_names() {
        let store = SignOnly;
        let err = store.attest(b"k", &Pin::new("1"), &[0; 32]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the sign-only key store does not support attest"
        );
        let err = store
            .change_pin(b"k", &Pin::new("1"), &Pin::new("2"))
            .unwrap_err();
        assert_eq!(err.reason, Reason::Unsupported);
        assert!(err.to_string().contains("change_pin"), "{err}");
        assert!(store.resident_keys().unwrap().is_empty());
        assert!(store.hardware_identity().unwrap().is_none());
    }

    #[test]
    fn a_stores_hint_and_details_reach_the_failure() {
        let err = KeyStoreError::new(Reason::CardMismatch, "the card in reader R is card 1")
            .with_hint("Insert card 2.")
            .with_tries_left(Some(2))
            .with_retry_after(Some(30));
        let failure = err.into_failure("pcsc");
        assert_eq!(failure.reason, Reason::CardMismatch);
        assert_eq!(
            failure.message,
            "key store 'pcsc': the card in reader R is card 1"
        );
        assert_eq!(failure.hint, "Insert card 2.");
        assert_eq!(failure.meta("tries_left"), Some("2"));
        assert_eq!(failure.meta("retry_after_seconds"), Some("30"));
        assert_eq!(failure.meta("backend"), Some("pcsc"));
        // They survive the wire, too.
        let back = Failure::from_status(&failure.to_status());
        assert_eq!(back, failure);
    }

    #[test]
    fn without_a_hint_the_reason_gives_its_own() {
        let failure = KeyStoreError::pin_incorrect(None).into_failure("soft");
        assert_eq!(failure.reason, Reason::PinWrong);
        assert_eq!(failure.hint, Reason::PinWrong.default_hint());
        assert_eq!(failure.meta("tries_left"), None);
        let failure = KeyStoreError::pin_locked().into_failure("pcsc");
        assert_eq!(failure.meta("tries_left"), Some("0"));
        let io = KeyStoreError::io(
            "reading key k",
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"),
        );
        assert_eq!(io.reason, Reason::Internal);
        assert_eq!(io.to_string(), "reading key k: denied");
        assert!(std::error::Error::source(&io).is_some());
    }

    #[test]
    fn pin_debug_is_redacted() {
        assert_eq!(format!("{:?}", Pin::new("123456")), "Pin(<redacted>)");
    }
}
