//! Load (issue 13): many concurrent clients, each connected under a uid of
//! its own (as people at a shared kiosk are), send mixed `Sign`,
//! `ListUsers` and `GetStatus` calls to one daemon for a while. Every call
//! must succeed, and the daemon's memory must come back near its baseline
//! afterwards; the p50/p99 of each call are printed.
//!
//! The short form runs in `scripts/test.sh` (20 clients for 5 s, debug
//! build). The long form, run by hand (its figures go in the closing
//! note):
//!
//!     cargo build --release --workspace --all-features --bins
//!     FLEETKEY_LOAD_CLIENTS=100 FLEETKEY_LOAD_SECONDS=60 \
//!         cargo test --release --workspace --all-features --test load -- --nocapture

mod support;

use std::time::{Duration, Instant};

use fleetkey_e2e::*;
use fleetkey_proto::daemon::{GetStatusRequest, ListUsersRequest, SignRequest};
use support::*;

/// First uid of the clients (each client its own).
const UID_BASE: u32 = 62_000;
const PIN: &str = "1234";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Sign,
    List,
    Status,
}

/// What one client saw: each call's kind and latency, and its errors.
struct Seen {
    calls: Vec<(Call, Duration)>,
    errors: Vec<String>,
}

/// One client: connects as `uid`, then until `until` signs three calls in
/// five, lists users one in five and asks for the status one in five.
fn client(socket: std::path::PathBuf, uid: u32, user: String, until: Instant) -> Seen {
    become_uid_in_this_thread(uid);
    let runtime = one_thread_runtime();
    runtime.block_on(async move {
        let mut client = connect(&socket).await;
        let mut seen = Seen {
            calls: Vec::new(),
            errors: Vec::new(),
        };
        let mut i = uid as usize;
        while Instant::now() < until {
            i += 1;
            let call = match i % 5 {
                0..=2 => Call::Sign,
                3 => Call::List,
                _ => Call::Status,
            };
            let start = Instant::now();
            let outcome = match call {
                Call::Sign => client
                    .sign(SignRequest {
                        user: user.clone(),
                        pin: PIN.into(),
                        digest: vec![i as u8; 32],
                    })
                    .await
                    .map(|_| ()),
                Call::List => client.list_users(ListUsersRequest {}).await.map(|_| ()),
                Call::Status => client.get_status(GetStatusRequest {}).await.map(|_| ()),
            };
            match outcome {
                Ok(()) => seen.calls.push((call, start.elapsed())),
                Err(status) => seen.errors.push(format!(
                    "uid {uid} {call:?}: {:?} {}",
                    status.code(),
                    status.message()
                )),
            }
        }
        seen
    })
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[test]
fn many_clients_of_many_uids_mixed_calls_no_errors_and_memory_comes_back() {
    let clients = env_number("FLEETKEY_LOAD_CLIENTS", 20) as u32;
    let seconds = env_number("FLEETKEY_LOAD_SECONDS", 5);
    let portal = Portal::start_with(&["--no-rate-limit"]);
    let daemon = Daemon::start(FAST_SOFT_KEYS);
    daemon.activate(&portal);
    // Up to 20 users, shared by the clients (signs of one user take turns).
    let users: Vec<String> = (0..clients.min(20)).map(|i| format!("load{i}")).collect();
    for user in &users {
        daemon.add_user(&portal, user, PIN);
    }
    std::thread::sleep(Duration::from_secs(1));
    let pid = daemon.pid();
    let (base_rss, base_threads) = rss_and_threads(pid);

    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let socket = daemon.socket.clone();
            let user = users[c as usize % users.len()].clone();
            std::thread::spawn(move || client(socket, UID_BASE + c, user, until))
        })
        .collect();
    let mut peak = (base_rss, base_threads);
    while handles.iter().any(|h| !h.is_finished()) {
        let (rss, threads) = rss_and_threads(pid);
        peak = (peak.0.max(rss), peak.1.max(threads));
        std::thread::sleep(Duration::from_millis(200));
    }
    let wall = started.elapsed();
    let mut calls = Vec::new();
    let mut errors = Vec::new();
    for handle in handles {
        let seen = handle.join().expect("client thread");
        calls.extend(seen.calls);
        errors.extend(seen.errors);
    }

    let mut after = (0, 0);
    let settled = wait_for(Duration::from_secs(30), || {
        after = rss_and_threads(pid);
        after.0 <= base_rss + 4 * 1024 && after.1 <= base_threads + 2
    });
    println!(
        "load: {clients} clients (uids {UID_BASE}..{}), {} users, {:.1} s: {} calls ({:.0}/s), {} errors",
        UID_BASE + clients - 1,
        users.len(),
        wall.as_secs_f64(),
        calls.len(),
        calls.len() as f64 / wall.as_secs_f64(),
        errors.len()
    );
    for kind in [Call::Sign, Call::List, Call::Status] {
        let mut latencies: Vec<Duration> = calls
            .iter()
            .filter(|(c, _)| *c == kind)
            .map(|(_, d)| *d)
            .collect();
        latencies.sort();
        println!(
            "  {kind:?}: {} calls, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latencies.len(),
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
        assert!(!latencies.is_empty(), "no {kind:?} call was answered");
    }
    println!(
        "  daemon RSS: baseline {base_rss} KiB, peak {} KiB, after {} KiB; threads: baseline {base_threads}, peak {}, after {}",
        peak.0, after.0, peak.1, after.1
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(
        settled,
        "memory/threads did not come back near the baseline: {after:?} after, {base_rss} KiB / {base_threads} threads before"
    );
}
