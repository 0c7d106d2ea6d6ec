//! The migration's own rules at the store: issue, refuse a second one,
//! reissue, sweep at the deadline, status. The end-to-end flow with real
//! devices is tests/e2e/tests/migrate.rs.

use super::*;
use crate::store::{Device, Store};

const NOW: i64 = 1_800_000_000;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("portal.db")).unwrap();
    (dir, store)
}

fn device(db: &Db<'_>, id: &str) {
    db.insert_device(&Device {
        device_id: id.into(),
        public_key: vec![1],
        name: "kiosk".into(),
        registered_at: NOW,
        tpm: None,
        attestation_detail: String::new(),
    })
    .unwrap();
}

fn enroll(db: &Db<'_>, device_id: &str, user: &str, credential_id: &str) {
    db.insert_enrollment(&Enrollment {
        device_id: device_id.into(),
        user: user.into(),
        credential_id: credential_id.into(),
        public_key: vec![4],
        backend: "soft".into(),
        attestation_format: "none".into(),
        hardware_backed: false,
        enrolled_at: NOW,
        revoked_at: None,
        code_hash: None,
        attestation_detail: String::new(),
    })
    .unwrap();
}

/// dev-old with alice, bob and carol; dev-new empty.
fn old_device_with_three() -> (tempfile::TempDir, Store) {
    let (dir, store) = store();
    let db = store.db();
    device(&db, "dev-old");
    device(&db, "dev-new");
    for (user, credential) in [("alice", "cred-a"), ("bob", "cred-b"), ("carol", "cred-c")] {
        enroll(&db, "dev-old", user, credential);
    }
    (dir, store)
}

fn states(status: &Status) -> Vec<(&str, &str)> {
    status
        .users
        .iter()
        .map(|u| (u.user.as_str(), u.state.as_str()))
        .collect()
}

#[test]
fn deadlines_parse_as_time_or_duration() {
    assert_eq!(parse_deadline("90s", NOW), Ok(NOW + 90));
    assert_eq!(parse_deadline("600", NOW), Ok(NOW + 600));
    assert_eq!(parse_deadline("1d12h", NOW), Ok(NOW + 129_600));
    assert_eq!(parse_deadline("30m", NOW), Ok(NOW + 1800));
    let later = NOW + 86_400 * 3 + 17;
    assert_eq!(parse_deadline(&rfc3339(later), NOW), Ok(later));
    // An offset is honoured; fractions of a second are dropped.
    let text = rfc3339(later).replace('Z', "+02:00");
    assert_eq!(parse_deadline(&text, NOW), Ok(later - 7200));
    let text = rfc3339(later).replace('Z', ".250Z");
    assert_eq!(parse_deadline(&text, NOW), Ok(later));
    for bad in [
        "",
        "0",
        "-5",
        "7w",
        "1d2",
        "soon",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-12-01T00:00:00",
        "2026-12-01T25:00:00Z",
    ] {
        assert!(parse_deadline(bad, NOW).is_err(), "{bad:?}");
    }
    let past = parse_deadline(&rfc3339(NOW - 1), NOW).unwrap_err();
    assert!(past.contains("already passed"), "{past}");
    assert!(parse_deadline("400d", NOW).unwrap_err().contains("a year"));
}

#[test]
fn a_migration_issues_one_replacing_code_per_active_user() {
    let (_dir, mut store) = old_device_with_three();
    // bob's credential is already revoked: not migrated.
    store.db().revoke("dev-old", "bob", None, NOW).unwrap();
    let started = store
        .immediate(|db| start(db, "dev-old", NOW + 600, NOW + 300, false, NOW))
        .unwrap();
    assert!(started.voided.is_none());
    let issued: Vec<(Option<&str>, Option<&str>, i64)> = started
        .codes
        .iter()
        .map(|(_, r)| {
            (
                r.user.as_deref(),
                r.replaces_credential.as_deref(),
                r.expires_at,
            )
        })
        .collect();
    assert_eq!(
        issued,
        vec![
            (Some("alice"), Some("cred-a"), NOW + 300),
            (Some("carol"), Some("cred-c"), NOW + 300)
        ]
    );
    // The code as the database keeps it names what it replaces.
    let (code, _) = &started.codes[0];
    let record = store.db().code(code).unwrap().unwrap();
    assert_eq!(record.kind, CodeKind::User);
    assert_eq!(record.replaces_credential.as_deref(), Some("cred-a"));

    let status = store
        .immediate(|db| status(db, "dev-old", NOW + 1))
        .unwrap()
        .unwrap();
    assert_eq!(status.state, "open");
    assert_eq!(
        states(&status),
        vec![("alice", "pending"), ("carol", "pending")]
    );

    // Unknown device, device without users: refused, nothing recorded.
    let error = store
        .immediate(|db| start(db, "dev-none", NOW + 600, NOW + 600, false, NOW))
        .unwrap_err();
    assert!(matches!(error, PortalError::NotFound(_)), "{error}");
    let error = store
        .immediate(|db| start(db, "dev-new", NOW + 600, NOW + 600, false, NOW))
        .unwrap_err();
    assert!(error.to_string().contains("no active users"), "{error}");
    assert!(latest(&store.db(), "dev-new").unwrap().is_none());
}

#[test]
fn replacing_then_the_deadline_revokes_exactly_the_rest() {
    let (_dir, mut store) = old_device_with_three();
    let started = store
        .immediate(|db| start(db, "dev-old", NOW + 600, NOW + 600, false, NOW))
        .unwrap();
    // alice enrolls on the new device with her code: as EnrollUser does,
    // in one transaction.
    let (_, alice) = &started.codes[0];
    store
        .immediate(|db| {
            assert!(retire_replaced(db, "cred-a", NOW + 10)?);
            enroll(db, "dev-new", "alice", "cred-a2");
            record_replaced(db, &alice.code_hash, "cred-a2", NOW + 10)
        })
        .unwrap();
    // bob is removed on the old device before he moves.
    store.db().revoke("dev-old", "bob", None, NOW + 20).unwrap();
    // Before the deadline nothing else moves, however often it is swept.
    for at in [NOW + 30, NOW + 599] {
        assert!(store.immediate(|db| sweep_due(db, at)).unwrap().is_empty());
    }
    assert!(
        store
            .db()
            .active_enrollment("dev-old", "carol")
            .unwrap()
            .is_some()
    );

    let swept = store.immediate(|db| sweep_due(db, NOW + 600)).unwrap();
    assert_eq!(
        swept,
        vec![SweptCredential {
            migration_id: started.migration.migration_id.clone(),
            user: "carol".into(),
            credential_id: "cred-c".into(),
        }]
    );
    assert!(
        store
            .db()
            .active_enrollment("dev-old", "carol")
            .unwrap()
            .is_none()
    );
    // alice's new credential is untouched; a second sweep does nothing.
    assert!(
        store
            .db()
            .active_enrollment("dev-new", "alice")
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .immediate(|db| sweep_due(db, NOW + 700))
            .unwrap()
            .is_empty()
    );

    let status = store
        .immediate(|db| status(db, "dev-old", NOW + 700))
        .unwrap()
        .unwrap();
    assert_eq!(status.state, "closed");
    assert_eq!(
        states(&status),
        vec![
            ("alice", "replaced"),
            ("bob", "removed"),
            ("carol", "revoked")
        ]
    );
    assert_eq!(status.users[0].new_device_id.as_deref(), Some("dev-new"));
    assert_eq!(
        status.users[0].new_credential_id.as_deref(),
        Some("cred-a2")
    );
    assert_eq!(status.users[2].at, Some(rfc3339(NOW + 600)));
}

#[test]
fn a_second_migration_is_refused_while_one_is_open_unless_reissued() {
    let (_dir, mut store) = old_device_with_three();
    let first = store
        .immediate(|db| start(db, "dev-old", NOW + 600, NOW + 600, false, NOW))
        .unwrap();
    let error = store
        .immediate(|db| start(db, "dev-old", NOW + 900, NOW + 900, false, NOW + 5))
        .unwrap_err();
    assert!(matches!(error, PortalError::Usage(_)), "{error}");
    assert!(error.to_string().contains("--reissue"), "{error}");
    assert!(
        error.to_string().contains("3 users not moved yet"),
        "{error}"
    );

    // alice moved with the first code; then the rest is reissued.
    let (_, alice) = &first.codes[0];
    store
        .immediate(|db| {
            retire_replaced(db, "cred-a", NOW + 10)?;
            enroll(db, "dev-new", "alice", "cred-a2");
            record_replaced(db, &alice.code_hash, "cred-a2", NOW + 10)
        })
        .unwrap();
    let second = store
        .immediate(|db| start(db, "dev-old", NOW + 900, NOW + 900, true, NOW + 20))
        .unwrap();
    assert_eq!(
        second.voided,
        Some((first.migration.migration_id.clone(), 2))
    );
    let users: Vec<_> = second.codes.iter().map(|(_, r)| r.user.clone()).collect();
    assert_eq!(users, vec![Some("bob".into()), Some("carol".into())]);
    // The first migration's unused codes are dead; its used one stays used.
    let (bob_code, _) = &first.codes[1];
    let record = store.db().code(bob_code).unwrap().unwrap();
    assert_eq!(
        record.state(NOW + 20),
        crate::store::CodeState::Expired { at: NOW + 20 }
    );
    // The voided migration's deadline revokes nothing.
    assert!(
        store
            .immediate(|db| sweep_due(db, NOW + 650))
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .db()
            .active_enrollment("dev-old", "bob")
            .unwrap()
            .is_some()
    );
    let status = store
        .immediate(|db| status(db, "dev-old", NOW + 650))
        .unwrap()
        .unwrap();
    assert_eq!(status.migration_id, second.migration.migration_id);
    assert_eq!(
        states(&status),
        vec![("bob", "pending"), ("carol", "pending")]
    );

    // After its deadline, a migration is closed: the device may be
    // migrated again without --reissue (only what is still active).
    let swept = store.immediate(|db| sweep_due(db, NOW + 900)).unwrap();
    assert_eq!(swept.len(), 2);
    enroll(&store.db(), "dev-old", "dave", "cred-d");
    let third = store
        .immediate(|db| start(db, "dev-old", NOW + 2000, NOW + 2000, false, NOW + 1000))
        .unwrap();
    assert_eq!(third.codes.len(), 1);
    assert!(third.voided.is_none());
}
