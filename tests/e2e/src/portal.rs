//! The reference portal fixture: `fleetkey-portal serve` and its CLI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

use crate::*;

/// A running `fleetkey-portal serve`.
pub struct Portal {
    child: Option<Child>,
    /// The URL it advertises (in codes), which devices use.
    pub url: String,
    /// The address it listens on.
    pub listen: String,
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
        Self::start_under(&[], extra)
    }

    /// A portal whose clock runs `offset_seconds` off this machine's
    /// (under libfaketime's `faketime`), for clock-skew checks.
    pub fn start_with_clock_offset(offset_seconds: i64) -> Portal {
        let offset = format!("{offset_seconds:+}s");
        Self::start_under(&["faketime", "-f", &offset], &[])
    }

    /// A portal started through `wrapper` (a program and its arguments,
    /// given the portal's command line after them).
    fn start_under(wrapper: &[&str], extra: &[&str]) -> Portal {
        let dir = open_tempdir();
        let db = dir.path().join("portal.db");
        let (child, url) = Self::spawn(wrapper, &db, "127.0.0.1:0", extra);
        Portal {
            child: Some(child),
            listen: url.trim_start_matches("http://").to_string(),
            url,
            db,
            _dir: dir,
        }
    }

    /// A portal on a free loopback port that advertises
    /// `public_url(listen address)` instead (a proxy in front of it).
    pub fn start_behind(public_url: impl FnOnce(&str) -> String, extra: &[&str]) -> Portal {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let listen = free.local_addr().expect("address").to_string();
        drop(free);
        let url = public_url(&listen);
        let mut args = vec!["--public-url", url.as_str()];
        args.extend_from_slice(extra);
        let dir = open_tempdir();
        let db = dir.path().join("portal.db");
        let (child, printed) = Self::spawn(&[], &db, &listen, &args);
        assert_eq!(printed, url);
        Portal {
            child: Some(child),
            url,
            listen,
            db,
            _dir: dir,
        }
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the portal process: stopped,
    /// it accepts connections but answers nothing.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill on the pid of our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    fn spawn(wrapper: &[&str], db: &Path, listen: &str, extra: &[&str]) -> (Child, String) {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(bin("fleetkey-portal"));
                command
            }
            None => Command::new(bin("fleetkey-portal")),
        };
        // A process group of its own: a wrapper (faketime) may run the
        // portal as its child, and stopping must stop both.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
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
            // SAFETY: kill of the process group our own child leads.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same address and database.
    pub fn start_again(&mut self) {
        self.stop();
        let listen = self.listen.clone();
        let (child, url) = Self::spawn(&[], &self.db, &listen, &[]);
        assert_eq!(url, self.url);
        self.child = Some(child);
    }

    /// Runs a `fleetkey-portal` subcommand on this portal's database.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(bin("fleetkey-portal"));
        command.args(args).arg("--db").arg(&self.db);
        command.output().expect("run fleetkey-portal")
    }

    /// Each user's active credential id at the portal (`user list`);
    /// fails on a user with two.
    pub fn active_credentials(&self) -> std::collections::BTreeMap<String, String> {
        let listed = self.cli(&["user", "list", "--json"]);
        assert!(listed.status.success(), "{listed:?}");
        let listed: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
        let mut users = std::collections::BTreeMap::new();
        for entry in listed.as_array().expect("array") {
            let name = entry["user"].as_str().expect("user").to_string();
            let credential = entry["credential_id"].as_str().expect("id").to_string();
            assert!(
                users.insert(name, credential).is_none(),
                "two credentials at the portal: {entry}"
            );
        }
        users
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
        self.code_png(Some(user), png)
    }

    /// Issues a device code and writes its QR code as a PNG.
    pub fn device_code_png(&self, png: &Path) -> Issued {
        self.code_png(None, png)
    }

    fn code_png(&self, user: Option<&str>, png: &Path) -> Issued {
        let png_arg = png.to_str().expect("UTF-8 path");
        let mut args = vec!["code", "issue", "--json", "--qr-png", png_arg];
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
