//! The enrolled users: list, show, remove (revoked at the portal first).

use fleetkey_proto::portal;
use fleetkey_proto::{Failure, binding, daemon, time};

use super::{Engine, Requester, user_message};
use crate::audit::AuditEvent;
use crate::device_key::DeviceKey;
use crate::state::{DeviceRecord, UserRecord, UserState};

/// What `user list` says of a user whose enrollment waits for the portal.
pub const PENDING_NOTE: &str = "enrollment pending: the daemon stopped before the portal confirmed it, and the portal could not be reached since; it is tried again every minute";
/// What `user list` and `user show` say of a user whose reset waits for
/// the portal (reset.rs).
pub const RESET_PENDING_NOTE: &str = "reset pending: the portal has not confirmed the new key yet; until it does, the old key and PIN stay in use; it is tried again every minute";

impl Engine {
    pub async fn list_users(&self) -> Result<Vec<daemon::User>, Failure> {
        let users = self.state.users()?;
        // A pending row while an enrollment runs is that enrollment's;
        // shown are only those left pending by a crash.
        let enrolling = self.enroll_lock.try_lock().is_err();
        let resetting: std::collections::HashSet<String> =
            self.state.resets()?.into_iter().map(|r| r.name).collect();
        users
            .iter()
            .filter(|u| u.state == UserState::Active || !enrolling)
            .map(|u| {
                let mut message = user_message(u, self.max_attempts_for(&u.backend))?;
                message.pin_change_required = self.state.pin_change_required(&u.name)?;
                if u.state == UserState::Pending {
                    message.notes.push(PENDING_NOTE.into());
                }
                if resetting.contains(&u.name) && !enrolling {
                    message.notes.push(RESET_PENDING_NOTE.into());
                }
                Ok(message)
            })
            .collect()
    }

    pub async fn get_user(&self, name: &str) -> Result<daemon::User, Failure> {
        let user = self.require_user(name)?;
        let mut message = user_message(&user, self.max_attempts_for(&user.backend))?;
        message.pin_change_required = self.state.pin_change_required(&user.name)?;
        if self.state.reset(&user.name)?.is_some() {
            message.notes.push(RESET_PENDING_NOTE.into());
        }
        Ok(message)
    }

    /// Revokes the user at the portal (best effort), then deletes the
    /// record and the key, in that order, so a crash leaves at worst an
    /// orphaned key that the next start deletes.
    pub async fn remove_user(
        &self,
        who: Requester,
        name: &str,
    ) -> Result<daemon::RemoveUserResponse, Failure> {
        let _guard = self.enroll_lock.lock().await;
        if let Some(pending) = self
            .user_record(name)?
            .filter(|u| u.state == UserState::Pending)
        {
            return self.remove_pending(who, &pending).await;
        }
        let user = self.require_user(name)?;
        let name = user.name.as_str();
        let device = self.require_device()?;
        let revoked = self.revoke(&device, &user).await;
        let store = self.store(&user.backend);
        let user_name = user.name.clone();
        self.write(move |state| state.delete_user(&user_name))
            .await?;
        self.drop_user_lock(name);
        match store {
            Ok(store) => self.delete_key(&store, &user.key_ref).await,
            Err(e) => {
                tracing::warn!(user = %name, reason = %e, "key store unavailable; the key is deleted at a later start")
            }
        }
        tracing::info!(user = %name, revoked_at_portal = revoked.is_ok(), "user removed");
        self.events
            .send(super::EngineEvent::UserRemoved { name: name.into() });
        self.audit(
            who,
            AuditEvent::UserRemoved {
                user: user.name.clone(),
            },
        );
        Ok(daemon::RemoveUserResponse {
            revoked_at_portal: revoked.is_ok(),
            portal_message: revoked.err().map(|f| f.message).unwrap_or_default(),
        })
    }

    /// Removes a user whose enrollment the portal has not confirmed (it
    /// was unreachable since): row, then key. There is no credential to
    /// revoke at the portal.
    async fn remove_pending(
        &self,
        who: Requester,
        user: &UserRecord,
    ) -> Result<daemon::RemoveUserResponse, Failure> {
        let user_name = user.name.clone();
        self.write(move |state| state.delete_user(&user_name))
            .await?;
        if let Ok(store) = self.store(&user.backend) {
            self.delete_key(&store, &user.key_ref).await;
        }
        tracing::warn!(user = %user.name, "removed a user whose enrollment the portal never confirmed");
        self.events.send(super::EngineEvent::UserRemoved {
            name: user.name.clone(),
        });
        self.audit(
            who,
            AuditEvent::UserRemoved {
                user: user.name.clone(),
            },
        );
        Ok(daemon::RemoveUserResponse {
            revoked_at_portal: false,
            portal_message: "the portal never confirmed this enrollment; if it recorded it, its administrator can revoke it there".into(),
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
}
