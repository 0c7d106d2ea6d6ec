//! Login approvals end to end (docs/approvals.md): the real portal
//! (`login start`/`login wait` and its gRPC service), fleetkeyd (the
//! portal stream, state.db) and fleetkeyctl (`approvals`, `approve`,
//! `deny`), with soft, TPM (swtpm) and PIV (simulated card) keys.

use std::time::{Duration, Instant};

use fleetkey_e2e::approvals::*;
use fleetkey_e2e::{
    Daemon, FAST_SOFT_KEYS, Pcscd, Portal, SimCard, Swtpm, is_root, open_tempdir,
    pcsc_tests_can_run, pcscd_lock,
};
use fleetkey_proto::Reason;
use fleetkey_proto::binding::{self, Decision};
use serde_json::Value;

const NOBODY: u32 = 65534;

/// A number other than `number`, still two digits.
fn other_number(number: u32) -> u32 {
    if number == 99 { 10 } else { number + 1 }
}

fn setup_soft() -> (Portal, Daemon) {
    let portal = Portal::start();
    let daemon = Daemon::start(FAST_SOFT_KEYS);
    daemon.activate(&portal);
    wait_stream(&daemon, "connected", RECONNECT_BOUND);
    (portal, daemon)
}

/// Approve with a key, then check what the portal recorded.
fn approve_and_verify(portal: &Portal, daemon: &Daemon, user: &str, pin: &str) {
    let (id, number) = login_start(portal, user, "VPN login from 192.0.2.7", 60);
    wait_visible(daemon, &id, VISIBLE_BOUND);
    let out = approve(daemon, &id, number, pin);
    out.assert_ok();
    assert_eq!(out.json()["state"], "approved", "{out:?}");
    let (ok, json) = login_wait(portal, &id);
    assert!(ok, "{json}");
    assert_eq!(json["outcome"], "approved");
    assert_eq!(json["signature_verified"], true);
    assert_eq!(json["signed_by"], "user");
    assert_eq!(json["suspicious"], false);
}

#[test]
fn soft_key_approves_and_the_portal_verifies() {
    let (portal, daemon) = setup_soft();
    daemon.add_user(&portal, "alice", "1234");
    approve_and_verify(&portal, &daemon, "alice", "1234");
    let status = daemon.ctl(&["--json", "status"]).json();
    assert_eq!(status["portal_stream"], "connected", "{status}");
    assert_eq!(status["pending_approvals"], 0, "{status}");
}

#[test]
fn deny_wrong_number_expired_unknown_and_answered_are_refused() {
    let (portal, daemon) = setup_soft();
    daemon.add_user(&portal, "alice", "1234");

    // Deny: no PIN, signed by the device key.
    let (id, _) = login_start(&portal, "alice", "deny me", 60);
    wait_visible(&daemon, &id, VISIBLE_BOUND);
    let out = daemon.ctl(&["--json", "deny", &id]);
    out.assert_ok();
    assert_eq!(out.json()["state"], "denied");
    let (ok, json) = login_wait(&portal, &id);
    assert!(!ok);
    assert_eq!(json["outcome"], "denied");
    assert_eq!(json["signed_by"], "device");
    // Answered: neither approve nor deny again.
    approve(&daemon, &id, 42, "1234").assert_reason(Reason::ChallengeAnswered);
    daemon
        .ctl(&["--json", "deny", &id])
        .assert_reason(Reason::ChallengeAnswered);

    // A wrong number: a denial, suspicious at the portal.
    let (id, number) = login_start(&portal, "alice", "wrong number", 60);
    wait_visible(&daemon, &id, VISIBLE_BOUND);
    approve(&daemon, &id, other_number(number), "1234").assert_reason(Reason::NumberWrong);
    let (ok, json) = login_wait(&portal, &id);
    assert!(!ok);
    assert_eq!(json["outcome"], "denied");
    assert_eq!(json["suspicious"], true);
    assert_eq!(state_of(&daemon, &id).as_deref(), Some("number_wrong"));

    // Expired.
    let (id, number) = login_start(&portal, "alice", "too late", 2);
    wait_visible(&daemon, &id, VISIBLE_BOUND);
    std::thread::sleep(Duration::from_secs(3));
    approve(&daemon, &id, number, "1234").assert_reason(Reason::ChallengeExpired);
    let (ok, json) = login_wait(&portal, &id);
    assert!(!ok);
    assert_eq!(json["outcome"], "expired");

    // Unknown.
    approve(&daemon, "chl-nosuchchallenge", 42, "1234").assert_reason(Reason::ChallengeUnknown);

    // A wrong PIN leaves the challenge pending and counts.
    let (id, number) = login_start(&portal, "alice", "wrong pin", 60);
    wait_visible(&daemon, &id, VISIBLE_BOUND);
    approve(&daemon, &id, number, "9999").assert_reason(Reason::PinWrong);
    assert_eq!(state_of(&daemon, &id).as_deref(), Some("pending"));
    approve(&daemon, &id, number, "1234").assert_ok();

    // The audit log holds every answer, in order, and verifies; an entry
    // in the middle edited, it does not.
    let entries = daemon.ctl(&["--json", "audit", "show"]).json()["entries"]
        .as_array()
        .unwrap()
        .clone();
    let answers: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| ["approved", "denied", "number_wrong", "pin_wrong"].contains(k))
        .collect();
    assert_eq!(
        answers,
        ["denied", "number_wrong", "pin_wrong", "approved"],
        "{entries:#?}"
    );
    let verified = daemon.ctl(&["--json", "audit", "verify"]);
    verified.assert_ok();
    let log = daemon.state_dir().join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let edited = text.replacen("\"kind\":\"number_wrong\"", "\"kind\":\"denied\"", 1);
    assert_ne!(edited, text);
    std::fs::write(&log, edited).unwrap();
    daemon
        .ctl(&["--json", "audit", "verify"])
        .assert_reason(Reason::AuditTampered);
}

/// A value from the portal's database.
#[test]
fn a_replayed_answer_is_refused_by_the_portal() {
    use fleetkey_proto::portal::portal_client::PortalClient;
    use fleetkey_proto::portal::{AnswerChallengeRequest, Signer};

    let (portal, daemon) = setup_soft();
    let device_id = daemon.ctl(&["--json", "status"]).json()["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    daemon.add_user(&portal, "alice", "1234");
    let (id, number) = login_start(&portal, "alice", "replay", 60);
    wait_visible(&daemon, &id, VISIBLE_BOUND);
    approve(&daemon, &id, number, "1234").assert_ok();

    // The same answer again: the message the user's key signed, signed
    // again by that key (through `sign`, which signs SHA-256 of a file).
    let nonce = hex_decode(&portal_sql(
        &portal,
        &format!("SELECT hex(nonce) FROM login_challenges WHERE id = '{id}'"),
    ));
    let message = binding::challenge_answer_message(
        &id,
        &nonce,
        "replay",
        number,
        Decision::Approve,
        &device_id,
    );
    let dir = open_tempdir();
    let file = dir.path().join("answer");
    std::fs::write(&file, &message).unwrap();
    let signed = daemon.sign("alice", "1234", &file);
    signed.assert_ok();
    let signature = std::fs::read(file.with_extension("sig")).unwrap();
    let request = AnswerChallengeRequest {
        device_id,
        challenge_id: id.clone(),
        decision: fleetkey_proto::portal::Decision::Approve as i32,
        number,
        signer: Signer::User as i32,
        signature,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = runtime.block_on(async {
        let mut client = PortalClient::connect(portal.url.clone()).await.unwrap();
        client.answer_challenge(request).await.unwrap_err()
    });
    let failure = fleetkey_proto::Failure::from_status(&status);
    assert_eq!(failure.reason, Reason::ChallengeAnswered, "{failure:?}");
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn the_device_reconnects_after_the_portal_restarts() {
    let (mut portal, daemon) = setup_soft();
    daemon.add_user(&portal, "alice", "1234");
    portal.stop();
    wait_stream(&daemon, "disconnected", Duration::from_secs(30));
    // While down, answering is refused before the PIN is asked for.
    std::thread::sleep(Duration::from_secs(3));
    portal.start_again();
    let restarted = Instant::now();
    let (id, number) = login_start(&portal, "alice", "after restart", 60);
    let seen = wait_visible(&daemon, &id, RECONNECT_BOUND);
    eprintln!(
        "reconnected and challenge visible {:?} after the portal restarted",
        restarted.elapsed()
    );
    assert!(seen <= RECONNECT_BOUND);
    approve(&daemon, &id, number, "1234").assert_ok();
    let status = daemon.ctl(&["--json", "status"]).json();
    assert!(
        status["portal_stream_connections"].as_u64().unwrap() >= 2,
        "{status}"
    );
}

#[test]
fn kill_9_keeps_pending_challenges_and_answers_each_once() {
    let (portal, mut daemon) = setup_soft();
    daemon.add_user(&portal, "alice", "1234");
    let started: Vec<(String, u32)> = (0..3)
        .map(|i| login_start(&portal, "alice", &format!("login {i}"), 120))
        .collect();
    for (id, _) in &started {
        wait_visible(&daemon, id, VISIBLE_BOUND);
    }
    // One answered before the crash.
    approve(&daemon, &started[0].0, started[0].1, "1234").assert_ok();
    daemon.kill9();
    daemon.restart();
    // Nothing lost: the state is read from state.db before the portal
    // stream is back.
    let listed = approvals(&daemon);
    for (id, _) in &started {
        assert!(
            listed
                .iter()
                .any(|a| &a.get("id").unwrap().as_str().unwrap().to_string() == id),
            "{listed:?}"
        );
    }
    assert_eq!(
        state_of(&daemon, &started[0].0).as_deref(),
        Some("approved")
    );
    wait_stream(&daemon, "connected", RECONNECT_BOUND);
    // Nothing answered twice.
    approve(&daemon, &started[0].0, started[0].1, "1234").assert_reason(Reason::ChallengeAnswered);
    for (id, number) in &started[1..] {
        assert_eq!(state_of(&daemon, id).as_deref(), Some("pending"));
        approve(&daemon, id, *number, "1234").assert_ok();
        approve(&daemon, id, *number, "1234").assert_reason(Reason::ChallengeAnswered);
    }
    for (id, _) in &started {
        let (ok, json) = login_wait(&portal, id);
        assert!(ok, "{json}");
    }
}

#[test]
fn another_local_user_approves_only_with_the_challenges_users_pin() {
    if !is_root() {
        eprintln!("not root: the setpriv test cannot switch users here");
        return;
    }
    let (portal, daemon) = setup_soft();
    daemon.add_user(&portal, "alice", "1234");
    daemon.add_user(&portal, "bob", "5678");
    let (id, number) = login_start(&portal, "alice", "as nobody", 60);
    wait_visible(&daemon, &id, VISIBLE_BOUND);
    let args = [
        "--json",
        "approve",
        id.as_str(),
        "--number",
        &number.to_string(),
        "--pin-stdin",
    ];
    // Bob's PIN does not answer Alice's login.
    daemon
        .ctl_as(NOBODY, &args, Some("5678\n"))
        .assert_reason(Reason::PinWrong);
    assert_eq!(state_of(&daemon, &id).as_deref(), Some("pending"));
    let out = daemon.ctl_as(NOBODY, &args, Some("1234\n"));
    out.assert_ok();
    let (ok, _) = login_wait(&portal, &id);
    assert!(ok);
}

#[test]
fn several_users_and_challenges_at_once() {
    let (portal, daemon) = setup_soft();
    let users = [("alice", "1111"), ("bob", "2222"), ("carol", "3333")];
    for (user, pin) in users {
        daemon.add_user(&portal, user, pin);
    }
    let mut started = Vec::new();
    for (user, pin) in users {
        for i in 0..3 {
            let (id, number) = login_start(&portal, user, &format!("{user} {i}"), 120);
            started.push((id, number, pin));
        }
    }
    for (id, _, _) in &started {
        wait_visible(&daemon, id, VISIBLE_BOUND);
    }
    let status = daemon.ctl(&["--json", "status"]).json();
    assert_eq!(status["pending_approvals"], 9, "{status}");
    // Answered in an order unlike the one they came in (one caller runs
    // at most two key-store operations at once: BUSY beyond, see
    // docs/daemon-limits.md).
    for (id, number, pin) in started.iter().rev() {
        approve(&daemon, id, *number, pin).assert_ok();
    }
    let status = daemon.ctl(&["--json", "status"]).json();
    assert_eq!(status["pending_approvals"], 0, "{status}");
    for (id, _, _) in &started {
        let (ok, json) = login_wait(&portal, id);
        assert!(ok, "{json}");
    }
}

#[test]
fn hostile_context_is_escaped_on_the_terminal() {
    let (portal, daemon) = setup_soft();
    daemon.add_user(&portal, "alice", "1234");
    let (id, _) = login_start(&portal, "alice", "hi\u{1b}[2J\u{202e}evil", 60);
    wait_visible(&daemon, &id, VISIBLE_BOUND);
    let out = daemon.ctl(&["approvals", "list"]);
    out.assert_ok();
    assert!(!out.stdout.contains('\u{1b}'), "{out:?}");
    assert!(!out.stdout.contains('\u{202e}'), "{out:?}");
    // The JSON keeps the text as it is.
    let listed = approvals(&daemon);
    assert!(
        listed
            .iter()
            .any(|a| a["context"] == "hi\u{1b}[2J\u{202e}evil")
    );
}

#[test]
fn tpm_key_approves() {
    let tpm = Swtpm::start();
    let portal = Portal::start();
    let daemon = Daemon::start(&tpm.daemon_config());
    daemon.activate(&portal);
    wait_stream(&daemon, "connected", RECONNECT_BOUND);
    let added = daemon.add_user_with(&portal, "alice", "123456", "tpm");
    assert_eq!(added["backend"], "tpm");
    approve_and_verify(&portal, &daemon, "alice", "123456");
}

#[test]
fn piv_key_approves() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    let _pcscd = Pcscd::start();
    let _card = SimCard::new(0);
    let portal = Portal::start();
    let daemon = Daemon::start(&format!("{FAST_SOFT_KEYS}[pin]\nmax_length = 8\n"));
    daemon.activate(&portal);
    wait_stream(&daemon, "connected", RECONNECT_BOUND);
    let code = portal.user_code("alice");
    daemon
        .ctl_with_stdin(
            &[
                "--json",
                "user",
                "add",
                &code.uri,
                "--backend",
                "pcsc",
                "--pin-stdin",
            ],
            Some("24681357\n"),
        )
        .assert_ok();
    approve_and_verify(&portal, &daemon, "alice", "24681357");
}

/// `fleetkeyctl approvals watch` against `daemon`, left running.
fn spawn_watch(daemon: &Daemon) -> std::process::Child {
    std::process::Command::new(fleetkey_e2e::bin("fleetkeyctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["--json", "approvals", "watch"])
        .stdin(std::process::Stdio::null())
        // Nothing is pending, so a served watch prints nothing to fill it.
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// One uid keeps at most 8 approval watches open (docs/daemon-limits.md):
/// the ninth is refused with BUSY, and one ending frees a place.
#[test]
fn approval_watches_are_capped_per_uid() {
    let (_portal, daemon) = setup_soft();
    let mut watches: Vec<std::process::Child> = (0..8).map(|_| spawn_watch(&daemon)).collect();
    // All eight are served (a watch runs until interrupted).
    std::thread::sleep(Duration::from_secs(1));
    for watch in &mut watches {
        assert!(watch.try_wait().unwrap().is_none(), "a watch ended early");
    }
    let ninth = spawn_watch(&daemon).wait_with_output().unwrap();
    assert_eq!(
        ninth.status.code(),
        Some(57),
        "{}",
        String::from_utf8_lossy(&ninth.stderr)
    );
    let refusal: Value = serde_json::from_slice(&ninth.stdout).unwrap();
    assert_eq!(refusal["error"]["reason"], "BUSY", "{refusal}");
    let mut first = watches.remove(0);
    first.kill().unwrap();
    first.wait().unwrap();
    // The daemon notices the hang-up; then a new watch is served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut next = spawn_watch(&daemon);
        std::thread::sleep(Duration::from_millis(500));
        if next.try_wait().unwrap().is_none() {
            next.kill().unwrap();
            next.wait().unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "no place freed");
    }
    for mut watch in watches {
        watch.kill().unwrap();
        watch.wait().unwrap();
    }
}
