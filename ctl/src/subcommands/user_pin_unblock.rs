//! `fleetkeyctl user pin unblock NAME`: a new PIN with the card's PUK.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::UnblockPinRequest;
use fleetkey_proto::terminal::escape;
use serde::Serialize;

use super::Context;
use crate::output;
use crate::pin::PinInput;

/// Unblock a user's card PIN with the PUK and set a new PIN
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Sets a new PIN for a user whose key lives on a PIV card, with the card's PIN \
unblocking key (PUK), and unlocks the user. This is how a card blocked after \
too many wrong PINs is made usable again; it works on a card that is not \
blocked too. A wrong PUK fails with PUK_WRONG and the PUK tries left; when \
they run out the card must be reset. Anyone who knows the PUK may run it.

On the terminal, the PUK is asked once and the new PIN twice, without echo. \
With --pin-stdin, standard input gives two lines: the PUK, then the new PIN.",
    after_long_help = "\
Examples:
  fleetkeyctl user pin unblock alice
  printf '%s\\n%s\\n' \"$PUK\" \"$NEW_PIN\" | fleetkeyctl user pin unblock alice --pin-stdin"
)]
pub struct UserPinUnblock {
    /// The user's name, as user list shows it
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Read the PUK and the new PIN from the first two lines of standard input
    #[arg(long)]
    pub pin_stdin: bool,
}

impl UserPinUnblock {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let mut pins = PinInput::from_flag(self.pin_stdin)?;
        let puk = pins.existing(&format!("PUK of {}'s card: ", escape(&self.name)), "PUK")?;
        let new_pin = pins.new_pin("New PIN: ", "Repeat new PIN: ", "new PIN")?;
        client
            .unblock_pin(UnblockPinRequest {
                user: self.name.clone(),
                puk: puk.to_string(),
                new_pin: new_pin.to_string(),
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?;
        if ctx.json {
            output::json(&unblocked_json(&self.name))
        } else {
            output::data(&format!(
                "Unblocked the PIN of {} and set the new PIN.",
                escape(&self.name)
            ))
        }
    }
}

/// `user pin unblock --json`.
#[derive(Debug, Serialize)]
pub struct UnblockedJson {
    pub user: String,
    pub pin_unblocked: bool,
}

pub fn unblocked_json(name: &str) -> UnblockedJson {
    UnblockedJson {
        user: name.to_string(),
        pin_unblocked: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_shape() {
        assert_eq!(
            serde_json::to_value(unblocked_json("alice")).unwrap(),
            json!({"user": "alice", "pin_unblocked": true})
        );
    }
}
