//! Login approvals as the tests drive them: the portal's `login start` and
//! `login wait`, the device's `approvals list` and `approve`
//! (docs/approvals.md).

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Ctl, Daemon, Portal};

/// How long after the portal is back a device must have reconnected and
/// shown a new challenge: the longest backoff (8 s), the portal's stream
/// poll (0.1 s), and room for a loaded machine. docs/approvals.md states it.
pub const RECONNECT_BOUND: Duration = Duration::from_secs(15);
/// How long a new challenge may take to show on a connected device here.
pub const VISIBLE_BOUND: Duration = Duration::from_secs(5);

pub fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {} / {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `login start`; returns (id, number).
pub fn login_start(portal: &Portal, user: &str, context: &str, ttl: u64) -> (String, u32) {
    let ttl = ttl.to_string();
    let out = portal.cli(&[
        "login",
        "start",
        "--user",
        user,
        "--context",
        context,
        "--ttl",
        &ttl,
        "--json",
    ]);
    assert!(out.status.success(), "login start: {out:?}");
    let json = json_of(&out);
    let number = u32::try_from(json["number"].as_u64().unwrap()).unwrap();
    assert!((10..=99).contains(&number), "{json}");
    (json["id"].as_str().unwrap().to_string(), number)
}

/// `login wait ID --json`: (exit success, JSON).
pub fn login_wait(portal: &Portal, id: &str) -> (bool, Value) {
    let out = portal.cli(&["login", "wait", id, "--json"]);
    (out.status.success(), json_of(&out))
}

pub fn approvals(daemon: &Daemon) -> Vec<Value> {
    let out = daemon.ctl(&["--json", "approvals", "list"]);
    out.assert_ok();
    out.json().as_array().unwrap().clone()
}

pub fn state_of(daemon: &Daemon, id: &str) -> Option<String> {
    approvals(daemon)
        .iter()
        .find(|a| a["id"] == id)
        .map(|a| a["state"].as_str().unwrap().to_string())
}

/// Waits until challenge `id` is listed on the device; returns how long.
pub fn wait_visible(daemon: &Daemon, id: &str, bound: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < bound {
        if state_of(daemon, id).is_some() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "challenge {id} not visible within {bound:?}; log: {}",
        daemon.log_text()
    );
}

pub fn stream_state(daemon: &Daemon) -> String {
    daemon.ctl(&["--json", "status"]).json()["portal_stream"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn wait_stream(daemon: &Daemon, want: &str, bound: Duration) {
    let start = Instant::now();
    while start.elapsed() < bound {
        if stream_state(daemon) == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "portal stream not {want} within {bound:?}; status: {}",
        daemon.ctl(&["--json", "status"]).stdout
    );
}

pub fn approve(daemon: &Daemon, id: &str, number: u32, pin: &str) -> Ctl {
    daemon.ctl_with_stdin(
        &[
            "--json",
            "approve",
            id,
            "--number",
            &number.to_string(),
            "--pin-stdin",
        ],
        Some(&format!("{pin}\n")),
    )
}

/// One value from the portal's database, through the sqlite3 CLI.
pub fn portal_sql(portal: &Portal, sql: &str) -> String {
    let out = std::process::Command::new("sqlite3")
        .arg(&portal.db)
        .arg(sql)
        .output()
        .expect("sqlite3");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The login challenge's state at the portal (`pending`, `approved`,
/// `denied`), read without waiting.
pub fn portal_login_outcome(portal: &Portal, id: &str) -> String {
    assert!(
        id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "{id}"
    );
    portal_sql(
        portal,
        &format!("SELECT state FROM login_challenges WHERE id = '{id}'"),
    )
}
