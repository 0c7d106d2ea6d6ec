//! README examples run as written: a section's shell block, in a fresh
//! bash with the workspace's binaries first on PATH.

use std::path::Path;
use std::process::Command;

use crate::*;

/// The first ```sh block of the README section `title`.
pub fn readme_block(title: &str, must_contain: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let section = readme
        .split(&format!("\n### {title}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README has the section {title}"));
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a sh block");
    assert!(block.contains(must_contain), "{block}");
    block.to_string()
}

/// Runs `script` in bash -euo pipefail with the workspace's binaries first
/// on PATH, against `daemon`; returns its stdout.
pub fn run_script(script: &str, daemon: &Daemon, env: &[(&str, &str)]) -> String {
    let dir = open_tempdir();
    let bins = bin("fleetkeyctl").parent().expect("bin dir").to_path_buf();
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir.path())
        .env(
            "PATH",
            format!(
                "{}:{}",
                bins.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("FLEETKEY_SOCKET", &daemon.socket)
        .env_remove("FLEETKEY_PORTAL_DB")
        .envs(env.iter().copied())
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
