//! The portal API over real gRPC: a server on 127.0.0.1:0 in-process, the
//! generated client, real P-256 keys.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use fleetkey_portal::store::{CodeKind, CodeRecord, Store};
use fleetkey_proto::portal::portal_client::PortalClient;
use fleetkey_proto::portal::{
    Attestation, CheckCodeRequest, CodeKind as ProtoKind, EnrollUserRequest, EnrollUserResponse,
    RegisterDeviceRequest, RevokeUserRequest,
};
use fleetkey_proto::time::now_unix;
use fleetkey_proto::{ActivationCode, Failure, Reason, binding};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

struct TestPortal {
    client: PortalClient<Channel>,
    addr: std::net::SocketAddr,
    db: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), fleetkey_portal::PortalError>>>,
    _dir: tempfile::TempDir,
}

impl TestPortal {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("portal.db");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server_db = db.clone();
        let server = tokio::spawn(async move {
            fleetkey_portal::serve(&server_db, listener, None, async {
                let _ = stopped.await;
            })
            .await
        });
        let client = PortalClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Self {
            client,
            addr,
            db,
            stop: Some(stop),
            server: Some(server),
            _dir: dir,
        }
    }

    fn store(&self) -> Store {
        Store::open(&self.db).unwrap()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn issue(&self, kind: CodeKind, user: Option<&str>, ttl: i64) -> ActivationCode {
        self.store()
            .issue_code(kind, user, ttl, now_unix())
            .unwrap()
            .code
    }

    fn device_code(&self) -> ActivationCode {
        self.issue(CodeKind::Device, None, 600)
    }

    fn user_code(&self, user: &str) -> ActivationCode {
        self.issue(CodeKind::User, Some(user), 600)
    }

    async fn register(&mut self, key: &SigningKey) -> String {
        let code = self.device_code();
        self.client
            .register_device(register_request(&code, key))
            .await
            .unwrap()
            .into_inner()
            .device_id
    }

    async fn enroll(
        &mut self,
        device_id: &str,
        device_key: &SigningKey,
        user: &str,
    ) -> EnrollUserResponse {
        let code = self.user_code(user);
        self.client
            .enroll_user(enroll_request(device_id, device_key, &code, &new_key()))
            .await
            .unwrap()
            .into_inner()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
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

fn spki(key: &SigningKey) -> Vec<u8> {
    key.verifying_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// ECDSA P-256 over SHA-256 of `message`, DER: what a device sends.
fn sign(key: &SigningKey, message: &[u8]) -> Vec<u8> {
    let signature: DerSignature = key.sign(message);
    signature.as_bytes().to_vec()
}

fn register_request(code: &ActivationCode, key: &SigningKey) -> RegisterDeviceRequest {
    let public_key = spki(key);
    RegisterDeviceRequest {
        integrity_evidence: String::new(),
        code: code.compact().to_string(),
        signature: sign(
            key,
            &binding::activation_message(code.compact(), &public_key),
        ),
        device_public_key: public_key,
        device_name: "kiosk 7".into(),
        tpm: None,
    }
}

fn enroll_request(
    device_id: &str,
    device_key: &SigningKey,
    code: &ActivationCode,
    user_key: &SigningKey,
) -> EnrollUserRequest {
    let user_public_key = spki(user_key);
    let message = binding::enrollment_message(device_id, code.compact(), &user_public_key, "soft");
    EnrollUserRequest {
        integrity_evidence: String::new(),
        device_id: device_id.into(),
        code: code.compact().into(),
        backend: "soft".into(),
        attestation: Some(Attestation {
            format: "none".into(),
            data: Vec::new(),
        }),
        user_signature: sign(user_key, &message),
        device_signature: sign(device_key, &message),
        user_public_key,
    }
}

fn revoke_request(
    device_id: &str,
    device_key: &SigningKey,
    user: &str,
    credential_id: &str,
    timestamp: i64,
) -> RevokeUserRequest {
    RevokeUserRequest {
        device_id: device_id.into(),
        user: user.into(),
        credential_id: credential_id.into(),
        timestamp,
        device_signature: sign(
            device_key,
            &binding::revocation_message(device_id, user, credential_id, timestamp),
        ),
    }
}

/// The failure a call ended with; its gRPC code matches its reason.
#[track_caller]
fn failure<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Failure {
    let status = result.expect_err("the call should have failed");
    let failure = Failure::from_status(&status);
    assert_eq!(status.code(), failure.reason.grpc_code(), "{failure}");
    assert!(!failure.message.is_empty());
    failure
}

fn check(code: &str) -> CheckCodeRequest {
    CheckCodeRequest { code: code.into() }
}

#[tokio::test]
async fn register_device_then_enroll_user() {
    let mut portal = TestPortal::start().await;
    let device_key = new_key();

    let code = portal.device_code();
    let checked = portal
        .client
        .check_code(check(&code.to_string()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.kind, ProtoKind::Device as i32);
    assert_eq!(checked.user, "");
    assert!(checked.expires_at > now_unix());

    let device_id = portal
        .client
        .register_device(register_request(&code, &device_key))
        .await
        .unwrap()
        .into_inner()
        .device_id;
    assert!(device_id.starts_with("dev-"), "{device_id}");
    let device = portal.store().db().device(&device_id).unwrap().unwrap();
    assert_eq!(device.public_key, spki(&device_key));
    assert_eq!(device.name, "kiosk 7");

    let user_code = portal.user_code("alice");
    let checked = portal
        .client
        .check_code(check(user_code.compact()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.kind, ProtoKind::User as i32);
    assert_eq!(checked.user, "alice");

    let user_key = new_key();
    let before = now_unix();
    let enrolled = portal
        .client
        .enroll_user(enroll_request(
            &device_id,
            &device_key,
            &user_code,
            &user_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enrolled.user, "alice");
    assert!(enrolled.credential_id.starts_with("cred-"));
    assert!(!enrolled.hardware_backed);
    assert!(enrolled.enrolled_at >= before);

    let stored = portal
        .store()
        .db()
        .active_enrollment(&device_id, "alice")
        .unwrap()
        .unwrap();
    assert_eq!(stored.credential_id, enrolled.credential_id);
    assert_eq!(stored.public_key, spki(&user_key));
    assert_eq!(stored.backend, "soft");
    assert_eq!(stored.attestation_format, "none");
    let record = portal.store().db().code(&user_code).unwrap().unwrap();
    assert_eq!(record.used_by_device.as_deref(), Some(device_id.as_str()));

    // Many users on one device.
    let bob = portal.enroll(&device_id, &device_key, "bob").await;
    assert_eq!(bob.user, "bob");
    assert_ne!(bob.credential_id, enrolled.credential_id);
    portal.stop().await;
}

#[tokio::test]
async fn code_syntax_and_unknown_codes() {
    let mut portal = TestPortal::start().await;
    let never_issued = ActivationCode::generate().unwrap();
    let f = failure(
        portal
            .client
            .check_code(check(never_issued.compact()))
            .await,
    );
    assert_eq!(f.reason, Reason::CodeUnknown);
    assert!(f.message.contains(&never_issued.to_string()), "{f}");

    // One character changed: caught by the check character.
    let code = portal.device_code();
    let mut typo = code.compact().to_string();
    let replacement = if typo.starts_with('A') { "B" } else { "A" };
    typo.replace_range(0..1, replacement);
    let f = failure(portal.client.check_code(check(&typo)).await);
    assert_eq!(f.reason, Reason::CodeMistyped);
    let f = failure(
        portal
            .client
            .register_device(RegisterDeviceRequest {
                integrity_evidence: String::new(),
                code: typo,
                ..register_request(&code, &new_key())
            })
            .await,
    );
    assert_eq!(f.reason, Reason::CodeMistyped);

    let f = failure(portal.client.check_code(check("K7QF-9XWM")).await);
    assert_eq!(f.reason, Reason::CodeMalformed);
    let f = failure(portal.client.check_code(check("")).await);
    assert_eq!(f.reason, Reason::CodeMalformed);

    // Typed forms are accepted: lower case, hyphens.
    let ok = portal
        .client
        .check_code(check(&code.to_string().to_lowercase()))
        .await;
    assert!(ok.is_ok());
    portal.stop().await;
}

#[tokio::test]
async fn expired_codes_are_refused() {
    let mut portal = TestPortal::start().await;
    // Inserted with an expiry in the past.
    let code = ActivationCode::generate().unwrap();
    let now = now_unix();
    let store = portal.store();
    let record = CodeRecord::new(
        store.db().code_hash(&code),
        CodeKind::Device,
        None,
        now - 700,
        600,
    );
    assert!(store.db().insert_code(&record).unwrap());
    let f = failure(portal.client.check_code(check(code.compact())).await);
    assert_eq!(f.reason, Reason::CodeExpired);
    assert!(
        f.message
            .contains(&fleetkey_proto::time::rfc3339(now - 100)),
        "the message says when: {f}"
    );
    let f = failure(
        portal
            .client
            .register_device(register_request(&code, &new_key()))
            .await,
    );
    assert_eq!(f.reason, Reason::CodeExpired);

    // And by the clock: a one-second code.
    let device_key = new_key();
    let device_id = portal.register(&device_key).await;
    let short = portal.issue(CodeKind::User, Some("alice"), 1);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let f = failure(
        portal
            .client
            .enroll_user(enroll_request(&device_id, &device_key, &short, &new_key()))
            .await,
    );
    assert_eq!(f.reason, Reason::CodeExpired);
    assert!(f.message.contains("expired at"), "{f}");
    portal.stop().await;
}

#[tokio::test]
async fn codes_work_once() {
    let mut portal = TestPortal::start().await;
    let code = portal.device_code();
    portal
        .client
        .register_device(register_request(&code, &new_key()))
        .await
        .unwrap();
    // Another device with the same code.
    let f = failure(
        portal
            .client
            .register_device(register_request(&code, &new_key()))
            .await,
    );
    assert_eq!(f.reason, Reason::CodeAlreadyUsed);
    assert!(f.message.contains("already used at"), "{f}");
    let f = failure(portal.client.check_code(check(code.compact())).await);
    assert_eq!(f.reason, Reason::CodeAlreadyUsed);

    // An add-user code used on one device cannot be used on another.
    let key_a = new_key();
    let key_b = new_key();
    let device_a = portal.register(&key_a).await;
    let device_b = portal.register(&key_b).await;
    let user_code = portal.user_code("alice");
    portal
        .client
        .enroll_user(enroll_request(&device_a, &key_a, &user_code, &new_key()))
        .await
        .unwrap();
    let f = failure(
        portal
            .client
            .enroll_user(enroll_request(&device_b, &key_b, &user_code, &new_key()))
            .await,
    );
    assert_eq!(f.reason, Reason::CodeAlreadyUsed);
    portal.stop().await;
}

#[tokio::test]
async fn racing_devices_cannot_both_redeem_a_code() {
    let portal = TestPortal::start().await;
    let code = portal.device_code();
    let mut calls = Vec::new();
    for _ in 0..4 {
        let mut client = portal.client.clone();
        let request = register_request(&code, &new_key());
        calls.push(tokio::spawn(async move {
            client.register_device(request).await
        }));
    }
    let mut won = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => won += 1,
            Err(status) => assert_eq!(
                Failure::from_status(&status).reason,
                Reason::CodeAlreadyUsed
            ),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(portal.store().db().devices().unwrap().len(), 1);
    portal.stop().await;
}

#[tokio::test]
async fn codes_of_the_wrong_kind_are_refused() {
    let mut portal = TestPortal::start().await;
    let user_code = portal.user_code("alice");
    let f = failure(
        portal
            .client
            .register_device(register_request(&user_code, &new_key()))
            .await,
    );
    assert_eq!(f.reason, Reason::CodeWrongKind);
    assert!(f.message.contains("add-user code"), "{f}");
    assert!(f.message.contains("alice"), "{f}");

    let device_key = new_key();
    let device_id = portal.register(&device_key).await;
    let device_code = portal.device_code();
    let f = failure(
        portal
            .client
            .enroll_user(enroll_request(
                &device_id,
                &device_key,
                &device_code,
                &new_key(),
            ))
            .await,
    );
    assert_eq!(f.reason, Reason::CodeWrongKind);
    assert!(f.message.contains("device activation code"), "{f}");

    // Neither code was consumed by the refusals.
    portal
        .client
        .enroll_user(enroll_request(
            &device_id,
            &device_key,
            &user_code,
            &new_key(),
        ))
        .await
        .unwrap();
    portal
        .client
        .register_device(register_request(&device_code, &new_key()))
        .await
        .unwrap();
    portal.stop().await;
}

#[tokio::test]
async fn a_user_is_enrolled_once_per_device() {
    let mut portal = TestPortal::start().await;
    let key_a = new_key();
    let device_a = portal.register(&key_a).await;
    portal.enroll(&device_a, &key_a, "alice").await;

    let second = portal.user_code("alice");
    let f = failure(
        portal
            .client
            .enroll_user(enroll_request(&device_a, &key_a, &second, &new_key()))
            .await,
    );
    assert_eq!(f.reason, Reason::AlreadyEnrolled);
    assert!(
        f.message.contains("alice") && f.message.contains(&device_a),
        "{f}"
    );

    // The refused code is still good for another device.
    let key_b = new_key();
    let device_b = portal.register(&key_b).await;
    let enrolled = portal
        .client
        .enroll_user(enroll_request(&device_b, &key_b, &second, &new_key()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enrolled.user, "alice");
    assert_eq!(
        portal
            .store()
            .db()
            .active_enrollments(Some("alice"))
            .unwrap()
            .len(),
        2
    );
    portal.stop().await;
}

#[tokio::test]
async fn unknown_devices_are_refused() {
    let mut portal = TestPortal::start().await;
    let device_key = new_key();
    let code = portal.user_code("alice");
    let f = failure(
        portal
            .client
            .enroll_user(enroll_request(
                "dev-doesnotexist",
                &device_key,
                &code,
                &new_key(),
            ))
            .await,
    );
    assert_eq!(f.reason, Reason::DeviceUnknown);
    assert!(f.message.contains("dev-doesnotexist"), "{f}");
    let f = failure(
        portal
            .client
            .revoke_user(revoke_request(
                "dev-doesnotexist",
                &device_key,
                "alice",
                "cred-x",
                now_unix(),
            ))
            .await,
    );
    assert_eq!(f.reason, Reason::DeviceUnknown);
    portal.stop().await;
}

#[tokio::test]
async fn bad_signatures_are_refused() {
    let mut portal = TestPortal::start().await;

    // Device activation signed by another key than the one registered.
    let code = portal.device_code();
    let mut request = register_request(&code, &new_key());
    request.signature = register_request(&code, &new_key()).signature;
    let f = failure(portal.client.register_device(request).await);
    assert_eq!(f.reason, Reason::SignatureInvalid);
    let mut request = register_request(&code, &new_key());
    request.signature = b"not DER".to_vec();
    let f = failure(portal.client.register_device(request).await);
    assert_eq!(f.reason, Reason::SignatureInvalid);

    let device_key = new_key();
    let device_id = portal.register(&device_key).await;
    let user_code = portal.user_code("alice");
    let user_key = new_key();

    // Proof of possession made with another key than the one submitted.
    let mut request = enroll_request(&device_id, &device_key, &user_code, &user_key);
    request.user_signature =
        enroll_request(&device_id, &device_key, &user_code, &new_key()).user_signature;
    let f = failure(portal.client.enroll_user(request).await);
    assert_eq!(f.reason, Reason::SignatureInvalid);
    assert!(f.message.contains("user signature"), "{f}");

    // Device signature by a key other than the registered device key.
    let mut request = enroll_request(&device_id, &device_key, &user_code, &user_key);
    request.device_signature =
        enroll_request(&device_id, &new_key(), &user_code, &user_key).device_signature;
    let f = failure(portal.client.enroll_user(request).await);
    assert_eq!(f.reason, Reason::SignatureInvalid);
    assert!(f.message.contains("device signature"), "{f}");

    // Signatures over another backend than the one claimed.
    let mut request = enroll_request(&device_id, &device_key, &user_code, &user_key);
    request.backend = "tpm".into();
    let f = failure(portal.client.enroll_user(request).await);
    assert_eq!(f.reason, Reason::SignatureInvalid);

    // None of it consumed the codes.
    portal
        .client
        .register_device(register_request(&code, &new_key()))
        .await
        .unwrap();
    portal
        .client
        .enroll_user(enroll_request(
            &device_id,
            &device_key,
            &user_code,
            &user_key,
        ))
        .await
        .unwrap();
    portal.stop().await;
}

#[tokio::test]
async fn malformed_keys_and_attestations_are_invalid_arguments() {
    let mut portal = TestPortal::start().await;
    let code = portal.device_code();
    let mut request = register_request(&code, &new_key());
    request.device_public_key = b"not a key".to_vec();
    let f = failure(portal.client.register_device(request).await);
    assert_eq!(f.reason, Reason::InvalidArgument);
    assert!(f.message.contains("device_public_key"), "{f}");

    let device_key = new_key();
    let device_id = portal.register(&device_key).await;
    let user_code = portal.user_code("alice");
    let mut request = enroll_request(&device_id, &device_key, &user_code, &new_key());
    request.user_public_key = Vec::new();
    let f = failure(portal.client.enroll_user(request).await);
    assert_eq!(f.reason, Reason::InvalidArgument);

    let mut request = enroll_request(&device_id, &device_key, &user_code, &new_key());
    request.attestation = Some(Attestation {
        format: "tpm2".into(),
        data: vec![1, 2, 3],
    });
    let f = failure(portal.client.enroll_user(request).await);
    assert_eq!(f.reason, Reason::InvalidArgument);
    assert!(
        f.message.contains("tpm2") && f.message.contains("not supported"),
        "{f}"
    );

    // No attestation at all is "none".
    let mut request = enroll_request(&device_id, &device_key, &user_code, &new_key());
    request.attestation = None;
    let enrolled = portal
        .client
        .enroll_user(request)
        .await
        .unwrap()
        .into_inner();
    assert!(!enrolled.hardware_backed);
    portal.stop().await;
}

#[tokio::test]
async fn retries_are_idempotent() {
    let mut portal = TestPortal::start().await;
    let device_key = new_key();
    let code = portal.device_code();
    let request = register_request(&code, &device_key);
    let first = portal
        .client
        .register_device(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = portal
        .client
        .register_device(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.device_id, again.device_id);
    // The same key with a fresh signature is the same device, too.
    let again = portal
        .client
        .register_device(register_request(&code, &device_key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.device_id, again.device_id);
    assert_eq!(portal.store().db().devices().unwrap().len(), 1);

    let device_id = first.device_id;
    let user_code = portal.user_code("alice");
    let user_key = new_key();
    let request = enroll_request(&device_id, &device_key, &user_code, &user_key);
    let first = portal
        .client
        .enroll_user(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = portal
        .client
        .enroll_user(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);

    // A retry with another user key is a second use of the code.
    let f = failure(
        portal
            .client
            .enroll_user(enroll_request(
                &device_id,
                &device_key,
                &user_code,
                &new_key(),
            ))
            .await,
    );
    assert_eq!(f.reason, Reason::CodeAlreadyUsed);
    portal.stop().await;
}

#[tokio::test]
async fn revoke_then_enroll_again() {
    let mut portal = TestPortal::start().await;
    let device_key = new_key();
    let device_id = portal.register(&device_key).await;
    let user_code = portal.user_code("alice");
    let user_key = new_key();
    let enroll = enroll_request(&device_id, &device_key, &user_code, &user_key);
    let enrolled = portal
        .client
        .enroll_user(enroll.clone())
        .await
        .unwrap()
        .into_inner();
    let now = now_unix();

    // Too far off the portal's clock.
    let f = failure(
        portal
            .client
            .revoke_user(revoke_request(
                &device_id,
                &device_key,
                "alice",
                &enrolled.credential_id,
                now - 301 - 5,
            ))
            .await,
    );
    assert_eq!(f.reason, Reason::InvalidArgument);
    // Signed by someone else.
    let mut request = revoke_request(
        &device_id,
        &device_key,
        "alice",
        &enrolled.credential_id,
        now,
    );
    request.device_signature = revoke_request(
        &device_id,
        &new_key(),
        "alice",
        &enrolled.credential_id,
        now,
    )
    .device_signature;
    let f = failure(portal.client.revoke_user(request).await);
    assert_eq!(f.reason, Reason::SignatureInvalid);
    // Another user's name.
    let f = failure(
        portal
            .client
            .revoke_user(revoke_request(
                &device_id,
                &device_key,
                "bob",
                &enrolled.credential_id,
                now,
            ))
            .await,
    );
    assert_eq!(f.reason, Reason::UserUnknown);

    portal
        .client
        .revoke_user(revoke_request(
            &device_id,
            &device_key,
            "alice",
            &enrolled.credential_id,
            now,
        ))
        .await
        .unwrap();
    let f = failure(
        portal
            .client
            .revoke_user(revoke_request(
                &device_id,
                &device_key,
                "alice",
                &enrolled.credential_id,
                now,
            ))
            .await,
    );
    assert_eq!(f.reason, Reason::UserUnknown);
    assert!(
        portal
            .store()
            .db()
            .active_enrollment(&device_id, "alice")
            .unwrap()
            .is_none()
    );

    // The old code's retry no longer returns the revoked credential.
    let f = failure(portal.client.enroll_user(enroll).await);
    assert_eq!(f.reason, Reason::CodeAlreadyUsed);

    // A new code enrolls alice again, with a new credential.
    let again = portal.enroll(&device_id, &device_key, "alice").await;
    assert_ne!(again.credential_id, enrolled.credential_id);
    portal.stop().await;
}

/// What the daemon does after a crash between the portal's commit and its
/// own: it sends the very same signed EnrollUser again, possibly long
/// after, and must get the same credential back.
#[tokio::test]
async fn an_exact_enrollment_retry_answers_the_same_credential() {
    let mut portal = TestPortal::start().await;
    let device_key = new_key();
    let device_id = portal.register(&device_key).await;
    // A code that expires while the daemon is down.
    let code = portal.issue(CodeKind::User, Some("alice"), 1);
    let user_key = new_key();
    let request = enroll_request(&device_id, &device_key, &code, &user_key);
    let first = portal
        .client
        .enroll_user(request.clone())
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let again = portal
        .client
        .enroll_user(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first, "the same credential, not CODE_ALREADY_USED");
    assert_eq!(
        portal
            .store()
            .db()
            .active_enrollments(Some("alice"))
            .unwrap()
            .len(),
        1,
        "no second credential"
    );

    // The same device and code with another key is a second use.
    let f = failure(
        portal
            .client
            .enroll_user(enroll_request(&device_id, &device_key, &code, &new_key()))
            .await,
    );
    assert_eq!(f.reason, Reason::CodeAlreadyUsed);
    // So is the same key from another device.
    let other_key = new_key();
    let other_device = portal.register(&other_key).await;
    let f = failure(
        portal
            .client
            .enroll_user(enroll_request(&other_device, &other_key, &code, &user_key))
            .await,
    );
    assert_eq!(f.reason, Reason::CodeAlreadyUsed);
    portal.stop().await;
}

/// A device that lost the credential id in a crash revokes by name: an
/// empty credential_id revokes whichever credential the user has there.
#[tokio::test]
async fn a_device_revokes_by_user_name_alone() {
    let mut portal = TestPortal::start().await;
    let device_key = new_key();
    let device_id = portal.register(&device_key).await;
    let enrolled = portal.enroll(&device_id, &device_key, "alice").await;
    let other_key = new_key();
    let other_device = portal.register(&other_key).await;
    let elsewhere = portal.enroll(&other_device, &other_key, "alice").await;

    // A name that breaks the user-name rule is refused, after the
    // signature (it is the device's own request).
    let f = failure(
        portal
            .client
            .revoke_user(revoke_request(
                &device_id,
                &device_key,
                "alice\u{200b}",
                "",
                now_unix(),
            ))
            .await,
    );
    assert_eq!(f.reason, Reason::UserNameInvalid);
    assert!(f.message.contains("U+200B"), "{f}");

    // The full-width form normalizes to alice.
    portal
        .client
        .revoke_user(revoke_request(
            &device_id,
            &device_key,
            "ａｌｉｃｅ",
            "",
            now_unix(),
        ))
        .await
        .unwrap();
    let store = portal.store();
    assert!(
        store
            .db()
            .active_enrollment(&device_id, "alice")
            .unwrap()
            .is_none()
    );
    // Only this device's credential went.
    assert_eq!(
        store
            .db()
            .active_enrollment(&other_device, "alice")
            .unwrap()
            .unwrap()
            .credential_id,
        elsewhere.credential_id
    );
    // Nothing left to revoke by name.
    let f = failure(
        portal
            .client
            .revoke_user(revoke_request(
                &device_id,
                &device_key,
                "alice",
                "",
                now_unix(),
            ))
            .await,
    );
    assert_eq!(f.reason, Reason::UserUnknown);
    // And alice can be enrolled there again.
    let again = portal.enroll(&device_id, &device_key, "alice").await;
    assert_ne!(again.credential_id, enrolled.credential_id);
    portal.stop().await;
}

/// A client whose connections come from `source` (another 127.x address
/// is another peer to the portal).
async fn client_from(url: &str, source: &str) -> PortalClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .local_address(Some(source.parse().unwrap()))
        .connect()
        .await
        .unwrap();
    PortalClient::new(channel)
}

/// Sends `n` CheckCode guesses as fast as one connection allows; returns
/// how many were answered CODE_UNKNOWN and the RATE_LIMITED failures.
async fn guess(client: &mut PortalClient<Channel>, n: usize) -> (usize, Vec<Failure>) {
    let mut unknown = 0;
    let mut limited = Vec::new();
    for _ in 0..n {
        let code = ActivationCode::generate().unwrap();
        let status = client
            .check_code(check(code.compact()))
            .await
            .expect_err("a guess cannot be right");
        let f = Failure::from_status(&status);
        match f.reason {
            Reason::CodeUnknown => unknown += 1,
            Reason::RateLimited => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                limited.push(f);
            }
            other => panic!("unexpected {other}: {f}"),
        }
    }
    (unknown, limited)
}

#[tokio::test]
async fn code_guesses_are_rate_limited_per_peer() {
    let portal = TestPortal::start().await;
    let url = portal.url();
    let mut attacker = client_from(&url, "127.0.0.2").await;
    let started = std::time::Instant::now();
    let (unknown, limited) = guess(&mut attacker, 200).await;
    let elapsed = started.elapsed();
    // The burst of 20, plus the 5 a second that came back meanwhile.
    let allowed = 20 + (elapsed.as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (20..=allowed).contains(&unknown),
        "{unknown} guesses answered in {elapsed:?}"
    );
    assert_eq!(unknown + limited.len(), 200);
    let f = &limited[0];
    let retry: u64 = f.meta("retry_after_seconds").unwrap().parse().unwrap();
    assert!((1..=1).contains(&retry), "{f:?}");
    assert!(
        f.message.contains("CheckCode") && f.message.contains("127.0.0.2"),
        "{f}"
    );
    eprintln!(
        "200 CheckCode guesses from one peer in {elapsed:?}: {unknown} answered, {} RATE_LIMITED",
        limited.len()
    );

    // A well-behaved device on another address is not affected: it checks
    // its code, activates and enrolls a user.
    let mut device = client_from(&url, "127.0.0.1").await;
    let code = portal.device_code();
    device.check_code(check(code.compact())).await.unwrap();
    let device_key = new_key();
    let device_id = device
        .register_device(register_request(&code, &device_key))
        .await
        .unwrap()
        .into_inner()
        .device_id;
    let user_code = portal.user_code("alice");
    device.check_code(check(user_code.compact())).await.unwrap();
    device
        .enroll_user(enroll_request(
            &device_id,
            &device_key,
            &user_code,
            &new_key(),
        ))
        .await
        .unwrap();

    // After retry_after_seconds the attacker gets a guess again.
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    let (unknown, _) = guess(&mut attacker, 1).await;
    assert_eq!(unknown, 1);
    portal.stop().await;
}

/// Signed calls are charged to the device whose key signed them, not to
/// the peer: a flood from the device's own address (on loopback, every
/// local process) does not stop its enrollments, and a caller who only
/// names the device cannot spend its tokens.
#[tokio::test]
async fn signed_calls_are_limited_per_device() {
    let mut portal = TestPortal::start().await;
    let url = portal.url();
    let device_key = new_key();
    let device_id = portal.register(&device_key).await;

    // Someone floods from the device's own address until refused ...
    let mut neighbour = client_from(&url, "127.0.0.1").await;
    let (_, limited) = guess(&mut neighbour, 40).await;
    assert!(!limited.is_empty());
    // ... and sends EnrollUser naming the device, with bad signatures:
    // charged to that peer, which is out of tokens.
    let code = portal.user_code("alice");
    let mut forged = enroll_request(&device_id, &new_key(), &code, &new_key());
    forged.device_signature[10] ^= 1;
    for _ in 0..30 {
        let f = failure(neighbour.enroll_user(forged.clone()).await);
        assert!(
            matches!(f.reason, Reason::RateLimited | Reason::SignatureInvalid),
            "{f}"
        );
    }
    let f = failure(neighbour.enroll_user(forged).await);
    assert_eq!(f.reason, Reason::RateLimited, "{f}");

    // The device still enrolls: its signed call is charged to itself.
    portal
        .client
        .enroll_user(enroll_request(&device_id, &device_key, &code, &new_key()))
        .await
        .unwrap();

    // The device's own bucket: 20 signed calls, then RATE_LIMITED naming
    // the device.
    let mut answered = 0;
    let mut refusal = None;
    for _ in 0..30 {
        let result = portal
            .client
            .revoke_user(revoke_request(
                &device_id,
                &device_key,
                "nobody",
                "",
                now_unix(),
            ))
            .await;
        let f = failure(result);
        match f.reason {
            Reason::UserUnknown => answered += 1,
            Reason::RateLimited => {
                refusal = Some(f);
                break;
            }
            other => panic!("unexpected {other}: {f}"),
        }
    }
    // The enrollment above took one of the device's 20.
    assert!((19..=20).contains(&answered), "{answered}");
    let refusal = refusal.expect("the device was limited");
    assert!(refusal.message.contains(&device_id), "{refusal}");
    assert!(refusal.meta("retry_after_seconds").is_some());
    portal.stop().await;
}
