//! Startup recovery: what a crash interrupted is finished or undone
//! before the daemon serves.
//!
//! A pending user is one whose key exists and whose `EnrollUser` request
//! may or may not have reached the portal. Its row keeps the exact signed
//! request, and recovery sends it again: the portal answers a repeat of a
//! request it committed with the same credential, so the user is kept. If
//! the portal refuses it for good (code unknown, expired, used by another
//! key), the user is rolled back: row, then key. If the portal cannot be
//! reached, the row stays pending and is tried again later
//! ([`Engine::retry_pending`]); meanwhile `user list` shows it with a note
//! and `user remove` removes it. A pending row without a request (written
//! by an older fleetkeyd) is rolled back, as before. User resets waiting
//! for the portal (reset.rs) are sent again the same way.

use std::collections::HashSet;
use std::time::Duration;

use fleetkey_proto::portal::EnrollUserRequest;
use fleetkey_proto::{Failure, Reason};
use prost::Message;

use super::Engine;
use crate::state::UserRecord;

/// How often pending enrollments are tried again while the portal is
/// unreachable.
pub const PENDING_RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// What startup recovery found and cleaned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Pending users the portal confirmed: now active.
    pub pending_completed: usize,
    pub pending_rolled_back: usize,
    /// Pending users kept for a later try (portal or key store unavailable).
    pub pending_kept: usize,
    pub orphan_keys_deleted: usize,
    /// User resets (reset.rs) completed or undone by the portal's answer.
    pub resets_resolved: usize,
    /// User resets kept for a later try.
    pub resets_kept: usize,
}

/// What became of one pending user.
pub(super) enum Resolved {
    Completed,
    RolledBack,
    Kept,
}

impl Engine {
    /// Resolves enrollments a crash interrupted and deletes keys that no
    /// user record names. Runs before the daemon serves.
    pub async fn recover(&self) -> Result<Recovery, Failure> {
        let mut recovery = Recovery::default();
        self.read_lockout_counters().await;
        self.resolve_pending(&mut recovery).await?;
        // Every key a row names stays, pending ones and resets included.
        let recorded: HashSet<(String, Vec<u8>)> = self
            .state
            .users()?
            .into_iter()
            .map(|u| (u.backend, u.key_ref))
            .chain(
                self.state
                    .resets()?
                    .into_iter()
                    .map(|r| (r.backend, r.key_ref)),
            )
            .collect();
        for store in self.stores() {
            let resident = match store.resident_keys().await? {
                Ok(keys) => keys,
                Err(e) => {
                    tracing::warn!(backend = %store.name(), error = %e, "cannot list keys for orphan cleanup");
                    continue;
                }
            };
            for key_ref in resident {
                if recorded.contains(&(store.name().to_string(), key_ref.clone())) {
                    continue;
                }
                match store.delete_key(key_ref).await? {
                    Ok(()) => recovery.orphan_keys_deleted += 1,
                    Err(e) => {
                        tracing::warn!(backend = %store.name(), error = %e, "could not delete an orphaned key")
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

    /// Tries pending enrollments again every [`PENDING_RETRY_INTERVAL`],
    /// for as long as the daemon runs.
    pub async fn retry_pending(&self) {
        loop {
            tokio::time::sleep(PENDING_RETRY_INTERVAL).await;
            let pending = self
                .state
                .pending_users()
                .is_ok_and(|users| !users.is_empty())
                || self.state.resets().is_ok_and(|r| !r.is_empty());
            if !pending {
                continue;
            }
            let mut recovery = Recovery::default();
            match self.resolve_pending(&mut recovery).await {
                Ok(()) => tracing::info!(?recovery, "pending enrollments tried again"),
                Err(failure) => {
                    tracing::warn!(%failure, "could not try pending enrollments again")
                }
            }
        }
    }

    async fn resolve_pending(&self, recovery: &mut Recovery) -> Result<(), Failure> {
        let _guard = self.enroll_lock.lock().await;
        let users = self.state.pending_users()?;
        for user in &users {
            match self.resolve_one(user).await? {
                Resolved::Completed => recovery.pending_completed += 1,
                Resolved::RolledBack => recovery.pending_rolled_back += 1,
                Resolved::Kept => recovery.pending_kept += 1,
            }
        }
        for reset in self.state.resets()? {
            if self.resolve_reset(&reset).await? {
                recovery.resets_resolved += 1;
            } else {
                recovery.resets_kept += 1;
            }
        }
        Ok(())
    }

    pub(super) async fn resolve_one(&self, user: &UserRecord) -> Result<Resolved, Failure> {
        let request = if user.enroll_request.is_empty() {
            None
        } else {
            match EnrollUserRequest::decode(user.enroll_request.as_slice()) {
                Ok(request) => Some(request),
                Err(e) => {
                    tracing::error!(user = %user.name, error = %e, "the recorded enrollment request is damaged");
                    None
                }
            }
        };
        let (Some(request), Some(device)) = (request, self.device()?) else {
            return self.roll_back(user).await;
        };
        let sent = async {
            let mut portal = self.portal.connect(&device.portal_url).await?;
            portal.enroll_user(request).await
        }
        .await;
        match sent {
            Ok(registered) => {
                let (name, credential, at) = (
                    user.name.clone(),
                    registered.credential_id.clone(),
                    registered.enrolled_at,
                );
                self.write(move |state| state.activate_user(&name, &credential, at))
                    .await?;
                tracing::warn!(user = %user.name, credential_id = %registered.credential_id, "completed an enrollment interrupted by a crash: the portal confirmed it");
                Ok(Resolved::Completed)
            }
            Err(failure) if worth_retrying(failure.reason) => {
                tracing::warn!(user = %user.name, %failure, "an enrollment interrupted by a crash stays pending: the portal could not confirm it now; it is tried again later");
                Ok(Resolved::Kept)
            }
            Err(failure) => {
                tracing::warn!(user = %user.name, %failure, "the portal refused an enrollment interrupted by a crash; rolling it back");
                self.roll_back(user).await
            }
        }
    }

    /// Deletes a pending user: row, then key.
    async fn roll_back(&self, user: &UserRecord) -> Result<Resolved, Failure> {
        let store = match self.store(&user.backend) {
            Ok(store) => store,
            Err(e) => {
                tracing::warn!(user = %user.name, reason = %e, "cannot roll back a half-made enrollment now; its key store is unavailable");
                return Ok(Resolved::Kept);
            }
        };
        if let Err(e) = store.delete_key(user.key_ref.clone()).await? {
            tracing::warn!(user = %user.name, error = %e, "could not delete the key of a half-made enrollment");
            return Ok(Resolved::Kept);
        }
        let name = user.name.clone();
        self.write(move |state| state.delete_user(&name)).await?;
        tracing::warn!(user = %user.name, "rolled back an enrollment interrupted by a crash");
        Ok(Resolved::RolledBack)
    }
}

/// Whether a portal failure may pass (the portal is down, overloaded, or
/// answered with something that is not a decision about the request).
pub(super) fn worth_retrying(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::PortalUnreachable
            | Reason::PortalError
            | Reason::RateLimited
            | Reason::Busy
            | Reason::Internal
    )
}
