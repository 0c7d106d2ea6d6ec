//! Issue 9, item 3: user names and request sizes. Huge names sent to
//! `Sign`, `ChangePin` and `UnblockPin` (by an unprivileged user) are
//! refused with a clear error, and the daemon keeps nothing of them:
//! before, each name stayed in the per-user lock table for good (30 MB
//! names took RSS from 66 MB to 494 MB).

mod support;

use std::time::Duration;

use fleetkey_e2e::*;
use fleetkey_proto::Reason;
use fleetkey_proto::daemon::{ChangePinRequest, SignRequest, UnblockPinRequest};
use support::*;

const STRANGER: u32 = 64201;

#[test]
fn huge_and_invalid_names_are_refused_and_leave_nothing_behind() {
    assert!(is_root(), "this test switches uids: run it as root");
    let portal = Portal::start();
    let daemon = Daemon::start_default();
    daemon.activate(&portal);
    daemon.add_user(&portal, "alice", "1234");
    let pid = daemon.pid();
    let socket = daemon.socket.clone();

    let outcome = std::thread::spawn(move || {
        become_uid_in_this_thread(STRANGER);
        let runtime = one_thread_runtime();
        runtime.block_on(async move {
            let mut client = connect(&socket).await;
            // Warm the connection and the daemon's buffers.
            let _ = client
                .sign(SignRequest {
                    user: "nobody".into(),
                    pin: "1234".into(),
                    digest: vec![0; 32],
                })
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (base_rss, _) = rss_and_threads(pid);
            let mut statuses = Vec::new();
            // 40 KB: small enough to reach the handler, far too long for a name.
            for i in 0..20u8 {
                let name = format!("{}{i}", "n".repeat(40_000));
                statuses.push(
                    client
                        .sign(SignRequest {
                            user: name.clone(),
                            pin: "1234".into(),
                            digest: vec![0; 32],
                        })
                        .await
                        .expect_err("a 40 KB name is refused"),
                );
                statuses.push(
                    client
                        .change_pin(ChangePinRequest {
                            user: name.clone(),
                            old_pin: "1234".into(),
                            new_pin: "4321".into(),
                        })
                        .await
                        .expect_err("a 40 KB name is refused"),
                );
                statuses.push(
                    client
                        .unblock_pin(UnblockPinRequest {
                            user: name,
                            puk: "12345678".into(),
                            new_pin: "4321".into(),
                        })
                        .await
                        .expect_err("a 40 KB name is refused"),
                );
            }
            // 8 MB: refused by size before it is decoded (on a fresh
            // connection each: the daemon ends the stream).
            let mut huge = Vec::new();
            for i in 0..10u8 {
                let mut client = connect(&socket).await;
                let name = format!("{}{i}", "h".repeat(8 << 20));
                huge.push(
                    client
                        .sign(SignRequest {
                            user: name,
                            pin: "1234".into(),
                            digest: vec![0; 32],
                        })
                        .await
                        .expect_err("an 8 MB name is refused"),
                );
            }
            // Invisible characters are not a name either.
            let zero_width = client
                .sign(SignRequest {
                    user: "alice\u{200b}".into(),
                    pin: "1234".into(),
                    digest: vec![0; 32],
                })
                .await
                .expect_err("a name with U+200B is refused");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (after_rss, _) = rss_and_threads(pid);
            (statuses, huge, zero_width, base_rss, after_rss)
        })
    })
    .join()
    .expect("stranger thread");
    let (statuses, huge, zero_width, base_rss, after_rss) = outcome;

    for status in &statuses {
        let failure = fleetkey_proto::Failure::from_status(status);
        assert_eq!(failure.reason, Reason::UserNameInvalid, "{status:?}");
        assert!(
            failure.message.len() < 200,
            "the refusal echoes the name: {} bytes",
            failure.message.len()
        );
    }
    for status in &huge {
        assert_ne!(status.code(), tonic::Code::Ok);
        assert!(
            status.message().len() < 1000,
            "the refusal echoes the request: {} bytes",
            status.message().len()
        );
    }
    assert_eq!(
        fleetkey_proto::Failure::from_status(&zero_width).reason,
        Reason::UserNameInvalid
    );
    eprintln!("60 x 40 KB and 10 x 8 MB names: RSS {base_rss} KiB before, {after_rss} KiB after");
    assert!(
        after_rss <= base_rss + 16 * 1024,
        "RSS grew from {base_rss} KiB to {after_rss} KiB"
    );
    // The daemon still serves, and alice still signs.
    let data = open_tempdir();
    let file = data.path().join("data.txt");
    std::fs::write(&file, "sign me").expect("data");
    daemon.sign("alice", "1234", &file).assert_ok();
}
