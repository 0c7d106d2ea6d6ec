//! The command line: global options and the subcommand tree.

use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use crate::subcommands::Subcommand;

const LONG_ABOUT: &str = "\
Controls fleetkeyd, the daemon that turns this machine into a hardware-backed \
authenticator: activates the device with a portal, enrolls users (each with \
their own key, in a TPM, a PIV smartcard or, for development, in software) \
and signs with their keys.

Data (JSON, PEM, base64, tables) is printed on stdout; prompts, warnings and \
errors on stderr. With --json every command prints one JSON document on \
stdout, errors included. The exit status is 0 on success and tells the \
reason of a failure otherwise (see docs/cli.md and docs/errors.md).

PINs are never taken from the command line: they are asked on the terminal \
without echo, or read from stdin with --pin-stdin.";

/// fleetkeyctl's command line.
#[derive(Debug, Parser)]
#[command(
    name = "fleetkeyctl",
    version,
    about = "Control fleetkeyd: activate the device, enroll users, sign",
    long_about = LONG_ABOUT,
    propagate_version = true
)]
pub struct Cli {
    /// Path of fleetkeyd's Unix socket (default: /run/fleetkey/fleetkeyd.sock when it
    /// exists, else $XDG_RUNTIME_DIR/fleetkey/fleetkeyd.sock; see docs/security.md)
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "FLEETKEY_SOCKET",
        default_value_os_t = fleetkey_proto::paths::client_socket()
    )]
    pub socket: PathBuf,

    /// Print one JSON document on stdout (errors included) instead of text
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Subcommand,
}

impl Cli {
    /// Usage errors that clap's declarations cannot express, reported like
    /// clap's own (usage on stderr, exit status 2).
    pub fn usage_error(&self) -> Option<clap::Error> {
        let message = self.command.usage_problem()?;
        let mut command = Cli::command();
        command.build();
        let error = match command.find_subcommand_mut(self.command.name()) {
            Some(sub) => sub.error(ErrorKind::ArgumentConflict, message),
            None => command.error(ErrorKind::ArgumentConflict, message),
        };
        Some(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = Cli::try_parse_from([
            "fleetkeyctl",
            "user",
            "list",
            "--json",
            "--socket",
            "/tmp/x.sock",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, PathBuf::from("/tmp/x.sock"));
    }

    #[test]
    fn stdin_cannot_carry_both_data_and_pin() {
        let cli = Cli::try_parse_from([
            "fleetkeyctl",
            "sign",
            "--user",
            "alice",
            "--in",
            "-",
            "--pin-stdin",
        ])
        .unwrap();
        let error = cli.usage_error().unwrap();
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
        assert_eq!(error.exit_code(), 2);

        let cli = Cli::try_parse_from([
            "fleetkeyctl",
            "sign",
            "--user",
            "alice",
            "--in",
            "data.bin",
            "--pin-stdin",
        ])
        .unwrap();
        assert!(cli.usage_error().is_none());
    }

    #[test]
    fn pins_are_not_accepted_as_arguments() {
        assert!(
            Cli::try_parse_from(["fleetkeyctl", "user", "add", "CODE", "--pin", "1234"]).is_err()
        );
        assert!(Cli::try_parse_from(["fleetkeyctl", "user", "add", "CODE", "1234"]).is_err());
    }
}
