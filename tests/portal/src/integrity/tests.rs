//! The verifier against quotes a real (software) TPM made: swtpm started
//! by tests/swtpm/start.sh, driven with tpm2-tools (tpm2_quote), so the
//! device side is not our own code.

use fleetkey_integrity::checks::ids;
use fleetkey_integrity::eventlog::{EV_POST_CODE, LogBuilder, TPM_ALG_SHA256, synthetic_boot};
use fleetkey_integrity::quote::{PcrValue, Quote};
use fleetkey_integrity::{Attribute, Outcome, hex};

use super::*;

#[path = "../../tests/support/swtpm.rs"]
mod support_swtpm;
use support_swtpm::Swtpm;

impl Swtpm {
    /// A TPM with an AK (the template of docs/tpm-attestation.md, without
    /// fleetkey's unique value) in ak.ctx, and PCRs 0-7 extended with the
    /// synthetic boot log's events.
    fn start_booted() -> (Swtpm, Vec<u8>) {
        let tpm = Swtpm::start();
        let (log, events) = synthetic_boot(&[TPM_ALG_SHA256]);
        for (pcr, digest) in events {
            tpm.tool(&["tpm2_pcrextend", &format!("{pcr}:sha256={}", hex(&digest))]);
        }
        tpm.tool(&[
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
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
            "-Q",
        ]);
        tpm.tool(&["tpm2_readpublic", "-c", "ak.ctx", "-o", "ak.pub", "-Q"]);
        (tpm, log)
    }

    /// The AK's TPMT_PUBLIC.
    fn ak_public(&self) -> Vec<u8> {
        std::fs::read(self.path("ak.pub")).unwrap()[2..].to_vec()
    }

    /// tpm2_quote of PCRs 0-7 with the qualifying data for `report` and
    /// `nonce`.
    fn quote(&self, report: &Report, nonce: &[u8]) -> Quote {
        let digest: [u8; 32] = unhex(&report.digest, 32).unwrap().try_into().unwrap();
        let qualifying = qualifying_data(&digest, nonce).unwrap();
        self.tool(&[
            "tpm2_quote",
            "-c",
            "ak.ctx",
            "-l",
            "sha256:0,1,2,3,4,5,6,7",
            "-q",
            &hex(&qualifying),
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-g",
            "sha256",
            "-Q",
        ]);
        self.tool(&[
            "tpm2_pcrread",
            "sha256:0,1,2,3,4,5,6,7",
            "-o",
            "pcrs.bin",
            "-Q",
        ]);
        let values = std::fs::read(self.path("pcrs.bin")).unwrap();
        assert_eq!(values.len(), 8 * 32);
        Quote {
            attest: hex(&std::fs::read(self.path("quote.msg")).unwrap()),
            signature: hex(&std::fs::read(self.path("quote.sig")).unwrap()),
            pcrs: values
                .chunks(32)
                .enumerate()
                .map(|(i, v)| PcrValue {
                    pcr: i as u32,
                    value: hex(v),
                })
                .collect(),
        }
    }
}

fn attribute(id: &str, pass: bool) -> Attribute {
    Attribute {
        id: id.into(),
        level: ids::level(id).unwrap(),
        outcome: if pass { Outcome::Pass } else { Outcome::Fail },
        result: if pass { "enabled" } else { "not-enabled" }.into(),
        detail: format!("{id} detail"),
        hint: if pass {
            String::new()
        } else {
            format!("fix {id}")
        },
    }
}

fn make_report(iommu: bool) -> Report {
    Report::new(
        vec![
            attribute(ids::SECURE_BOOT, true),
            attribute(ids::TPM, true),
            attribute(ids::IOMMU, iommu),
        ],
        true,
    )
}

const NOW: i64 = 1_800_000_000;

fn expected<'a>(ak: &'a [u8], policy: &'a Policy) -> Expected<'a> {
    Expected {
        device_id: "dev-1",
        ak_public: Some(ak),
        policy,
        require_quote: true,
    }
}

#[test]
fn quotes_are_verified_and_every_forgery_is_refused() {
    let (tpm, log) = Swtpm::start_booted();
    let ak = tpm.ak_public();
    let policy = Policy {
        min_level: 1,
        ..Default::default()
    };
    let mut nonces = NonceBook::default();
    let report = make_report(true);
    let nonce = nonces.issue("dev-1", NOW).unwrap();
    let quote = tpm.quote(&report, &nonce);
    let evidence = Evidence {
        report: report.clone(),
        nonce: hex(&nonce),
        quote: Some(quote.clone()),
        event_log: hex(&log),
    };

    let verified = verify(&evidence, &expected(&ak, &policy), &mut nonces, NOW + 5).unwrap();
    assert!(verified.tpm_verified);
    assert_eq!(verified.level, report.level);
    assert_eq!(verified.report_digest, report.digest);

    // The same evidence again: the nonce is used up.
    assert_eq!(
        verify(&evidence, &expected(&ak, &policy), &mut nonces, NOW + 6),
        Err(IntegrityError::NonceNotFresh)
    );

    // Everything below gets a freshly issued nonce, so only the forgery fails.
    let fresh = |nonces: &mut NonceBook| nonces.issue("dev-1", NOW).unwrap();

    // A nonce never issued, one issued to another device, one expired.
    let mut e = evidence.clone();
    e.nonce = hex(&[7u8; 32]);
    assert_eq!(
        verify(&e, &expected(&ak, &policy), &mut nonces, NOW),
        Err(IntegrityError::NonceNotFresh)
    );
    let other = nonces.issue("dev-2", NOW).unwrap();
    let mut e = evidence.clone();
    e.nonce = hex(&other);
    assert_eq!(
        verify(&e, &expected(&ak, &policy), &mut nonces, NOW),
        Err(IntegrityError::NonceNotFresh)
    );
    let n = fresh(&mut nonces);
    let mut e = evidence.clone();
    e.nonce = hex(&n);
    e.quote = Some(tpm.quote(&report, &n));
    assert_eq!(
        verify(
            &e,
            &expected(&ak, &policy),
            &mut nonces,
            NOW + NONCE_LIFETIME_SECS + 1
        ),
        Err(IntegrityError::NonceNotFresh)
    );

    // A fresh nonce, but the quote was made for the old one (a replay).
    let n = fresh(&mut nonces);
    let mut e = evidence.clone();
    e.nonce = hex(&n);
    assert_eq!(
        verify(&e, &expected(&ak, &policy), &mut nonces, NOW),
        Err(IntegrityError::WrongQualifyingData)
    );

    // A report edited after it was quoted.
    let n = fresh(&mut nonces);
    let mut e = evidence.clone();
    e.nonce = hex(&n);
    e.quote = Some(tpm.quote(&report, &n));
    e.report = make_report(true);
    e.report.attributes[0].detail = "edited".into();
    e.report = Report::new(e.report.attributes.clone(), true);
    assert_eq!(
        verify(&e, &expected(&ak, &policy), &mut nonces, NOW),
        Err(IntegrityError::WrongQualifyingData)
    );
    // ... or whose digest no longer matches its attributes.
    let n = fresh(&mut nonces);
    let mut e = evidence.clone();
    e.nonce = hex(&n);
    e.quote = Some(tpm.quote(&report, &n));
    e.report.attributes[0].detail = "edited".into();
    assert_eq!(
        verify(&e, &expected(&ak, &policy), &mut nonces, NOW),
        Err(IntegrityError::ReportInconsistent)
    );

    // A tampered event log: one event's data and digest replaced.
    let n = fresh(&mut nonces);
    let mut e = evidence.clone();
    e.nonce = hex(&n);
    e.quote = Some(tpm.quote(&report, &n));
    let mut b = LogBuilder::new(&[TPM_ALG_SHA256]);
    b.event(0, EV_POST_CODE, b"a firmware that was not booted");
    e.event_log = hex(&b.bytes());
    let err = verify(&e, &expected(&ak, &policy), &mut nonces, NOW).unwrap_err();
    assert!(
        matches!(&err, IntegrityError::EventLogMismatch(m) if m.contains("PCR 0")),
        "{err}"
    );
    // An event log that is not one, or is missing.
    for junk in ["00ff", "", "zz"] {
        let n = fresh(&mut nonces);
        let mut e = evidence.clone();
        e.nonce = hex(&n);
        e.quote = Some(tpm.quote(&report, &n));
        e.event_log = junk.into();
        assert!(
            matches!(
                verify(&e, &expected(&ak, &policy), &mut nonces, NOW),
                Err(IntegrityError::EventLogMismatch(_))
            ),
            "{junk}"
        );
    }

    // PCR values other than the ones quoted (to match a tampered log).
    let n = fresh(&mut nonces);
    let mut e = evidence.clone();
    e.nonce = hex(&n);
    let mut q = tpm.quote(&report, &n);
    q.pcrs[3].value = hex(&[0u8; 32]);
    e.quote = Some(q);
    assert_eq!(
        verify(&e, &expected(&ak, &policy), &mut nonces, NOW),
        Err(IntegrityError::PcrMismatch)
    );

    // A quote made by another TPM (its own AK) for the right nonce and report.
    let (other_tpm, _) = Swtpm::start_booted();
    let n = fresh(&mut nonces);
    let mut e = evidence.clone();
    e.nonce = hex(&n);
    e.quote = Some(other_tpm.quote(&report, &n));
    assert_eq!(
        verify(&e, &expected(&ak, &policy), &mut nonces, NOW),
        Err(IntegrityError::WrongSigner)
    );
    // A damaged signature.
    let n = fresh(&mut nonces);
    let mut e = evidence.clone();
    e.nonce = hex(&n);
    let mut q = tpm.quote(&report, &n);
    q.signature.truncate(q.signature.len() - 2);
    e.quote = Some(q);
    assert!(matches!(
        verify(&e, &expected(&ak, &policy), &mut nonces, NOW),
        Err(IntegrityError::QuoteInvalid(_))
    ));

    // A device activated without an AK.
    let n = fresh(&mut nonces);
    let mut e = evidence.clone();
    e.nonce = hex(&n);
    e.quote = Some(tpm.quote(&report, &n));
    let no_ak = Expected {
        ak_public: None,
        ..expected(&ak, &policy)
    };
    assert_eq!(
        verify(&e, &no_ak, &mut nonces, NOW),
        Err(IntegrityError::NoAttestationKey)
    );

    // The policy: IOMMU (level 2) fails; level 1 accepts, level 2 refuses
    // naming it with its hint; an ignored check is an exception on record.
    let weak = make_report(false);
    for (policy, outcome) in [
        (
            Policy {
                min_level: 1,
                ..Default::default()
            },
            Ok(()),
        ),
        (
            Policy {
                min_level: 2,
                ..Default::default()
            },
            Err("fix org.fleetkey.Iommu"),
        ),
        (
            Policy {
                min_level: 2,
                ignore: vec![ids::IOMMU.into()],
                ..Default::default()
            },
            Ok(()),
        ),
    ] {
        let n = fresh(&mut nonces);
        let e = Evidence {
            report: weak.clone(),
            nonce: hex(&n),
            quote: Some(tpm.quote(&weak, &n)),
            event_log: hex(&log),
        };
        let result = verify(&e, &expected(&ak, &policy), &mut nonces, NOW);
        match outcome {
            Ok(()) => {
                let v = result.unwrap();
                assert_eq!(v.level, 1);
                assert_eq!(v.exceptions.is_empty(), policy.ignore.is_empty());
            }
            Err(text) => assert!(
                matches!(&result, Err(IntegrityError::Policy(m)) if m.contains(text)),
                "{result:?}"
            ),
        }
    }
}

#[test]
fn a_device_without_a_tpm_is_unverified_and_the_policy_decides() {
    let policy = Policy::default();
    let mut nonces = NonceBook::default();
    let report = Report::new(vec![attribute(ids::TPM, false)], false);
    let n = nonces.issue("dev-1", NOW).unwrap();
    let e = Evidence {
        report: report.clone(),
        nonce: hex(&n),
        quote: None,
        event_log: String::new(),
    };
    let strict = Expected {
        device_id: "dev-1",
        ak_public: None,
        policy: &policy,
        require_quote: true,
    };
    assert_eq!(
        verify(&e, &strict, &mut nonces, NOW),
        Err(IntegrityError::Unverifiable)
    );
    let n = nonces.issue("dev-1", NOW).unwrap();
    let e = Evidence {
        nonce: hex(&n),
        ..e
    };
    let lenient = Expected {
        require_quote: false,
        ..strict
    };
    let v = verify(&e, &lenient, &mut nonces, NOW).unwrap();
    assert!(!v.tpm_verified);
}

#[test]
fn the_nonce_book_is_bounded() {
    let mut book = NonceBook::default();
    let first = book.issue("d", NOW).unwrap();
    for _ in 0..MAX_NONCES_PER_DEVICE {
        book.issue("d", NOW).unwrap();
    }
    assert!(!book.take("d", &first, NOW), "the oldest nonce was dropped");
    assert_eq!(book.by_device["d"].len(), MAX_NONCES_PER_DEVICE);
    // Expired nonces are dropped when the device gets a new one.
    book.issue("d", NOW + NONCE_LIFETIME_SECS + 1).unwrap();
    assert_eq!(book.by_device["d"].len(), 1);
    // A clock that went back does not make a nonce valid forever.
    let n = book.issue("e", NOW).unwrap();
    assert!(!book.take("e", &n, NOW - 1));
}
