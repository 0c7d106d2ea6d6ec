//! The TPM lockout budget in the engine (the rule is budget.rs): reading
//! the shared counter, admitting PIN attempts, refusing with
//! `TPM_BUDGET_SPENT`, and `tpm provision`.

use fleetkey_plugin::{LockoutParameters, SharedLockout};
use fleetkey_proto::{Failure, Reason, daemon, time};
use zeroize::Zeroizing;

use super::budget::{self, Decision, Ticket};
use super::{Engine, Requester, Store};
use crate::audit::AuditEvent;
use crate::state::UserRecord;

/// Largest values `tpm provision` accepts (TPMs cap maxTries; these keep
/// the products well inside u32).
const MAX_USERS: u32 = 10_000;
const MAX_PER_USER: u32 = 100;
/// lockoutRecovery when none is given: a wrong lockout authorization
/// blocks further tries for a day.
const DEFAULT_LOCKOUT_RECOVERY: u32 = 86_400;

impl Engine {
    /// Reads the shared counter of every key store that has one (at start).
    pub(super) async fn read_lockout_counters(&self) {
        for store in self.stores() {
            if let Err(failure) = self.read_lockout_counter(&store).await {
                tracing::warn!(backend = %store.name(), %failure, "cannot read the key store's shared wrong-PIN counter");
            }
        }
    }

    /// Reads one store's shared counter now and records it (memory and
    /// state.db). None for stores without one. A counter above 0 on a TPM
    /// without a lockout authorization is reset first, where the store's
    /// config allows (anyone who can open the TPM could do it).
    async fn read_lockout_counter(&self, store: &Store) -> Result<Option<SharedLockout>, Failure> {
        let Some(mut lockout) = self.peek_lockout_counter(store).await? else {
            return Ok(None);
        };
        if lockout.counter > 0 && !lockout.lockout_auth_set && !lockout.in_lockout {
            match store.reset_shared_lockout().await {
                Ok(true) => {
                    self.audit(
                        Requester::Daemon,
                        AuditEvent::TpmCounterReset {
                            backend: store.name().to_string(),
                            tpm_counter: lockout.counter,
                        },
                    );
                    if let Some(after) = self.peek_lockout_counter(store).await? {
                        lockout = after;
                    }
                }
                Ok(false) => {}
                Err(failure) => {
                    tracing::warn!(backend = %store.name(), %failure, "cannot reset the TPM's wrong-PIN counter");
                }
            }
        }
        let backend = store.name().to_string();
        self.write(move |state| {
            state.record_budget_reading(
                &backend,
                lockout.counter,
                lockout.max_tries,
                lockout.interval_seconds,
                time::now_unix(),
            )
        })
        .await?;
        Ok(Some(lockout))
    }

    /// Reads one store's shared counter now, in memory only.
    async fn peek_lockout_counter(&self, store: &Store) -> Result<Option<SharedLockout>, Failure> {
        if self.budgets.is_without(store.name()) {
            return Ok(None);
        }
        let Some(lockout) = store.shared_lockout().await? else {
            self.budgets.mark_without(store.name());
            return Ok(None);
        };
        self.budgets.observe(store.name(), lockout)?;
        Ok(Some(lockout))
    }

    /// Lets one PIN attempt of `user` through to the key store, or refuses
    /// it (`TPM_BUDGET_SPENT`) before the hardware is asked. The ticket is
    /// held until the answer has been counted.
    pub(super) async fn admit_pin_attempt(
        &self,
        who: Requester,
        user: &UserRecord,
        store: &Store,
    ) -> Result<Option<Ticket>, Failure> {
        if !self.budgets.knows(store.name()) {
            // Not read at start (the TPM was away): read now.
            if self.read_lockout_counter(store).await?.is_none() {
                return Ok(None);
            }
        }
        if let Ok(ticket) = self.budgets.admit(store.name(), user.failed_attempts)? {
            return Ok(ticket);
        }
        // The estimate refuses: read the TPM again (it may have decayed
        // further, or been reset) and decide on that.
        self.read_lockout_counter(store).await?;
        match self.budgets.admit(store.name(), user.failed_attempts)? {
            Ok(ticket) => Ok(ticket),
            Err((decision, lockout)) => {
                let wait = match decision {
                    Decision::Refuse { wait_seconds } => wait_seconds,
                    Decision::Pass => None,
                };
                self.audit(
                    who,
                    AuditEvent::TpmBudgetSpent {
                        user: user.name.clone(),
                        backend: store.name().to_string(),
                        tpm_counter: lockout.counter,
                        tpm_max_tries: lockout.max_tries,
                        retry_after_seconds: wait,
                    },
                );
                tracing::warn!(user = %user.name, counter = lockout.counter, max_tries = lockout.max_tries, "PIN attempt refused by the TPM lockout budget");
                Err(budget_failure(user, store.name(), &lockout, wait))
            }
        }
    }

    /// After a PIN attempt the hardware refused: read its counter again.
    pub(super) async fn after_pin_failure(&self, store: &Store) {
        if !self.budgets.knows(store.name()) {
            return;
        }
        if let Err(failure) = self.read_lockout_counter(store).await {
            tracing::warn!(backend = %store.name(), %failure, "cannot read the TPM's counter after a wrong PIN");
        }
    }

    /// The budget's facts for `status` (and `doctor`), as details keys.
    pub(super) async fn budget_details(&self, store: &Store) -> Vec<(String, String)> {
        let lockout = match self.peek_lockout_counter(store).await {
            Ok(Some(lockout)) => lockout,
            Ok(None) => return Vec::new(),
            Err(e) => return vec![("budget".into(), format!("cannot be read: {e}"))],
        };
        let in_flight = self.budgets.current(store.name()).map_or(0, |(_, n)| n);
        let room = budget::room(&lockout, lockout.counter);
        let clean = budget::decide(&lockout, lockout.counter, in_flight, 0);
        let erring = budget::decide(&lockout, lockout.counter, in_flight, 1);
        let record = self.state.budget(store.name()).ok().flatten();
        let users = self.users_of(store.name());
        let mut details = vec![
            ("da_max_tries".to_string(), lockout.max_tries.to_string()),
            ("da_counter".to_string(), lockout.counter.to_string()),
            (
                "da_recovery_s".to_string(),
                lockout.interval_seconds.to_string(),
            ),
            (
                "da_lockout_recovery_s".to_string(),
                lockout.lockout_recovery_seconds.to_string(),
            ),
            ("da_in_lockout".to_string(), lockout.in_lockout.to_string()),
            (
                "lockout_auth_set".to_string(),
                lockout.lockout_auth_set.to_string(),
            ),
            ("budget_room".to_string(), room.to_string()),
            ("budget_reserve".to_string(), budget::RESERVE.to_string()),
            (
                "budget".to_string(),
                format!(
                    "the TPM can take {room} more wrong PIN{} ({} reserved for users who have made no mistake); users with wrong PINs: {}; users without: {}",
                    if room == 1 { "" } else { "s" },
                    budget::RESERVE.min(room),
                    verdict(erring),
                    verdict(clean),
                ),
            ),
        ];
        if let Decision::Refuse {
            wait_seconds: Some(wait),
        } = erring
        {
            details.push(("budget_wait_s".to_string(), wait.to_string()));
        }
        let provisioned = match record.filter(|r| r.provisioned_at > 0) {
            Some(r) if r.provisioned_max_tries == lockout.max_tries => format!(
                "for {} users x {} wrong PINs (maxTries {}); {users} users enrolled now{}",
                r.provisioned_users,
                r.provisioned_per_user,
                r.provisioned_max_tries,
                if users > r.provisioned_users {
                    ": more than provisioned, run fleetkeyctl tpm provision again"
                } else {
                    ""
                }
            ),
            Some(r) => format!(
                "maxTries is {} but fleetkey provisioned {}: the TPM was changed or cleared since; run fleetkeyctl tpm provision",
                lockout.max_tries, r.provisioned_max_tries
            ),
            None => "no: the TPM's own parameters (fleetkeyctl tpm provision sets them for this device's users)".to_string(),
        };
        details.push(("provisioned".to_string(), provisioned));
        if !lockout.lockout_auth_set {
            details.push(("lockout_auth".to_string(), NO_LOCKOUT_AUTH.to_string()));
        }
        details
    }

    /// Active users whose keys are in `backend`.
    fn users_of(&self, backend: &str) -> u32 {
        let count = self.state.active_users_of(backend).unwrap_or(0);
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// `tpm provision`: sets the TPM's dictionary-attack parameters for
    /// this device's users (admin only; server.rs checks).
    pub async fn provision_tpm(
        &self,
        who: Requester,
        request: daemon::ProvisionTpmRequest,
    ) -> Result<daemon::ProvisionTpmResponse, Failure> {
        let backend = if request.backend.is_empty() {
            "tpm"
        } else {
            request.backend.as_str()
        };
        let store = self.store(backend)?.for_requester(who);
        let Some(before) = store.shared_lockout().await? else {
            return Err(Failure::new(
                Reason::Unsupported,
                format!("key store '{backend}' has no shared wrong-PIN counter to provision"),
            ));
        };
        let users = match request.users {
            0 => self.users_of(backend).max(1),
            n => n,
        };
        let per_user = match request.per_user {
            0 => self.pin_policy().max_attempts,
            n => n,
        };
        if users > MAX_USERS || per_user > MAX_PER_USER {
            return Err(Failure::new(
                Reason::InvalidArgument,
                format!("at most {MAX_USERS} users and {MAX_PER_USER} wrong PINs per user"),
            ));
        }
        let max_tries = budget::provisioned_max_tries(users, per_user).ok_or_else(|| {
            Failure::new(
                Reason::InvalidArgument,
                "too many users or wrong PINs per user",
            )
        })?;
        let parameters = LockoutParameters {
            max_tries,
            interval_seconds: match request.recovery_seconds {
                0 => budget::provisioned_recovery_time(users, per_user),
                n => n,
            },
            lockout_recovery_seconds: match request.lockout_recovery_seconds {
                0 => DEFAULT_LOCKOUT_RECOVERY,
                n => n,
            },
        };
        if request.lockout_auth.len() > 64 {
            return Err(Failure::new(
                Reason::InvalidArgument,
                "the lockout authorization is longer than 64 bytes",
            ));
        }
        let mut notes = Vec::new();
        if !before.lockout_auth_set {
            notes.push(NO_LOCKOUT_AUTH.to_string());
        }
        if per_user > self.pin_policy().max_attempts {
            notes.push(format!(
                "pin.max_attempts is {}: users are locked after that many wrong PINs, below the {per_user} provisioned",
                self.pin_policy().max_attempts
            ));
        }
        if !request.dry_run {
            store
                .set_lockout_parameters(parameters, Zeroizing::new(request.lockout_auth))
                .await?;
            let name = backend.to_string();
            self.write(move |state| {
                state.record_budget_provisioned(&name, users, per_user, max_tries, time::now_unix())
            })
            .await?;
            self.audit(
                who,
                AuditEvent::TpmProvisioned {
                    backend: backend.to_string(),
                    max_tries,
                    recovery_seconds: parameters.interval_seconds,
                    lockout_recovery_seconds: parameters.lockout_recovery_seconds,
                    users,
                    per_user,
                },
            );
            self.read_lockout_counter(&store).await?;
        }
        Ok(daemon::ProvisionTpmResponse {
            max_tries,
            recovery_seconds: parameters.interval_seconds,
            lockout_recovery_seconds: parameters.lockout_recovery_seconds,
            users,
            per_user,
            reserve: budget::RESERVE,
            previous_max_tries: before.max_tries,
            previous_recovery_seconds: before.interval_seconds,
            lockout_auth_set: before.lockout_auth_set,
            counter: before.counter,
            dry_run: request.dry_run,
            notes,
        })
    }
}

/// What no lockout authorization means, for status and provision.
pub const NO_LOCKOUT_AUTH: &str = "the TPM has no lockout authorization: anyone who can open the TPM (root, or the tss group) can reset its wrong-PIN counter and change these parameters, so against such a caller the TPM limits nothing; against guesses through fleetkeyd the budget still holds. Set one (tpm2_changeauth -c lockout) and keep it off this device";

fn verdict(decision: Decision) -> String {
    match decision {
        Decision::Pass => "may try".into(),
        Decision::Refuse {
            wait_seconds: Some(s),
        } => format!("refused for {s} s"),
        Decision::Refuse { wait_seconds: None } => {
            "refused until the TPM is provisioned (fleetkeyctl tpm provision)".into()
        }
    }
}

fn budget_failure(
    user: &UserRecord,
    backend: &str,
    lockout: &SharedLockout,
    wait: Option<u64>,
) -> Failure {
    let room = budget::room(lockout, lockout.counter);
    let who = if user.failed_attempts == 0 {
        format!("user {} (no wrong PIN on record)", user.name)
    } else {
        format!(
            "user {}, who has typed {} wrong PIN{}",
            user.name,
            user.failed_attempts,
            if user.failed_attempts == 1 { "" } else { "s" }
        )
    };
    let mut failure = Failure::new(
        Reason::TpmBudgetSpent,
        format!(
            "not asking the TPM: it has counted {} wrong PINs of {} (lockout at {}), so it can take {room} more, and {} of them {} kept for users who have made no mistake; refused for {who}",
            lockout.counter,
            lockout.max_tries,
            lockout.max_tries,
            budget::RESERVE.min(room),
            if budget::RESERVE.min(room) == 1 { "is" } else { "are" },
        ),
    )
    .with_meta("backend", backend)
    .with_meta("tpm_counter", lockout.counter)
    .with_meta("tpm_max_tries", lockout.max_tries);
    match wait {
        Some(seconds) => {
            failure = failure.with_meta("retry_after_seconds", seconds).with_hint(format!(
                "The TPM forgets one wrong PIN every {} s; try again in {seconds} s. An administrator can raise the allowance: fleetkeyctl tpm provision.",
                lockout.interval_seconds
            ));
        }
        None => {
            failure = failure.with_hint(
                "At the TPM's current parameters this user cannot try again; an administrator must raise them: fleetkeyctl tpm provision.",
            );
        }
    }
    failure
}
