//! `fleetkeyctl user remove NAME`: deletes a user's key and revokes it at
//! the portal.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::{RemoveUserRequest, RemoveUserResponse};
use fleetkey_proto::terminal::escape;
use serde::Serialize;

use super::Context;
use crate::output;

/// Remove a user: delete their key and revoke it at the portal
#[derive(Debug, clap::Args)]
#[command(long_about = "\
Removes a user from this device: deletes their key from its key store and \
their record, and tells the portal to revoke the key. When the portal cannot \
be told, the user is removed all the same (the command succeeds), a warning \
is printed on stderr and revoked_at_portal is false in the JSON: have the \
portal's administrator revoke it (with the reference portal: fleetkey-portal \
user revoke NAME --device DEVICE_ID). Admins only.")]
pub struct UserRemove {
    /// The user's name, as user list shows it
    #[arg(value_name = "NAME")]
    pub name: String,
}

impl UserRemove {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let response = client
            .remove_user(RemoveUserRequest {
                name: self.name.clone(),
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        if let Some(warning) = portal_warning(&self.name, &response) {
            output::warn(&warning);
        }
        if ctx.json {
            output::json(&remove_json(&self.name, &response))
        } else {
            output::data(&removed_text(&self.name, &response))
        }
    }
}

/// `user remove --json`.
#[derive(Debug, Serialize)]
pub struct RemoveJson {
    pub user: String,
    pub removed: bool,
    pub revoked_at_portal: bool,
    pub portal_message: String,
}

pub fn remove_json(name: &str, response: &RemoveUserResponse) -> RemoveJson {
    RemoveJson {
        user: name.to_string(),
        removed: true,
        revoked_at_portal: response.revoked_at_portal,
        portal_message: response.portal_message.clone(),
    }
}

pub fn removed_text(name: &str, response: &RemoveUserResponse) -> String {
    if response.revoked_at_portal {
        format!(
            "Removed {}: the key is deleted and revoked at the portal.",
            escape(name)
        )
    } else {
        format!(
            "Removed {}: the key is deleted from this device.",
            escape(name)
        )
    }
}

/// The warning for stderr when the portal was not told.
pub fn portal_warning(name: &str, response: &RemoveUserResponse) -> Option<String> {
    if response.revoked_at_portal {
        return None;
    }
    let why = if response.portal_message.is_empty() {
        String::new()
    } else {
        format!(" ({})", escape(&response.portal_message))
    };
    Some(format!(
        "the portal could not be told{why}; have the portal's administrator revoke {}'s key \
         (with the reference portal: fleetkey-portal user revoke {} --device DEVICE_ID)",
        escape(name),
        escape(name)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn revoked() {
        let response = RemoveUserResponse {
            revoked_at_portal: true,
            portal_message: String::new(),
        };
        assert_eq!(
            serde_json::to_value(remove_json("alice", &response)).unwrap(),
            json!({"user": "alice", "removed": true, "revoked_at_portal": true, "portal_message": ""})
        );
        assert_eq!(
            removed_text("alice", &response),
            "Removed alice: the key is deleted and revoked at the portal."
        );
        assert_eq!(portal_warning("alice", &response), None);
    }

    #[test]
    fn portal_not_told() {
        let response = RemoveUserResponse {
            revoked_at_portal: false,
            portal_message: "connection refused".into(),
        };
        assert_eq!(
            serde_json::to_value(remove_json("alice", &response)).unwrap(),
            json!({
                "user": "alice",
                "removed": true,
                "revoked_at_portal": false,
                "portal_message": "connection refused"
            })
        );
        assert_eq!(
            removed_text("alice", &response),
            "Removed alice: the key is deleted from this device."
        );
        assert_eq!(
            portal_warning("alice", &response).unwrap(),
            "the portal could not be told (connection refused); have the portal's administrator revoke alice's key (with the reference portal: fleetkey-portal user revoke alice --device DEVICE_ID)"
        );
    }
}
