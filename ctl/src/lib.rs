//! fleetkeyctl, the command-line controller of fleetkeyd.
//!
//! Its command names, `--json` output fields and exit codes are a contract
//! that scripts rely on; `docs/cli.md` documents it. Data (JSON, PEM,
//! base64, tables) goes to stdout, prompts, warnings and errors to stderr
//! (in `--json` mode errors are a JSON document on stdout).

pub mod cli;
pub mod connection;
#[doc(hidden)]
pub mod fuzzing;
pub mod output;
pub mod pin;
pub mod subcommands;

use fleetkey_proto::{Failure, Reason};

pub use cli::Cli;
pub use subcommands::Context;

/// The version of fleetkeyctl, as reported in `status` (`ctl_version`).
pub const CTL_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs a parsed command line: prints the result or the failure and returns
/// the process exit code (0 on success, `Reason::exit_code()` otherwise).
pub fn run(cli: Cli) -> u8 {
    let json = cli.json;
    if let subcommands::Subcommand::Qr(command) = &cli.command {
        return command.run(json);
    }
    if let subcommands::Subcommand::Doctor(command) = &cli.command {
        return command.run(&cli.socket, json);
    }
    if let subcommands::Subcommand::User(subcommands::user::UserCommand::AddBatch(command)) =
        &cli.command
    {
        return command.run_to_exit(&cli.socket, json);
    }
    match execute(cli) {
        Ok(()) => 0,
        Err(failure) => {
            output::print_failure(&failure, json);
            failure.reason.exit_code()
        }
    }
}

fn execute(cli: Cli) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::new(
                Reason::Internal,
                format!("cannot start the I/O runtime: {e}"),
            )
            .with_hint("This is a fleetkeyctl problem; check the process limits.")
        })?;
    let ctx = Context {
        socket: cli.socket,
        json: cli.json,
    };
    runtime.block_on(cli.command.run(&ctx))
}
