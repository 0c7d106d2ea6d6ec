//! End to end: the integrity report (docs/integrity.md) through the real
//! portal, daemon and CLI. The checks read a fake root
//! (`fleetkey_integrity::checks::fake::FakeRoot`, `[integrity] root`), so
//! every state can be set; quotes come from a real software TPM (swtpm)
//! whose PCRs 0-7 were extended with the fake root's event log, and are
//! checked by `tpm2_checkquote` and by the portal.

use std::path::Path;
use std::time::{Duration, Instant};

use fleetkey_e2e::{Daemon, FAST_SOFT_KEYS, Portal, Swtpm, bin, open_tempdir};
use fleetkey_integrity::checks::fake::{FakeRoot, GUID};
use fleetkey_integrity::eventlog::{EV_POST_CODE, LogBuilder, TPM_ALG_SHA256, synthetic_boot};
use fleetkey_integrity::hex;
use fleetkey_proto::Reason;
use serde_json::Value;

const EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

/// A fake machine where every check passes, with the daemon's binary at
/// its real path (`org.fleetkey.FleetkeyFiles` checks it).
fn good_root() -> FakeRoot {
    let root = FakeRoot::good();
    own_file(&root, &bin("fleetkeyd"));
    root
}

/// Lays out `path` (made canonical, as the daemon sees itself) in the
/// fake root as one of fleetkey's own files.
fn own_file(root: &FakeRoot, path: &Path) {
    let path = std::fs::canonicalize(path).unwrap();
    root.own_file(path.to_str().unwrap());
}

/// Starts a daemon whose checks read `root`, with `extra` config; its
/// config file is laid out in the fake root too.
fn daemon(root: &FakeRoot, base: &str, integrity: &str) -> Daemon {
    let config = format!(
        "{base}\n[integrity]\nroot = \"{}\"\n{integrity}\n",
        root.dir.path().display()
    );
    let daemon = Daemon::start(&config);
    own_file(root, &daemon.config);
    daemon
}

fn secure_boot(root: &FakeRoot, on: bool) {
    root.write(
        &format!("/sys/firmware/efi/efivars/SecureBoot-{GUID}"),
        [6, 0, 0, 0, u8::from(on)],
    );
}

fn error_message(json: &Value) -> String {
    format!(
        "{}\n{}",
        json["error"]["message"].as_str().unwrap_or(""),
        json["error"]["hint"].as_str().unwrap_or("")
    )
}

fn device_show(portal: &Portal, device: &str) -> Value {
    let out = portal.cli(&["device", "show", device, "--json"]);
    assert!(out.status.success(), "device show: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn add_user(daemon: &Daemon, portal: &Portal, user: &str) -> fleetkey_e2e::Ctl {
    let code = portal.user_code(user);
    daemon.ctl_with_stdin(
        &["--json", "user", "add", &code.uri, "--pin-stdin"],
        Some("1234\n"),
    )
}

/// Prints the daemon's "integrity work for ..." log lines: what the
/// gate (the report) and the evidence (quote, event log) added to each
/// activation and user add (docs/integrity.md, Figures).
fn print_integrity_figures(daemon: &Daemon) {
    for line in daemon.log_text().lines() {
        if line.contains("integrity work for") {
            println!("figure: {line}");
        }
    }
}

fn audit_log(daemon: &Daemon) -> String {
    std::fs::read_to_string(daemon.state_dir().join("audit.log")).unwrap_or_default()
}

#[test]
fn the_gate_refuses_activation_and_user_add_listing_the_failing_checks_until_fixed() {
    let portal = Portal::start();
    let root = good_root();
    let daemon = daemon(&root, FAST_SOFT_KEYS, "min_level = 1");
    root.write(
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\nbob:x:1002:1002::/home/bob:/bin/bash\ndave:x:1003:1003::/home/dave:/bin/bash\n",
    );

    // Two level-1 checks fail: both are listed, each with its hint.
    secure_boot(&root, false);
    root.write("/proc/cmdline", "root=/dev/sda1 ro init=/bin/sh\n");
    let code = portal.device_code();
    let started = Instant::now();
    let out = daemon.ctl(&["--json", "activate", &code.uri]);
    let json = out.assert_reason(Reason::IntegrityRefused);
    assert_eq!(out.code, 110);
    let message = error_message(&json);
    for expected in [
        "org.fleetkey.SecureBoot",
        "org.fleetkey.KernelCmdline",
        "init=",
        "fix: ",
    ] {
        assert!(message.contains(expected), "{expected}: {message}");
    }
    assert!(!message.contains("org.fleetkey.Iommu"), "{message}");
    println!("activation refused by the gate in {:?}", started.elapsed());
    assert!(
        audit_log(&daemon).contains("\"kind\":\"integrity_refused\""),
        "{}",
        audit_log(&daemon)
    );
    // Refused before the portal was told anything.
    assert_eq!(portal.device_list().as_array().unwrap().len(), 0);

    // Fixed: the same code activates.
    secure_boot(&root, true);
    root.write("/proc/cmdline", "root=/dev/sda1 ro quiet\n");
    let out = daemon.ctl(&["--json", "activate", &code.uri]);
    out.assert_ok();
    let device = out.json()["device_id"].as_str().unwrap().to_string();

    // The portal verified and recorded the report (no TPM key store: the
    // device's word only, which its default policy accepts).
    let shown = device_show(&portal, &device);
    assert_eq!(shown["integrity"]["level"], 4, "{shown}");
    assert_eq!(shown["integrity"]["tpm_verified"], false, "{shown}");
    assert_eq!(shown["integrity"]["occasion"], "activation", "{shown}");
    let listed = portal.device_list();
    assert_eq!(listed[0]["integrity_level"], 4, "{listed}");

    // bob is in the sudo group of the fake /etc/group: adding him makes an
    // enrolled user root-equivalent.
    let out = add_user(&daemon, &portal, "bob");
    let json = out.assert_reason(Reason::IntegrityRefused);
    let message = error_message(&json);
    assert!(message.contains("org.fleetkey.AdminAccounts"), "{message}");
    assert!(message.contains("bob"), "{message}");
    // alice is not: she enrolls; so does carol, who is no local account.
    add_user(&daemon, &portal, "alice").assert_ok();
    add_user(&daemon, &portal, "carol").assert_ok();
    assert_eq!(
        device_show(&portal, &device)["integrity"]["occasion"],
        "user add"
    );
    // Once alice is made an admin, no further user is added.
    root.write(
        "/etc/group",
        "root:x:0:\nsudo:x:27:alice\nwheel:x:10:\nalice:x:1000:\n",
    );
    let out = add_user(&daemon, &portal, "dave");
    let message = error_message(&out.assert_reason(Reason::IntegrityRefused));
    assert!(message.contains("alice"), "{message}");
    root.write("/etc/group", "root:x:0:\nsudo:x:27:\nalice:x:1000:\n");
    add_user(&daemon, &portal, "dave").assert_ok();

    print_integrity_figures(&daemon);
    // status has the one-line summary.
    let status = daemon.ctl(&["--json", "status"]);
    status.assert_ok();
    assert_eq!(status.json()["integrity_level"], 4);
    let text = daemon.ctl(&["status"]);
    assert!(
        text.stdout
            .contains("Integrity:        HSI:4 (all 15 checks pass)"),
        "{}",
        text.stdout
    );
}

#[test]
fn an_ignored_check_is_an_exception_in_the_audit_log() {
    let portal = Portal::start();
    let root = good_root();
    let daemon = daemon(
        &root,
        FAST_SOFT_KEYS,
        "min_level = 2\nignored = [\"org.fleetkey.Iommu\"]",
    );
    root.remove("/sys/class/iommu/dmar0");
    daemon.activate(&portal);
    let audit = audit_log(&daemon);
    assert!(
        audit.contains("\"kind\":\"integrity_exception\""),
        "{audit}"
    );
    assert!(audit.contains("org.fleetkey.Iommu"), "{audit}");
    // What is not ignored still refuses.
    root.write("/sys/kernel/security/lockdown", "[none] integrity\n");
    let out = add_user(&daemon, &portal, "alice");
    let message = error_message(&out.assert_reason(Reason::IntegrityRefused));
    assert!(message.contains("org.fleetkey.KernelLockdown"), "{message}");
    assert!(!message.contains("org.fleetkey.Iommu"), "{message}");
}

#[test]
fn integrity_shows_every_check_and_a_device_without_tpm_cannot_be_verified_remotely() {
    let root = good_root();
    root.remove("/sys/class/tpm");
    let daemon = daemon(&root, FAST_SOFT_KEYS, "");
    let out = daemon.ctl(&["--json", "integrity"]);
    out.assert_ok();
    let json = out.json();
    assert_eq!(json["report"]["attributes"].as_array().unwrap().len(), 15);
    assert_eq!(json["report"]["remotely_verifiable"], false);
    let tpm = json["report"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "org.fleetkey.Tpm")
        .unwrap()
        .clone();
    assert_eq!(tpm["outcome"], "fail");
    assert!(
        tpm["detail"]
            .as_str()
            .unwrap()
            .contains("cannot be verified remotely"),
        "{tpm}"
    );
    let text = daemon.ctl(&["integrity"]);
    text.assert_ok();
    assert!(
        text.stdout.contains("FAIL HSI:1 org.fleetkey.Tpm"),
        "{}",
        text.stdout
    );
    // Asked for a quote, the answer says why there is none.
    let nonce = "ab".repeat(32);
    let out = daemon.ctl(&["--json", "integrity", "--quote", "--nonce", &nonce]);
    out.assert_ok();
    assert!(
        out.json()["no_quote_reason"]
            .as_str()
            .unwrap()
            .contains("no TPM"),
        "{:?}",
        out
    );
    let bad = daemon.ctl(&["--json", "integrity", "--quote", "--nonce", "abcd"]);
    bad.assert_reason(Reason::InvalidArgument);

    // The portal's policy decides: by default the device's word is
    // recorded as such; with --require-integrity it is not enough.
    let lenient = Portal::start();
    let device = daemon.activate(&lenient);
    let shown = device_show(&lenient, &device);
    assert_eq!(shown["integrity"]["tpm_verified"], false, "{shown}");
    assert_eq!(shown["integrity"]["level"], 0, "{shown}");

    let strict = Portal::start_with(&["--require-integrity", "0"]);
    let second = daemon_for_portal(&root);
    let out = second.ctl(&["--json", "activate", &strict.device_code().uri]);
    let message = error_message(&out.assert_reason(Reason::IntegrityRefused));
    assert!(message.contains("TPM"), "{message}");
}

fn daemon_for_portal(root: &FakeRoot) -> Daemon {
    daemon(root, FAST_SOFT_KEYS, "")
}

/// A swtpm whose PCRs 0-7 hold the fake root's synthetic boot.
fn booted_tpm() -> Swtpm {
    let tpm = Swtpm::start();
    let (_, events) = synthetic_boot(&[TPM_ALG_SHA256]);
    for (pcr, digest) in events {
        let out = tpm.tpm2(
            "tpm2_pcrextend",
            &[&format!("{pcr}:sha256={}", hex(&digest))],
        );
        assert!(out.status.success(), "tpm2_pcrextend: {out:?}");
    }
    tpm
}

fn checkquote(dir: &Path, qualifying: &str) -> std::process::Output {
    std::process::Command::new("tpm2_checkquote")
        .current_dir(dir)
        .args([
            "-u",
            "ak.pem",
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-f",
            "quote.pcrs",
            "-g",
            "sha256",
            "-q",
            qualifying,
        ])
        .output()
        .unwrap()
}

#[test]
fn quotes_verify_with_tpm2_checkquote_and_the_portal_refuses_a_tampered_log_and_another_tpm() {
    let tpm = booted_tpm();
    let root = good_root();
    let portal = Portal::start_with(&["--require-integrity", "2"]);
    let daemon = daemon(&root, &tpm.daemon_config(), "");

    // Activation sends a quoted report; the portal checks it with the AK
    // it binds to the EK in the same activation.
    let started = Instant::now();
    let device = daemon.activate(&portal);
    println!(
        "activation (TPM, quoted report) took {:?}",
        started.elapsed()
    );
    let shown = device_show(&portal, &device);
    assert_eq!(shown["integrity"]["tpm_verified"], true, "{shown}");
    assert_eq!(shown["integrity"]["level"], 4, "{shown}");

    // The external check: tpm2_checkquote with the AK's public key.
    let out_dir = open_tempdir();
    let nonce = "5a".repeat(32);
    let started = Instant::now();
    let out = daemon.ctl(&[
        "--json",
        "integrity",
        "--quote",
        "--nonce",
        &nonce,
        "--out",
        out_dir.path().to_str().unwrap(),
    ]);
    println!("integrity --quote took {:?}", started.elapsed());
    out.assert_ok();
    let json = out.json();
    let qualifying = json["qualifying_data"].as_str().unwrap().to_string();
    let checked = checkquote(out_dir.path(), &qualifying);
    assert!(checked.status.success(), "tpm2_checkquote: {checked:?}");
    // ... which refuses another nonce's qualifying data.
    let other = checkquote(out_dir.path(), &"00".repeat(32));
    assert!(
        !other.status.success(),
        "tpm2_checkquote accepted other data"
    );
    // The quoted PCRs are the replay of the event log it exported.
    let log = std::fs::read(out_dir.path().join("eventlog.bin")).unwrap();
    assert_eq!(log, synthetic_boot(&[TPM_ALG_SHA256]).0);

    // Several users, each add verified at the portal.
    let started = Instant::now();
    add_user(&daemon, &portal, "alice").assert_ok();
    println!(
        "user add (soft key, TPM-quoted report) took {:?}",
        started.elapsed()
    );
    add_user(&daemon, &portal, "bob").assert_ok();

    // A tampered event log (an event the TPM never saw): the device's own
    // check notices, and the portal refuses it, naming the PCR.
    let mut tampered = LogBuilder::new(&[TPM_ALG_SHA256]);
    tampered.event(0, EV_POST_CODE, b"a boot the TPM never measured");
    root.write(EVENT_LOG, tampered.bytes());
    let out = add_user(&daemon, &portal, "carol");
    let message = error_message(&out.assert_reason(Reason::IntegrityRefused));
    assert!(message.contains("event log"), "{message}");
    root.write(EVENT_LOG, synthetic_boot(&[TPM_ALG_SHA256]).0);
    add_user(&daemon, &portal, "carol").assert_ok();
    print_integrity_figures(&daemon);

    // Below the portal's level: refused by the portal (the daemon's own
    // gate requires nothing here).
    root.remove("/sys/class/iommu/dmar0");
    let out = add_user(&daemon, &portal, "dave");
    let message = error_message(&out.assert_reason(Reason::IntegrityRefused));
    assert!(message.contains("org.fleetkey.Iommu"), "{message}");
    root.mkdir("/sys/class/iommu/dmar0");
}

#[test]
fn a_quote_from_another_tpm_is_refused_by_the_portal() {
    let tpm = booted_tpm();
    let root = good_root();
    let portal = Portal::start();
    let mut daemon = daemon(&root, &tpm.daemon_config(), "");
    daemon.activate(&portal);
    add_user(&daemon, &portal, "alice").assert_ok();

    // The same state (device key, device id) with another TPM: its AK is
    // not the one the portal bound at activation.
    let other = booted_tpm();
    daemon.kill9();
    let config = format!(
        "{}\n[integrity]\nroot = \"{}\"\n",
        other.daemon_config(),
        root.dir.path().display()
    );
    let moved = Daemon::start_with_state_of(&config, &daemon);
    own_file(&root, &moved.config);
    let code = portal.user_code("bob");
    let out = moved.ctl_with_stdin(
        &["--json", "user", "add", &code.uri, "--pin-stdin"],
        Some("1234\n"),
    );
    let message = error_message(&out.assert_reason(Reason::IntegrityRefused));
    assert!(message.contains("another TPM"), "{message}");
}

#[test]
fn the_portal_asks_for_a_fresh_report_and_the_device_answers_on_its_stream() {
    let tpm = booted_tpm();
    let root = good_root();
    let mut portal = Portal::start();
    let daemon = daemon(&root, &tpm.daemon_config(), "");
    let device = daemon.activate(&portal);
    assert_eq!(
        device_show(&portal, &device)["integrity"]["occasion"],
        "activation"
    );
    // The device's state changes; the operator asks.
    root.write("/proc/sys/kernel/yama/ptrace_scope", "0\n");
    let out = portal.cli(&["device", "integrity", &device]);
    assert!(out.status.success(), "device integrity: {out:?}");
    assert!(device_show(&portal, &device)["integrity_requested_at"].is_string());
    // Connected: pushed on the stream and answered within seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = device_show(&portal, &device);
        if shown["integrity"]["occasion"] == "on-demand" {
            assert_eq!(shown["integrity"]["tpm_verified"], true, "{shown}");
            assert_eq!(shown["integrity"]["level"], 2, "{shown}");
            assert!(
                shown["integrity"]["summary"]
                    .as_str()
                    .unwrap()
                    .contains("org.fleetkey.YamaPtrace"),
                "{shown}"
            );
            assert!(shown["integrity_requested_at"].is_null(), "{shown}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no on-demand answer: {shown}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = portal.cli(&["device", "show", &device]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("quoted by the device's TPM"), "{text}");
    assert!(text.contains("on-demand"), "{text}");
    // An unknown device cannot be asked.
    let out = portal.cli(&["device", "integrity", "dev-nope"]);
    assert!(!out.status.success());

    // Asked while the portal is down: the request waits in its database
    // and is sent when the device's stream connects again (the longest
    // backoff is 8 s).
    let before = device_show(&portal, &device)["integrity"]["verified_at"].clone();
    portal.stop();
    root.write("/proc/sys/kernel/yama/ptrace_scope", "1\n");
    let out = portal.cli(&["device", "integrity", &device]);
    assert!(out.status.success(), "device integrity: {out:?}");
    std::thread::sleep(Duration::from_secs(1));
    portal.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = device_show(&portal, &device);
        if shown["integrity"]["verified_at"] != before && shown["integrity_requested_at"].is_null()
        {
            assert_eq!(shown["integrity"]["occasion"], "on-demand", "{shown}");
            assert!(
                !shown["integrity"]["summary"]
                    .as_str()
                    .unwrap()
                    .contains("org.fleetkey.YamaPtrace"),
                "{shown}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer after reconnecting: {shown}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
