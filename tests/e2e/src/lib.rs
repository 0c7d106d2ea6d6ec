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
        let dir = open_tempdir();
        let db = dir.path().join("portal.db");
        let (child, url) = Self::spawn(&db, "127.0.0.1:0");
        Portal {
            child: Some(child),
            url,
            db,
            _dir: dir,
        }
    }

    fn spawn(db: &Path, listen: &str) -> (Child, String) {
        let mut child = Command::new(bin("fleetkey-portal"))
            .args(["serve", "--listen", listen, "--db"])
            .arg(db)
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
        let (child, url) = Self::spawn(&self.db, &listen);
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
            pipe.write_all(text.as_bytes()).expect("write stdin");
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
