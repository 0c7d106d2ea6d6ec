//! `fleetkey-gen OUTDIR`: writes the man pages (`OUTDIR/man/`) and shell
//! completions (`OUTDIR/completions/`) of fleetkeyctl and fleetkeyd, from
//! the same clap definitions the programs parse their arguments with, so
//! the pages cannot drift from the programs. The Debian package is built
//! from its output (`packaging/deb.sh`).
//!
//! Man pages: `fleetkeyctl.1` and one page per subcommand
//! (`fleetkeyctl-user-add.1`, ...), as git does; `fleetkeyd.8`.
//! Completions: bash, zsh and fish for fleetkeyctl.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: fleetkey-gen OUTDIR");
        return ExitCode::from(2);
    };
    match generate(&PathBuf::from(out)) {
        Ok(count) => {
            eprintln!("fleetkey-gen: wrote {count} files");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleetkey-gen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(out: &Path) -> Result<usize, String> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut count = 0;
    let mut ctl = fleetkeyctl::Cli::command();
    ctl.build();
    count += man_pages(&ctl, "fleetkeyctl", "1", &man)?;
    let mut daemon = fleetkeyd::args::Args::command();
    daemon.build();
    count += man_pages(&daemon, "fleetkeyd", "8", &man)?;
    for (shell, file) in [
        (Shell::Bash, "fleetkeyctl"),
        (Shell::Zsh, "_fleetkeyctl"),
        (Shell::Fish, "fleetkeyctl.fish"),
    ] {
        let path = completions.join(file);
        let mut buffer = Vec::new();
        clap_complete::generate(shell, &mut ctl.clone(), "fleetkeyctl", &mut buffer);
        write(&path, &buffer)?;
        count += 1;
    }
    Ok(count)
}

/// The page of `command` and, recursively, one per subcommand.
fn man_pages(command: &Command, name: &str, section: &str, dir: &Path) -> Result<usize, String> {
    let command = command.clone().name(name.to_string());
    let mut buffer = Vec::new();
    clap_mangen::Man::new(command.clone())
        .section(section)
        .title(name.to_uppercase())
        .manual("fleetkey")
        .source(format!("fleetkey {}", env!("CARGO_PKG_VERSION")))
        .render(&mut buffer)
        .map_err(|e| format!("cannot render the page of {name}: {e}"))?;
    write(&dir.join(format!("{name}.{section}")), &buffer)?;
    let mut count = 1;
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        count += man_pages(sub, &format!("{name}-{}", sub.get_name()), section, dir)?;
    }
    Ok(count)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
