//! The TPM 2.0 key store: each user's P-256 key is made inside the TPM
//! and never leaves it; the user's PIN is the key's authorization value, so
//! the TPM itself checks it, under its dictionary-attack protection.
//!
//! # How it works
//!
//! - **Connection.** One ESAPI context for the whole daemon, behind a
//!   mutex (a poisoned mutex is [`TpmError::Poisoned`], not a panic). The
//!   TCTI is the configured one, else the `TCTI` environment variable,
//!   else `/dev/tpmrm0`, then `/dev/tpm0`. When the connection breaks (the
//!   TPM or simulator restarted) the store reconnects once and retries.
//! - **Keys.** A storage primary key (ECC P-256, the TCG storage template)
//!   is derived from the owner seed at startup, so it is the same key every
//!   time and need not be stored; or it is kept at a configured persistent
//!   handle. User keys are made under it; their public and private areas
//!   ([`keys::KeyBlob`]) are the `key_ref` the daemon keeps in its state
//!   store. A key is loaded for each operation and flushed right after, so
//!   any number of users fits in the TPM's few object slots. The private
//!   area is sealed by this TPM's storage key: a blob copied to another TPM
//!   does not load there (reason `TPM_KEY_REJECTED`).
//! - **PIN.** Every command that carries or proves the PIN runs in a salted
//!   HMAC session with AES-128-CFB parameter encryption: the PIN never
//!   crosses the bus in clear, and the HMAC cannot be attacked offline. A
//!   wrong PIN is the TPM's TPM_RC_AUTH_FAIL.
//! - **Dictionary attack.** The TPM counts every wrong PIN, for all keys
//!   together, and locks every key after `max_tries` (TPM_PT_MAX_AUTH_FAIL;
//!   swtpm: 3, then one more try per 1000 s). So one user's guesses must
//!   stop before that: [`KeyStore::max_pin_attempts`] is `max_tries - 1`,
//!   read from the TPM, and the daemon locks the user there. If the TPM is
//!   in lockout anyway (several users guessing, or another program), the
//!   answer is `TPM_LOCKOUT` with the longest wait as `retry_after_seconds`
//!   and a hint that says it.
//! - **Attestation** ([`attest`]): at device activation the store shows
//!   the portal its endorsement key, EK certificate and attestation key,
//!   and answers the portal's credential challenge; each new user key is
//!   then certified by the attestation key (TPM2_Certify). The AK is
//!   made once per connection and stays loaded. An enrollment
//!   ([`KeyStore::create_for_enrollment`]) makes the key, certifies it and
//!   signs the proof of possession in one session, loading it once. See
//!   `docs/tpm-attestation.md`.
//! - **Deleting** a key is forgetting its blob: nothing of it stays in the
//!   TPM.

pub mod attest;
pub mod connection;
pub mod error;
pub mod keys;
pub mod provision;
pub mod quote;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use fleetkey_plugin::{
    Attestation, BackendInfo, CreateOptions, CreatedKey, CredentialChallenge, Enrolled,
    EnrollmentKey, HardwareIdentity, KeyStore, KeyStoreError, KeyStoreFactory, LockoutParameters,
    OpenContext, Operation, Pin, PinRules, SettingError, SharedLockout,
};
use prost::Message;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, CreateKeyResult, Digest, HashcheckTicket, Public, Signature, SignatureScheme,
};
use tss_esapi::traits::Marshall;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use zeroize::Zeroizing;

pub use connection::{DaState, Tpm, TpmIdentity};
pub use error::TpmError;
use keys::KeyBlob;

/// The backend's name in config, on the wire and in user records.
pub const BACKEND_NAME: &str = "tpm";

/// The attestation format of user keys certified by the device's AK.
pub const ATTESTATION_FORMAT: &str = "tpm2-certify";

/// Longest authorization value the TPM takes for a SHA-256 key: the PIN's
/// UTF-8 bytes are used as they are (so tpm2-tools can use the key too).
pub const MAX_PIN_BYTES: usize = 32;

/// How to reach the TPM; the `[backends.tpm]` section of the daemon's
/// config.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TpmConfig {
    /// A TCTI string (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`,
    /// `tabrmd:`); None: the `TCTI` environment variable, else the devices.
    pub tcti: Option<String>,
    /// Keep the storage key at this persistent handle (0x81000000-0x81ffffff)
    /// instead of deriving it again at each start.
    pub persistent_handle: Option<u32>,
    /// Reset the TPM's wrong-PIN counter after each wrong PIN when the TPM
    /// has no lockout authorization (anyone who can open the TPM can do
    /// the same, so the reset gives nothing away; docs/tpm-lockout.md).
    /// None: yes. Ignored once a lockout authorization is set.
    pub reset_counter_without_lockout_auth: Option<bool>,
}

/// Opens the TPM key store for the daemon's registry.
pub struct TpmFactory;

impl KeyStoreFactory for TpmFactory {
    const NAME: &'static str = BACKEND_NAME;
    const DESCRIPTION: &'static str = "Keys inside the TPM 2.0, PINs checked by the TPM";
    const HARDWARE_BACKED: bool = true;
    type Config = TpmConfig;

    fn check(config: &TpmConfig) -> Result<(), SettingError> {
        if let Some(handle) = config.persistent_handle
            && !(0x8100_0000..=0x81ff_ffff).contains(&handle)
        {
            return Err(SettingError::new(
                "persistent_handle",
                format!("{handle:#010x} is not a persistent handle (0x81000000 to 0x81ffffff)"),
            ));
        }
        if config.tcti.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(SettingError::new(
                "tcti",
                "is empty; leave it out to use the TCTI environment variable or /dev/tpmrm0",
            ));
        }
        Ok(())
    }

    fn open(config: &TpmConfig, _: &OpenContext) -> Result<Arc<dyn KeyStore>, KeyStoreError> {
        Ok(Arc::new(TpmKeyStore::open(config)?))
    }
}

/// User keys in a TPM 2.0.
pub struct TpmKeyStore {
    candidates: Vec<String>,
    reset_without_lockout_auth: bool,
    persistent_handle: Option<u32>,
    tpm: Mutex<Option<Tpm>>,
    identity: TpmIdentity,
    per_key_limit: AtomicU32,
}

impl TpmKeyStore {
    /// Connects to the TPM and prepares the storage key. Fails (and the
    /// daemon reports the backend unavailable) when no TPM answers.
    pub fn open(config: &TpmConfig) -> Result<Self, TpmError> {
        let env = std::env::var("TCTI").ok();
        let candidates = connection::tcti_candidates(config.tcti.as_deref(), env.as_deref());
        let mut tpm = Tpm::open(&candidates, config.persistent_handle)?;
        let identity = tpm.identity()?;
        let da = tpm.da_state()?;
        if identity.simulator {
            tracing::warn!(tcti = %identity.tcti, manufacturer = %identity.manufacturer, "the TPM is a simulator: keys are not protected by hardware");
        }
        tracing::info!(
            tcti = %identity.tcti,
            manufacturer = %identity.manufacturer,
            firmware = %identity.firmware,
            da_max_tries = da.max_tries,
            da_counter = da.counter,
            da_interval_s = da.interval,
            "TPM ready"
        );
        if da.in_lockout {
            tracing::warn!(
                recovery_s = ?da.recovery_seconds(),
                "the TPM is in dictionary-attack lockout"
            );
        }
        Ok(Self {
            candidates,
            reset_without_lockout_auth: config.reset_counter_without_lockout_auth.unwrap_or(true),
            persistent_handle: config.persistent_handle,
            tpm: Mutex::new(Some(tpm)),
            identity,
            per_key_limit: AtomicU32::new(da.per_key_limit()),
        })
    }

    /// Which TPM this is.
    pub fn identity(&self) -> &TpmIdentity {
        &self.identity
    }

    /// The TPM's dictionary-attack settings and state, read now.
    pub fn da_state(&self) -> Result<DaState, TpmError> {
        self.with_tpm(|tpm| tpm.da_state())
    }

    /// Runs a lockout-hierarchy command on a connection of its own: the
    /// store's is closed meanwhile (a simulator serves one client at a
    /// time) and opened again after. The outer error is the reopening's.
    fn on_own_connection<T>(
        &self,
        command: impl FnOnce(&str) -> Result<T, TpmError>,
    ) -> Result<Result<T, TpmError>, TpmError> {
        let mut guard = self.tpm.lock().map_err(|_| TpmError::Poisoned)?;
        let tcti = guard
            .as_ref()
            .map_or_else(|| self.identity.tcti.clone(), |tpm| tpm.tcti.clone());
        *guard = None;
        let result = command(&tcti);
        let mut tpm = Tpm::open(&self.candidates, self.persistent_handle)?;
        if let Ok(da) = tpm.da_state() {
            self.per_key_limit
                .store(da.per_key_limit(), Ordering::Relaxed);
        }
        *guard = Some(tpm);
        Ok(result)
    }

    /// Runs `op` on the TPM under the lock; reconnects once if the
    /// connection broke.
    fn with_tpm<T>(
        &self,
        mut op: impl FnMut(&mut Tpm) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let mut guard = self.tpm.lock().map_err(|_| TpmError::Poisoned)?;
        if let Some(tpm) = guard.as_mut() {
            match op(tpm) {
                Err(e) if e.is_connection_lost() => {
                    tracing::warn!(error = %e, "lost the TPM connection; reconnecting");
                    *guard = None;
                }
                other => return other,
            }
        }
        let mut tpm = Tpm::open(&self.candidates, self.persistent_handle)?;
        let result = op(&mut tpm);
        *guard = Some(tpm);
        result
    }

    /// Runs `op` with a fresh HMAC session and flushes the session after.
    fn with_session<T>(
        &self,
        mut op: impl FnMut(&mut Tpm, AuthSession) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        self.with_tpm(|tpm| {
            let session = tpm.hmac_session()?;
            let result = op(tpm, session);
            tpm.flush_session(session);
            result
        })
    }

    fn pin_failure(&self, tpm: &mut Tpm, error: tss_esapi::Error) -> TpmError {
        match error::kind(&error) {
            Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth) => {
                if let Ok(da) = tpm.da_state() {
                    self.per_key_limit
                        .store(da.per_key_limit(), Ordering::Relaxed);
                    tracing::info!(
                        da_counter = da.counter,
                        da_max_tries = da.max_tries,
                        "the TPM counted a wrong PIN"
                    );
                }
                TpmError::WrongPin
            }
            Some(Tss2ResponseCodeKind::Lockout) => TpmError::Lockout {
                recovery_seconds: tpm.da_state().ok().and_then(|da| da.recovery_seconds()),
            },
            _ => TpmError::Sign(error),
        }
    }
}

/// The PIN as the key's authorization value.
fn pin_auth(pin: &Pin) -> Result<Auth, TpmError> {
    let bytes = pin.as_bytes();
    if bytes.len() > MAX_PIN_BYTES {
        return Err(TpmError::PinTooLong(bytes.len()));
    }
    Auth::try_from(bytes.to_vec()).map_err(TpmError::Structure)
}

/// Loads a key blob under the storage key.
fn load(tpm: &mut Tpm, session: AuthSession, blob: &KeyBlob) -> Result<KeyHandle, TpmError> {
    tpm.set_encryption(session, true, false)?;
    let primary = tpm.primary;
    let (private, public) = (blob.private.clone(), blob.public.clone());
    tpm.context
        .execute_with_session(Some(session), |ctx| ctx.load(primary, private, public))
        .map_err(|e| match error::kind(&e) {
            Some(
                Tss2ResponseCodeKind::Integrity
                | Tss2ResponseCodeKind::Binding
                | Tss2ResponseCodeKind::Size
                | Tss2ResponseCodeKind::Value,
            ) => TpmError::KeyRejected(format!(
                "this key was not made by this TPM (its storage key cannot open it; a key copied from another machine, or the TPM was cleared since it was made): {e}"
            )),
            _ => TpmError::Load(e),
        })
}

fn null_ticket() -> Result<HashcheckTicket, TpmError> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
    .map_err(TpmError::Structure)
}

/// TPM2_Create of a user key under the storage key, with `auth` (the
/// PIN) as its authorization value, sent encrypted in `session`.
fn create(
    tpm: &mut Tpm,
    session: AuthSession,
    template: &Public,
    auth: &Auth,
) -> Result<CreateKeyResult, TpmError> {
    tpm.set_encryption(session, true, true)?;
    let primary = tpm.primary;
    tpm.context
        .execute_with_session(Some(session), |ctx| {
            ctx.create(
                primary,
                template.clone(),
                Some(auth.clone()),
                None,
                None,
                None,
            )
        })
        .map_err(TpmError::Create)
}

impl TpmKeyStore {
    /// TPM2_Sign of `digest` by the loaded `key`, its PIN proven in
    /// `session` (the key's authorization value is set by the caller).
    fn sign_loaded(
        &self,
        tpm: &mut Tpm,
        session: AuthSession,
        key: KeyHandle,
        digest: &Digest,
    ) -> Result<Signature, TpmError> {
        tpm.set_encryption(session, true, false)?;
        let (digest, ticket) = (digest.clone(), null_ticket()?);
        let signed = tpm.context.execute_with_session(Some(session), |ctx| {
            ctx.sign(key, digest, SignatureScheme::Null, ticket)
        });
        signed.map_err(|e| self.pin_failure(tpm, e))
    }

    /// TPM2_Certify of the loaded `key` by the AK (the key's
    /// authorization value is set by the caller).
    fn certify_loaded(
        &self,
        tpm: &mut Tpm,
        session: AuthSession,
        key: KeyHandle,
        nonce: &[u8; 32],
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        attest::certify(tpm, session, key, nonce, |tpm, e| {
            match self.pin_failure(tpm, e) {
                TpmError::Sign(e) => TpmError::Certify(e),
                other => other,
            }
        })
    }
}

/// The `TpmCertification` the portal checks, for a key's public area.
fn certification(
    public: &Public,
    (certify_info, signature): (Vec<u8>, Vec<u8>),
) -> Result<Attestation, TpmError> {
    let certification = fleetkey_proto::portal::TpmCertification {
        public_area: public.marshall().map_err(TpmError::Structure)?,
        certify_info,
        signature,
    };
    Ok(Attestation {
        format: ATTESTATION_FORMAT.into(),
        data: certification.encode_to_vec(),
    })
}

impl KeyStore for TpmKeyStore {
    fn describe(&self) -> BackendInfo {
        let id = &self.identity;
        BackendInfo {
            name: BACKEND_NAME.into(),
            description: format!(
                "Keys inside the TPM 2.0 ({} {}, firmware {}){}",
                id.manufacturer,
                id.vendor,
                id.firmware,
                if id.simulator { " - a SIMULATOR" } else { "" }
            ),
            hardware_backed: true,
            attestation_formats: vec![ATTESTATION_FORMAT.into()],
            pin_rules: PinRules {
                min_length: None,
                max_length: Some(MAX_PIN_BYTES),
            },
            operations: vec![
                Operation::Create,
                Operation::Sign,
                Operation::Delete,
                Operation::ChangePin,
                Operation::Attest,
                Operation::SetLockoutParameters,
            ],
        }
    }

    fn create_key(&self, key_id: &str, pin: &Pin) -> Result<CreatedKey, KeyStoreError> {
        let auth = pin_auth(pin)?;
        let template = keys::user_key_template()?;
        let created = self.with_session(|tpm, session| create(tpm, session, &template, &auth))?;
        let public_key_der = keys::public_key_der(&created.out_public)?;
        let key_ref = KeyBlob {
            public: created.out_public,
            private: created.out_private,
        }
        .encode()?;
        tracing::debug!(key_id, "TPM key created");
        Ok(CreatedKey {
            key_ref,
            public_key_der,
        })
    }

    fn sign_digest(
        &self,
        key_ref: &[u8],
        pin: &Pin,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, KeyStoreError> {
        let blob = KeyBlob::decode(key_ref)?;
        let auth = pin_auth(pin)?;
        let digest = Digest::try_from(digest.to_vec()).map_err(TpmError::Structure)?;
        let signature = self.with_session(|tpm, session| {
            let key = load(tpm, session, &blob)?;
            let result = (|| {
                tpm.context
                    .tr_set_auth(key.into(), auth.clone())
                    .map_err(TpmError::Sign)?;
                self.sign_loaded(tpm, session, key, &digest)
            })();
            tpm.flush_key(key);
            result
        })?;
        Ok(keys::signature_der(&signature)?)
    }

    /// Nothing of a key stays in the TPM: it exists only as the blob the
    /// daemon keeps, which the daemon deletes.
    fn delete_key(&self, _key_ref: &[u8]) -> Result<(), KeyStoreError> {
        Ok(())
    }

    /// TPM2_ObjectChangeAuth: a new private area under the new PIN. The old
    /// blob (if someone kept a copy) still opens with the old PIN; the
    /// daemon replaces it.
    fn change_pin(
        &self,
        key_ref: &[u8],
        old_pin: &Pin,
        new_pin: &Pin,
    ) -> Result<Vec<u8>, KeyStoreError> {
        let blob = KeyBlob::decode(key_ref)?;
        let old = pin_auth(old_pin)?;
        let new = pin_auth(new_pin)?;
        let private = self.with_session(|tpm, session| {
            let key = load(tpm, session, &blob)?;
            let result = (|| {
                tpm.context
                    .tr_set_auth(key.into(), old.clone())
                    .map_err(TpmError::ChangeAuth)?;
                tpm.set_encryption(session, true, true)?;
                let primary = tpm.primary;
                let changed = tpm.context.execute_with_session(Some(session), |ctx| {
                    ctx.object_change_auth(key.into(), primary.into(), new.clone())
                });
                changed.map_err(|e| match self.pin_failure(tpm, e) {
                    TpmError::Sign(e) => TpmError::ChangeAuth(e),
                    other => other,
                })
            })();
            tpm.flush_key(key);
            result
        })?;
        Ok(KeyBlob {
            public: blob.public,
            private,
        }
        .encode()?)
    }

    /// TPM2_Certify of the key by the device's attestation key, with
    /// `nonce` as qualifying data: a `TpmCertification` for the portal.
    fn attest(
        &self,
        key_ref: &[u8],
        pin: &Pin,
        nonce: &[u8; 32],
    ) -> Result<Attestation, KeyStoreError> {
        let blob = KeyBlob::decode(key_ref)?;
        let auth = pin_auth(pin)?;
        let certified = self.with_session(|tpm, session| {
            let key = load(tpm, session, &blob)?;
            let result = (|| {
                tpm.context
                    .tr_set_auth(key.into(), auth.clone())
                    .map_err(TpmError::Certify)?;
                self.certify_loaded(tpm, session, key, nonce)
            })();
            tpm.flush_key(key);
            result
        })?;
        Ok(certification(&blob.public, certified)?)
    }

    /// Create, certify and the proof-of-possession signature in one salted
    /// session, the new key loaded once (three separate calls would start
    /// three sessions and load the key twice). The PIN is set on the
    /// loaded key for this operation only; the key is flushed after, on
    /// success and on failure.
    fn create_for_enrollment(
        &self,
        key_id: &str,
        pin: &Pin,
        options: &CreateOptions,
        nonce: &[u8; 32],
        pop_digest: &dyn Fn(&[u8]) -> [u8; 32],
    ) -> Result<EnrollmentKey, KeyStoreError> {
        if !options.is_empty() {
            return Err(KeyStoreError::invalid_option(
                "the tpm key store has no readers or slots to choose from",
            ));
        }
        let auth = pin_auth(pin)?;
        let template = keys::user_key_template()?;
        let (blob, public_key_der, certified, signature) = self.with_session(|tpm, session| {
            let created = create(tpm, session, &template, &auth)?;
            let blob = KeyBlob {
                public: created.out_public,
                private: created.out_private,
            };
            let public_key_der = keys::public_key_der(&blob.public)?;
            let digest = Digest::try_from(pop_digest(&public_key_der).to_vec())
                .map_err(TpmError::Structure)?;
            let key = load(tpm, session, &blob)?;
            let result = (|| {
                tpm.context
                    .tr_set_auth(key.into(), auth.clone())
                    .map_err(TpmError::Certify)?;
                let certified = self.certify_loaded(tpm, session, key, nonce)?;
                let signature = self.sign_loaded(tpm, session, key, &digest)?;
                Ok((certified, signature))
            })();
            tpm.flush_key(key);
            let (certified, signature) = result?;
            Ok((blob, public_key_der, certified, signature))
        })?;
        let attestation = certification(&blob.public, certified)?;
        tracing::debug!(key_id, "TPM key created, certified and proven");
        Ok(EnrollmentKey {
            enrolled: Enrolled {
                key: CreatedKey {
                    key_ref: blob.encode()?,
                    public_key_der,
                },
                notes: Vec::new(),
            },
            attestation,
            user_signature: keys::signature_der(&signature)?,
        })
    }

    fn quote(
        &self,
        qualifying_data: &[u8; 32],
    ) -> Result<Option<fleetkey_plugin::PcrQuote>, KeyStoreError> {
        let made = TpmKeyStore::quote(self, qualifying_data)?;
        let unhex = |text: &str| {
            fleetkey_integrity::unhex(text, 4096)
                .ok_or_else(|| KeyStoreError::internal("the quote is not hex"))
        };
        Ok(Some(fleetkey_plugin::PcrQuote {
            attest: unhex(&made.quote.attest)?,
            signature: unhex(&made.quote.signature)?,
            pcrs: made
                .quote
                .pcrs
                .iter()
                .map(|p| Ok((p.pcr, unhex(&p.value)?)))
                .collect::<Result<_, KeyStoreError>>()?,
            ak_public_key_der: made.ak_public_key_der,
        }))
    }

    fn hardware_identity(&self) -> Result<Option<HardwareIdentity>, KeyStoreError> {
        let identity = self.with_tpm(attest::identity)?;
        Ok(Some(HardwareIdentity {
            ek_public: identity.ek_public,
            ek_certificate: identity.ek_certificate,
            ak_public: identity.ak_public,
        }))
    }

    fn activate_credential(
        &self,
        challenge: &CredentialChallenge,
    ) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
        let secret = self.with_session(|tpm, session| {
            attest::activate_credential(
                tpm,
                session,
                &challenge.credential_blob,
                &challenge.encrypted_secret,
            )
        })?;
        Ok(Zeroizing::new(secret))
    }

    fn shared_lockout(&self) -> Result<Option<SharedLockout>, KeyStoreError> {
        let da = self.da_state()?;
        self.per_key_limit
            .store(da.per_key_limit(), Ordering::Relaxed);
        Ok(Some(SharedLockout {
            max_tries: da.max_tries,
            counter: da.counter,
            interval_seconds: da.interval,
            lockout_recovery_seconds: da.recovery,
            in_lockout: da.in_lockout,
            lockout_auth_set: da.lockout_auth_set,
        }))
    }

    /// TPM2_DictionaryAttackParameters on a connection of its own.
    fn set_lockout_parameters(
        &self,
        parameters: &LockoutParameters,
        lockout_auth: &Zeroizing<Vec<u8>>,
    ) -> Result<(), KeyStoreError> {
        let result = self.on_own_connection(|tcti| {
            provision::set_da_parameters(
                tcti,
                provision::DaParameters {
                    max_tries: parameters.max_tries,
                    recovery_time: parameters.interval_seconds,
                    lockout_recovery: parameters.lockout_recovery_seconds,
                },
                lockout_auth,
            )
        })?;
        tracing::info!(
            max_tries = parameters.max_tries,
            recovery_s = parameters.interval_seconds,
            lockout_recovery_s = parameters.lockout_recovery_seconds,
            ok = result.is_ok(),
            "TPM dictionary-attack parameters"
        );
        Ok(result?)
    }

    /// TPM2_DictionaryAttackLockReset with the empty lockout authorization,
    /// only when the TPM has no other and the config allows it.
    fn reset_shared_lockout(&self) -> Result<bool, KeyStoreError> {
        if !self.reset_without_lockout_auth {
            return Ok(false);
        }
        let da = self.da_state()?;
        if da.lockout_auth_set || da.counter == 0 {
            return Ok(false);
        }
        self.on_own_connection(|tcti| provision::reset_da_counter(tcti, &[]))??;
        tracing::info!(
            da_counter = da.counter,
            "reset the TPM's wrong-PIN counter (the TPM has no lockout authorization)"
        );
        Ok(true)
    }

    fn max_pin_attempts(&self) -> Option<u32> {
        Some(self.per_key_limit.load(Ordering::Relaxed))
    }

    fn details(&self) -> Vec<(String, String)> {
        let id = &self.identity;
        let mut details = vec![
            ("manufacturer".to_string(), id.manufacturer.clone()),
            ("vendor".to_string(), id.vendor.clone()),
            ("firmware".to_string(), id.firmware.clone()),
            ("tcti".to_string(), id.tcti.clone()),
        ];
        match self.da_state() {
            Ok(da) => {
                self.per_key_limit
                    .store(da.per_key_limit(), Ordering::Relaxed);
                details.push((
                    "lockout".to_string(),
                    format!(
                        "{} of {} failures counted, one forgiven every {} s{}",
                        da.counter,
                        da.max_tries,
                        da.interval,
                        if da.in_lockout { " (IN LOCKOUT)" } else { "" }
                    ),
                ));
                details.push((
                    "counter_reset".to_string(),
                    match (da.lockout_auth_set, self.reset_without_lockout_auth) {
                        (true, _) => "never: the TPM has a lockout authorization".to_string(),
                        (false, true) => "after every wrong PIN: the TPM has no lockout authorization, so anyone who can open it can reset the counter; fleetkeyd does, and the per-user limit is what bounds guesses".to_string(),
                        (false, false) => "never: backends.tpm.reset_counter_without_lockout_auth = false".to_string(),
                    },
                ));
            }
            Err(e) => details.push(("lockout".to_string(), format!("cannot be read: {e}"))),
        }
        if id.simulator {
            details.push((
                "warning".to_string(),
                "this TPM is a simulator: keys are not protected by hardware".to_string(),
            ));
        }
        details
    }
}
