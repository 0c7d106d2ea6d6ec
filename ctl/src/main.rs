use std::process::ExitCode;

use clap::Parser;
use fleetkeyctl::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(error) = cli.usage_error() {
        // Prints clap's usage message and exits with clap's status (2).
        error.exit();
    }
    ExitCode::from(fleetkeyctl::run(cli))
}
