//! Startup recovery: what a crash interrupted is finished or undone
//! before the daemon serves.

use std::collections::HashSet;

use fleetkey_proto::Failure;

use super::Engine;
use crate::state::UserState;

/// What startup recovery found and cleaned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub pending_rolled_back: usize,
    pub orphan_keys_deleted: usize,
}

impl Engine {
    /// Rolls back enrollments a crash interrupted and deletes keys that no
    /// user record names. Runs before the daemon serves.
    pub async fn recover(&self) -> Result<Recovery, Failure> {
        let mut recovery = Recovery::default();
        let users = self.state.users()?;
        for user in users.iter().filter(|u| u.state == UserState::Pending) {
            let store = match self.store(&user.backend) {
                Ok(store) => store,
                Err(e) => {
                    tracing::warn!(user = %user.name, reason = %e, "cannot roll back a half-made enrollment now; its key store is unavailable");
                    continue;
                }
            };
            if let Err(e) = store.delete_key(user.key_ref.clone()).await? {
                tracing::warn!(user = %user.name, error = %e, "could not delete the key of a half-made enrollment");
                continue;
            }
            let name = user.name.clone();
            self.write(move |state| state.delete_user(&name)).await?;
            tracing::warn!(user = %user.name, "rolled back an enrollment interrupted by a crash");
            recovery.pending_rolled_back += 1;
        }
        let recorded: HashSet<(String, Vec<u8>)> = users
            .iter()
            .filter(|u| u.state == UserState::Active)
            .map(|u| (u.backend.clone(), u.key_ref.clone()))
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
}
