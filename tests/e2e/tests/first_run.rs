//! What a new user ran into on a first run (issue 16), against the real
//! programs: checks that need no PIN come before the PIN, and messages
//! name what the person typed.

use std::process::Command;

use fleetkey_e2e::{Daemon, FAST_SOFT_KEYS, Portal, bin, open_tempdir};
use fleetkey_proto::Reason;

/// `user add` on a device that is not activated fails before any PIN is
/// read: stdin is empty, and the answer is DEVICE_NOT_ACTIVATED, not a
/// complaint about the missing PIN.
#[test]
fn user_add_checks_activation_before_asking_for_the_pin() {
    let portal = Portal::start();
    let daemon = Daemon::start(FAST_SOFT_KEYS);
    let code = portal.user_code("alice");
    let out = daemon.ctl_with_stdin(
        &["--json", "user", "add", &code.uri, "--pin-stdin"],
        Some(""),
    );
    out.assert_reason(Reason::DeviceNotActivated);

    // Activated, the key store and the code's kind are checked first too.
    daemon.activate(&portal);
    let out = daemon.ctl_with_stdin(
        &[
            "--json",
            "user",
            "add",
            &code.uri,
            "--backend",
            "nosuchstore",
            "--pin-stdin",
        ],
        Some(""),
    );
    out.assert_reason(Reason::BackendUnknown);
    let device_code = portal.device_code();
    let out = daemon.ctl_with_stdin(
        &["--json", "user", "add", &device_code.uri, "--pin-stdin"],
        Some(""),
    );
    out.assert_reason(Reason::CodeWrongKind);
    // The code was only looked at: it still enrolls alice.
    daemon
        .add_user_by_code(&code.uri, "1234", "soft")
        .assert_ok();
    let out = daemon.ctl_with_stdin(
        &[
            "--json",
            "user",
            "add",
            &portal.user_code("alice").uri,
            "--pin-stdin",
        ],
        Some(""),
    );
    out.assert_reason(Reason::AlreadyEnrolled);
}

/// `fleetkeyd --portal-url 127.0.0.1:27443` names the flag and suggests a
/// scheme.
#[test]
fn a_portal_url_flag_without_a_scheme_is_named_with_a_suggestion() {
    let dir = open_tempdir();
    let config = dir.path().join("fleetkeyd.toml");
    std::fs::write(&config, "").unwrap();
    let output = Command::new(bin("fleetkeyd"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--portal-url")
        .arg("127.0.0.1:27443")
        .output()
        .expect("run fleetkeyd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "--portal-url 127.0.0.1:27443 is not a portal URL: it must start with http:// or https://, e.g. --portal-url https://127.0.0.1:27443"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("config setting"), "{stderr}");
}

/// `fleetkeyctl deactivate`: refused while users are enrolled; with
/// --remove-users the device is removed at the portal with its
/// credentials, forgets its activation here, and activates again.
#[test]
fn deactivate_decommissions_at_the_portal_and_allows_a_new_activation() {
    let portal = Portal::start();
    let daemon = Daemon::start(FAST_SOFT_KEYS);
    let first_id = daemon.activate(&portal);
    daemon.add_user(&portal, "alice", "1234");

    // Activating again points at deactivate.
    let again = daemon.ctl(&["--json", "activate", &portal.device_code().uri]);
    let json = again.assert_reason(Reason::AlreadyActivated);
    assert!(
        json["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("fleetkeyctl deactivate"),
        "{json}"
    );

    // Users enrolled: refused, nothing changed.
    let refused = daemon.ctl(&["--json", "deactivate"]);
    let json = refused.assert_reason(Reason::DeviceHasUsers);
    assert_eq!(refused.code, 26);
    assert!(
        json["error"]["message"].as_str().unwrap().contains("alice"),
        "{json}"
    );
    assert_eq!(daemon.ctl(&["--json", "status"]).json()["activated"], true);
    assert!(portal.user_show("alice").is_some());

    let done = daemon.ctl(&["--json", "deactivate", "--remove-users"]);
    done.assert_ok();
    let json = done.json();
    assert_eq!(json["device_id"], first_id.as_str());
    assert_eq!(json["removed_at_portal"], true);
    assert_eq!(json["removed_users"], serde_json::json!(["alice"]));
    let status = daemon.ctl(&["--json", "status"]).json();
    assert_eq!(status["activated"], false);
    assert_eq!(status["user_count"], 0);
    // At the portal: no device, no credential.
    assert_eq!(portal.device_list().as_array().map(Vec::len), Some(0));
    assert!(portal.user_show("alice").is_none());

    // Activated again, as a new device.
    let second_id = daemon.activate(&portal);
    assert_ne!(second_id, first_id);
    daemon.add_user(&portal, "alice", "1234");

    // Recorded in the audit log.
    let kinds: Vec<String> = daemon.ctl(&["--json", "audit", "show"]).json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "device_activated",
            "user_added",
            "user_removed",
            "device_deactivated",
            "device_activated",
            "user_added"
        ]
    );
}

/// Without users, `deactivate` needs no flag.
#[test]
fn deactivate_without_users_needs_no_flag() {
    let portal = Portal::start();
    let daemon = Daemon::start(FAST_SOFT_KEYS);
    daemon.activate(&portal);
    let done = daemon.ctl(&["deactivate"]);
    done.assert_ok();
    assert!(done.stdout.starts_with("Deactivated dev-"), "{done:?}");
    daemon
        .ctl(&["--json", "deactivate"])
        .assert_reason(Reason::DeviceNotActivated);
}

/// docs/cli.md's `status` example shows the soft store as a real run does
/// (its row and its capabilities in the JSON example).
#[test]
fn the_status_example_in_cli_md_matches_a_real_run() {
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md"),
    )
    .unwrap();
    let words = |line: &str| line.split_whitespace().collect::<Vec<_>>().join(" ");
    let daemon = Daemon::start(FAST_SOFT_KEYS);
    let text = daemon.ctl(&["status"]);
    text.assert_ok();
    let real_row = text
        .stdout
        .lines()
        .find(|l| l.starts_with("soft "))
        .map(words)
        .expect("a soft row");
    let documented_row = docs
        .lines()
        .find(|l| l.starts_with("soft ") && l.contains("no (software)"))
        .map(words)
        .expect("a soft row in docs/cli.md");
    assert_eq!(documented_row, real_row);

    let json = daemon.ctl(&["--json", "status"]).json();
    let soft = json["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "soft")
        .unwrap()
        .clone();
    let capabilities = serde_json::to_string(&soft["capabilities"]).unwrap();
    let documented = docs
        .lines()
        .find(|l| l.contains("\"capabilities\": ["))
        .expect("a capabilities line in docs/cli.md");
    assert!(
        documented.contains(&capabilities.replace(',', ", ")),
        "docs/cli.md says {documented}, a real run {capabilities}"
    );
}
