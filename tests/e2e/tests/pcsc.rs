//! End to end with smartcards: the real pcscd (started here, in the
//! foreground, with the vpcd virtual reader driver), simulated PIV cards
//! (`fleetkey-piv-sim`) in vpcd's readers, the real daemon, CLI and
//! portal; and OpenSC's tools against the same simulated card.
//!
//! Only one pcscd can run at a time, so these tests take a lock.

use std::path::Path;
use std::process::Command;

use fleetkey_e2e::{
    Ctl, Daemon, FAST_SOFT_KEYS, Pcscd, Portal, SimCard, VPCD_READERS, open_tempdir,
    openssl_verify, pcsc_tests_can_run, pcscd_lock,
};
use fleetkey_proto::Reason;
use serde_json::Value;

const OPENSC_PKCS11: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";

fn config() -> String {
    format!("{FAST_SOFT_KEYS}[pin]\nmax_length = 8\n")
}

fn add_pcsc_user(daemon: &Daemon, portal: &Portal, user: &str, pin: &str, extra: &[&str]) -> Ctl {
    let code = portal.user_code(user);
    let mut args = vec![
        "--json",
        "user",
        "add",
        &code.uri,
        "--backend",
        "pcsc",
        "--pin-stdin",
    ];
    args.extend_from_slice(extra);
    daemon.ctl_with_stdin(&args, Some(&format!("{pin}\n")))
}

fn sign(daemon: &Daemon, user: &str, pin: &str, data: &Path, out: &Path) -> Ctl {
    daemon.ctl_with_stdin(
        &[
            "--json",
            "sign",
            "--user",
            user,
            "--in",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--pin-stdin",
        ],
        Some(&format!("{pin}\n")),
    )
}

fn cards(daemon: &Daemon) -> Vec<Value> {
    let out = daemon.ctl(&["--json", "card", "list"]);
    out.assert_ok();
    out.json()["cards"].as_array().unwrap().clone()
}

fn card_id_in(daemon: &Daemon, reader: usize) -> String {
    let cards = cards(daemon);
    let card = cards
        .iter()
        .find(|c| c["reader"] == VPCD_READERS[reader].0)
        .unwrap();
    assert_eq!(card["piv"], true, "{cards:?}");
    card["card_id"].as_str().unwrap().to_string()
}

/// pcscd, a portal and an activated daemon whose pcsc backend is up.
struct Setup {
    portal: Portal,
    daemon: Daemon,
    pcscd: Pcscd,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let pcscd = Pcscd::start();
    let portal = Portal::start();
    let daemon = Daemon::start(&config());
    let status = daemon.ctl(&["--json", "status"]).json();
    let pcsc = status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "pcsc")
        .cloned()
        .expect("a pcsc backend");
    assert_eq!(pcsc["available"], true, "build with --all-features: {pcsc}");
    assert_eq!(pcsc["hardware_backed"], true);
    assert_eq!(pcsc["pin_min_length"], 6);
    assert_eq!(pcsc["pin_max_length"], 8);
    daemon.activate(&portal);
    let dir = open_tempdir();
    std::fs::write(dir.path().join("data"), b"approve login 42\n").unwrap();
    Setup {
        portal,
        daemon,
        pcscd,
        dir,
    }
}

#[test]
fn two_users_on_two_cards_sign_and_verify_with_openssl() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    let s = setup();
    let card_a = SimCard::new(0);
    let card_b = SimCard::new(1);

    let listed = cards(&s.daemon);
    assert_eq!(listed.len(), 2, "{listed:?}");
    for (i, card) in listed.iter().enumerate() {
        assert_eq!(card["reader"], VPCD_READERS[i].0);
        assert_eq!(card["card_present"], true);
        assert_eq!(card["piv"], true);
        assert_eq!(card["card_id"].as_str().unwrap().len(), 32, "{card}");
        assert!(!card["serial"].as_str().unwrap().is_empty());
    }
    assert_ne!(listed[0]["card_id"], listed[1]["card_id"]);

    // Two cards present: the reader must be named.
    let ambiguous = add_pcsc_user(&s.daemon, &s.portal, "alice", "24681357", &[]);
    let error = ambiguous.assert_reason(Reason::InvalidArgument);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--reader"),
        "{error}"
    );

    let alice = add_pcsc_user(
        &s.daemon,
        &s.portal,
        "alice",
        "24681357",
        &["--reader", VPCD_READERS[0].0],
    );
    alice.assert_ok();
    let alice = alice.json();
    assert_eq!(alice["backend"], "pcsc");
    assert_eq!(alice["hardware_backed"], true);
    let notes = alice["notes"].to_string();
    assert!(notes.contains("factory PIN"), "{notes}");
    assert!(notes.contains("no attestation"), "{notes}");

    let bob = add_pcsc_user(
        &s.daemon,
        &s.portal,
        "bob",
        "13572468",
        &["--reader", VPCD_READERS[1].0, "--slot", "9c"],
    );
    bob.assert_ok();
    let bob = bob.json();
    assert!(bob["notes"].to_string().contains("slot 9c"), "{bob}");

    // The portal registered the card key, without attestation: its own
    // policy decides what an unattested key is worth.
    let registered = s.portal.user_show("alice").unwrap();
    assert_eq!(registered["public_key_pem"], alice["public_key_pem"]);
    assert_eq!(registered["attestation_format"], "none");

    let data = s.dir.path().join("data");
    for (user, pin, json) in [("alice", "24681357", &alice), ("bob", "13572468", &bob)] {
        let sig = s.dir.path().join(format!("{user}.sig"));
        let out = sign(&s.daemon, user, pin, &data, &sig);
        out.assert_ok();
        assert_eq!(out.json()["public_key_pem"], json["public_key_pem"]);
        assert!(
            openssl_verify(json["public_key_pem"].as_str().unwrap(), &sig, &data),
            "{user}'s signature does not verify"
        );
    }
    // One user's PIN is not the other's: bob's card refuses alice's PIN.
    let cross = sign(&s.daemon, "bob", "24681357", &data, &s.dir.path().join("x"));
    cross.assert_reason(Reason::PinWrong);
    drop((card_a, card_b));
}

#[test]
fn wrong_card_no_card_and_card_pulled_mid_signature() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    let s = setup();
    let mut alice_card = SimCard::new(0);
    let alice_id = card_id_in(&s.daemon, 0);
    add_pcsc_user(&s.daemon, &s.portal, "alice", "24681357", &[]).assert_ok();
    let data = s.dir.path().join("data");
    let sig = s.dir.path().join("sig");

    // Another card in the reader.
    alice_card.remove();
    let mut other = SimCard::new(0);
    let other_id = card_id_in(&s.daemon, 0);
    let out = sign(&s.daemon, "alice", "24681357", &data, &sig);
    let error = out.assert_reason(Reason::CardMismatch);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains(VPCD_READERS[0].0), "{message}");
    assert!(message.contains(&other_id), "{message}");
    assert!(message.contains(&alice_id), "{message}");

    // No card at all.
    other.remove();
    let out = sign(&s.daemon, "alice", "24681357", &data, &sig);
    let error = out.assert_reason(Reason::CardNotPresent);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains(&alice_id), "{message}");
    assert!(message.contains(VPCD_READERS[0].0), "{message}");
    assert!(!error["error"]["hint"].as_str().unwrap().is_empty());

    // The card is pulled while it is being asked to sign.
    alice_card.insert(0, true);
    let out = sign(&s.daemon, "alice", "24681357", &data, &sig);
    let error = out.assert_reason(Reason::CardNotPresent);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("removed"), "{message}");
    assert!(alice_card.has_left());

    // Back in (in the other reader): signing works again, and the wrong
    // card earlier cost no PIN tries.
    alice_card.insert(1, false);
    let out = sign(&s.daemon, "alice", "24681357", &data, &sig);
    out.assert_ok();
    let pem = out.json()["public_key_pem"].as_str().unwrap().to_string();
    assert!(openssl_verify(&pem, &sig, &data));
    let user = s.daemon.ctl(&["--json", "user", "show", "alice"]).json();
    assert_eq!(user["failed_attempts"], 0);
}

#[test]
fn wrong_pin_to_lockout_then_puk_unblock_and_pin_change() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    let s = setup();
    let _card = SimCard::new(0);
    add_pcsc_user(&s.daemon, &s.portal, "alice", "24681357", &[]).assert_ok();
    let data = s.dir.path().join("data");
    let sig = s.dir.path().join("sig");

    // The card counts: 3 tries, then blocked (69 83).
    for left in [2, 1] {
        let out = sign(&s.daemon, "alice", "11111111", &data, &sig);
        let error = out.assert_reason(Reason::PinWrong);
        assert_eq!(error["error"]["tries_left"], left, "{error}");
    }
    let out = sign(&s.daemon, "alice", "11111111", &data, &sig);
    let error = out.assert_reason(Reason::PinLocked);
    assert!(
        error["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("user pin unblock alice"),
        "{error}"
    );
    // Blocked on the card: even the right PIN is refused.
    let out = sign(&s.daemon, "alice", "24681357", &data, &sig);
    out.assert_reason(Reason::PinLocked);

    // A wrong PUK, with the PUK's tries left.
    let out = s.daemon.ctl_with_stdin(
        &["--json", "user", "pin", "unblock", "alice", "--pin-stdin"],
        Some("87654321\n97531864\n"),
    );
    let error = out.assert_reason(Reason::PukWrong);
    assert_eq!(error["error"]["tries_left"], 2);
    // The new PIN must meet PIV's rules.
    let out = s.daemon.ctl_with_stdin(
        &["--json", "user", "pin", "unblock", "alice", "--pin-stdin"],
        Some("12345678\n12345\n"),
    );
    out.assert_reason(Reason::PinPolicy);
    // The right PUK unblocks and sets the new PIN.
    let out = s.daemon.ctl_with_stdin(
        &["--json", "user", "pin", "unblock", "alice", "--pin-stdin"],
        Some("12345678\n97531864\n"),
    );
    out.assert_ok();
    assert_eq!(out.json()["pin_unblocked"], true);
    sign(&s.daemon, "alice", "24681357", &data, &sig).assert_reason(Reason::PinWrong);
    sign(&s.daemon, "alice", "97531864", &data, &sig).assert_ok();
    let user = s.daemon.ctl(&["--json", "user", "show", "alice"]).json();
    assert_eq!(user["failed_attempts"], 0);
    assert_eq!(user["locked"], false);

    // PIN change goes to the card.
    let out = s.daemon.ctl_with_stdin(
        &["--json", "user", "pin", "change", "alice", "--pin-stdin"],
        Some("97531864\n55667788\n"),
    );
    out.assert_ok();
    sign(&s.daemon, "alice", "97531864", &data, &sig).assert_reason(Reason::PinWrong);
    let out = sign(&s.daemon, "alice", "55667788", &data, &sig);
    out.assert_ok();
    assert!(openssl_verify(
        out.json()["public_key_pem"].as_str().unwrap(),
        &sig,
        &data
    ));
}

#[test]
fn pin_rules_and_a_card_whose_pin_is_already_set() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    let s = setup();
    let _card = SimCard::new(0);

    // PIV's rule, named as the key store's.
    let out = add_pcsc_user(&s.daemon, &s.portal, "alice", "12345", &[]);
    let error = out.assert_reason(Reason::PinPolicy);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("the key store"), "{message}");
    assert!(message.contains("6 to 8"), "{message}");
    // The factory PIN is not a PIN.
    let out = add_pcsc_user(&s.daemon, &s.portal, "alice", "123456", &[]);
    let error = out.assert_reason(Reason::PinPolicy);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("factory PIN"),
        "{error}"
    );
    // Not a slot.
    let out = add_pcsc_user(&s.daemon, &s.portal, "alice", "24681357", &["--slot", "9b"]);
    out.assert_reason(Reason::InvalidArgument);
    let out = add_pcsc_user(
        &s.daemon,
        &s.portal,
        "alice",
        "24681357",
        &["--reader", "No Such Reader"],
    );
    let error = out.assert_reason(Reason::InvalidArgument);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains(VPCD_READERS[0].0)
    );

    add_pcsc_user(&s.daemon, &s.portal, "alice", "24681357", &[]).assert_ok();
    // The slot is in use now.
    let out = add_pcsc_user(&s.daemon, &s.portal, "bob", "24681357", &[]);
    let error = out.assert_reason(Reason::InvalidArgument);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("slot 9a"),
        "{error}"
    );
    // Another slot of the same card: the card's PIN is set, so bob must
    // give it; a different PIN is the card's wrong PIN.
    let out = add_pcsc_user(&s.daemon, &s.portal, "bob", "99887766", &["--slot", "9d"]);
    let error = out.assert_reason(Reason::PinWrong);
    assert_eq!(error["error"]["tries_left"], 2);
    let out = add_pcsc_user(&s.daemon, &s.portal, "bob", "24681357", &["--slot", "9d"]);
    out.assert_ok();
    assert!(!out.json()["notes"].to_string().contains("factory PIN"));
    // Removing a user frees the slot (its certificate is deleted).
    s.daemon
        .ctl(&["--json", "user", "remove", "alice"])
        .assert_ok();
    add_pcsc_user(&s.daemon, &s.portal, "carol", "24681357", &[]).assert_ok();
}

#[test]
fn wrong_management_key_and_unprotected_key_file() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    let _pcscd = Pcscd::start();
    let _card = SimCard::new(0);
    let portal = Portal::start();
    let dir = open_tempdir();
    let key_file = dir.path().join("mgmt.key");
    std::fs::write(
        &key_file,
        "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a09080\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = format!(
        "{}[backends.pcsc]\nmanagement_key_file = \"{}\"\n",
        config(),
        key_file.display()
    );
    let daemon = Daemon::start(&config);
    let status = daemon.ctl(&["--json", "status"]).json();
    let pcsc = backend(&status, "pcsc");
    assert_eq!(pcsc["name"], "pcsc");
    assert_eq!(pcsc["available"], false);
    assert!(
        pcsc["unavailable_reason"]
            .as_str()
            .unwrap()
            .contains("chmod 600"),
        "{pcsc}"
    );
    drop(daemon);

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = Daemon::start(&config);
    daemon.activate(&portal);
    let out = add_pcsc_user(&daemon, &portal, "alice", "24681357", &[]);
    let error = out.assert_reason(Reason::CardManagementKey);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mgmt.key"),
        "{error}"
    );
}

#[test]
fn daemon_starts_without_pcscd_and_survives_pcscd_restarting() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    // No pcscd: the backend is unavailable, the daemon runs.
    let daemon = Daemon::start(&config());
    let status = daemon.ctl(&["--json", "status"]).json();
    let pcsc = backend(&status, "pcsc");
    assert_eq!(pcsc["available"], false);
    assert!(
        pcsc["unavailable_reason"]
            .as_str()
            .unwrap()
            .contains("pcscd"),
        "{pcsc}"
    );
    daemon
        .ctl(&["--json", "card", "list"])
        .assert_reason(Reason::BackendUnavailable);
    drop(daemon);

    let mut s = setup();
    let mut card = SimCard::new(0);
    add_pcsc_user(&s.daemon, &s.portal, "alice", "24681357", &[]).assert_ok();
    let data = s.dir.path().join("data");
    let sig = s.dir.path().join("sig");
    sign(&s.daemon, "alice", "24681357", &data, &sig).assert_ok();

    // pcscd goes away: a clear failure, not a hang.
    card.remove();
    s.pcscd.stop();
    let out = sign(&s.daemon, "alice", "24681357", &data, &sig);
    let error = out.assert_reason(Reason::BackendUnavailable);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pcscd"),
        "{error}"
    );
    // pcscd is back with the card: the same daemon signs again.
    s.pcscd.restart();
    card.insert(0, false);
    let out = sign(&s.daemon, "alice", "24681357", &data, &sig);
    out.assert_ok();
    assert!(openssl_verify(
        out.json()["public_key_pem"].as_str().unwrap(),
        &sig,
        &data
    ));
    assert!(
        s.daemon.log_text().contains("card inserted"),
        "the watcher logs card events: {}",
        s.daemon.log_text()
    );
}

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (opensc): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn opensc_tools_accept_the_simulated_card_and_its_keys() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    let s = setup();
    let _card = SimCard::new(0);

    let (ok, text) = run("opensc-tool", &["--list-readers"]);
    assert!(ok, "{text}");
    assert!(text.contains(VPCD_READERS[0].0), "{text}");
    let (ok, text) = run("opensc-tool", &["--reader", "0", "--name"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("Personal Identity Verification Card"),
        "{text}"
    );

    // A key made by fleetkey, seen and used by OpenSC.
    let alice = add_pcsc_user(&s.daemon, &s.portal, "alice", "24681357", &[]);
    alice.assert_ok();
    let pem = alice.json()["public_key_pem"].as_str().unwrap().to_string();

    let (ok, text) = run("pkcs15-tool", &["--reader", "0", "--dump"]);
    assert!(ok, "{text}");
    assert!(text.contains("Manufacturer ID: piv_II"), "{text}");
    assert!(text.contains("Private EC Key [PIV AUTH key]"), "{text}");
    assert!(
        text.contains("Certificate for PIV Authentication"),
        "{text}"
    );

    let (ok, text) = run(
        "pkcs11-tool",
        &["--module", OPENSC_PKCS11, "--list-objects"],
    );
    assert!(ok, "{text}");
    assert!(text.contains("PIV AUTH pubkey"), "{text}");
    assert!(text.contains("CN=fleetkey"), "{text}");

    let data = s.dir.path().join("data");
    let sig = s.dir.path().join("pkcs11.sig");
    let (ok, text) = run(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            "24681357",
            "--sign",
            "--mechanism",
            "ECDSA-SHA256",
            "--id",
            "01",
            "--signature-format",
            "openssl",
            "--input-file",
            data.to_str().unwrap(),
            "--output-file",
            sig.to_str().unwrap(),
        ],
    );
    assert!(ok, "{text}");
    assert!(
        openssl_verify(&pem, &sig, &data),
        "OpenSC's signature with the fleetkey key does not verify"
    );

    // The certificate fleetkey wrote is a valid self-signed X.509 one
    // holding the same key.
    let cert = s.dir.path().join("cert.der");
    let (ok, text) = run(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--read-object",
            "--type",
            "cert",
            "--id",
            "01",
            "--output-file",
            cert.to_str().unwrap(),
        ],
    );
    assert!(ok, "{text}");
    let (ok, cert_key) = run(
        "openssl",
        &[
            "x509",
            "-inform",
            "der",
            "-in",
            cert.to_str().unwrap(),
            "-pubkey",
            "-noout",
        ],
    );
    assert!(ok, "{cert_key}");
    assert_eq!(cert_key, pem);
}

#[test]
fn piv_attestation_is_verified_by_the_portal_against_its_roots() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    let _pcscd = Pcscd::start();
    let dir = open_tempdir();
    let maker = dir.path().join("maker-ca.json");
    let other_maker = dir.path().join("other-ca.json");
    let _card = SimCard::attesting(0, &maker);
    let _other = SimCard::attesting(1, &other_maker);
    let roots = maker.with_extension("pem");
    let portal = Portal::start_with(&["--piv-attestation-roots", roots.to_str().unwrap()]);
    let daemon = Daemon::start(&config());
    let status = daemon.ctl(&["--json", "status"]).json();
    assert_eq!(
        backend(&status, "pcsc")["attestation_formats"],
        serde_json::json!(["piv-attestation", "none"])
    );
    daemon.activate(&portal);

    // The card attests the key; the portal checks the chain to its root.
    let alice = add_pcsc_user(
        &daemon,
        &portal,
        "alice",
        "24681357",
        &["--reader", VPCD_READERS[0].0],
    );
    alice.assert_ok();
    assert!(
        !alice.json()["notes"].to_string().contains("no attestation"),
        "{}",
        alice.stdout
    );
    let registered = portal.user_show("alice").unwrap();
    assert_eq!(registered["attestation_format"], "piv-attestation");
    assert_eq!(registered["hardware_backed"], true);
    assert_eq!(registered["public_key_pem"], alice.json()["public_key_pem"]);

    // A card from a maker the portal does not trust is refused, and the
    // enrollment is rolled back (the slot is free again).
    let bob = add_pcsc_user(
        &daemon,
        &portal,
        "bob",
        "13572468",
        &["--reader", VPCD_READERS[1].0],
    );
    let error = bob.assert_reason(Reason::SignatureInvalid);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("trusted root"),
        "{error}"
    );
    let list = daemon.ctl(&["--json", "user", "list"]).json();
    assert_eq!(list["users"].as_array().unwrap().len(), 1);
    assert!(portal.user_show("bob").is_none());
}

/// The `status --json` entry of one backend, by name.
fn backend(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["backends"]
        .as_array()
        .and_then(|all| all.iter().find(|b| b["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no backend {name} in {status}"))
}
