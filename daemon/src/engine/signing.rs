//! PIN-checked operations: sign, change the PIN, unblock it with the PUK.
//! One such operation per user at a time (the per-user locks), so that
//! concurrent guesses cannot outrun the durable wrong-PIN count.

use fleetkey_plugin::{KeyStoreError, Operation, Pin};
use fleetkey_proto::{Failure, Reason, daemon};

use super::failure::{key_store_failure, wrong_pin_failure};
use super::{Engine, Requester, public_key_pem};
use crate::audit::AuditEvent;
use crate::pin_policy;
use crate::state::UserRecord;

impl Engine {
    /// Signs a SHA-256 digest with the user's key, counting wrong PINs.
    pub async fn sign(
        &self,
        who: Requester,
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
        let (_guard, user) = self.lock_user(name).await?;
        self.refuse_if_locked(&user)?;
        self.refuse_until_pin_changed(&user.name)?;
        let store = self.store(&user.backend)?.for_requester(who);
        let _ticket = self.admit_pin_attempt(who, &user, &store).await?;
        let outcome = store.sign_digest(user.key_ref.clone(), pin, digest).await?;
        if outcome.is_err() {
            self.after_pin_failure(&store).await;
        }
        let signature = self.count_pin_outcome(who, &user, outcome).await?;
        self.audit(
            who,
            AuditEvent::Signed {
                user: user.name.clone(),
            },
        );
        Ok(daemon::SignResponse {
            signature_der: signature,
            public_key_pem: public_key_pem(&user.public_key_der)?,
        })
    }

    /// PIN_CHANGE_REQUIRED while the user still has the PIN an admin
    /// chose for them (`user add-batch --require-pin-change`).
    pub(super) fn refuse_until_pin_changed(&self, name: &str) -> Result<(), Failure> {
        if self.state.pin_change_required(name)? {
            return Err(Failure::new(
                Reason::PinChangeRequired,
                format!("{name} must choose their own PIN before signing or approving"),
            )
            .with_hint(format!(
                "Change the PIN first: fleetkeyctl user pin change {name}"
            )));
        }
        Ok(())
    }

    /// Changes a user's PIN, with the old one.
    pub async fn change_pin(
        &self,
        who: Requester,
        name: &str,
        old_pin: Pin,
        new_pin: Pin,
    ) -> Result<(), Failure> {
        let (_guard, user) = self.lock_user(name).await?;
        self.refuse_if_locked(&user)?;
        let store = self.store(&user.backend)?.for_requester(who);
        pin_policy::check(
            &self.pin_policy(),
            store.name(),
            &store.info().pin_rules,
            &new_pin,
        )?;
        let _ticket = self.admit_pin_attempt(who, &user, &store).await?;
        let outcome = store
            .change_pin(user.key_ref.clone(), old_pin, new_pin)
            .await?;
        if outcome.is_err() {
            self.after_pin_failure(&store).await;
        }
        let new_ref = self.count_pin_outcome(who, &user, outcome).await?;
        if new_ref != user.key_ref {
            let name = user.name.clone();
            self.write(move |state| state.set_key_ref(&name, &new_ref))
                .await?;
        }
        let changed = user.name.clone();
        self.write(move |state| state.clear_pin_change(&changed))
            .await?;
        tracing::info!(user = %name, "PIN changed");
        self.audit(
            who,
            AuditEvent::PinChanged {
                user: user.name.clone(),
            },
        );
        Ok(())
    }

    /// Sets a new PIN with the PUK (key stores that have one, e.g. PIV
    /// cards) and clears the user's wrong-PIN count.
    pub async fn unblock_pin(
        &self,
        who: Requester,
        name: &str,
        puk: Pin,
        new_pin: Pin,
    ) -> Result<(), Failure> {
        let (_guard, user) = self.lock_user(name).await?;
        let name = user.name.as_str();
        let store = self.store(&user.backend)?.for_requester(who);
        pin_policy::check(
            &self.pin_policy(),
            store.name(),
            &store.info().pin_rules,
            &new_pin,
        )?;
        store
            .unblock_pin(user.key_ref.clone(), puk, new_pin)
            .await?
            .map_err(|e| key_store_failure(&user.backend, e))?;
        if user.failed_attempts > 0 {
            let user_name = user.name.clone();
            self.write(move |state| state.reset_failed_attempts(&user_name))
                .await?;
        }
        tracing::info!(user = %name, "PIN unblocked with the PUK");
        self.audit(
            who,
            AuditEvent::PinUnblocked {
                user: user.name.clone(),
            },
        );
        Ok(())
    }

    /// Turns the result of a PIN-checked operation into the answer, and
    /// keeps the user's wrong-PIN count.
    pub(super) async fn count_pin_outcome<T>(
        &self,
        who: Requester,
        user: &UserRecord,
        outcome: Result<T, KeyStoreError>,
    ) -> Result<T, Failure> {
        let max = self.max_attempts_for(&user.backend);
        match outcome {
            Ok(value) => {
                if user.failed_attempts > 0 {
                    let name = user.name.clone();
                    self.write(move |state| state.reset_failed_attempts(&name))
                        .await?;
                }
                Ok(value)
            }
            Err(e) if e.is(Reason::PinWrong) => {
                let name = user.name.clone();
                let failed = self
                    .write(move |state| state.record_failed_attempt(&name))
                    .await?;
                tracing::warn!(user = %user.name, failed, "wrong PIN");
                // As wrong_pin_failure counts: ours, or the store's if fewer.
                let ours = max.saturating_sub(failed);
                let attempts_left = e.tries_left.map_or(ours, |store| store.min(ours));
                self.audit(
                    who,
                    AuditEvent::PinWrong {
                        user: user.name.clone(),
                        attempts_left,
                    },
                );
                if attempts_left == 0 {
                    self.audit(
                        who,
                        AuditEvent::PinLocked {
                            user: user.name.clone(),
                        },
                    );
                    self.events.send(super::EngineEvent::PinLocked {
                        name: user.name.clone(),
                    });
                }
                Err(wrong_pin_failure(&user.name, &user.backend, e, failed, max))
            }
            Err(e) if e.is(Reason::PinLocked) => {
                // The store itself locked the key (a card's own counter).
                self.audit(
                    who,
                    AuditEvent::PinLocked {
                        user: user.name.clone(),
                    },
                );
                let mut failure = key_store_failure(&user.backend, e).with_meta("tries_left", 0);
                // Where the store can unblock (capabilities are data), say
                // how for this user.
                let unblockable = self
                    .store(&user.backend)
                    .is_ok_and(|s| s.info().operations.contains(&Operation::UnblockPin));
                if unblockable {
                    failure.hint = format!(
                        "{} Unblock: fleetkeyctl user pin unblock {}",
                        failure.hint, user.name
                    );
                }
                Err(failure)
            }
            Err(e) => Err(key_store_failure(&user.backend, e)),
        }
    }

    pub(super) fn refuse_if_locked(&self, user: &UserRecord) -> Result<(), Failure> {
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

    /// Takes the lock of the enrolled user `name` names, and reads the
    /// user's record again under it. The user is looked up first, so
    /// unknown or invalid names leave nothing behind in the lock table.
    pub(super) async fn lock_user(
        &self,
        name: &str,
    ) -> Result<(tokio::sync::OwnedMutexGuard<()>, UserRecord), Failure> {
        let user = self.require_user(name)?;
        let lock = {
            let mut locks = self
                .user_locks
                .lock()
                .map_err(|_| Failure::new(Reason::Internal, "the user lock table was poisoned"))?;
            locks.entry(user.name.clone()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        // Read again under the lock: the wrong-PIN count may have moved,
        // or the user been removed, while we waited.
        let user = self.require_user(&user.name)?;
        Ok((guard, user))
    }

    /// Forgets a removed user's lock.
    pub(super) fn drop_user_lock(&self, name: &str) {
        if let Ok(mut locks) = self.user_locks.lock() {
            locks.remove(name);
        }
    }
}
