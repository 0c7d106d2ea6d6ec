//! The README's shell blocks, run as written (issue 16): the five-minute
//! walkthrough and the TPM section, each in a fresh bash with the
//! workspace's binaries, on loopback. What a person does by hand is done
//! by the few rewrites below, each one line of `rewrite`, so that a change
//! to a block is run, not skipped:
//!
//! - `cargo build ...` is left out: the harness built the binaries (with
//!   every feature) into the same target/debug the blocks put on PATH;
//! - the fixed ports (7443, 7444, 2321) become free ones;
//! - a server the walkthrough starts "in terminal 1/2" runs in the
//!   background, and the script waits for it; the prose's `export
//!   FLEETKEY_SOCKET=...` is done;
//! - the placeholder URI `'fleetkey://enroll?v=1&c=...'` is the URI of a
//!   code issued again with `--json` right after the block's own
//!   `code issue` (which runs as written, printing its QR code);
//! - a PIN asked on the terminal is given on stdin (`--pin-stdin`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The ```sh blocks between the heading `start` and the next `## `.
fn blocks(readme: &str, start: &str) -> Vec<String> {
    let from = readme
        .find(&format!("\n{start}\n"))
        .unwrap_or_else(|| panic!("README has no heading {start:?}"));
    let section = &readme[from + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section[..end].lines() {
        let trimmed = line.trim_start();
        match (&mut current, trimmed) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(lines), "```") => {
                out.push(lines.join("\n"));
                current = None;
            }
            (Some(lines), _) => lines.push(trimmed.to_string()),
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed block in {start}");
    out
}

fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two free adjacent loopback ports");
}

const PLACEHOLDER: &str = "'fleetkey://enroll?v=1&c=...'";

/// One line of a block as the test runs it (see the module comment).
fn rewrite(line: &str, ports: &[(&str, u16)]) -> Option<String> {
    if line.starts_with("cargo build") {
        return None;
    }
    let mut line = line.to_string();
    for (from, to) in ports {
        line = line.replace(from, &to.to_string());
    }
    let background = |l: &str| {
        if l.ends_with('&') {
            l.to_string()
        } else {
            format!("{l} &")
        }
    };
    if line.starts_with("fleetkey-portal serve") {
        let listen = line
            .split_whitespace()
            .skip_while(|w| *w != "--listen")
            .nth(1)
            .expect("serve --listen ADDRESS")
            .replace(':', "/");
        return Some(format!(
            "{}\nuntil (exec 3<>/dev/tcp/{listen}) 2>/dev/null; do sleep 0.1; done",
            background(&line)
        ));
    }
    if line.starts_with("fleetkeyd ") {
        // The walkthrough's daemon (no --config) reads no per-user file.
        return Some(format!(
            "{}\nexport FLEETKEY_SOCKET=\"${{demo:-$tpmdemo}}/fleetkeyd.sock\"\nuntil fleetkeyctl status >/dev/null 2>&1; do sleep 0.2; done",
            background(&line)
        ));
    }
    if line.starts_with("fleetkey-portal code issue") && !line.contains("--json") {
        return Some(format!(
            "{line}\nuri=$({line} --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"uri\"])')"
        ));
    }
    line = line.replace(PLACEHOLDER, "\"$uri\"");
    if (line.starts_with("fleetkeyctl user add") || line.starts_with("fleetkeyctl sign"))
        && !line.contains("--pin-stdin")
    {
        line = format!("printf '%s\\n' \"$PIN\" | {line} --pin-stdin");
    }
    Some(line)
}

fn script(blocks: &[String], ports: &[(&str, u16)]) -> String {
    let mut script = String::from(
        "set -euo pipefail\n\
         export PIN=4711\n\
         trap 'kill $(jobs -p) 2>/dev/null || true; \
               if [ -n \"${tpmdemo:-}\" ] && [ -f \"$tpmdemo/tpm/swtpm.pid\" ]; then kill $(cat \"$tpmdemo/tpm/swtpm.pid\") || true; fi' EXIT\n",
    );
    for block in blocks {
        // A line ending in a backslash goes on.
        let joined = block.replace("\\\n", " ");
        for line in joined.lines() {
            if let Some(line) = rewrite(line, ports) {
                script.push_str(&line);
                script.push('\n');
            }
        }
    }
    script
}

fn run(script: &str) -> (bool, String) {
    let output = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(workspace())
        .env_remove("FLEETKEY_SOCKET")
        .output()
        .expect("bash");
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn readme() -> String {
    std::fs::read_to_string(workspace().join("README.md")).expect("README.md")
}

#[test]
fn the_walkthrough_runs_as_written() {
    let blocks = blocks(&readme(), "## Five-minute walkthrough");
    assert!(blocks.len() >= 7, "{blocks:#?}");
    let script = script(&blocks, &[("7443", free_port_pair())]);
    let (ok, output) = run(&script);
    assert!(ok, "the walkthrough failed:\n{script}\n{output}");
    assert!(output.contains("Verified OK"), "{output}");
    assert!(output.contains("Device activated"), "{output}");
}

#[test]
fn the_tpm_section_runs_as_written_on_its_own() {
    let blocks = blocks(&readme(), "## Use a TPM");
    assert!(blocks.len() >= 4, "{blocks:#?}");
    let script = script(
        &blocks,
        &[("7444", free_port_pair()), ("2321", free_port_pair())],
    );
    // On its own: nothing of the walkthrough (no $demo) is needed.
    assert!(!script.contains("$demo"), "{script}");
    let (ok, output) = run(&script);
    assert!(ok, "the TPM section failed:\n{script}\n{output}");
    assert!(output.contains("EK certificate verified"), "{output}");
    assert!(output.contains("Deactivated dev-"), "{output}");
}
