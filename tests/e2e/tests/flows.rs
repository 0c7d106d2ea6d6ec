//! End to end: the real portal, daemon and CLI processes, as an admin and
//! a script would use them.

use std::process::Command;

use fleetkey_e2e::{Daemon, FAST_SOFT_KEYS, Portal, is_root, open_tempdir, openssl_verify};
use fleetkey_proto::{ActivationCode, EnrollmentPayload, Reason};

#[test]
fn activate_enroll_sign_and_verify_with_openssl() {
    let portal = Portal::start();
    let daemon = Daemon::start_default();

    let status = daemon.ctl(&["--json", "status"]);
    status.assert_ok();
    let status = status.json();
    assert_eq!(status["activated"], false);
    let soft = &status["backends"][0];
    assert_eq!(soft["name"], "soft");
    assert_eq!(soft["available"], true);
    assert_eq!(soft["hardware_backed"], false);

    let device_id = daemon.activate(&portal);
    assert!(device_id.starts_with("dev-"), "{device_id}");
    let status = daemon.ctl(&["--json", "status"]).json();
    assert_eq!(status["activated"], true);
    assert_eq!(status["device_id"], device_id.as_str());
    assert_eq!(status["portal_url"], portal.url.as_str());

    let alice = daemon.add_user(&portal, "alice", "1234");
    assert_eq!(alice["user"], "alice");
    assert_eq!(alice["backend"], "soft");
    assert_eq!(alice["hardware_backed"], false);
    assert!(
        alice["credential_id"]
            .as_str()
            .unwrap()
            .starts_with("cred-")
    );
    assert!(alice["enrolled_at"].as_str().unwrap().ends_with('Z'));

    // The portal registered the same key, and knows it is a software key.
    let registered = portal.user_show("alice").expect("portal knows alice");
    assert_eq!(registered["device_id"], device_id.as_str());
    assert_eq!(registered["public_key_pem"], alice["public_key_pem"]);
    assert_eq!(registered["hardware_backed"], false);

    // A second user on the same device, typed code in lower case.
    let code = portal.user_code("bob");
    let typed = code.code.to_lowercase().replace('-', " ");
    let bob = daemon.ctl_with_stdin(
        &["--json", "user", "add", &typed, "--pin-stdin"],
        Some("9876\n"),
    );
    bob.assert_ok();
    assert_eq!(bob.json()["user"], "bob");

    let list = daemon.ctl(&["--json", "user", "list"]);
    list.assert_ok();
    let names: Vec<String> = list.json()["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["alice", "bob"]);

    // Sign a file; the signature verifies with openssl against the key the
    // portal registered.
    let dir = open_tempdir();
    let data = dir.path().join("challenge.bin");
    std::fs::write(&data, b"approve login 42 from 203.0.113.7").unwrap();
    let der = dir.path().join("sig.der");
    let signed = daemon.ctl_with_stdin(
        &[
            "--json",
            "sign",
            "--user",
            "alice",
            "--in",
            data.to_str().unwrap(),
            "--out",
            der.to_str().unwrap(),
            "--pin-stdin",
        ],
        Some("1234\n"),
    );
    signed.assert_ok();
    let signed = signed.json();
    assert_eq!(signed["public_key_pem"], registered["public_key_pem"]);
    assert!(openssl_verify(
        registered["public_key_pem"].as_str().unwrap(),
        &der,
        &data
    ));
    // ... and not against bob's key, nor for other data.
    assert!(!openssl_verify(
        portal.user_show("bob").unwrap()["public_key_pem"]
            .as_str()
            .unwrap(),
        &der,
        &data
    ));
    let other = dir.path().join("other.bin");
    std::fs::write(&other, b"approve login 43").unwrap();
    assert!(!openssl_verify(
        registered["public_key_pem"].as_str().unwrap(),
        &der,
        &other
    ));

    // Human output: base64 signature alone on stdout.
    let plain = daemon.ctl_with_stdin(
        &[
            "sign",
            "--user",
            "bob",
            "--in",
            data.to_str().unwrap(),
            "--pin-stdin",
        ],
        Some("9876\n"),
    );
    plain.assert_ok();
    assert_eq!(plain.stdout.trim().lines().count(), 1, "{plain:?}");

    let show = daemon.ctl(&["--json", "user", "show", "alice"]).json();
    assert_eq!(show["tries_left"], 5);
    assert_eq!(show["locked"], false);
}

#[test]
fn default_argon2_settings_work_end_to_end() {
    let portal = Portal::start();
    let daemon = Daemon::start("");
    daemon.activate(&portal);
    daemon.add_user(&portal, "carol", "4711");
    let dir = open_tempdir();
    let data = dir.path().join("d");
    std::fs::write(&data, b"x").unwrap();
    daemon
        .ctl_with_stdin(
            &[
                "sign",
                "--user",
                "carol",
                "--in",
                data.to_str().unwrap(),
                "--pin-stdin",
            ],
            Some("4711\n"),
        )
        .assert_ok();
}

#[test]
fn code_errors_have_their_own_reasons() {
    let portal = Portal::start();
    let daemon = Daemon::start_default();

    // Before activation.
    let code = portal.user_code("alice");
    daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &code.uri, "--pin-stdin"],
            Some("1234\n"),
        )
        .assert_reason(Reason::DeviceNotActivated);
    // A user code cannot activate a device.
    daemon
        .ctl(&["--json", "activate", &code.uri])
        .assert_reason(Reason::CodeWrongKind);

    // A mistyped code is caught locally: the check character.
    let device = portal.device_code();
    let mut chars: Vec<char> = device.code.chars().collect();
    chars[0] = if chars[0] == 'A' { 'B' } else { 'A' };
    let typo: String = chars.into_iter().collect();
    daemon
        .ctl(&["--json", "activate", &typo])
        .assert_reason(Reason::CodeMistyped);
    daemon
        .ctl(&["--json", "activate", "K7QF-9XWM"])
        .assert_reason(Reason::CodeMalformed);
    daemon
        .ctl(&["--json", "activate", "fleetkey://enroll?v=9&c=x&p=http://x"])
        .assert_reason(Reason::PayloadVersion);
    daemon
        .ctl(&["--json", "activate", "fleetkey://pair?v=1"])
        .assert_reason(Reason::PayloadInvalid);

    // A code this portal never issued.
    let unknown = EnrollmentPayload {
        code: ActivationCode::generate().unwrap(),
        portal_url: portal.url.clone(),
        user_hint: None,
        expires_at: None,
    };
    daemon
        .ctl(&["--json", "activate", &unknown.to_uri()])
        .assert_reason(Reason::CodeUnknown);

    // An unreachable portal.
    let nowhere = EnrollmentPayload {
        portal_url: "http://127.0.0.1:9".into(),
        ..unknown.clone()
    };
    let failed = daemon.ctl(&["--json", "activate", &nowhere.to_uri()]);
    let json = failed.assert_reason(Reason::PortalUnreachable);
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:9")
    );

    // A typed code with no default portal says what to do.
    let typed = daemon.ctl(&["--json", "activate", &device.code]);
    typed.assert_reason(Reason::InvalidArgument);

    daemon.ctl(&["--json", "activate", &device.uri]).assert_ok();
    daemon
        .ctl(&["--json", "activate", &portal.device_code().uri])
        .assert_reason(Reason::AlreadyActivated);

    // A device code cannot add a user.
    daemon
        .ctl_with_stdin(
            &[
                "--json",
                "user",
                "add",
                &portal.device_code().uri,
                "--pin-stdin",
            ],
            Some("1234\n"),
        )
        .assert_reason(Reason::CodeWrongKind);

    // Expired.
    let short = portal.issue(Some("dave"), 1);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &short.uri, "--pin-stdin"],
            Some("1234\n"),
        )
        .assert_reason(Reason::CodeExpired);

    // Used once, then refused.
    daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &code.uri, "--pin-stdin"],
            Some("1234\n"),
        )
        .assert_ok();
    daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &code.uri, "--pin-stdin"],
            Some("1234\n"),
        )
        .assert_reason(Reason::CodeAlreadyUsed);
    // A new code for an enrolled user.
    let again = portal.user_code("alice");
    daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &again.uri, "--pin-stdin"],
            Some("1234\n"),
        )
        .assert_reason(Reason::AlreadyEnrolled);

    // PIN policy, before any key is made or code spent.
    let erin = portal.user_code("erin");
    let json = daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &erin.uri, "--pin-stdin"],
            Some("12\n"),
        )
        .assert_reason(Reason::PinPolicy);
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 characters")
    );
    // Unknown and disabled backends.
    daemon
        .ctl_with_stdin(
            &[
                "--json",
                "user",
                "add",
                &erin.uri,
                "--backend",
                "hsm",
                "--pin-stdin",
            ],
            Some("1234\n"),
        )
        .assert_reason(Reason::BackendUnknown);
    // The code was not spent by those failures.
    daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &erin.uri, "--pin-stdin"],
            Some("1234\n"),
        )
        .assert_ok();
    // No key was left behind by the failures: one key file per user.
    let keys = std::fs::read_dir(daemon.state_dir().join("soft-keys"))
        .unwrap()
        .count();
    assert_eq!(keys, 2);

    daemon
        .ctl_with_stdin(
            &[
                "--json",
                "sign",
                "--user",
                "nobody",
                "--in",
                "/etc/hostname",
                "--pin-stdin",
            ],
            Some("1234\n"),
        )
        .assert_reason(Reason::UserUnknown);
}

#[test]
fn unavailable_backend_is_reported_and_the_daemon_still_runs() {
    let portal = Portal::start();
    let daemon = Daemon::start("[backends.soft]\nenabled = false\n");
    let status = daemon.ctl(&["--json", "status"]).json();
    assert_eq!(status["backends"][0]["available"], false);
    assert!(
        status["backends"][0]["unavailable_reason"]
            .as_str()
            .unwrap()
            .contains("disabled")
    );
    daemon.activate(&portal);
    let code = portal.user_code("alice");
    daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &code.uri, "--pin-stdin"],
            Some("1234\n"),
        )
        .assert_reason(Reason::BackendUnavailable);
}

#[test]
fn wrong_pins_count_down_lock_and_survive_a_crash() {
    let portal = Portal::start();
    let mut daemon = Daemon::start_default();
    daemon.activate(&portal);
    daemon.add_user(&portal, "alice", "1234");
    let sign = |daemon: &Daemon, pin: &str| {
        daemon.ctl_with_stdin(
            &[
                "--json",
                "sign",
                "--user",
                "alice",
                "--in",
                "/etc/hostname",
                "--pin-stdin",
            ],
            Some(&format!("{pin}\n")),
        )
    };
    let json = sign(&daemon, "0000").assert_reason(Reason::PinWrong);
    assert_eq!(json["error"]["tries_left"], 4);
    // A correct PIN resets the count.
    sign(&daemon, "1234").assert_ok();
    assert_eq!(
        sign(&daemon, "0000").assert_reason(Reason::PinWrong)["error"]["tries_left"],
        4
    );
    assert_eq!(
        sign(&daemon, "0001").assert_reason(Reason::PinWrong)["error"]["tries_left"],
        3
    );

    // The count survives kill -9.
    daemon.restart();
    let show = daemon.ctl(&["--json", "user", "show", "alice"]).json();
    assert_eq!(show["failed_attempts"], 2);
    assert_eq!(show["tries_left"], 3);
    assert_eq!(
        sign(&daemon, "0002").assert_reason(Reason::PinWrong)["error"]["tries_left"],
        2
    );
    assert_eq!(
        sign(&daemon, "0003").assert_reason(Reason::PinWrong)["error"]["tries_left"],
        1
    );
    sign(&daemon, "0004").assert_reason(Reason::PinLocked);
    // Locked: even the right PIN is refused, also after a restart.
    sign(&daemon, "1234").assert_reason(Reason::PinLocked);
    daemon.restart();
    sign(&daemon, "1234").assert_reason(Reason::PinLocked);
    assert_eq!(
        daemon.ctl(&["--json", "user", "show", "alice"]).json()["locked"],
        true
    );
}

#[test]
fn enrollment_survives_kill_9_and_orphans_are_cleaned() {
    let portal = Portal::start();
    let mut daemon = Daemon::start_default();
    daemon.activate(&portal);
    let bob = daemon.add_user(&portal, "bob", "2468");
    // Acknowledged, then the power goes.
    daemon.kill9();
    // A key file no record names, as a crash between "create" and
    // "record" would leave.
    let keys = daemon.state_dir().join("soft-keys");
    let existing = std::fs::read_dir(&keys)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let orphan = keys.join("u-orphan000000000000000000.key");
    std::fs::copy(&existing, &orphan).unwrap();

    daemon.restart();
    assert!(!orphan.exists(), "orphaned key was not cleaned up");
    assert!(existing.exists());
    assert!(daemon.log_text().contains("orphan") || daemon.log_text().contains("recovery"));
    let show = daemon.ctl(&["--json", "user", "show", "bob"]);
    show.assert_ok();
    assert_eq!(show.json()["public_key_pem"], bob["public_key_pem"]);
    daemon
        .ctl_with_stdin(
            &[
                "sign",
                "--user",
                "bob",
                "--in",
                "/etc/hostname",
                "--pin-stdin",
            ],
            Some("2468\n"),
        )
        .assert_ok();
    let status = daemon.ctl(&["--json", "status"]).json();
    assert_eq!(status["activated"], true);
    assert_eq!(status["user_count"], 1);

    // SIGTERM stops it cleanly and removes the socket.
    assert!(daemon.terminate().success());
    assert!(!daemon.socket.exists());
}

#[test]
fn remove_revokes_at_the_portal_and_pin_change_works() {
    let portal = Portal::start();
    let daemon = Daemon::start_default();
    daemon.activate(&portal);
    daemon.add_user(&portal, "alice", "1234");

    let changed = daemon.ctl_with_stdin(
        &["--json", "user", "pin", "change", "alice", "--pin-stdin"],
        Some("1234\n5678\n"),
    );
    changed.assert_ok();
    assert_eq!(changed.json()["pin_changed"], true);
    let sign = |pin: &str| {
        daemon.ctl_with_stdin(
            &[
                "--json",
                "sign",
                "--user",
                "alice",
                "--in",
                "/etc/hostname",
                "--pin-stdin",
            ],
            Some(&format!("{pin}\n")),
        )
    };
    sign("1234").assert_reason(Reason::PinWrong);
    sign("5678").assert_ok();
    daemon
        .ctl_with_stdin(
            &["--json", "user", "pin", "change", "alice", "--pin-stdin"],
            Some("5678\n1\n"),
        )
        .assert_reason(Reason::PinPolicy);

    let removed = daemon.ctl(&["--json", "user", "remove", "alice"]);
    removed.assert_ok();
    assert_eq!(removed.json()["revoked_at_portal"], true);
    assert!(
        portal.user_show("alice").is_none(),
        "portal still shows alice"
    );
    sign("5678").assert_reason(Reason::UserUnknown);
    daemon
        .ctl(&["--json", "user", "remove", "alice"])
        .assert_reason(Reason::UserUnknown);
    assert_eq!(
        std::fs::read_dir(daemon.state_dir().join("soft-keys"))
            .unwrap()
            .count(),
        0
    );

    // Enrolled again with a new code.
    daemon.add_user(&portal, "alice", "1111");
    assert!(portal.user_show("alice").is_some());
}

#[test]
fn non_admin_may_sign_but_not_enroll() {
    if !is_root() {
        assert!(
            std::env::var_os("FLEETKEY_REQUIRE_ROOT_TESTS").is_none(),
            "this test must run as root (it switches users with setpriv)"
        );
        eprintln!("not root: the setpriv test cannot switch users here; CI runs it as root");
        return;
    }
    let portal = Portal::start();
    let daemon = Daemon::start(FAST_SOFT_KEYS);
    daemon.activate(&portal);
    daemon.add_user(&portal, "alice", "1234");
    let nobody = 65534;

    let code = portal.user_code("mallory");
    let refused = daemon.ctl_as(
        nobody,
        &["--json", "user", "add", &code.uri, "--pin-stdin"],
        Some("1234\n"),
    );
    let json = refused.assert_reason(Reason::PermissionDenied);
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uid 65534")
    );
    daemon
        .ctl_as(nobody, &["--json", "user", "remove", "alice"], None)
        .assert_reason(Reason::PermissionDenied);
    daemon
        .ctl_as(
            nobody,
            &["--json", "activate", &portal.device_code().uri],
            None,
        )
        .assert_reason(Reason::PermissionDenied);

    // Signing needs only the PIN.
    let dir = open_tempdir();
    let data = dir.path().join("data");
    std::fs::write(&data, b"hello").unwrap();
    let signed = daemon.ctl_as(
        nobody,
        &[
            "--json",
            "sign",
            "--user",
            "alice",
            "--in",
            data.to_str().unwrap(),
            "--pin-stdin",
        ],
        Some("1234\n"),
    );
    signed.assert_ok();
    daemon
        .ctl_as(
            nobody,
            &[
                "--json",
                "sign",
                "--user",
                "alice",
                "--in",
                data.to_str().unwrap(),
                "--pin-stdin",
            ],
            Some("9999\n"),
        )
        .assert_reason(Reason::PinWrong);
    daemon
        .ctl_as(nobody, &["--json", "user", "list"], None)
        .assert_ok();
    // The refused code is still good for an admin.
    daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &code.uri, "--pin-stdin"],
            Some("1234\n"),
        )
        .assert_ok();
}

#[test]
fn second_daemon_on_the_same_socket_is_refused() {
    let daemon = Daemon::start_default();
    let output = Command::new(fleetkey_e2e::bin("fleetkeyd"))
        .arg("--config")
        .arg(&daemon.config)
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("--state-dir")
        .arg(daemon.dir.path().join("other-state"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already listening"));
    daemon.ctl(&["status"]).assert_ok();
}

#[test]
fn bad_config_is_a_clear_startup_error() {
    let dir = open_tempdir();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[pin]\nmax_atempts = 3\n").unwrap();
    let output = Command::new(fleetkey_e2e::bin("fleetkeyd"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("s"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_atempts"), "{stderr}");
}

#[test]
fn portal_outage_and_portal_refusal_leave_nothing_behind() {
    let mut portal = Portal::start();
    let daemon = Daemon::start_default();
    daemon.activate(&portal);
    // PINs from files made on Windows end in CRLF; only the line end goes.
    let code = portal.user_code("alice");
    daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &code.uri, "--pin-stdin"],
            Some("1234\r\n"),
        )
        .assert_ok();
    daemon
        .ctl_with_stdin(
            &[
                "sign",
                "--user",
                "alice",
                "--in",
                "/etc/hostname",
                "--pin-stdin",
            ],
            Some("1234\n"),
        )
        .assert_ok();

    // The portal is down: removal still deletes the local key, and says the
    // portal was not told.
    let pending = portal.user_code("bob");
    portal.stop();
    let removed = daemon.ctl(&["--json", "user", "remove", "alice"]);
    removed.assert_ok();
    let json = removed.json();
    assert_eq!(json["revoked_at_portal"], false);
    assert!(
        json["portal_message"].as_str().unwrap().contains("portal"),
        "{removed:?}"
    );
    daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &pending.uri, "--pin-stdin"],
            Some("1234\n"),
        )
        .assert_reason(Reason::PortalUnreachable);
    let keys = daemon.state_dir().join("soft-keys");
    assert_eq!(std::fs::read_dir(&keys).unwrap().count(), 0);

    // Back up: the portal still has alice (it was never told), so it
    // refuses her new enrollment after the key was made; the daemon rolls
    // back the record and the key.
    portal.start_again();
    let again = portal.user_code("alice");
    daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &again.uri, "--pin-stdin"],
            Some("1234\n"),
        )
        .assert_reason(Reason::AlreadyEnrolled);
    assert_eq!(
        std::fs::read_dir(&keys).unwrap().count(),
        0,
        "key left behind"
    );
    daemon
        .ctl(&["--json", "user", "show", "alice"])
        .assert_reason(Reason::UserUnknown);
    // The code that waited through the outage still works.
    daemon
        .ctl_with_stdin(
            &["--json", "user", "add", &pending.uri, "--pin-stdin"],
            Some("1234\n"),
        )
        .assert_ok();
}
