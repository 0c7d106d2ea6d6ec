//! Crash harness (issue 13): the daemon is killed with SIGKILL at
//! pseudo-random points while `user add-batch` enrolls, while users
//! sign, and while users approve logins. After each kill and restart, the daemon's users, the key store's
//! keys and the portal's credentials must agree exactly: no user
//! half-made, no key orphaned, no credential at the portal without its
//! user here; and a re-run of the same batch finishes it. A login being
//! approved at the kill is answered at most once, and is never lost.
//!
//! The short form runs in `scripts/test.sh` (24 users, 6 kills). The long
//! form, run by hand (its figures go in the closing note):
//!
//!     FLEETKEY_CRASH_USERS=200 FLEETKEY_CRASH_KILLS=100 \
//!         cargo test --workspace --all-features --test crash -- --nocapture
//!
//! The kill points come from a seeded generator (`FLEETKEY_CRASH_SEED`,
//! printed), so a failing run can be repeated.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetkey_e2e::approvals::*;
use fleetkey_e2e::*;
use fleetkey_proto::Reason;

/// xorshift64*: enough to spread the kill points, and repeatable.
struct Points(u64);

impl Points {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound.max(1)
    }
}

/// fleetkeyctl with `args`, the PIN 1234 on its standard input, output
/// discarded: to be killed under.
fn spawn_with_pin(daemon: &Daemon, args: &[&str]) -> std::process::Child {
    let mut child = Command::new(bin("fleetkeyctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fleetkeyctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"1234\n")
        .expect("the PIN");
    child
}

fn run_batch(daemon: &Daemon, pins: &Path, codes: &Path) -> std::process::Child {
    Command::new(bin("fleetkeyctl"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["--json", "user", "add-batch", "--pins"])
        .arg(pins)
        .arg(codes)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fleetkeyctl")
}

#[test]
fn kill9_during_batches_and_signs_leaves_every_view_in_agreement() {
    let users = env_number("FLEETKEY_CRASH_USERS", 24) as usize;
    let kills = env_number("FLEETKEY_CRASH_KILLS", 6);
    let seed = env_number("FLEETKEY_CRASH_SEED", 0x5eed_f1ee_7c0d_e001);
    println!("crash harness: {users} users, {kills} kills, seed {seed:#x}");
    let mut points = Points(seed | 1);

    let portal = Portal::start_with(&["--no-rate-limit"]);
    let mut daemon = Daemon::start_default();
    daemon.activate(&portal);
    let dir = open_tempdir();
    let names: Vec<String> = (0..users).map(|i| format!("crash{i:03}")).collect();
    let (codes, pins) = batch_codes_and_pins(&portal, dir.path(), &names);

    // Enrollment takes tens of milliseconds per user here: kill within the
    // first part of a batch's expected time, so that most kills land
    // mid-enrollment.
    let started = Instant::now();
    let mut enrolled = 0;
    let mut kill_log = Vec::new();
    for kill in 0..kills {
        if enrolled == users {
            break;
        }
        let mut batch = run_batch(&daemon, &pins, &codes);
        let delay = Duration::from_millis(20 + points.below(400));
        std::thread::sleep(delay);
        daemon.kill9();
        let _ = batch.wait();
        daemon.restart();
        enrolled = assert_agree(&daemon, &portal, &format!("after kill {kill} at {delay:?}"));
        kill_log.push(format!("{}ms:{enrolled}", delay.as_millis()));
    }
    // The same batch again finishes it, whatever the kills left.
    let mut batch = run_batch(&daemon, &pins, &codes);
    let status = batch.wait().expect("batch");
    assert!(status.success(), "the final run: {status:?}");
    let total = assert_agree(&daemon, &portal, "after the final run");
    assert_eq!(total, users, "every user enrolled once");

    // Kills while users sign: no wrong-PIN count appears from nowhere and
    // every user still signs.
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "crash").expect("data");
    for round in 0..kills.min(10) {
        let user = &names[points.below(users as u64) as usize];
        let data_arg = data.to_str().expect("path");
        let mut signer = spawn_with_pin(
            &daemon,
            &[
                "sign",
                "--user",
                user,
                "--in",
                data_arg,
                "--out",
                "/dev/null",
                "--pin-stdin",
            ],
        );
        std::thread::sleep(Duration::from_millis(points.below(60)));
        daemon.kill9();
        let _ = signer.wait();
        daemon.restart();
        assert_agree(&daemon, &portal, &format!("after sign kill {round}"));
        let shown = daemon.ctl(&["--json", "user", "show", user]).json();
        assert_eq!(shown["failed_attempts"], 0, "{shown}");
        daemon.sign(user, "1234", &data).assert_ok();
    }
    // Kills while a user approves a login: a challenge is answered at
    // most once. After the restart it is still pending (killed before the
    // answer began: it is approved now), `answering` (killed with the
    // answer in flight: the portal has it approved or never got it, and
    // the device refuses a second answer), or approved here and at the
    // portal. The user is never charged a wrong PIN and approves a new
    // login afterwards.
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..kills.min(30) {
        wait_stream(&daemon, "connected", RECONNECT_BOUND);
        let user = &names[points.below(users as u64) as usize];
        let (id, number) = login_start(&portal, user, &format!("crash {round}"), 300);
        wait_visible(&daemon, &id, VISIBLE_BOUND);
        let number_text = number.to_string();
        let mut approver = spawn_with_pin(
            &daemon,
            &["approve", &id, "--number", &number_text, "--pin-stdin"],
        );
        std::thread::sleep(Duration::from_millis(points.below(40)));
        daemon.kill9();
        let _ = approver.wait();
        daemon.restart();
        assert_agree(&daemon, &portal, &format!("after approval kill {round}"));
        let state = state_of(&daemon, &id)
            .unwrap_or_else(|| panic!("challenge {id} lost by the kill in round {round}"));
        let at_portal = portal_login_outcome(&portal, &id);
        match state.as_str() {
            "pending" => {
                assert_eq!(at_portal, "pending", "round {round}");
                wait_stream(&daemon, "connected", RECONNECT_BOUND);
                approve(&daemon, &id, number, "1234").assert_ok();
                assert_eq!(portal_login_outcome(&portal, &id), "approved");
            }
            "answering" => {
                assert!(
                    at_portal == "pending" || at_portal == "approved",
                    "round {round}: portal says {at_portal}"
                );
                approve(&daemon, &id, number, "1234").assert_reason(Reason::ChallengeAnswered);
            }
            "approved" => {
                assert_eq!(at_portal, "approved", "round {round}");
                approve(&daemon, &id, number, "1234").assert_reason(Reason::ChallengeAnswered);
            }
            other => panic!("round {round}: challenge {id} is {other} after the kill"),
        }
        *outcomes.entry(state).or_default() += 1;
        let shown = daemon.ctl(&["--json", "user", "show", user]).json();
        assert_eq!(shown["failed_attempts"], 0, "{shown}");
    }
    // Every user still approves a new login.
    wait_stream(&daemon, "connected", RECONNECT_BOUND);
    let user = &names[0];
    let (id, number) = login_start(&portal, user, "after the kills", 60);
    wait_visible(&daemon, &id, VISIBLE_BOUND);
    approve(&daemon, &id, number, "1234").assert_ok();
    assert_eq!(portal_login_outcome(&portal, &id), "approved");
    println!("crash harness: approval kills left the challenge {outcomes:?}");

    println!(
        "crash harness: {} kills during batches (delay:users enrolled after) {}; all {users} agree; {:.1} s",
        kill_log.len(),
        kill_log.join(" "),
        started.elapsed().as_secs_f64()
    );
}
