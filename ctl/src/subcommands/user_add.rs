//! `fleetkeyctl user add CODE|URI`: enrolls a user with an add-user code.

use fleetkey_proto::daemon::{self, AddUserRequest, GetStatusRequest, User};
use fleetkey_proto::{EnrollmentInput, Failure};

use super::Context;
use super::activate::checked_enrollment_input;
use super::status::length_rule;
use super::user::{protection, user_json};
use crate::output;
use crate::pin::PinInput;

/// Enroll a user on this device with an add-user code or enrollment URI
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Enrolls the user an add-user code was issued for: creates a P-256 key for \
them in a key store (a TPM, a PIV smartcard or, for development only, \
software), protected by the PIN they choose, and registers its public key \
(with attestation) with the portal. The device must be activated first. \
Admins only.

CODE|URI is the code printed under the portal's QR code (any case, with or \
without hyphens and spaces), or the QR code's fleetkey://enroll?... URI. A \
mistyped code is caught before anything is contacted.

The PIN is asked twice on the terminal, without echo. With --pin-stdin it is \
the first line of standard input instead (asked once). It is never taken \
from the command line.",
    after_long_help = "\
Examples:
  # Interactive: asks for the PIN twice on the terminal
  fleetkeyctl user add K7QF-9XWM-2HPD-TR4Q

  # In a script, into a given key store, JSON out
  printf '%s\\n' \"$PIN\" | fleetkeyctl --json user add --backend tpm --pin-stdin \\
      'fleetkey://enroll?v=1&c=K7QF-9XWM-2HPD-TR4Q&p=https%3A%2F%2Fportal.example.com'"
)]
pub struct UserAdd {
    /// The add-user code, or a fleetkey://enroll URI
    #[arg(value_name = "CODE|URI")]
    pub code: String,

    /// Key store to create the key in (default: the daemon's default backend; see status)
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,

    /// Smartcard reader holding the card to enroll on (pcsc; default: the only card present)
    #[arg(long, value_name = "NAME")]
    pub reader: Option<String>,

    /// PIV key slot for the key (pcsc): 9a, 9c, 9d, 9e or 82 to 95 (default: from the config, 9a)
    #[arg(long, value_name = "SLOT")]
    pub slot: Option<String>,

    /// Read the PIN from the first line of standard input instead of the terminal
    #[arg(long)]
    pub pin_stdin: bool,
}

impl UserAdd {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let code = checked_enrollment_input(&self.code)?;
        let mut client = ctx.client().await?;
        let backend = self.backend.clone().unwrap_or_default();

        let mut pins = PinInput::from_flag(self.pin_stdin)?;
        if matches!(pins, PinInput::Terminal) {
            // Tell the person what PIN to choose, as far as known.
            if let Ok(EnrollmentInput::Payload(payload)) = EnrollmentInput::parse(&code)
                && let Some(user) = payload.user_hint
            {
                output::message(&format!("Enrolling {user}."));
            }
            if let Ok(status) = client.get_status(GetStatusRequest {}).await
                && let Some(rule) = pin_rule(&status.into_inner(), &backend)
            {
                output::message(&format!("Choose a PIN: {rule}."));
            }
        }
        let pin = pins.new_pin("PIN: ", "Repeat PIN: ", "PIN")?;

        let user = client
            .add_user(AddUserRequest {
                code,
                pin: pin.to_string(),
                backend,
                reader: self.reader.clone().unwrap_or_default(),
                slot: self.slot.clone().unwrap_or_default(),
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
            for note in &user.notes {
                output::message(&format!("note: {note}"));
            }
            output::data(&added_text(&user))
        }
    }
}

/// `user add --json`: the user, and what the person should be told.
#[derive(Debug, serde::Serialize)]
pub struct AddedJson {
    #[serde(flatten)]
    pub user: super::user::UserJson,
    pub notes: Vec<String>,
}

/// The PIN length rule for enrolling into `backend` ("" = the default):
/// the daemon's policy narrowed by the key store's own limits.
pub fn pin_rule(status: &daemon::Status, backend: &str) -> Option<String> {
    let policy = status.pin_policy.unwrap_or_default();
    let name = if backend.is_empty() {
        status.default_backend.as_str()
    } else {
        backend
    };
    let store = status.backends.iter().find(|b| b.name == name);
    let (store_min, store_max) = store.map_or((0, 0), |b| (b.pin_min_length, b.pin_max_length));
    let min = policy.min_length.max(store_min);
    let max = match (policy.max_length, store_max) {
        (0, m) | (m, 0) => m,
        (a, b) => a.min(b),
    };
    (min != 0 || max != 0).then(|| length_rule(min, max))
}

/// "Enrolled alice with the tpm key store (hardware-backed)."
pub fn added_text(user: &User) -> String {
    format!(
        "Enrolled {} with the {} key store ({}).",
        user.name,
        user.backend,
        protection(user.hardware_backed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subcommands::status::tests::sample_status;
    use crate::subcommands::user::tests::{alice, bob};

    #[test]
    fn sentences_say_plainly_what_protects_the_key() {
        assert_eq!(
            added_text(&alice()),
            "Enrolled alice with the tpm key store (hardware-backed)."
        );
        assert_eq!(
            added_text(&bob()),
            "Enrolled bob with the soft key store (software key, not hardware-backed)."
        );
    }

    #[test]
    fn add_json_has_the_enrollment_fields_only() {
        let value = serde_json::to_value(user_json(&alice())).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "user",
            "credential_id",
            "backend",
            "hardware_backed",
            "public_key_pem",
            "enrolled_at",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }

    #[test]
    fn pin_rules_combine_policy_and_store() {
        let status = sample_status();
        assert_eq!(pin_rule(&status, "").as_deref(), Some("4 to 64 characters"));
        assert_eq!(
            pin_rule(&status, "pcsc").as_deref(),
            Some("6 to 8 characters")
        );
        assert_eq!(
            pin_rule(&status, "nope").as_deref(),
            Some("4 to 64 characters")
        );
        let open = daemon::Status::default();
        assert_eq!(pin_rule(&open, ""), None);
    }
}
