//! A harness that runs the real programs: `fleetkey-portal serve`,
//! `fleetkeyd` and `fleetkeyctl`, each in its own temporary directory, on
//! loopback and Unix sockets only. The binaries come from the same target
//! directory as the test (build them first: `cargo build --workspace
//! --bins`; the README's test command does).
//!
//! Helpers panic with a clear message: they are test code.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Fast Argon2 settings so the suite does not spend its time hashing PINs;
/// one test runs with the defaults.
pub const FAST_SOFT_KEYS: &str =
    "[backends.soft]\nargon2_memory_kib = 256\nargon2_iterations = 1\n";

/// A binary built from this workspace.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> or target/<profile>/<bench>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins{})",
        path.display(),
        if dir.ends_with("release") {
            " --release"
        } else {
            ""
        }
    );
    path
}

/// A temporary directory others can enter, for the socket and shared files.
pub fn open_tempdir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("fleetkey-e2e-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A running `fleetkey-portal serve`.
pub struct Portal {
    child: Option<Child>,
    pub url: String,
    pub db: PathBuf,
    _dir: TempDir,
}

/// A code issued by the portal.
#[derive(Debug, Clone)]
pub struct Issued {
    pub code: String,
    pub uri: String,
}

impl Portal {
    pub fn start() -> Portal {
        Self::start_with(&[])
    }

    /// A portal with extra `serve` arguments.
    pub fn start_with(extra: &[&str]) -> Portal {
        let dir = open_tempdir();
        let db = dir.path().join("portal.db");
        let (child, url) = Self::spawn(&db, "127.0.0.1:0", extra);
        Portal {
            child: Some(child),
            url,
            db,
            _dir: dir,
        }
    }

    fn spawn(db: &Path, listen: &str, extra: &[&str]) -> (Child, String) {
        let mut child = Command::new(bin("fleetkey-portal"))
            .args(["serve", "--listen", listen, "--db"])
            .arg(db)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fleetkey-portal");
        let stdout = child.stdout.take().expect("portal stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read portal URL");
        let url = line.trim().to_string();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "portal printed {url:?}"
        );
        (child, url)
    }

    /// Stops the portal process; its database stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same address and database.
    pub fn start_again(&mut self) {
        self.stop();
        let listen = self.url.trim_start_matches("http://").to_string();
        let (child, url) = Self::spawn(&self.db, &listen, &[]);
        assert_eq!(url, self.url);
        self.child = Some(child);
    }

    /// Runs a `fleetkey-portal` subcommand on this portal's database.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(bin("fleetkey-portal"));
        command.args(args).arg("--db").arg(&self.db);
        command.output().expect("run fleetkey-portal")
    }

    /// Issues a code; `user` None makes a device code.
    pub fn issue(&self, user: Option<&str>, ttl_seconds: u64) -> Issued {
        let ttl = ttl_seconds.to_string();
        let mut args = vec!["code", "issue", "--json", "--ttl", &ttl];
        match user {
            Some(user) => args.extend(["--kind", "user", "--user", user]),
            None => args.extend(["--kind", "device"]),
        }
        let output = self.cli(&args);
        assert!(
            output.status.success(),
            "code issue failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: Value = serde_json::from_slice(&output.stdout).expect("code issue JSON");
        Issued {
            code: json["code"].as_str().expect("code").to_string(),
            uri: json["uri"].as_str().expect("uri").to_string(),
        }
    }

    pub fn device_code(&self) -> Issued {
        self.issue(None, 600)
    }

    pub fn user_code(&self, user: &str) -> Issued {
        self.issue(Some(user), 600)
    }

    /// Issues an add-user code and writes its QR code as a PNG
    /// (`code issue --qr-png FILE`), as an admin would screenshot it.
    pub fn user_code_png(&self, user: &str, png: &Path) -> Issued {
        let png_arg = png.to_str().expect("UTF-8 path");
        let output = self.cli(&[
            "code", "issue", "--json", "--kind", "user", "--user", user, "--qr-png", png_arg,
        ]);
        assert!(
            output.status.success(),
            "code issue failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: Value = serde_json::from_slice(&output.stdout).expect("code issue JSON");
        assert!(png.exists(), "code issue wrote no PNG");
        Issued {
            code: json["code"].as_str().expect("code").to_string(),
            uri: json["uri"].as_str().expect("uri").to_string(),
        }
    }

    /// `fleetkey-portal device list --json`: an array of devices.
    pub fn device_list(&self) -> Value {
        let output = self.cli(&["device", "list", "--json"]);
        assert!(output.status.success(), "device list: {output:?}");
        serde_json::from_slice(&output.stdout).expect("device list JSON")
    }

    /// `fleetkey-portal user show NAME --json`, or None when it fails.
    pub fn user_show(&self, user: &str) -> Option<Value> {
        let output = self.cli(&["user", "show", user, "--json"]);
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).expect("user show JSON"))
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `fleetkeyd` with its own state directory and socket.
pub struct Daemon {
    child: Option<Child>,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts a daemon with the given config file text.
    pub fn start(config: &str) -> Daemon {
        let dir = open_tempdir();
        let socket = dir.path().join("fleetkeyd.sock");
        let config_path = dir.path().join("fleetkeyd.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut daemon = Daemon {
            child: None,
            log: dir.path().join("fleetkeyd.log"),
            dir,
            socket,
            config: config_path,
        };
        daemon.spawn();
        daemon
    }

    /// Starts a daemon on a copy of another daemon's state directory (as if
    /// the disk were moved to another machine).
    pub fn start_with_state_of(config: &str, other: &Daemon) -> Daemon {
        let dir = open_tempdir();
        let socket = dir.path().join("fleetkeyd.sock");
        let config_path = dir.path().join("fleetkeyd.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut daemon = Daemon {
            child: None,
            log: dir.path().join("fleetkeyd.log"),
            dir,
            socket,
            config: config_path,
        };
        let to = daemon.state_dir();
        std::fs::create_dir_all(&to).expect("state dir");
        for entry in std::fs::read_dir(other.state_dir()).expect("read state dir") {
            let entry = entry.expect("state entry");
            if entry.file_type().expect("file type").is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy state");
            }
        }
        daemon.spawn();
        daemon
    }

    /// Signs `data` as `user` with `pin` (`--json`); writes the DER
    /// signature next to the data, as `<data>.sig`.
    pub fn sign(&self, user: &str, pin: &str, data: &Path) -> Ctl {
        let sig = data.with_extension("sig");
        self.ctl_with_stdin(
            &[
                "--json",
                "sign",
                "--user",
                user,
                "--in",
                data.to_str().expect("utf-8 path"),
                "--out",
                sig.to_str().expect("utf-8 path"),
                "--pin-stdin",
            ],
            Some(&format!("{pin}\n")),
        )
    }

    /// `fleetkeyctl --json user add CODE --backend BACKEND --pin-stdin`,
    /// whatever its outcome.
    pub fn add_user_by_code(&self, code: &str, pin: &str, backend: &str) -> Ctl {
        self.ctl_with_stdin(
            &[
                "--json",
                "user",
                "add",
                code,
                "--backend",
                backend,
                "--pin-stdin",
            ],
            Some(&format!("{pin}\n")),
        )
    }

    /// Enrolls a user in the named key store; returns the JSON answer.
    pub fn add_user_with(&self, portal: &Portal, user: &str, pin: &str, backend: &str) -> Value {
        let code = portal.user_code(user);
        let out = self.add_user_by_code(&code.uri, pin, backend);
        out.assert_ok();
        out.json()
    }

    /// A daemon with fast software keys and no default portal.
    pub fn start_default() -> Daemon {
        Self::start(FAST_SOFT_KEYS)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let child = Command::new(bin("fleetkeyd"))
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(self.state_dir())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start fleetkeyd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("fleetkeyd exited with {status}: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("fleetkeyd did not come up: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash or power cut would stop it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("wait");
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = i32::try_from(child.id()).expect("pid");
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        child.wait().expect("wait")
    }

    /// Stops the daemon (SIGKILL, if it runs) and starts it again.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Runs fleetkeyctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Ctl {
        self.ctl_with_stdin(args, None)
    }

    pub fn ctl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Ctl {
        Ctl::run(Command::new(bin("fleetkeyctl")), &self.socket, args, stdin)
    }

    /// Runs fleetkeyctl as another Unix user (needs root and setpriv).
    pub fn ctl_as(&self, uid: u32, args: &[&str], stdin: Option<&str>) -> Ctl {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(bin("fleetkeyctl"));
        Ctl::run(command, &self.socket, args, stdin)
    }

    /// Activates with a fresh device code; returns the device id.
    pub fn activate(&self, portal: &Portal) -> String {
        let out = self.ctl(&["--json", "activate", &portal.device_code().uri]);
        out.assert_ok();
        out.json()["device_id"]
            .as_str()
            .expect("device_id")
            .to_string()
    }

    /// Enrolls a user with a fresh code and PIN; returns the JSON answer.
    pub fn add_user(&self, portal: &Portal, user: &str, pin: &str) -> Value {
        let code = portal.user_code(user);
        let out = self.ctl_with_stdin(
            &["--json", "user", "add", &code.uri, "--pin-stdin"],
            Some(&format!("{pin}\n")),
        );
        out.assert_ok();
        out.json()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What a fleetkeyctl run printed, and how it exited.
#[derive(Debug)]
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    fn run(mut command: Command, socket: &Path, args: &[&str], stdin: Option<&str>) -> Ctl {
        command
            .arg("--socket")
            .arg(socket)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("run fleetkeyctl");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            // A command that fails before reading its input (a bad image,
            // a mistyped code) closes stdin early: that is not an error.
            if let Err(e) = pipe.write_all(text.as_bytes()) {
                assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
            }
        }
        let output = child.wait_with_output().expect("fleetkeyctl output");
        Ctl {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    pub fn assert_ok(&self) {
        assert_eq!(self.code, 0, "fleetkeyctl failed: {self:?}");
    }

    /// Asserts a `--json` failure with this reason and exit code.
    pub fn assert_reason(&self, reason: fleetkey_proto::Reason) -> Value {
        let json = self.json();
        assert_eq!(
            json["error"]["reason"].as_str(),
            Some(reason.as_str()),
            "unexpected answer: {self:?}"
        );
        assert_eq!(
            self.code,
            i32::from(reason.exit_code()),
            "exit code: {self:?}"
        );
        let message = json["error"]["message"].as_str().unwrap_or("");
        assert!(!message.is_empty(), "a failure needs a message: {self:?}");
        json
    }
}

/// A running swtpm (started by `tests/swtpm/start.sh`), with an EK
/// certificate from a local test CA, on free loopback ports and its own
/// state directory. swtpm serves one client at a time, so each test starts
/// its own. Stopped on drop; `restart` keeps the TPM's state, as a reboot.
pub struct Swtpm {
    pub tcti: String,
    pub port: u16,
    pub state: PathBuf,
    pub ca: PathBuf,
    _dir: Option<TempDir>,
}

impl Swtpm {
    /// A new TPM with its own test CA.
    pub fn start() -> Swtpm {
        let mut tpm = Swtpm::start_unspawned();
        tpm.spawn();
        tpm
    }

    /// A new TPM whose EK certificate is signed by `other`'s test CA.
    pub fn start_with_ca_of(other: &Swtpm) -> Swtpm {
        let mut tpm = Swtpm::start_unspawned();
        tpm.ca = other.ca.clone();
        tpm.spawn();
        tpm
    }

    fn start_unspawned() -> Swtpm {
        let dir = open_tempdir();
        Swtpm {
            tcti: String::new(),
            port: 0,
            state: dir.path().join("tpm"),
            ca: dir.path().join("ca"),
            _dir: Some(dir),
        }
    }

    /// The repository's swtpm start script.
    pub fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../swtpm/start.sh")
    }

    fn spawn(&mut self) {
        // Another test may take the probed ports before swtpm binds them:
        // try a few pairs.
        let mut failure = String::new();
        for _ in 0..5 {
            let port = free_port_pair();
            let output = Command::new(Self::script())
                .arg(&self.state)
                .arg(port.to_string())
                .arg(&self.ca)
                .output()
                .expect("run tests/swtpm/start.sh");
            if output.status.success() {
                self.tcti = String::from_utf8_lossy(&output.stdout).trim().to_string();
                self.port = port;
                return;
            }
            failure = String::from_utf8_lossy(&output.stderr).into_owned();
        }
        panic!("tests/swtpm/start.sh failed: {failure}");
    }

    /// The TPM's EK certificate chain root (the test CA's root certificate).
    pub fn ca_root(&self) -> PathBuf {
        self.ca.join("swtpm-localca-rootca-cert.pem")
    }

    /// The CA certificates of the TPM's EK certificate chain (the test CA's
    /// root and the issuing certificate under it) in one PEM file, as
    /// `fleetkey-portal serve --tpm-ek-roots` takes them.
    pub fn ek_ca_bundle(&self) -> PathBuf {
        let mut pem = std::fs::read(self.ca_root()).expect("the test CA's root certificate");
        pem.extend(std::fs::read(self.ca.join("issuercert.pem")).expect("the test CA's issuer"));
        let path = self.ca.join("ek-ca-bundle.pem");
        std::fs::write(&path, pem).expect("write the EK CA bundle");
        path
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state.join("swtpm.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// Stops swtpm; its state stays.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling the swtpm this harness started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            // SAFETY: signal 0 only checks that the process exists.
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_file(self.state.join("swtpm.pid"));
        }
    }

    /// A power cut and power on: stops swtpm without TPM2_Shutdown and
    /// starts it again on the same state and port. (A TPM counts an
    /// unorderly restart as one dictionary-attack failure.)
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// An orderly reboot, as the OS does it: TPM2_Shutdown(CLEAR), then
    /// stop and start. Needs the TPM free (no daemon connected).
    pub fn reboot(&mut self) {
        let out = Command::new("timeout")
            .args(["20", "tpm2_shutdown"])
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .output()
            .expect("tpm2_shutdown (tpm2-tools) must be installed");
        assert!(out.status.success(), "tpm2_shutdown: {out:?}");
        self.stop();
        self.start_again();
    }

    fn start_again(&mut self) {
        let output = Command::new(Self::script())
            .arg(&self.state)
            .arg(self.port.to_string())
            .arg(&self.ca)
            .output()
            .expect("run tests/swtpm/start.sh");
        assert!(
            output.status.success(),
            "restarting swtpm failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Runs a tpm2-tools command against this TPM (while no one else is
    /// connected: swtpm serves one client at a time).
    pub fn tpm2(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(tool)
            .args(args)
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .output()
            .unwrap_or_else(|e| panic!("{tool} (tpm2-tools) must be installed: {e}"))
    }

    /// `[backends.tpm]` config for a daemon using this TPM.
    pub fn daemon_config(&self) -> String {
        format!(
            "{FAST_SOFT_KEYS}\n[backends.tpm]\nenabled = true\ntcti = \"{}\"\n",
            self.tcti
        )
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The two virtual readers of pcscd's vpcd driver, as Debian's
/// `/etc/reader.conf.d/vpcd` sets it up (channel 0x8C7B): each is served
/// on its own TCP port, where a card (our simulator) connects.
pub const VPCD_READERS: [(&str, u16); 2] =
    [("Virtual PCD 00 00", 35963), ("Virtual PCD 00 01", 35964)];

/// Only one pcscd can run on a machine (its socket is /run/pcscd), so the
/// tests that need one take this lock.
pub fn pcscd_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether the smartcard tests can run here: they start pcscd, which
/// needs root (for /run/pcscd). Without root they are skipped, unless
/// FLEETKEY_REQUIRE_ROOT_TESTS says they must run.
pub fn pcsc_tests_can_run() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("FLEETKEY_REQUIRE_ROOT_TESTS").is_none(),
        "the smartcard tests must run as root (they start pcscd)"
    );
    eprintln!("not root: the smartcard tests need to start pcscd; CI runs them as root");
    false
}

/// A foreground `pcscd` with only the vpcd driver configured.
pub struct Pcscd {
    child: Option<Child>,
    dir: TempDir,
}

impl Pcscd {
    pub fn start() -> Pcscd {
        let pid_file = Path::new("/run/pcscd/pcscd.pid");
        if let Ok(pid) = std::fs::read_to_string(pid_file) {
            let pid = pid.trim();
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "another pcscd (pid {pid}) is running; stop it (systemctl stop pcscd.socket pcscd) so the tests can run their own"
            );
        }
        let dir = open_tempdir();
        let conf = dir.path().join("reader.conf.d");
        std::fs::create_dir(&conf).expect("mkdir reader.conf.d");
        std::fs::write(
            conf.join("vpcd"),
            "FRIENDLYNAME \"Virtual PCD\"\nDEVICENAME   /dev/null:0x8C7B\nLIBPATH      /usr/lib/pcsc/drivers/serial/libifdvpcd.so\nCHANNELID    0x8C7B\n",
        )
        .expect("write vpcd config");
        let mut pcscd = Pcscd { child: None, dir };
        pcscd.spawn();
        pcscd
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("pcscd.log"))
            .expect("pcscd log");
        let child = Command::new("pcscd")
            .arg("--foreground")
            .arg("--config")
            .arg(self.dir.path().join("reader.conf.d"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start pcscd (apt-get install pcscd vsmartcard-vpcd)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        // Ready when vpcd listens for cards.
        while std::net::TcpStream::connect(("127.0.0.1", VPCD_READERS[1].1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pcscd did not start: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        while !Path::new("/run/pcscd/pcscd.comm").exists() {
            assert!(
                Instant::now() < deadline,
                "pcscd made no socket: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pcscd.log")).unwrap_or_default()
    }

    /// Stops pcscd (SIGTERM, as systemd would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).expect("pid");
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().expect("wait").is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `openssl dgst -sha256 -verify` accepts a DER signature of
/// `data` by the PEM public key.
pub fn openssl_verify(public_key_pem: &str, signature_der: &Path, data: &Path) -> bool {
    let dir = open_tempdir();
    let pem = dir.path().join("pub.pem");
    std::fs::write(&pem, public_key_pem).expect("write PEM");
    let output = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pem)
        .arg("-signature")
        .arg(signature_der)
        .arg(data)
        .output()
        .expect("openssl must be installed");
    output.status.success() && String::from_utf8_lossy(&output.stdout).contains("Verified OK")
}

/// A loopback port whose successor is free too (swtpm's control port).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two free adjacent loopback ports");
}

/// A simulated PIV card (`fleetkey-piv-sim`) in one of vpcd's readers.
/// Its state file outlives the process: removing and inserting the card
/// keeps its keys, PIN and counters.
pub struct SimCard {
    child: Option<Child>,
    pub state: PathBuf,
    pub reader: usize,
    attestation_ca: Option<PathBuf>,
    _dir: Option<TempDir>,
}

impl SimCard {
    /// A new card (factory PIN 123456, PUK 12345678) inserted into reader
    /// `reader` (0 or 1).
    pub fn new(reader: usize) -> SimCard {
        Self::make(reader, None)
    }

    /// A new card that can attest its keys, certified by the simulated
    /// manufacturer CA in `ca` (created if missing; its certificate is
    /// written as `ca` with the extension `.pem`).
    pub fn attesting(reader: usize, ca: &Path) -> SimCard {
        Self::make(reader, Some(ca.to_path_buf()))
    }

    fn make(reader: usize, attestation_ca: Option<PathBuf>) -> SimCard {
        let dir = open_tempdir();
        let state = dir.path().join("card.json");
        let mut card = SimCard {
            child: None,
            state,
            reader,
            attestation_ca,
            _dir: Some(dir),
        };
        card.insert(reader, false);
        card
    }

    /// Inserts the card into `reader`; with `pull_on_sign` it leaves the
    /// reader on the first signature request instead of answering.
    pub fn insert(&mut self, reader: usize, pull_on_sign: bool) {
        self.remove();
        self.reader = reader;
        let mut command = Command::new(bin("fleetkey-piv-sim"));
        command
            .arg("--state")
            .arg(&self.state)
            .arg("--port")
            .arg(VPCD_READERS[reader].1.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if pull_on_sign {
            command.arg("--pull-on-sign");
        }
        if let Some(ca) = &self.attestation_ca {
            command.arg("--attestation-ca").arg(ca);
        }
        let mut child = command.spawn().expect("start fleetkey-piv-sim");
        let stdout = child.stdout.take().expect("sim stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("the simulated card was not seen by pcscd");
        assert_eq!(line.trim(), "ready");
        self.child = Some(child);
        // pcscd has read the ATR; give it a moment to publish the state.
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Pulls the card out of its reader.
    pub fn remove(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            // vpcd notices at pcscd's next presence poll (400 ms).
            std::thread::sleep(Duration::from_millis(900));
        }
    }

    /// Whether the process has gone (e.g. after pulling itself).
    pub fn has_left(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("wait").is_some(),
            None => true,
        }
    }
}

impl Drop for SimCard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
