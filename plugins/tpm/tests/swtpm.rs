//! The TPM key store against a real software TPM (swtpm, started by
//! tests/swtpm/start.sh with an EK certificate), one TPM per test.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fleetkey_e2e::Swtpm;
use fleetkey_plugin::{KeyStore, Pin, Reason};
use fleetkey_tpm::{TpmConfig, TpmError, TpmKeyStore};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

fn open(tpm: &Swtpm) -> TpmKeyStore {
    TpmKeyStore::open(&TpmConfig {
        tcti: Some(tpm.tcti.clone()),
        persistent_handle: None,
        ..Default::default()
    })
    .expect("open the TPM key store on swtpm")
}

fn verifies(public_key_der: &[u8], digest: &[u8; 32], signature_der: &[u8]) -> bool {
    let key = VerifyingKey::from_public_key_der(public_key_der).unwrap();
    let signature = Signature::from_der(signature_der).unwrap();
    key.verify_prehash(digest, &signature).is_ok()
}

#[test]
fn keys_sign_with_the_pin_and_many_users_fit() {
    let tpm = Swtpm::start();
    let store = open(&tpm);
    let id = store.identity();
    assert_eq!(id.manufacturer, "IBM");
    assert!(id.simulator, "{id:?}");
    assert!(store.describe().hardware_backed);
    let details = store.details();
    assert!(details.iter().any(|(k, _)| k == "warning"), "{details:?}");
    assert!(
        details
            .iter()
            .any(|(k, v)| k == "firmware" && !v.is_empty())
    );
    // swtpm's defaults: 3 failures lock the TPM, so 2 per key.
    assert_eq!(store.max_pin_attempts(), Some(2));

    // More users than the TPM has object slots (swtpm: 3): keys are
    // loaded per use and flushed.
    let digest: [u8; 32] = Sha256::digest(b"approve login 42").into();
    let mut keys = Vec::new();
    for i in 0..8 {
        let pin = Pin::new(format!("pin{i}"));
        let key = store.create_key(&format!("u-{i}"), &pin).unwrap();
        keys.push((key, pin));
    }
    for (key, pin) in &keys {
        let signature = store.sign_digest(&key.key_ref, pin, &digest).unwrap();
        assert!(verifies(&key.public_key_der, &digest, &signature));
    }
    let (alice, alice_pin) = &keys[0];
    let (bob, _) = &keys[1];
    assert_ne!(alice.public_key_der, bob.public_key_der);

    // Another user's PIN does not open alice's key.
    let err = store
        .sign_digest(&alice.key_ref, &Pin::new("pin1"), &digest)
        .unwrap_err();
    assert!(err.is(Reason::PinWrong), "{err:?}");

    // Change the PIN: the new blob opens with the new PIN only.
    let new_ref = store
        .change_pin(&alice.key_ref, alice_pin, &Pin::new("new-pin"))
        .unwrap();
    let signature = store
        .sign_digest(&new_ref, &Pin::new("new-pin"), &digest)
        .unwrap();
    assert!(verifies(&alice.public_key_der, &digest, &signature));
    let err = store.sign_digest(&new_ref, alice_pin, &digest).unwrap_err();
    assert!(err.is(Reason::PinWrong), "{err:?}");

    // PINs longer than the TPM takes are refused before the TPM sees them.
    let err = store
        .create_key("u-long", &Pin::new("x".repeat(33)))
        .unwrap_err();
    assert!(err.is(Reason::PinPolicy), "{err:?}");
    // Damaged blobs say so.
    let err = store.sign_digest(b"junk", alice_pin, &digest).unwrap_err();
    assert!(
        err.is(Reason::Internal) && err.message.contains("damaged"),
        "{err:?}"
    );
}

#[test]
fn a_key_blob_from_another_tpm_does_not_load() {
    let first = Swtpm::start();
    let second = Swtpm::start();
    let store_a = open(&first);
    let store_b = open(&second);
    let pin = Pin::new("2468");
    let key = store_a.create_key("u-a", &pin).unwrap();
    let digest = [7u8; 32];
    assert!(store_a.sign_digest(&key.key_ref, &pin, &digest).is_ok());
    let err = store_b
        .sign_digest(&key.key_ref, &pin, &digest)
        .unwrap_err();
    assert!(err.is(Reason::TpmKeyRejected), "{err:?}");
    assert!(err.to_string().contains("not made by this TPM"), "{err}");
}

#[test]
fn wrong_pins_are_counted_by_the_tpm_until_lockout() {
    let tpm = Swtpm::start();
    let store = open(&tpm);
    let pin = Pin::new("1357");
    let key = store.create_key("u-x", &pin).unwrap();
    let digest = [1u8; 32];
    assert_eq!(store.da_state().unwrap().counter, 0);
    for expected in 1..=3 {
        let err = store
            .sign_digest(&key.key_ref, &Pin::new("0000"), &digest)
            .unwrap_err();
        assert!(err.is(Reason::PinWrong), "{err:?}");
        assert_eq!(store.da_state().unwrap().counter, expected);
    }
    // The TPM now refuses every PIN, the right one too, and says how long.
    let da = store.da_state().unwrap();
    assert!(da.in_lockout, "{da:?}");
    let err = store.sign_digest(&key.key_ref, &pin, &digest).unwrap_err();
    assert!(
        err.is(Reason::TpmLockout),
        "expected a lockout, got {err:?}"
    );
    assert_eq!(err.retry_after_seconds, Some(1000), "{err}");
    assert!(err.message.contains("lockout"), "{err}");
    assert!(
        err.hint.as_deref().is_some_and(|h| h.contains("1000 s")),
        "{err:?}"
    );
}

/// Without a lockout authorization anyone who can open the TPM can reset
/// its counter, so the store does, when asked, and only then: not with
/// the config's no, not once a lockout authorization is set.
#[test]
fn the_counter_is_reset_only_without_a_lockout_authorization() {
    let tpm = Swtpm::start();
    let digest = [2u8; 32];
    let pin = Pin::new("1357");
    let wrong = |store: &TpmKeyStore, key: &[u8]| {
        let err = store
            .sign_digest(key, &Pin::new("0000"), &digest)
            .unwrap_err();
        assert!(err.is(Reason::PinWrong), "{err:?}");
    };

    // The config says no: nothing is reset.
    let refusing = TpmKeyStore::open(&TpmConfig {
        tcti: Some(tpm.tcti.clone()),
        reset_counter_without_lockout_auth: Some(false),
        ..Default::default()
    })
    .unwrap();
    let key = refusing.create_key("u-c", &pin).unwrap();
    wrong(&refusing, &key.key_ref);
    assert!(!refusing.reset_shared_lockout().unwrap());
    assert_eq!(refusing.da_state().unwrap().counter, 1);
    drop(refusing);

    // The default, with no lockout authorization: reset to 0, and the key
    // still signs on the store's reopened connection.
    let store = open(&tpm);
    assert!(!store.da_state().unwrap().lockout_auth_set);
    wrong(&store, &key.key_ref);
    assert_eq!(store.da_state().unwrap().counter, 2);
    assert!(store.reset_shared_lockout().unwrap());
    assert_eq!(store.da_state().unwrap().counter, 0);
    assert!(!store.reset_shared_lockout().unwrap(), "nothing to reset");
    store.sign_digest(&key.key_ref, &pin, &digest).unwrap();
    drop(store);

    // With a lockout authorization set, the store cannot and does not.
    tpm.set_lockout_auth("lockout-secret");
    let store = open(&tpm);
    assert!(store.da_state().unwrap().lockout_auth_set);
    wrong(&store, &key.key_ref);
    assert!(!store.reset_shared_lockout().unwrap());
    assert_eq!(store.da_state().unwrap().counter, 1);
}

#[test]
fn the_store_reconnects_when_the_tpm_restarts() {
    let mut tpm = Swtpm::start();
    let store = open(&tpm);
    let pin = Pin::new("8642");
    let key = store.create_key("u-r", &pin).unwrap();
    let digest = [9u8; 32];
    tpm.restart();
    // Same TPM state (owner seed), so the same storage key: the blob loads.
    let signature = store.sign_digest(&key.key_ref, &pin, &digest).unwrap();
    assert!(verifies(&key.public_key_der, &digest, &signature));
}

#[test]
fn a_persistent_storage_key_is_made_once_and_reused() {
    let tpm = Swtpm::start();
    let config = TpmConfig {
        tcti: Some(tpm.tcti.clone()),
        persistent_handle: Some(0x8100_0101),
        ..Default::default()
    };
    let pin = Pin::new("1111");
    let digest = [3u8; 32];
    let key = {
        let store = TpmKeyStore::open(&config).unwrap();
        store.create_key("u-p", &pin).unwrap()
    };
    let store = TpmKeyStore::open(&config).unwrap();
    let signature = store.sign_digest(&key.key_ref, &pin, &digest).unwrap();
    assert!(verifies(&key.public_key_der, &digest, &signature));
    drop(store);
    let out = tpm.tpm2("tpm2_getcap", &["handles-persistent"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0x81000101"),
        "{out:?}"
    );
}

#[test]
fn no_tpm_is_a_clear_error() {
    let err = match TpmKeyStore::open(&TpmConfig {
        tcti: Some("swtpm:host=127.0.0.1,port=1".into()),
        persistent_handle: None,
        ..Default::default()
    }) {
        Ok(_) => panic!("nothing listens on port 1"),
        Err(e) => e,
    };
    assert!(matches!(err, TpmError::NoTpm { .. }), "{err:?}");
    assert!(err.to_string().contains("port=1"), "{err}");
}

/// The AK's name as the TPM computes it: nameAlg (SHA-256), then the
/// SHA-256 of the public area.
fn name_of(public_area: &[u8]) -> Vec<u8> {
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&Sha256::digest(public_area));
    name
}

/// A credential made by `tpm2_makecredential` (no TPM: `-T none`) for the
/// store's EK and AK is recovered by the store's TPM, and only for the AK
/// named; the identity carries the swtpm's EK certificate.
#[test]
fn the_identity_answers_a_credential_challenge_made_by_tpm2_tools() {
    let tpm = Swtpm::start();
    let store = open(&tpm);
    let identity = store.hardware_identity().unwrap().expect("a TPM identity");
    assert_eq!(
        identity,
        store.hardware_identity().unwrap().unwrap(),
        "the EK and AK come out the same every time"
    );
    // The EK certificate is swtpm's, for the EK's RSA key.
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("ek.der");
    std::fs::write(&cert, &identity.ek_certificate).unwrap();
    let modulus = std::process::Command::new("openssl")
        .args(["x509", "-inform", "der", "-noout", "-modulus", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(modulus.status.success(), "{modulus:?}");
    let modulus = String::from_utf8(modulus.stdout).unwrap();
    let modulus = modulus.trim().trim_start_matches("Modulus=").to_lowercase();
    let ek_hex = hex::encode(&identity.ek_public);
    assert!(
        ek_hex.ends_with(&modulus),
        "EK certificate is for another key"
    );

    // tpm2_makecredential takes the EK as TPM2B_PUBLIC.
    let ek_pub = dir.path().join("ek.pub");
    let mut tpm2b = (identity.ek_public.len() as u16).to_be_bytes().to_vec();
    tpm2b.extend_from_slice(&identity.ek_public);
    std::fs::write(&ek_pub, &tpm2b).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"0123456789abcdef0123456789abcdef").unwrap();
    let make = |name: &[u8]| {
        let out = dir.path().join("cred");
        let hex = hex::encode(name);
        let made = std::process::Command::new("tpm2_makecredential")
            .args(["-T", "none", "-n", &hex, "-u"])
            .arg(&ek_pub)
            .arg("-s")
            .arg(&secret)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        // tpm2-tools' file: magic, version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes[..4], [0xba, 0xdc, 0xc0, 0xde]);
        let rest = &bytes[8..];
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let blob = rest[2..2 + len].to_vec();
        let rest = &rest[2 + len..];
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        fleetkey_plugin::CredentialChallenge {
            credential_blob: blob,
            encrypted_secret: rest[2..2 + len].to_vec(),
        }
    };
    let challenge = make(&name_of(&identity.ak_public));
    let recovered = store.activate_credential(&challenge).unwrap();
    assert_eq!(recovered.as_slice(), b"0123456789abcdef0123456789abcdef");

    // Made for another AK name: the TPM refuses.
    let mut other = identity.ak_public.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    let err = store
        .activate_credential(&make(&name_of(&other)))
        .unwrap_err();
    assert!(err.to_string().contains("ActivateCredential"), "{err}");
    // Garbage is a clear error too.
    let err = store
        .activate_credential(&fleetkey_plugin::CredentialChallenge {
            credential_blob: vec![0; 3],
            encrypted_secret: vec![1; 2],
        })
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    // The store still works after the refusals.
    let pin = Pin::new("2468");
    let key = store.create_key("u-after", &pin).unwrap();
    let attestation = store.attest(&key.key_ref, &pin, &[7; 32]).unwrap();
    assert_eq!(attestation.format, "tpm2-certify");
    assert!(!attestation.data.is_empty());
}

/// Certifying needs the key's PIN, and a wrong one is a wrong PIN.
#[test]
fn certify_takes_the_pin() {
    let tpm = Swtpm::start();
    let store = open(&tpm);
    let pin = Pin::new("1357");
    let key = store.create_key("u-c", &pin).unwrap();
    let err = store
        .attest(&key.key_ref, &Pin::new("0000"), &[1; 32])
        .unwrap_err();
    assert!(err.is(Reason::PinWrong), "{err:?}");
    assert!(store.attest(&key.key_ref, &pin, &[1; 32]).is_ok());
}

/// The certification of `attestation` (format tpm2-certify): its
/// TPMS_ATTEST verifies with the AK's public key and carries `nonce`.
fn certified_by(attestation: &fleetkey_plugin::Attestation, ak_der: &[u8], nonce: &[u8; 32]) {
    use p256::ecdsa::signature::Verifier;
    use prost::Message;
    use tss_esapi::traits::UnMarshall;
    assert_eq!(attestation.format, "tpm2-certify");
    let certification =
        fleetkey_proto::portal::TpmCertification::decode(attestation.data.as_slice()).unwrap();
    let signature = tss_esapi::structures::Signature::unmarshall(&certification.signature).unwrap();
    let der = fleetkey_tpm::keys::signature_der(&signature).unwrap();
    let ak = VerifyingKey::from_public_key_der(ak_der).unwrap();
    ak.verify(
        &certification.certify_info,
        &Signature::from_der(&der).unwrap(),
    )
    .expect("the certification verifies with the AK");
    assert!(
        certification
            .certify_info
            .windows(nonce.len())
            .any(|w| w == nonce),
        "the certification carries the nonce"
    );
}

/// An enrollment's key work in one session: the key, its certification
/// by the AK (with the nonce) and the proof of possession over the digest
/// of its own public key; the key then signs with its PIN and only with
/// it. Repeated, with quotes between, nothing is left loaded (the TPM's
/// few object slots would run out).
#[test]
fn one_enrollment_session_makes_a_certified_key_and_its_proof() {
    let tpm = Swtpm::start();
    let store = open(&tpm);
    let pin = Pin::new("4812");
    let pop = |public_key_der: &[u8]| -> [u8; 32] { Sha256::digest(public_key_der).into() };
    let ak_der = store.quote(&[3; 32]).unwrap().ak_public_key_der;
    let mut keys = Vec::new();
    for i in 0..5u8 {
        let nonce = [i; 32];
        let made = store
            .create_for_enrollment(&format!("u-e{i}"), &pin, &Default::default(), &nonce, &pop)
            .unwrap();
        let key = &made.enrolled.key;
        assert!(verifies(
            &key.public_key_der,
            &pop(&key.public_key_der),
            &made.user_signature
        ));
        certified_by(&made.attestation, &ak_der, &nonce);
        assert_eq!(store.quote(&[i; 32]).unwrap().ak_public_key_der, ak_der);
        keys.push(made.enrolled.key);
    }
    let digest = [5u8; 32];
    for key in &keys {
        let signature = store.sign_digest(&key.key_ref, &pin, &digest).unwrap();
        assert!(verifies(&key.public_key_der, &digest, &signature));
    }
    let err = store
        .sign_digest(&keys[0].key_ref, &Pin::new("0000"), &digest)
        .unwrap_err();
    assert!(err.is(Reason::PinWrong), "{err:?}");
    // Options the TPM has no use for are refused, as by create_key_with.
    let slot = fleetkey_plugin::CreateOptions {
        slot: Some("9a".into()),
        ..Default::default()
    };
    let err = store
        .create_for_enrollment("u-x", &pin, &slot, &[0; 32], &pop)
        .unwrap_err();
    assert!(err.is(Reason::InvalidArgument), "{err:?}");
}

/// The attestation key stays loaded between operations; when the TPM
/// restarts under the store (its loaded objects gone), the stale handle
/// is noticed and the operation still succeeds, certified by the same AK.
#[test]
fn the_kept_attestation_key_is_made_again_after_a_tpm_restart() {
    let mut tpm = Swtpm::start();
    let store = open(&tpm);
    let pin = Pin::new("9753");
    let key = store.create_key("u-k", &pin).unwrap();
    let ak_der = store.quote(&[1; 32]).unwrap().ak_public_key_der;
    certified_by(
        &store.attest(&key.key_ref, &pin, &[2; 32]).unwrap(),
        &ak_der,
        &[2; 32],
    );

    // Each unorderly restart after a PIN was used counts one failure on
    // swtpm (3 lock it): two restarts.
    tpm.restart();
    certified_by(
        &store.attest(&key.key_ref, &pin, &[3; 32]).unwrap(),
        &ak_der,
        &[3; 32],
    );
    assert_eq!(store.quote(&[4; 32]).unwrap().ak_public_key_der, ak_der);

    tpm.restart();
    let pop = |public_key_der: &[u8]| -> [u8; 32] { Sha256::digest(public_key_der).into() };
    let made = store
        .create_for_enrollment("u-k2", &pin, &Default::default(), &[5; 32], &pop)
        .unwrap();
    certified_by(&made.attestation, &ak_der, &[5; 32]);
    let signature = store.sign_digest(&key.key_ref, &pin, &[6; 32]).unwrap();
    assert!(verifies(&key.public_key_der, &[6; 32], &signature));
}
