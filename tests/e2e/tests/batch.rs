//! Batch enrollment (issue 13): `fleetkey-portal code issue --batch` makes
//! the codes, `fleetkeyctl user add-batch` enrolls them with real portal,
//! daemon and CLI processes. A run killed part-way (kill -9 of
//! fleetkeyctl) is finished by running it again: every user enrolled
//! once, none twice, none pending, and the device and the portal agree.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fleetkey_e2e::*;
use fleetkey_proto::Reason;
use serde_json::Value;

/// `fleetkey-portal code issue --batch users.csv > codes.jsonl`, as the
/// README shows it; returns the codes file.
fn issue_batch(portal: &Portal, dir: &Path, users: &[String]) -> PathBuf {
    let csv = dir.join("users.csv");
    let mut text = String::from("name,ttl_seconds\n");
    for user in users {
        text.push_str(&format!("{user},3600\n"));
    }
    std::fs::write(&csv, text).expect("users.csv");
    let output = portal.cli(&["code", "issue", "--batch", csv.to_str().expect("path")]);
    assert!(output.status.success(), "code issue --batch: {output:?}");
    let codes = dir.join("codes.jsonl");
    std::fs::write(&codes, &output.stdout).expect("codes.jsonl");
    codes
}

/// A PIN file of mode 0600: `user<TAB>pin` lines.
fn pin_file(dir: &Path, pins: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("pins.tsv");
    let text: String = pins.iter().map(|(u, p)| format!("{u}\t{p}\n")).collect();
    std::fs::write(&path, text).expect("pins");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// The JSON lines of an `add-batch --json` run: the line reports and the
/// summary.
fn reports(out: &Ctl) -> (Vec<Value>, Value) {
    let mut lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {out:?}")))
        .collect();
    let summary = lines.pop().expect("a summary line");
    assert!(summary["summary"].is_object(), "{out:?}");
    (lines, summary["summary"].clone())
}

fn activated() -> (Portal, Daemon) {
    let portal = Portal::start_with(&["--no-rate-limit"]);
    let daemon = Daemon::start_default();
    daemon.activate(&portal);
    (portal, daemon)
}

#[test]
fn batch_of_20_survives_kill9_and_a_rerun_finishes_it() {
    let (portal, daemon) = activated();
    let dir = open_tempdir();
    let users: Vec<String> = (0..20).map(|i| format!("user{i:02}")).collect();
    let codes = issue_batch(&portal, dir.path(), &users);
    let pin_list: Vec<(&str, &str)> = users.iter().map(|u| (u.as_str(), "1234")).collect();
    let pins = pin_file(dir.path(), &pin_list);
    let args = [
        "--json",
        "user",
        "add-batch",
        "--pins",
        path(&pins),
        path(&codes),
    ];

    // Kill -9 fleetkeyctl after five users, while it enrolls the sixth.
    let mut child = Command::new(bin("fleetkeyctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fleetkeyctl");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    for _ in 0..5 {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("a report");
        let report: Value = serde_json::from_str(&line).expect("JSON line");
        assert_eq!(report["status"], "enrolled", "{report}");
    }
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    let before = daemon.enrolled_credentials().len();
    assert!((5..20).contains(&before), "{before} users after the kill");

    // The same command again finishes the batch.
    let rerun = daemon.ctl(&args);
    assert_eq!(rerun.code, 0, "{rerun:?}");
    let (lines, summary) = reports(&rerun);
    assert_eq!(lines.len(), 20);
    for (i, report) in lines.iter().enumerate() {
        assert_eq!(report["line"], i + 1, "{report}");
        assert_eq!(report["user"], users[i], "{report}");
        assert!(
            report["status"] == "enrolled" || report["status"] == "done",
            "{report}"
        );
    }
    assert!(summary["done"].as_u64().expect("done") >= 5, "{summary}");
    assert_eq!(
        summary["done"].as_u64().unwrap() + summary["enrolled"].as_u64().unwrap(),
        20,
        "{summary}"
    );

    // Every user once, none pending, and the portal agrees credential by
    // credential.
    let on_device = daemon.enrolled_credentials();
    assert_eq!(
        on_device.keys().cloned().collect::<Vec<_>>(),
        users,
        "{on_device:?}"
    );
    assert_eq!(on_device, portal.active_credentials());
    let shown = portal.user_show("user07").expect("portal user show");
    assert_eq!(
        shown["credential_id"].as_str(),
        on_device.get("user07").map(String::as_str)
    );

    // A third run has nothing left to do.
    let again = daemon.ctl(&args);
    assert_eq!(again.code, 0, "{again:?}");
    let (_, summary) = reports(&again);
    assert_eq!(summary["done"], 20, "{summary}");
    assert_eq!(daemon.enrolled_credentials(), on_device);

    // An enrolled user signs with the PIN from the file.
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "batch").expect("data");
    daemon.sign("user13", "1234", &data).assert_ok();
}

/// A line in the shape `code issue --batch` prints, with another code.
fn line_with_code(line: &str, code: &str) -> String {
    let mut value: Value = serde_json::from_str(line).expect("JSON");
    value["code"] = Value::from(code);
    value["uri"] = Value::Null;
    value.to_string()
}

/// One character of a code changed: the check character no longer fits.
fn mistyped(code: &str) -> String {
    let mut chars: Vec<char> = code.chars().collect();
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[test]
fn dry_run_reports_each_bad_line_and_enrolls_nothing() {
    let (portal, daemon) = activated();
    let dir = open_tempdir();
    let users: Vec<String> = ["alice", "bob", "carol"].map(String::from).to_vec();
    let codes = issue_batch(&portal, dir.path(), &users);
    let issued: Vec<String> = std::fs::read_to_string(&codes)
        .expect("codes")
        .lines()
        .map(String::from)
        .collect();
    let alice_again = portal.user_code("alice");
    let bob: Value = serde_json::from_str(&issued[1]).expect("JSON");
    let batch = dir.path().join("batch.jsonl");
    std::fs::write(
        &batch,
        [
            issued[0].clone(),
            line_with_code(&issued[1], &mistyped(bob["code"].as_str().expect("code"))),
            format!("{{\"code\": \"{}\"}}", alice_again.uri),
            issued[2].clone(),
        ]
        .join("\n"),
    )
    .expect("batch");
    let pins = pin_file(
        dir.path(),
        &[("alice", "1234"), ("bob", "1234"), ("carol", "12")],
    );

    let out = daemon.ctl(&[
        "--json",
        "user",
        "add-batch",
        "--dry-run",
        "--pins",
        path(&pins),
        path(&batch),
    ]);
    assert_eq!(
        out.code,
        i32::from(Reason::BatchInvalid.exit_code()),
        "{out:?}"
    );
    let (lines, summary) = reports(&out);
    let got: Vec<(Value, Value)> = lines
        .iter()
        .map(|r| (r["status"].clone(), r["reason"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Value::from("checked"), Value::Null),
            (Value::from("failed"), Value::from("CODE_MISTYPED")),
            (Value::from("failed"), Value::from("INVALID_ARGUMENT")),
            (Value::from("failed"), Value::from("PIN_POLICY")),
        ],
        "{out:?}"
    );
    assert!(
        lines[2]["message"]
            .as_str()
            .expect("message")
            .contains("duplicate user: alice is already on line 1"),
        "{out:?}"
    );
    assert_eq!(summary["failed"], 3);

    // Nothing was enrolled, and no code was used.
    assert!(daemon.enrolled_credentials().is_empty());
    assert!(portal.active_credentials().is_empty());
    for user in ["alice", "bob", "carol"] {
        assert!(portal.user_show(user).is_none());
    }

    // A PIN file others can read is refused before anything is done.
    std::fs::set_permissions(&pins, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let refused = daemon.ctl(&[
        "--json",
        "user",
        "add-batch",
        "--pins",
        path(&pins),
        path(&codes),
    ]);
    let error = refused.assert_reason(Reason::PermissionDenied);
    assert!(
        error["error"]["message"]
            .as_str()
            .expect("message")
            .contains("mode 0644"),
        "{refused:?}"
    );
    assert!(daemon.enrolled_credentials().is_empty());
}

#[test]
fn exit_status_tells_all_partial_or_none() {
    let (portal, daemon) = activated();
    let dir = open_tempdir();
    let codes = issue_batch(&portal, dir.path(), &["dave".to_string()]);
    // Well-formed, but never issued: the portal does not know it.
    let unknown = fleetkey_proto::ActivationCode::from_body(*b"000000000000000").to_string();
    let unknown_line = format!("{{\"code\": \"{unknown}\"}}");
    let dave = std::fs::read_to_string(&codes).expect("codes");

    let none = dir.path().join("none.jsonl");
    std::fs::write(&none, format!("{unknown_line}\n")).expect("file");
    let out = daemon.ctl_with_stdin(
        &["user", "add-batch", "--pin-stdin", path(&none)],
        Some("1234\n"),
    );
    assert_eq!(
        out.code,
        i32::from(Reason::BatchFailed.exit_code()),
        "{out:?}"
    );
    assert!(out.stdout.contains("failed (CODE_UNKNOWN)"), "{out:?}");
    assert!(out.stderr.contains("0 enrolled"), "{out:?}");

    let partial = dir.path().join("partial.jsonl");
    std::fs::write(&partial, format!("{}{unknown_line}\n", dave)).expect("file");
    let out = daemon.ctl_with_stdin(
        &["user", "add-batch", "--pin-stdin", path(&partial)],
        Some("1234\n"),
    );
    assert_eq!(
        out.code,
        i32::from(Reason::BatchPartial.exit_code()),
        "{out:?}"
    );
    assert!(out.stdout.contains("line 1: dave: enrolled"), "{out:?}");
    assert!(out.stderr.contains("1 enrolled"), "{out:?}");

    // Only dave's line: done, so everything succeeded.
    let out = daemon.ctl_with_stdin(
        &["user", "add-batch", "--pin-stdin", path(&codes)],
        Some("1234\n"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("line 1: dave: done"), "{out:?}");
    assert_eq!(daemon.enrolled_credentials(), portal.active_credentials());
}

/// The README's "Enroll many users" block, run as written in a fresh bash
/// with the workspace's binaries; the only rewrite is the portal database's
/// path (`portal.db` is the fixture's).
#[test]
fn the_readme_example_runs_as_written() {
    let (portal, daemon) = activated();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let section = readme
        .split("\n## Enroll many users\n")
        .nth(1)
        .expect("README has the section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a sh block");
    assert!(block.contains("user add-batch"), "{block}");
    let script = block.replace("portal.db", path(&portal.db));
    let dir = open_tempdir();
    let bins = bin("fleetkeyctl").parent().expect("bin dir").to_path_buf();
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
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
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.matches("\"status\":\"enrolled\"").count(),
        2,
        "{stdout}"
    );
    assert_eq!(stdout.matches(": checked").count(), 2, "{stdout}");
    let users = daemon.enrolled_credentials();
    assert_eq!(users.keys().collect::<Vec<_>>(), ["alice", "bob"]);
    assert_eq!(users, portal.active_credentials());
}

#[test]
fn daemon_killed_mid_batch_the_rest_is_skipped_and_a_rerun_finishes() {
    let (portal, mut daemon) = activated();
    let dir = open_tempdir();
    let users: Vec<String> = (0..20).map(|i| format!("kilo{i:02}")).collect();
    let codes = issue_batch(&portal, dir.path(), &users);
    let pin_list: Vec<(&str, &str)> = users.iter().map(|u| (u.as_str(), "1234")).collect();
    let pins = pin_file(dir.path(), &pin_list);
    let args = [
        "--json",
        "user",
        "add-batch",
        "--pins",
        path(&pins),
        path(&codes),
    ];
    let mut child = Command::new(bin("fleetkeyctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fleetkeyctl");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("a report");
        seen.push(line);
    }
    daemon.kill9();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("the rest");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.code(),
        Some(i32::from(Reason::BatchPartial.exit_code())),
        "{rest}"
    );
    let skipped: Vec<Value> = rest
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
        .filter(|r| r["status"] == "skipped")
        .collect();
    assert!(!skipped.is_empty(), "{rest}");
    assert!(
        skipped.iter().all(|r| r["reason"] == "DAEMON_UNREACHABLE"),
        "{rest}"
    );

    // Restarted, the daemon finishes what the kill interrupted; the same
    // command enrolls the rest.
    daemon.restart();
    let rerun = daemon.ctl(&args);
    assert_eq!(rerun.code, 0, "{rerun:?}");
    let on_device = daemon.enrolled_credentials();
    assert_eq!(on_device.keys().cloned().collect::<Vec<_>>(), users);
    assert_eq!(on_device, portal.active_credentials());
}

/// `--require-pin-change` (PIN_CHANGE_REQUIRED, 33): the user's signatures
/// and approvals are refused until they change the PIN the admin chose; after
/// `user pin change` they sign. A user enrolled without it signs at once.
#[test]
fn require_pin_change_refuses_sign_and_approve_until_the_pin_is_changed() {
    let (portal, daemon) = activated();
    let dir = open_tempdir();
    let codes = issue_batch(&portal, dir.path(), &["erin".to_string()]);
    let pins = pin_file(dir.path(), &[("erin", "1234")]);
    let out = daemon.ctl(&[
        "user",
        "add-batch",
        "--require-pin-change",
        "--pins",
        path(&pins),
        path(&codes),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let shown = daemon.ctl(&["--json", "user", "show", "erin"]).json();
    assert_eq!(shown["pin_change_required"], true, "{shown}");
    let data = dir.path().join("data");
    std::fs::write(&data, b"hello").expect("data");
    let refused = daemon.sign("erin", "1234", &data);
    refused.assert_reason(Reason::PinChangeRequired);
    assert_eq!(refused.code, 33, "{refused:?}");

    // An approval is refused the same way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while daemon.ctl(&["--json", "status"]).json()["portal_stream"] != "connected" {
        assert!(std::time::Instant::now() < deadline, "stream not connected");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let started = portal.cli(&["login", "start", "--user", "erin", "--json"]);
    assert!(started.status.success(), "{started:?}");
    let started: Value = serde_json::from_slice(&started.stdout).expect("json");
    let id = started["id"].as_str().expect("id").to_string();
    let number = started["number"].to_string();
    loop {
        let listed = daemon.ctl(&["--json", "approvals", "list"]).json();
        if listed
            .as_array()
            .expect("list")
            .iter()
            .any(|a| a["id"] == id.as_str())
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{listed}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    daemon
        .ctl_with_stdin(
            &["--json", "approve", &id, "--number", &number, "--pin-stdin"],
            Some("1234\n"),
        )
        .assert_reason(Reason::PinChangeRequired);

    // The user chooses their own PIN: then they sign, with it.
    daemon
        .ctl_with_stdin(
            &["--json", "user", "pin", "change", "erin", "--pin-stdin"],
            Some("1234\n9876\n"),
        )
        .assert_ok();
    let shown = daemon.ctl(&["--json", "user", "show", "erin"]).json();
    assert_eq!(shown["pin_change_required"], false, "{shown}");
    daemon.sign("erin", "9876", &data).assert_ok();

    // Without the flag nothing is required.
    daemon.add_user(&portal, "fay", "4321");
    let shown = daemon.ctl(&["--json", "user", "show", "fay"]).json();
    assert_eq!(shown["pin_change_required"], false, "{shown}");
    daemon.sign("fay", "4321", &data).assert_ok();
}

/// On a terminal (a pty from `script`), add-batch draws a progress bar on
/// stderr with the users handled and the counts so far, and still prints
/// every user's line; with stderr not a terminal (every other test here)
/// no bar is drawn.
#[test]
fn a_terminal_shows_a_progress_bar_and_every_line() {
    let (portal, daemon) = activated();
    let dir = open_tempdir();
    let users: Vec<String> = (0..3).map(|i| format!("tty{i}")).collect();
    let codes = issue_batch(&portal, dir.path(), &users);
    let pins = pin_file(
        dir.path(),
        &[("tty0", "1234"), ("tty1", "1234"), ("tty2", "1234")],
    );
    let command = format!(
        "{} --socket {} user add-batch --pins {} {}",
        path(&bin("fleetkeyctl")),
        path(&daemon.socket),
        path(&pins),
        path(&codes)
    );
    let typescript = dir.path().join("typescript");
    let output = Command::new("script")
        .args(["-q", "-e", "-c", &command, path(&typescript)])
        .stdin(Stdio::null())
        .output()
        .expect("script");
    assert!(output.status.success(), "{output:?}");
    let screen =
        String::from_utf8_lossy(&std::fs::read(&typescript).expect("typescript")).into_owned();
    // The bar: its frame, the position out of 3, and the counts.
    assert!(screen.contains("[#"), "no bar drawn: {screen:?}");
    assert!(screen.contains("/3 "), "no position: {screen:?}");
    assert!(
        screen.contains("enrolled 2  done 0  failed 0"),
        "{screen:?}"
    );
    for user in &users {
        assert!(screen.contains(&format!("{user}: enrolled")), "{screen:?}");
    }
    assert!(screen.contains("3 enrolled"), "no summary: {screen:?}");
    assert_eq!(daemon.enrolled_credentials().len(), 3);

    // Not a terminal: the same kind of run draws nothing on stderr.
    let more: Vec<String> = vec!["pipe0".into()];
    let codes = issue_batch(&portal, dir.path(), &more);
    let pins = pin_file(dir.path(), &[("pipe0", "1234")]);
    let out = daemon.ctl(&["user", "add-batch", "--pins", path(&pins), path(&codes)]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stderr.contains("[#"), "{out:?}");
    assert!(out.stdout.contains("pipe0: enrolled"), "{out:?}");
}
