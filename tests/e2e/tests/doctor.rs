//! `fleetkeyctl doctor`: each check in a broken state and in a good one,
//! against real programs (daemon, portal, swtpm, pcscd, dbus-daemon).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetkey_e2e::{
    Daemon, FAST_SOFT_KEYS, Pcscd, Portal, Swtpm, bin, open_tempdir, pcsc_tests_can_run, pcscd_lock,
};
use fleetkey_proto::Reason;
use serde_json::Value;

/// No TPM, no smartcards: the checks that need them are skipped.
const SOFT_ONLY: &str = "[backends.tpm]\nenabled = false\n[backends.pcsc]\nenabled = false\n";

/// A system bus address where no bus listens.
const NO_BUS: &str = "unix:path=/nonexistent/fleetkey-test-bus";

struct Report {
    code: i32,
    json: Value,
}

impl Report {
    fn check(&self, name: &str) -> &Value {
        self.json["checks"]
            .as_array()
            .unwrap_or_else(|| panic!("no checks: {}", self.json))
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {}", self.json))
    }

    fn status(&self, name: &str) -> &str {
        self.check(name)["status"].as_str().unwrap_or_default()
    }
}

fn doctor_at(socket: &Path, bus: &str, extra: &[&str]) -> Report {
    let out = Command::new(bin("fleetkeyctl"))
        .arg("--socket")
        .arg(socket)
        .args(["--json", "doctor"])
        .args(extra)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}): {stdout}"));
    let report = Report {
        code: out.status.code().unwrap_or(-1),
        json,
    };
    // The exit status follows the checks.
    let any_failed = report.json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["status"] == "fail");
    if any_failed {
        assert_eq!(
            report.code,
            i32::from(Reason::DoctorProblems.exit_code()),
            "{}",
            report.json
        );
        assert_eq!(report.json["reason"], "DOCTOR_PROBLEMS");
        assert_eq!(report.json["ok"], false);
    } else {
        assert_eq!(report.code, 0, "{}", report.json);
        assert_eq!(report.json["ok"], true);
    }
    for check in report.json["checks"].as_array().unwrap() {
        if check["status"] == "fail" {
            let hint = check["hint"].as_str().unwrap_or_default();
            assert!(!hint.is_empty(), "a failed check needs a fix: {check}");
        }
    }
    report
}

fn doctor(daemon: &Daemon, extra: &[&str]) -> Report {
    doctor_at(&daemon.socket, NO_BUS, extra)
}

#[test]
fn daemon_unreachable_then_reachable_with_its_user() {
    let dir = open_tempdir();
    let report = doctor_at(&dir.path().join("nothing.sock"), NO_BUS, &[]);
    assert_eq!(report.status("daemon"), "fail");
    let hint = report.check("daemon")["hint"].as_str().unwrap();
    assert!(hint.contains("start the daemon"), "{hint}");
    // Checks that need the daemon say so instead of guessing.
    assert_eq!(report.status("tpm"), "skip");
    assert_eq!(report.status("pcsc"), "skip");

    // The text report names each check and its fix.
    let out = Command::new(bin("fleetkeyctl"))
        .arg("--socket")
        .arg(dir.path().join("nothing.sock"))
        .arg("doctor")
        .env("DBUS_SYSTEM_BUS_ADDRESS", NO_BUS)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL  daemon"), "{text}");
    assert!(text.contains("fix: "), "{text}");
    assert_eq!(out.status.code(), Some(65));

    let daemon = Daemon::start(&format!("{FAST_SOFT_KEYS}{SOFT_ONLY}"));
    let report = doctor(&daemon, &[]);
    assert_eq!(report.status("daemon"), "ok", "{}", report.json);
    let summary = report.check("daemon")["summary"].as_str().unwrap();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert!(summary.contains(&format!("run by uid {uid}")), "{summary}");
    assert_eq!(report.status("tpm"), "skip");
    assert_eq!(report.status("pcsc"), "skip");
    // This machine's own report: whatever it finds, it is a report.
    let integrity = report.check("integrity");
    assert!(
        integrity["summary"].as_str().unwrap().starts_with("HSI:"),
        "{integrity}"
    );
}

/// The integrity check reads the daemon's report: ok on a machine where
/// every check passes, a warning naming the failing check and its fix
/// once one fails (a fake machine, `[integrity] root`).
#[test]
fn integrity_ok_then_a_failing_check_named_with_its_fix() {
    let root = fleetkey_integrity::checks::fake::FakeRoot::good();
    root.own_file(
        std::fs::canonicalize(bin("fleetkeyd"))
            .unwrap()
            .to_str()
            .unwrap(),
    );
    let daemon = Daemon::start(&format!(
        "{FAST_SOFT_KEYS}{SOFT_ONLY}[integrity]\nroot = \"{}\"\n",
        root.dir.path().display()
    ));
    root.own_file(
        std::fs::canonicalize(&daemon.config)
            .unwrap()
            .to_str()
            .unwrap(),
    );
    let report = doctor(&daemon, &[]);
    assert_eq!(report.status("integrity"), "ok", "{}", report.json);

    root.write("/proc/cmdline", "root=/dev/sda1 ro init=/bin/sh\n");
    let report = doctor(&daemon, &[]);
    let check = report.check("integrity");
    assert_eq!(check["status"], "warn", "{check}");
    let detail = check["details"]["org.fleetkey.KernelCmdline"]
        .as_str()
        .unwrap_or_else(|| panic!("{check}"));
    assert!(
        detail.contains("init=") && detail.contains("fix:"),
        "{detail}"
    );
    // A warning alone does not fail the doctor.
    assert_eq!(report.code, 0, "{}", report.json);
}

/// A configured TPM device that does not exist: `status` and doctor say
/// "no such device" (not the TSS library's "response code not
/// recognized"); a working TPM shows its dictionary-attack state.
#[test]
fn tpm_missing_device_then_working_tpm() {
    let config = format!(
        "{FAST_SOFT_KEYS}[backends.tpm]\ntcti = \"device:/dev/fleetkey-no-such-tpm\"\n\
         [backends.pcsc]\nenabled = false\n"
    );
    let daemon = Daemon::start(&config);
    let status = daemon.ctl(&["--json", "status"]).json();
    let tpm = status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "tpm")
        .unwrap()
        .clone();
    let reason = tpm["unavailable_reason"].as_str().unwrap();
    assert!(reason.contains("no such device"), "{reason}");
    assert!(reason.contains("/dev/fleetkey-no-such-tpm"), "{reason}");
    assert!(!reason.contains("not recognized"), "{reason}");
    let text = daemon.ctl(&["status"]);
    assert!(text.stdout.contains("no such device"), "{text:?}");
    let report = doctor(&daemon, &[]);
    assert_eq!(report.status("tpm"), "fail");
    let hint = report.check("tpm")["hint"].as_str().unwrap();
    assert!(hint.contains("firmware"), "{hint}");
    drop(daemon);

    let tpm = Swtpm::start();
    let daemon = Daemon::start(&format!(
        "{}[backends.pcsc]\nenabled = false\n",
        tpm.daemon_config()
    ));
    let report = doctor(&daemon, &[]);
    let check = report.check("tpm");
    // swtpm is a simulator: it works, with a warning.
    assert_eq!(check["status"], "warn", "{check}");
    let lockout = check["details"]["lockout"].as_str().unwrap();
    assert!(lockout.contains("failures counted"), "{check}");
    assert!(!lockout.contains("IN LOCKOUT"), "{check}");
    assert!(check["details"]["pin_max_attempts"].is_string(), "{check}");
}

#[test]
fn pcscd_missing_then_running_with_readers() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    let config = format!("{FAST_SOFT_KEYS}[backends.tpm]\nenabled = false\n");
    {
        let daemon = Daemon::start(&config);
        let report = doctor(&daemon, &[]);
        assert_eq!(report.status("pcsc"), "fail", "{}", report.json);
        let hint = report.check("pcsc")["hint"].as_str().unwrap();
        assert!(hint.contains("pcscd"), "{hint}");
    }
    let _pcscd = Pcscd::start();
    let daemon = Daemon::start(&config);
    let report = doctor(&daemon, &[]);
    let check = report.check("pcsc");
    assert_eq!(check["status"], "ok", "{check}");
    assert!(
        check["summary"].as_str().unwrap().contains("2 readers"),
        "{check}"
    );
    assert!(
        check["details"]["reader 0"]
            .as_str()
            .unwrap()
            .contains("Virtual PCD"),
        "{check}"
    );
}

/// This machine has no camera: the check says so (a warning, not a
/// failure) and what to do instead; each node present would be listed
/// with whether the caller may open it.
#[test]
fn cameras_absent_is_a_warning_with_the_alternatives() {
    if !fleetkey_v4l::device::video_nodes(Path::new("/dev")).is_empty() {
        eprintln!("skipped: this machine has cameras");
        return;
    }
    let daemon = Daemon::start(&format!("{FAST_SOFT_KEYS}{SOFT_ONLY}"));
    let report = doctor(&daemon, &[]);
    let check = report.check("cameras");
    assert_eq!(check["status"], "warn", "{check}");
    assert!(
        check["hint"].as_str().unwrap().contains("--qr-image"),
        "{check}"
    );
    assert!(check["details"]["daemon"].is_string(), "{check}");
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A portal served over TLS with a certificate from a test CA.
struct TlsPortal {
    child: Child,
    url: String,
}

impl Drop for TlsPortal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_portal(dir: &Path) -> TlsPortal {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=fleetkey test CA",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "portal.key",
            "-out",
            "portal.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        dir,
    );
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "portal.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "portal.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
        dir,
    );
    let mut child = Command::new(bin("fleetkey-portal"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.join("portal.db"))
        .arg("--tls-cert")
        .arg(dir.join("portal.pem"))
        .arg("--tls-key")
        .arg(dir.join("portal.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let url = String::from_utf8(line).unwrap().trim().to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    TlsPortal { child, url }
}

/// The portal: unreachable, then a TLS certificate the machine does not
/// trust, then trusted and reachable with the clock skew measured; and
/// the activated device's own portal by default.
#[test]
fn portal_unreachable_untrusted_then_valid_with_clock_skew() {
    let daemon = Daemon::start(&format!("{FAST_SOFT_KEYS}{SOFT_ONLY}"));
    let report = doctor(&daemon, &[]);
    assert_eq!(report.status("portal"), "skip", "{}", report.json);

    let report = doctor(&daemon, &["--portal-url", "http://127.0.0.1:1"]);
    let check = report.check("portal");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["summary"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"),
        "{check}"
    );

    let dir = open_tempdir();
    let portal = tls_portal(dir.path());
    let report = doctor(&daemon, &["--portal-url", &portal.url]);
    let check = report.check("portal");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["summary"].as_str().unwrap().contains("certificate"),
        "{check}"
    );
    assert!(
        check["hint"].as_str().unwrap().contains("portal_ca_file"),
        "{check}"
    );

    let ca = dir.path().join("ca.pem");
    let report = doctor(
        &daemon,
        &[
            "--portal-url",
            &portal.url,
            "--portal-ca",
            ca.to_str().unwrap(),
        ],
    );
    let check = report.check("portal");
    assert_eq!(check["status"], "ok", "{check}");
    assert!(
        check["summary"]
            .as_str()
            .unwrap()
            .contains("TLS certificate valid"),
        "{check}"
    );
    let skew: i64 = check["details"]["clock_skew_seconds"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(skew.abs() <= 2, "{check}");

    // Once activated, the device's portal is checked without a flag.
    let plain = Portal::start();
    daemon.activate(&plain);
    let report = doctor(&daemon, &[]);
    let check = report.check("portal");
    assert_eq!(check["status"], "ok", "{check}");
    assert_eq!(check["details"]["url"], plain.url.as_str(), "{check}");
}

/// A private dbus-daemon standing in for the system bus.
struct Bus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_bus() -> Bus {
    let dir = open_tempdir();
    let socket = dir.path().join("bus");
    let config = dir.path().join("bus.conf");
    std::fs::write(
        &config,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
             <busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
             <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/>\
             <allow send_destination=\"*\"/><allow receive_sender=\"*\"/></policy></busconfig>\n",
            socket.display()
        ),
    )
    .unwrap();
    let child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .arg("--nofork")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dbus-daemon (package dbus) must be installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "dbus-daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Bus {
        child,
        address: format!("unix:path={}", socket.display()),
        _dir: dir,
    }
}

/// Appends `value` to a D-Bus message buffer after padding to `align`.
fn pad(buffer: &mut Vec<u8>, align: usize) {
    while !buffer.len().is_multiple_of(align) {
        buffer.push(0);
    }
}

fn put_string(buffer: &mut Vec<u8>, text: &str) {
    pad(buffer, 4);
    buffer.extend_from_slice(&u32::try_from(text.len()).unwrap().to_le_bytes());
    buffer.extend_from_slice(text.as_bytes());
    buffer.push(0);
}

/// A method call to the bus itself, marshalled by hand (D-Bus
/// specification, little-endian): `member` with a body of signature `su`
/// or none.
fn bus_call(serial: u32, member: &str, name: Option<&str>) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(name) = name {
        put_string(&mut body, name);
        pad(&mut body, 4);
        body.extend_from_slice(&4u32.to_le_bytes()); // DBUS_NAME_FLAG_DO_NOT_QUEUE
    }
    let mut fields = Vec::new();
    let mut field = |code: u8, signature: u8, value: &str| {
        pad(&mut fields, 8);
        fields.extend_from_slice(&[code, 1, signature, 0]);
        if signature == b'g' {
            fields.push(u8::try_from(value.len()).unwrap());
            fields.extend_from_slice(value.as_bytes());
            fields.push(0);
        } else {
            put_string(&mut fields, value);
        }
    };
    field(1, b'o', "/org/freedesktop/DBus");
    field(2, b's', "org.freedesktop.DBus");
    field(3, b's', member);
    field(6, b's', "org.freedesktop.DBus");
    if name.is_some() {
        field(8, b'g', "su");
    }
    let mut message = vec![b'l', 1, 0, 1];
    message.extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
    message.extend_from_slice(&serial.to_le_bytes());
    message.extend_from_slice(&u32::try_from(fields.len()).unwrap().to_le_bytes());
    // The fields array starts at offset 16, already 8-aligned.
    message.extend_from_slice(&fields);
    pad(&mut message, 8);
    message.extend_from_slice(&body);
    message
}

/// Connects to the bus and takes `name`; the name is owned while the
/// returned stream stays open.
fn own_name(bus: &Bus, name: &str) -> UnixStream {
    let path = bus.address.strip_prefix("unix:path=").unwrap();
    let mut stream = UnixStream::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() }.to_string();
    stream
        .write_all(format!("\0AUTH EXTERNAL {}\r\n", hex::encode(uid)).as_bytes())
        .unwrap();
    let mut answer = [0u8; 256];
    let n = stream.read(&mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"OK "),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    stream.write_all(b"BEGIN\r\n").unwrap();
    stream.write_all(&bus_call(1, "Hello", None)).unwrap();
    stream
        .write_all(&bus_call(2, "RequestName", Some(name)))
        .unwrap();
    stream
}

fn name_owned(bus: &Bus, name: &str) -> bool {
    let out = Command::new("busctl")
        .args([
            "--system",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            name,
        ])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "b true"
}

/// No bus: a warning (the gRPC socket works regardless). A bus where
/// nobody owns org.fleetkey.Daemon1: a failure. Owned: ok, with its owner.
#[test]
fn dbus_no_bus_then_name_unowned_then_owned() {
    let daemon = Daemon::start(&format!("{FAST_SOFT_KEYS}{SOFT_ONLY}"));
    let report = doctor(&daemon, &[]);
    assert_eq!(report.status("dbus"), "warn", "{}", report.json);

    let bus = start_bus();
    let report = doctor_at(&daemon.socket, &bus.address, &[]);
    let check = report.check("dbus");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["hint"]
            .as_str()
            .unwrap()
            .contains("journalctl -u fleetkeyd"),
        "{check}"
    );

    let _owner = own_name(&bus, "org.fleetkey.Daemon1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !name_owned(&bus, "org.fleetkey.Daemon1") {
        assert!(
            Instant::now() < deadline,
            "the stand-in never owned the name"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = doctor_at(&daemon.socket, &bus.address, &[]);
    let check = report.check("dbus");
    assert_eq!(check["status"], "ok", "{check}");
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert!(
        check["details"]["owner"]
            .as_str()
            .unwrap()
            .starts_with(&format!("uid {uid}")),
        "{check}"
    );
}

/// The portal's clock off this machine's (the portal runs under
/// libfaketime): 20 s is a warning, 5 minutes a failure, each with the
/// fix; the measured skew is the offset.
#[test]
fn portal_clock_skew_warns_then_fails() {
    let daemon = Daemon::start(&format!("{FAST_SOFT_KEYS}{SOFT_ONLY}"));
    for (offset, status) in [(-20i64, "warn"), (300, "fail")] {
        let portal = Portal::start_with_clock_offset(offset);
        let report = doctor(&daemon, &["--portal-url", &portal.url]);
        let check = report.check("portal");
        assert_eq!(check["status"], status, "{check}");
        let skew: i64 = check["details"]["clock_skew_seconds"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((skew - offset).abs() <= 2, "{offset}: {check}");
        assert!(
            check["hint"].as_str().unwrap().contains("timedatectl"),
            "{check}"
        );
        let failed = status == "fail";
        assert_eq!(report.code == 65, failed, "{}", report.json);
    }
}
