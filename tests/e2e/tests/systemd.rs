//! fleetkeyd under a service manager: readiness and stopping are told
//! over `$NOTIFY_SOCKET` (Type=notify), and the listening socket can be
//! handed over by socket activation (fleetkeyd.socket). systemd is not
//! PID 1 here, so `systemd-socket-activate` (from the systemd package)
//! plays the socket unit, and the test itself plays the notify socket.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleetkey_e2e::{FAST_SOFT_KEYS, bin, open_tempdir};

/// Datagrams received on the notify socket until one contains `want`.
fn wait_for(socket: &UnixDatagram, want: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let found = message.lines().any(|line| line == want);
            seen.push(message);
            if found {
                return true;
            }
        }
    }
    false
}

#[test]
fn socket_activated_daemon_notifies_ready_and_stopping() {
    let dir = open_tempdir();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let config = dir.path().join("fleetkeyd.toml");
    std::fs::write(&config, FAST_SOFT_KEYS).unwrap();
    let socket = dir.path().join("fleetkeyd.sock");
    let log = dir.path().join("fleetkeyd.log");
    let mut child = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&socket)
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg(bin("fleetkeyd"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd) must be installed");

    // The socket exists before the daemon runs: systemd-socket-activate
    // made it, and starts the daemon at the first connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(socket.exists(), "systemd-socket-activate made no socket");
    let status = Command::new(bin("fleetkeyctl"))
        .arg("--socket")
        .arg(&socket)
        .args(["--json", "status"])
        .output()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.status.success(),
        "status through the activated socket: {}\n{}",
        String::from_utf8_lossy(&status.stdout),
        log_text()
    );
    let mut seen = Vec::new();
    assert!(
        wait_for(&notify, "READY=1", &mut seen),
        "no READY=1 on the notify socket: {seen:?}\n{}",
        log_text()
    );
    assert!(
        seen.iter().any(|m| m.contains("STATUS=Serving on")),
        "{seen:?}"
    );
    assert!(
        log_text().contains("socket_activated=true"),
        "{}",
        log_text()
    );

    // SIGTERM: the daemon says it is stopping, exits cleanly, and leaves
    // the socket to its owner (systemd removes it with RemoveOnStop).
    // SAFETY: kill on the pid of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(
        wait_for(&notify, "STOPPING=1", &mut seen),
        "no STOPPING=1: {seen:?}\n{}",
        log_text()
    );
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}\n{}", log_text());
    assert!(!log_text().contains('\u{1b}'), "colour codes in a log file");
}

#[test]
fn started_by_hand_nothing_is_notified_and_the_socket_is_its_own() {
    let dir = open_tempdir();
    let config = dir.path().join("fleetkeyd.toml");
    std::fs::write(&config, FAST_SOFT_KEYS).unwrap();
    let socket = dir.path().join("fleetkeyd.sock");
    let log = dir.path().join("fleetkeyd.log");
    let mut child = Command::new(bin("fleetkeyd"))
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // The socket is bound before the D-Bus connection and the ready line, so
    // wait for the line itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log_text().contains("fleetkeyd ready") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        "{}",
        log_text()
    );
    assert!(
        log_text().contains("socket_activated=false"),
        "{}",
        log_text()
    );
    // SAFETY: kill on the pid of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "{}", log_text());
    assert!(
        !socket.exists(),
        "the daemon's own socket is removed at exit"
    );
}
