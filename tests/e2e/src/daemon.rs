//! The daemon fixture (`fleetkeyd` with its own state and socket) and
//! `fleetkeyctl` runs against it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::*;

/// A running `fleetkeyd` with its own state directory and socket.
pub struct Daemon {
    child: Option<Child>,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Extra environment for the daemon process (e.g. a private bus).
    pub env: Vec<(String, String)>,
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
            env: Vec::new(),
        };
        daemon.spawn();
        daemon
    }

    /// Starts a daemon with the given config file text and extra
    /// environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Daemon {
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
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
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
            env: Vec::new(),
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
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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
        sigterm(&child);
        child.wait().expect("wait")
    }

    /// SIGTERM; returns the exit status, or None if the daemon has not
    /// exited within `limit` (it is then killed).
    pub fn terminate_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take().expect("running");
        sigterm(&child);
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
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

    /// Each user's credential id on the device (`user list`); fails on a
    /// pending (half-made) user or a name listed twice.
    pub fn enrolled_credentials(&self) -> std::collections::BTreeMap<String, String> {
        let listed = self.ctl(&["--json", "user", "list"]);
        listed.assert_ok();
        let mut users = std::collections::BTreeMap::new();
        for user in listed.json()["users"].as_array().expect("array") {
            let name = user["user"].as_str().expect("user").to_string();
            let credential = user["credential_id"].as_str().expect("id").to_string();
            // A pending user has no credential yet.
            assert!(!credential.is_empty(), "a pending user: {user}");
            assert!(
                users.insert(name, credential).is_none(),
                "listed twice: {user}"
            );
        }
        users
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

/// Key files in the soft store, and leftovers of unfinished writes.
pub fn soft_keys(daemon: &Daemon) -> (usize, Vec<String>) {
    let dir = daemon.state_dir().join("soft-keys");
    let mut keys = 0;
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("soft-keys") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".key") {
            keys += 1;
        } else {
            leftovers.push(name);
        }
    }
    (keys, leftovers)
}

/// The daemon's users, the soft store's keys and the portal's credentials
/// agree exactly: no user half-made, no key orphaned, no credential at the
/// portal without its user here. Returns how many users there are.
pub fn assert_agree(daemon: &Daemon, portal: &Portal, after: &str) -> usize {
    let device = daemon.enrolled_credentials();
    let at_portal = portal.active_credentials();
    assert_eq!(device, at_portal, "device and portal disagree {after}");
    let (keys, leftovers) = soft_keys(daemon);
    assert_eq!(keys, device.len(), "keys and users disagree {after}");
    assert!(
        leftovers.is_empty(),
        "unfinished key files {after}: {leftovers:?}"
    );
    device.len()
}

/// Sends SIGTERM to a child process (the daemon's orderly stop).
fn sigterm(child: &std::process::Child) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}
