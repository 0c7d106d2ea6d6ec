//! Issue 9, item 4: a flood of abandoned `Sign` requests from one
//! unprivileged uid. Each request hangs up before its answer, as a client
//! that is killed would. The daemon must bound the key-store work it runs
//! (threads), keep serving an admin and other users, and give its memory
//! back afterwards. Before the work queue, 400 such requests took the
//! daemon to dozens of threads and hundreds of MB that it kept.
//!
//! The users' keys use the default Argon2 settings (19 MiB per PIN check),
//! so that the work is as heavy as in production.

mod support;

use std::time::{Duration, Instant};

use fleetkey_e2e::*;
use fleetkey_proto::daemon::SignRequest;
use support::*;

const FLOODER: u32 = 64101;
const OTHER: u32 = 64102;
const REQUESTS: usize = 400;

/// Sends REQUESTS signs as `user` from uid FLOODER, each on its own
/// connection, each abandoned (connection dropped) 20-120 ms after it was
/// sent. Returns how many got an answer before they hung up.
fn flood(socket: std::path::PathBuf, user: &'static str, pin: &'static str) -> usize {
    become_uid_in_this_thread(FLOODER);
    let runtime = one_thread_runtime();
    runtime.block_on(async move {
        let mut tasks = Vec::new();
        for i in 0..REQUESTS {
            let socket = socket.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5 * i as u64)).await;
                let mut client = connect(&socket).await;
                let hang_up = Duration::from_millis(20 + (i as u64 * 37) % 100);
                let answered = tokio::time::timeout(
                    hang_up,
                    client.sign(SignRequest {
                        user: user.into(),
                        pin: pin.into(),
                        digest: vec![7; 32],
                    }),
                )
                .await
                .is_ok();
                drop(client);
                answered
            }));
        }
        let mut answered = 0;
        for task in tasks {
            if task.await.expect("flood task") {
                answered += 1;
            }
        }
        answered
    })
}

#[test]
fn abandoned_sign_flood_is_bounded_and_starves_nobody() {
    assert!(is_root(), "this test switches uids: run it as root");
    let portal = Portal::start();
    // Default Argon2 settings: every PIN check costs 19 MiB and real time.
    let daemon = Daemon::start("");
    daemon.activate(&portal);
    daemon.add_user(&portal, "alice", "1234");
    daemon.add_user(&portal, "bob", "5678");
    daemon.add_user(&portal, "carol", "2468");
    let data = open_tempdir();
    let file = data.path().join("data.txt");
    std::fs::write(&file, "sign me").expect("data");
    std::fs::set_permissions(
        data.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    // Warm: each user has signed once, so the baseline includes the
    // daemon's steady state.
    daemon.sign("alice", "1234", &file).assert_ok();
    daemon
        .ctl_as(
            OTHER,
            &[
                "sign",
                "--user",
                "bob",
                "--in",
                file.to_str().unwrap(),
                "--pin-stdin",
            ],
            Some("5678\n"),
        )
        .assert_ok();
    std::thread::sleep(Duration::from_secs(1));
    let pid = daemon.pid();
    let (base_rss, base_threads) = rss_and_threads(pid);

    let socket = daemon.socket.clone();
    let flooder = std::thread::spawn(move || flood(socket, "carol", "2468"));
    let started = Instant::now();
    let (mut peak_rss, mut peak_threads) = (base_rss, base_threads);
    let mut sample = || {
        let (rss, threads) = rss_and_threads(pid);
        peak_rss = peak_rss.max(rss);
        peak_threads = peak_threads.max(threads);
    };

    // (a) During the flood, an admin and another user are served.
    std::thread::sleep(Duration::from_millis(800));
    sample();
    let admin_start = Instant::now();
    let admin = daemon.sign("alice", "1234", &file);
    let admin_took = admin_start.elapsed();
    sample();
    let other_start = Instant::now();
    let other = daemon.ctl_as(
        OTHER,
        &[
            "sign",
            "--user",
            "bob",
            "--in",
            file.to_str().unwrap(),
            "--pin-stdin",
        ],
        Some("5678\n"),
    );
    let other_took = other_start.elapsed();
    while !flooder.is_finished() {
        sample();
        std::thread::sleep(Duration::from_millis(50));
    }
    let answered = flooder.join().expect("flood thread");
    let flood_took = started.elapsed();
    sample();
    admin.assert_ok();
    other.assert_ok();

    // (b) Memory and threads go back near the baseline.
    let mut after = (0, 0);
    let settled = wait_for(Duration::from_secs(30), || {
        after = rss_and_threads(pid);
        after.0 <= base_rss + 32 * 1024 && after.1 <= base_threads + 2
    });
    eprintln!(
        "flood of {REQUESTS} abandoned signs ({answered} answered before hang-up) in {flood_took:?}: \
         baseline RSS {base_rss} KiB, {base_threads} threads; peak {peak_rss} KiB, {peak_threads} threads; \
         after {} KiB, {} threads; admin sign {admin_took:?}, other user's sign {other_took:?}",
        after.0, after.1
    );
    assert!(
        admin_took < Duration::from_secs(10),
        "the admin waited {admin_took:?} behind the flood"
    );
    assert!(
        other_took < Duration::from_secs(10),
        "another user waited {other_took:?} behind the flood"
    );
    let workers = std::thread::available_parallelism().map_or(1, usize::from) as u64;
    assert!(
        peak_threads <= base_threads + workers + 4,
        "the flood ran unbounded work: {peak_threads} threads at peak, {base_threads} before"
    );
    assert!(
        peak_rss <= base_rss + (workers + 4) * 24 * 1024,
        "the flood took RSS from {base_rss} KiB to {peak_rss} KiB"
    );
    assert!(
        settled,
        "memory/threads did not return near the baseline: {after:?} after, {base_rss} KiB / {base_threads} threads before"
    );
    // Nothing was counted against carol: her abandoned signs had her PIN.
    daemon.sign("carol", "2468", &file).assert_ok();
}

/// Clients that keep their connections open and stop reading (a stopped
/// fleetkeyctl, a hostile local user) cannot hold the daemon's stop:
/// SIGTERM ends it within its grace period (10 s, daemon/src/limits.rs),
/// it exits cleanly, and its state is intact.
#[test]
fn clients_that_stop_reading_do_not_hold_the_daemon_stop() {
    let portal = Portal::start();
    let mut daemon = Daemon::start(FAST_SOFT_KEYS);
    daemon.activate(&portal);
    daemon.add_user(&portal, "alice", "1234");
    // Two clients, each on a one-thread runtime: one call, then the
    // runtime is never driven again, so nothing reads the connection.
    let mut held = Vec::new();
    for _ in 0..2 {
        let runtime = one_thread_runtime();
        let client = runtime.block_on(async {
            let mut client = connect(&daemon.socket).await;
            client
                .get_status(fleetkey_proto::daemon::GetStatusRequest {})
                .await
                .expect("status");
            client
        });
        held.push((runtime, client));
    }
    let socket = daemon.socket.clone();
    let started = Instant::now();
    let status = daemon.terminate_within(Duration::from_secs(30));
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "fleetkeyd still running 30 s after SIGTERM: {}",
            daemon.log_text()
        )
    });
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_secs(5),
        "{took:?}: the grace was not given"
    );
    assert!(!socket.exists(), "the socket was left behind");
    assert!(
        daemon.log_text().contains("grace period"),
        "{}",
        daemon.log_text()
    );
    drop(held);

    daemon.restart();
    let users = daemon.ctl(&["--json", "user", "list"]);
    users.assert_ok();
    assert!(users.stdout.contains("alice"), "{}", users.stdout);
}
