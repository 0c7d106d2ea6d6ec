//! The CLI contract without a daemon: local validation, usage errors, an
//! absent daemon, and the shape of errors in both output modes.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

use fleetkey_proto::ActivationCode;
use serde_json::{Value, json};

const CTL: &str = env!("CARGO_BIN_EXE_fleetkeyctl");

fn valid_code() -> String {
    ActivationCode::from_body(*b"K7QF9XWM2HPDTR4").to_string()
}

/// The valid code with its check character changed: a single typo.
fn mistyped_code() -> String {
    let mut code = valid_code();
    let last = code.pop().unwrap();
    code.push(if last == '0' { '1' } else { '0' });
    code
}

fn run(args: &[&str]) -> Output {
    run_with_stdin(args, b"")
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(CTL)
        .args(args)
        .env_remove("FLEETKEY_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The process may exit without reading: ignore a broken pipe.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn mistyped_code_is_caught_without_a_daemon() {
    let code = mistyped_code();
    for args in [
        vec!["--socket", "/nonexistent", "--json", "activate", &code],
        vec![
            "--socket",
            "/nonexistent",
            "--json",
            "user",
            "add",
            &code,
            "--pin-stdin",
        ],
    ] {
        let output = run_with_stdin(&args, b"123456\n");
        assert_eq!(output.status.code(), Some(11), "{args:?}");
        let value = stdout_json(&output);
        assert_eq!(value["error"]["reason"], json!("CODE_MISTYPED"));
        assert!(
            value["error"]["message"]
                .as_str()
                .unwrap()
                .contains("mistyped")
        );
        assert!(!value["error"]["hint"].as_str().unwrap().is_empty());
        assert!(
            output.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn mistyped_code_in_human_mode() {
    let output = run(&["--socket", "/nonexistent", "activate", &mistyped_code()]);
    assert_eq!(output.status.code(), Some(11));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    let mut lines = stderr.lines();
    let first = lines.next().unwrap();
    assert!(first.starts_with("error: "), "{stderr}");
    assert!(first.ends_with(" (CODE_MISTYPED)"), "{stderr}");
    assert!(lines.next().unwrap().starts_with("hint: "), "{stderr}");
}

#[test]
fn malformed_inputs_have_their_reasons() {
    let cases = [
        ("K7QF-9XWM", "CODE_MALFORMED", 10),
        ("https://portal.example.com", "PAYLOAD_INVALID", 16),
        ("fleetkey://pair?v=1", "PAYLOAD_INVALID", 16),
    ];
    for (input, reason, exit) in cases {
        let output = run(&["--socket", "/nonexistent", "--json", "activate", input]);
        assert_eq!(output.status.code(), Some(exit), "{input}");
        assert_eq!(
            stdout_json(&output)["error"]["reason"],
            json!(reason),
            "{input}"
        );
    }
    let uri = format!("fleetkey://enroll?v=2&c={}&p=https://x", valid_code());
    let output = run(&["--socket", "/nonexistent", "--json", "activate", &uri]);
    assert_eq!(output.status.code(), Some(17));
    assert_eq!(
        stdout_json(&output)["error"]["reason"],
        json!("PAYLOAD_VERSION")
    );
}

#[test]
fn valid_code_against_a_missing_socket_is_daemon_unreachable() {
    let code = valid_code();
    let uri = format!("fleetkey://enroll?v=1&c={code}&p=https%3A%2F%2Fportal.example.com");
    for args in [
        vec!["--socket", "/nonexistent", "--json", "activate", &code],
        vec!["--socket", "/nonexistent", "--json", "activate", &uri],
        // No --pin-stdin and no terminal: the daemon is tried before the PIN.
        vec!["--socket", "/nonexistent", "--json", "user", "add", &code],
        vec!["--socket", "/nonexistent", "--json", "status"],
        vec!["--socket", "/nonexistent", "--json", "user", "list"],
    ] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(60), "{args:?}");
        let value = stdout_json(&output);
        assert_eq!(
            value["error"]["reason"],
            json!("DAEMON_UNREACHABLE"),
            "{args:?}"
        );
        assert!(
            value["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("cannot reach fleetkeyd at /nonexistent: "),
            "{value}"
        );
    }
}

#[test]
fn socket_comes_from_the_environment() {
    let output = Command::new(CTL)
        .args(["--json", "status"])
        .env("FLEETKEY_SOCKET", "/nonexistent/env.sock")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(60));
    let message = stdout_json(&output)["error"]["message"].clone();
    assert!(
        message.as_str().unwrap().contains("/nonexistent/env.sock"),
        "{message}"
    );
}

#[test]
fn unreachable_daemon_in_human_mode() {
    let output = run(&["--socket", "/nonexistent", "status"]);
    assert_eq!(output.status.code(), Some(60));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("error: cannot reach fleetkeyd at /nonexistent: "),
        "{stderr}"
    );
    assert!(stderr.contains("(DAEMON_UNREACHABLE)\nhint: "), "{stderr}");
}

#[test]
fn sign_refuses_stdin_for_both_data_and_pin() {
    let output = run(&[
        "--socket",
        "/nonexistent",
        "--json",
        "sign",
        "--user",
        "alice",
        "--in",
        "-",
        "--pin-stdin",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--pin-stdin"), "{stderr}");
    assert!(stderr.contains("Usage: fleetkeyctl sign"), "{stderr}");
}

#[test]
fn sign_reports_an_unreadable_input_before_connecting() {
    let output = run(&[
        "--socket",
        "/nonexistent",
        "--json",
        "sign",
        "--user",
        "alice",
        "--in",
        "/nonexistent/data.bin",
        "--pin-stdin",
    ]);
    assert_eq!(output.status.code(), Some(64));
    let value = stdout_json(&output);
    assert_eq!(value["error"]["reason"], json!("INVALID_ARGUMENT"));
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot read /nonexistent/data.bin: ")
    );
}

#[test]
fn usage_errors_keep_clap_exit_code() {
    for args in [
        vec!["frobnicate"],
        vec!["user", "add"],
        vec!["user", "add", "CODE", "--pin", "1234"],
        vec!["sign", "--in", "x"],
    ] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn help_explains_every_command() {
    for args in [
        vec!["--help"],
        vec!["status", "--help"],
        vec!["activate", "--help"],
        vec!["user", "--help"],
        vec!["user", "add", "--help"],
        vec!["user", "list", "--help"],
        vec!["user", "show", "--help"],
        vec!["user", "remove", "--help"],
        vec!["user", "pin", "--help"],
        vec!["user", "pin", "change", "--help"],
        vec!["sign", "--help"],
    ] {
        let output = run(&args);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains("Usage: fleetkeyctl"), "{args:?}: {text}");
    }
    for args in [vec!["user", "add", "--help"], vec!["sign", "--help"]] {
        let text = String::from_utf8(run(&args).stdout).unwrap();
        assert!(text.contains("Examples:\n  "), "{args:?}: {text}");
    }
}

#[test]
fn version() {
    let output = run(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        text.trim(),
        format!("fleetkeyctl {}", env!("CARGO_PKG_VERSION"))
    );
}
