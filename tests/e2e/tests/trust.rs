//! Who trusts whom (issue 9, part A, items 1, 2, 6 and 8), with real
//! processes and real second uids:
//! - the CLI sends nothing, no PIN above all, to a socket served by a uid
//!   it does not trust, and has no default socket under /tmp;
//! - the daemon refuses to serve from a directory others can write, and
//!   says when other users cannot reach its socket;
//! - a caller's admin rights are those the kernel recorded at connect, not
//!   those of whatever process has the caller's PID later;
//! - plain http:// portals off loopback are refused before any connection,
//!   and URL schemes compare case-insensitively;
//! - terminal escapes in a QR code's user hint reach no terminal, and
//!   `user add` names the user the portal bound to the code.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use fleetkey_e2e::*;
use fleetkey_proto::Reason;

const NOBODY: u32 = 65534;
/// A second ordinary uid, the victim in the impersonation tests.
const ALICE_UID: u32 = 1000;

fn require_root() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("FLEETKEY_REQUIRE_ROOT_TESTS").is_none(),
        "this test must run as root (it switches users)"
    );
    eprintln!("not root: this test cannot switch users here; CI runs it as root");
    false
}

/// What a fleetkeyctl run printed, and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// fleetkeyctl as `uid` (root when None), with exactly the environment given.
fn ctl_env(uid: Option<u32>, env: &[(&str, &str)], args: &[&str], stdin: &str) -> Run {
    let mut command = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(bin("fleetkeyctl"));
            c
        }
        None => Command::new(bin("fleetkeyctl")),
    };
    command
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run fleetkeyctl");
    let mut pipe = child.stdin.take().expect("stdin");
    let _ = pipe.write_all(stdin.as_bytes());
    drop(pipe);
    let output = child.wait_with_output().expect("fleetkeyctl output");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn sockaddr(path: &Path) -> (libc::sockaddr_un, libc::socklen_t) {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    (
        addr,
        std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
    )
}

fn new_unix_socket() -> RawFd {
    // SAFETY: no preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    fd
}

/// Runs `op` on `fd` (a socket this process also holds) in a child
/// process running as `uid`/`gid` with no supplementary groups, which then
/// exits. Returns the child's PID. What the kernel records about the
/// socket (SO_PEERCRED) is the child's identity.
fn in_child_as(uid: u32, op: impl Fn() -> std::io::Result<()> + Send + Sync + 'static) -> u32 {
    let mut command = Command::new("/bin/true");
    command.uid(uid).gid(uid);
    // SAFETY: the closure makes only system calls (bind, listen,
    // connect), which are safe between fork and exec.
    unsafe { command.pre_exec(op) };
    let mut child = command.spawn().expect("spawn helper");
    let pid = child.id();
    assert!(child.wait().expect("wait helper").success());
    pid
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A listening socket at `path` made by `uid`, as an impostor would leave
/// it; every connection's bytes are reported on the channel.
fn impostor_relay(uid: u32, path: &Path) -> mpsc::Receiver<Vec<u8>> {
    let fd = new_unix_socket();
    let (addr, len) = sockaddr(path);
    in_child_as(uid, move || {
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        check(unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len) })?;
        // SAFETY: plain system call on an owned descriptor.
        check(unsafe { libc::listen(fd, 16) })
    });
    // Connecting needs write permission on the socket file: let anyone in.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    // SAFETY: `fd` is a listening socket this process owns from here on.
    let listener = unsafe { UnixListener::from_raw_fd(fd) };
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let Ok(mut connection) = connection else {
                return;
            };
            let _ = connection.set_read_timeout(Some(Duration::from_secs(3)));
            let mut received = Vec::new();
            // A client that trusts the relay sends its request and waits
            // for an answer: stop after the timeout, keeping what came.
            let _ = connection.read_to_end(&mut received);
            if sender.send(received).is_err() {
                return;
            }
        }
    });
    receiver
}

#[test]
fn cli_sends_nothing_to_a_socket_served_by_another_uid() {
    if !require_root() {
        return;
    }
    // The review's attack: a local user makes the directory the CLI would
    // look in and listens there.
    let dir = open_tempdir();
    let trap = dir.path().join("fleetkey-trap");
    std::fs::create_dir(&trap).unwrap();
    std::os::unix::fs::chown(&trap, Some(NOBODY), Some(NOBODY)).unwrap();
    let socket = trap.join("fleetkeyd.sock");
    let relay = impostor_relay(NOBODY, &socket);
    let socket_arg = socket.to_str().unwrap();

    let data = dir.path().join("data");
    std::fs::write(&data, b"to sign").unwrap();
    let data_arg = data.to_str().unwrap();
    let sign = [
        "--json",
        "--socket",
        socket_arg,
        "sign",
        "--user",
        "alice",
        "--in",
        data_arg,
        "--pin-stdin",
    ];
    // Root and an ordinary user alike.
    for victim in [None, Some(ALICE_UID)] {
        let run = ctl_env(victim, &[], &sign, "1234\n");
        let json = run.json();
        assert_eq!(
            json["error"]["reason"], "DAEMON_UNTRUSTED",
            "victim {victim:?}: {}",
            run.stdout
        );
        assert_eq!(run.code, i32::from(Reason::DaemonUntrusted.exit_code()));
        assert_eq!(json["error"]["server_uid"], NOBODY);
        let message = json["error"]["message"].as_str().unwrap();
        assert!(message.contains("uid 65534"), "{message}");
        let received = relay
            .recv_timeout(Duration::from_secs(10))
            .expect("the CLI connected to the relay");
        assert!(
            received.is_empty(),
            "victim {victim:?}: the relay received {} bytes (PIN in them: {})",
            received.len(),
            received.windows(4).any(|w| w == b"1234")
        );
    }

    // The text form names the uid too.
    let run = ctl_env(
        Some(ALICE_UID),
        &[],
        &["--socket", socket_arg, "status"],
        "",
    );
    assert_eq!(run.code, 61, "{}", run.stderr);
    assert!(run.stderr.contains("uid 65534"), "{}", run.stderr);
    assert!(run.stderr.contains("DAEMON_UNTRUSTED"), "{}", run.stderr);
    assert!(
        relay
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .is_empty()
    );

    // A uid named in FLEETKEY_TRUSTED_UIDS is talked to: the check is
    // what kept the bytes back above.
    let run = ctl_env(
        Some(ALICE_UID),
        &[("FLEETKEY_TRUSTED_UIDS", "65534")],
        &["--json", "--socket", socket_arg, "status"],
        "",
    );
    assert_ne!(run.json()["error"]["reason"], "DAEMON_UNTRUSTED");
    let received = relay.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(!received.is_empty(), "a trusted server was sent nothing");

    // A typo in the list trusts nobody extra, loudly.
    let run = ctl_env(
        Some(ALICE_UID),
        &[("FLEETKEY_TRUSTED_UIDS", "fleetkey")],
        &["--json", "--socket", socket_arg, "status"],
        "",
    );
    assert_eq!(run.json()["error"]["reason"], "INVALID_ARGUMENT");
}

#[test]
fn cli_trusts_root_and_its_own_uid() {
    if !require_root() {
        return;
    }
    // The root daemon is trusted by an ordinary user.
    let daemon = Daemon::start_default();
    let socket = daemon.socket.to_str().unwrap();
    let run = ctl_env(
        Some(NOBODY),
        &[],
        &["--json", "--socket", socket, "status"],
        "",
    );
    assert_eq!(run.code, 0, "{}", run.stdout);

    // A daemon of one's own uid is trusted (the development mode).
    let dir = open_tempdir();
    let own = dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(ALICE_UID), Some(ALICE_UID)).unwrap();
    let socket = own.join("fleetkeyd.sock");
    let _relay = impostor_relay(ALICE_UID, &socket);
    let run = ctl_env(
        Some(ALICE_UID),
        &[],
        &["--json", "--socket", socket.to_str().unwrap(), "status"],
        "",
    );
    assert_ne!(run.json()["error"]["reason"], "DAEMON_UNTRUSTED");
}

#[test]
fn no_default_socket_under_tmp() {
    if !require_root() {
        return;
    }
    // su, cron, ssh without a login session: no XDG_RUNTIME_DIR.
    let run = ctl_env(Some(NOBODY), &[], &["--json", "status"], "");
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(!text.contains("/tmp"), "{text}");
    if !Path::new(fleetkey_proto::paths::SYSTEM_SOCKET).exists() {
        assert_eq!(run.json()["error"]["reason"], "DAEMON_UNREACHABLE");
        assert!(
            text.contains(fleetkey_proto::paths::SYSTEM_SOCKET),
            "{text}"
        );
    }
    // With XDG_RUNTIME_DIR and no system socket: the per-user socket.
    if !Path::new(fleetkey_proto::paths::SYSTEM_SOCKET).exists() {
        let run = ctl_env(
            Some(NOBODY),
            &[("XDG_RUNTIME_DIR", "/run/user/65534")],
            &["--json", "status"],
            "",
        );
        assert!(
            run.stdout
                .contains("/run/user/65534/fleetkey/fleetkeyd.sock"),
            "{}",
            run.stdout
        );
    }
}

/// Starts fleetkeyd on `socket`; Ok(child) once it listens, Err(stderr)
/// when it exits first.
fn start_daemon(dir: &Path, socket: &Path) -> Result<(Child, PathBuf), String> {
    let config = dir.join("fleetkeyd.toml");
    std::fs::write(&config, FAST_SOFT_KEYS).unwrap();
    let log = dir.join("fleetkeyd.log");
    let mut child = Command::new(bin("fleetkeyd"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start fleetkeyd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(std::fs::read_to_string(&log).unwrap_or_default());
        }
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok((child, log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("fleetkeyd neither came up nor exited");
}

#[test]
fn daemon_refuses_directories_others_can_write() {
    if !require_root() {
        return;
    }
    let base = open_tempdir();
    for (name, mode, owner, problem) in [
        ("world", 0o777, 0, "lets every user write it"),
        ("sticky", 0o1777, 0, "lets every user write it"),
        ("group", 0o775, 0, "lets its group write it"),
        ("theirs", 0o755, NOBODY, "owned by uid 65534"),
    ] {
        let dir = base.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&dir, Some(owner), None).unwrap();
        let state = open_tempdir();
        let error = start_daemon(state.path(), &dir.join("fleetkeyd.sock"))
            .map(|(mut child, _)| {
                let _ = child.kill();
            })
            .expect_err(name);
        assert!(error.contains("refusing to serve in"), "{name}: {error}");
        assert!(error.contains(problem), "{name}: {error}");
        assert!(!dir.join("fleetkeyd.sock").exists(), "{name}");
    }
}

#[test]
fn daemon_says_when_only_its_user_can_connect() {
    if !require_root() {
        return;
    }
    let base = open_tempdir();
    let private = base.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let state = open_tempdir();
    let socket = private.join("fleetkeyd.sock");
    let (mut child, log) = start_daemon(state.path(), &socket).expect("starts in a 0700 directory");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("only this daemon's user (uid 0) and root can connect"),
        "{text}"
    );
    // And so it is: another user cannot reach it.
    let run = ctl_env(
        Some(NOBODY),
        &[],
        &["--json", "--socket", socket.to_str().unwrap(), "status"],
        "",
    );
    assert_eq!(run.json()["error"]["reason"], "DAEMON_UNREACHABLE");
    assert!(run.stdout.contains("Permission denied"), "{}", run.stdout);
    let _ = child.kill();
    let _ = child.wait();

    // A reachable directory gets no such warning.
    let state = open_tempdir();
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut child, log) = start_daemon(state.path(), &open.join("fleetkeyd.sock")).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("can connect"), "{text}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A group for the admin tests: `adm` where it exists, else `users`.
fn admin_group() -> (String, u32) {
    let groups = std::fs::read_to_string("/etc/group").unwrap();
    for wanted in ["adm", "users"] {
        for line in groups.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 3 && fields[0] == wanted {
                return (wanted.to_string(), fields[2].parse().unwrap());
            }
        }
    }
    panic!("neither group adm nor users exists");
}

/// Starts `make()` until the process gets PID `target` (root may steer
/// the next PID through /proc/sys/kernel/ns_last_pid).
fn spawn_with_pid(target: u32, make: impl Fn() -> Command) -> Child {
    for _ in 0..1000 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (target - 1).to_string())
            .expect("root can set ns_last_pid");
        let mut child = make().spawn().expect("spawn");
        if child.id() == target {
            return child;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("could not get PID {target} again");
}

fn proc_groups(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.trim().to_string())
}

/// RemoveUser sent over an already connected socket.
fn remove_over(fd: RawFd, user: &str) -> Result<(), tonic::Status> {
    use fleetkey_proto::daemon::RemoveUserRequest;
    use fleetkey_proto::daemon::fleetkey_client::FleetkeyClient;
    // SAFETY: `fd` is a connected socket owned by this test from here on.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    stream.set_nonblocking(true).unwrap();
    let slot = Arc::new(Mutex::new(Some(stream)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let stream = slot.lock().unwrap().take();
                async move {
                    let stream = stream.ok_or_else(|| std::io::Error::other("used once"))?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::from_std(stream)?,
                    ))
                }
            }))
            .await
            .unwrap();
        FleetkeyClient::new(channel)
            .remove_user(RemoveUserRequest { name: user.into() })
            .await
            .map(|_| ())
    })
}

#[test]
fn admin_rights_are_those_recorded_at_connect() {
    if !require_root() {
        return;
    }
    let (group, gid) = admin_group();
    let portal = Portal::start();
    let daemon = Daemon::start(&format!("admin_group = \"{group}\"\n{FAST_SOFT_KEYS}"));
    daemon.activate(&portal);
    daemon.add_user(&portal, "alice", "1234");
    let socket = daemon.socket.to_str().unwrap().to_string();

    // A member of the admin group through a supplementary group (primary
    // group nogroup) is an admin.
    let code = portal.user_code("bob");
    let output = Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg(format!("--groups={gid}"))
        .arg(bin("fleetkeyctl"))
        .args(["--json", "--socket", &socket, "user", "add", &code.uri])
        .arg("--pin-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"4321\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        output.status.success(),
        "an admin-group member was refused: {}",
        String::from_utf8_lossy(&output.stdout)
    );

    // A connection opened by a process of uid nobody, without the group,
    // which then exits...
    let fd = new_unix_socket();
    let (addr, len) = sockaddr(&daemon.socket);
    let pid = in_child_as(NOBODY, move || {
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        check(unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) })
    });
    // ...whose PID now belongs to an admin-group process of the same uid.
    let mut heir = spawn_with_pid(pid, || {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg(format!("--groups={gid}"))
            .args(["sleep", "60"]);
        command
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_groups(pid).as_deref() != Some(gid.to_string().as_str()) {
        assert!(Instant::now() < deadline, "the heir never took its groups");
        std::thread::sleep(Duration::from_millis(10));
    }

    let result = remove_over(fd, "alice");
    let _ = heir.kill();
    let _ = heir.wait();
    let status = result.expect_err("the stale connection removed a user");
    let failure = fleetkey_proto::Failure::from_status(&status);
    assert_eq!(failure.reason, Reason::PermissionDenied, "{failure:?}");
    assert!(failure.message.contains("uid 65534"), "{}", failure.message);
    daemon.ctl(&["--json", "user", "show", "alice"]).assert_ok();
}

/// `uri` with its portal (`p=`) replaced by `portal`, percent-encoded.
fn with_portal(uri: &str, portal: &str) -> String {
    let encoded: String = portal
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    uri.split('&')
        .map(|field| {
            if field.starts_with("p=") {
                format!("p={encoded}")
            } else {
                field.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[test]
fn plaintext_portal_off_loopback_is_refused_before_connecting() {
    // 192.0.2.1 is TEST-NET-1: nothing is ever sent there; the daemon
    // must refuse without opening a connection (no 5 s connect timeout).
    let portal = Portal::start();
    let daemon = Daemon::start_default();
    let uri = with_portal(&portal.device_code().uri, "http://192.0.2.1:7000");
    let started = Instant::now();
    let out = daemon.ctl(&["--json", "activate", &uri]);
    let elapsed = started.elapsed();
    let json = out.assert_reason(Reason::PortalInsecure);
    assert_eq!(json["error"]["portal"], "http://192.0.2.1:7000");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert_eq!(daemon.ctl(&["--json", "status"]).json()["activated"], false);

    // Upper case changes nothing, nor does a typed code with the portal
    // from the config.
    let uri = with_portal(&portal.device_code().uri, "HTTP://192.0.2.1:7000");
    daemon
        .ctl(&["--json", "activate", &uri])
        .assert_reason(Reason::PortalInsecure);
    let configured = Daemon::start(&format!(
        "portal_url = \"http://192.0.2.1:7000\"\n{FAST_SOFT_KEYS}"
    ));
    let started = Instant::now();
    configured
        .ctl(&["--json", "activate", &portal.device_code().code])
        .assert_reason(Reason::PortalInsecure);
    assert!(started.elapsed() < Duration::from_secs(2));

    // Loopback stays allowed over http://, in any case.
    let uri = with_portal(
        &portal.device_code().uri,
        &portal.url.replace("http://", "HTTP://"),
    );
    daemon.ctl(&["--json", "activate", &uri]).assert_ok();
}

/// A portal serving https on loopback with a fresh self-signed
/// certificate; returns (child, URL, database, certificate).
fn tls_portal(dir: &Path) -> (Child, String, PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl must be installed");
    assert!(made.success(), "openssl could not make a certificate");
    let db = dir.join("portal.db");
    let mut child = Command::new(bin("fleetkey-portal"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(&db)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fleetkey-portal");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line.trim().to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    (child, url, db, cert)
}

#[test]
fn https_in_upper_case_is_https() {
    let dir = open_tempdir();
    let (mut portal, url, db, cert) = tls_portal(dir.path());
    let output = Command::new(bin("fleetkey-portal"))
        .args(["code", "issue", "--json", "--kind", "device", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(output.status.success());
    let issued: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let upper = url.replace("https://", "HTTPS://");
    let uri = with_portal(issued["uri"].as_str().unwrap(), &upper);
    let daemon = Daemon::start(&format!(
        "portal_ca_file = \"{}\"\n{FAST_SOFT_KEYS}",
        cert.display()
    ));
    let out = daemon.ctl(&["--json", "activate", &uri]);
    let _ = portal.kill();
    let _ = portal.wait();
    out.assert_ok();
    assert!(!out.json()["device_id"].as_str().unwrap().is_empty());
}

/// The review's hostile hint: sets the terminal title, clears the screen,
/// then claims to enroll alice.
const HOSTILE_HINT: &str = "%1B%5D0%3Bpwned%07%1B%5B2J%1B%5BHEnrolling%20alice";

fn with_hint(uri: &str, hint: &str) -> String {
    let mut fields: Vec<String> = uri
        .split('&')
        .filter(|f| !f.starts_with("u="))
        .map(str::to_string)
        .collect();
    fields.push(format!("u={hint}"));
    fields.join("&")
}

#[test]
fn user_add_shows_the_bound_name_and_no_escapes() {
    if Command::new("script").arg("--version").output().is_err() {
        panic!("script (util-linux) is needed to give fleetkeyctl a terminal");
    }
    let portal = Portal::start();
    let daemon = Daemon::start_default();
    daemon.activate(&portal);

    // Without a terminal (PIN on stdin).
    let uri = with_hint(&portal.user_code("mallory").uri, HOSTILE_HINT);
    let out = daemon.ctl_with_stdin(&["user", "add", &uri, "--pin-stdin"], Some("1234\n"));
    out.assert_ok();
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(!text.contains("alice"), "{text:?}");
    }
    assert!(out.stdout.contains("Enrolled mallory"), "{}", out.stdout);

    // On a terminal, where the PIN is asked (twice) and the person is told
    // what is going on: `script` gives fleetkeyctl a pseudo-terminal.
    let uri = with_hint(&portal.user_code("trudy").uri, HOSTILE_HINT);
    let command_line = format!(
        "{} --socket {} user add '{uri}'",
        bin("fleetkeyctl").display(),
        daemon.socket.display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &command_line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Answer each prompt as it comes.
    std::thread::spawn(move || {
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(700));
            let _ = stdin.write_all(b"1234\r");
            let _ = stdin.flush();
        }
        std::thread::sleep(Duration::from_secs(5));
    });
    let output = child.wait_with_output().unwrap();
    let seen = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{seen:?}");
    assert!(
        !seen.contains('\u{1b}') && !seen.contains('\u{7}'),
        "{seen:?}"
    );
    assert!(!seen.contains("alice"), "{seen:?}");
    assert!(seen.contains("Enrolled trudy"), "{seen:?}");
    let users = daemon.ctl(&["--json", "user", "list"]).json();
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mallory", "trudy"]);
}
