//! Resetting a user (issue 13): `fleetkey-portal user reset-code` and
//! `fleetkeyctl user reset`, with real portal, daemon and CLI processes. A
//! user locked by wrong PINs gets a new key and PIN under the same name;
//! the portal revokes the old credential as the new one registers; only
//! admins may reset; any other code leaves the user exactly as it was; a
//! crash after the portal accepted the reset is finished at the next start.

use std::path::{Path, PathBuf};

use fleetkey_e2e::*;
use fleetkey_proto::Reason;
use serde_json::Value;

const NOBODY: u32 = 65534;

fn activated() -> (Portal, Daemon, String) {
    let portal = Portal::start_with(&["--no-rate-limit"]);
    let daemon = Daemon::start_default();
    let device = daemon.activate(&portal);
    (portal, daemon, device)
}

/// `user reset-code NAME --json` at the portal.
fn reset_code(portal: &Portal, user: &str) -> Value {
    let out = portal.cli(&["user", "reset-code", user, "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn reset(daemon: &Daemon, user: &str, code: &str, pin: &str) -> Ctl {
    daemon.ctl_with_stdin(
        &[
            "--json",
            "user",
            "reset",
            user,
            "--code",
            code,
            "--pin-stdin",
        ],
        Some(&format!("{pin}\n")),
    )
}

/// The user's active credentials at the portal.
fn portal_credentials(portal: &Portal, user: &str) -> Vec<String> {
    let listed = portal.cli(&["user", "list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    listed
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["user"] == user)
        .map(|e| e["credential_id"].as_str().expect("id").to_string())
        .collect()
}

fn key_files(daemon: &Daemon) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(daemon.state_dir().join("soft-keys"))
        .expect("soft-keys")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .collect();
    files.sort();
    files
}

fn show(daemon: &Daemon, user: &str) -> Value {
    let out = daemon.ctl(&["--json", "user", "show", user]);
    out.assert_ok();
    out.json()
}

fn data(dir: &Path) -> PathBuf {
    let file = dir.join("data.txt");
    std::fs::write(&file, "reset").expect("data");
    file
}

#[test]
fn a_locked_user_is_reset_and_signs_with_the_new_pin() {
    let (portal, daemon, device) = activated();
    daemon.add_user(&portal, "alice", "1234");
    let old = show(&daemon, "alice");
    let old_credential = old["credential_id"].as_str().expect("id").to_string();
    let dir = open_tempdir();
    let data = data(dir.path());
    // Wrong PINs until alice is locked; then even her PIN is refused.
    let mut locked = false;
    for _ in 0..10 {
        let out = daemon.sign("alice", "0000", &data);
        let reason = out.json()["error"]["reason"].clone();
        if reason == Reason::PinLocked.as_str() {
            locked = true;
            break;
        }
        assert_eq!(reason, Reason::PinWrong.as_str(), "{out:?}");
    }
    assert!(locked, "alice was never locked");
    daemon
        .sign("alice", "1234", &data)
        .assert_reason(Reason::PinLocked);

    let issued = reset_code(&portal, "alice");
    assert_eq!(issued["replaces_credential_id"], old_credential.as_str());
    assert_eq!(issued["device_id"], device.as_str());
    let uri = issued["uri"].as_str().expect("uri").to_string();

    // Another Unix user cannot reset her, and changes nothing.
    let refused = daemon.ctl_as(
        NOBODY,
        &[
            "--json",
            "user",
            "reset",
            "alice",
            "--code",
            &uri,
            "--pin-stdin",
        ],
        Some("5678\n"),
    );
    refused.assert_reason(Reason::PermissionDenied);
    assert_eq!(
        show(&daemon, "alice")["credential_id"],
        old_credential.as_str()
    );
    assert_eq!(
        portal_credentials(&portal, "alice"),
        std::slice::from_ref(&old_credential)
    );

    // An admin resets her with the code and a new PIN.
    let out = reset(&daemon, "alice", &uri, "5678");
    out.assert_ok();
    let new_credential = out.json()["credential_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_ne!(new_credential, old_credential);
    let shown = show(&daemon, "alice");
    assert_eq!(shown["credential_id"], new_credential.as_str());
    assert_eq!(shown["locked"], false, "{shown}");
    assert_eq!(shown["failed_attempts"], 0, "{shown}");
    assert_ne!(shown["public_key_pem"], old["public_key_pem"]);

    // At the portal: the new credential only; the old one is revoked.
    assert_eq!(
        portal_credentials(&portal, "alice"),
        std::slice::from_ref(&new_credential)
    );
    // One key on the device: the old one is deleted.
    assert_eq!(key_files(&daemon).len(), 1);

    // She signs with the new PIN (the signature verifies with the new
    // key), and the old PIN is wrong.
    let signed = daemon.sign("alice", "5678", &data);
    signed.assert_ok();
    let pem = shown["public_key_pem"].as_str().expect("pem");
    assert!(openssl_verify(pem, &data.with_extension("sig"), &data));
    daemon
        .sign("alice", "1234", &data)
        .assert_reason(Reason::PinWrong);

    // The code is used: a second reset with it is refused, nothing moves.
    reset(&daemon, "alice", &uri, "9999").assert_reason(Reason::CodeAlreadyUsed);
    assert_eq!(
        show(&daemon, "alice")["credential_id"],
        new_credential.as_str()
    );
    assert_eq!(key_files(&daemon).len(), 1);

    // The audit log records the reset, with both credentials.
    let audit = std::fs::read_to_string(daemon.state_dir().join("audit.log")).expect("audit");
    let entry = audit
        .lines()
        .find(|l| l.contains("\"kind\":\"user_reset\""))
        .unwrap_or_else(|| panic!("no user_reset entry: {audit}"));
    assert!(
        entry.contains(&old_credential) && entry.contains(&new_credential),
        "{entry}"
    );
}

#[test]
fn a_code_that_does_not_reset_this_user_leaves_everything_as_it_was() {
    let (portal, daemon, _device) = activated();
    daemon.add_user(&portal, "alice", "1234");
    daemon.add_user(&portal, "bob", "4321");
    let credential = show(&daemon, "alice")["credential_id"].clone();
    let keys = key_files(&daemon);
    let dir = open_tempdir();
    let data = data(dir.path());
    let unknown = fleetkey_proto::ActivationCode::from_body(*b"000000000000000").to_string();
    let cases = [
        (portal.user_code("alice").uri, Reason::ResetCodeMismatch),
        (
            reset_code(&portal, "bob")["uri"]
                .as_str()
                .expect("uri")
                .to_string(),
            Reason::ResetCodeMismatch,
        ),
        (portal.device_code().uri, Reason::CodeWrongKind),
        (unknown, Reason::CodeUnknown),
    ];
    for (code, reason) in cases {
        let out = reset(&daemon, "alice", &code, "5678");
        out.assert_reason(reason);
        assert_eq!(
            show(&daemon, "alice")["credential_id"],
            credential,
            "{out:?}"
        );
        assert_eq!(
            portal_credentials(&portal, "alice"),
            [credential.as_str().expect("id").to_string()]
        );
        assert_eq!(key_files(&daemon), keys, "{out:?}");
        daemon.sign("alice", "1234", &data).assert_ok();
    }
    // A reset code for alice does not reset bob either.
    let alices = reset_code(&portal, "alice");
    let out = reset(&daemon, "bob", alices["uri"].as_str().expect("uri"), "5678");
    out.assert_reason(Reason::ResetCodeMismatch);
    assert!(out.stdout.contains("it is for user alice"), "{out:?}");
    daemon.sign("bob", "4321", &data).assert_ok();
}

#[test]
fn a_crash_after_the_portal_accepted_is_finished_at_the_next_start() {
    let portal = Portal::start_with(&["--no-rate-limit"]);
    let mut daemon = Daemon::start_with_env(
        FAST_SOFT_KEYS,
        &[("FLEETKEY_TEST_CRASH_AT", "reset-after-enroll")],
    );
    daemon.activate(&portal);
    daemon.add_user(&portal, "alice", "1234");
    let old = show(&daemon, "alice")["credential_id"].clone();
    let issued = reset_code(&portal, "alice");
    let out = reset(
        &daemon,
        "alice",
        issued["uri"].as_str().expect("uri"),
        "5678",
    );
    assert_ne!(out.code, 0, "the daemon should have crashed: {out:?}");
    // The portal committed: the new credential only.
    let at_portal = portal_credentials(&portal, "alice");
    assert_eq!(at_portal.len(), 1);
    assert_ne!(at_portal[0], old.as_str().expect("id"));

    daemon.env.clear();
    daemon.restart();
    let shown = show(&daemon, "alice");
    assert_eq!(shown["credential_id"], at_portal[0].as_str(), "{shown}");
    assert_eq!(key_files(&daemon).len(), 1);
    let dir = open_tempdir();
    let data = data(dir.path());
    daemon.sign("alice", "5678", &data).assert_ok();
    daemon
        .sign("alice", "1234", &data)
        .assert_reason(Reason::PinWrong);
}

/// The README's "Reset a user" block, run as written: DEVICE names the
/// device, FLEETKEY_SOCKET its daemon.
#[test]
fn the_readme_reset_example_runs_as_written() {
    let (portal, daemon, device) = activated();
    daemon.add_user(&portal, "alice", "1234");
    let old = show(&daemon, "alice")["credential_id"].clone();
    let script = readme_block("Reset a user", "user reset").replace("portal.db", path(&portal.db));
    run_script(&script, &daemon, &[("DEVICE", &device)]);
    let shown = show(&daemon, "alice");
    assert_ne!(shown["credential_id"], old);
    assert_eq!(
        portal_credentials(&portal, "alice"),
        [shown["credential_id"].as_str().expect("id").to_string()]
    );
    let dir = open_tempdir();
    daemon.sign("alice", "9876", &data(dir.path())).assert_ok();
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
