//! End to end: the D-Bus service org.fleetkey.Daemon1 (docs/dbus.md) on a
//! private system-like bus with the packaged policy file, read and called
//! by a zbus client and by busctl/gdbus (the external check), with and
//! without polkitd, against the real portal, daemon and CLI.

use std::collections::HashMap;
use std::time::Duration;

use fleetkey_e2e::{Portal, PrivateBus, is_root, open_tempdir};
use tokio_stream_free::next_signal;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

const NAME: &str = "org.fleetkey.Daemon1";
const PATH: &str = "/org/fleetkey/Daemon1";
const NOBODY: u32 = 65534;

/// Waiting for signals without another stream crate.
mod tokio_stream_free {
    use std::time::Duration;

    use zbus::message::Type;
    use zbus::{Message, MessageStream};

    /// The next signal named `member` on the stream, within `limit`.
    /// Signals of other names that arrive first are kept for later calls,
    /// so the order in which the daemon sends different signals does not
    /// matter (UserAdded comes before the last EnrollStatus, for one).
    pub async fn next_signal(stream: &mut Signals, member: &str, limit: Duration) -> Message {
        if let Some(index) = stream.kept.iter().position(|m| is_signal(m, member)) {
            return stream.kept.remove(index);
        }
        let wait = async {
            loop {
                let message = std::future::poll_fn(|cx| {
                    use std::pin::Pin;
                    zbus::export::futures_core::Stream::poll_next(Pin::new(&mut stream.stream), cx)
                })
                .await
                .expect("the bus connection ended")
                .expect("a message");
                if is_signal(&message, member) {
                    return message;
                }
                if message.header().message_type() == Type::Signal {
                    stream.kept.push(message);
                }
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .unwrap_or_else(|_| panic!("no {member} signal within {limit:?}"))
    }

    fn is_signal(message: &Message, member: &str) -> bool {
        let header = message.header();
        header.message_type() == Type::Signal
            && header.member().is_some_and(|m| m.as_str() == member)
    }

    /// A signal stream, and the signals read but not yet asked for.
    pub struct Signals {
        stream: MessageStream,
        kept: Vec<Message>,
    }

    impl Signals {
        /// Puts signals back, for later calls to find.
        pub fn keep(&mut self, messages: Vec<Message>) {
            self.kept.extend(messages);
        }
    }

    impl From<&zbus::Connection> for Signals {
        fn from(connection: &zbus::Connection) -> Self {
            Self {
                stream: MessageStream::from(connection),
                kept: Vec::new(),
            }
        }
    }
}

/// Asks the bus to route the signals matching `rule` to `listener`, and
/// returns the stream to read them from.
async fn subscribe(listener: &zbus::Connection, rule: &str) -> tokio_stream_free::Signals {
    listener
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "AddMatch",
            &(rule,),
        )
        .await
        .unwrap();
    tokio_stream_free::Signals::from(listener)
}

async fn connect(bus: &PrivateBus) -> zbus::Connection {
    zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap()
}

async fn call<B, R>(conn: &zbus::Connection, method: &str, body: &B) -> zbus::Result<R>
where
    B: zbus::export::serde::Serialize + zbus::zvariant::DynamicType,
    R: for<'d> zbus::export::serde::Deserialize<'d> + zbus::zvariant::Type,
{
    let reply = conn
        .call_method(Some(NAME), PATH, Some(NAME), method, body)
        .await?;
    reply.body().deserialize::<R>()
}

async fn property<T: TryFrom<OwnedValue>>(
    conn: &zbus::Connection,
    path: &str,
    interface: &str,
    name: &str,
) -> zbus::Result<T>
where
    T::Error: std::fmt::Debug,
{
    let value: OwnedValue = {
        let reply = conn
            .call_method(
                Some(NAME),
                path,
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(interface, name),
            )
            .await?;
        reply.body().deserialize()?
    };
    Ok(T::try_from(value).expect("property type"))
}

fn error_name(error: &zbus::Error) -> String {
    match error {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("{other:?}"),
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_users_read_over_dbus() {
    let portal = Portal::start();
    let bus = PrivateBus::start();
    let daemon = bus.daemon("");
    daemon.activate(&portal);
    daemon.add_user(&portal, "alice", "1234");
    let conn = connect(&bus).await;

    let status: HashMap<String, OwnedValue> = call(&conn, "GetStatus", &()).await.unwrap();
    assert!(bool::try_from(status["Activated"].clone()).unwrap());
    assert_eq!(u32::try_from(status["UserCount"].clone()).unwrap(), 1);
    assert!(
        !String::try_from(status["DeviceId"].clone())
            .unwrap()
            .is_empty()
    );

    let users: Vec<(String, OwnedObjectPath)> = call(&conn, "ListUsers", &()).await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].0, "alice");
    let alice = users[0].1.to_string();
    assert_eq!(alice, "/org/fleetkey/Daemon1/users/alice");
    let user_iface = "org.fleetkey.Daemon1.User";
    let backend: String = property(&conn, &alice, user_iface, "Backend")
        .await
        .unwrap();
    assert_eq!(backend, "soft");
    let hardware: bool = property(&conn, &alice, user_iface, "HardwareBacked")
        .await
        .unwrap();
    assert!(!hardware);
    let locked: bool = property(&conn, &alice, user_iface, "Locked").await.unwrap();
    assert!(!locked);
    let tries: u32 = property(&conn, &alice, user_iface, "TriesLeft")
        .await
        .unwrap();
    assert_eq!(tries, 5);
    let unknown = call::<_, OwnedObjectPath>(&conn, "GetUser", &("bob",))
        .await
        .unwrap_err();
    assert_eq!(error_name(&unknown), "org.fleetkey.Error.USER_UNKNOWN");

    // The external check: busctl, as root and as an unprivileged uid
    // (the bus policy lets anyone read).
    let listed = bus.busctl(&["--json=short", "call", NAME, PATH, NAME, "ListUsers"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(json["data"][0][0][0], "alice", "{json}");
    assert_eq!(json["data"][0][0][1], "/org/fleetkey/Daemon1/users/alice");
    if is_root() {
        let address = format!("--address={}", bus.address);
        let read = bus.run_as(
            NOBODY,
            NOBODY,
            "busctl",
            &[&address, "get-property", NAME, PATH, NAME, "Activated"],
        );
        assert_eq!(
            String::from_utf8_lossy(&read.stdout).trim(),
            "b true",
            "{}",
            text(&read)
        );
        let count = bus.run_as(
            NOBODY,
            NOBODY,
            "busctl",
            &[&address, "get-property", NAME, PATH, NAME, "UserCount"],
        );
        assert_eq!(
            String::from_utf8_lossy(&count.stdout).trim(),
            "u 1",
            "{}",
            text(&count)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_user_and_pin_signals() {
    let portal = Portal::start();
    let bus = PrivateBus::start();
    let daemon = bus.daemon("[pin]\nmax_attempts = 3\n");
    daemon.activate(&portal);
    let conn = connect(&bus).await;
    let listener = connect(&bus).await;
    let mut signals = subscribe(
        &listener,
        &format!("type='signal',sender='{NAME}',path='{PATH}',interface='{NAME}'"),
    )
    .await;

    let dir = open_tempdir();
    let png = dir.path().join("alice.png");
    portal.user_code_png("alice", &png);
    let image = std::fs::read(&png).unwrap();
    let () = call(&conn, "EnrollFromImage", &(image.clone(), "1234", ""))
        .await
        .unwrap();
    let mut steps = Vec::new();
    loop {
        let signal = next_signal(&mut signals, "EnrollStatus", Duration::from_secs(60)).await;
        let (step, done, details): (String, bool, HashMap<String, OwnedValue>) =
            signal.body().deserialize().unwrap();
        steps.push(step.clone());
        if done {
            assert_eq!(step, "enrolled", "{steps:?} {details:?}");
            assert_eq!(String::try_from(details["User"].clone()).unwrap(), "alice");
            break;
        }
    }
    assert!(steps.contains(&"code-found".to_string()), "{steps:?}");
    assert!(steps.contains(&"enrolling".to_string()), "{steps:?}");
    let added = next_signal(&mut signals, "UserAdded", Duration::from_secs(10)).await;
    let (name, path): (String, OwnedObjectPath) = added.body().deserialize().unwrap();
    assert_eq!(
        (name.as_str(), path.as_str()),
        ("alice", "/org/fleetkey/Daemon1/users/alice")
    );
    let user_name: String = property(&conn, path.as_str(), "org.fleetkey.Daemon1.User", "Name")
        .await
        .unwrap();
    assert_eq!(user_name, "alice");

    // The same code again: the enrollment fails, and says why.
    let () = call(&conn, "EnrollFromImage", &(image, "1234", ""))
        .await
        .unwrap();
    loop {
        let signal = next_signal(&mut signals, "EnrollStatus", Duration::from_secs(60)).await;
        let (step, done, details): (String, bool, HashMap<String, OwnedValue>) =
            signal.body().deserialize().unwrap();
        if done {
            assert_eq!(step, "failed");
            assert!(
                !String::try_from(details["Reason"].clone())
                    .unwrap()
                    .is_empty()
            );
            break;
        }
    }

    // Wrong PINs through the CLI: the last try left sends PinLocked.
    let data = dir.path().join("data.bin");
    std::fs::write(&data, b"hello").unwrap();
    for _ in 0..3 {
        let out = daemon.sign("alice", "9999", &data);
        assert_ne!(out.code, 0);
    }
    let locked = next_signal(&mut signals, "PinLocked", Duration::from_secs(10)).await;
    let (name, _): (String, OwnedObjectPath) = locked.body().deserialize().unwrap();
    assert_eq!(name, "alice");
    let is_locked: bool = property(&conn, path.as_str(), "org.fleetkey.Daemon1.User", "Locked")
        .await
        .unwrap();
    assert!(is_locked);

    // Removal over D-Bus: UserRemoved, and the object is gone.
    let _: bool = call(&conn, "RemoveUser", &("alice",)).await.unwrap();
    let removed = next_signal(&mut signals, "UserRemoved", Duration::from_secs(10)).await;
    let (name, _): (String, OwnedObjectPath) = removed.body().deserialize().unwrap();
    assert_eq!(name, "alice");
    let gone = property::<String>(&conn, path.as_str(), "org.fleetkey.Daemon1.User", "Name")
        .await
        .unwrap_err();
    assert!(
        error_name(&gone).contains("UnknownObject")
            || error_name(&gone).contains("UnknownInterface"),
        "{gone:?}"
    );
}

/// gdbus as `uid` calling RemoveUser: its output.
fn remove_as(bus: &PrivateBus, uid: u32, gid: u32, user: &str) -> String {
    text(&bus.gdbus_call_as(uid, gid, "org.fleetkey.Daemon1.RemoveUser", &[user]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_polkit_the_admin_rule_decides() {
    if !is_root() {
        eprintln!("skipped: needs root to call as another uid");
        return;
    }
    let bus = PrivateBus::start();
    // nogroup (65534) is the admin group: its members may, others not.
    let _daemon = bus.daemon("admin_group = \"nogroup\"");
    let refused = remove_as(&bus, NOBODY, 12345, "alice");
    assert!(
        refused.contains("org.fleetkey.Error.PERMISSION_DENIED")
            && refused.contains("uid 65534 may not"),
        "{refused}"
    );
    let allowed = remove_as(&bus, NOBODY, NOBODY, "alice");
    assert!(
        allowed.contains("org.fleetkey.Error.USER_UNKNOWN"),
        "{allowed}"
    );
    let conn = connect(&bus).await;
    let root = call::<_, bool>(&conn, "RemoveUser", &("alice",))
        .await
        .unwrap_err();
    assert_eq!(error_name(&root), "org.fleetkey.Error.USER_UNKNOWN");
    let activate = text(&bus.gdbus_call_as(
        NOBODY,
        12345,
        "org.fleetkey.Daemon1.Activate",
        &["ABCD-EFGH"],
    ));
    assert!(
        activate.contains("org.fleetkey.Error.PERMISSION_DENIED"),
        "{activate}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polkit_decides_when_it_is_on_the_bus() {
    if !is_root() || !std::path::Path::new("/usr/lib/polkit-1/polkitd").exists() {
        eprintln!("skipped: needs root and polkitd (apt package polkitd)");
        return;
    }
    let mut bus = PrivateBus::start();
    bus.start_polkit();
    // The admin rule would let nogroup's members in; polkit does not.
    let _daemon = bus.daemon("admin_group = \"nogroup\"");
    let refused = remove_as(&bus, NOBODY, NOBODY, "alice");
    assert!(
        refused.contains("org.fleetkey.Error.PERMISSION_DENIED") && refused.contains("polkit"),
        "{refused}"
    );
    // polkit authorizes root (uid 0 is an administrator to polkit).
    let conn = connect(&bus).await;
    let root = call::<_, bool>(&conn, "RemoveUser", &("alice",))
        .await
        .unwrap_err();
    assert_eq!(error_name(&root), "org.fleetkey.Error.USER_UNKNOWN");
    let enroll = text(&bus.gdbus_call_as(
        NOBODY,
        NOBODY,
        "org.fleetkey.Daemon1.EnrollFromCamera",
        &["", "1234", "", "5"],
    ));
    assert!(
        enroll.contains("org.fleetkey.Error.PERMISSION_DENIED"),
        "{enroll}"
    );
}

#[test]
fn the_daemon_runs_without_a_bus() {
    let dir = open_tempdir();
    let nowhere = format!("unix:path={}", dir.path().join("no-bus").display());
    let config = format!("dbus = \"system\"\n{}", fleetkey_e2e::FAST_SOFT_KEYS);
    let daemon = fleetkey_e2e::Daemon::start_with_env(
        &config,
        &[("DBUS_SYSTEM_BUS_ADDRESS", nowhere.as_str())],
    );
    daemon.ctl(&["status"]).assert_ok();
    assert!(
        daemon.log_text().contains("no D-Bus service"),
        "{}",
        daemon.log_text()
    );
    let off =
        fleetkey_e2e::Daemon::start(&format!("dbus = \"off\"\n{}", fleetkey_e2e::FAST_SOFT_KEYS));
    off.ctl(&["status"]).assert_ok();
    assert!(
        off.log_text().contains("D-Bus service off"),
        "{}",
        off.log_text()
    );
}

// The lock serializes the tests that share pcscd for the whole test, awaits
// included; nothing else in this test takes it.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_inserted_signal() {
    if !fleetkey_e2e::pcsc_tests_can_run() {
        return;
    }
    let _lock = fleetkey_e2e::pcscd_lock();
    let _pcscd = fleetkey_e2e::Pcscd::start();
    let bus = PrivateBus::start();
    let _daemon = bus.daemon("");
    let listener = connect(&bus).await;
    let mut signals = subscribe(
        &listener,
        &format!("type='signal',sender='{NAME}',interface='{NAME}'"),
    )
    .await;
    let reader = fleetkey_e2e::VPCD_READERS[0].0;

    let card = tokio::task::spawn_blocking(|| fleetkey_e2e::SimCard::new(0))
        .await
        .unwrap();
    let inserted = next_signal(&mut signals, "CardInserted", Duration::from_secs(15)).await;
    let name: String = inserted.body().deserialize().unwrap();
    assert_eq!(name, reader);
    // CardRemoved is not checked here: with the virtual reader (vpcd)
    // pcscd reports the reader empty about 0.4 s after the simulated card
    // comes in, while the card keeps answering, so a removal cannot be
    // told from that. The decision itself is unit-tested
    // (plugins/pcsc/src/watch.rs, `insertions_and_removals_are_told_apart`).
    drop(card);
}

/// `fleetkey-portal login start`: (id, number).
fn login_start(portal: &Portal, user: &str, ttl: u64) -> (String, u32) {
    let ttl = ttl.to_string();
    let out = portal.cli(&[
        "login",
        "start",
        "--user",
        user,
        "--context",
        "kiosk\u{1b}[2J login",
        "--ttl",
        &ttl,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        json["id"].as_str().unwrap().to_string(),
        u32::try_from(json["number"].as_u64().unwrap()).unwrap(),
    )
}

/// The next ApprovalRequested or ApprovalResolved for challenge `id`.
async fn approval_signal(
    signals: &mut tokio_stream_free::Signals,
    member: &str,
    id: &str,
    limit: Duration,
) -> zbus::Message {
    let deadline = tokio::time::Instant::now() + limit;
    // Signals of the same name for other challenges are put back.
    let mut others = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let signal = next_signal(signals, member, left).await;
        let (signal_id,): (String,) = match member {
            "ApprovalRequested" => {
                let (i, ..): (String, OwnedObjectPath, String, String, String, i64) =
                    signal.body().deserialize().unwrap();
                (i,)
            }
            _ => {
                let (i, ..): (String, String, String) = signal.body().deserialize().unwrap();
                (i,)
            }
        };
        if signal_id == id {
            signals.keep(others);
            return signal;
        }
        others.push(signal);
    }
}

/// Approvals over D-Bus (docs/dbus.md): ApprovalRequested when the portal
/// asks, ListApprovals and PendingApprovals, Approve with the PIN (a wrong
/// PIN refused and counted, another local user with the right PIN
/// approved), Deny, ApprovalResolved for each outcome, expiry included;
/// the portal verifies, and the audit log names the uid that answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_over_dbus_with_their_signals() {
    let portal = Portal::start();
    let bus = PrivateBus::start();
    let daemon = bus.daemon("");
    daemon.activate(&portal);
    daemon.add_user(&portal, "alice", "1234");
    daemon.add_user(&portal, "bob", "5678");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while daemon.ctl(&["--json", "status"]).json()["portal_stream"] != "connected" {
        assert!(std::time::Instant::now() < deadline, "stream not connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conn = connect(&bus).await;
    let listener = connect(&bus).await;
    let mut signals = subscribe(
        &listener,
        &format!("type='signal',sender='{NAME}',path='{PATH}',interface='{NAME}'"),
    )
    .await;
    let wait = Duration::from_secs(10);

    // Requested: the signal, the list, the count.
    let (alice_id, alice_number) = login_start(&portal, "alice", 120);
    let (bob_id, _) = login_start(&portal, "bob", 120);
    let requested = approval_signal(&mut signals, "ApprovalRequested", &alice_id, wait).await;
    let (_, alice_path, user, context, portal_name, expires_at): (
        String,
        OwnedObjectPath,
        String,
        String,
        String,
        i64,
    ) = requested.body().deserialize().unwrap();
    assert_eq!(user, "alice");
    // The challenge's own object, while it is pending.
    let approval_iface = "org.fleetkey.Daemon1.Approval";
    let object_user: String = property(&conn, alice_path.as_str(), approval_iface, "User")
        .await
        .unwrap();
    assert_eq!(object_user, "alice");
    let object_state: String = property(&conn, alice_path.as_str(), approval_iface, "State")
        .await
        .unwrap();
    assert_eq!(object_state, "pending");
    assert!(context.contains("login"), "{context}");
    assert!(!portal_name.is_empty());
    assert!(expires_at > fleetkey_proto::time::now_unix());
    approval_signal(&mut signals, "ApprovalRequested", &bob_id, wait).await;
    type Row = (String, String, String, String, i64, i64, String);
    let listed: Vec<Row> = call(&conn, "ListApprovals", &()).await.unwrap();
    let pending: Vec<&str> = listed
        .iter()
        .filter(|r| r.6 == "pending")
        .map(|r| r.0.as_str())
        .collect();
    assert!(pending.contains(&alice_id.as_str()) && pending.contains(&bob_id.as_str()));
    let count: u32 = property(&conn, PATH, NAME, "PendingApprovals")
        .await
        .unwrap();
    assert_eq!(count, 2);

    // A wrong PIN: refused, counted, still pending.
    let wrong = call::<_, String>(&conn, "Approve", &(&alice_id, alice_number, "0000"))
        .await
        .unwrap_err();
    assert_eq!(error_name(&wrong), "org.fleetkey.Error.PIN_WRONG");
    // Approved on the challenge's object.
    let approved: String = conn
        .call_method(
            Some(NAME),
            alice_path.as_str(),
            Some(approval_iface),
            "Approve",
            &(alice_number, "1234"),
        )
        .await
        .unwrap()
        .body()
        .deserialize()
        .unwrap();
    assert_eq!(approved, "approved");
    let resolved = approval_signal(&mut signals, "ApprovalResolved", &alice_id, wait).await;
    let (_, user, state): (String, String, String) = resolved.body().deserialize().unwrap();
    assert_eq!((user.as_str(), state.as_str()), ("alice", "approved"));
    let waited = portal.cli(&["login", "wait", &alice_id, "--json"]);
    assert!(waited.status.success(), "{}", text(&waited));
    // Answered, its object is gone.
    let gone = property::<String>(&conn, alice_path.as_str(), approval_iface, "State")
        .await
        .unwrap_err();
    assert!(
        error_name(&gone).contains("UnknownObject")
            || error_name(&gone).contains("UnknownInterface"),
        "{gone:?}"
    );

    // Deny: no PIN.
    let denied: String = call(&conn, "Deny", &(&bob_id,)).await.unwrap();
    assert_eq!(denied, "denied");
    let resolved = approval_signal(&mut signals, "ApprovalResolved", &bob_id, wait).await;
    let (_, _, state): (String, String, String) = resolved.body().deserialize().unwrap();
    assert_eq!(state, "denied");
    let again = call::<_, String>(&conn, "Deny", &(&bob_id,))
        .await
        .unwrap_err();
    assert_eq!(error_name(&again), "org.fleetkey.Error.CHALLENGE_ANSWERED");

    // Expiry is signalled too, though nobody answered.
    let (short_id, _) = login_start(&portal, "alice", 2);
    approval_signal(&mut signals, "ApprovalRequested", &short_id, wait).await;
    let resolved = approval_signal(&mut signals, "ApprovalResolved", &short_id, wait).await;
    let (_, _, state): (String, String, String) = resolved.body().deserialize().unwrap();
    assert_eq!(state, "expired");

    // Another local user who knows bob's PIN approves with it (gdbus, as
    // nobody); the audit log names that uid.
    if is_root() {
        let (id, number) = login_start(&portal, "bob", 120);
        approval_signal(&mut signals, "ApprovalRequested", &id, wait).await;
        let number = number.to_string();
        let out = bus.gdbus_call_as(
            NOBODY,
            NOBODY,
            "org.fleetkey.Daemon1.Approve",
            &[&id, &number, "5678"],
        );
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("approved"), "{}", text(&out));
        let entries = daemon.ctl(&["--json", "audit", "show"]).json()["entries"]
            .as_array()
            .unwrap()
            .clone();
        let last = entries
            .iter()
            .rev()
            .find(|e| e["kind"] == "approved")
            .unwrap();
        assert_eq!(last["user"], "bob");
        assert_eq!(last["uid"], NOBODY);
    }
}

/// The EnrollStatus steps of the running enrollment until `done`: the
/// last step and its details.
async fn enrollment_end(
    signals: &mut tokio_stream_free::Signals,
) -> (String, HashMap<String, OwnedValue>) {
    loop {
        let signal = next_signal(signals, "EnrollStatus", Duration::from_secs(60)).await;
        let (step, done, details): (String, bool, HashMap<String, OwnedValue>) =
            signal.body().deserialize().unwrap();
        if done {
            return (step, details);
        }
    }
}

/// One enrollment over D-Bus at a time (docs/dbus.md): while one waits for
/// the portal (its process stopped here), another is refused with BUSY;
/// the first completes once the portal answers, and then the next one is
/// taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_enrollment_is_busy_while_one_runs() {
    let portal = Portal::start();
    let bus = PrivateBus::start();
    let daemon = bus.daemon("");
    daemon.activate(&portal);
    let conn = connect(&bus).await;
    let listener = connect(&bus).await;
    let mut signals = subscribe(
        &listener,
        &format!(
            "type='signal',sender='{NAME}',path='{PATH}',interface='{NAME}',member='EnrollStatus'"
        ),
    )
    .await;
    let dir = open_tempdir();
    let mut images = Vec::new();
    for user in ["alice", "bob"] {
        let png = dir.path().join(format!("{user}.png"));
        portal.user_code_png(user, &png);
        images.push(std::fs::read(&png).unwrap());
    }

    portal.freeze(true);
    let () = call(&conn, "EnrollFromImage", &(images[0].clone(), "1234", ""))
        .await
        .unwrap();
    loop {
        let signal = next_signal(&mut signals, "EnrollStatus", Duration::from_secs(30)).await;
        let (step, _, _): (String, bool, HashMap<String, OwnedValue>) =
            signal.body().deserialize().unwrap();
        if step == "enrolling" {
            break;
        }
    }
    let busy = call::<_, ()>(&conn, "EnrollFromImage", &(images[1].clone(), "5678", ""))
        .await
        .unwrap_err();
    assert_eq!(error_name(&busy), "org.fleetkey.Error.BUSY", "{busy:?}");
    portal.freeze(false);
    let (step, details) = enrollment_end(&mut signals).await;
    assert_eq!(step, "enrolled", "{details:?}");
    assert_eq!(String::try_from(details["User"].clone()).unwrap(), "alice");

    let () = call(&conn, "EnrollFromImage", &(images[1].clone(), "5678", ""))
        .await
        .unwrap();
    let (step, details) = enrollment_end(&mut signals).await;
    assert_eq!(step, "enrolled", "{details:?}");
    assert_eq!(String::try_from(details["User"].clone()).unwrap(), "bob");
}
