//! The engine built in process: a soft key store with cheap Argon2, a
//! temporary state directory, and the reference portal (fleetkey-portal)
//! served in process on loopback.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleetkey_plugin::{CreateOptions, Pin};
use fleetkey_portal::Store as PortalStore;
use fleetkey_portal::store::CodeKind;
use fleetkey_proto::{Reason, time};
use prost::Message;
use tempfile::TempDir;

use super::*;
use crate::backends::Backends;
use crate::config::Config;
use crate::portal_client::PortalConnector;
use crate::state::StateStore;

struct Portal {
    url: String,
    db: PathBuf,
    _dir: TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Portal {
    async fn start() -> Portal {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("portal.db");
        drop(PortalStore::open(&db).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = db.clone();
        tokio::spawn(async move {
            fleetkey_portal::serve(&served, listener, None, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Portal {
            url,
            db,
            _dir: dir,
            _stop: stop,
        }
    }

    fn code(&self, kind: CodeKind, user: Option<&str>) -> String {
        let mut store = PortalStore::open(&self.db).unwrap();
        let record = store.issue_code(kind, user, 600, time::now_unix()).unwrap();
        record.code.to_string()
    }
}

struct Fixture {
    engine: Engine,
    _dir: TempDir,
}

fn engine_for(portal_url: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("fleetkeyd.toml");
    std::fs::write(
        &config_file,
        format!(
            "portal_url = \"{portal_url}\"\n\
             [backends.soft]\nargon2_memory_kib = 64\nargon2_iterations = 1\n\
             [backends.tpm]\nenabled = false\n[backends.pcsc]\nenabled = false\n"
        ),
    )
    .unwrap();
    let config = Config::load(&config_file, true).unwrap();
    let state = Arc::new(StateStore::open(&dir.path().join("state.db")).unwrap());
    let backends = Backends::open(&config, dir.path());
    let audit = Arc::new(AuditLog::open(&dir.path().join(crate::audit::FILE_NAME)).unwrap());
    let engine = Engine::new(&config, state, backends, PortalConnector::new(None), audit);
    Fixture { engine, _dir: dir }
}

async fn enrolled(portal: &Portal, fixture: &Fixture, user: &str, pin: &str) {
    fixture
        .engine
        .add_user(
            Requester::Daemon,
            &portal.code(CodeKind::User, Some(user)),
            Pin::new(pin),
            "",
            &CreateOptions::default(),
            false,
        )
        .await
        .unwrap();
}

const DIGEST: [u8; 32] = [9; 32];
const ME: Requester = Requester::Uid(1000);

#[tokio::test(flavor = "current_thread")]
async fn enrolls_signs_and_counts_wrong_pins() {
    let portal = Portal::start().await;
    let fixture = engine_for(&portal.url);
    let engine = &fixture.engine;
    engine
        .activate(Requester::Daemon, &portal.code(CodeKind::Device, None))
        .await
        .unwrap();
    enrolled(&portal, &fixture, "alice", "1234").await;
    let signed = engine
        .sign(ME, "alice", Pin::new("1234"), &DIGEST)
        .await
        .unwrap();
    assert!(!signed.signature_der.is_empty());
    let wrong = engine
        .sign(ME, "alice", Pin::new("9999"), &DIGEST)
        .await
        .unwrap_err();
    assert_eq!(wrong.reason, Reason::PinWrong);
    assert_eq!(engine.get_user("alice").await.unwrap().failed_attempts, 1);
    engine
        .sign(ME, "alice", Pin::new("1234"), &DIGEST)
        .await
        .unwrap();
    assert_eq!(engine.get_user("alice").await.unwrap().failed_attempts, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn unknown_and_invalid_names_leave_no_lock_entries() {
    let portal = Portal::start().await;
    let fixture = engine_for(&portal.url);
    let engine = &fixture.engine;
    engine
        .activate(Requester::Daemon, &portal.code(CodeKind::Device, None))
        .await
        .unwrap();
    enrolled(&portal, &fixture, "alice", "1234").await;
    let huge = "x".repeat(1 << 20);
    let refused = engine
        .sign(ME, &huge, Pin::new("1234"), &DIGEST)
        .await
        .unwrap_err();
    assert_eq!(refused.reason, Reason::UserNameInvalid);
    assert!(refused.message.len() < 200, "{}", refused.message.len());
    let refused = engine
        .change_pin(ME, "alice\u{200b}", Pin::new("1234"), Pin::new("4321"))
        .await
        .unwrap_err();
    assert_eq!(refused.reason, Reason::UserNameInvalid);
    let unknown = engine
        .unblock_pin(ME, "bob", Pin::new("12345678"), Pin::new("4321"))
        .await
        .unwrap_err();
    assert_eq!(unknown.reason, Reason::UserUnknown);
    assert!(engine.user_locks.lock().unwrap().is_empty());
    engine
        .sign(ME, "alice", Pin::new("1234"), &DIGEST)
        .await
        .unwrap();
    assert_eq!(engine.user_locks.lock().unwrap().len(), 1);
    // A full-width name finds the user by its normalized form.
    engine
        .sign(ME, "ａｌｉｃｅ", Pin::new("1234"), &DIGEST)
        .await
        .unwrap();
    engine
        .remove_user(Requester::Daemon, "alice")
        .await
        .unwrap();
    assert!(engine.user_locks.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn portal_names_must_follow_the_rule() {
    let portal = Portal::start().await;
    let fixture = engine_for(&portal.url);
    let engine = &fixture.engine;
    engine
        .activate(Requester::Daemon, &portal.code(CodeKind::Device, None))
        .await
        .unwrap();
    // The reference portal may still issue such a code (it is checked
    // there too once the portal applies the rule); the daemon refuses it.
    let mut store = PortalStore::open(&portal.db).unwrap();
    let Ok(record) = store.issue_code(CodeKind::User, Some("ali\u{200b}ce"), 600, time::now_unix())
    else {
        return;
    };
    let refused = engine
        .add_user(
            Requester::Daemon,
            &record.code.to_string(),
            Pin::new("1234"),
            "",
            &CreateOptions::default(),
            false,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.reason, Reason::UserNameInvalid);
    assert!(engine.list_users().await.unwrap().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn a_callers_share_of_the_queue_is_bounded_and_hung_up_work_never_runs() {
    let queue = WorkQueue::new(1, 2);
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let hold = Arc::new(std::sync::Mutex::new(hold));
    // uid 1000 takes the only worker, and waits in the queue for another.
    let blocker = {
        let (queue, hold, ran) = (queue.clone(), hold.clone(), ran.clone());
        tokio::spawn(async move {
            queue
                .run(ME, move || {
                    ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = hold.lock().unwrap().recv();
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiting = {
        let (queue, ran) = (queue.clone(), ran.clone());
        tokio::spawn(async move {
            queue
                .run(ME, move || {
                    ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(queue.held_by(1000), 2);
    // A third from the same uid is refused at once...
    let busy = queue.run(ME, || ()).await.unwrap_err();
    assert_eq!(busy.reason, Reason::Busy);
    // ... while another uid still queues.
    let other = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.run(Requester::Uid(1001), || 7).await })
    };
    // The waiting caller hangs up: its work leaves the queue unrun.
    waiting.abort();
    let _ = waiting.await;
    assert_eq!(queue.held_by(1000), 1);
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    assert_eq!(other.await.unwrap().unwrap(), 7);
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(queue.held_by(1000), 0);
}

/// Freed memory is given back once the queue has stayed idle, not after
/// each operation: work that keeps coming keeps the trim waiting, and it
/// runs once the work stops.
#[tokio::test(flavor = "current_thread")]
async fn memory_is_given_back_once_the_queue_stays_idle() {
    use super::keystore::TRIM_AFTER_IDLE;
    let queue = WorkQueue::new(2, 4);
    assert!(!queue.trim_pending());
    queue.run(ME, || ()).await.unwrap();
    assert!(queue.trim_pending(), "idle: a trim waits");
    // Work keeps coming at less than the idle time apart: still waiting.
    for _ in 0..4 {
        tokio::time::sleep(TRIM_AFTER_IDLE / 2).await;
        queue.run(ME, || ()).await.unwrap();
        assert!(queue.trim_pending());
    }
    // The work stops: the trim runs within two idle periods.
    tokio::time::sleep(TRIM_AFTER_IDLE * 3).await;
    assert!(
        !queue.trim_pending(),
        "the trim ran and is no longer waiting"
    );
}

/// The soft store keeps Argon2's buffers between the operations of a
/// burst (no page faults per PIN check) and the idle queue releases them,
/// so an idle daemon holds none.
#[cfg(feature = "soft")]
#[tokio::test(flavor = "current_thread")]
async fn kept_argon2_buffers_are_released_once_the_queue_stays_idle() {
    use super::keystore::TRIM_AFTER_IDLE;
    use fleetkey_plugin::KeyStore;
    let dir = tempfile::tempdir().unwrap();
    let config = fleetkey_soft::SoftConfig {
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        argon2_parallelism: 1,
    };
    let soft = Arc::new(fleetkey_soft::SoftKeyStore::open(dir.path(), config).unwrap());
    let key = soft.create_key("k1", &Pin::new("246813")).unwrap().key_ref;
    let queue = WorkQueue::new(2, 4);
    queue.release_memory_of(vec![soft.clone() as Arc<dyn KeyStore>]);
    let sign = |soft: Arc<fleetkey_soft::SoftKeyStore>, key: Vec<u8>| {
        move || soft.sign_digest(&key, &Pin::new("246813"), &[7; 32])
    };
    for _ in 0..3 {
        queue
            .run(ME, sign(soft.clone(), key.clone()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(soft.kept_argon2_buffers(), 1, "kept for the next one");
        tokio::time::sleep(TRIM_AFTER_IDLE / 2).await;
    }
    assert_eq!(soft.kept_argon2_buffers(), 1, "still kept within a burst");
    tokio::time::sleep(TRIM_AFTER_IDLE * 3).await;
    assert_eq!(soft.kept_argon2_buffers(), 0, "released once idle");
    // And made again by the next operation.
    queue
        .run(ME, sign(soft.clone(), key.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(soft.kept_argon2_buffers(), 1);
}

/// Builds what `add_user` writes before it calls the portal: the key and
/// a pending row holding the signed request.
async fn pending_enrollment(
    engine: &Engine,
    code: &str,
    user: &str,
) -> (UserRecord, fleetkey_proto::portal::EnrollUserRequest) {
    let device = engine.require_device().unwrap();
    let store = engine.store("soft").unwrap();
    let (enrolled, request) = engine
        .enrollment_key(
            &device,
            &store,
            code,
            &Pin::new("1234"),
            &CreateOptions::default(),
            String::new(),
        )
        .await
        .unwrap();
    let created = enrolled.key;
    let mut record = UserRecord {
        name: user.into(),
        credential_id: String::new(),
        backend: "soft".into(),
        key_ref: created.key_ref,
        public_key_der: created.public_key_der,
        hardware_backed: false,
        state: UserState::Pending,
        failed_attempts: 0,
        enrolled_at: time::now_unix(),
        enroll_request: Vec::new(),
    };
    record.enroll_request = request.encode_to_vec();
    engine.state.insert_user(&record).unwrap();
    (record, request)
}

#[tokio::test(flavor = "current_thread")]
async fn recovery_resends_the_recorded_request_and_keeps_the_user() {
    let portal = Portal::start().await;
    let fixture = engine_for(&portal.url);
    let engine = &fixture.engine;
    engine
        .activate(Requester::Daemon, &portal.code(CodeKind::Device, None))
        .await
        .unwrap();
    // alice: the portal committed, the daemon died before its row was
    // made active.
    let code = PortalStore::open(&portal.db)
        .unwrap()
        .issue_code(CodeKind::User, Some("alice"), 600, time::now_unix())
        .unwrap()
        .code
        .compact()
        .to_string();
    let (_, request) = pending_enrollment(engine, &code, "alice").await;
    let first = engine
        .portal
        .connect(&portal.url)
        .await
        .unwrap()
        .enroll_user(request)
        .await
        .unwrap();
    // bob: the request names a code the portal never issued.
    let (_, _) = pending_enrollment(engine, "ABCDEFGHJKMNPQRS", "bob").await;

    let recovery = engine.recover().await.unwrap();
    assert_eq!(recovery.pending_completed, 1, "{recovery:?}");
    assert_eq!(recovery.pending_rolled_back, 1, "{recovery:?}");
    let alice = engine.get_user("alice").await.unwrap();
    assert_eq!(alice.credential_id, first.credential_id);
    assert!(
        engine
            .state
            .user("alice")
            .unwrap()
            .unwrap()
            .enroll_request
            .is_empty()
    );
    engine
        .sign(ME, "alice", Pin::new("1234"), &DIGEST)
        .await
        .unwrap();
    assert!(engine.state.user("bob").unwrap().is_none());
}

#[tokio::test(flavor = "current_thread")]
async fn recovery_keeps_pending_users_while_the_portal_is_down() {
    let portal = Portal::start().await;
    let fixture = engine_for(&portal.url);
    let engine = &fixture.engine;
    engine
        .activate(Requester::Daemon, &portal.code(CodeKind::Device, None))
        .await
        .unwrap();
    let code = PortalStore::open(&portal.db)
        .unwrap()
        .issue_code(CodeKind::User, Some("carol"), 600, time::now_unix())
        .unwrap()
        .code
        .compact()
        .to_string();
    let (record, _) = pending_enrollment(engine, &code, "carol").await;
    drop(portal);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let recovery = engine.recover().await.unwrap();
    assert_eq!(recovery.pending_kept, 1, "{recovery:?}");
    assert_eq!(recovery.orphan_keys_deleted, 0, "the pending key must stay");
    let listed = engine.list_users().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].notes.iter().any(|n| n.contains("pending")));
    // And the name can still be removed.
    let removed = engine
        .remove_user(Requester::Daemon, "carol")
        .await
        .unwrap();
    assert!(!removed.revoked_at_portal);
    assert!(engine.state.user("carol").unwrap().is_none());
    let _ = record;
}

#[tokio::test(flavor = "current_thread")]
async fn events_tell_of_users_added_removed_and_locked() {
    use super::EngineEvent;
    let portal = Portal::start().await;
    let fixture = engine_for(&portal.url);
    let engine = &fixture.engine;
    engine
        .activate(Requester::Daemon, &portal.code(CodeKind::Device, None))
        .await
        .unwrap();
    let mut events = engine.subscribe();
    enrolled(&portal, &fixture, "alice", "1234").await;
    assert_eq!(
        events.try_recv().unwrap(),
        EngineEvent::UserAdded {
            name: "alice".into()
        }
    );
    // Wrong PINs up to the limit (5 by default): PinLocked once, at the last.
    for _ in 0..5 {
        engine
            .sign(ME, "alice", Pin::new("9999"), &DIGEST)
            .await
            .unwrap_err();
    }
    assert_eq!(
        events.try_recv().unwrap(),
        EngineEvent::PinLocked {
            name: "alice".into()
        }
    );
    assert!(events.try_recv().is_err());
    engine
        .remove_user(Requester::Daemon, "alice")
        .await
        .unwrap();
    assert_eq!(
        events.try_recv().unwrap(),
        EngineEvent::UserRemoved {
            name: "alice".into()
        }
    );
}
