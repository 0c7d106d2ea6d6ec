//! The TPM lockout budget end to end (issue 15, docs/tpm-lockout.md): the
//! real portal, daemon and CLI on swtpm, cross-checked with tpm2-tools.
//! No sequence of PINs the daemon lets through brings the TPM to lockout.

use std::path::{Path, PathBuf};

use fleetkey_e2e::{Daemon, Portal, Swtpm, open_tempdir};
use fleetkey_proto::Reason;
use serde_json::Value;

/// The lockout authorization the tests set on swtpm (an admin keeps it
/// off the device; here it is only a test value).
const LOCKOUT_AUTH: &str = "lockout-kept-elsewhere";

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

fn tpm_details(daemon: &Daemon) -> Value {
    let status = daemon.ctl(&["--json", "status"]).json();
    status["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == "tpm")
        .expect("a tpm backend")["details"]
        .clone()
}

/// `tpm2_getcap properties-variable`, as text (the daemon must be stopped:
/// swtpm serves one client at a time).
fn getcap_variable(tpm: &Swtpm) -> String {
    let out = tpm.tpm2("tpm2_getcap", &["properties-variable"]);
    assert!(out.status.success(), "tpm2_getcap: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn getcap_line(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .trim()
        .to_string()
}

fn assert_not_in_lockout(text: &str) {
    assert_eq!(getcap_line(text, "inLockout"), "0", "{text}");
}

fn budget_refusal(daemon: &Daemon, user: &str, pin: &str, data: &Path) -> Value {
    let refused = daemon.sign(user, pin, data);
    let json = refused.assert_reason(Reason::TpmBudgetSpent);
    assert_eq!(refused.code, 82, "{refused:?}");
    json
}

#[test]
fn provisioned_for_four_users_each_spends_every_wrong_pin_and_a_fifth_signs() {
    let tpm = Swtpm::start();
    // A TPM whose lockout authorization is kept off the device: the TPM's
    // counter then bounds everyone, and only the budget keeps it from
    // lockout.
    tpm.set_lockout_auth(LOCKOUT_AUTH);
    let portal = Portal::start();
    let mut daemon = Daemon::start(&tpm.daemon_config());
    daemon.activate(&portal);
    let users = ["ann", "ben", "cat", "dan", "eve"];
    for (i, user) in users.iter().enumerate() {
        daemon.add_user_with(&portal, user, &format!("{i}{i}{i}{i}"), "tpm");
    }
    // Factory parameters: provisioning for 4 users x the policy's 5.
    let details = tpm_details(&daemon);
    assert_eq!(details["da_max_tries"], "3", "{details}");
    assert!(
        details["provisioned"].as_str().unwrap().starts_with("no"),
        "{details}"
    );
    assert_eq!(details["lockout_auth_set"], "true", "{details}");
    assert!(details.get("lockout_auth").is_none(), "{details}");
    assert!(
        details["counter_reset"]
            .as_str()
            .unwrap()
            .starts_with("never"),
        "{details}"
    );
    let dir = open_tempdir();
    let auth_file = write(dir.path(), "lockout-auth", LOCKOUT_AUTH.as_bytes());
    let auth_arg = auth_file.to_str().unwrap();
    let provisioned = daemon.ctl(&[
        "--json",
        "tpm",
        "provision",
        "--users",
        "4",
        "--lockout-auth-file",
        auth_arg,
    ]);
    provisioned.assert_ok();
    let json = provisioned.json();
    assert_eq!(json["max_tries"], 22, "{json}");
    assert_eq!(json["per_user"], 5);
    assert_eq!(json["recovery_seconds"], 4320);
    assert_eq!(json["previous_max_tries"], 3);
    assert_eq!(json["lockout_auth_set"], true, "{json}");
    let details = tpm_details(&daemon);
    assert_eq!(details["da_max_tries"], "22", "{details}");
    assert!(
        details["provisioned"]
            .as_str()
            .unwrap()
            .starts_with("for 4 users x 5"),
        "{details}"
    );

    let data = write(dir.path(), "challenge", b"login");
    for user in &users[..4] {
        for attempt in 1..=5 {
            let wrong = daemon.sign(user, "9999", &data);
            if attempt < 5 {
                wrong.assert_reason(Reason::PinWrong);
            } else {
                wrong.assert_reason(Reason::PinLocked);
            }
        }
        // Locked by the daemon, not by the budget.
        daemon
            .sign(user, "9999", &data)
            .assert_reason(Reason::PinLocked);
    }
    // The fifth user, who has made no mistake, signs.
    daemon.sign("eve", "4444", &data).assert_ok();
    let details = tpm_details(&daemon);
    assert_eq!(details["da_counter"], "20", "{details}");
    assert_eq!(details["budget_room"], "1", "{details}");
    // A wrong lockout authorization is refused with its own reason and
    // changes nothing; the TPM then blocks the right one too, for the
    // lockoutRecovery provisioning set.
    let wrong_file = write(dir.path(), "wrong-auth", b"not-it");
    let refused = daemon.ctl(&[
        "--json",
        "tpm",
        "provision",
        "--users",
        "9",
        "--lockout-auth-file",
        wrong_file.to_str().unwrap(),
    ]);
    refused.assert_reason(Reason::TpmLockoutAuthWrong);
    assert_eq!(refused.code, 83, "{refused:?}");
    let blocked = daemon.ctl(&[
        "--json",
        "tpm",
        "provision",
        "--users",
        "9",
        "--lockout-auth-file",
        auth_arg,
    ]);
    blocked.assert_reason(Reason::TpmLockoutAuthBlocked);
    assert_eq!(blocked.code, 84, "{blocked:?}");
    assert_eq!(tpm_details(&daemon)["da_max_tries"], "22");
    daemon.terminate();
    let caps = getcap_variable(&tpm);
    assert_not_in_lockout(&caps);
    assert_eq!(
        getcap_line(&caps, "TPM2_PT_LOCKOUT_COUNTER"),
        "0x14",
        "{caps}"
    );
    assert_eq!(
        getcap_line(&caps, "TPM2_PT_MAX_AUTH_FAIL"),
        "0x16",
        "{caps}"
    );
}

/// The scenario on swtpm exactly as it ships (maxTries 3,
/// recoveryTime 1000 s, no lockout authorization): theo types wrong PINs
/// until the daemon locks him (after 2), tom types one wrong PIN, and
/// tina, who never typed one, signs. Without a lockout authorization
/// anyone who can open the TPM may reset its counter, so the daemon does
/// after each wrong PIN: the per-user limit bounds the guesses, the TPM
/// never enters lockout, and that survives a restart and a removal.
#[test]
fn factory_tpm_theo_tom_tina_signs_and_the_tpm_never_locks() {
    let tpm = Swtpm::start();
    let portal = Portal::start();
    let mut daemon = Daemon::start(&tpm.daemon_config());
    daemon.activate(&portal);
    for (user, pin) in [("theo", "1111"), ("tom", "2222"), ("tina", "3333")] {
        daemon.add_user_with(&portal, user, pin, "tpm");
    }
    let details = tpm_details(&daemon);
    assert_eq!(details["da_max_tries"], "3", "{details}");
    assert_eq!(details["lockout_auth_set"], "false", "{details}");
    assert!(
        details["counter_reset"]
            .as_str()
            .unwrap()
            .starts_with("after every wrong PIN"),
        "{details}"
    );
    let dir = open_tempdir();
    let data = write(dir.path(), "challenge", b"login");

    // Theo: the TPM's maxTries 3 gives each key 2 wrong PINs, then the
    // daemon locks him (PIN_LOCKED, not the budget, not the TPM).
    daemon
        .sign("theo", "0000", &data)
        .assert_reason(Reason::PinWrong);
    daemon
        .sign("theo", "0001", &data)
        .assert_reason(Reason::PinLocked);
    daemon
        .sign("theo", "1111", &data)
        .assert_reason(Reason::PinLocked);
    assert_eq!(tpm_details(&daemon)["da_counter"], "0");
    // The budget survives a restart (theo's count is the daemon's), and
    // removing theo changes nothing for the others.
    daemon.restart();
    daemon
        .sign("theo", "1111", &data)
        .assert_reason(Reason::PinLocked);
    daemon
        .ctl(&["--json", "user", "remove", "theo"])
        .assert_ok();
    // Tom types one wrong PIN; tina, who typed none, signs; tom still can.
    daemon
        .sign("tom", "0000", &data)
        .assert_reason(Reason::PinWrong);
    daemon.sign("tina", "3333", &data).assert_ok();
    daemon.sign("tom", "2222", &data).assert_ok();
    let details = tpm_details(&daemon);
    assert_eq!(details["da_counter"], "0", "{details}");
    assert_eq!(details["da_in_lockout"], "false", "{details}");
    // Each reset is in the audit log with the count it cleared.
    daemon.terminate();
    let audit = std::fs::read_to_string(daemon.state_dir().join("audit.log")).unwrap();
    let resets = audit
        .lines()
        .filter(|l| l.contains("\"kind\":\"tpm_counter_reset\""))
        .count();
    assert_eq!(resets, 3, "{audit}");
    assert!(!audit.contains("tpm_budget_spent"), "{audit}");
    let caps = getcap_variable(&tpm);
    assert_not_in_lockout(&caps);
    assert_eq!(
        getcap_line(&caps, "TPM2_PT_LOCKOUT_COUNTER"),
        "0x0",
        "{caps}"
    );
}

/// The same users on factory parameters, but with a lockout authorization
/// kept off the device: the counter cannot be reset, so the budget is
/// what keeps the TPM from lockout. Theo is stopped after one wrong PIN
/// (his second would take the reserve), tina signs while the TPM has
/// room; after tom's first wrong PIN it has none and everyone is refused
/// by the daemon (TPM_BUDGET_SPENT), never locked out by the TPM. The
/// budget survives a restart; removing theo gives nothing back
/// (docs/tpm-lockout.md says why tina cannot sign after that here).
#[test]
fn with_a_lockout_authorization_the_budget_keeps_the_tpm_from_lockout() {
    let tpm = Swtpm::start();
    tpm.set_lockout_auth(LOCKOUT_AUTH);
    let portal = Portal::start();
    let mut daemon = Daemon::start(&tpm.daemon_config());
    daemon.activate(&portal);
    for (user, pin) in [("theo", "1111"), ("tom", "2222"), ("tina", "3333")] {
        daemon.add_user_with(&portal, user, pin, "tpm");
    }
    let dir = open_tempdir();
    let data = write(dir.path(), "challenge", b"login");

    // Theo: his first wrong PIN reaches the TPM (he has made no mistake
    // before it); his second is refused before the TPM is asked, with the
    // new reason and the wait, and is not counted by the TPM.
    daemon
        .sign("theo", "0000", &data)
        .assert_reason(Reason::PinWrong);
    for guess in ["0001", "0002", "1111"] {
        let json = budget_refusal(&daemon, "theo", guess, &data);
        assert_eq!(json["error"]["retry_after_seconds"], "1000", "{json}");
        assert!(
            json["error"]["hint"].as_str().unwrap().contains("1000 s"),
            "{json}"
        );
    }
    let theo = daemon.ctl(&["--json", "user", "show", "theo"]).json();
    assert_eq!(theo["failed_attempts"], 1, "{theo}");
    assert_eq!(tpm_details(&daemon)["da_counter"], "1");
    // Tina, who has made no mistake, signs.
    daemon.sign("tina", "3333", &data).assert_ok();

    // The budget survives a daemon restart: theo is still refused.
    daemon.restart();
    budget_refusal(&daemon, "theo", "1111", &data);

    // Removing theo gives nothing back: his wrong PIN stays in the TPM's
    // counter until it decays.
    daemon
        .ctl(&["--json", "user", "remove", "theo"])
        .assert_ok();
    assert_eq!(tpm_details(&daemon)["da_counter"], "1");

    // Tom has made no mistake: his first attempt goes to the TPM, which
    // has room for exactly that one. It is wrong: now the TPM can take no
    // more, and everyone, tina too, is refused by the daemon rather than
    // locked out by the TPM.
    daemon
        .sign("tom", "0000", &data)
        .assert_reason(Reason::PinWrong);
    budget_refusal(&daemon, "tom", "2222", &data);
    let json = budget_refusal(&daemon, "tina", "3333", &data);
    assert_eq!(json["error"]["retry_after_seconds"], "1000", "{json}");
    let details = tpm_details(&daemon);
    assert_eq!(details["da_counter"], "2", "{details}");
    assert_eq!(details["da_in_lockout"], "false", "{details}");
    // The refusals are in the audit log.
    let audit = std::fs::read_to_string(daemon.state_dir().join("audit.log")).unwrap_or_default();
    assert!(audit.contains("\"kind\":\"tpm_budget_spent\""), "{audit}");
    daemon.terminate();
    let caps = getcap_variable(&tpm);
    assert_not_in_lockout(&caps);
    assert_eq!(
        getcap_line(&caps, "TPM2_PT_LOCKOUT_COUNTER"),
        "0x2",
        "{caps}"
    );
}

/// `login start` for `user`; waits until the device shows it pending.
fn challenge(portal: &Portal, daemon: &Daemon, user: &str) -> (String, u32) {
    let out = portal.cli(&["login", "start", "--user", user, "--json"]);
    assert!(out.status.success(), "login start: {out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = json["id"].as_str().unwrap().to_string();
    let number = u32::try_from(json["number"].as_u64().unwrap()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let listed = daemon.ctl(&["--json", "approvals", "list"]).json();
        if listed
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id.as_str() && a["state"] == "pending")
        {
            return (id, number);
        }
        assert!(std::time::Instant::now() < deadline, "{listed}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Approving a login spends the same budget as signing: with factory
/// parameters, a user who already typed a wrong PIN is refused before the
/// TPM is asked, the TPM's counter does not move, and a user who made no
/// mistake approves.
#[test]
fn approvals_go_through_the_budget_too() {
    let tpm = Swtpm::start();
    tpm.set_lockout_auth(LOCKOUT_AUTH);
    let portal = Portal::start();
    let daemon = Daemon::start(&tpm.daemon_config());
    daemon.activate(&portal);
    for (user, pin) in [("theo", "1111"), ("tina", "3333")] {
        daemon.add_user_with(&portal, user, pin, "tpm");
    }
    let dir = open_tempdir();
    let data = write(dir.path(), "challenge", b"login");
    daemon
        .sign("theo", "0000", &data)
        .assert_reason(Reason::PinWrong);
    assert_eq!(tpm_details(&daemon)["da_counter"], "1");

    let (id, number) = challenge(&portal, &daemon, "theo");
    let number = number.to_string();
    let refused = daemon.ctl_with_stdin(
        &["--json", "approve", &id, "--number", &number, "--pin-stdin"],
        Some("0001\n"),
    );
    refused.assert_reason(Reason::TpmBudgetSpent);
    assert_eq!(tpm_details(&daemon)["da_counter"], "1");

    let (id, number) = challenge(&portal, &daemon, "tina");
    let number = number.to_string();
    let approved = daemon.ctl_with_stdin(
        &["--json", "approve", &id, "--number", &number, "--pin-stdin"],
        Some("3333\n"),
    );
    approved.assert_ok();
    assert_eq!(approved.json()["state"], "approved", "{approved:?}");
}
