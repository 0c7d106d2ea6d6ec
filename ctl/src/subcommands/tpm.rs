//! `fleetkeyctl tpm provision`: the TPM's dictionary-attack parameters for
//! this device's users (docs/tpm-lockout.md).

use std::path::PathBuf;

use fleetkey_proto::daemon::{ProvisionTpmRequest, ProvisionTpmResponse};
use fleetkey_proto::{Failure, Reason};
use serde::Serialize;
use zeroize::Zeroizing;

use super::Context;
use crate::output;

/// Most bytes a lockout authorization file may hold (with a newline).
const MAX_AUTH_FILE: u64 = 200;

/// The TPM commands.
#[derive(Debug, clap::Subcommand)]
pub enum TpmCommand {
    Provision(TpmProvision),
}

impl TpmCommand {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        match self {
            TpmCommand::Provision(cmd) => cmd.run(ctx).await,
        }
    }
}

/// Set the TPM's dictionary-attack parameters for this device's users
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Sets the TPM's dictionary-attack parameters (TPM2_DictionaryAttackParameters) \
so that every user may type every wrong PIN the PIN policy allows without \
bringing the TPM to lockout: maxTries = users x wrong PINs per user + 1 kept \
for users who have made no mistake + 1. recoveryTime (one wrong PIN \
forgotten every so many seconds) is chosen so that the whole allowance grows \
back within a day; lockoutRecovery is a day. The TPM's lockout authorization, \
when it has one, is read from a file (never from the command line). \
Administrators only. See docs/tpm-lockout.md.",
    after_long_help = "\
Examples:
  fleetkeyctl tpm provision --dry-run
  fleetkeyctl tpm provision --users 4 --lockout-auth-file /root/tpm-lockout-auth"
)]
pub struct TpmProvision {
    /// Users the TPM must serve (default: the users enrolled in it now)
    #[arg(long, value_name = "N")]
    users: Option<u32>,
    /// Wrong PINs each user may type (default: the PIN policy's max_attempts)
    #[arg(long, value_name = "N")]
    per_user: Option<u32>,
    /// recoveryTime: seconds for the TPM to forget one wrong PIN
    #[arg(long, value_name = "SECONDS")]
    recovery_time: Option<u32>,
    /// lockoutRecovery: seconds before a wrong lockout authorization may be retried
    #[arg(long, value_name = "SECONDS")]
    lockout_recovery: Option<u32>,
    /// A file holding the TPM's lockout authorization (as tpm2_changeauth
    /// took it: the text, or hex:HEX); needed when the TPM has one
    #[arg(long, value_name = "FILE")]
    lockout_auth_file: Option<PathBuf>,
    /// Only show what would be set
    #[arg(long)]
    dry_run: bool,
}

impl TpmProvision {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let lockout_auth = match &self.lockout_auth_file {
            Some(path) => read_lockout_auth(path)?,
            None => Zeroizing::new(Vec::new()),
        };
        let mut client = ctx.client().await?;
        let response = client
            .provision_tpm(ProvisionTpmRequest {
                backend: String::new(),
                users: self.users.unwrap_or(0),
                per_user: self.per_user.unwrap_or(0),
                recovery_seconds: self.recovery_time.unwrap_or(0),
                lockout_recovery_seconds: self.lockout_recovery.unwrap_or(0),
                lockout_auth: lockout_auth.to_vec(),
                dry_run: self.dry_run,
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        if ctx.json {
            output::json(&provision_json(&response))
        } else {
            output::data(&provision_text(&response))
        }
    }
}

/// The lockout authorization in a file: its text without one trailing
/// newline, or `hex:` and the bytes in hex.
pub fn read_lockout_auth(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let unreadable = |e: std::io::Error| {
        Failure::new(
            Reason::InvalidArgument,
            format!(
                "cannot read the lockout authorization file {}: {e}",
                path.display()
            ),
        )
    };
    let size = std::fs::metadata(path).map_err(unreadable)?.len();
    if size > MAX_AUTH_FILE {
        return Err(Failure::new(
            Reason::InvalidArgument,
            format!(
                "{} is {size} bytes; a lockout authorization is at most 64",
                path.display()
            ),
        ));
    }
    let text = Zeroizing::new(std::fs::read(path).map_err(unreadable)?);
    parse_lockout_auth(&text)
}

pub fn parse_lockout_auth(text: &[u8]) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let auth = match text.strip_prefix(b"hex:") {
        Some(hex) => Zeroizing::new(hex::decode(hex).map_err(|e| {
            Failure::new(
                Reason::InvalidArgument,
                format!("the lockout authorization after hex: is not hex: {e}"),
            )
        })?),
        None => Zeroizing::new(text.to_vec()),
    };
    if auth.len() > 64 {
        return Err(Failure::new(
            Reason::InvalidArgument,
            "the lockout authorization is longer than 64 bytes",
        ));
    }
    Ok(auth)
}

#[derive(Debug, Serialize)]
pub struct ProvisionJson {
    pub max_tries: u32,
    pub recovery_seconds: u32,
    pub lockout_recovery_seconds: u32,
    pub users: u32,
    pub per_user: u32,
    pub reserve: u32,
    pub previous_max_tries: u32,
    pub previous_recovery_seconds: u32,
    pub lockout_auth_set: bool,
    pub counter: u32,
    pub dry_run: bool,
    pub notes: Vec<String>,
}

pub fn provision_json(r: &ProvisionTpmResponse) -> ProvisionJson {
    ProvisionJson {
        max_tries: r.max_tries,
        recovery_seconds: r.recovery_seconds,
        lockout_recovery_seconds: r.lockout_recovery_seconds,
        users: r.users,
        per_user: r.per_user,
        reserve: r.reserve,
        previous_max_tries: r.previous_max_tries,
        previous_recovery_seconds: r.previous_recovery_seconds,
        lockout_auth_set: r.lockout_auth_set,
        counter: r.counter,
        dry_run: r.dry_run,
        notes: r.notes.clone(),
    }
}

pub fn provision_text(r: &ProvisionTpmResponse) -> String {
    let mut text = format!(
        "{}maxTries {} (was {}): {} users x {} wrong PINs + {} kept for users who have made no mistake + 1\n\
         recoveryTime {} s (was {} s): one wrong PIN forgotten every {} s\n\
         lockoutRecovery {} s\n\
         wrong PINs counted by the TPM now: {}\n",
        if r.dry_run {
            "Would set (dry run):\n"
        } else {
            "Set:\n"
        },
        r.max_tries,
        r.previous_max_tries,
        r.users,
        r.per_user,
        r.reserve,
        r.recovery_seconds,
        r.previous_recovery_seconds,
        r.recovery_seconds,
        r.lockout_recovery_seconds,
        r.counter,
    );
    for note in &r.notes {
        text.push_str(&format!("Note: {note}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_auth_files_are_text_or_hex() {
        assert_eq!(
            parse_lockout_auth(b"s3cret\n").unwrap().as_slice(),
            b"s3cret"
        );
        assert_eq!(
            parse_lockout_auth(b"hex:00ff").unwrap().as_slice(),
            [0, 0xff]
        );
        assert!(parse_lockout_auth(b"hex:zz").is_err());
        assert!(parse_lockout_auth(&[b'a'; 65]).is_err());
        assert!(parse_lockout_auth(b"").unwrap().is_empty());
    }

    #[test]
    fn provision_text_says_what_was_set_and_the_notes() {
        let r = ProvisionTpmResponse {
            max_tries: 22,
            recovery_seconds: 4320,
            lockout_recovery_seconds: 86400,
            users: 4,
            per_user: 5,
            reserve: 1,
            previous_max_tries: 3,
            previous_recovery_seconds: 1000,
            lockout_auth_set: false,
            counter: 0,
            dry_run: false,
            notes: vec!["no lockout authorization".into()],
        };
        let text = provision_text(&r);
        assert!(
            text.contains("maxTries 22 (was 3): 4 users x 5 wrong PINs"),
            "{text}"
        );
        assert!(text.contains("Note: no lockout authorization"), "{text}");
    }
}
