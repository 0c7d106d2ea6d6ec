//! The audit log end to end: real portal, daemon and CLI. Every security
//! event lands in the log in order, with the uid that asked and never a
//! PIN; `audit verify` passes on the log as written and fails (exit 105,
//! AUDIT_TAMPERED, naming the line) after an entry is edited, removed,
//! moved or cut off the end; a torn last line does not stop the daemon.

use std::path::PathBuf;

use fleetkey_e2e::{Daemon, FAST_SOFT_KEYS, Portal, is_root, open_tempdir};
use fleetkey_proto::Reason;
use serde_json::Value;

/// Soft keys, PINs up to 12 characters, locked after 3 wrong ones.
fn config() -> String {
    format!("{FAST_SOFT_KEYS}\n[pin]\nmax_length = 12\nmax_attempts = 3\n")
}

const ALICE_PIN: &str = "PinAlice7x";
const ALICE_NEW_PIN: &str = "PinAliceNew2";
const BOB_PIN: &str = "PinBob9yz";
const WRONG_PIN: &str = "WrongPin1q";

fn log_path(daemon: &Daemon) -> PathBuf {
    daemon.state_dir().join("audit.log")
}

fn entries(daemon: &Daemon) -> Vec<Value> {
    let out = daemon.ctl(&["--json", "audit", "show"]);
    out.assert_ok();
    out.json()["entries"].as_array().expect("entries").clone()
}

fn sign_as(daemon: &Daemon, uid: u32, user: &str, pin: &str) -> fleetkey_e2e::Ctl {
    // Open to every user: the CLI writes the signature as `uid`.
    let dir = open_tempdir();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, b"hello").unwrap();
    let sig = dir.path().join("data.sig");
    let args = [
        "--json",
        "sign",
        "--user",
        user,
        "--in",
        data.to_str().unwrap(),
        "--out",
        sig.to_str().unwrap(),
        "--pin-stdin",
    ];
    let stdin = format!("{pin}\n");
    if uid == 0 {
        daemon.ctl_with_stdin(&args, Some(&stdin))
    } else {
        daemon.ctl_as(uid, &args, Some(&stdin))
    }
}

#[test]
fn every_users_events_are_recorded_in_order_and_no_pin_is() {
    if !is_root() {
        assert!(
            std::env::var_os("FLEETKEY_REQUIRE_ROOT_TESTS").is_none(),
            "this test must run as root (it switches users with setpriv)"
        );
        eprintln!("not root: cannot switch users here; CI runs it as root");
        return;
    }
    let nobody = 65534;
    let portal = Portal::start();
    let daemon = Daemon::start(&config());
    let device_id = daemon.activate(&portal);
    daemon.add_user(&portal, "alice", ALICE_PIN);
    daemon.add_user(&portal, "bob", BOB_PIN);
    sign_as(&daemon, 0, "alice", ALICE_PIN).assert_ok();
    sign_as(&daemon, nobody, "bob", BOB_PIN).assert_ok();
    for _ in 0..2 {
        sign_as(&daemon, nobody, "bob", WRONG_PIN).assert_reason(Reason::PinWrong);
    }
    // The third wrong PIN locks bob; then even the right one is refused.
    sign_as(&daemon, nobody, "bob", WRONG_PIN).assert_reason(Reason::PinLocked);
    sign_as(&daemon, nobody, "bob", BOB_PIN).assert_reason(Reason::PinLocked);
    daemon
        .ctl_with_stdin(
            &["--json", "user", "pin", "change", "alice", "--pin-stdin"],
            Some(&format!("{ALICE_PIN}\n{ALICE_NEW_PIN}\n")),
        )
        .assert_ok();
    daemon.ctl(&["--json", "user", "remove", "bob"]).assert_ok();

    let entries = entries(&daemon);
    let seen: Vec<(String, String, Value)> = entries
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["user"].as_str().unwrap_or("").to_string(),
                e["uid"].clone(),
            )
        })
        .collect();
    let expected: Vec<(&str, &str, Value)> = vec![
        ("device_activated", "", 0.into()),
        ("user_added", "alice", 0.into()),
        ("user_added", "bob", 0.into()),
        ("signed", "alice", 0.into()),
        ("signed", "bob", nobody.into()),
        ("pin_wrong", "bob", nobody.into()),
        ("pin_wrong", "bob", nobody.into()),
        ("pin_wrong", "bob", nobody.into()),
        ("pin_locked", "bob", nobody.into()),
        ("pin_changed", "alice", 0.into()),
        ("user_removed", "bob", 0.into()),
    ];
    let expected: Vec<(String, String, Value)> = expected
        .into_iter()
        .map(|(k, u, uid)| (k.to_string(), u.to_string(), uid))
        .collect();
    assert_eq!(seen, expected, "{entries:#?}");
    assert_eq!(entries[0]["device_id"], device_id.as_str());
    assert_eq!(entries[5]["attempts_left"], 2);
    assert_eq!(entries[7]["attempts_left"], 0);
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<u64>>());

    // No PIN, right or wrong, anywhere in the log (nor in the state dir's
    // torn-line file, which does not exist here).
    let text = std::fs::read_to_string(log_path(&daemon)).unwrap();
    assert_eq!(text.lines().count(), 11);
    for pin in [ALICE_PIN, ALICE_NEW_PIN, BOB_PIN, WRONG_PIN] {
        assert!(!text.contains(pin), "the PIN {pin} is in the audit log");
    }

    // The text table shows the same events.
    let table = daemon.ctl(&["audit", "show"]);
    table.assert_ok();
    assert!(table.stdout.contains("pin_locked"), "{table:?}");
    assert!(table.stdout.contains("user=bob"), "{table:?}");

    // Admins only: a user who may sign may not read the log.
    daemon
        .ctl_as(nobody, &["--json", "audit", "show"], None)
        .assert_reason(Reason::PermissionDenied);
    daemon
        .ctl_as(nobody, &["--json", "audit", "verify"], None)
        .assert_reason(Reason::PermissionDenied);

    let verified = daemon.ctl(&["--json", "audit", "verify"]);
    verified.assert_ok();
    assert_eq!(verified.json()["entries"], 11);
    assert_eq!(verified.json()["anchored_seq"], 11);
}

/// Runs `audit verify` and returns the line it names as broken.
fn broken_line(daemon: &Daemon) -> u64 {
    let out = daemon.ctl(&["--json", "audit", "verify"]);
    let json = out.assert_reason(Reason::AuditTampered);
    assert_eq!(out.code, 105);
    let message = json["error"]["message"].as_str().unwrap().to_string();
    let line = json["error"]["line"]
        .as_u64()
        .unwrap_or_else(|| panic!("no line in {json}"));
    assert!(
        message.contains(&format!("line {line}")),
        "{message} does not name line {line}"
    );
    line
}

fn write_lines(daemon: &Daemon, lines: &[&str]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(log_path(daemon), text).unwrap();
}

#[test]
fn verify_finds_an_edited_removed_swapped_or_cut_entry() {
    let portal = Portal::start();
    let mut daemon = Daemon::start(&config());
    daemon.activate(&portal);
    daemon.add_user(&portal, "alice", ALICE_PIN);
    for _ in 0..3 {
        sign_as(&daemon, 0, "alice", ALICE_PIN).assert_ok();
    }
    let verified = daemon.ctl(&["--json", "audit", "verify"]);
    verified.assert_ok();
    assert_eq!(verified.json()["entries"], 5);
    let original = std::fs::read_to_string(log_path(&daemon)).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert_eq!(lines.len(), 5);

    // An entry in the middle edited.
    let edited = lines[2].replace("\"alice\"", "\"mallory\"");
    assert_ne!(edited, lines[2]);
    write_lines(&daemon, &[lines[0], lines[1], &edited, lines[3], lines[4]]);
    assert_eq!(broken_line(&daemon), 3);

    // An entry in the middle removed.
    write_lines(&daemon, &[lines[0], lines[1], lines[3], lines[4]]);
    assert_eq!(broken_line(&daemon), 3);

    // Two entries swapped.
    write_lines(&daemon, &[lines[0], lines[1], lines[3], lines[2], lines[4]]);
    assert_eq!(broken_line(&daemon), 3);

    // The last entry removed: the chain is sound, the head in state.db
    // is not reached.
    write_lines(&daemon, &lines[..4]);
    assert_eq!(broken_line(&daemon), 5);
    // The last two.
    write_lines(&daemon, &lines[..3]);
    assert_eq!(broken_line(&daemon), 4);

    // Restored, it verifies again.
    std::fs::write(log_path(&daemon), &original).unwrap();
    daemon.ctl(&["--json", "audit", "verify"]).assert_ok();

    // Cut and restarted: the daemon starts, goes on appending, and the
    // log still fails where it was cut (the head is not moved onto it).
    // (A wrong PIN, not another signature: an entry with the same event,
    // second and predecessor as the one removed would hash the same.)
    write_lines(&daemon, &lines[..4]);
    daemon.restart();
    sign_as(&daemon, 0, "alice", WRONG_PIN).assert_reason(Reason::PinWrong);
    assert_eq!(broken_line(&daemon), 5);
    assert!(
        daemon.log_text().contains("does not reach the head"),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn a_torn_last_line_is_cut_off_at_start_and_recorded() {
    let portal = Portal::start();
    let mut daemon = Daemon::start(&config());
    daemon.activate(&portal);
    daemon.add_user(&portal, "alice", ALICE_PIN);
    daemon.kill9();
    // A crash in the middle of an append leaves a line without its end.
    let torn = "{\"seq\":3,\"time\":1700000000,\"uid\":0,\"event";
    let mut text = std::fs::read_to_string(log_path(&daemon)).unwrap();
    text.push_str(torn);
    std::fs::write(log_path(&daemon), text).unwrap();
    daemon.restart();

    let entries = entries(&daemon);
    assert_eq!(entries.len(), 3, "{entries:#?}");
    assert_eq!(entries[2]["kind"], "torn_entry_dropped", "{entries:#?}");
    assert_eq!(entries[2]["bytes"], torn.len());
    assert_eq!(entries[2]["uid"], Value::Null);
    let kept = std::fs::read_to_string(daemon.state_dir().join("audit.log.torn")).unwrap();
    assert_eq!(kept, format!("{torn}\n"));
    assert!(
        daemon.log_text().contains("torn line"),
        "{}",
        daemon.log_text()
    );
    let verified = daemon.ctl(&["--json", "audit", "verify"]);
    verified.assert_ok();
    assert_eq!(verified.json()["entries"], 3);
}
