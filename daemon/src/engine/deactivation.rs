//! Deactivation: the device is decommissioned at the portal (its record
//! and credentials removed there) and forgets its activation here, so it
//! can be activated again, for example now with a TPM (docs/cli.md).

use fleetkey_proto::portal::DeactivateDeviceRequest;
use fleetkey_proto::{Failure, Reason, binding, daemon, time};

use super::{Engine, Requester};
use crate::audit::AuditEvent;
use crate::device_key::DeviceKey;

impl Engine {
    /// Refuses while users are enrolled unless `remove_users`. The portal
    /// is told first: should it fail (unreachable, refusing), nothing is
    /// changed here. A portal that no longer knows the device counts as
    /// done (a retry after a crash, or removed there by hand).
    pub async fn deactivate(
        &self,
        who: Requester,
        remove_users: bool,
    ) -> Result<daemon::DeactivateResponse, Failure> {
        let _guard = self.enroll_lock.lock().await;
        let device = self.require_device()?;
        let users = self.state.users()?;
        if !users.is_empty() && !remove_users {
            let names: Vec<String> = users
                .iter()
                .map(|u| fleetkey_proto::terminal::escape(&u.name).to_string())
                .collect();
            return Err(Failure::new(
                Reason::DeviceHasUsers,
                format!(
                    "{} user(s) are enrolled on this device ({}); deactivating would leave their keys unusable",
                    users.len(),
                    names.join(", ")
                ),
            )
            .with_meta("users", users.len()));
        }
        let timestamp = time::now_unix();
        let signature = DeviceKey::from_secret(&device.key_secret)?.sign_digest(
            &binding::digest(&binding::deactivation_message(&device.device_id, timestamp)),
        )?;
        let mut portal = self.portal.connect(&device.portal_url).await?;
        let removed_at_portal = match portal
            .deactivate_device(DeactivateDeviceRequest {
                device_id: device.device_id.clone(),
                timestamp,
                device_signature: signature,
            })
            .await
        {
            Ok(_) => true,
            Err(failure) if failure.reason == Reason::DeviceUnknown => false,
            Err(failure) => return Err(failure),
        };
        let mut removed_users = Vec::new();
        for user in users {
            let name = user.name.clone();
            self.write(move |state| state.delete_user(&name)).await?;
            self.drop_user_lock(&user.name);
            if let Ok(store) = self.store(&user.backend) {
                self.delete_key(&store, &user.key_ref).await;
            }
            self.audit(
                who,
                AuditEvent::UserRemoved {
                    user: user.name.clone(),
                },
            );
            removed_users.push(user.name);
        }
        self.write(|state| state.clear_device()).await?;
        tracing::info!(device_id = %device.device_id, removed_at_portal, users = removed_users.len(), "device deactivated");
        self.audit(
            who,
            AuditEvent::DeviceDeactivated {
                device_id: device.device_id.clone(),
            },
        );
        Ok(daemon::DeactivateResponse {
            device_id: device.device_id,
            portal_url: device.portal_url,
            removed_users,
            removed_at_portal,
        })
    }
}
