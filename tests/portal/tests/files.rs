//! The portal's files on disk, with the real binary: private to the user
//! running it (a second uid cannot read them), and no issued code in them.
//! Runs as root, reading as a second uid through `setpriv`, as the e2e
//! tests do.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use fleetkey_proto::ActivationCode;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_fleetkey-portal");
/// The second uid (nobody).
const OTHER_UID: u32 = 65534;

fn portal(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FLEETKEY_PORTAL_DB")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(db: &Path) -> Serving {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("http://127.0.0.1:"), "{line:?}");
    Serving(child)
}

/// Whether uid `OTHER_UID` can read `path` (`setpriv ... cat`).
fn readable_by_other_uid(path: &Path) -> bool {
    let output = Command::new("setpriv")
        .arg(format!("--reuid={OTHER_UID}"))
        .arg(format!("--regid={OTHER_UID}"))
        .arg("--clear-groups")
        .arg("cat")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run setpriv (util-linux)");
    output.status.success()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path).is_ok_and(|bytes| {
        bytes
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    })
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

#[test]
fn a_second_uid_cannot_read_the_portal_files_and_no_code_is_in_them() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test reads as a second uid through setpriv, which needs root"
    );
    let dir = tempfile::tempdir().unwrap();
    // Others may enter the directory, so only the files' own modes stand
    // between them and the files.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.path().join("portal.db");
    // A database left world-readable (by an older portal, or a copy): the
    // portal narrows it when it opens it.
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The control: a file the second uid can read, so a refusal below is
    // the files' modes, not the setup.
    let control = dir.path().join("control");
    std::fs::write(&control, b"readable").unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(readable_by_other_uid(&control), "the second uid reads 0644");

    let _server = serve(&db);
    let output = portal(&[
        "code",
        "issue",
        "--json",
        "--db",
        db.to_str().unwrap(),
        "--kind",
        "user",
        "--user",
        "carol-unmistakable",
    ]);
    assert!(output.status.success(), "{output:?}");
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let code = ActivationCode::parse(json["code"].as_str().unwrap()).unwrap();

    let wal = with_suffix(&db, "-wal");
    let shm = with_suffix(&db, "-shm");
    let key = with_suffix(&db, ".key");
    let files = [&db, &wal, &shm, &key];
    for file in files {
        assert!(file.exists(), "{} exists while serving", file.display());
        assert_eq!(mode(file), 0o600, "{}", file.display());
        assert!(
            !readable_by_other_uid(file),
            "uid {OTHER_UID} read {}",
            file.display()
        );
    }

    // The issued, unused code's row is on disk (its user name is there in
    // the WAL or the file) ...
    assert!(
        [&db, &wal]
            .iter()
            .any(|f| contains(f, "carol-unmistakable")),
        "the code's row is in the files searched"
    );
    // ... but not the code, in either form, in any file.
    for form in [code.compact().to_string(), code.to_string()] {
        for file in files {
            assert!(
                !contains(file, &form),
                "{} holds the code {form}",
                file.display()
            );
        }
    }
}
