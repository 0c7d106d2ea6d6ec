//! The signed integrity report on a real (software) TPM: swtpm's PCRs are
//! extended with the synthetic event log's events (tpm2_pcrextend, as
//! firmware would), the key store quotes them with the AK, and
//! `tpm2_checkquote` verifies the exported files with the AK's public key.

// Test helpers outside #[test] functions may panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use fleetkey_e2e::Swtpm;
use fleetkey_integrity::checks::ids;
use fleetkey_integrity::eventlog::{EventLog, TPM_ALG_SHA256, synthetic_boot};
use fleetkey_integrity::quote::{QuoteAttest, qualifying_data, write_checkquote_files};
use fleetkey_integrity::{Attribute, Outcome, Report, hex, unhex};
use fleetkey_plugin::KeyStore;
use fleetkey_tpm::{TpmConfig, TpmKeyStore};
use p256::ecdsa::VerifyingKey;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};

fn report() -> Report {
    Report::new(
        vec![Attribute {
            id: ids::TPM.into(),
            level: 1,
            outcome: Outcome::Pass,
            result: "found".into(),
            detail: "TPM 2.0".into(),
            hint: String::new(),
        }],
        true,
    )
}

fn checkquote(dir: &Path, qualifying: &[u8]) -> Output {
    Command::new("tpm2_checkquote")
        .args([
            "-u",
            "ak.pem",
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-f",
            "quote.pcrs",
            "-g",
            "sha256",
            "-q",
        ])
        .arg(hex(qualifying))
        .current_dir(dir)
        .output()
        .expect("tpm2_checkquote (tpm2-tools) must be installed")
}

#[test]
fn a_quote_of_the_boot_pcrs_verifies_with_tpm2_checkquote() {
    let tpm = Swtpm::start();
    let (log, events) = synthetic_boot(&[TPM_ALG_SHA256]);
    for (pcr, digest) in &events {
        let out = tpm.tpm2(
            "tpm2_pcrextend",
            &[&format!("{pcr}:sha256={}", hex(digest))],
        );
        assert!(out.status.success(), "{out:?}");
    }
    let store = TpmKeyStore::open(&TpmConfig {
        tcti: Some(tpm.tcti.clone()),
        persistent_handle: None,
        ..Default::default()
    })
    .unwrap();
    let report = report();
    let nonce = [0x5a; 32];
    let digest: [u8; 32] = unhex(&report.digest, 32).unwrap().try_into().unwrap();
    let qualifying = qualifying_data(&digest, &nonce).unwrap();
    let quoted = store.quote(&qualifying).unwrap();

    // The AK is the one activation showed the portal.
    let identity = store.hardware_identity().unwrap().unwrap();
    assert_eq!(identity.ak_public, quoted.ak_public);
    // The quote covers PCRs 0-7, which the event log replays to.
    let replayed = EventLog::parse(&log)
        .unwrap()
        .replay(TPM_ALG_SHA256)
        .unwrap();
    let values: Vec<String> = quoted.quote.pcrs.iter().map(|p| p.value.clone()).collect();
    let expected: Vec<String> = replayed[..8].iter().map(|v| hex(v)).collect();
    assert_eq!(values, expected);
    let attest = QuoteAttest::parse(&unhex(&quoted.quote.attest, 4096).unwrap()).unwrap();
    assert_eq!(attest.extra_data, qualifying);

    // tpm2_checkquote, with the AK as PEM.
    let dir = tempfile::tempdir().unwrap();
    write_checkquote_files(&quoted.quote, dir.path()).unwrap();
    let pem = VerifyingKey::from_public_key_der(&quoted.ak_public_key_der)
        .unwrap()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(dir.path().join("ak.pem"), pem).unwrap();
    let out = checkquote(dir.path(), &qualifying);
    assert!(
        out.status.success(),
        "tpm2_checkquote: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // ... and refuses other qualifying data, PCR values and signers.
    let out = checkquote(dir.path(), &qualifying_data(&digest, &[0x5b; 32]).unwrap());
    assert!(!out.status.success());
    let mut tampered = quoted.quote.clone();
    tampered.pcrs[0].value = hex(&[1u8; 32]);
    write_checkquote_files(&tampered, dir.path()).unwrap();
    assert!(!checkquote(dir.path(), &qualifying).status.success());
    write_checkquote_files(&quoted.quote, dir.path()).unwrap();
    // Another key of the same TPM (a user key) did not sign it.
    let other = store
        .create_key("u-other", &fleetkey_plugin::Pin::new("1234"))
        .unwrap();
    let other = VerifyingKey::from_public_key_der(&other.public_key_der).unwrap();
    std::fs::write(
        dir.path().join("ak.pem"),
        other.to_public_key_pem(LineEnding::LF).unwrap(),
    )
    .unwrap();
    assert!(!checkquote(dir.path(), &qualifying).status.success());

    // The same AK every time (made again from its template). The time of
    // a quote (AK made again, TPM2_Quote, PCR read) on swtpm:
    // `cargo test -p fleetkey-tpm --test quote -- --nocapture`.
    let start = std::time::Instant::now();
    for _ in 0..10 {
        let again = store.quote(&qualifying).unwrap();
        assert_eq!(again.ak_public, quoted.ak_public);
    }
    eprintln!("quote: mean {:?} over 10", start.elapsed() / 10);
}
