//! Small helpers every fixture uses: finding the workspace's binaries,
//! temporary directories, free ports, and checking signatures with openssl.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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
pub(crate) fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two free adjacent loopback ports");
}

/// A number from the environment (a harness's long form), or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `fleetkey-portal code issue --batch` for `names` (TTL one day) and a
/// PIN file of mode 0600 giving each the PIN 1234, in `dir`: the codes
/// file and the PIN file, as `user add-batch` takes them.
pub fn batch_codes_and_pins(
    portal: &crate::Portal,
    dir: &std::path::Path,
    names: &[String],
) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let mut csv = String::from("name,ttl_seconds\n");
    let mut pin_lines = String::new();
    for name in names {
        csv.push_str(&format!("{name},86400\n"));
        pin_lines.push_str(&format!("{name}\t1234\n"));
    }
    let csv_path = dir.join("users.csv");
    std::fs::write(&csv_path, csv).expect("csv");
    let issued = portal.cli(&["code", "issue", "--batch", csv_path.to_str().expect("path")]);
    assert!(issued.status.success(), "{issued:?}");
    let codes = dir.join("codes.jsonl");
    std::fs::write(&codes, &issued.stdout).expect("codes");
    let pins = dir.join("pins.tsv");
    std::fs::write(&pins, pin_lines).expect("pins");
    std::fs::set_permissions(&pins, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    (codes, pins)
}
