//! `fleetkeyctl deactivate [--remove-users]`: decommissions the device at
//! the portal and forgets its activation, so it can be activated again.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::{DeactivateRequest, DeactivateResponse};
use fleetkey_proto::terminal::escape;
use serde::Serialize;

use super::Context;
use crate::output;

/// Decommission this device at the portal, so it can be activated again
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Decommissions this device: the daemon asks the portal (signed with the device \
key) to remove the device's record and revoke its credentials, then forgets \
the activation and the device key here. The device can then be activated \
again with a new device code, for example now that a TPM is available, or with \
another portal. While users are enrolled it is refused (DEVICE_HAS_USERS, exit \
26) unless --remove-users is given: then every user is removed from this \
device too (keys deleted; their credentials are revoked with the device at the \
portal). If the portal cannot be reached nothing is changed. Admins only.",
    after_long_help = "\
Examples:
  fleetkeyctl deactivate
  fleetkeyctl deactivate --remove-users && fleetkeyctl activate CODE"
)]
pub struct Deactivate {
    /// Also remove every enrolled user (their keys are deleted)
    #[arg(long)]
    pub remove_users: bool,
}

impl Deactivate {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let response = client
            .deactivate(DeactivateRequest {
                remove_users: self.remove_users,
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        if ctx.json {
            output::json(&deactivated_json(&response))
        } else {
            output::data(&deactivated_text(&response))
        }
    }
}

/// `deactivate --json`.
#[derive(Debug, Serialize)]
pub struct DeactivatedJson {
    pub deactivated: bool,
    pub device_id: String,
    pub portal_url: String,
    pub removed_at_portal: bool,
    pub removed_users: Vec<String>,
}

pub fn deactivated_json(response: &DeactivateResponse) -> DeactivatedJson {
    DeactivatedJson {
        deactivated: true,
        device_id: response.device_id.clone(),
        portal_url: response.portal_url.clone(),
        removed_at_portal: response.removed_at_portal,
        removed_users: response.removed_users.clone(),
    }
}

pub fn deactivated_text(response: &DeactivateResponse) -> String {
    let mut text = format!(
        "Deactivated {}: {}. Activate it again with: fleetkeyctl activate CODE",
        escape(&response.device_id),
        if response.removed_at_portal {
            format!("removed at the portal {}", escape(&response.portal_url))
        } else {
            format!(
                "the portal {} no longer knew it",
                escape(&response.portal_url)
            )
        }
    );
    if !response.removed_users.is_empty() {
        let names: Vec<String> = response
            .removed_users
            .iter()
            .map(|n| escape(n).to_string())
            .collect();
        text.push_str(&format!("\nRemoved users: {}", names.join(", ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_was_done() {
        let response = DeactivateResponse {
            device_id: "dev-1".into(),
            portal_url: "http://127.0.0.1:1".into(),
            removed_users: vec!["alice".into()],
            removed_at_portal: true,
        };
        assert_eq!(
            deactivated_text(&response),
            "Deactivated dev-1: removed at the portal http://127.0.0.1:1. Activate it again with: fleetkeyctl activate CODE\nRemoved users: alice"
        );
    }
}
