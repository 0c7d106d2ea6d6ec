//! RegisterDevice with a TPM identity and CompleteTpmActivation, the paths
//! that need no TPM: the challenge is kept and the code stays unused, and
//! missing challenges, wrong secrets and bad signatures are refused. (The
//! successful activation, with a real TPM answering, is in swtpm.rs.)

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fleetkey_portal::service::PortalService;
use fleetkey_portal::store::{CodeKind, Store};
use fleetkey_portal::tpm::{self, attr};
use fleetkey_proto::portal::{CompleteTpmActivationRequest, RegisterDeviceRequest, TpmIdentity};
use fleetkey_proto::time::now_unix;
use fleetkey_proto::{ActivationCode, Failure, Reason, binding};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::EncodePublicKey;

fn u16b(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn tpm2b(out: &mut Vec<u8>, bytes: &[u8]) {
    u16b(out, u16::try_from(bytes.len()).unwrap());
    out.extend_from_slice(bytes);
}

/// An AK public area (ECC P-256, restricted signing) for a software key.
fn ak_public(key: &SigningKey, attributes: u32) -> Vec<u8> {
    let point = key.verifying_key().to_sec1_point(false);
    let mut out = Vec::new();
    u16b(&mut out, tpm::TPM_ALG_ECC);
    u16b(&mut out, tpm::TPM_ALG_SHA256);
    out.extend_from_slice(&attributes.to_be_bytes());
    tpm2b(&mut out, &[]);
    u16b(&mut out, tpm::TPM_ALG_NULL);
    u16b(&mut out, tpm::TPM_ALG_ECDSA);
    u16b(&mut out, tpm::TPM_ALG_SHA256);
    u16b(&mut out, tpm::TPM_ECC_NIST_P256);
    u16b(&mut out, tpm::TPM_ALG_NULL);
    tpm2b(&mut out, &point.as_bytes()[1..33]);
    tpm2b(&mut out, &point.as_bytes()[33..65]);
    out
}

const AK: u32 = attr::FIXED_TPM
    | attr::FIXED_PARENT
    | attr::SENSITIVE_DATA_ORIGIN
    | attr::USER_WITH_AUTH
    | attr::RESTRICTED
    | attr::SIGN;

/// An EK public area (RSA 2048, template L-1 shape) with an odd modulus
/// nobody has the factors of.
fn ek_public() -> Vec<u8> {
    let mut modulus = [0u8; 256];
    getrandom::fill(&mut modulus).unwrap();
    modulus[0] |= 0x80;
    modulus[255] |= 1;
    let mut out = Vec::new();
    u16b(&mut out, tpm::TPM_ALG_RSA);
    u16b(&mut out, tpm::TPM_ALG_SHA256);
    let attributes = attr::FIXED_TPM
        | attr::FIXED_PARENT
        | attr::SENSITIVE_DATA_ORIGIN
        | attr::ADMIN_WITH_POLICY
        | attr::RESTRICTED
        | attr::DECRYPT;
    out.extend_from_slice(&attributes.to_be_bytes());
    tpm2b(&mut out, &[0x83; 32]);
    u16b(&mut out, tpm::TPM_ALG_AES);
    u16b(&mut out, 128);
    u16b(&mut out, tpm::TPM_ALG_CFB);
    u16b(&mut out, tpm::TPM_ALG_NULL);
    u16b(&mut out, 2048);
    out.extend_from_slice(&0u32.to_be_bytes());
    tpm2b(&mut out, &modulus);
    out
}

fn sign(key: &SigningKey, message: &[u8]) -> Vec<u8> {
    let signature: DerSignature = key.sign(message);
    signature.as_bytes().to_vec()
}

/// The failure has this reason and its message says `says`.
fn assert_failure(failure: &Failure, reason: Reason, says: &str) {
    assert_eq!(failure.reason, reason, "{}", failure.message);
    assert!(failure.message.contains(says), "{}", failure.message);
}

struct Setup {
    service: PortalService,
    code: String,
    device_key: SigningKey,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("portal.db")).unwrap();
        let code = store
            .issue_code(CodeKind::Device, None, 600, now_unix())
            .unwrap()
            .code
            .compact()
            .to_string();
        Self {
            service: PortalService::new(store),
            code,
            device_key: SigningKey::from_slice(&[0x21; 32]).unwrap(),
            _dir: dir,
        }
    }

    fn spki(&self) -> Vec<u8> {
        self.device_key
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .to_vec()
    }

    fn register(&self, tpm: Option<TpmIdentity>) -> RegisterDeviceRequest {
        RegisterDeviceRequest {
            integrity_evidence: String::new(),
            code: self.code.clone(),
            device_public_key: self.spki(),
            device_name: "tpm box".into(),
            signature: sign(
                &self.device_key,
                &binding::activation_message(&self.code, &self.spki()),
            ),
            tpm,
        }
    }

    fn complete(&self, secret: &[u8], signer: &SigningKey) -> CompleteTpmActivationRequest {
        CompleteTpmActivationRequest {
            integrity_evidence: String::new(),
            code: self.code.clone(),
            device_public_key: self.spki(),
            secret: secret.to_vec(),
            signature: sign(
                signer,
                &binding::tpm_activation_message(&self.code, &self.spki(), secret),
            ),
        }
    }

    fn code_unused(&self) -> bool {
        let store = self.service.store().lock().unwrap();
        store
            .db()
            .code(&ActivationCode::parse(&self.code).unwrap())
            .unwrap()
            .unwrap()
            .used_at
            .is_none()
    }

    fn challenge_pending(&self) -> bool {
        let store = self.service.store().lock().unwrap();
        store
            .db()
            .tpm_challenge(
                &store
                    .db()
                    .code_hash(&ActivationCode::parse(&self.code).unwrap()),
                &self.spki(),
            )
            .unwrap()
            .is_some()
    }
}

fn identity() -> TpmIdentity {
    TpmIdentity {
        ek_public: ek_public(),
        ek_certificate: Vec::new(),
        ak_public: ak_public(&SigningKey::from_slice(&[0x22; 32]).unwrap(), AK),
    }
}

#[tokio::test]
async fn a_tpm_registration_is_a_challenge_and_leaves_the_code_unused() {
    let setup = Setup::new();
    let (response, retry) = setup
        .service
        .register_device(setup.register(Some(identity())))
        .await
        .unwrap();
    assert!(!retry);
    assert!(response.device_id.is_empty());
    let challenge = response.tpm_challenge.unwrap();
    assert_eq!(challenge.encrypted_secret.len(), 256);
    assert_eq!(challenge.credential_blob.len(), 2 + 32 + 2 + 32);
    assert!(
        response.attestation_detail.contains("no EK certificate"),
        "{}",
        response.attestation_detail
    );
    assert!(setup.code_unused());
    assert!(setup.challenge_pending());
    // Asking again replaces the challenge; still one, still unused.
    let (again, _) = setup
        .service
        .register_device(setup.register(Some(identity())))
        .await
        .unwrap();
    assert_ne!(again.tpm_challenge.unwrap(), challenge);
    assert!(setup.code_unused());
    let count: i64 = {
        let store = setup.service.store().lock().unwrap();
        let hash = store
            .db()
            .code_hash(&ActivationCode::parse(&setup.code).unwrap());
        store.db().delete_tpm_challenges(&hash, None).unwrap() as i64
    };
    assert_eq!(count, 1);
}

#[tokio::test]
async fn completion_without_a_challenge_is_refused() {
    let setup = Setup::new();
    let failure = setup
        .service
        .complete_tpm_activation(setup.complete(&[1; 32], &setup.device_key))
        .await
        .unwrap_err();
    assert_failure(&failure, Reason::DeviceNotActivated, "no TPM challenge");
    assert!(setup.code_unused());
}

#[tokio::test]
async fn a_wrong_secret_discards_the_challenge() {
    let setup = Setup::new();
    setup
        .service
        .register_device(setup.register(Some(identity())))
        .await
        .unwrap();
    let failure = setup
        .service
        .complete_tpm_activation(setup.complete(&[7; 32], &setup.device_key))
        .await
        .unwrap_err();
    assert_failure(&failure, Reason::SignatureInvalid, "secret");
    assert!(failure.hint.contains("RegisterDevice"), "{}", failure.hint);
    assert!(!setup.challenge_pending());
    assert!(setup.code_unused());
    let failure = setup
        .service
        .complete_tpm_activation(setup.complete(&[7; 32], &setup.device_key))
        .await
        .unwrap_err();
    assert_eq!(failure.reason, Reason::DeviceNotActivated);
}

#[tokio::test]
async fn a_completion_signed_by_another_key_is_refused() {
    let setup = Setup::new();
    setup
        .service
        .register_device(setup.register(Some(identity())))
        .await
        .unwrap();
    let intruder = SigningKey::from_slice(&[0x66; 32]).unwrap();
    let failure = setup
        .service
        .complete_tpm_activation(setup.complete(&[7; 32], &intruder))
        .await
        .unwrap_err();
    assert_failure(&failure, Reason::SignatureInvalid, "device signature");
    // Refused before the challenge was looked at: it is still there.
    assert!(setup.challenge_pending());
    assert!(setup.code_unused());
}

#[tokio::test]
async fn unacceptable_tpm_identities_are_refused() {
    let setup = Setup::new();
    let mut bad_ak = identity();
    bad_ak.ak_public = ak_public(
        &SigningKey::from_slice(&[0x22; 32]).unwrap(),
        AK | attr::DECRYPT,
    );
    let failure = setup
        .service
        .register_device(setup.register(Some(bad_ak)))
        .await
        .unwrap_err();
    assert_failure(&failure, Reason::InvalidArgument, "decrypt");
    let mut truncated = identity();
    truncated.ek_public.pop();
    let failure = setup
        .service
        .register_device(setup.register(Some(truncated)))
        .await
        .unwrap_err();
    assert!(failure.message.contains("truncated"), "{}", failure.message);

    // With EK roots configured, a TPM without an EK certificate is refused.
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("portal.db")).unwrap();
    let code = store
        .issue_code(CodeKind::Device, None, 600, now_unix())
        .unwrap()
        .code
        .compact()
        .to_string();
    let strict = Setup {
        service: PortalService::new(store).with_tpm_ek_roots(Vec::new()),
        code,
        device_key: SigningKey::from_slice(&[0x23; 32]).unwrap(),
        _dir: dir,
    };
    let failure = strict
        .service
        .register_device(strict.register(Some(identity())))
        .await
        .unwrap_err();
    assert_failure(&failure, Reason::SignatureInvalid, "EK certificate");
    assert!(strict.code_unused());
}

#[tokio::test]
async fn without_a_tpm_registration_is_immediate() {
    let setup = Setup::new();
    let (response, _) = setup
        .service
        .register_device(setup.register(None))
        .await
        .unwrap();
    assert!(response.device_id.starts_with("dev-"));
    assert!(response.tpm_challenge.is_none());
    assert_eq!(response.attestation_detail, "no TPM identity");
    assert!(!setup.code_unused());
}
