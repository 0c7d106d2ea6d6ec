//! `fleetkeyctl user pin change NAME`: changes a user's PIN.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::ChangePinRequest;
use fleetkey_proto::terminal::escape;
use serde::Serialize;

use super::Context;
use crate::output;
use crate::pin::PinInput;

/// Change a user's PIN (the current PIN is needed)
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Changes a user's PIN. The current PIN is needed; a wrong one counts as a \
wrong PIN (the user is locked after too many). Anyone who knows the PIN may \
run it.

On the terminal, the current PIN is asked once and the new PIN twice, \
without echo. With --pin-stdin, standard input gives two lines: the current \
PIN, then the new one.",
    after_long_help = "\
Examples:
  fleetkeyctl user pin change alice
  printf '%s\\n%s\\n' \"$OLD_PIN\" \"$NEW_PIN\" | fleetkeyctl user pin change alice --pin-stdin"
)]
pub struct UserPinChange {
    /// The user's name, as user list shows it
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Read the current PIN and the new PIN from the first two lines of standard input
    #[arg(long)]
    pub pin_stdin: bool,
}

impl UserPinChange {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let mut pins = PinInput::from_flag(self.pin_stdin)?;
        let old_pin = pins.existing(
            &format!("Current PIN for {}: ", escape(&self.name)),
            "current PIN",
        )?;
        let new_pin = pins.new_pin("New PIN: ", "Repeat new PIN: ", "new PIN")?;
        client
            .change_pin(ChangePinRequest {
                user: self.name.clone(),
                old_pin: old_pin.to_string(),
                new_pin: new_pin.to_string(),
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?;
        if ctx.json {
            output::json(&pin_changed_json(&self.name))
        } else {
            output::data(&format!("Changed the PIN of {}.", escape(&self.name)))
        }
    }
}

/// `user pin change --json`.
#[derive(Debug, Serialize)]
pub struct PinChangedJson {
    pub user: String,
    pub pin_changed: bool,
}

pub fn pin_changed_json(name: &str) -> PinChangedJson {
    PinChangedJson {
        user: name.to_string(),
        pin_changed: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_shape() {
        assert_eq!(
            serde_json::to_value(pin_changed_json("alice")).unwrap(),
            json!({"user": "alice", "pin_changed": true})
        );
    }
}
