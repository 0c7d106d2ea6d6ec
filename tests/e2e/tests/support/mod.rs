//! Helpers for the tests that attack the daemon with raw gRPC requests
//! (floods, oversized fields) and watch its memory and threads.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use fleetkey_proto::daemon::fleetkey_client::FleetkeyClient;
use tonic::transport::{Channel, Endpoint};

/// A gRPC client on the daemon's Unix socket. The connection is made from
/// the calling thread, so it carries that thread's credentials.
pub async fn connect(socket: &Path) -> FleetkeyClient<Channel> {
    let socket = socket.to_path_buf();
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to fleetkeyd");
    FleetkeyClient::new(channel)
        .max_encoding_message_size(64 * 1024 * 1024)
        .max_decoding_message_size(64 * 1024 * 1024)
}

/// A one-thread runtime, as fleetkeyctl runs its calls. Its connections
/// are driven only inside `block_on`.
pub fn one_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A process's resident memory (KiB) and thread count, from /proc.
pub fn rss_and_threads(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("Threads:"))
}

/// Switches the calling thread (only it: the raw syscalls, not glibc's
/// process-wide wrappers) to another uid and gid, so that the sockets it
/// connects carry that uid.
pub fn become_uid_in_this_thread(uid: u32) {
    // SAFETY: raw setresgid/setresuid on this thread only; arguments are
    // plain integers.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
            0,
            "setgroups"
        );
        assert_eq!(
            libc::syscall(libc::SYS_setresgid, uid, uid, uid),
            0,
            "setresgid"
        );
        assert_eq!(
            libc::syscall(libc::SYS_setresuid, uid, uid, uid),
            0,
            "setresuid"
        );
    }
}

/// Waits until `done` holds or `limit` passes; returns whether it held.
pub fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
