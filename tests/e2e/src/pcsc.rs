//! The smartcard fixtures: a foreground `pcscd` with the vpcd driver and
//! simulated PIV cards in its readers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::*;

/// The two virtual readers of pcscd's vpcd driver, as the tests' own
/// pcscd configures it: each is served on its own TCP port, where a card
/// (our simulator) connects. Debian's `/etc/reader.conf.d/vpcd` uses
/// channel 0x8C7B (ports 35963 and 35964), inside the kernel's ephemeral
/// port range (32768-60999): a client connection of an earlier test (to
/// the portal, say) left in TIME_WAIT on one of them made vpcd's bind
/// fail ("Address already in use"). Channel 0x6C7B (27771, 27772) is
/// below that range.
pub const VPCD_READERS: [(&str, u16); 2] =
    [("Virtual PCD 00 00", 27771), ("Virtual PCD 00 01", 27772)];

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
            "FRIENDLYNAME \"Virtual PCD\"\nDEVICENAME   /dev/null:0x6C7B\nLIBPATH      /usr/lib/pcsc/drivers/serial/libifdvpcd.so\nCHANNELID    0x6C7B\n",
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
