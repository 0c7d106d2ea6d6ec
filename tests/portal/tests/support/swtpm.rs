//! One swtpm per test, started by tests/swtpm/start.sh on free loopback
//! ports and driven with tpm2-tools. Shared by the portal's unit tests
//! (src/integrity/tests.rs, by `#[path]`) and its swtpm integration
//! tests, so the start-up is written once.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running swtpm; stopped on drop.
pub struct Swtpm {
    pub dir: tempfile::TempDir,
    pub tcti: String,
}

/// A port whose neighbour (swtpm's control port) is free too.
fn free_port_pair() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 65000 && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

impl Swtpm {
    /// A new TPM (with an EK certificate from its own test CA) in a
    /// temporary directory.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../swtpm/start.sh");
        let output = Command::new("bash")
            .arg(&script)
            .arg(dir.path().join("state"))
            .arg(free_port_pair().to_string())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "start.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let tcti = String::from_utf8(output.stdout).unwrap().trim().to_string();
        Self { dir, tcti }
    }

    /// A file in the work directory the tools run in.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a tpm2-tools command in the work directory; its stdout.
    pub fn run(&self, args: &[&str]) -> Result<Vec<u8>, String> {
        let output = Command::new(args[0])
            .args(&args[1..])
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .output()
            .unwrap_or_else(|e| panic!("{} (tpm2-tools) must be installed: {e}", args[0]));
        // Without a resource manager, transient objects stay loaded after
        // each tool; flush them so the TPM's few slots do not run out.
        let _ = Command::new("tpm2_flushcontext")
            .arg("-t")
            .env("TPM2TOOLS_TCTI", &self.tcti)
            .output();
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// [`Swtpm::run`], which must succeed.
    pub fn tool(&self, args: &[&str]) -> Vec<u8> {
        self.run(args)
            .unwrap_or_else(|e| panic!("{} failed: {e}", args.join(" ")))
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.path("state/swtpm.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            // SAFETY: kill(2) on the pid of the swtpm this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}
