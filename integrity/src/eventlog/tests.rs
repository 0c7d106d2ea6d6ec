use proptest::prelude::*;

use super::*;

fn extend(pcr: &mut Vec<u8>, digest: &[u8]) {
    let mut input = pcr.clone();
    input.extend_from_slice(digest);
    *pcr = Sha256::digest(&input).to_vec();
}

#[test]
fn a_synthetic_log_parses_and_replays_to_the_extended_values() {
    let (bytes, extended) = synthetic_boot(&[TPM_ALG_SHA256, TPM_ALG_SHA384]);
    let log = EventLog::parse(&bytes).unwrap();
    assert_eq!(
        log.spec.algorithms,
        vec![(TPM_ALG_SHA256, 32), (TPM_ALG_SHA384, 48)]
    );
    assert_eq!(log.events.len(), extended.len());
    let mut expected = vec![vec![0u8; 32]; 8];
    for (pcr, digest) in &extended {
        extend(&mut expected[*pcr as usize], digest);
    }
    let replayed = log.replay(TPM_ALG_SHA256).unwrap();
    assert_eq!(&replayed[..8], &expected[..]);
    assert_eq!(replayed[17], vec![0xff; 32]);
    assert_eq!(replayed[8], vec![0; 32]);
    assert_eq!(log.replay(TPM_ALG_SHA384).unwrap()[0].len(), 48);
    assert_eq!(
        log.replay(TPM_ALG_SHA512),
        Err(EventLogError::NoSuchBank("SHA-512"))
    );
    assert!(matches!(
        log.replay(TPM_ALG_SHA1),
        Err(EventLogError::UnsupportedBank { .. })
    ));
}

#[test]
fn startup_locality_sets_pcr0s_initial_value() {
    let mut b = LogBuilder::new(&[TPM_ALG_SHA256]);
    b.startup_locality(3);
    let d = b.event(0, EV_POST_CODE, b"x");
    let log = EventLog::parse(&b.bytes()).unwrap();
    assert_eq!(log.startup_locality, Some(3));
    let mut pcr0 = vec![0u8; 32];
    pcr0[31] = 3;
    extend(&mut pcr0, &d);
    assert_eq!(log.replay(TPM_ALG_SHA256).unwrap()[0], pcr0);
}

#[test]
fn an_event_without_the_banks_digest_does_not_replay() {
    let mut b = LogBuilder::new(&[TPM_ALG_SHA256, TPM_ALG_SHA384]);
    b.raw_event(2, EV_POST_CODE, &[(TPM_ALG_SHA384, vec![1; 48])], b"");
    let log = EventLog::parse(&b.bytes()).unwrap();
    assert!(matches!(
        log.replay(TPM_ALG_SHA256),
        Err(EventLogError::MissingDigest {
            index: 1,
            pcr: 2,
            ..
        })
    ));
}

fn event_error(bytes: &[u8]) -> String {
    EventLog::parse(bytes).unwrap_err().to_string()
}

#[test]
fn malformed_logs_are_refused_with_what_is_wrong() {
    let (good, _) = synthetic_boot(&[TPM_ALG_SHA256]);
    // Truncated anywhere inside an event.
    for cut in [1, 10, 40, good.len() - 1] {
        assert!(EventLog::parse(&good[..cut]).is_err(), "cut at {cut}");
    }
    // Not crypto-agile: wrong signature.
    let mut bad = good.clone();
    bad[32] = b'X';
    assert!(
        event_error(&bad).contains("Spec ID"),
        "{}",
        event_error(&bad)
    );
    // A digest of an algorithm the header does not declare.
    let mut b = LogBuilder::new(&[TPM_ALG_SHA256]);
    b.raw_event(0, EV_POST_CODE, &[(TPM_ALG_SHA384, vec![0; 48])], b"");
    assert!(event_error(&b.bytes()).contains("does not declare"));
    // More digests than algorithms.
    let mut b = LogBuilder::new(&[TPM_ALG_SHA256]);
    b.raw_event(
        0,
        EV_POST_CODE,
        &[(TPM_ALG_SHA256, vec![0; 32]), (TPM_ALG_SHA256, vec![0; 32])],
        b"",
    );
    assert!(event_error(&b.bytes()).contains("2 digests"));
    // A PCR a PC Client TPM does not have.
    let mut b = LogBuilder::new(&[TPM_ALG_SHA256]);
    b.event(24, EV_POST_CODE, b"");
    assert!(event_error(&b.bytes()).contains("PCR index 24"));
    // An event claiming 4 GiB of data is refused without allocating it.
    let mut b = LogBuilder::new(&[TPM_ALG_SHA256]);
    b.event(1, EV_POST_CODE, b"");
    let mut bytes = b.bytes();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(
        event_error(&bytes).contains("more than"),
        "{}",
        event_error(&bytes)
    );
    // A count of 4 billion digests too.
    let mut b = LogBuilder::new(&[TPM_ALG_SHA256]);
    b.raw_event(1, EV_POST_CODE, &[], b"");
    let mut bytes = b.bytes();
    let n = bytes.len();
    bytes[n - 8..n - 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(EventLog::parse(&bytes).is_err());
    // Too large a log.
    assert_eq!(
        EventLog::parse(&vec![0; MAX_LOG_BYTES + 1]),
        Err(EventLogError::TooLarge(MAX_LOG_BYTES + 1))
    );
}

#[test]
fn tpm2_eventlog_parses_the_same_log() {
    let (bytes, extended) = synthetic_boot(&[TPM_ALG_SHA256]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("binary_bios_measurements");
    std::fs::write(&path, &bytes).unwrap();
    let out = std::process::Command::new("tpm2_eventlog")
        .arg(&path)
        .output()
        .expect("tpm2_eventlog (tpm2-tools) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("Spec ID Event03"), "{text}");
    for (_, digest) in &extended {
        assert!(text.to_lowercase().contains(&crate::hex(digest)), "{text}");
    }
    // tpm2_eventlog's own replay ("pcrs:" section, "0  : 0x...") agrees
    // with ours.
    let words = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    let replayed = EventLog::parse(&bytes)
        .unwrap()
        .replay(TPM_ALG_SHA256)
        .unwrap();
    for (pcr, value) in replayed.iter().enumerate().take(8) {
        let line = format!("{pcr} : 0x{}", crate::hex(value)).to_lowercase();
        assert!(words.contains(&line), "PCR {pcr} {line} not in\n{text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(log) = EventLog::parse(&bytes) {
            let _ = log.replay(TPM_ALG_SHA256);
        }
    }

    #[test]
    fn mutated_logs_parse_or_fail_without_panicking(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let (mut bytes, _) = synthetic_boot(&[TPM_ALG_SHA256, TPM_ALG_SHA384]);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep.max(bytes.len() / 2));
        if let Ok(log) = EventLog::parse(&bytes) {
            let _ = log.replay(TPM_ALG_SHA256);
            let _ = log.replay(TPM_ALG_SHA384);
        }
    }
}
