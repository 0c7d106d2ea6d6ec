//! The software TPM fixture (`tests/swtpm/start.sh`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::*;

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

    /// Sets the TPM's lockout authorization (`tpm2_changeauth -c lockout`;
    /// nothing else may have the TPM open).
    pub fn set_lockout_auth(&self, auth: &str) {
        let out = self.tpm2("tpm2_changeauth", &["-c", "lockout", auth]);
        assert!(out.status.success(), "tpm2_changeauth -c lockout: {out:?}");
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
