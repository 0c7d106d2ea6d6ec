//! `fleetkey-portal`: see `fleetkey-portal --help`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use fleetkey_portal::PortalError;
use fleetkey_portal::cli::{Cli, Command, run_cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(matches!(cli.command, Command::Serve(_)));
    match run_cli(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            // Exit statuses as `--help` promises: 2 for a command line
            // that makes no sense, 1 for everything else.
            match error {
                PortalError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Logs to stderr: `info` for the server, `warn` for one-shot commands,
/// unless FLEETKEY_PORTAL_LOG names a level.
fn init_logging(serving: bool) {
    let default = if serving {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    let level = std::env::var("FLEETKEY_PORTAL_LOG")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default);
    // Fails only if a subscriber is already set, which cannot happen here.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(level)
        .with_target(false)
        .try_init();
}
