//! Portal faults (issue 13): `user add-batch` runs while a fault-injecting
//! proxy between fleetkeyd and the portal drops, resets, truncates and
//! delays connections (tests/e2e/src/fault_proxy.rs). Every user must end
//! either enrolled, here and at the portal with the same credential, or
//! cleanly not, with a specific reason; a re-run once the link is sound
//! finishes the batch, and the daemon's users, the key store's keys and
//! the portal's credentials then agree exactly.
//!
//! The short form runs in `scripts/test.sh` (24 users, 30% of connections
//! faulty). The long form, run by hand:
//!
//!     FLEETKEY_FAULT_USERS=200 FLEETKEY_FAULT_PERCENT=40 \
//!         cargo test --workspace --all-features --test portal_faults -- --nocapture
//!
//! The faults come from a seeded generator (`FLEETKEY_FAULT_SEED`, printed).

use std::collections::BTreeMap;

use fleetkey_e2e::*;
use fleetkey_proto::Reason;
use serde_json::Value;

/// The reasons a line may fail with when the link to the portal is bad:
/// the portal could not be reached or answered garbage (nothing kept), or
/// the registration's answer was lost (the key is kept and the same
/// request is sent again).
const LINK_REASONS: [&str; 3] = ["PORTAL_UNREACHABLE", "PORTAL_ERROR", "ENROLL_PENDING"];

#[test]
fn a_batch_over_a_faulty_link_ends_each_user_enrolled_or_cleanly_not() {
    let users = env_number("FLEETKEY_FAULT_USERS", 24) as usize;
    let percent = env_number("FLEETKEY_FAULT_PERCENT", 30) as u32;
    let seed = env_number("FLEETKEY_FAULT_SEED", 0xfa17_5eed_0bad_11c5);
    println!("portal faults: {users} users, {percent}% of connections faulty, seed {seed:#x}");

    let mut proxy_slot = None;
    let portal = Portal::start_behind(
        |listen| {
            let proxy = FaultProxy::start(listen.parse().expect("address"), seed);
            let url = proxy.url();
            proxy_slot = Some(proxy);
            url
        },
        &["--no-rate-limit"],
    );
    let proxy = proxy_slot.expect("the proxy");
    let daemon = Daemon::start(FAST_SOFT_KEYS);
    daemon.activate(&portal);

    let dir = open_tempdir();
    let names: Vec<String> = (0..users).map(|i| format!("fault{i:03}")).collect();
    let (codes, pins) = batch_codes_and_pins(&portal, dir.path(), &names);
    let args = [
        "--json",
        "user",
        "add-batch",
        "--pins",
        pins.to_str().expect("path"),
        codes.to_str().expect("path"),
    ];

    // The batch over the faulty link.
    proxy.set_percent(percent);
    let faulty = daemon.ctl(&args);
    proxy.set_percent(0);
    let (lines, summary) = reports(&faulty);
    assert_eq!(lines.len(), users, "{faulty:?}");
    let device = listed_users(&daemon);
    let at_portal = portal.active_credentials();
    let mut reasons = BTreeMap::<String, u32>::new();
    for (i, report) in lines.iter().enumerate() {
        let user = &names[i];
        assert_eq!(report["user"], user.as_str(), "{report}");
        match report["status"].as_str() {
            Some("enrolled") => {
                let credential = device
                    .get(user)
                    .and_then(|(state, credential)| (state == "active").then_some(credential))
                    .unwrap_or_else(|| panic!("{user} reported enrolled, not active here"));
                assert_eq!(at_portal.get(user), Some(credential), "{user}");
            }
            Some("failed") => {
                let reason = report["reason"].as_str().unwrap_or_default();
                assert!(
                    LINK_REASONS.contains(&reason),
                    "not a specific reason: {report}"
                );
                assert!(
                    !report["message"].as_str().unwrap_or_default().is_empty(),
                    "{report}"
                );
                *reasons.entry(reason.to_string()).or_default() += 1;
                match device.get(user) {
                    // Cleanly not: nothing here, nothing at the portal.
                    None => assert!(!at_portal.contains_key(user), "{user}: {report}"),
                    // The answer was lost: the key and the signed request
                    // are kept, pending, to be sent again.
                    Some((state, _)) => {
                        assert_eq!(reason, "ENROLL_PENDING", "{user}: {report}");
                        assert_eq!(state, "pending", "{user}: {report}");
                    }
                }
            }
            _ => panic!("{user}: {report}"),
        }
    }
    // No credential at the portal without its user here (active, or
    // pending with the request that made it).
    for user in at_portal.keys() {
        assert!(device.contains_key(user), "{user} at the portal only");
    }
    let counts = proxy.counts();
    let faults: u32 = counts
        .iter()
        .filter(|(fault, _)| **fault != Fault::Pass)
        .map(|(_, n)| n)
        .sum();
    assert!(faults > 0, "no fault was injected: {counts:?}");
    println!("portal faults: first run {summary}; failures {reasons:?}; connections {counts:?}");

    // The link is sound again: the same batch finishes it.
    let rerun = daemon.ctl(&args);
    assert_eq!(rerun.code, 0, "{rerun:?}");
    let (lines, summary) = reports(&rerun);
    for report in &lines {
        assert!(
            report["status"] == "enrolled" || report["status"] == "done",
            "{report}"
        );
    }
    assert_eq!(assert_agree(&daemon, &portal, "after the re-run"), users);
    println!("portal faults: re-run {summary}; all {users} agree");
}

/// Every registration's answer lost (the proxy drops each answer once a
/// large request went up; the code checks still pass): `user add` makes
/// the key, the portal registers it, and after three tries the daemon
/// keeps both users pending with `ENROLL_PENDING`. Nothing is lost: the
/// same `user add` finishes one, a restart of the daemon the other, with
/// the credentials the portal made at the first try.
#[test]
fn lost_registration_answers_keep_the_users_pending_until_finished() {
    let mut proxy_slot = None;
    let portal = Portal::start_behind(
        |listen| {
            let proxy = FaultProxy::start(listen.parse().expect("address"), 7);
            let url = proxy.url();
            proxy_slot = Some(proxy);
            url
        },
        &[],
    );
    let proxy = proxy_slot.expect("the proxy");
    let mut daemon = Daemon::start(FAST_SOFT_KEYS);
    daemon.activate(&portal);
    let codes: Vec<(&str, Issued)> = ["lost1", "lost2"]
        .into_iter()
        .map(|user| (user, portal.user_code(user)))
        .collect();

    proxy.lose_answers_after(Some(LARGE_REQUEST));
    for (user, code) in &codes {
        let out = daemon.add_user_by_code(&code.uri, "1234", "soft");
        let failure = out.assert_reason(Reason::EnrollPending);
        assert!(
            failure["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(user)
        );
    }
    let device = listed_users(&daemon);
    let at_portal = portal.active_credentials();
    for (user, _) in &codes {
        assert_eq!(device[*user].0, "pending", "{device:?}");
        assert!(
            at_portal.contains_key(*user),
            "the portal registered {user} at the first try"
        );
    }
    let (keys, _) = soft_keys(&daemon);
    assert_eq!(keys, 2, "both keys kept");

    // The link is sound again: the same code finishes lost1 at once...
    proxy.lose_answers_after(None);
    let again = daemon.add_user_by_code(&codes[0].1.uri, "1234", "soft");
    again.assert_ok();
    assert_eq!(
        again.json()["credential_id"].as_str(),
        at_portal.get("lost1").map(String::as_str)
    );
    // ...and the next start finishes lost2.
    daemon.restart();
    assert_eq!(assert_agree(&daemon, &portal, "after the restart"), 2);
    assert_eq!(daemon.enrolled_credentials(), at_portal);
    let data = open_tempdir();
    let file = data.path().join("data");
    std::fs::write(&file, "signed after the faults").expect("data");
    for (user, _) in &codes {
        daemon.sign(user, "1234", &file).assert_ok();
    }
}

/// More bytes than a code check sends, fewer than a registration.
const LARGE_REQUEST: usize = 1000;

/// The JSON line reports of an add-batch run, and its summary.
fn reports(out: &Ctl) -> (Vec<Value>, Value) {
    let mut lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {out:?}")))
        .collect();
    let summary = lines.pop().expect("a summary line");
    (lines, summary["summary"].clone())
}

/// Every user the device lists, pending ones too (listed without a
/// credential id): name to (state, credential id).
fn listed_users(daemon: &Daemon) -> BTreeMap<String, (String, String)> {
    let listed = daemon.ctl(&["--json", "user", "list"]);
    listed.assert_ok();
    listed.json()["users"]
        .as_array()
        .expect("array")
        .iter()
        .map(|u| {
            let credential = u["credential_id"].as_str().unwrap_or_default().to_string();
            let state = if credential.is_empty() {
                "pending"
            } else {
                "active"
            };
            (
                u["user"].as_str().expect("user").to_string(),
                (state.to_string(), credential),
            )
        })
        .collect()
}
