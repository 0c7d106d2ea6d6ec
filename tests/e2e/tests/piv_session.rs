//! The PIV key store keeps its PC/SC context and a connection to each
//! card between operations (docs/piv.md). These tests hold it to what
//! that must not change:
//! - a verified PIN never outlives the operation: after a signature (and
//!   after one that failed midway), another connection's PIN-protected
//!   command without VERIFY is refused; after an enrollment the
//!   management key is no longer authenticated either;
//! - another card in the same reader is never taken for the kept one;
//!   a card moved to another reader, or reset by another program, is
//!   found again;
//! - while another program holds a transaction on the card, the daemon
//!   waits for it.
//!
//! Real pcscd with vpcd, simulated cards, real daemon, CLI and portal.
#![cfg(feature = "pcsc")]

use std::ffi::CString;
use std::time::{Duration, Instant};

use fleetkey_e2e::{
    Daemon, FAST_SOFT_KEYS, Pcscd, Portal, SimCard, VPCD_READERS, open_tempdir, openssl_verify,
    pcsc_tests_can_run, pcscd_lock,
};
use fleetkey_pcsc::{KeyRef, ManagementKey, PcscConfig, PcscKeyStore};
use fleetkey_plugin::{KeyStore, Pin};
use fleetkey_proto::Reason;
use serde_json::Value;

const PIN: &str = "24681357";
const SW_OK: u16 = 0x9000;
const SW_SECURITY_NOT_SATISFIED: u16 = 0x6982;

/// Another program's connection to the card in `reader`, sending raw
/// APDUs: no SELECT (it would reset the security status on the
/// simulator), no VERIFY.
struct Probe {
    card: pcsc::Card,
    _context: pcsc::Context,
}

impl Probe {
    fn connect(reader: usize) -> Probe {
        let context = pcsc::Context::establish(pcsc::Scope::User).unwrap();
        let name = CString::new(VPCD_READERS[reader].0).unwrap();
        let card = context
            .connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
            .unwrap();
        Probe {
            card,
            _context: context,
        }
    }

    fn send(&self, apdu: &[u8]) -> u16 {
        let mut buffer = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
        let answer = self.card.transmit(apdu, &mut buffer).unwrap();
        assert!(answer.len() >= 2, "{answer:02x?}");
        u16::from_be_bytes([answer[answer.len() - 2], answer[answer.len() - 1]])
    }

    /// GENERAL AUTHENTICATE with the key in `slot` over a digest: needs
    /// the PIN verified.
    fn sign(&self, slot: u8) -> u16 {
        let mut apdu = vec![
            0x00, 0x87, 0x11, slot, 0x26, 0x7C, 0x24, 0x82, 0x00, 0x81, 0x20,
        ];
        apdu.extend([0x5A; 32]);
        apdu.push(0x00);
        self.send(&apdu)
    }

    /// VERIFY without data: 90 00 when the PIN is verified now.
    fn pin_verified(&self) -> bool {
        self.send(&[0x00, 0x20, 0x00, 0x80]) == SW_OK
    }

    fn verify(&self, pin: &str) -> u16 {
        let mut apdu = vec![0x00, 0x20, 0x00, 0x80, 0x08];
        apdu.extend(pin.as_bytes());
        apdu.resize(13, 0xFF);
        self.send(&apdu)
    }

    /// PUT DATA of the (unused) printed-information object, emptying it:
    /// needs the management key authenticated.
    fn put_data(&self) -> u16 {
        self.send(&[
            0x00, 0xDB, 0x3F, 0xFF, 0x07, 0x5C, 0x03, 0x5F, 0xC1, 0x09, 0x53, 0x00,
        ])
    }
}

/// The card's PIN tries left, from the simulator's state file.
fn pin_tries_left(card: &SimCard) -> u64 {
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(&card.state).unwrap()).unwrap();
    state["pin_tries_left"].as_u64().unwrap()
}

struct Setup {
    portal: Portal,
    daemon: Daemon,
    _pcscd: Pcscd,
    dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let pcscd = Pcscd::start();
    let portal = Portal::start();
    let daemon = Daemon::start(&format!("{FAST_SOFT_KEYS}[pin]\nmax_length = 8\n"));
    daemon.activate(&portal);
    let dir = open_tempdir();
    std::fs::write(dir.path().join("data"), b"approve login 42\n").unwrap();
    Setup {
        portal,
        daemon,
        _pcscd: pcscd,
        dir,
    }
}

fn add_user(s: &Setup, user: &str, reader: usize) -> Value {
    let code = s.portal.user_code(user);
    let out = s.daemon.ctl_with_stdin(
        &[
            "--json",
            "user",
            "add",
            &code.uri,
            "--backend",
            "pcsc",
            "--pin-stdin",
            "--reader",
            VPCD_READERS[reader].0,
        ],
        Some(&format!("{PIN}\n")),
    );
    out.assert_ok();
    let mut added = out.json();
    added["name"] = user.into();
    added
}

/// Signs through the daemon and checks the signature with openssl.
fn sign_ok(s: &Setup, user: &Value) {
    let data = s.dir.path().join("data");
    let out = s.daemon.sign(user["name"].as_str().unwrap(), PIN, &data);
    out.assert_ok();
    assert!(openssl_verify(
        user["public_key_pem"].as_str().unwrap(),
        &data.with_extension("sig"),
        &data
    ));
}

#[test]
fn a_verified_pin_never_outlives_the_operation() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    let s = setup();
    let card = SimCard::new(0);
    let alice = add_user(&s, "alice", 0);
    let probe = Probe::connect(0);

    // The enrollment authenticated with the management key: it did not
    // stay authenticated.
    assert_eq!(probe.put_data(), SW_SECURITY_NOT_SATISFIED);

    // The card's security status is shared by every connection: a PIN
    // verified on one lets another sign. (So the checks below can fail.)
    let other = Probe::connect(0);
    assert_eq!(other.verify(PIN), SW_OK);
    assert_eq!(probe.sign(0x9a), SW_OK);
    assert_eq!(other.send(&[0x00, 0x20, 0xFF, 0x80]), SW_OK, "VERIFY P1=FF");
    assert_eq!(probe.sign(0x9a), SW_SECURITY_NOT_SATISFIED);

    // After each signature through the daemon (the second and third on
    // its kept connection), the PIN is no longer verified.
    for _ in 0..3 {
        sign_ok(&s, &alice);
        assert!(!probe.pin_verified());
        assert_eq!(probe.sign(0x9a), SW_SECURITY_NOT_SATISFIED);
    }

    // An operation that fails after VERIFY succeeded: the slot 9d holds
    // no key, so GENERAL AUTHENTICATE fails. (The key store in this
    // process: no user's record points at an empty slot.)
    let store = PcscKeyStore::open(PcscConfig {
        management_key: ManagementKey::factory(),
        management_key_source: "the factory default".into(),
        default_slot: 0x9a,
    })
    .unwrap();
    let cards = s.daemon.ctl(&["--json", "card", "list"]).json();
    let listed = &cards["cards"][0];
    let key = KeyRef {
        card_id: listed["card_id"].as_str().unwrap().into(),
        serial: listed["serial"].as_str().unwrap().parse().ok(),
        slot: 0x9a,
    };
    let empty_slot = KeyRef { slot: 0x9d, ..key };
    let tries = pin_tries_left(&card);
    let failed = store.sign_digest(&empty_slot.encode(), &Pin::new(PIN), &[7; 32]);
    assert!(failed.is_err(), "slot 9d holds no key");
    // The PIN was right (no try spent), so it had been verified...
    assert_eq!(pin_tries_left(&card), tries);
    // ...and it no longer is.
    assert!(!probe.pin_verified());
    assert_eq!(probe.sign(0x9a), SW_SECURITY_NOT_SATISFIED);
    // The daemon still signs (its connection and the store's coexist).
    sign_ok(&s, &alice);
    assert_eq!(probe.sign(0x9a), SW_SECURITY_NOT_SATISFIED);
    drop(store);
}

#[test]
fn another_card_in_the_same_reader_is_never_taken_for_the_kept_one() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    let s = setup();
    let mut alice_card = SimCard::new(0);
    let alice = add_user(&s, "alice", 0);
    sign_ok(&s, &alice);
    sign_ok(&s, &alice);

    // Swapped for another card in the same reader, between operations:
    // the kept connection is stale, the scan finds the wrong card; it is
    // not asked for the PIN.
    alice_card.remove();
    let other = SimCard::new(0);
    let data = s.dir.path().join("data");
    let out = s.daemon.sign("alice", PIN, &data);
    let error = out.assert_reason(Reason::CardMismatch);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains(VPCD_READERS[0].0), "{message}");
    assert_eq!(pin_tries_left(&other), 3, "the other card saw a PIN");
    // Again, now that the other card's connection is the kept one.
    s.daemon
        .sign("alice", PIN, &data)
        .assert_reason(Reason::CardMismatch);
    assert_eq!(pin_tries_left(&other), 3, "the other card saw a PIN");

    // Alice's card in the other reader: found again there.
    alice_card.insert(1, false);
    sign_ok(&s, &alice);
    sign_ok(&s, &alice);

    // Another program resets the card: the kept connection reports it,
    // the card is found again (its identity read anew) and signs.
    let probe = Probe::connect(1);
    probe
        .card
        .disconnect(pcsc::Disposition::ResetCard)
        .map_err(|(_, e)| e)
        .unwrap();
    sign_ok(&s, &alice);

    let user = s.daemon.ctl(&["--json", "user", "show", "alice"]).json();
    assert_eq!(user["failed_attempts"], 0);
    drop(other);
}

#[test]
fn the_daemon_waits_while_another_program_holds_a_transaction() {
    if !pcsc_tests_can_run() {
        return;
    }
    let _lock = pcscd_lock();
    let s = setup();
    let _card = SimCard::new(0);
    let alice = add_user(&s, "alice", 0);
    sign_ok(&s, &alice);

    let mut probe = Probe::connect(0);
    let transaction = probe.card.transaction().unwrap();
    let started = Instant::now();
    std::thread::scope(|scope| {
        let signing = scope.spawn(|| {
            sign_ok(&s, &alice);
            started.elapsed()
        });
        std::thread::sleep(Duration::from_millis(800));
        assert!(
            !signing.is_finished(),
            "signed during another's transaction"
        );
        drop(transaction);
        let took = signing.join().unwrap();
        assert!(took >= Duration::from_millis(800), "{took:?}");
    });
}
