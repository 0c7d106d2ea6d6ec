//! What the daemon does, independent of how it is asked. The gRPC layer
//! (server.rs) only checks who is calling and converts messages. One
//! module per flow:
//!
//! - `activation`: the device's activation with the portal;
//! - `enrollment`: adding a user (key, pending row, portal, active row);
//! - `users`: listing, showing and removing users;
//! - `signing`: signing, PIN change and unblock, wrong-PIN counting, the
//!   per-user locks;
//! - `recovery`: startup recovery of what a crash interrupted;
//! - `reset`: enrolling a user again under the same name with a reset code;
//! - `keystore`: the one async wrapper around a key store;
//! - `failure`: key-store errors as `Failure`s;
//! - `approvals`: login challenges from the portal stream, answered here.

mod activation;
mod approvals;
mod audit_log;
pub mod budget;
mod deactivation;
mod enrollment;
mod events;
mod failure;
mod integrity;
mod keystore;
mod precheck;
mod recovery;
mod reset;
mod signing;
#[cfg(test)]
mod tests;
mod tpm;
mod users;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fleetkey_proto::{Failure, Reason, daemon, user_name};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};

use approvals::Approvals;
pub use approvals::MAX_PENDING_CHALLENGES;
pub use events::EngineEvent;
pub use keystore::{Requester, Store, WorkQueue};
pub use recovery::Recovery;

use crate::audit::{AuditEvent, AuditLog};
use crate::backends::Backends;
use crate::config::{Config, IntegrityConfig, PinConfig};
use crate::portal_client::PortalConnector;
use crate::state::{DeviceRecord, StateError, StateStore, UserRecord, UserState};

impl From<StateError> for Failure {
    fn from(error: StateError) -> Self {
        tracing::error!(%error, "state store failure");
        Failure::new(Reason::StateError, error.to_string())
    }
}

pub struct Engine {
    /// The `[pin]` policy; SIGHUP replaces it (`set_pin_policy`).
    pin_policy: std::sync::RwLock<PinConfig>,
    default_portal: Option<String>,
    default_backend: String,
    device_name: String,
    state: Arc<StateStore>,
    backends: Backends,
    portal: PortalConnector,
    /// The hash-chained record of security events (audit.rs).
    audit: Arc<AuditLog>,
    /// `[integrity]`: the checks' root and the gate (integrity.rs).
    integrity: IntegrityConfig,
    /// Bounds the key-store work that runs at once, and each caller's
    /// share of it.
    queue: Arc<WorkQueue>,
    /// One activation or enrollment at a time.
    enroll_lock: tokio::sync::Mutex<()>,
    /// One PIN-checking operation per user at a time, so concurrent
    /// guesses cannot outrun the attempt counter. Entries only for
    /// enrolled users (looked up first), removed with the user.
    user_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Users added and removed, PINs locked: for front ends (events.rs).
    events: events::Events,
    /// Login challenges: the portal stream's state and the watchers.
    approvals: Approvals,
    /// The lockout budget of key stores whose hardware counts wrong PINs
    /// for all keys together (a TPM; budget.rs).
    budgets: Arc<budget::Budgets>,
}

impl Engine {
    pub fn new(
        config: &Config,
        state: Arc<StateStore>,
        backends: Backends,
        portal: PortalConnector,
        audit: Arc<AuditLog>,
    ) -> Self {
        let queue = WorkQueue::sized_to_machine();
        queue.release_memory_of(backends.available().into_iter().map(|b| b.store).collect());
        Self {
            pin_policy: std::sync::RwLock::new(config.pin),
            default_portal: config.portal_url.clone(),
            default_backend: config.default_backend.clone(),
            device_name: config.device_name.clone().unwrap_or_else(host_name),
            state,
            backends,
            portal,
            audit,
            integrity: config.integrity.clone(),
            queue,
            enroll_lock: tokio::sync::Mutex::new(()),
            user_locks: Mutex::new(HashMap::new()),
            events: events::Events::default(),
            approvals: Approvals::default(),
            budgets: Arc::default(),
        }
    }

    /// Follows users added and removed and PINs locked, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<EngineEvent> {
        self.events.subscribe()
    }

    /// Records a security event in the audit log, for `requester`.
    fn audit(&self, requester: Requester, event: AuditEvent) {
        let uid = match requester {
            Requester::Uid(uid) => Some(uid),
            Requester::Daemon => None,
        };
        self.audit.record(uid, event);
    }

    /// The `[pin]` policy in force now.
    pub fn pin_policy(&self) -> PinConfig {
        match self.pin_policy.read() {
            Ok(policy) => *policy,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Replaces the `[pin]` policy (SIGHUP): new PINs follow it, and wrong
    /// PINs are counted against its `max_attempts` from now on.
    pub fn set_pin_policy(&self, policy: PinConfig) {
        match self.pin_policy.write() {
            Ok(mut current) => *current = policy,
            Err(poisoned) => *poisoned.into_inner() = policy,
        }
    }

    pub async fn status(&self) -> Result<daemon::Status, Failure> {
        let device = self.state.device()?;
        let user_count = self.state.active_user_count()?;
        let mut backends = self.backends.describe(self.pin_policy().max_attempts);
        for store in self.stores() {
            let facts = store.details().await?;
            let budget = self.budget_details(&store).await;
            if let Some(backend) = backends.iter_mut().find(|b| b.name == store.name()) {
                backend.details = facts.into_iter().chain(budget).collect();
            }
        }
        let (integrity_summary, integrity_level, integrity_remotely_verifiable) =
            self.integrity_status().await;
        let mut status = daemon::Status {
            integrity_summary,
            integrity_level,
            integrity_remotely_verifiable,
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
                min_length: self.pin_policy().min_length,
                max_length: self.pin_policy().max_length,
                max_attempts: self.pin_policy().max_attempts,
            }),
            activated_at: device.as_ref().map_or(0, |d| d.activated_at),
            device_attestation: device
                .as_ref()
                .map(|d| d.attestation.clone())
                .unwrap_or_default(),
            ..Default::default()
        };
        self.stream_status(&mut status);
        Ok(status)
    }

    /// The readers and cards a key store sees (default: pcsc).
    pub async fn list_cards(&self, backend: &str) -> Result<Vec<daemon::Card>, Failure> {
        let name = if backend.is_empty() { "pcsc" } else { backend };
        let cards = self.store(name)?.cards().await?;
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

    /// The named key store, or why it cannot be used.
    fn store(&self, name: &str) -> Result<Store, Failure> {
        Ok(Store::new(self.backends.get(name)?, self.queue.clone()))
    }

    /// Every available key store.
    fn stores(&self) -> Vec<Store> {
        self.backends
            .available()
            .into_iter()
            .map(|backend| Store::new(backend, self.queue.clone()))
            .collect()
    }

    /// Runs a state-store write (which syncs to disk) on the blocking pool.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&StateStore) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, Failure> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || work(&state))
            .await
            .map_err(|e| Failure::new(Reason::Internal, format!("a worker thread failed: {e}")))?
            .map_err(Failure::from)
    }

    /// Wrong PINs in a row after which a user of this backend is locked.
    fn max_attempts_for(&self, backend: &str) -> u32 {
        match self.store(backend) {
            Ok(store) => store.max_attempts(self.pin_policy().max_attempts),
            Err(_) => self.pin_policy().max_attempts,
        }
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

    /// The enrolled (active) user a request names. The name is looked up
    /// as given, then in its normalized form; a name that breaks the rule
    /// (docs/user-names.md) is refused without being copied anywhere.
    fn require_user(&self, name: &str) -> Result<UserRecord, Failure> {
        let active = |user: Option<UserRecord>| user.filter(|u| u.state == UserState::Active);
        if let Some(user) = active(self.user_record(name)?) {
            return Ok(user);
        }
        let normalized = user_name::normalize(name).map_err(name_invalid)?;
        if normalized != name
            && let Some(user) = active(self.user_record(&normalized)?)
        {
            return Ok(user);
        }
        Err(Failure::new(
            Reason::UserUnknown,
            format!("no user named '{normalized}' is enrolled on this device"),
        ))
    }

    async fn delete_key(&self, store: &Store, key_ref: &[u8]) {
        match store.delete_key(key_ref.to_vec()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(backend = %store.name(), error = %e, "could not delete a key; it is retried at the next start")
            }
            Err(e) => {
                tracing::warn!(backend = %store.name(), error = %e, "could not delete a key; it is retried at the next start")
            }
        }
    }

    /// Undoes a pending enrollment: record, then key.
    async fn forget_user(&self, store: &Store, record: &UserRecord) {
        let name = record.name.clone();
        match self.write(move |state| state.delete_user(&name)).await {
            Ok(()) => self.delete_key(store, &record.key_ref).await,
            Err(_) => {
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

/// A user name that breaks the rule. The message says why, never the
/// name itself (it may be megabytes long).
fn name_invalid(error: user_name::UserNameError) -> Failure {
    Failure::new(Reason::UserNameInvalid, error.to_string())
        .with_hint("User names follow one rule: see docs/user-names.md.")
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
        // Filled in by the callers that read it from state.db.
        pin_change_required: false,
    })
}
