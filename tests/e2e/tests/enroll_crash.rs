//! Issue 9, item 5: the daemon dies (abort, as kill -9) right after the
//! portal committed `EnrollUser` and before the user's row was made
//! active. At the next start the daemon sends the same signed request
//! again; the portal answers it with the same credential, and the user is
//! kept: active, able to sign, and enrolled once at the portal. Before,
//! startup rolled the user back while the portal kept the credential: the
//! name could then be neither enrolled again nor removed.
//!
//! The crash comes from the daemon's test-only fault hook
//! (`FLEETKEY_TEST_CRASH_AT`, daemon/src/fault.rs). This file holds one
//! test, as it sets the variable for the daemon it starts.

use fleetkey_e2e::*;
use fleetkey_proto::Reason;

#[test]
fn crash_after_the_portal_committed_keeps_the_user() {
    let portal = Portal::start();
    // SAFETY: the only test in this binary; no other thread reads the
    // environment while it changes.
    unsafe { std::env::set_var("FLEETKEY_TEST_CRASH_AT", "after-enroll") };
    let mut daemon = Daemon::start_default();
    unsafe { std::env::remove_var("FLEETKEY_TEST_CRASH_AT") };
    daemon.activate(&portal);

    let code = portal.user_code("alice");
    let crashed = daemon.add_user_by_code(&code.uri, "1234", "soft");
    assert_ne!(crashed.code, 0, "the daemon should have died: {crashed:?}");
    assert!(
        daemon.log_text().contains("FLEETKEY_TEST_CRASH_AT"),
        "the daemon did not stop at the fault hook: {}",
        daemon.log_text()
    );
    // The portal committed the enrollment before the daemon died.
    let at_portal = portal.user_show("alice").expect("the portal has alice");

    daemon.restart();
    assert!(
        daemon.log_text().contains("the portal confirmed it"),
        "{}",
        daemon.log_text()
    );
    let shown = daemon.ctl(&["--json", "user", "show", "alice"]);
    shown.assert_ok();
    let shown = shown.json();
    assert_eq!(shown["public_key_pem"], at_portal["public_key_pem"]);
    assert_eq!(shown["credential_id"], at_portal["credential_id"]);

    let data = open_tempdir();
    let file = data.path().join("data.txt");
    std::fs::write(&file, "signed after the crash").expect("data");
    let signed = daemon.sign("alice", "1234", &file);
    signed.assert_ok();
    let pem = signed.json()["public_key_pem"]
        .as_str()
        .expect("public_key_pem")
        .to_string();
    assert!(openssl_verify(&pem, &file.with_extension("sig"), &file));

    // Exactly one credential for alice at the portal.
    let listed = portal.cli(&["user", "list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let alices = listed
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["user"] == "alice")
        .count();
    assert_eq!(alices, 1, "{listed}");

    // And the name works as any other: removed, then enrolled again.
    daemon
        .ctl(&["--json", "user", "remove", "alice"])
        .assert_ok();
    daemon
        .ctl(&["--json", "user", "show", "alice"])
        .assert_reason(Reason::UserUnknown);
    daemon.add_user(&portal, "alice", "5678");
}
