//! `fleetkeyctl user show NAME`: one enrolled user.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::{GetUserRequest, User};
use fleetkey_proto::terminal::escape;
use fleetkey_proto::time::rfc3339;

use super::Context;
use super::user::{pin_state, protection, user_detail_json};
use crate::output;

/// Show one enrolled user, with their public key
#[derive(Debug, clap::Args)]
#[command(long_about = "\
Shows one enrolled user: credential ID, key store (backend), whether the key \
is hardware-backed, when they were enrolled, the state of their PIN, and \
their public key in PEM (last, so that it can be cut out of the output). \
Anyone may run it.")]
pub struct UserShow {
    /// The user's name, as user list shows it
    #[arg(value_name = "NAME")]
    pub name: String,
}

impl UserShow {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let user = client
            .get_user(GetUserRequest {
                name: self.name.clone(),
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        if ctx.json {
            output::json(&user_detail_json(&user))
        } else {
            output::data(&show_text(&user))
        }
    }
}

/// `key: value` lines, then the PEM.
pub fn show_text(user: &User) -> String {
    let lines = [
        ("user", escape(&user.name).into_owned()),
        ("credential id", escape(&user.credential_id).into_owned()),
        (
            "backend",
            format!(
                "{} ({})",
                escape(&user.backend),
                protection(user.hardware_backed)
            ),
        ),
        ("enrolled", rfc3339(user.enrolled_at)),
        ("PIN", pin_state(user)),
        ("wrong PINs", user.failed_attempts.to_string()),
        ("tries left", user.tries_left.to_string()),
    ];
    let mut text = String::new();
    for (key, value) in lines {
        text.push_str(&format!("{:<15}{value}\n", format!("{key}:")));
    }
    text.push_str(&fleetkey_proto::terminal::escape_multiline(
        &user.public_key_pem,
    ));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subcommands::user::tests::{PEM, alice, bob};

    #[test]
    fn listing_then_pem() {
        assert_eq!(
            show_text(&alice()),
            format!(
                "\
user:          alice
credential id: cred-1
backend:       tpm (hardware-backed)
enrolled:      2026-11-29T02:12:39Z
PIN:           ok
wrong PINs:    0
tries left:    5
{PEM}"
            )
        );
        let text = show_text(&bob());
        assert!(text.contains("backend:       soft (software key, not hardware-backed)\n"));
        assert!(text.contains("PIN:           2 wrong PINs, 3 tries left\n"));
    }
}
