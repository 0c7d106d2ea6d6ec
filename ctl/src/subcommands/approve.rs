//! `fleetkeyctl approve ID [--number N] [--pin-stdin]`: approves a login
//! challenge with the number the login screen shows and the user's PIN.

use std::io::{BufRead, IsTerminal, Write};

use fleetkey_proto::daemon::{ApproveRequest, WatchApprovalsRequest};
use fleetkey_proto::terminal::escape;
use fleetkey_proto::time::rfc3339;
use fleetkey_proto::{Failure, Reason};

use super::Context;
use super::approvals::approval_json;
use crate::output;
use crate::pin::PinInput;

/// Approve a login challenge (with the number shown at the login and the PIN)
#[derive(Debug, clap::Args)]
#[command(long_about = "\
Approves a login challenge the portal sent: shows who is logging in and the \
portal's context text, asks for the two-digit number the login screen shows \
(unless --number gives it), then for the PIN of the challenge's user. The \
daemon signs the answer with that user's key and sends it to the portal. A \
wrong number denies the login and is recorded as suspicious. Anyone may run \
it; the PIN of the challenge's user is needed.")]
pub struct Approve {
    /// The challenge id (fleetkeyctl approvals list)
    #[arg(value_name = "ID")]
    pub id: String,

    /// The number the login screen shows
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(10..=99))]
    pub number: Option<u32>,

    /// Read the PIN from the first line of standard input instead of the terminal
    #[arg(long)]
    pub pin_stdin: bool,
}

impl Approve {
    /// `--pin-stdin` without `--number`: standard input cannot carry both.
    pub fn usage_problem(&self) -> Option<String> {
        (self.pin_stdin && self.number.is_none()).then(|| {
            "'--pin-stdin' needs '--number N': the number is asked on the terminal otherwise"
                .to_string()
        })
    }

    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        if let Some(problem) = self.usage_problem() {
            return Err(Failure::new(Reason::InvalidArgument, problem));
        }
        let mut client = ctx.client().await?;
        let mut pins = PinInput::from_flag(self.pin_stdin)?;
        // Show what is being approved.
        let mut stream = client
            .watch_approvals(WatchApprovalsRequest { watch: false })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        let mut found = None;
        while let Some(a) = stream.message().await.map_err(|s| ctx.rpc_failure(s))? {
            if a.id == self.id {
                found = Some(a);
            }
        }
        let Some(challenge) = found else {
            return Err(Failure::new(
                Reason::ChallengeUnknown,
                format!(
                    "no login challenge {} is known on this device",
                    escape(&self.id)
                ),
            )
            .with_hint("fleetkeyctl approvals list shows the challenges this device received."));
        };
        output::message(&format!(
            "Login as {} at {}\n  context: {}\n  expires: {}",
            escape(&challenge.user),
            escape(&challenge.portal_name),
            escape(&challenge.context),
            rfc3339(challenge.expires_at)
        ));
        let number = match self.number {
            Some(number) => number,
            None => ask_number()?,
        };
        let pin = pins.existing(&format!("PIN for {}: ", escape(&challenge.user)), "PIN")?;
        let response = client
            .approve(ApproveRequest {
                id: self.id.clone(),
                number,
                pin: pin.to_string(),
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        drop(pin);
        let approval = response.approval.unwrap_or_default();
        if ctx.json {
            output::json(&approval_json(&approval))
        } else {
            output::data(&format!("{} {}", approval.id, approval.state))
        }
    }
}

/// Asks the two-digit number on the terminal.
fn ask_number() -> Result<u32, Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::new(
            Reason::InvalidArgument,
            "no --number given and no terminal to ask it on",
        )
        .with_hint("Give the number the login screen shows with --number N."));
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "Number shown at the login: ");
    let _ = err.flush();
    let mut line = String::new();
    stdin.lock().read_line(&mut line).map_err(|e| {
        Failure::new(
            Reason::InvalidArgument,
            format!("cannot read the number: {e}"),
        )
    })?;
    parse_number(line.trim())
}

/// The two-digit number, 10 to 99.
pub fn parse_number(text: &str) -> Result<u32, Failure> {
    text.parse::<u32>()
        .ok()
        .filter(|n| (10..=99).contains(n))
        .ok_or_else(|| {
            Failure::new(
                Reason::InvalidArgument,
                "the number must be the two digits the login screen shows (10 to 99)",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_two_digits() {
        assert_eq!(parse_number("42").unwrap(), 42);
        assert!(parse_number("7").is_err());
        assert!(parse_number("100").is_err());
        assert!(parse_number("4x").is_err());
    }
}
