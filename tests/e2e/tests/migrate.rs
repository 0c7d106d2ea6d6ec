//! Moving a device's users to a new device (issue 13): `fleetkey-portal
//! device migrate` issues replacing codes as a batch file, `fleetkeyctl
//! user add-batch` enrolls them on the new device, with real portal,
//! daemon and CLI processes. Each old credential is revoked at the portal
//! exactly when its user enrolls on the new device, the one never moved
//! is revoked at the deadline, and an answer signed by a revoked old key
//! is refused by the portal.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetkey_e2e::*;
use fleetkey_proto::Reason;
use serde_json::Value;

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Active credentials at the portal: (user, device) -> credential.
fn portal_credentials(portal: &Portal) -> BTreeMap<(String, String), String> {
    let listed = portal.cli(&["user", "list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    listed
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                (
                    e["user"].as_str().expect("user").to_string(),
                    e["device_id"].as_str().expect("device").to_string(),
                ),
                e["credential_id"].as_str().expect("id").to_string(),
            )
        })
        .collect()
}

/// The users active on `device` at the portal: user -> credential.
fn on_device(portal: &Portal, device: &str) -> BTreeMap<String, String> {
    portal_credentials(portal)
        .into_iter()
        .filter(|((_, d), _)| d == device)
        .map(|((u, _), c)| (u, c))
        .collect()
}

fn pin_file(dir: &Path, pins: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("pins.tsv");
    let text: String = pins.iter().map(|(u, p)| format!("{u}\t{p}\n")).collect();
    std::fs::write(&path, text).expect("pins");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn migrate(portal: &Portal, args: &[&str]) -> std::process::Output {
    let mut all = vec!["device", "migrate"];
    all.extend_from_slice(args);
    portal.cli(&all)
}

fn status(portal: &Portal, device: &str) -> Value {
    let out = migrate(portal, &["--status", device, "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn user_states(status: &Value) -> Vec<(String, String)> {
    status["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| {
            (
                u["user"].as_str().expect("user").to_string(),
                u["state"].as_str().expect("state").to_string(),
            )
        })
        .collect()
}

fn wait_connected(daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.ctl(&["--json", "status"]).json()["portal_stream"] != "connected" {
        assert!(Instant::now() < deadline, "stream not connected");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a login for `user` and waits until `daemon` has it; returns the
/// challenge id and number.
fn login_reaching(portal: &Portal, daemon: &Daemon, user: &str) -> (String, String) {
    let started = portal.cli(&["login", "start", "--user", user, "--json"]);
    assert!(started.status.success(), "{started:?}");
    let started: Value = serde_json::from_slice(&started.stdout).expect("json");
    let id = started["id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
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
        assert!(Instant::now() < deadline, "{listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (id, started["number"].to_string())
}

fn approve(daemon: &Daemon, id: &str, number: &str, pin: &str) -> Ctl {
    daemon.ctl_with_stdin(
        &["--json", "approve", id, "--number", number, "--pin-stdin"],
        Some(&format!("{pin}\n")),
    )
}

/// The migration's lines for `users`, as their own batch file.
fn lines_for(dir: &Path, name: &str, batch: &str, users: &[&str]) -> PathBuf {
    let text: String = batch
        .lines()
        .filter(|l| {
            let line: Value = serde_json::from_str(l).expect("JSON line");
            users.contains(&line["user"].as_str().expect("user"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let file = dir.join(name);
    std::fs::write(&file, text).expect("batch");
    file
}

#[test]
fn three_users_move_one_by_one_and_the_deadline_revokes_the_last() {
    let portal = Portal::start_with(&["--no-rate-limit"]);
    let old = Daemon::start_default();
    let old_id = old.activate(&portal);
    let new = Daemon::start_default();
    let new_id = new.activate(&portal);
    for (user, pin) in [("alice", "1111"), ("bob", "2222"), ("carol", "3333")] {
        old.add_user(&portal, user, pin);
    }
    let before = on_device(&portal, &old_id);
    assert_eq!(before.len(), 3);

    // A login for alice, while her only credential is the old device's.
    wait_connected(&old);
    let (alice_login, alice_number) = login_reaching(&portal, &old, "alice");

    let out = migrate(&portal, &[&old_id, "--deadline", "60s"]);
    assert!(out.status.success(), "{out:?}");
    let batch = String::from_utf8(out.stdout).expect("UTF-8");
    let lines: Vec<Value> = batch
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    // The shape `code issue --batch` prints, one line per user.
    for (line, user) in lines.iter().zip(["alice", "bob", "carol"]) {
        let mut keys: Vec<&str> = line
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["code", "expires_at", "uri", "user"], "{line}");
        assert_eq!(line["user"], user);
    }
    assert_eq!(lines.len(), 3);
    let started = status(&portal, &old_id);
    assert_eq!(started["state"], "open");
    assert_eq!(
        user_states(&started),
        [
            ("alice", "pending"),
            ("bob", "pending"),
            ("carol", "pending")
        ]
        .map(|(u, s)| (u.to_string(), s.to_string()))
    );

    // A second migration while this one is open is refused.
    let again = migrate(&portal, &[&old_id, "--deadline", "1h"]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--reissue"),
        "{again:?}"
    );

    let dir = open_tempdir();
    let pins = pin_file(
        dir.path(),
        &[("alice", "4444"), ("bob", "5555"), ("carol", "6666")],
    );
    let add_batch = |file: &Path| {
        new.ctl(&[
            "--json",
            "user",
            "add-batch",
            "--pins",
            path(&pins),
            path(file),
        ])
    };

    // alice moves: exactly her old credential is revoked, at once.
    let out = add_batch(&lines_for(dir.path(), "a.jsonl", &batch, &["alice"]));
    assert_eq!(out.code, 0, "{out:?}");
    let old_now = on_device(&portal, &old_id);
    assert_eq!(
        old_now.keys().collect::<Vec<_>>(),
        ["bob", "carol"],
        "{old_now:?}"
    );
    assert_eq!(old_now["bob"], before["bob"]);
    let moved = on_device(&portal, &new_id);
    assert_eq!(moved.keys().collect::<Vec<_>>(), ["alice"]);
    assert_ne!(moved["alice"], before["alice"]);

    // The old device's answer to alice's login, signed by her old key, is
    // refused by the portal: that credential is revoked.
    let refused = approve(&old, &alice_login, &alice_number, "1111");
    refused.assert_reason(Reason::UserUnknown);
    assert!(
        refused.stdout.contains("no active credential"),
        "{refused:?}"
    );
    // Her new credential answers a new login, on the new device.
    wait_connected(&new);
    let (id, number) = login_reaching(&portal, &new, "alice");
    approve(&new, &id, &number, "4444").assert_ok();

    // bob moves: his old credential goes; carol's stays until the deadline.
    let out = add_batch(&lines_for(dir.path(), "b.jsonl", &batch, &["bob"]));
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        on_device(&portal, &old_id).keys().collect::<Vec<_>>(),
        ["carol"]
    );
    let moved = on_device(&portal, &new_id);
    assert_eq!(moved.keys().collect::<Vec<_>>(), ["alice", "bob"]);

    // Running the moved users' lines again changes nothing.
    let out = add_batch(&lines_for(
        dir.path(),
        "ab.jsonl",
        &batch,
        &["alice", "bob"],
    ));
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.matches("\"status\":\"done\"").count(),
        2,
        "{out:?}"
    );
    assert_eq!(on_device(&portal, &new_id), moved);

    // carol, who never moves, has a login pending on the old device.
    let (carol_login, carol_number) = login_reaching(&portal, &old, "carol");
    let st = status(&portal, &old_id);
    assert_eq!(
        user_states(&st),
        [
            ("alice", "replaced"),
            ("bob", "replaced"),
            ("carol", "pending")
        ]
        .map(|(u, s)| (u.to_string(), s.to_string()))
    );
    assert_eq!(st["users"][0]["new_device_id"], new_id.as_str());
    assert_eq!(st["users"][0]["new_credential_id"], moved["alice"].as_str());

    // At the deadline, serve revokes carol's old credential.
    let deadline_text = st["deadline"].as_str().expect("deadline").to_string();
    let until = Instant::now() + Duration::from_secs(90);
    while on_device(&portal, &old_id).contains_key("carol") {
        assert!(
            Instant::now() < until,
            "carol not revoked by {deadline_text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let revoked_at = fleetkey_proto::time::rfc3339(fleetkey_proto::time::now_unix());
    assert!(
        revoked_at.as_str() >= deadline_text.as_str(),
        "revoked at {revoked_at}, before the deadline {deadline_text}"
    );
    assert!(on_device(&portal, &old_id).is_empty());
    assert_eq!(on_device(&portal, &new_id), moved);
    let st = status(&portal, &old_id);
    assert_eq!(st["state"], "closed");
    assert_eq!(user_states(&st)[2], ("carol".into(), "revoked".into()));

    // Her old key's answer is refused by the portal.
    approve(&old, &carol_login, &carol_number, "3333").assert_reason(Reason::UserUnknown);

    // The whole file once more: the moved users are done, carol's code
    // expired with the deadline; nothing changes at the portal.
    let all = dir.path().join("all.jsonl");
    std::fs::write(&all, &batch).expect("batch");
    let out = add_batch(&all);
    assert_eq!(
        out.code,
        i32::from(Reason::BatchPartial.exit_code()),
        "{out:?}"
    );
    assert_eq!(
        out.stdout.matches("\"status\":\"done\"").count(),
        2,
        "{out:?}"
    );
    assert!(out.stdout.contains("CODE_EXPIRED"), "{out:?}");
    assert_eq!(on_device(&portal, &new_id), moved);
}

#[test]
fn reissue_voids_the_open_migration_codes() {
    let portal = Portal::start_with(&["--no-rate-limit"]);
    let old = Daemon::start_default();
    let old_id = old.activate(&portal);
    let new = Daemon::start_default();
    new.activate(&portal);
    old.add_user(&portal, "dora", "1111");
    let first = migrate(&portal, &[&old_id, "--deadline", "1h"]);
    assert!(first.status.success(), "{first:?}");
    let second = migrate(&portal, &[&old_id, "--deadline", "2h", "--reissue"]);
    assert!(second.status.success(), "{second:?}");
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("its 1 unused codes expired"),
        "{second:?}"
    );
    let dir = open_tempdir();
    let pins = pin_file(dir.path(), &[("dora", "2222")]);
    let voided = dir.path().join("voided.jsonl");
    std::fs::write(&voided, &first.stdout).expect("batch");
    let out = new.ctl(&[
        "--json",
        "user",
        "add-batch",
        "--pins",
        path(&pins),
        path(&voided),
    ]);
    assert_eq!(
        out.code,
        i32::from(Reason::BatchFailed.exit_code()),
        "{out:?}"
    );
    assert!(out.stdout.contains("CODE_EXPIRED"), "{out:?}");
    // The old credential is untouched; the new codes move dora.
    assert!(on_device(&portal, &old_id).contains_key("dora"));
    let current = dir.path().join("current.jsonl");
    std::fs::write(&current, &second.stdout).expect("batch");
    let out = new.ctl(&[
        "--json",
        "user",
        "add-batch",
        "--pins",
        path(&pins),
        path(&current),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(on_device(&portal, &old_id).is_empty());
    assert_eq!(
        user_states(&status(&portal, &old_id)),
        vec![("dora".to_string(), "replaced".to_string())]
    );
}

/// The README's "Move users to a new device" block, run as written in a
/// fresh bash with the workspace's binaries; the only rewrite is the
/// portal database's path. OLD_DEVICE names the old device, and
/// FLEETKEY_SOCKET the new device's daemon.
#[test]
fn the_readme_migration_example_runs_as_written() {
    let portal = Portal::start_with(&["--no-rate-limit"]);
    let old = Daemon::start_default();
    let old_id = old.activate(&portal);
    let new = Daemon::start_default();
    let new_id = new.activate(&portal);
    old.add_user(&portal, "alice", "1111");
    old.add_user(&portal, "bob", "2222");
    let script = readme_block("Move users to a new device", "device migrate")
        .replace("portal.db", path(&portal.db));
    let stdout = run_script(&script, &new, &[("OLD_DEVICE", &old_id)]);
    assert_eq!(
        stdout.matches("\"status\":\"enrolled\"").count(),
        2,
        "{stdout}"
    );
    assert!(on_device(&portal, &old_id).is_empty());
    assert_eq!(
        on_device(&portal, &new_id).keys().collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    assert!(stdout.contains("replaced"), "{stdout}");
}
