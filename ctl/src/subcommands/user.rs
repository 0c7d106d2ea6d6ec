//! `fleetkeyctl user ...`: the user commands, and the JSON and text forms of
//! a user that they share.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::User;
use fleetkey_proto::time::rfc3339;
use serde::Serialize;

use super::Context;
use super::user_add::UserAdd;
use super::user_add_batch::UserAddBatch;
use super::user_list::UserList;
use super::user_pin_change::UserPinChange;
use super::user_pin_unblock::UserPinUnblock;
use super::user_remove::UserRemove;
use super::user_reset::UserReset;
use super::user_show::UserShow;

/// The user commands.
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    Add(UserAdd),
    AddBatch(UserAddBatch),
    List(UserList),
    Show(UserShow),
    Remove(UserRemove),
    Reset(UserReset),
    /// Manage a user's PIN
    #[command(subcommand)]
    Pin(PinCommand),
}

/// The PIN commands.
#[derive(Debug, clap::Subcommand)]
pub enum PinCommand {
    Change(UserPinChange),
    Unblock(UserPinUnblock),
}

impl UserCommand {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        match self {
            UserCommand::Add(cmd) => cmd.run(ctx).await,
            // Prints its own reports and exit status; lib.rs runs it.
            UserCommand::AddBatch(_) => Ok(()),
            UserCommand::List(cmd) => cmd.run(ctx).await,
            UserCommand::Show(cmd) => cmd.run(ctx).await,
            UserCommand::Remove(cmd) => cmd.run(ctx).await,
            UserCommand::Reset(cmd) => cmd.run(ctx).await,
            UserCommand::Pin(PinCommand::Change(cmd)) => cmd.run(ctx).await,
            UserCommand::Pin(PinCommand::Unblock(cmd)) => cmd.run(ctx).await,
        }
    }
}

/// A user as `user add --json` prints it.
#[derive(Debug, Serialize)]
pub struct UserJson {
    pub user: String,
    pub credential_id: String,
    pub backend: String,
    pub hardware_backed: bool,
    pub public_key_pem: String,
    /// RFC 3339.
    pub enrolled_at: String,
}

/// A user as `user list --json` and `user show --json` print it: the
/// enrollment, then the PIN state.
#[derive(Debug, Serialize)]
pub struct UserDetailJson {
    #[serde(flatten)]
    pub enrollment: UserJson,
    pub failed_attempts: u32,
    pub tries_left: u32,
    pub locked: bool,
    /// Signing and approving are refused until the user changes the PIN
    /// an admin chose (`user add-batch --require-pin-change`).
    pub pin_change_required: bool,
}

pub fn user_json(user: &User) -> UserJson {
    UserJson {
        user: user.name.clone(),
        credential_id: user.credential_id.clone(),
        backend: user.backend.clone(),
        hardware_backed: user.hardware_backed,
        public_key_pem: user.public_key_pem.clone(),
        enrolled_at: rfc3339(user.enrolled_at),
    }
}

pub fn user_detail_json(user: &User) -> UserDetailJson {
    UserDetailJson {
        enrollment: user_json(user),
        failed_attempts: user.failed_attempts,
        tries_left: user.tries_left,
        locked: user.locked,
        pin_change_required: user.pin_change_required,
    }
}

/// "hardware-backed" or, plainly, "software key, not hardware-backed".
pub fn protection(hardware_backed: bool) -> &'static str {
    if hardware_backed {
        "hardware-backed"
    } else {
        "software key, not hardware-backed"
    }
}

/// The PIN state in a few words: "ok", "locked", "2 wrong PINs, 3 tries left".
pub fn pin_state(user: &User) -> String {
    if user.locked {
        return "locked".to_string();
    }
    if user.pin_change_required {
        return "must change the PIN an admin chose (user pin change)".to_string();
    }
    match user.failed_attempts {
        0 => "ok".to_string(),
        n => format!(
            "{n} wrong PIN{}, {} {} left",
            if n == 1 { "" } else { "s" },
            user.tries_left,
            if user.tries_left == 1 { "try" } else { "tries" }
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) const PEM: &str =
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQ==\n-----END PUBLIC KEY-----\n";

    pub(crate) fn alice() -> User {
        User {
            name: "alice".into(),
            credential_id: "cred-1".into(),
            backend: "tpm".into(),
            hardware_backed: true,
            public_key_pem: PEM.into(),
            enrolled_at: 1_795_918_359,
            failed_attempts: 0,
            tries_left: 5,
            locked: false,
            notes: vec![],
            pin_change_required: false,
        }
    }

    pub(crate) fn bob() -> User {
        User {
            name: "bob".into(),
            credential_id: "cred-2".into(),
            backend: "soft".into(),
            hardware_backed: false,
            public_key_pem: PEM.into(),
            enrolled_at: 0,
            failed_attempts: 2,
            tries_left: 3,
            locked: false,
            notes: vec![],
            pin_change_required: false,
        }
    }

    #[test]
    fn enrollment_json_shape() {
        assert_eq!(
            serde_json::to_value(user_json(&alice())).unwrap(),
            json!({
                "user": "alice",
                "credential_id": "cred-1",
                "backend": "tpm",
                "hardware_backed": true,
                "public_key_pem": PEM,
                "enrolled_at": "2026-11-29T02:12:39Z",
            })
        );
    }

    #[test]
    fn detail_json_shape_and_order() {
        let text = serde_json::to_string(&user_detail_json(&bob())).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({
                "user": "bob",
                "credential_id": "cred-2",
                "backend": "soft",
                "hardware_backed": false,
                "public_key_pem": PEM,
                "enrolled_at": "1970-01-01T00:00:00Z",
                "failed_attempts": 2,
                "tries_left": 3,
                "locked": false,
                "pin_change_required": false,
            })
        );
        assert!(text.starts_with("{\"user\":\"bob\""));
        assert!(text.ends_with(
            "\"failed_attempts\":2,\"tries_left\":3,\"locked\":false,\"pin_change_required\":false}"
        ));
    }

    #[test]
    fn pin_states() {
        assert_eq!(pin_state(&alice()), "ok");
        assert_eq!(pin_state(&bob()), "2 wrong PINs, 3 tries left");
        let one = User {
            failed_attempts: 1,
            tries_left: 1,
            ..bob()
        };
        assert_eq!(pin_state(&one), "1 wrong PIN, 1 try left");
        let locked = User {
            locked: true,
            ..bob()
        };
        assert_eq!(pin_state(&locked), "locked");
    }
}
