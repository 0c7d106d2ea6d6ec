//! The daemon as a system service: SIGHUP reloads the configuration
//! (file and drop-ins), and clients nobody here wrote (Python grpcio from
//! PyPI, generated at test time from proto/) call the API, its gRPC health
//! and its server reflection.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fleetkey_e2e::{Daemon, FAST_SOFT_KEYS, Portal, open_tempdir};
use serde_json::Value;

fn hangup(daemon: &Daemon) {
    let pid = i32::try_from(daemon.pid()).unwrap();
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

/// Waits until the daemon's log holds `text` `times` times.
fn wait_log(daemon: &Daemon, text: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if daemon.log_text().matches(text).count() >= times {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no {text:?} in the log: {}", daemon.log_text());
}

fn pin_policy(daemon: &Daemon) -> Value {
    daemon.ctl(&["--json", "status"]).json()["pin_policy"].clone()
}

/// SIGHUP applies `[pin]` and `log_level` from the file and its drop-ins;
/// a configuration that does not load is logged and the running one
/// stays; settings that need a restart are named in the log.
#[test]
fn sighup_reloads_pin_policy_and_log_level_and_keeps_the_old_on_error() {
    let config = format!("log_level = \"info\"\n{FAST_SOFT_KEYS}");
    let daemon = Daemon::start(&config);
    assert_eq!(pin_policy(&daemon)["min_length"], 4);
    // Drop-ins next to the config file, read at start and at each reload.
    let drop_ins = PathBuf::from(format!("{}.d", daemon.config.display()));
    std::fs::create_dir(&drop_ins).unwrap();
    std::fs::write(
        drop_ins.join("50-pin.toml"),
        "log_level = \"debug\"\n[pin]\nmin_length = 6\nmax_length = 8\n",
    )
    .unwrap();
    hangup(&daemon);
    wait_log(&daemon, "configuration reloaded", 1);
    let policy = pin_policy(&daemon);
    assert_eq!(policy["min_length"], 6, "{policy}");
    assert_eq!(policy["max_length"], 8, "{policy}");
    // The new level is in force: debug lines appear after the reload.
    let before = daemon.log_text().matches("DEBUG").count();
    daemon.ctl(&["--json", "status"]).assert_ok();
    let portal = Portal::start();
    daemon.activate(&portal);
    let after = daemon.log_text().matches("DEBUG").count();
    assert!(
        after > before,
        "no debug lines after the reload: {}",
        daemon.log_text()
    );

    // A bad drop-in: the reload is refused with the file named, and the
    // running policy stays.
    std::fs::write(drop_ins.join("60-bad.toml"), "[pin]\nmin_length = 0\n").unwrap();
    hangup(&daemon);
    wait_log(&daemon, "configuration reload failed", 1);
    let log = daemon.log_text();
    assert!(log.contains("pin.min_length"), "{log}");
    assert_eq!(pin_policy(&daemon)["min_length"], 6);
    std::fs::write(drop_ins.join("60-bad.toml"), "pin_typo = 1\n").unwrap();
    hangup(&daemon);
    wait_log(&daemon, "configuration reload failed", 2);
    assert!(
        daemon.log_text().contains("60-bad.toml"),
        "{}",
        daemon.log_text()
    );
    std::fs::remove_file(drop_ins.join("60-bad.toml")).unwrap();

    // A setting that needs a restart is named, and not applied.
    std::fs::write(drop_ins.join("70-admin.toml"), "admin_group = \"root\"\n").unwrap();
    hangup(&daemon);
    wait_log(&daemon, "configuration reloaded", 2);
    let log = daemon.log_text();
    assert!(
        log.contains("take effect only when fleetkeyd restarts"),
        "{log}"
    );
    assert!(log.contains("admin_group"), "{log}");
    // Still serving after all of it.
    daemon.ctl(&["--json", "status"]).assert_ok();
}

/// A drop-in that does not load stops the daemon at start, naming it.
#[test]
fn a_bad_drop_in_stops_the_start_and_names_the_file() {
    let dir = open_tempdir();
    let config = dir.path().join("fleetkeyd.toml");
    std::fs::write(&config, FAST_SOFT_KEYS).unwrap();
    let drop_ins = dir.path().join("fleetkeyd.toml.d");
    std::fs::create_dir(&drop_ins).unwrap();
    std::fs::write(drop_ins.join("10-x.toml"), "log_level = \"loud\"\n").unwrap();
    let out = Command::new(fleetkey_e2e::bin("fleetkeyd"))
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("10-x.toml"), "{stderr}");
    assert!(stderr.contains("log_level"), "{stderr}");
}

/// The venv `scripts/test.sh` makes (grpcio and grpcio-tools from PyPI):
/// `FLEETKEY_PYTHON`, else target/grpc-venv. None (the test is skipped)
/// when it is missing, unless `FLEETKEY_REQUIRE_PYTHON` says it must run.
fn grpc_python() -> Option<PathBuf> {
    let python = std::env::var_os("FLEETKEY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/grpc-venv/bin/python"));
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("FLEETKEY_REQUIRE_PYTHON").is_none(),
        "FLEETKEY_REQUIRE_PYTHON is set but {} does not exist",
        python.display()
    );
    eprintln!("skipped: no Python with grpcio at {}", python.display());
    None
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python_client(
    python: &Path,
    daemon: &Daemon,
    code: &str,
    authority: &str,
) -> (bool, Value, String) {
    let out_dir = open_tempdir();
    let out = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/grpcio_client.py"))
        .arg(workspace().join("proto/proto"))
        .arg(out_dir.path())
        .arg(&daemon.socket)
        .arg(code)
        .arg(authority)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (out.status.success(), json, stderr)
}

/// A stock grpcio client with the setting docs/clients.md gives (the
/// authority `localhost`) reads status, adds a user, signs (the signature
/// verifies), reads a wrong PIN's reason from ErrorInfo, and sees health
/// SERVING and the API in server reflection.
#[test]
fn python_grpcio_client_calls_status_add_user_sign_health_and_reflection() {
    let Some(python) = grpc_python() else {
        return;
    };
    let portal = Portal::start();
    let daemon = Daemon::start_default();
    daemon.activate(&portal);
    let code = portal.user_code("alice");
    let (ok, seen, stderr) = python_client(&python, &daemon, &code.uri, "localhost");
    assert!(ok, "python client failed: {seen} {stderr}");
    assert_eq!(seen["activated"], true, "{seen}");
    assert_eq!(seen["added"], "alice", "{seen}");
    let info = &seen["wrong_pin"]["error_info"];
    assert_eq!(info["reason"], "PIN_WRONG", "{seen}");
    assert_eq!(info["domain"], "fleetkey.dev", "{seen}");
    assert_eq!(info["metadata"]["tries_left"], "4", "{seen}");
    assert_eq!(
        seen["wrong_pin"]["code"], "StatusCode.UNAUTHENTICATED",
        "{seen}"
    );
    // HealthCheckResponse{status: SERVING}.
    assert_eq!(seen["health"], "0801", "{seen}");
    assert_eq!(seen["reflection_lists_fleetkey"], true, "{seen}");
    // The signature verifies with the key the daemon names.
    let dir = open_tempdir();
    let data = dir.path().join("data");
    std::fs::write(&data, b"signed by python").unwrap();
    let sig = dir.path().join("sig");
    let signature = hex::decode(seen["signature_der"].as_str().unwrap()).unwrap();
    std::fs::write(&sig, signature).unwrap();
    assert!(fleetkey_e2e::openssl_verify(
        seen["public_key_pem"].as_str().unwrap(),
        &sig,
        &data
    ));
}

/// grpcio's own default :authority for a unix: target (the %-encoded
/// socket path) is what h2 rejects as malformed; this records what a
/// stock client gets without the setting, so that docs/clients.md stays
/// true: if a grpcio or h2 release changes it, this test says so.
#[test]
fn python_grpcio_default_authority_is_what_docs_clients_md_says() {
    let Some(python) = grpc_python() else {
        return;
    };
    let portal = Portal::start();
    let daemon = Daemon::start_default();
    daemon.activate(&portal);
    let code = portal.user_code("bob");
    let (ok, seen, stderr) = python_client(&python, &daemon, &code.uri, "");
    let doc = std::fs::read_to_string(workspace().join("docs/clients.md")).unwrap();
    if ok {
        assert!(
            doc.contains("Python grpcio works without the setting"),
            "grpcio's default authority now works; update docs/clients.md: {seen}"
        );
    } else {
        let error = seen["status_error"].as_str().unwrap_or_default();
        assert!(
            doc.contains("RST_STREAM") && doc.contains("grpc.default_authority"),
            "docs/clients.md must explain the failure: {error} {stderr}"
        );
        assert!(
            error.contains("UNAVAILABLE") || error.contains("INTERNAL"),
            "{seen} {stderr}"
        );
    }
}
