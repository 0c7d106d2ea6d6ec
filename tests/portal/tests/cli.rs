//! The `fleetkey-portal` binary: its stdout, exit statuses and files.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fleetkey_portal::store::{
    CodeKind, Device, EkCertificateStatus, Enrollment, Store, TpmIdentity,
};
use fleetkey_proto::time::now_unix;
use fleetkey_proto::{ActivationCode, EnrollmentPayload};
use p256::ecdsa::SigningKey;
use p256::pkcs8::EncodePublicKey;
use serde_json::Value;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const BIN: &str = env!("CARGO_BIN_EXE_fleetkey-portal");

fn portal(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FLEETKEY_PORTAL_DB")
        .env_remove("FLEETKEY_PORTAL_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[track_caller]
fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
}

/// Exit status 1 with an `error: ...` line on stderr and nothing on stdout.
#[track_caller]
fn assert_error(output: &Output, needle: &str) {
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(output));
    let err = stderr(output);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(output.stdout.is_empty(), "stdout: {}", stdout(output));
}

/// A usage error: exit status 2, a message on stderr naming `needle`,
/// nothing on stdout.
#[track_caller]
fn assert_usage_error(output: &Output, needle: &str) {
    assert_eq!(output.status.code(), Some(2), "stderr: {}", stderr(output));
    let err = stderr(output);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(output.stdout.is_empty(), "stdout: {}", stdout(output));
}

fn db_in(dir: &tempfile::TempDir) -> String {
    dir.path().join("portal.db").to_str().unwrap().to_string()
}

fn issue_json(args: &[&str]) -> Value {
    let output = portal(&[&["code", "issue", "--json"], args].concat());
    assert_ok(&output);
    serde_json::from_str(&stdout(&output)).unwrap()
}

#[test]
fn code_issue_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let before = now_unix();
    let json = issue_json(&[
        "--db",
        &db,
        "--kind",
        "user",
        "--user",
        "alice smith",
        "--ttl",
        "120",
        "--portal-url",
        "https://portal.example:8443/fleet",
    ]);
    let code = ActivationCode::parse(json["code"].as_str().unwrap()).unwrap();
    assert_eq!(
        json["code"].as_str().unwrap(),
        code.to_string(),
        "grouped form"
    );
    let payload = EnrollmentPayload::parse_uri(json["uri"].as_str().unwrap()).unwrap();
    assert_eq!(payload.code, code);
    assert_eq!(payload.portal_url, "https://portal.example:8443/fleet");
    assert_eq!(payload.user_hint.as_deref(), Some("alice smith"));
    let expires_at = payload.expires_at.unwrap();
    assert!((before + 120..=now_unix() + 120).contains(&expires_at));
    assert_eq!(
        json["expires_at"].as_str().unwrap(),
        fleetkey_proto::time::rfc3339(expires_at)
    );
    assert_eq!(json["kind"], "user");
    assert_eq!(json["user"], "alice smith");

    // The code is in the database, unused, bound to the user.
    let store = Store::open(Path::new(&db)).unwrap();
    let record = store.db().code(&code).unwrap().unwrap();
    assert_eq!(record.kind, CodeKind::User);
    assert_eq!(record.user.as_deref(), Some("alice smith"));
    assert_eq!(record.expires_at, expires_at);
    assert!(record.used_at.is_none());

    // A device code needs no user.
    let json = issue_json(&[
        "--db",
        &db,
        "--kind",
        "device",
        "--portal-url",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(json["kind"], "device");
    assert!(json["user"].is_null());
    let payload = EnrollmentPayload::parse_uri(json["uri"].as_str().unwrap()).unwrap();
    assert_eq!(payload.user_hint, None);
}

#[test]
fn code_issue_human_output_has_qr_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let output = portal(&[
        "code",
        "issue",
        "--db",
        &db,
        "--kind",
        "device",
        "--portal-url",
        "http://127.0.0.1:7000",
    ]);
    assert_ok(&output);
    let text = stdout(&output);
    assert!(
        text.contains('\u{2580}') || text.contains('\u{2584}'),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no colours when not on a terminal");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} line in {text}"))
            .to_string()
    };
    let code = ActivationCode::parse(&field("Code:")).unwrap();
    let payload = EnrollmentPayload::parse_uri(&field("URI:")).unwrap();
    assert_eq!(payload.code, code);
    assert!(field("Expires:").contains("(in 10 min)"), "default TTL");
}

#[test]
fn code_issue_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let png_path = dir.path().join("code.png");
    let json = issue_json(&[
        "--db",
        &db,
        "--kind",
        "device",
        "--portal-url",
        "http://127.0.0.1:7000",
        "--qr-png",
        png_path.to_str().unwrap(),
    ]);
    assert!(
        json["uri"]
            .as_str()
            .unwrap()
            .starts_with("fleetkey://enroll?")
    );
    let bytes = std::fs::read(&png_path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(info.width, info.height);
    assert_eq!(info.width % 8, 0, "8 pixels per module");
    // At least version 1 (21 modules) plus the 4-module quiet zone.
    assert!(info.width >= (21 + 8) * 8);
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    // White quiet zone, black finder pattern corner.
    assert_eq!(pixels[0], 255);
    let corner = 4 * 8;
    assert_eq!(pixels[corner * info.width as usize + corner], 0);

    // An unwritable path fails the command.
    let output = portal(&[
        "code",
        "issue",
        "--db",
        &db,
        "--kind",
        "device",
        "--portal-url",
        "http://127.0.0.1:7000",
        "--qr-png",
        dir.path().join("missing/dir/code.png").to_str().unwrap(),
    ]);
    assert_error(&output, "cannot write");
}

#[test]
fn code_issue_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let url = "http://127.0.0.1:7000";
    let output = portal(&[
        "code",
        "issue",
        "--db",
        &db,
        "--kind",
        "user",
        "--portal-url",
        url,
    ]);
    // A usage error, as --help promises (issue 16).
    assert_usage_error(&output, "--user");
    // Names follow the one user-name rule (docs/user-names.md).
    for (name, why) in [
        ("", "empty"),
        ("bad name!", "'!'"),
        ("alice\u{200b}", "U+200B"),
        ("\u{202e}ecila", "U+202E"),
        (" alice", "space"),
    ] {
        let output = portal(&[
            "code",
            "issue",
            "--db",
            &db,
            "--kind",
            "user",
            "--user",
            name,
            "--portal-url",
            url,
        ]);
        assert_usage_error(&output, "--user");
        let err = stderr(&output);
        assert!(
            err.contains("USER_NAME_INVALID") && err.contains(why),
            "{name:?}: {err}"
        );
    }
    assert!(
        !Path::new(&db).exists(),
        "nothing was issued, not even a database made"
    );
    // No URL known: neither --portal-url nor a `serve` before.
    let output = portal(&["code", "issue", "--db", &db, "--kind", "device"]);
    assert_error(&output, "no portal URL known");
    let output = portal(&[
        "code",
        "issue",
        "--db",
        &db,
        "--kind",
        "device",
        "--portal-url",
        "ftp://x",
    ]);
    assert_usage_error(&output, "--portal-url");
    // Usage errors from the parser: exit status 2.
    let output = portal(&["code", "issue", "--db", &db, "--kind", "admin"]);
    assert_eq!(output.status.code(), Some(2));
    let output = portal(&[
        "code",
        "issue",
        "--db",
        &db,
        "--kind",
        "device",
        "--ttl",
        "0",
        "--portal-url",
        url,
    ]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn help_explains_the_commands() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["code", "issue", "--help"],
        &["user", "show", "--help"],
        &["user", "list", "--help"],
        &["device", "list", "--help"],
    ] {
        let output = portal(args);
        assert_ok(&output);
        assert!(stdout(&output).contains("Usage:"), "{args:?}");
    }
    let text = stdout(&portal(&["serve", "--help"]));
    assert!(
        text.contains("loopback") && text.contains("--tls-cert"),
        "{text}"
    );
}

/// A running `serve`, killed (SIGKILL) if a test fails before stopping it.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .env_remove("FLEETKEY_PORTAL_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.is_empty() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("serve printed no URL: {err}");
        }
        Self {
            child,
            url: line.trim_end().to_string(),
        }
    }

    /// Sends SIGTERM and waits (at most 20 s) for the exit status.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// Multi-threaded, so that the client's connection task closes its
// connection while the test thread waits for the server to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_its_url_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let server = Server::start(&["--listen", "127.0.0.1:0", "--db", &db]);
    let port: u16 = server
        .url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected URL {}", server.url))
        .parse()
        .unwrap();
    assert_ne!(port, 0);

    // `code issue` takes the URL serve recorded.
    let json = issue_json(&["--db", &db, "--kind", "device"]);
    let payload = EnrollmentPayload::parse_uri(json["uri"].as_str().unwrap()).unwrap();
    assert_eq!(payload.portal_url, server.url);

    // And the server answers at that URL.
    let mut client =
        fleetkey_proto::portal::portal_client::PortalClient::connect(server.url.clone())
            .await
            .unwrap();
    let checked = client
        .check_code(fleetkey_proto::portal::CheckCodeRequest {
            code: payload.code.compact().into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        checked.kind,
        fleetkey_proto::portal::CodeKind::Device as i32
    );
    drop(client);

    let (status, log) = server.terminate();
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("CheckCode"), "RPC outcomes are logged: {log}");
}

#[test]
fn serve_advertises_the_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let server = Server::start(&[
        "--listen",
        "localhost:0",
        "--db",
        &db,
        "--public-url",
        "https://portal.example/fleet",
    ]);
    assert_eq!(server.url, "https://portal.example/fleet");
    let json = issue_json(&["--db", &db, "--kind", "device"]);
    let payload = EnrollmentPayload::parse_uri(json["uri"].as_str().unwrap()).unwrap();
    assert_eq!(payload.portal_url, "https://portal.example/fleet");
    let (status, _) = server.terminate();
    assert!(status.success());
}

#[test]
fn serve_refuses_plaintext_on_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    for listen in ["0.0.0.0:0", "[::]:0", "192.0.2.1:7000"] {
        let output = portal(&["serve", "--listen", listen, "--db", &db]);
        assert_usage_error(&output, "not a loopback address");
    }
    assert!(!Path::new(&db).exists(), "nothing was created");
    let output = portal(&["serve", "--listen", "nonsense", "--db", &db]);
    assert_usage_error(&output, "--listen");
    let output = portal(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        &db,
        "--public-url",
        "portal.example",
    ]);
    assert_usage_error(&output, "--public-url");
    // --tls-cert without --tls-key is a usage error.
    let output = portal(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--db",
        &db,
        "--tls-cert",
        "cert.pem",
    ]);
    assert_eq!(output.status.code(), Some(2));
}

fn openssl_cert(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    made.then_some((cert, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    // Fails rather than passing unchecked without openssl (scripts/test.sh
    // installs it).
    let (cert, key) = openssl_cert(dir.path())
        .expect("openssl could not make a test certificate (apt-get install openssl)");
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--db",
        &db,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );

    // A client that trusts the certificate gets an answer over TLS.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&cert).unwrap()))
        .domain_name("localhost");
    let channel = Channel::from_shared(server.url.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = fleetkey_proto::portal::portal_client::PortalClient::new(channel);
    let status = client
        .check_code(fleetkey_proto::portal::CheckCodeRequest {
            code: ActivationCode::generate().unwrap().compact().into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        fleetkey_proto::Failure::from_status(&status).reason,
        fleetkey_proto::Reason::CodeUnknown
    );
    drop(client);

    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");

    // A key that is not a key is refused before anything listens.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    let output = portal(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        &db,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        bad.to_str().unwrap(),
    ]);
    assert_error(&output, "TLS");
}

fn new_key() -> SigningKey {
    loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).unwrap();
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            return key;
        }
    }
}

fn enrollment(device_id: &str, user: &str, key: &SigningKey, n: u32) -> Enrollment {
    Enrollment {
        device_id: device_id.into(),
        user: user.into(),
        credential_id: format!("cred-{n}"),
        public_key: key
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .as_bytes()
            .to_vec(),
        backend: "soft".into(),
        attestation_format: "none".into(),
        hardware_backed: false,
        enrolled_at: 1_795_918_359,
        revoked_at: None,
        code_hash: None,
        attestation_detail: "no attestation".into(),
    }
}

#[test]
fn users_and_devices_are_listed_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let alice_key = new_key();
    {
        let store = Store::open(Path::new(&db)).unwrap();
        let db = store.db();
        for (id, name) in [("dev-a", "front desk"), ("dev-b", "back office")] {
            db.insert_device(&Device {
                device_id: id.into(),
                public_key: vec![0],
                name: name.into(),
                registered_at: 1_795_918_000,
                tpm: (id == "dev-b").then(|| TpmIdentity {
                    ak_public: vec![1],
                    ak_name: vec![0x00, 0x0b, 0xab],
                    ek_public: vec![2],
                    ek_certificate: vec![3],
                    ek_certificate_status: EkCertificateStatus::Verified,
                    ek_certificate_anchor: Some("CN=test root".into()),
                    verified_at: 1_795_918_000,
                }),
                attestation_detail: String::new(),
            })
            .unwrap();
        }
        db.insert_enrollment(&enrollment("dev-a", "alice", &alice_key, 1))
            .unwrap();
        db.insert_enrollment(&enrollment("dev-a", "bob", &new_key(), 2))
            .unwrap();
        db.insert_enrollment(&enrollment("dev-b", "bob", &new_key(), 3))
            .unwrap();
    }

    let output = portal(&["user", "show", "--db", &db, "alice", "--json"]);
    assert_ok(&output);
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["user"], "alice");
    assert_eq!(json["device_id"], "dev-a");
    assert_eq!(json["credential_id"], "cred-1");
    assert_eq!(json["backend"], "soft");
    assert_eq!(json["attestation_format"], "none");
    assert_eq!(json["hardware_backed"], false);
    assert_eq!(json["attestation_detail"], "no attestation");
    assert_eq!(json["enrolled_at"], "2026-11-29T02:12:39Z");
    let pem = json["public_key_pem"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert_eq!(
        pem,
        alice_key
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap()
    );

    let output = portal(&["user", "show", "--db", &db, "alice"]);
    assert_ok(&output);
    let text = stdout(&output);
    assert!(
        text.contains("Credential:") && text.contains("cred-1"),
        "{text}"
    );
    assert!(text.contains("BEGIN PUBLIC KEY"), "{text}");

    // bob is on two devices.
    let output = portal(&["user", "show", "--db", &db, "bob"]);
    assert_usage_error(&output, "dev-a, dev-b");
    let output = portal(&[
        "user", "show", "--db", &db, "bob", "--device", "dev-b", "--json",
    ]);
    assert_ok(&output);
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["credential_id"], "cred-3");

    let output = portal(&["user", "show", "--db", &db, "carol"]);
    assert_error(&output, "carol");
    let output = portal(&["user", "show", "--db", &db, "alice", "--device", "dev-b"]);
    assert_error(&output, "dev-b");

    let output = portal(&["user", "list", "--db", &db, "--json"]);
    assert_ok(&output);
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let users: Vec<(&str, &str)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap(),
                e["device_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        users,
        [("alice", "dev-a"), ("bob", "dev-a"), ("bob", "dev-b")]
    );
    let output = portal(&["user", "list", "--db", &db]);
    assert_ok(&output);
    assert_eq!(stdout(&output).lines().count(), 4, "header and three rows");

    let output = portal(&["device", "list", "--db", &db, "--json"]);
    assert_ok(&output);
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json[0]["device_id"], "dev-a");
    assert_eq!(json[0]["name"], "front desk");
    assert_eq!(json[0]["active_users"], 2);
    assert_eq!(json[1]["active_users"], 1);
    assert_eq!(json[0]["tpm_verified"], false);
    assert_eq!(json[0]["ek_certificate"], Value::Null);
    assert_eq!(json[0]["attestation_detail"], "no TPM identity");
    assert_eq!(json[1]["tpm_verified"], true);
    assert_eq!(json[1]["ak_name"], "000bab");
    assert_eq!(json[1]["ek_certificate"], "verified");
    assert_eq!(json[1]["ek_certificate_anchor"], "CN=test root");
    assert_eq!(json[1]["tpm_verified_at"], "2026-11-29T02:06:40Z");
    assert!(json[0]["registered_at"].as_str().unwrap().ends_with('Z'));
    let output = portal(&["device", "list", "--db", &db]);
    assert_ok(&output);
    assert!(stdout(&output).contains("back office"));
}

#[test]
fn reading_commands_need_an_existing_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let output = portal(&["user", "list", "--db", &db]);
    assert_error(&output, "no portal database");
    assert!(!Path::new(&db).exists());
}

fn device(id: &str, name: &str) -> Device {
    Device {
        device_id: id.into(),
        public_key: vec![0],
        name: name.into(),
        registered_at: 1_795_918_000,
        tpm: None,
        attestation_detail: String::new(),
    }
}

#[test]
fn user_revoke_frees_the_device_for_a_new_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    {
        let store = Store::open(Path::new(&db)).unwrap();
        let db = store.db();
        db.insert_device(&device("dev-a", "front desk")).unwrap();
        db.insert_device(&device("dev-b", "back office")).unwrap();
        db.insert_enrollment(&enrollment("dev-a", "alice", &new_key(), 1))
            .unwrap();
        db.insert_enrollment(&enrollment("dev-a", "bob", &new_key(), 2))
            .unwrap();
        db.insert_enrollment(&enrollment("dev-b", "bob", &new_key(), 3))
            .unwrap();
    }
    // The name is normalized like everywhere else: full-width alice.
    let output = portal(&["user", "revoke", "--db", &db, "ａｌｉｃｅ", "--json"]);
    assert_ok(&output);
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["user"], "alice");
    assert_eq!(json["device_id"], "dev-a");
    assert_eq!(json["credential_id"], "cred-1");
    assert!(json["revoked_at"].as_str().unwrap().ends_with('Z'));
    let store = Store::open(Path::new(&db)).unwrap();
    assert!(
        store
            .db()
            .active_enrollment("dev-a", "alice")
            .unwrap()
            .is_none()
    );
    // A later enrollment of alice on dev-a is possible again.
    store
        .db()
        .insert_enrollment(&enrollment("dev-a", "alice", &new_key(), 4))
        .unwrap();
    drop(store);
    let output = portal(&["user", "revoke", "--db", &db, "alice"]);
    assert_ok(&output);
    assert!(stdout(&output).contains("cred-4"), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("code issue --kind user"),
        "{}",
        stderr(&output)
    );

    // bob is on two devices: which one must be said.
    let output = portal(&["user", "revoke", "--db", &db, "bob"]);
    assert_usage_error(&output, "--device");
    let output = portal(&["user", "revoke", "--db", &db, "bob", "--device", "dev-b"]);
    assert_ok(&output);
    let output = portal(&["user", "revoke", "--db", &db, "bob", "--device", "dev-b"]);
    assert_error(&output, "not enrolled on device dev-b");
    let output = portal(&["user", "show", "--db", &db, "bob", "--json"]);
    assert_ok(&output);
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["device_id"], "dev-a");
    // Names that break the rule are refused as usage errors.
    let output = portal(&["user", "revoke", "--db", &db, "bad name!"]);
    assert_usage_error(&output, "USER_NAME_INVALID");
}

#[test]
fn human_output_escapes_what_devices_sent() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    {
        let store = Store::open(Path::new(&db)).unwrap();
        let db = store.db();
        // As an older portal might have stored them.
        db.insert_device(&device("dev-a", "kiosk\u{1b}]0;pwned\u{7}\u{1b}[2J"))
            .unwrap();
        let mut alice = enrollment("dev-a", "alice", &new_key(), 1);
        alice.backend = "soft\u{202e}".into();
        alice.attestation_detail = "chains to CN=\u{1b}[31mroot".into();
        db.insert_enrollment(&alice).unwrap();
    }
    for args in [
        vec!["device", "list"],
        vec!["user", "list"],
        vec!["user", "show", "alice"],
    ] {
        let output = portal(&[&args[..], &["--db", &db]].concat());
        assert_ok(&output);
        let text = stdout(&output);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}'),
            "{args:?}: {text:?}"
        );
    }
    let output = portal(&["device", "list", "--db", &db]);
    assert!(
        stdout(&output).contains("kiosk\\u{1b}]0;pwned\\u{7}"),
        "{}",
        stdout(&output)
    );
    // JSON carries the strings as they are.
    let output = portal(&["device", "list", "--db", &db, "--json"]);
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json[0]["name"], "kiosk\u{1b}]0;pwned\u{7}\u{1b}[2J");
}

#[test]
fn code_issue_stores_the_normalized_user_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    let json = issue_json(&[
        "--db",
        &db,
        "--kind",
        "user",
        "--user",
        "ａｌｉｃｅ",
        "--portal-url",
        "http://127.0.0.1:7000",
    ]);
    assert_eq!(json["user"], "alice");
    let code = ActivationCode::parse(json["code"].as_str().unwrap()).unwrap();
    let store = Store::open(Path::new(&db)).unwrap();
    let record = store.db().code(&code).unwrap().unwrap();
    assert_eq!(record.user.as_deref(), Some("alice"));
    let payload = EnrollmentPayload::parse_uri(json["uri"].as_str().unwrap()).unwrap();
    assert_eq!(payload.user_hint.as_deref(), Some("alice"));
}

// ---- code issue --batch ----

fn issue_batch(db: &str, file: &Path) -> Output {
    portal(&[
        "code",
        "issue",
        "--db",
        db,
        "--batch",
        file.to_str().unwrap(),
        "--portal-url",
        "http://127.0.0.1:1",
        "--ttl",
        "900",
    ])
}

/// Add-user codes in the database.
fn unused_user_codes(db: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM codes WHERE kind = 'user'", [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn code_issue_batch_csv_and_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    for (name, text) in [
        ("users.csv", "name,ttl_seconds\nalice\nｂｏｂ,120\n\n"),
        (
            "users.jsonl",
            "{\"user\": \"carol\"}\n{\"user\": \"dave\", \"ttl\": 60}\n",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let before = now_unix();
        let output = issue_batch(&db, &file);
        assert_ok(&output);
        let lines: Vec<Value> = stdout(&output)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{}", stdout(&output));
        for line in &lines {
            let keys: Vec<&str> = line
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            assert_eq!(keys.len(), 4, "{line}");
            let code = ActivationCode::parse(line["code"].as_str().unwrap()).unwrap();
            let payload = EnrollmentPayload::parse_uri(line["uri"].as_str().unwrap()).unwrap();
            assert_eq!(payload.code, code);
            assert_eq!(payload.user_hint.as_deref(), line["user"].as_str());
            assert_eq!(
                line["expires_at"].as_str().unwrap(),
                fleetkey_proto::time::rfc3339(payload.expires_at.unwrap())
            );
            let store = Store::open(Path::new(&db)).unwrap();
            let record = store.db().code(&code).unwrap().unwrap();
            assert_eq!(record.kind, CodeKind::User);
            assert_eq!(record.user.as_deref(), line["user"].as_str());
            assert!(record.used_at.is_none());
        }
        let ttls: Vec<i64> = lines
            .iter()
            .map(|l| {
                EnrollmentPayload::parse_uri(l["uri"].as_str().unwrap())
                    .unwrap()
                    .expires_at
                    .unwrap()
                    - before
            })
            .collect();
        if name == "users.csv" {
            assert_eq!(lines[0]["user"], "alice");
            assert_eq!(lines[1]["user"], "bob", "normalized");
            assert!((899..=901).contains(&ttls[0]), "{ttls:?}");
            assert!((119..=121).contains(&ttls[1]), "{ttls:?}");
        } else {
            assert_eq!(lines[0]["user"], "carol");
            assert!((59..=61).contains(&ttls[1]), "{ttls:?}");
        }
    }
    assert_eq!(unused_user_codes(&db), 4);
}

#[test]
fn code_issue_batch_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_in(&dir);
    // A first good batch makes the database.
    let good = dir.path().join("good.csv");
    std::fs::write(&good, "zed\n").unwrap();
    assert_ok(&issue_batch(&db, &good));
    for (text, needle) in [
        ("alice\nbob\nbad name!\n", "line 3: USER_NAME_INVALID"),
        (
            "alice\nbob\nalice\n",
            "line 3: user alice is already on line 1",
        ),
        (
            "{\"user\": \"alice\"}\n{\"user\": 5}\n",
            "line 2: not a JSON line",
        ),
        ("alice,forever\n", "line 1: the TTL \"forever\""),
    ] {
        let file = dir.path().join("bad.csv");
        std::fs::write(&file, text).unwrap();
        assert_error(&issue_batch(&db, &file), needle);
        assert_eq!(unused_user_codes(&db), 1, "nothing issued for {text:?}");
    }
    // Too big, and a line too long.
    let file = dir.path().join("big.csv");
    std::fs::write(&file, format!("alice\n{}\n", "b".repeat(65 * 1024))).unwrap();
    assert_error(&issue_batch(&db, &file), "line 2: the line is longer");
    let big = std::fs::File::create(&file).unwrap();
    big.set_len(16 * 1024 * 1024 + 1).unwrap();
    assert_error(&issue_batch(&db, &file), "larger than 16777216 bytes");
    assert_eq!(unused_user_codes(&db), 1);
    // --batch goes alone.
    let output = portal(&[
        "code", "issue", "--db", &db, "--batch", "x", "--kind", "user",
    ]);
    assert_usage_error(&output, "--batch");
}
