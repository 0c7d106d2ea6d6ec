//! End to end with the `tpm` key store: the real portal, daemon and CLI on
//! a real software TPM (swtpm with an EK certificate, started by
//! tests/swtpm/start.sh), one TPM per test. Cross-checked with tpm2-tools.

use std::path::Path;

use fleetkey_e2e::{Daemon, Portal, Swtpm, open_tempdir, openssl_verify};
use fleetkey_proto::Reason;
use serde_json::Value;

fn tpm_backend(status: &Value) -> Value {
    status["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == "tpm")
        .cloned()
        .expect("a tpm backend in status")
}

fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// Signs and checks the signature with openssl against the key the portal
/// registered.
fn sign_and_verify(daemon: &Daemon, portal: &Portal, user: &str, pin: &str, dir: &Path) {
    let data = write(
        dir,
        &format!("{user}.txt"),
        format!("approve {user}").as_bytes(),
    );
    let signed = daemon.sign(user, pin, &data);
    signed.assert_ok();
    let registered = portal.user_show(user).expect("portal knows the user");
    assert_eq!(
        signed.json()["public_key_pem"],
        registered["public_key_pem"]
    );
    assert!(
        openssl_verify(
            registered["public_key_pem"].as_str().unwrap(),
            &data.with_extension("sig"),
            &data
        ),
        "openssl does not verify {user}'s TPM signature"
    );
}

/// A TPM property from `tpm2_getcap`, e.g. "TPM2_PT_MANUFACTURER".
fn getcap_value(tpm: &Swtpm, group: &str, property: &str) -> String {
    let out = tpm.tpm2("tpm2_getcap", &[group]);
    assert!(out.status.success(), "tpm2_getcap {group}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix(&format!("{property}:")) {
            if !rest.trim().is_empty() {
                return rest.trim().to_string();
            }
            // properties-fixed: "  raw: 0x..." then "  value: ..." lines.
            let mut value = String::new();
            for next in lines.by_ref() {
                if !next.starts_with(' ') {
                    break;
                }
                if let Some(v) = next.trim().strip_prefix("value:") {
                    value = v.trim().trim_matches('"').to_string();
                }
            }
            return value;
        }
    }
    panic!("tpm2_getcap {group} shows no {property}: {text}");
}

#[test]
fn tpm_users_enroll_sign_verify_with_openssl_and_survive_restarts() {
    let mut tpm = Swtpm::start();
    let portal = Portal::start();
    let mut daemon = Daemon::start(&tpm.daemon_config());

    let status = daemon.ctl(&["--json", "status"]).json();
    let backend = tpm_backend(&status);
    assert_eq!(backend["available"], true, "{backend}");
    assert_eq!(backend["hardware_backed"], true);
    assert_eq!(backend["details"]["manufacturer"], "IBM");
    assert!(!backend["details"]["firmware"].as_str().unwrap().is_empty());
    assert!(
        backend["details"]["warning"]
            .as_str()
            .unwrap()
            .contains("simulator"),
        "{backend}"
    );
    // swtpm locks the TPM after 3 failures: users are locked after 2.
    assert_eq!(backend["pin_max_attempts"], 2);
    let human = daemon.ctl(&["status"]);
    human.assert_ok();
    assert!(
        human
            .stdout
            .contains("warning: tpm: this TPM is a simulator"),
        "{human:?}"
    );

    daemon.activate(&portal);
    let users = [
        ("alice", "1234"),
        ("bob", "5678"),
        ("carol", "9012"),
        ("dave", "3456"),
    ];
    for (user, pin) in users {
        let added = daemon.add_user_with(&portal, user, pin, "tpm");
        assert_eq!(added["backend"], "tpm");
        assert_eq!(added["hardware_backed"], true);
    }
    let dir = open_tempdir();
    for (user, pin) in users {
        sign_and_verify(&daemon, &portal, user, pin, dir.path());
    }
    let list = daemon.ctl(&["--json", "user", "list"]).json();
    for user in list["users"].as_array().unwrap() {
        assert_eq!(user["tries_left"], 2, "{user}");
    }

    // The daemon crashes and comes back: the keys' blobs are in its state.
    daemon.restart();
    sign_and_verify(&daemon, &portal, "alice", "1234", dir.path());
    // The TPM loses power under the running daemon: it reconnects. (The
    // TPM counts the unorderly restart as one DA failure.)
    tpm.restart();
    sign_and_verify(&daemon, &portal, "bob", "5678", dir.path());
    // Both go down in order and come back.
    daemon.terminate();
    tpm.reboot();
    daemon.restart();
    sign_and_verify(&daemon, &portal, "carol", "9012", dir.path());

    // PIN change through the TPM (TPM2_ObjectChangeAuth).
    daemon
        .ctl_with_stdin(
            &["--json", "user", "pin", "change", "dave", "--pin-stdin"],
            Some("3456\n6543\n"),
        )
        .assert_ok();
    sign_and_verify(&daemon, &portal, "dave", "6543", dir.path());
    let data = write(dir.path(), "old.txt", b"old pin");
    daemon
        .sign("dave", "3456", &data)
        .assert_reason(Reason::PinWrong);

    // tpm2-tools sees the same TPM the daemon reported (swtpm serves one
    // client at a time, so the daemon is stopped first).
    let status = daemon.ctl(&["--json", "status"]).json();
    let backend = tpm_backend(&status);
    daemon.terminate();
    assert_eq!(
        getcap_value(&tpm, "properties-fixed", "TPM2_PT_MANUFACTURER"),
        backend["details"]["manufacturer"].as_str().unwrap()
    );
    // The power cut and dave's wrong PIN each counted one failure, and
    // the daemon reset the counter after each: swtpm has no lockout
    // authorization, so anyone who can open it could (docs/tpm-lockout.md).
    let counter = getcap_value(&tpm, "properties-variable", "TPM2_PT_LOCKOUT_COUNTER");
    assert_eq!(
        counter, "0x0",
        "reset after the power cut and dave's wrong PIN"
    );
    assert!(
        backend["details"]["lockout"]
            .as_str()
            .unwrap()
            .starts_with("0 of 3 failures"),
        "{backend}"
    );
    assert!(
        backend["details"]["counter_reset"]
            .as_str()
            .unwrap()
            .starts_with("after every wrong PIN"),
        "{backend}"
    );
    let audit = std::fs::read_to_string(daemon.state_dir().join("audit.log")).unwrap();
    assert!(audit.contains("\"kind\":\"tpm_counter_reset\""), "{audit}");
}

#[test]
fn one_users_wrong_pins_never_lock_the_tpm_and_lockout_is_reported() {
    let tpm = Swtpm::start();
    // With a lockout authorization (kept off the device) the daemon cannot
    // reset the TPM's counter: the budget is what keeps it from lockout.
    tpm.set_lockout_auth("kept-elsewhere");
    let portal = Portal::start();
    let mut daemon = Daemon::start(&tpm.daemon_config());
    daemon.activate(&portal);
    daemon.add_user_with(&portal, "alice", "1111", "tpm");
    daemon.add_user_with(&portal, "bob", "2222", "tpm");
    let dir = open_tempdir();
    let data = write(dir.path(), "challenge", b"login 7");

    // Alice guesses: the TPM checks the PIN. Her second guess would take
    // the last failure the TPM can take, kept for users who have made no
    // mistake (docs/tpm-lockout.md): refused before the TPM is asked.
    let wrong = daemon.sign("alice", "0000", &data);
    let json = wrong.assert_reason(Reason::PinWrong);
    assert_eq!(json["error"]["tries_left"], 1);
    for guess in ["0001", "0002", "1111"] {
        daemon
            .sign("alice", guess, &data)
            .assert_reason(Reason::TpmBudgetSpent);
    }
    let status = daemon.ctl(&["--json", "status"]).json();
    let lockout = tpm_backend(&status)["details"]["lockout"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(lockout.starts_with("1 of 3 failures"), "{lockout}");
    assert!(!lockout.contains("IN LOCKOUT"), "{lockout}");
    // ... so Bob still signs, also after a daemon restart.
    daemon.sign("bob", "2222", &data).assert_ok();
    daemon.restart();
    daemon
        .sign("alice", "1111", &data)
        .assert_reason(Reason::TpmBudgetSpent);
    daemon.sign("bob", "2222", &data).assert_ok();

    // Bob's first wrong PIN takes the last failure: now everyone waits
    // for the TPM's decay, and the TPM is never in lockout.
    daemon
        .sign("bob", "9999", &data)
        .assert_reason(Reason::PinWrong);
    let refused = daemon.sign("bob", "2222", &data);
    let json = refused.assert_reason(Reason::TpmBudgetSpent);
    assert_eq!(json["error"]["retry_after_seconds"], "2000", "{json}");
    let bob = daemon.ctl(&["--json", "user", "show", "bob"]).json();
    assert_eq!(bob["failed_attempts"], 1, "{bob}");
    assert_eq!(bob["locked"], false);
    let status = daemon.ctl(&["--json", "status"]).json();
    let lockout = tpm_backend(&status)["details"]["lockout"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(lockout.starts_with("2 of 3 failures"), "{lockout}");
    assert!(!lockout.contains("IN LOCKOUT"), "{lockout}");
}

#[test]
fn tpm_state_copied_to_another_machine_does_not_sign() {
    let tpm_a = Swtpm::start();
    let tpm_b = Swtpm::start();
    let portal = Portal::start();
    let mut daemon_a = Daemon::start(&tpm_a.daemon_config());
    daemon_a.activate(&portal);
    daemon_a.add_user_with(&portal, "alice", "1234", "tpm");
    daemon_a.terminate();

    // The whole state directory, key blobs included, on another machine.
    let daemon_b = Daemon::start_with_state_of(&tpm_b.daemon_config(), &daemon_a);
    let dir = open_tempdir();
    let data = write(dir.path(), "challenge", b"stolen disk");
    let refused = daemon_b.sign("alice", "1234", &data);
    let json = refused.assert_reason(Reason::TpmKeyRejected);
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not made by this TPM"),
        "{json}"
    );
    // A refused load is not a wrong PIN.
    let alice = daemon_b.ctl(&["--json", "user", "show", "alice"]).json();
    assert_eq!(alice["failed_attempts"], 0);
}

#[test]
fn no_tpm_means_unavailable_and_the_daemon_still_runs() {
    let portal = Portal::start();
    let config = format!(
        "{}\n[backends.tpm]\ntcti = \"swtpm:host=127.0.0.1,port=1\"\n",
        fleetkey_e2e::FAST_SOFT_KEYS
    );
    let daemon = Daemon::start(&config);
    let status = daemon.ctl(&["--json", "status"]).json();
    let backend = tpm_backend(&status);
    assert_eq!(backend["available"], false);
    let reason = backend["unavailable_reason"].as_str().unwrap();
    assert!(reason.contains("no TPM answers"), "{reason}");
    daemon.activate(&portal);
    let code = portal.user_code("alice");
    daemon
        .add_user_by_code(&code.uri, "1234", "tpm")
        .assert_reason(Reason::BackendUnavailable);
    // The software store still works.
    daemon.add_user(&portal, "bob", "1234");
}

/// Activation binds the device to its TPM (the portal's credential
/// challenge, answered by TPM2_ActivateCredential, with the EK certificate
/// checked against the test CA), and each TPM user key comes certified by
/// the TPM's attestation key: the portal records it as hardware-backed and
/// says what it verified. A software key on the same device is not.
#[test]
fn activation_attests_the_tpm_and_the_portal_verifies_each_tpm_key() {
    let tpm = Swtpm::start();
    let roots = tpm.ek_ca_bundle();
    let portal = Portal::start_with(&["--tpm-ek-roots", roots.to_str().unwrap()]);
    let daemon = Daemon::start(&tpm.daemon_config());

    let activated = daemon.ctl(&["--json", "activate", &portal.device_code().uri]);
    activated.assert_ok();
    let attestation = activated.json()["attestation"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        attestation.contains("EK certificate verified"),
        "{attestation}"
    );
    let status = daemon.ctl(&["--json", "status"]).json();
    assert_eq!(status["device_attestation"], attestation.as_str());
    let devices = portal.device_list().to_string();
    assert!(devices.contains("EK certificate verified"), "{devices}");

    let added = daemon.add_user_with(&portal, "alice", "1234", "tpm");
    assert_eq!(added["hardware_backed"], true);
    let notes = added["notes"].to_string();
    assert!(!notes.contains("portal did not record"), "{notes}");
    let alice = portal.user_show("alice").unwrap();
    assert_eq!(alice["attestation_format"], "tpm2-certify", "{alice}");
    assert_eq!(alice["hardware_backed"], true, "{alice}");
    let detail = alice["attestation_detail"].as_str().unwrap();
    for attribute in ["fixedTPM", "fixedParent", "sensitiveDataOrigin"] {
        assert!(detail.contains(attribute), "{detail}");
    }
    let dir = open_tempdir();
    sign_and_verify(&daemon, &portal, "alice", "1234", dir.path());

    daemon.add_user(&portal, "bob", "5678");
    let bob = portal.user_show("bob").unwrap();
    assert_eq!(bob["attestation_format"], "none");
    assert_eq!(bob["hardware_backed"], false);
}

/// A TPM whose EK certificate was not issued by a CA the portal trusts
/// cannot activate, and the code stays unused for a device that can.
#[test]
fn a_tpm_from_an_untrusted_maker_cannot_activate() {
    let tpm = Swtpm::start();
    let trusted_maker = Swtpm::start();
    let roots = trusted_maker.ek_ca_bundle();
    let portal = Portal::start_with(&["--tpm-ek-roots", roots.to_str().unwrap()]);
    let daemon = Daemon::start(&tpm.daemon_config());
    let code = portal.device_code();
    let refused = daemon.ctl(&["--json", "activate", &code.uri]);
    let json = refused.assert_reason(Reason::SignatureInvalid);
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("EK certificate"), "{message}");
    let status = daemon.ctl(&["--json", "status"]).json();
    assert_eq!(status["activated"], false);
    assert_eq!(portal.device_list(), serde_json::json!([]));

    // The trusted TPM activates with the same code.
    let good = Daemon::start(&trusted_maker.daemon_config());
    good.ctl(&["--json", "activate", &code.uri]).assert_ok();
}

/// A forged attestation: the device was activated with TPM A, then its
/// state is moved to a machine with TPM B. A key made there is certified
/// by B's attestation key, which the portal never bound to this device:
/// the portal refuses the enrollment, and nothing is left behind.
#[test]
fn a_key_certified_by_another_tpm_is_refused_by_the_portal() {
    let tpm_a = Swtpm::start();
    let tpm_b = Swtpm::start();
    let portal = Portal::start();
    let mut daemon_a = Daemon::start(&tpm_a.daemon_config());
    daemon_a.activate(&portal);
    daemon_a.add_user_with(&portal, "alice", "1234", "tpm");
    daemon_a.terminate();

    let mut daemon_b = Daemon::start_with_state_of(&tpm_b.daemon_config(), &daemon_a);
    let code = portal.user_code("mallory");
    let refused = daemon_b.add_user_by_code(&code.uri, "1234", "tpm");
    let json = refused.assert_reason(Reason::SignatureInvalid);
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("attestation key"), "{message}");
    assert!(portal.user_show("mallory").is_none());
    let list = daemon_b.ctl(&["--json", "user", "list"]).json();
    assert_eq!(list["users"].as_array().unwrap().len(), 1, "{list}");
    // The code was not used up: the right device can still enroll with it.
    daemon_b.terminate();
    let daemon_a = Daemon::start_with_state_of(&tpm_a.daemon_config(), &daemon_b);
    let added = daemon_a.add_user_by_code(&code.uri, "1234", "tpm").json();
    assert_eq!(added["hardware_backed"], true, "{added}");
}

/// A device activated before its TPM was enabled has no attestation key
/// at the portal: its TPM users still enroll, but the portal records them
/// as not hardware-backed, and the person enrolling is told why.
#[test]
fn a_tpm_enabled_after_activation_enrolls_without_the_portals_trust() {
    let tpm = Swtpm::start();
    let portal = Portal::start();
    let mut soft_only = Daemon::start(fleetkey_e2e::FAST_SOFT_KEYS);
    soft_only.activate(&portal);
    let status = soft_only.ctl(&["--json", "status"]).json();
    assert_eq!(status["device_attestation"], "no TPM identity", "{status}");
    soft_only.terminate();

    let daemon = Daemon::start_with_state_of(&tpm.daemon_config(), &soft_only);
    let added = daemon.add_user_with(&portal, "alice", "1234", "tpm");
    let notes = added["notes"].to_string();
    assert!(
        notes.contains("the portal did not record the key as hardware-backed"),
        "{notes}"
    );
    assert!(notes.contains("without a TPM identity"), "{notes}");
    let alice = portal.user_show("alice").unwrap();
    assert_eq!(alice["attestation_format"], "tpm2-certify");
    assert_eq!(alice["hardware_backed"], false, "{alice}");
}
