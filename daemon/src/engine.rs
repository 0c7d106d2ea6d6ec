//! What the daemon does, independent of how it is asked: activation,
//! enrollment, signing, PIN counting and startup recovery. The gRPC layer
//! (server.rs) only checks who is calling and converts messages.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use fleetkey_plugin::{
    Attestation, CreateOptions, CredentialChallenge, HardwareIdentity, KeyStoreError, Operation,
    Pin,
};
use fleetkey_proto::portal::{self, CodeKind};
use fleetkey_proto::{EnrollmentInput, Failure, Reason, binding, daemon, time};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};

use crate::backends::{Backend, Backends};
use crate::config::{Config, PinConfig};
use crate::device_key::DeviceKey;
use crate::pin_policy;
use crate::portal_client::PortalConnector;
use crate::state::{DeviceRecord, StateError, StateStore, UserRecord, UserState};

impl From<StateError> for Failure {
    fn from(error: StateError) -> Self {
        tracing::error!(%error, "state store failure");
        Failure::new(Reason::StateError, error.to_string())
    }
}

/// Runs blocking work (hardware, fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Failure::new(Reason::Internal, format!("a worker thread failed: {e}")))
}

/// A key-store failure other than a PIN check, as the caller sees it.
fn key_store_failure(backend: &str, error: KeyStoreError) -> Failure {
    let reason = match &error {
        KeyStoreError::Unsupported { .. } => Reason::Unsupported,
        KeyStoreError::PinIncorrect { .. } => Reason::PinWrong,
        KeyStoreError::PinLocked => Reason::PinLocked,
        KeyStoreError::PinRules(_) => Reason::PinPolicy,
        KeyStoreError::Unavailable(_) => Reason::BackendUnavailable,
        KeyStoreError::HardwareLockout { .. } => Reason::TpmLockout,
        KeyStoreError::KeyRejected(_) => Reason::TpmKeyRejected,
        KeyStoreError::CardNotPresent(_) => Reason::CardNotPresent,
        KeyStoreError::CardMismatch(_) => Reason::CardMismatch,
        KeyStoreError::ManagementKeyRejected(_) => Reason::CardManagementKey,
        KeyStoreError::CardUnsupported(_) => Reason::CardUnsupported,
        KeyStoreError::PukIncorrect { .. } => Reason::PukWrong,
        KeyStoreError::InvalidOption(_) => Reason::InvalidArgument,
        KeyStoreError::KeyNotFound(_)
        | KeyStoreError::Corrupt { .. }
        | KeyStoreError::Io { .. }
        | KeyStoreError::Backend(_) => Reason::Internal,
    };
    if reason == Reason::Internal {
        tracing::error!(backend, %error, "key store failure");
    }
    let mut failure = Failure::new(reason, format!("key store '{backend}': {error}"))
        .with_meta("backend", backend);
    match error {
        KeyStoreError::HardwareLockout {
            retry_after_seconds: Some(seconds),
            ..
        } => {
            failure = failure
                .with_meta("retry_after_seconds", seconds)
                .with_hint(format!(
                    "The TPM refuses every PIN for now (too many wrong PINs in total); try again in at most {seconds} s, or have an administrator reset it (tpm2_dictionarylockout --clear-lockout)."
                ));
        }
        KeyStoreError::PinIncorrect {
            tries_left: Some(tries_left),
        } => {
            failure = Failure::new(
                reason,
                format!("key store '{backend}': wrong PIN; the card allows {tries_left} more"),
            )
            .with_meta("backend", backend)
            .with_meta("tries_left", tries_left)
            .with_hint("This card's PIN is already set: give the card's PIN (or unblock the card with its PUK first).");
        }
        KeyStoreError::PinLocked => {
            failure = failure
                .with_meta("tries_left", 0)
                .with_hint("The card has blocked its PIN; unblock it with its PUK (e.g. ykman piv access unblock-pin) before enrolling.");
        }
        _ => {}
    }
    failure
}

/// What startup recovery found and cleaned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub pending_rolled_back: usize,
    pub orphan_keys_deleted: usize,
}

pub struct Engine {
    pin_policy: PinConfig,
    default_portal: Option<String>,
    default_backend: String,
    device_name: String,
    state: Arc<StateStore>,
    backends: Backends,
    portal: PortalConnector,
    /// One activation or enrollment at a time.
    enroll_lock: tokio::sync::Mutex<()>,
    /// One PIN-checking operation per user at a time, so concurrent
    /// guesses cannot outrun the attempt counter.
    user_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Engine {
    pub fn new(
        config: &Config,
        state: Arc<StateStore>,
        backends: Backends,
        portal: PortalConnector,
    ) -> Self {
        Self {
            pin_policy: config.pin,
            default_portal: config.portal_url.clone(),
            default_backend: config.default_backend.clone(),
            device_name: config.device_name.clone().unwrap_or_else(host_name),
            state,
            backends,
            portal,
            enroll_lock: tokio::sync::Mutex::new(()),
            user_locks: Mutex::new(HashMap::new()),
        }
    }

    /// Rolls back enrollments a crash interrupted and deletes keys that no
    /// user record names. Runs before the daemon serves.
    pub async fn recover(&self) -> Result<Recovery, Failure> {
        let mut recovery = Recovery::default();
        let users = self.state.users()?;
        for user in users.iter().filter(|u| u.state == UserState::Pending) {
            let backend = match self.backends.get(&user.backend) {
                Ok(backend) => backend,
                Err(e) => {
                    tracing::warn!(user = %user.name, reason = %e, "cannot roll back a half-made enrollment now; its key store is unavailable");
                    continue;
                }
            };
            let key_ref = user.key_ref.clone();
            let store = backend.store.clone();
            if let Err(e) = blocking(move || store.delete_key(&key_ref)).await? {
                tracing::warn!(user = %user.name, error = %e, "could not delete the key of a half-made enrollment");
                continue;
            }
            let state = self.state.clone();
            let name = user.name.clone();
            blocking(move || state.delete_user(&name)).await??;
            tracing::warn!(user = %user.name, "rolled back an enrollment interrupted by a crash");
            recovery.pending_rolled_back += 1;
        }
        let recorded: HashSet<(String, Vec<u8>)> = users
            .iter()
            .filter(|u| u.state == UserState::Active)
            .map(|u| (u.backend.clone(), u.key_ref.clone()))
            .collect();
        for backend in self.backends.available() {
            let store = backend.store.clone();
            let resident = match blocking(move || store.resident_keys()).await? {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::warn!(backend = %backend.info.name, error = %e, "cannot list keys for orphan cleanup");
                    continue;
                }
            };
            for key_ref in resident {
                if recorded.contains(&(backend.info.name.clone(), key_ref.clone())) {
                    continue;
                }
                let store = backend.store.clone();
                match blocking(move || store.delete_key(&key_ref)).await? {
                    Ok(()) => recovery.orphan_keys_deleted += 1,
                    Err(e) => {
                        tracing::warn!(backend = %backend.info.name, error = %e, "could not delete an orphaned key")
                    }
                }
            }
        }
        if recovery != Recovery::default() {
            tracing::warn!(
                ?recovery,
                "startup recovery cleaned up after an interrupted run"
            );
        }
        Ok(recovery)
    }

    pub async fn status(&self) -> Result<daemon::Status, Failure> {
        let device = self.state.device()?;
        let user_count = self.state.active_user_count()?;
        let mut backends = self.backends.describe(self.pin_policy.max_attempts);
        let stores = self.backends.available();
        let details = blocking(move || {
            stores
                .into_iter()
                .map(|b| (b.info.name, b.store.details()))
                .collect::<Vec<_>>()
        })
        .await?;
        for (name, facts) in details {
            if let Some(backend) = backends.iter_mut().find(|b| b.name == name) {
                backend.details = facts.into_iter().collect();
            }
        }
        Ok(daemon::Status {
            version: env!("CARGO_PKG_VERSION").into(),
            activated: device.is_some(),
            device_id: device
                .as_ref()
                .map(|d| d.device_id.clone())
                .unwrap_or_default(),
            portal_url: device
                .as_ref()
                .map(|d| d.portal_url.clone())
                .or_else(|| self.default_portal.clone())
                .unwrap_or_default(),
            backends,
            user_count,
            default_backend: self.default_backend.clone(),
            pin_policy: Some(daemon::PinPolicy {
                min_length: self.pin_policy.min_length,
                max_length: self.pin_policy.max_length,
                max_attempts: self.pin_policy.max_attempts,
            }),
            activated_at: device.as_ref().map_or(0, |d| d.activated_at),
            device_attestation: device
                .as_ref()
                .map(|d| d.attestation.clone())
                .unwrap_or_default(),
        })
    }

    /// Activates the device with a device code: makes the device key and
    /// registers it with the portal.
    pub async fn activate(&self, input: &str) -> Result<daemon::ActivateResponse, Failure> {
        let input = EnrollmentInput::parse(input)?;
        let _guard = self.enroll_lock.lock().await;
        if let Some(device) = self.device()? {
            return Err(Failure::new(
                Reason::AlreadyActivated,
                format!(
                    "this device is already activated as {} with {}",
                    device.device_id, device.portal_url
                ),
            ));
        }
        let portal_url = match input.portal_url() {
            Some(url) => url.to_string(),
            None => self.default_portal.clone().ok_or_else(|| {
                Failure::new(
                    Reason::InvalidArgument,
                    "a typed code needs a portal, and none is configured",
                )
                .with_hint("Set portal_url in fleetkeyd.toml, or use the fleetkey:// URI from the QR code.")
            })?,
        };
        let code = input.code().compact().to_string();
        let mut portal = self.portal.connect(&portal_url).await?;
        let checked = portal.check_code(&code).await?;
        if checked.kind() != CodeKind::Device {
            return Err(wrong_kind(
                "an add-user code",
                "activate this device",
                "fleetkeyctl user add",
            ));
        }
        let identity = self.hardware_identity().await?;
        let device_key = DeviceKey::generate()?;
        let public_key = device_key.public_key_der()?;
        let signature = device_key.sign_digest(&binding::digest(&binding::activation_message(
            &code,
            &public_key,
        )))?;
        let mut registered = portal
            .register_device(portal::RegisterDeviceRequest {
                code: code.clone(),
                device_public_key: public_key.clone(),
                device_name: self.device_name.clone(),
                signature,
                tpm: identity.as_ref().map(|(_, id)| portal::TpmIdentity {
                    ek_public: id.ek_public.clone(),
                    ek_certificate: id.ek_certificate.clone(),
                    ak_public: id.ak_public.clone(),
                }),
            })
            .await?;
        let registered = match (identity, registered.tpm_challenge.take()) {
            (Some((backend, _)), Some(challenge)) => {
                self.complete_tpm_activation(
                    &mut portal,
                    &backend,
                    &code,
                    &device_key,
                    &public_key,
                    challenge,
                )
                .await?
            }
            (Some((backend, _)), None) => {
                tracing::warn!(backend = %backend.info.name, "the portal registered the device without checking its TPM identity");
                registered
            }
            (None, _) => registered,
        };
        if registered.device_id.is_empty() {
            return Err(Failure::new(
                Reason::PortalError,
                format!("the portal at {portal_url} answered the activation without a device id"),
            ));
        }
        let record = DeviceRecord {
            device_id: registered.device_id.clone(),
            portal_url: portal_url.clone(),
            key_secret: device_key.secret(),
            public_key_der: public_key,
            activated_at: time::now_unix(),
            attestation: registered.attestation_detail.clone(),
        };
        let state = self.state.clone();
        blocking(move || state.set_device(&record)).await??;
        tracing::info!(device_id = %registered.device_id, portal = %portal_url, attestation = %registered.attestation_detail, "device activated");
        Ok(daemon::ActivateResponse {
            device_id: registered.device_id,
            portal_url,
            attestation: registered.attestation_detail,
        })
    }

    /// The hardware identity the device activates with: that of the first
    /// available key store that has one (the TPM). A key store that has
    /// one but cannot produce it fails the activation, rather than
    /// activating the device unattested behind the operator's back.
    async fn hardware_identity(&self) -> Result<Option<(Backend, HardwareIdentity)>, Failure> {
        for backend in self.backends.available() {
            if !backend.info.operations.contains(&Operation::Attest) {
                continue;
            }
            let store = backend.store.clone();
            let identity = blocking(move || store.hardware_identity())
                .await?
                .map_err(|e| key_store_failure(&backend.info.name, e))?;
            if let Some(identity) = identity {
                return Ok(Some((backend, identity)));
            }
        }
        Ok(None)
    }

    /// Answers the portal's credential challenge with the TPM and sends
    /// the recovered secret back, signed with the new device key.
    async fn complete_tpm_activation(
        &self,
        portal: &mut crate::portal_client::Portal,
        backend: &Backend,
        code: &str,
        device_key: &DeviceKey,
        public_key: &[u8],
        challenge: portal::TpmChallenge,
    ) -> Result<portal::RegisterDeviceResponse, Failure> {
        let store = backend.store.clone();
        let challenge = CredentialChallenge {
            credential_blob: challenge.credential_blob,
            encrypted_secret: challenge.encrypted_secret,
        };
        let secret = blocking(move || store.activate_credential(&challenge))
            .await?
            .map_err(|e| key_store_failure(&backend.info.name, e))?;
        let signature = device_key.sign_digest(&binding::digest(
            &binding::tpm_activation_message(code, public_key, &secret),
        ))?;
        portal
            .complete_tpm_activation(portal::CompleteTpmActivationRequest {
                code: code.to_string(),
                device_public_key: public_key.to_vec(),
                secret: secret.to_vec(),
                signature,
            })
            .await
    }

    /// What can be checked before a code is known (device activated, key
    /// store usable, PIN policy), so that a scan does not open the camera
    /// for an enrollment bound to fail.
    pub fn check_add_user(&self, pin: &Pin, backend: &str) -> Result<(), Failure> {
        let backend_name = if backend.is_empty() {
            self.default_backend.as_str()
        } else {
            backend
        };
        self.require_device()?;
        let store = self.backends.get(backend_name)?;
        pin_policy::check(&self.pin_policy, backend_name, &store.info.pin_rules, pin)
    }

    /// Enrolls the user an add-user code is bound to: key in the backend,
    /// pending record, registration with the portal, active record. Any
    /// failure undoes what was done.
    pub async fn add_user(
        &self,
        input: &str,
        pin: Pin,
        backend: &str,
        options: &CreateOptions,
    ) -> Result<daemon::User, Failure> {
        let input = EnrollmentInput::parse(input)?;
        let backend_name = if backend.is_empty() {
            self.default_backend.as_str()
        } else {
            backend
        };
        let _guard = self.enroll_lock.lock().await;
        let device = self.require_device()?;
        if let Some(url) = input.portal_url()
            && !same_url(url, &device.portal_url)
        {
            return Err(Failure::new(
                Reason::InvalidArgument,
                format!(
                    "this code is for the portal {url}, but the device is activated with {}",
                    device.portal_url
                ),
            )
            .with_hint("Ask the device's own portal for an add-user code."));
        }
        let backend = self.backends.get(backend_name)?;
        pin_policy::check(
            &self.pin_policy,
            backend_name,
            &backend.info.pin_rules,
            &pin,
        )?;

        let code = input.code().compact().to_string();
        let mut portal = self.portal.connect(&device.portal_url).await?;
        let checked = portal.check_code(&code).await?;
        if checked.kind() != CodeKind::User {
            return Err(wrong_kind(
                "a device activation code",
                "add a user",
                "fleetkeyctl activate",
            ));
        }
        let name = validate_user_name(&checked.user)?;
        if self.user_record(&name)?.is_some() {
            return Err(already_enrolled(&name));
        }

        let key_id = random_id("u-")?;
        let store = backend.store.clone();
        let key_pin = pin.clone();
        let key_options = options.clone();
        let enrolled = blocking(move || store.create_key_with(&key_id, &key_pin, &key_options))
            .await?
            .map_err(|e| key_store_failure(backend_name, e))?;
        let created = enrolled.key;
        let record = UserRecord {
            name: name.clone(),
            credential_id: String::new(),
            backend: backend.info.name.clone(),
            key_ref: created.key_ref.clone(),
            public_key_der: created.public_key_der.clone(),
            hardware_backed: backend.info.hardware_backed,
            state: UserState::Pending,
            failed_attempts: 0,
            enrolled_at: time::now_unix(),
        };
        let state = self.state.clone();
        let pending = record.clone();
        if let Err(failure) = blocking(move || state.insert_user(&pending))
            .await
            .and_then(|r| r.map_err(Failure::from))
        {
            self.delete_key(&backend, &created.key_ref).await;
            return Err(failure);
        }

        let registered = self
            .register_user(&mut portal, &device, &backend, &code, &record, &pin)
            .await;
        let (registered, attestation_format) = match registered {
            Ok(registered) => registered,
            Err(failure) => {
                self.forget_user(&backend, &record).await;
                return Err(failure);
            }
        };
        let (portal_hardware_backed, portal_detail) = (
            registered.hardware_backed,
            registered.attestation_detail.clone(),
        );
        let state = self.state.clone();
        let (user, credential, at) = (
            name.clone(),
            registered.credential_id.clone(),
            registered.enrolled_at,
        );
        // Should this fail, the portal has the key but we could not record
        // it: the pending record is rolled back at the next start.
        blocking(move || state.activate_user(&user, &credential, at)).await??;
        tracing::info!(user = %name, backend = %backend.info.name, "user enrolled");
        let active = UserRecord {
            credential_id: registered.credential_id,
            enrolled_at: registered.enrolled_at,
            state: UserState::Active,
            ..record
        };
        let mut message = user_message(&active, self.max_attempts_for(&active.backend))?;
        message.notes = enrolled.notes;
        if attestation_format == "none" && backend.info.hardware_backed {
            message
                .notes
                .push("no attestation: the key store cannot prove where the key was made; the portal's policy decides".into());
        } else if attestation_format != "none" && !portal_hardware_backed {
            message.notes.push(format!(
                "the portal did not record the key as hardware-backed: {}",
                if portal_detail.is_empty() {
                    "it could not check the attestation"
                } else {
                    &portal_detail
                }
            ));
        }
        Ok(message)
    }

    async fn register_user(
        &self,
        portal: &mut crate::portal_client::Portal,
        device: &DeviceRecord,
        backend: &Backend,
        code: &str,
        record: &UserRecord,
        pin: &Pin,
    ) -> Result<(portal::EnrollUserResponse, String), Failure> {
        let name = &backend.info.name;
        let store = backend.store.clone();
        let key_ref = record.key_ref.clone();
        let nonce = binding::key_attestation_nonce(&device.device_id, code);
        let key_pin = pin.clone();
        let attestation = match blocking(move || store.attest(&key_ref, &key_pin, &nonce)).await? {
            Ok(attestation) => attestation,
            Err(KeyStoreError::Unsupported { .. }) => Attestation::none(),
            Err(e) => return Err(key_store_failure(name, e)),
        };
        let message =
            binding::enrollment_message(&device.device_id, code, &record.public_key_der, name);
        let digest = binding::digest(&message);
        let store = backend.store.clone();
        let key_ref = record.key_ref.clone();
        let key_pin = pin.clone();
        let user_signature = blocking(move || store.sign_digest(&key_ref, &key_pin, &digest))
            .await?
            .map_err(|e| key_store_failure(name, e))?;
        let device_signature = DeviceKey::from_secret(&device.key_secret)?.sign_digest(&digest)?;
        let format = attestation.format.clone();
        portal
            .enroll_user(portal::EnrollUserRequest {
                device_id: device.device_id.clone(),
                code: code.to_string(),
                user_public_key: record.public_key_der.clone(),
                backend: name.clone(),
                attestation: Some(portal::Attestation {
                    format: attestation.format,
                    data: attestation.data,
                }),
                user_signature,
                device_signature,
            })
            .await
            .map(|registered| (registered, format))
    }

    pub async fn list_users(&self) -> Result<Vec<daemon::User>, Failure> {
        let users = self.state.users()?;
        users
            .iter()
            .filter(|u| u.state == UserState::Active)
            .map(|u| user_message(u, self.max_attempts_for(&u.backend)))
            .collect()
    }

    pub async fn get_user(&self, name: &str) -> Result<daemon::User, Failure> {
        let user = self.require_user(name)?;
        user_message(&user, self.max_attempts_for(&user.backend))
    }

    /// Revokes the user at the portal (best effort), then deletes the
    /// record and the key, in that order, so a crash leaves at worst an
    /// orphaned key that the next start deletes.
    pub async fn remove_user(&self, name: &str) -> Result<daemon::RemoveUserResponse, Failure> {
        let _guard = self.enroll_lock.lock().await;
        let user = self.require_user(name)?;
        let device = self.require_device()?;
        let revoked = self.revoke(&device, &user).await;
        let backend = self.backends.get(&user.backend);
        let state = self.state.clone();
        let user_name = user.name.clone();
        blocking(move || state.delete_user(&user_name)).await??;
        match backend {
            Ok(backend) => self.delete_key(&backend, &user.key_ref).await,
            Err(e) => {
                tracing::warn!(user = %name, reason = %e, "key store unavailable; the key is deleted at a later start")
            }
        }
        tracing::info!(user = %name, revoked_at_portal = revoked.is_ok(), "user removed");
        Ok(daemon::RemoveUserResponse {
            revoked_at_portal: revoked.is_ok(),
            portal_message: revoked.err().map(|f| f.message).unwrap_or_default(),
        })
    }

    async fn revoke(&self, device: &DeviceRecord, user: &UserRecord) -> Result<(), Failure> {
        let timestamp = time::now_unix();
        let message = binding::revocation_message(
            &device.device_id,
            &user.name,
            &user.credential_id,
            timestamp,
        );
        let device_signature =
            DeviceKey::from_secret(&device.key_secret)?.sign_digest(&binding::digest(&message))?;
        let mut portal = self.portal.connect(&device.portal_url).await?;
        portal
            .revoke_user(portal::RevokeUserRequest {
                device_id: device.device_id.clone(),
                user: user.name.clone(),
                credential_id: user.credential_id.clone(),
                timestamp,
                device_signature,
            })
            .await
    }

    /// Signs a SHA-256 digest with the user's key, counting wrong PINs.
    pub async fn sign(
        &self,
        name: &str,
        pin: Pin,
        digest: &[u8],
    ) -> Result<daemon::SignResponse, Failure> {
        let digest: [u8; 32] = digest.try_into().map_err(|_| {
            Failure::new(
                Reason::InvalidArgument,
                format!(
                    "the digest must be 32 bytes (SHA-256), not {}",
                    digest.len()
                ),
            )
        })?;
        let lock = self.user_lock(name)?;
        let _guard = lock.lock().await;
        let user = self.require_user(name)?;
        self.refuse_if_locked(&user)?;
        let backend = self.backends.get(&user.backend)?;
        let store = backend.store.clone();
        let key_ref = user.key_ref.clone();
        let outcome = blocking(move || store.sign_digest(&key_ref, &pin, &digest)).await?;
        let signature = self.count_pin_outcome(&user, outcome).await?;
        Ok(daemon::SignResponse {
            signature_der: signature,
            public_key_pem: public_key_pem(&user.public_key_der)?,
        })
    }

    /// Changes a user's PIN, with the old one.
    pub async fn change_pin(&self, name: &str, old_pin: Pin, new_pin: Pin) -> Result<(), Failure> {
        let lock = self.user_lock(name)?;
        let _guard = lock.lock().await;
        let user = self.require_user(name)?;
        self.refuse_if_locked(&user)?;
        let backend = self.backends.get(&user.backend)?;
        pin_policy::check(
            &self.pin_policy,
            &backend.info.name,
            &backend.info.pin_rules,
            &new_pin,
        )?;
        let store = backend.store.clone();
        let key_ref = user.key_ref.clone();
        let outcome = blocking(move || store.change_pin(&key_ref, &old_pin, &new_pin)).await?;
        let new_ref = self.count_pin_outcome(&user, outcome).await?;
        if new_ref != user.key_ref {
            let state = self.state.clone();
            let name = user.name.clone();
            blocking(move || state.set_key_ref(&name, &new_ref)).await??;
        }
        tracing::info!(user = %name, "PIN changed");
        Ok(())
    }

    /// Sets a new PIN with the PUK (key stores that have one, e.g. PIV
    /// cards) and clears the user's wrong-PIN count.
    pub async fn unblock_pin(&self, name: &str, puk: Pin, new_pin: Pin) -> Result<(), Failure> {
        let lock = self.user_lock(name)?;
        let _guard = lock.lock().await;
        let user = self.require_user(name)?;
        let backend = self.backends.get(&user.backend)?;
        pin_policy::check(
            &self.pin_policy,
            &backend.info.name,
            &backend.info.pin_rules,
            &new_pin,
        )?;
        let store = backend.store.clone();
        let key_ref = user.key_ref.clone();
        match blocking(move || store.unblock_pin(&key_ref, &puk, &new_pin)).await? {
            Ok(()) => {}
            Err(KeyStoreError::PukIncorrect { tries_left }) => {
                let tries_left = tries_left.unwrap_or(0);
                let failure = if tries_left == 0 {
                    Failure::new(
                        Reason::PukWrong,
                        format!("the PUK of {name}'s card is blocked; the card must be reset and the user enrolled again"),
                    )
                    .with_hint(format!(
                        "Reset the card (e.g. ykman piv reset), then remove and re-enroll {name}."
                    ))
                } else {
                    Failure::new(
                        Reason::PukWrong,
                        format!(
                            "wrong PUK for {name}'s card; {tries_left} {} left",
                            if tries_left == 1 { "try" } else { "tries" }
                        ),
                    )
                };
                return Err(failure.with_meta("tries_left", tries_left));
            }
            Err(e) => return Err(key_store_failure(&user.backend, e)),
        }
        if user.failed_attempts > 0 {
            let state = self.state.clone();
            let user_name = user.name.clone();
            blocking(move || state.reset_failed_attempts(&user_name)).await??;
        }
        tracing::info!(user = %name, "PIN unblocked with the PUK");
        Ok(())
    }

    /// The readers and cards a key store sees (default: pcsc).
    pub async fn list_cards(&self, backend: &str) -> Result<Vec<daemon::Card>, Failure> {
        let name = if backend.is_empty() { "pcsc" } else { backend };
        let backend = self.backends.get(name)?;
        let store = backend.store.clone();
        let cards = blocking(move || store.cards())
            .await?
            .map_err(|e| key_store_failure(name, e))?;
        Ok(cards
            .into_iter()
            .map(|c| daemon::Card {
                reader: c.reader,
                card_present: c.card_present,
                piv: c.application_found,
                card_id: c.card_id,
                serial: c.serial,
                problem: c.problem,
            })
            .collect())
    }

    /// Turns the result of a PIN-checked operation into the answer, and
    /// keeps the user's wrong-PIN count.
    async fn count_pin_outcome<T>(
        &self,
        user: &UserRecord,
        outcome: Result<T, KeyStoreError>,
    ) -> Result<T, Failure> {
        let max = self.max_attempts_for(&user.backend);
        match outcome {
            Ok(value) => {
                if user.failed_attempts > 0 {
                    let state = self.state.clone();
                    let name = user.name.clone();
                    blocking(move || state.reset_failed_attempts(&name)).await??;
                }
                Ok(value)
            }
            Err(KeyStoreError::PinIncorrect {
                tries_left: hardware,
            }) => {
                let state = self.state.clone();
                let name = user.name.clone();
                let failed = blocking(move || state.record_failed_attempt(&name)).await??;
                let ours = max.saturating_sub(failed);
                let tries_left = hardware.map_or(ours, |h| h.min(ours));
                tracing::warn!(user = %user.name, failed, "wrong PIN");
                if tries_left == 0 {
                    return Err(Failure::new(
                        Reason::PinLocked,
                        format!(
                            "wrong PIN; user {} is now locked after {failed} wrong PINs",
                            user.name
                        ),
                    )
                    .with_meta("tries_left", 0));
                }
                Err(Failure::new(
                    Reason::PinWrong,
                    format!(
                        "wrong PIN for user {}; {tries_left} {} left",
                        user.name,
                        if tries_left == 1 { "try" } else { "tries" }
                    ),
                )
                .with_meta("tries_left", tries_left))
            }
            Err(KeyStoreError::PinLocked) => {
                let mut failure = Failure::new(
                    Reason::PinLocked,
                    format!("the key store has blocked the PIN of user {}", user.name),
                )
                .with_meta("tries_left", 0);
                let unblockable = self
                    .backends
                    .get(&user.backend)
                    .is_ok_and(|b| b.info.operations.contains(&Operation::UnblockPin));
                if unblockable {
                    failure = failure.with_hint(format!(
                        "The card has blocked its PIN after too many wrong PINs; unblock it with the card's PUK: fleetkeyctl user pin unblock {}",
                        user.name
                    ));
                }
                Err(failure)
            }
            Err(e) => Err(key_store_failure(&user.backend, e)),
        }
    }

    /// Wrong PINs in a row after which a user of this backend is locked.
    fn max_attempts_for(&self, backend: &str) -> u32 {
        match self.backends.get(backend) {
            Ok(backend) => {
                crate::backends::max_attempts(backend.store.as_ref(), self.pin_policy.max_attempts)
            }
            Err(_) => self.pin_policy.max_attempts,
        }
    }

    fn refuse_if_locked(&self, user: &UserRecord) -> Result<(), Failure> {
        if user.failed_attempts >= self.max_attempts_for(&user.backend) {
            return Err(Failure::new(
                Reason::PinLocked,
                format!(
                    "user {} is locked after {} wrong PINs",
                    user.name, user.failed_attempts
                ),
            )
            .with_meta("tries_left", 0));
        }
        Ok(())
    }

    fn user_lock(&self, name: &str) -> Result<Arc<tokio::sync::Mutex<()>>, Failure> {
        let mut locks = self
            .user_locks
            .lock()
            .map_err(|_| Failure::new(Reason::Internal, "the user lock table was poisoned"))?;
        Ok(locks.entry(name.to_string()).or_default().clone())
    }

    fn device(&self) -> Result<Option<DeviceRecord>, Failure> {
        Ok(self.state.device()?)
    }

    fn require_device(&self) -> Result<DeviceRecord, Failure> {
        self.device()?.ok_or_else(|| {
            Failure::new(
                Reason::DeviceNotActivated,
                "this device has not been activated yet",
            )
        })
    }

    fn user_record(&self, name: &str) -> Result<Option<UserRecord>, Failure> {
        Ok(self.state.user(name)?)
    }

    fn require_user(&self, name: &str) -> Result<UserRecord, Failure> {
        match self.user_record(name)? {
            Some(user) if user.state == UserState::Active => Ok(user),
            _ => Err(Failure::new(
                Reason::UserUnknown,
                format!("no user named '{name}' is enrolled on this device"),
            )),
        }
    }

    async fn delete_key(&self, backend: &Backend, key_ref: &[u8]) {
        let store = backend.store.clone();
        let key_ref = key_ref.to_vec();
        match blocking(move || store.delete_key(&key_ref)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(backend = %backend.info.name, error = %e, "could not delete a key; it is retried at the next start")
            }
            Err(e) => {
                tracing::warn!(backend = %backend.info.name, error = %e, "could not delete a key; it is retried at the next start")
            }
        }
    }

    /// Undoes a pending enrollment: record, then key.
    async fn forget_user(&self, backend: &Backend, record: &UserRecord) {
        let state = self.state.clone();
        let name = record.name.clone();
        match blocking(move || state.delete_user(&name)).await {
            Ok(Ok(())) => self.delete_key(backend, &record.key_ref).await,
            _ => {
                tracing::warn!(user = %record.name, "could not roll back a pending enrollment; it is rolled back at the next start")
            }
        }
    }
}

fn wrong_kind(is: &str, cannot: &str, instead: &str) -> Failure {
    Failure::new(
        Reason::CodeWrongKind,
        format!("this is {is}; it cannot {cannot}"),
    )
    .with_hint(format!(
        "Use it with {instead}, or ask the portal for the right kind of code."
    ))
}

fn already_enrolled(name: &str) -> Failure {
    Failure::new(
        Reason::AlreadyEnrolled,
        format!("user {name} is already enrolled on this device"),
    )
    .with_hint(format!(
        "Remove the user first (fleetkeyctl user remove {name}) to enroll again."
    ))
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

fn validate_user_name(name: &str) -> Result<String, Failure> {
    let valid = !name.trim().is_empty()
        && name.chars().count() <= 128
        && !name.chars().any(char::is_control);
    if valid {
        Ok(name.to_string())
    } else {
        Err(Failure::new(
            Reason::PortalError,
            "the portal bound this code to an empty or unusable user name",
        ))
    }
}

fn random_id(prefix: &str) -> Result<String, Failure> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes)
        .map_err(|e| Failure::new(Reason::Internal, format!("no randomness: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}{hex}"))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "fleetkey-device".into())
}

fn public_key_pem(der: &[u8]) -> Result<String, Failure> {
    p256::PublicKey::from_public_key_der(der)
        .and_then(|key| key.to_public_key_pem(LineEnding::LF))
        .map_err(|e| {
            Failure::new(
                Reason::StateError,
                format!("a stored public key is damaged: {e}"),
            )
        })
}

fn user_message(user: &UserRecord, max_attempts: u32) -> Result<daemon::User, Failure> {
    Ok(daemon::User {
        name: user.name.clone(),
        credential_id: user.credential_id.clone(),
        backend: user.backend.clone(),
        hardware_backed: user.hardware_backed,
        public_key_pem: public_key_pem(&user.public_key_der)?,
        enrolled_at: user.enrolled_at,
        failed_attempts: user.failed_attempts,
        tries_left: max_attempts.saturating_sub(user.failed_attempts),
        locked: user.failed_attempts >= max_attempts,
        notes: Vec::new(),
    })
}
