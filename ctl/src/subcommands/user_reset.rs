//! `fleetkeyctl user reset NAME --code CODE|URI`: enrolls an enrolled user
//! again under the same name, with a new key and PIN, using a reset code
//! from the portal (`fleetkey-portal user reset-code NAME`); the portal
//! revokes the old credential as it registers the new one.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::{GetStatusRequest, ResetUserRequest, User};
use fleetkey_proto::terminal::escape;

use super::Context;
use super::activate::checked_enrollment_input;
use super::user::{protection, user_json};
use super::user_add::{AddedJson, pin_rule};
use crate::output;
use crate::pin::PinInput;

/// Enroll a user again (new key, new PIN) with a reset code: for a locked or forgotten PIN
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Enrolls the user NAME again under the same name: a new key, protected by a \
new PIN, replaces the old one. For a user whose PIN is locked (too many \
wrong PINs) or forgotten. Admins only, as for `user remove`.

The code is a reset code from the portal: `fleetkey-portal user reset-code \
NAME --device DEVICE_ID` (or a code of `fleetkey-portal device migrate` for \
this device). fleetkeyd first asks the portal whether the code replaces this \
user's credential here; any other code (an ordinary add-user code, one for \
another user, one already used or expired) is refused before anything is \
made (RESET_CODE_MISMATCH, CODE_ALREADY_USED, ...) and the user is left as it \
was.

Then the new key is made and registered with the portal, which revokes the \
old credential in the same transaction; only then is the user's record \
switched to the new key and the old key deleted. Should the daemon stop or \
the portal not answer on the way (RESET_PENDING), fleetkeyd sends the same \
request again every minute and at its next start, and completes the reset \
or undoes it by the portal's answer; until then the user keeps the old key \
and PIN.

The new key goes to the key store the user's key is in now, unless \
--backend (and --reader, --slot) say otherwise, as for `user add`. The PIN \
is asked twice on the terminal, or read from the first line of standard \
input with --pin-stdin; never from the command line. With \
--require-pin-change the user must choose their own PIN (user pin change) \
before signing. The wrong-PIN count starts again at zero.",
    after_long_help = "\
Examples:
  # At the portal: a reset code for alice on this device
  fleetkey-portal user reset-code --db portal.db alice --device dev-...
  # On the device
  fleetkeyctl user reset alice --code K7QF-9XWM-2HPD-TR4Q
  printf '%s\\n' \"$PIN\" | fleetkeyctl --json user reset alice --code \"$URI\" --pin-stdin"
)]
pub struct UserReset {
    /// The enrolled user to reset
    #[arg(value_name = "NAME")]
    pub name: String,

    /// The reset code, or its fleetkey://enroll URI
    #[arg(long, value_name = "CODE|URI")]
    pub code: String,

    /// Key store for the new key (default: the one the user's key is in now)
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,

    /// Smartcard reader holding the card (pcsc; default: the only card present)
    #[arg(long, value_name = "NAME")]
    pub reader: Option<String>,

    /// PIV key slot for the new key (pcsc)
    #[arg(long, value_name = "SLOT")]
    pub slot: Option<String>,

    /// Read the new PIN from the first line of standard input instead of the terminal
    #[arg(long)]
    pub pin_stdin: bool,

    /// The user must choose their own PIN (user pin change) before signing or approving
    #[arg(long)]
    pub require_pin_change: bool,
}

impl UserReset {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let code = checked_enrollment_input(&self.code)?;
        let mut client = ctx.client().await?;
        let backend = self.backend.clone().unwrap_or_default();
        let mut pins = PinInput::from_flag(self.pin_stdin)?;
        if matches!(pins, PinInput::Terminal)
            && let Ok(status) = client.get_status(GetStatusRequest {}).await
            && let Some(rule) = pin_rule(&status.into_inner(), &backend)
        {
            output::message(&format!("Choose a new PIN: {rule}."));
        }
        let pin = pins.new_pin("New PIN: ", "Repeat new PIN: ", "PIN")?;
        let user = client
            .reset_user(ResetUserRequest {
                name: self.name.clone(),
                code,
                pin: pin.to_string(),
                backend,
                reader: self.reader.clone().unwrap_or_default(),
                slot: self.slot.clone().unwrap_or_default(),
                require_pin_change: self.require_pin_change,
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        drop(pin);
        if ctx.json {
            output::json(&AddedJson {
                user: user_json(&user),
                notes: user.notes.clone(),
            })
        } else {
            output::data(&reset_text(&user))
        }
    }
}

/// "Reset alice: a new key in the soft key store (...), credential cred-..."
pub fn reset_text(user: &User) -> String {
    format!(
        "Reset {}: a new key in the {} key store ({}), credential {}; the portal revoked the old one.",
        escape(&user.name),
        escape(&user.backend),
        protection(user.hardware_backed),
        escape(&user.credential_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subcommands::user::tests::alice;

    #[test]
    fn the_sentence_names_the_new_credential() {
        assert_eq!(
            reset_text(&alice()),
            "Reset alice: a new key in the tpm key store (hardware-backed), credential cred-1; the portal revoked the old one."
        );
    }
}
