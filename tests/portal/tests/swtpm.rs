//! The portal's TPM code against a real (software) TPM: swtpm started by
//! tests/swtpm/start.sh, driven with tpm2-tools. Each test has its own
//! swtpm instance(s). Skipped, with a message, where swtpm or tpm2-tools
//! is not installed.

// Test code: a failed step should stop the test with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use fleetkey_portal::der;
use fleetkey_portal::service::PortalService;
use fleetkey_portal::store::{CodeKind, EkCertificateStatus, Store};
use fleetkey_portal::tpm::{self, Public};
use fleetkey_proto::portal::{
    Attestation, CompleteTpmActivationRequest, EnrollUserRequest, RegisterDeviceRequest,
    TpmCertification, TpmIdentity,
};
use fleetkey_proto::time::now_unix;
use fleetkey_proto::{Reason, binding};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use prost::Message;

const AK_ATTRIBUTES: &str = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign";
const KEY_ATTRIBUTES: &str = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign";
/// The qualifying data tpm2_certify (tpm2-tools 5.x) always uses: it has
/// no option to set it.
const TPM2_TOOLS_CERTIFY_NONCE: [u8; 4] = [0x00, 0xff, 0x55, 0xaa];

fn tools_present() -> bool {
    [
        "swtpm",
        "swtpm_setup",
        "tpm2_createek",
        "tpm2_activatecredential",
    ]
    .iter()
    .all(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

#[path = "support/swtpm.rs"]
mod support_swtpm;
use support_swtpm::Swtpm;

impl Swtpm {
    fn ca(&self, name: &str) -> PathBuf {
        self.dir.path().join("state/ca").join(name)
    }

    /// A TPM2B_PUBLIC file's TPMT_PUBLIC.
    fn public(&self, file: &str) -> Vec<u8> {
        let bytes = std::fs::read(self.path(file)).unwrap();
        let size = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
        assert_eq!(size + 2, bytes.len(), "{file} is a TPM2B_PUBLIC");
        bytes[2..].to_vec()
    }

    /// The EK (RSA 2048, template L-1): its TPMT_PUBLIC.
    fn ek(&self) -> Vec<u8> {
        self.tool(&["tpm2_createek", "-G", "rsa", "-c", "ek.ctx", "-u", "ek.pub"]);
        self.public("ek.pub")
    }

    /// An AK as docs/tpm-attestation.md makes it: its TPMT_PUBLIC.
    fn ak(&self) -> Vec<u8> {
        self.tool(&[
            "tpm2_createprimary",
            "-C",
            "e",
            "-G",
            "ecc256:ecdsa-sha256:null",
            "-g",
            "sha256",
            "-c",
            "ak.ctx",
            "-a",
            AK_ATTRIBUTES,
            "-Q",
        ]);
        self.tool(&[
            "tpm2_readpublic",
            "-c",
            "ak.ctx",
            "-o",
            "ak.pub",
            "-n",
            "ak.name",
            "-Q",
        ]);
        self.public("ak.pub")
    }

    fn ek_certificate(&self) -> Vec<u8> {
        self.tool(&["tpm2_nvread", "0x01c00002", "-o", "ekcert.der"]);
        std::fs::read(self.path("ekcert.der")).unwrap()
    }

    /// The swtpm test CA: root and intermediate, DER.
    fn ca_bundle(&self) -> Vec<Vec<u8>> {
        let mut text = std::fs::read_to_string(self.ca("swtpm-localca-rootca-cert.pem")).unwrap();
        text.push_str(&std::fs::read_to_string(self.ca("issuercert.pem")).unwrap());
        der::pem_certificates(&text).unwrap()
    }

    /// Writes a credential in the file format tpm2_activatecredential
    /// reads (tpm2-tools: magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT,
    /// TPM2B_ENCRYPTED_SECRET) and runs it; the recovered secret.
    fn activate(&self, blob: &[u8], encrypted_secret: &[u8]) -> Result<Vec<u8>, String> {
        let mut file = 0xBADC_C0DEu32.to_be_bytes().to_vec();
        file.extend_from_slice(&1u32.to_be_bytes());
        file.extend_from_slice(&u16::try_from(blob.len()).unwrap().to_be_bytes());
        file.extend_from_slice(blob);
        file.extend_from_slice(&u16::try_from(encrypted_secret.len()).unwrap().to_be_bytes());
        file.extend_from_slice(encrypted_secret);
        std::fs::write(self.path("cred.in"), file).unwrap();
        let _ = std::fs::remove_file(self.path("secret.out"));
        self.tool(&[
            "tpm2_startauthsession",
            "--policy-session",
            "-S",
            "session.ctx",
        ]);
        self.tool(&["tpm2_policysecret", "-S", "session.ctx", "-c", "e", "-Q"]);
        let result = self.run(&[
            "tpm2_activatecredential",
            "-c",
            "ak.ctx",
            "-C",
            "ek.ctx",
            "-i",
            "cred.in",
            "-o",
            "secret.out",
            "-P",
            "session:session.ctx",
        ]);
        let _ = self.run(&["tpm2_flushcontext", "session.ctx"]);
        result?;
        Ok(std::fs::read(self.path("secret.out")).unwrap())
    }

    /// A P-256 signing key under a storage primary, loaded as key.ctx, with
    /// these attributes; its TPMT_PUBLIC.
    fn user_key(&self, attributes: &str, name: &str) -> Vec<u8> {
        self.tool(&["tpm2_createprimary", "-C", "o", "-c", "primary.ctx", "-Q"]);
        let public = format!("{name}.pub");
        let private = format!("{name}.priv");
        let context = format!("{name}.ctx");
        self.tool(&[
            "tpm2_create",
            "-C",
            "primary.ctx",
            "-G",
            "ecc256:ecdsa-sha256",
            "-u",
            &public,
            "-r",
            &private,
            "-a",
            attributes,
            "-Q",
        ]);
        self.tool(&[
            "tpm2_load",
            "-C",
            "primary.ctx",
            "-u",
            &public,
            "-r",
            &private,
            "-c",
            &context,
            "-Q",
        ]);
        self.public(&public)
    }

    /// TPM2_Certify of the key `name` by the AK: (TPMS_ATTEST, TPMT_SIGNATURE).
    fn certify(&self, name: &str) -> (Vec<u8>, Vec<u8>) {
        self.tool(&[
            "tpm2_certify",
            "-c",
            &format!("{name}.ctx"),
            "-C",
            "ak.ctx",
            "-g",
            "sha256",
            "-o",
            "attest.out",
            "-s",
            "signature.out",
        ]);
        (
            std::fs::read(self.path("attest.out")).unwrap(),
            std::fs::read(self.path("signature.out")).unwrap(),
        )
    }
}

/// These tests need swtpm and tpm2-tools (`scripts/test.sh` installs
/// them): without them they fail, rather than pass without checking
/// anything.
macro_rules! require_tools {
    () => {
        assert!(
            tools_present(),
            "swtpm or tpm2-tools is not installed: apt-get install swtpm swtpm-tools tpm2-tools (scripts/test.sh does)"
        );
    };
}

#[test]
fn make_credential_round_trip_through_a_real_tpm() {
    require_tools!();
    let tpm = Swtpm::start();
    let ek = Public::parse(&tpm.ek()).unwrap();
    let ak = Public::parse(&tpm.ak()).unwrap();
    tpm::check_ek_public(&ek).unwrap();
    tpm::check_ak_public(&ak).unwrap();
    let name = ak.name().unwrap();
    assert_eq!(
        name,
        std::fs::read(tpm.path("ak.name")).unwrap(),
        "the TPM's name"
    );

    // Our file layout is the one tpm2_makecredential writes.
    std::fs::write(tpm.path("probe.secret"), [7u8; 32]).unwrap();
    tpm.tool(&[
        "tpm2_makecredential",
        "-T",
        "none",
        "-u",
        "ek.pub",
        "-s",
        "probe.secret",
        "-n",
        &hex::encode(&name),
        "-o",
        "probe.cred",
    ]);
    let probe = std::fs::read(tpm.path("probe.cred")).unwrap();
    assert_eq!(&probe[..8], &[0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1]);
    assert_eq!(probe.len(), 8 + 2 + 68 + 2 + 256);

    let secret: [u8; 32] = std::array::from_fn(|i| i as u8 ^ 0x5c);
    let credential = tpm::make_credential(&ek, &name, &secret).unwrap();
    let recovered = tpm
        .activate(&credential.credential_blob, &credential.encrypted_secret)
        .unwrap();
    assert_eq!(recovered, secret);

    // A flipped bit anywhere in the blob fails the TPM's integrity check.
    let mut tampered = credential.credential_blob.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let error = tpm
        .activate(&tampered, &credential.encrypted_secret)
        .unwrap_err();
    assert!(error.contains("0x"), "{error}");
    // A credential for another name (another AK) is refused too.
    let mut other_name = name.clone();
    other_name[5] ^= 1;
    let other = tpm::make_credential(&ek, &other_name, &secret).unwrap();
    assert!(
        tpm.activate(&other.credential_blob, &other.encrypted_secret)
            .is_err()
    );
}

#[test]
fn ek_certificates_chain_to_their_own_ca_only() {
    require_tools!();
    let (a, b) = (Swtpm::start(), Swtpm::start());
    let ek = Public::parse(&a.ek()).unwrap();
    let certificate = a.ek_certificate();
    let check = tpm::check_ek_certificate(&certificate, &ek, &a.ca_bundle()).unwrap();
    assert!(check.anchor.contains("CN="), "{check:?}");
    // NV padding after the DER is ignored.
    let mut padded = certificate.clone();
    padded.extend_from_slice(&[0; 64]);
    tpm::check_ek_certificate(&padded, &ek, &a.ca_bundle()).unwrap();

    // Another TPM's CA: refused.
    let error = tpm::check_ek_certificate(&certificate, &ek, &b.ca_bundle()).unwrap_err();
    assert!(
        error.0.contains("does not verify") || error.0.contains("has no certificate"),
        "{error}"
    );
    // Without the intermediate there is no chain.
    let root_only = der::pem_certificates(
        &std::fs::read_to_string(a.ca("swtpm-localca-rootca-cert.pem")).unwrap(),
    )
    .unwrap();
    assert!(tpm::check_ek_certificate(&certificate, &ek, &root_only).is_err());
    // The right chain for another EK: refused.
    let other_ek = Public::parse(&b.ek()).unwrap();
    let error = tpm::check_ek_certificate(&certificate, &other_ek, &a.ca_bundle()).unwrap_err();
    assert!(error.0.contains("another key"), "{error}");
    assert!(tpm::check_ek_certificate(&[], &ek, &a.ca_bundle()).is_err());
}

#[test]
fn tpm2_certify_by_the_ak_verifies() {
    require_tools!();
    let (a, b) = (Swtpm::start(), Swtpm::start());
    let ak = Public::parse(&a.ak()).unwrap();
    let other_ak = Public::parse(&b.ak()).unwrap();
    let key_public = a.user_key(KEY_ATTRIBUTES, "key");
    let user_spki = Public::parse(&key_public)
        .unwrap()
        .p256_key()
        .unwrap()
        .to_public_key_der()
        .unwrap()
        .to_vec();
    let (attest, signature) = a.certify("key");
    let nonce = TPM2_TOOLS_CERTIFY_NONCE;
    tpm::verify_certification(&ak, &key_public, &attest, &signature, &nonce, &user_spki).unwrap();

    let refused = |ak: &Public, public: &[u8], attest: &[u8], nonce: &[u8]| {
        tpm::verify_certification(ak, public, attest, &signature, nonce, &user_spki)
            .unwrap_err()
            .0
    };
    assert!(refused(&other_ak, &key_public, &attest, &nonce).contains("signature does not verify"));
    let mut flipped = attest.clone();
    flipped[attest.len() - 3] ^= 1;
    assert!(refused(&ak, &key_public, &flipped, &nonce).contains("signature does not verify"));
    assert!(refused(&ak, &key_public, &attest, &[1; 32]).contains("extraData"));

    // A key that may leave the TPM, certified by the same AK.
    let loose_public = a.user_key("sensitivedataorigin|userwithauth|sign", "loose");
    assert!(refused(&ak, &loose_public, &attest, &nonce).contains("another key"));
    let (loose_attest, loose_signature) = a.certify("loose");
    let loose_spki = Public::parse(&loose_public)
        .unwrap()
        .p256_key()
        .unwrap()
        .to_public_key_der()
        .unwrap()
        .to_vec();
    let error = tpm::verify_certification(
        &ak,
        &loose_public,
        &loose_attest,
        &loose_signature,
        &nonce,
        &loose_spki,
    )
    .unwrap_err();
    assert!(error.0.contains("lack fixedTPM, fixedParent"), "{error}");
}

fn sign(key: &SigningKey, message: &[u8]) -> Vec<u8> {
    let signature: DerSignature = key.sign(message);
    signature.as_bytes().to_vec()
}

/// The whole activation through the service, with a real TPM answering
/// the challenge and the EK certificate checked against the swtpm CA.
#[tokio::test(flavor = "multi_thread")]
async fn tpm_activation_through_the_service() {
    require_tools!();
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("portal.db")).unwrap();
    let code = store
        .issue_code(CodeKind::Device, None, 600, now_unix())
        .unwrap()
        .code
        .compact()
        .to_string();
    let service = PortalService::new(store).with_tpm_ek_roots(tpm.ca_bundle());
    let device_key = SigningKey::from_slice(&[0x31; 32]).unwrap();
    let device_spki = device_key
        .verifying_key()
        .to_public_key_der()
        .unwrap()
        .to_vec();
    let identity = TpmIdentity {
        ek_public: tpm.ek(),
        ek_certificate: tpm.ek_certificate(),
        ak_public: tpm.ak(),
    };
    let request = RegisterDeviceRequest {
        integrity_evidence: String::new(),
        code: code.clone(),
        device_public_key: device_spki.clone(),
        device_name: "tpm box".into(),
        signature: sign(
            &device_key,
            &binding::activation_message(&code, &device_spki),
        ),
        tpm: Some(identity.clone()),
    };
    let (response, _) = service.register_device(request.clone()).await.unwrap();
    assert!(response.device_id.is_empty());
    let challenge = response.tpm_challenge.unwrap();
    assert!(
        response.attestation_detail.contains("pending"),
        "{}",
        response.attestation_detail
    );
    let secret = tpm
        .activate(&challenge.credential_blob, &challenge.encrypted_secret)
        .unwrap();
    let complete = CompleteTpmActivationRequest {
        integrity_evidence: String::new(),
        code: code.clone(),
        device_public_key: device_spki.clone(),
        signature: sign(
            &device_key,
            &binding::tpm_activation_message(&code, &device_spki, &secret),
        ),
        secret,
    };
    let (done, retry) = service
        .complete_tpm_activation(complete.clone())
        .await
        .unwrap();
    assert!(!retry);
    assert!(done.device_id.starts_with("dev-"));
    assert!(
        done.attestation_detail.contains("bound to the EK")
            && done.attestation_detail.contains("EK certificate verified"),
        "{}",
        done.attestation_detail
    );
    let (again, retry) = service.complete_tpm_activation(complete).await.unwrap();
    assert!(retry);
    assert_eq!(again.device_id, done.device_id);
    let stored = {
        let store = service.store().lock().unwrap();
        store.db().device(&done.device_id).unwrap().unwrap()
    };
    let stored_tpm = stored.tpm.unwrap();
    assert_eq!(
        stored_tpm.ek_certificate_status,
        EkCertificateStatus::Verified
    );
    assert_eq!(stored_tpm.ak_public, identity.ak_public);

    // tpm2_certify cannot set the qualifying data, so its certification
    // is refused for this enrollment's nonce, naming the check.
    let user_code = {
        let mut store = service.store().lock().unwrap();
        store
            .issue_code(CodeKind::User, Some("alice"), 600, now_unix())
            .unwrap()
            .code
            .compact()
            .to_string()
    };
    let key_public = tpm.user_key(KEY_ATTRIBUTES, "key");
    let (attest, signature) = tpm.certify("key");
    let user_key = Public::parse(&key_public).unwrap().p256_key().unwrap();
    let user_spki = user_key.to_public_key_der().unwrap().to_vec();
    let message = binding::enrollment_message(&done.device_id, &user_code, &user_spki, "tpm");
    // The user key's proof of possession: signed by the TPM.
    std::fs::write(tpm.path("digest.bin"), binding::digest(&message)).unwrap();
    tpm.tool(&[
        "tpm2_sign",
        "-c",
        "key.ctx",
        "-g",
        "sha256",
        "-d",
        "-o",
        "pop.sig",
        "digest.bin",
    ]);
    let pop = tpm::parse_ecdsa_signature(&std::fs::read(tpm.path("pop.sig")).unwrap())
        .unwrap()
        .to_der()
        .as_bytes()
        .to_vec();
    let failure = service
        .enroll_user(EnrollUserRequest {
            integrity_evidence: String::new(),
            device_id: done.device_id.clone(),
            code: user_code,
            user_public_key: user_spki,
            backend: "tpm".into(),
            attestation: Some(Attestation {
                format: "tpm2-certify".into(),
                data: TpmCertification {
                    public_area: key_public,
                    certify_info: attest,
                    signature,
                }
                .encode_to_vec(),
            }),
            user_signature: pop,
            device_signature: sign(&device_key, &message),
        })
        .await
        .unwrap_err();
    assert_eq!(failure.reason, Reason::SignatureInvalid);
    assert!(failure.message.contains("extraData"), "{}", failure.message);
}
