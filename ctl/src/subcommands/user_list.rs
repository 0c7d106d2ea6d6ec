//! `fleetkeyctl user list`: the users enrolled on this device.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::{ListUsersRequest, User};
use fleetkey_proto::time::rfc3339;
use serde::Serialize;

use super::Context;
use super::user::{UserDetailJson, pin_state, user_detail_json};
use crate::output;

/// List the users enrolled on this device
#[derive(Debug, clap::Args)]
#[command(long_about = "\
Lists the users enrolled on this device: their key store (backend), whether \
their key is hardware-backed, when they were enrolled and the state of their \
PIN (ok, wrong PINs so far with the tries left, or locked). Anyone may run \
it.")]
pub struct UserList {}

impl UserList {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let users = client
            .list_users(ListUsersRequest {})
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner()
            .users;
        if ctx.json {
            output::json(&list_json(&users))
        } else {
            output::data(&list_text(&users))
        }
    }
}

/// `user list --json`.
#[derive(Debug, Serialize)]
pub struct UserListJson {
    pub users: Vec<UserDetailJson>,
}

pub fn list_json(users: &[User]) -> UserListJson {
    UserListJson {
        users: users.iter().map(user_detail_json).collect(),
    }
}

/// A table: USER BACKEND HARDWARE ENROLLED STATE.
pub fn list_text(users: &[User]) -> String {
    if users.is_empty() {
        return "No users are enrolled on this device.".to_string();
    }
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.backend.clone(),
                if u.hardware_backed {
                    "yes".to_string()
                } else {
                    "no (software)".to_string()
                },
                rfc3339(u.enrolled_at),
                pin_state(u),
            ]
        })
        .collect();
    output::table(&["USER", "BACKEND", "HARDWARE", "ENROLLED", "STATE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subcommands::user::tests::{PEM, alice, bob};
    use serde_json::json;

    #[test]
    fn json_shape() {
        let value = serde_json::to_value(list_json(&[alice(), bob()])).unwrap();
        assert_eq!(
            value,
            json!({"users": [
                {
                    "user": "alice",
                    "credential_id": "cred-1",
                    "backend": "tpm",
                    "hardware_backed": true,
                    "public_key_pem": PEM,
                    "enrolled_at": "2026-11-29T02:12:39Z",
                    "failed_attempts": 0,
                    "tries_left": 5,
                    "locked": false,
                    "pin_change_required": false
                },
                {
                    "user": "bob",
                    "credential_id": "cred-2",
                    "backend": "soft",
                    "hardware_backed": false,
                    "public_key_pem": PEM,
                    "enrolled_at": "1970-01-01T00:00:00Z",
                    "failed_attempts": 2,
                    "tries_left": 3,
                    "locked": false,
                    "pin_change_required": false
                }
            ]})
        );
        assert_eq!(
            serde_json::to_value(list_json(&[])).unwrap(),
            json!({"users": []})
        );
    }

    #[test]
    fn table() {
        assert_eq!(
            list_text(&[alice(), bob()]),
            "\
USER   BACKEND  HARDWARE       ENROLLED              STATE
alice  tpm      yes            2026-11-29T02:12:39Z  ok
bob    soft     no (software)  1970-01-01T00:00:00Z  2 wrong PINs, 3 tries left
"
        );
        assert_eq!(list_text(&[]), "No users are enrolled on this device.");
    }
}
