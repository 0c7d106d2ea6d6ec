//! The PIV smartcard key store over PC/SC (pcsc-lite's `pcscd`).
//!
//! Each user's P-256 key is generated on a PIV card (NIST SP 800-73-4:
//! PIV cards, YubiKeys and other tokens) and never leaves it. The card's
//! own PIN is the user's PIN: the card counts wrong PINs and blocks itself
//! (`63 CX`, `69 83`); the PUK unblocks it.
//!
//! # Key references
//! A key is named by the card it lives on and its slot, as UTF-8 text:
//! `piv1 card=<GUID hex> serial=<serial or -> slot=<9a|9c|9d|9e|82..95>`.
//! The card is known by its CHUID's GUID (else by its serial number), not
//! by the reader, so a card may be moved between readers.
//!
//! # What each operation does on the card
//! - create: PIN check (a card still at its factory PIN gets the user's
//!   PIN with CHANGE REFERENCE DATA), management-key authentication,
//!   GENERATE ASYMMETRIC KEY PAIR, then a self-signed certificate written
//!   to the slot (so PIV middleware sees the key, and the slot is visibly
//!   in use). A slot that already holds a certificate is refused.
//! - sign: VERIFY PIN, GENERAL AUTHENTICATE, then VERIFY P1=FF.
//! - delete: the slot's certificate is deleted. PIV has no command to
//!   delete a key; it stays until the slot is used again.
//!
//! # Connections, transactions and the PIN's validity
//! The PC/SC context and a connection to each PIV card found are kept
//! between operations, with the card's identity read on that connection.
//! PC/SC ties a connection to one insertion of one card: after the card
//! is removed (even if another card takes its place) or reset, calls on
//! it fail with `RemovedCard`/`ResetCard`. Then, or when pcscd went away,
//! the card is found again by a full scan (a new context if needed, every
//! reader, SELECT, CHUID, serial), as it is for a card not yet known.
//!
//! Each operation runs inside a PC/SC transaction (other programs wait),
//! starting with SELECT (another program may have selected another
//! application in between). An operation that presented a PIN or PUK ends
//! it with VERIFY P1=FF, which resets the PIN's security status, before
//! the transaction ends, whether the operation succeeded or not; a card
//! that refuses that, and any operation that used the management key, is
//! reset as the transaction ends (and found again next time). So a PIN
//! verified for an operation never outlives it.
//!
//! A watcher thread follows reader and card events with
//! `SCardGetStatusChange` (blocking, not polling) and logs them.

pub mod apdu;
pub mod cert;
#[doc(hidden)]
pub mod fuzzing;
pub mod mgmt;
pub mod piv;
pub mod settings;
mod watch;

use std::ffi::CString;
use std::time::{SystemTime, UNIX_EPOCH};

use fleetkey_plugin::{
    Attestation, BackendInfo, CardInfo, CreateOptions, CreatedKey, Enrolled, KeyStore,
    KeyStoreError, Operation, Pin, PinRules, PinStatus, Reason,
};
use p256::pkcs8::EncodePublicKey;

pub use mgmt::{Algorithm, ManagementKey};
use piv::{Piv, PivError, SecretCheck, Transmit};
pub use settings::{KeySlot, PcscFactory, PcscSettings};

/// The backend's name in config, on the wire and in user records.
pub const BACKEND_NAME: &str = "pcsc";

/// PIV's PIN length rule (SP 800-73-4: 6 to 8 bytes, padded with 0xFF).
pub const PIN_RULES: PinRules = PinRules {
    min_length: Some(6),
    max_length: Some(8),
};

/// The attestation format of keys on cards that attest them (YubiKey
/// style): the key's certificate, signed by the card's attestation key
/// (slot F9), followed by that key's certificate, signed by the card's
/// maker.
pub const ATTESTATION_FORMAT: &str = "piv-attestation";

/// The key store's settings.
#[derive(Debug, Clone)]
pub struct PcscConfig {
    pub management_key: ManagementKey,
    /// Where the management key came from, for messages ("the factory
    /// default", "/etc/fleetkey/piv-management-key").
    pub management_key_source: String,
    /// Slot used when `user add` names none.
    pub default_slot: u8,
}

/// Parses a slot: `9a`, `9c`, `9d`, `9e` or a retired slot `82`..`95`
/// (the one rule, [`KeySlot::parse`]).
pub fn parse_slot(text: &str) -> Option<u8> {
    KeySlot::parse(text).ok().map(KeySlot::number)
}

/// Where a key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    pub card_id: String,
    pub serial: Option<u32>,
    pub slot: u8,
}

impl KeyRef {
    pub fn encode(&self) -> Vec<u8> {
        let serial = self
            .serial
            .map_or_else(|| "-".to_string(), |s| s.to_string());
        format!(
            "piv1 card={} serial={serial} slot={:02x}",
            self.card_id, self.slot
        )
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyRef, KeyStoreError> {
        let bad =
            || KeyStoreError::corrupt(String::from_utf8_lossy(bytes), "not a PIV key reference");
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let mut parts = text.split(' ');
        if parts.next() != Some("piv1") {
            return Err(bad());
        }
        let mut field = |name: &str| {
            parts
                .next()
                .and_then(|p| p.strip_prefix(name))
                .and_then(|p| p.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(bad)
        };
        let card_id = field("card")?;
        let serial = field("serial")?;
        let slot = field("slot")?;
        let serial = match serial.as_str() {
            "-" => None,
            s => Some(s.parse().map_err(|_| bad())?),
        };
        let slot = parse_slot(&slot).ok_or_else(bad)?;
        if card_id.is_empty() || parts.next().is_some() {
            return Err(bad());
        }
        Ok(KeyRef {
            card_id,
            serial,
            slot,
        })
    }

    /// "card 1f2e... (serial 12345678)", for messages.
    pub fn describe_card(&self) -> String {
        describe_card(&self.card_id, self.serial)
    }
}

fn describe_card(card_id: &str, serial: Option<u32>) -> String {
    match serial {
        Some(serial) => format!("card {card_id} (serial {serial})"),
        None => format!("card {card_id}"),
    }
}

/// The card's identity: GUID, else serial.
fn card_id(guid: Option<String>, serial: Option<u32>) -> Option<String> {
    guid.or_else(|| serial.map(|s| format!("serial-{s}")))
}

/// One card connection's commands, inside or outside a transaction.
struct PcscCard<'a>(&'a pcsc::Card);

impl Transmit for PcscCard<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, pcsc::Error> {
        let mut buffer = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
        let answer = self.0.transmit(apdu, &mut buffer)?;
        if answer.is_empty() {
            // No answer at all: the card stopped answering (vpcd reports
            // a card that left this way).
            return Err(pcsc::Error::UnresponsiveCard);
        }
        Ok(answer.to_vec())
    }
}

/// Which card, in which reader: for messages.
#[derive(Debug, Clone)]
struct CardLabel {
    reader: String,
    card_id: String,
    serial: Option<u32>,
}

/// A connection to a card whose identity was read on it. PC/SC ties a
/// connection to one insertion of one card: once the card is removed
/// (even if another card is inserted in its place) or reset, every call
/// on the connection fails with `RemovedCard` or `ResetCard`, so a
/// connection that still works reaches the card whose identity it read.
/// Dropped, it disconnects leaving the card as it is: no operation leaves
/// a secret verified (see [`After`]).
struct FoundCard {
    reader: String,
    card_id: String,
    serial: Option<u32>,
    card: Option<pcsc::Card>,
}

impl FoundCard {
    fn label(&self) -> CardLabel {
        CardLabel {
            reader: self.reader.clone(),
            card_id: self.card_id.clone(),
            serial: self.serial,
        }
    }
}

impl Drop for FoundCard {
    fn drop(&mut self) {
        if let Some(card) = self.card.take() {
            // On failure the card is dropped, which resets it.
            let _ = card.disconnect(pcsc::Disposition::LeaveCard);
        }
    }
}

/// What scanning one reader found.
enum Slot {
    Empty,
    NotPiv { problem: String },
    Piv(Box<FoundCard>),
}

/// The PC/SC context and the cards found with it, kept between
/// operations.
struct Session {
    context: pcsc::Context,
    cards: Vec<FoundCard>,
}

/// How an operation ends on the card, inside its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Nothing was verified: the connection is kept.
    Nothing,
    /// A PIN or PUK was presented: VERIFY P1=FF resets the PIN's security
    /// status; if the card refuses that (or it fails), the card is reset
    /// and the connection dropped.
    EndPin,
    /// The management key was used (it has no reset command): the card
    /// is reset as the transaction ends, and the connection dropped.
    Reset,
}

fn is_card_gone(error: pcsc::Error) -> bool {
    matches!(
        error,
        pcsc::Error::RemovedCard
            | pcsc::Error::NoSmartcard
            | pcsc::Error::ResetCard
            | pcsc::Error::UnpoweredCard
            | pcsc::Error::UnresponsiveCard
            | pcsc::Error::ReaderUnavailable
            | pcsc::Error::UnknownReader
            | pcsc::Error::CommError
    )
}

fn is_service_gone(error: pcsc::Error) -> bool {
    matches!(
        error,
        pcsc::Error::NoService | pcsc::Error::ServiceStopped | pcsc::Error::InvalidHandle
    )
}

fn service_error(error: pcsc::Error) -> KeyStoreError {
    KeyStoreError::unavailable(format!("cannot talk to pcscd ({error}); is pcscd running?"))
}

/// Why a kept connection could not start an operation.
enum Stale {
    /// The card is gone, was reset or moved: find it again.
    Card,
    /// pcscd went away (restarted): a new context, then find it again.
    Service,
    /// Anything else: the operation fails with it.
    Failed(KeyStoreError),
}

/// Runs `op` on `card` inside a PC/SC transaction (other programs wait
/// while it holds; SELECT first, since another program may have selected
/// another application in between), then ends it as `after` says.
/// Gives the connection back when it may be kept.
fn transact<T>(
    mut card: FoundCard,
    after: After,
    op: impl FnOnce(&mut Piv<PcscCard<'_>>, &CardLabel) -> Result<T, KeyStoreError>,
) -> Result<(Option<FoundCard>, Result<T, KeyStoreError>), Stale> {
    let label = card.label();
    let Some(handle) = card.card.as_mut() else {
        return Err(Stale::Card);
    };
    let transaction = match handle.transaction() {
        Ok(transaction) => transaction,
        Err(e) if is_service_gone(e) => return Err(Stale::Service),
        Err(e) if is_card_gone(e) => return Err(Stale::Card),
        Err(e) => {
            return Err(Stale::Failed(KeyStoreError::internal(format!(
                "{} in reader '{}': cannot start a transaction: {e}",
                describe_card(&label.card_id, label.serial),
                label.reader
            ))));
        }
    };
    let mut piv = Piv::new(PcscCard(&transaction));
    match piv.select() {
        Ok(true) => {}
        Ok(false) => {
            return Err(Stale::Failed(KeyStoreError::new(
                Reason::CardUnsupported,
                format!(
                    "{} in reader '{}' no longer answers as a PIV card",
                    describe_card(&label.card_id, label.serial),
                    label.reader
                ),
            )));
        }
        Err(PivError::Transport { source, .. }) if is_service_gone(source) => {
            return Err(Stale::Service);
        }
        Err(PivError::Transport { source, .. }) if is_card_gone(source) => {
            return Err(Stale::Card);
        }
        Err(e) => return Err(Stale::Failed(card_error(&label, e))),
    }
    // From here on the operation runs once, whatever happens after.
    let result = op(&mut piv, &label);
    let keep = match after {
        After::Nothing => true,
        After::EndPin => matches!(piv.reset_pin_status(), Ok(true)),
        After::Reset => false,
    };
    if keep {
        drop(transaction);
        return Ok((Some(card), result));
    }
    // Reset before the transaction ends, so that no other program gets
    // the card in between with the PIN or the management key verified.
    let reset = match transaction.end(pcsc::Disposition::ResetCard) {
        Ok(()) => true,
        Err((transaction, e)) => {
            tracing::warn!(error = %e, card = %label.card_id, "cannot reset the card as the transaction ends");
            drop(transaction);
            false
        }
    };
    if !reset {
        // Dropping the connection resets the card.
        drop(card.card.take());
    }
    Ok((None, result))
}

impl PcscKeyStore {
    /// The session, kept between operations.
    fn session(&self) -> std::sync::MutexGuard<'_, Option<Session>> {
        self.session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The kept context (a new one when pcscd was restarted) and the
    /// readers; the cards found before are let go, to be found again.
    fn fresh_scan(
        session: &mut Option<Session>,
    ) -> Result<(&mut Session, Vec<String>), KeyStoreError> {
        if let Some(kept) = session.as_mut() {
            kept.cards.clear();
        }
        // A kept context that fails (pcscd restarted) is made anew once.
        let kept = session.as_ref().and_then(|s| list_readers(&s.context).ok());
        let readers = match kept {
            Some(readers) => readers,
            None => {
                *session = None;
                let context = pcsc::Context::establish(pcsc::Scope::User).map_err(service_error)?;
                let readers = list_readers(&context)?;
                *session = Some(Session {
                    context,
                    cards: Vec::new(),
                });
                readers
            }
        };
        match session.as_mut() {
            Some(kept) => Ok((kept, readers)),
            None => Err(KeyStoreError::internal("the PC/SC session vanished")),
        }
    }

    /// Runs `op` on the card `key` lives on: on the kept connection when
    /// it still works, else on the card found again by a full scan.
    fn on_card<T>(
        &self,
        key: &KeyRef,
        after: After,
        op: impl FnOnce(&mut Piv<PcscCard<'_>>, &CardLabel) -> Result<T, KeyStoreError>,
    ) -> Result<T, KeyStoreError> {
        let mut session = self.session();
        // `op` runs at most once: it is only called with a started
        // transaction; a stale connection leaves it here for the next try.
        let mut pending = Some(op);
        // The kept connection, then up to two scans (a card reset by
        // another program between the scan and the transaction).
        for attempt in 0..3 {
            let card = if attempt == 0 {
                let kept = session.as_mut().and_then(|s| {
                    let at = s.cards.iter().position(|c| c.card_id == key.card_id)?;
                    Some(s.cards.swap_remove(at))
                });
                match kept {
                    Some(card) => card,
                    None => continue,
                }
            } else {
                self.find_card(&mut session, key)?
            };
            let outcome = transact(card, after, |piv, label| match pending.take() {
                Some(run) => run(piv, label),
                None => Err(KeyStoreError::internal("the operation already ran")),
            });
            match outcome {
                Ok((kept, result)) => {
                    if let (Some(card), Some(s)) = (kept, session.as_mut()) {
                        s.cards.push(card);
                    }
                    return result;
                }
                Err(Stale::Failed(e)) => return Err(e),
                Err(Stale::Card) => {}
                Err(Stale::Service) => *session = None,
            }
        }
        Err(KeyStoreError::new(
            Reason::CardNotPresent,
            format!(
                "{} keeps being reset or removed; the operation did not start",
                key.describe_card()
            ),
        )
        .with_hint("Keep the card in the reader, close programs that reset it, and try again."))
    }

    /// Connects to the card in `reader` and reads its PIV identity.
    fn scan(context: &pcsc::Context, reader: &str) -> Result<Slot, KeyStoreError> {
        let name = CString::new(reader)
            .map_err(|_| KeyStoreError::internal(format!("reader name {reader:?} has a NUL")))?;
        let card = match context.connect(&name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY) {
            Ok(card) => card,
            Err(pcsc::Error::NoSmartcard | pcsc::Error::RemovedCard) => return Ok(Slot::Empty),
            Err(e) if is_service_gone(e) => return Err(service_error(e)),
            Err(e) => {
                return Ok(Slot::NotPiv {
                    problem: format!("cannot connect to the card: {e}"),
                });
            }
        };
        let identity = {
            let mut piv = Piv::new(PcscCard(&card));
            (|| {
                if !piv.select()? {
                    return Ok(None);
                }
                let guid = piv.guid()?;
                let serial = piv.serial()?;
                Ok::<_, PivError>(Some((guid, serial)))
            })()
        };
        let found = |card_id, serial| FoundCard {
            reader: reader.to_string(),
            card_id,
            serial,
            card: Some(card),
        };
        match identity {
            Ok(None) => Ok(Slot::NotPiv {
                problem: "the card has no PIV application".into(),
            }),
            Ok(Some((guid, serial))) => match card_id(guid, serial) {
                Some(card_id) => Ok(Slot::Piv(Box::new(found(card_id, serial)))),
                None => Ok(Slot::NotPiv {
                    problem:
                        "the PIV card has neither a CHUID GUID nor a serial number to know it by"
                            .into(),
                }),
            },
            Err(PivError::Transport { source, .. }) if is_card_gone(source) => Ok(Slot::Empty),
            Err(e) => Ok(Slot::NotPiv {
                problem: e.to_string(),
            }),
        }
    }

    /// Finds the card a key lives on by scanning every reader, or says
    /// which card is missing and what is there instead. The other PIV
    /// cards found are kept for later operations.
    fn find_card(
        &self,
        session: &mut Option<Session>,
        key: &KeyRef,
    ) -> Result<FoundCard, KeyStoreError> {
        let (session, readers) = Self::fresh_scan(session)?;
        let mut wanted = None;
        let mut others = Vec::new();
        for reader in &readers {
            match Self::scan(&session.context, reader)? {
                Slot::Piv(card) if card.card_id == key.card_id && wanted.is_none() => {
                    wanted = Some(*card);
                }
                Slot::Piv(card) => {
                    others.push(format!(
                        "reader '{}' holds {}",
                        card.reader,
                        describe_card(&card.card_id, card.serial)
                    ));
                    session.cards.push(*card);
                }
                Slot::NotPiv { problem } => others.push(format!(
                    "reader '{reader}' holds a card that is not usable ({problem})"
                )),
                Slot::Empty => {}
            }
        }
        if let Some(card) = wanted {
            return Ok(card);
        }
        if others.is_empty() {
            let readers = if readers.is_empty() {
                "no smartcard reader is connected".to_string()
            } else {
                format!("no card is in reader {}", quoted_list(&readers))
            };
            return Err(KeyStoreError::new(
                Reason::CardNotPresent,
                format!("{readers}; the key is on {}", key.describe_card()),
            )
            .with_hint(format!(
                "Insert {} (fleetkeyctl card list shows the readers and cards) and try again.",
                key.describe_card()
            )));
        }
        Err(KeyStoreError::new(
            Reason::CardMismatch,
            format!(
                "{}, but the key is on {}",
                others.join("; "),
                key.describe_card()
            ),
        )
        .with_hint(format!(
            "The user's key is on {}; insert that card instead.",
            key.describe_card()
        )))
    }

    /// The PIV card for a new key: the one in `reader`, or the only one.
    fn card_for_enrollment(
        session: &mut Option<Session>,
        reader: Option<&str>,
    ) -> Result<FoundCard, KeyStoreError> {
        let (session, readers) = Self::fresh_scan(session)?;
        if let Some(wanted) = reader {
            if !readers.iter().any(|r| r == wanted) {
                return Err(KeyStoreError::invalid_option(format!(
                    "there is no reader '{wanted}'; readers: {}",
                    quoted_list(&readers)
                )));
            }
            return match Self::scan(&session.context, wanted)? {
                Slot::Piv(card) => Ok(*card),
                Slot::Empty => Err(KeyStoreError::new(
                    Reason::CardNotPresent,
                    format!("no card is in reader '{wanted}'"),
                )
                .with_hint(format!(
                    "Insert the card to enroll on into reader '{wanted}' and try again."
                ))),
                Slot::NotPiv { problem } => Err(KeyStoreError::new(
                    Reason::CardUnsupported,
                    format!("the card in reader '{wanted}' cannot be used: {problem}"),
                )),
            };
        }
        let mut cards = Vec::new();
        let mut unusable = Vec::new();
        for reader in &readers {
            match Self::scan(&session.context, reader)? {
                Slot::Piv(card) => cards.push(*card),
                Slot::NotPiv { problem } => unusable.push(format!("'{reader}': {problem}")),
                Slot::Empty => {}
            }
        }
        match cards.len() {
            1 => Ok(cards.remove(0)),
            0 if !unusable.is_empty() => Err(KeyStoreError::new(
                Reason::CardUnsupported,
                format!(
                    "no PIV card is present; cards that cannot be used: {}",
                    unusable.join("; ")
                ),
            )),
            0 if readers.is_empty() => Err(KeyStoreError::new(
                Reason::CardNotPresent,
                "no smartcard reader is connected",
            )
            .with_hint(
                "Connect a smartcard reader (or a USB token), insert the card, and try again.",
            )),
            0 => Err(KeyStoreError::new(
                Reason::CardNotPresent,
                format!("no card is in reader {}", quoted_list(&readers)),
            )),
            _ => {
                let message = format!(
                    "PIV cards are in several readers ({}); choose one with --reader",
                    quoted_list(&cards.iter().map(|c| c.reader.clone()).collect::<Vec<_>>())
                );
                session.cards.extend(cards);
                Err(KeyStoreError::invalid_option(message))
            }
        }
    }

    /// Enrollment on the card, inside its transaction.
    fn enroll_on(
        &self,
        piv: &mut Piv<PcscCard<'_>>,
        label: &CardLabel,
        key_id: &str,
        pin: &Pin,
        slot: u8,
    ) -> Result<Enrolled, KeyStoreError> {
        let mut notes = Vec::new();
        let card_name = describe_card(&label.card_id, label.serial);
        let err = |e| card_error(label, e);

        // The slot must be free: a certificate means a key in use.
        let object = piv::cert_object(slot).ok_or_else(|| {
            KeyStoreError::invalid_option(format!("{slot:02x} is not a key slot"))
        })?;
        if piv.get_data(object).map_err(err)?.is_some() {
            return Err(KeyStoreError::invalid_option(format!(
                "slot {slot:02x} of {card_name} already holds a certificate (a key in use); choose another slot with --slot, or remove the user whose key it is"
            )));
        }

        // The PIN: a card at its factory PIN takes the user's; otherwise
        // the user must know the card's PIN.
        let factory = piv
            .secret_metadata(false)
            .map_err(err)?
            .is_some_and(|m| m.is_default);
        if factory {
            let changed = piv
                .change_secret(false, piv::FACTORY_PIN, pin.as_str())
                .map_err(err)?;
            pin_outcome(changed)?;
            notes.push(format!(
                "{card_name} still had its factory PIN; its PIN is now the one you chose"
            ));
        }
        enrollment_pin_outcome(piv.verify_pin(pin.as_str()).map_err(err)?)?;

        self.authenticate(piv, label).map_err(|e| match e {
            mut e if factory && e.is(Reason::CardManagementKey) => {
                e.message = format!(
                    "{}; the card's PIN was already changed from the factory PIN to the one you chose",
                    e.message
                );
                e
            }
            other => other,
        })?;
        let point = piv.generate_p256(slot).map_err(err)?;
        let public_key = p256::PublicKey::from_sec1_bytes(&point).map_err(|e| {
            KeyStoreError::internal(format!("{card_name} made an invalid public key: {e}"))
        })?;
        let spki = public_key
            .to_public_key_der()
            .map_err(|e| KeyStoreError::internal(format!("encoding the public key: {e}")))?;

        let mut serial = [0u8; 16];
        getrandom::fill(&mut serial)
            .map_err(|e| KeyStoreError::internal(format!("no randomness: {e}")))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let tbs =
            cert::tbs_certificate(&format!("fleetkey {key_id}"), spki.as_bytes(), &serial, now)
                .map_err(|e| {
                    KeyStoreError::internal(format!("encoding the slot's certificate: {e}"))
                })?;
        pin_outcome(piv.verify_pin(pin.as_str()).map_err(err)?)?;
        let signature = piv.sign_p256(slot, &cert::tbs_digest(&tbs)).map_err(err)?;
        let certificate = cert::certificate(&tbs, &signature).map_err(|e| {
            KeyStoreError::internal(format!("encoding the slot's certificate: {e}"))
        })?;
        piv.put_data(object, &cert::piv_certificate_object(&certificate))
            .map_err(err)?;
        notes.push(format!(
            "key made in slot {slot:02x} of {card_name} in reader '{}'",
            label.reader
        ));
        tracing::info!(card = %label.card_id, slot = format!("{slot:02x}"), reader = %label.reader, "PIV key generated");
        let key_ref = KeyRef {
            card_id: label.card_id.clone(),
            serial: label.serial,
            slot,
        };
        Ok(Enrolled {
            key: CreatedKey {
                key_ref: key_ref.encode(),
                public_key_der: spki.as_bytes().to_vec(),
            },
            notes,
        })
    }

    fn authenticate(
        &self,
        piv: &mut Piv<PcscCard<'_>>,
        label: &CardLabel,
    ) -> Result<(), KeyStoreError> {
        let accepted = piv
            .authenticate(&self.config.management_key)
            .map_err(|e| card_error(label, e))?;
        if accepted {
            Ok(())
        } else {
            Err(KeyStoreError::new(
                Reason::CardManagementKey,
                format!(
                    "{} in reader '{}' refused the management key ({})",
                    describe_card(&label.card_id, label.serial),
                    label.reader,
                    self.config.management_key_source
                ),
            ))
        }
    }
}

fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|r| format!("'{r}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn list_readers(context: &pcsc::Context) -> Result<Vec<String>, KeyStoreError> {
    match context.list_readers_owned() {
        Ok(names) => Ok(names
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect()),
        Err(pcsc::Error::NoReadersAvailable) => Ok(Vec::new()),
        Err(e) => Err(service_error(e)),
    }
}

/// The PIV key store.
pub struct PcscKeyStore {
    config: PcscConfig,
    /// The PC/SC context and the card connections kept between
    /// operations; one operation at a time holds it.
    session: std::sync::Mutex<Option<Session>>,
    _watcher: watch::Watcher,
}

impl std::fmt::Debug for PcscKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcscKeyStore")
            .field("management_key_source", &self.config.management_key_source)
            .finish_non_exhaustive()
    }
}

impl PcscKeyStore {
    /// Connects to pcscd; unavailable when pcscd is not running.
    pub fn open(config: PcscConfig) -> Result<Self, KeyStoreError> {
        let context = pcsc::Context::establish(pcsc::Scope::User).map_err(service_error)?;
        let readers = list_readers(&context)?;
        tracing::info!(readers = ?readers, "PC/SC readers");
        if config.management_key.is_factory() {
            tracing::warn!(
                "the PIV management key is the factory default; configure backends.pcsc.management_key_file to use the cards' own key"
            );
        }
        Ok(PcscKeyStore {
            config,
            session: std::sync::Mutex::new(Some(Session {
                context,
                cards: Vec::new(),
            })),
            _watcher: watch::Watcher::start(),
        })
    }
}

/// A card command's failure, as the daemon sees it.
fn card_error(card: &CardLabel, error: PivError) -> KeyStoreError {
    match error {
        PivError::Transport { source, command } if is_card_gone(source) => {
            KeyStoreError::new(
                Reason::CardNotPresent,
                format!(
                    "{} was removed from reader '{}' (or stopped answering) during {command}; the operation did not complete",
                    describe_card(&card.card_id, card.serial),
                    card.reader
                ),
            )
            .with_hint("Keep the card in the reader until the operation is done, and try again.")
        }
        PivError::Transport { source, .. } if is_service_gone(source) => service_error(source),
        other => KeyStoreError::internal(format!(
            "{} in reader '{}': {other}",
            describe_card(&card.card_id, card.serial),
            card.reader
        )),
    }
}

/// The card's answer to a PIN, for a user's key: the card counts.
fn pin_outcome(check: SecretCheck) -> Result<(), KeyStoreError> {
    match check {
        SecretCheck::Ok => Ok(()),
        SecretCheck::Wrong { tries_left } => Err(KeyStoreError::pin_incorrect(Some(tries_left))),
        SecretCheck::Blocked => Err(KeyStoreError::pin_locked().with_hint(
            "The card has blocked its PIN after too many wrong PINs; unblock it with the card's PUK.",
        )),
    }
}

/// The card's answer to the PIN given at enrollment, on a card whose PIN
/// is already set: the person must give the card's own PIN.
fn enrollment_pin_outcome(check: SecretCheck) -> Result<(), KeyStoreError> {
    pin_outcome(check).map_err(|e| {
        let hint = if e.is(Reason::PinLocked) {
            "The card has blocked its PIN; unblock it with its PUK (e.g. ykman piv access unblock-pin) before enrolling."
        } else {
            "This card's PIN is already set: give the card's PIN (or unblock the card with its PUK first)."
        };
        e.with_hint(hint)
    })
}

fn check_pin_rules(pin: &Pin) -> Result<(), KeyStoreError> {
    let length = pin.as_bytes().len();
    if !(6..=8).contains(&length) {
        return Err(KeyStoreError::pin_rules(format!(
            "a PIV PIN is 6 to 8 bytes (padded with 0xFF on the card), not {length}"
        )));
    }
    if pin.as_bytes().contains(&0xFF) {
        return Err(KeyStoreError::pin_rules(
            "a PIV PIN cannot contain the byte 0xFF (the card's padding)",
        ));
    }
    Ok(())
}

impl KeyStore for PcscKeyStore {
    fn describe(&self) -> BackendInfo {
        BackendInfo {
            name: BACKEND_NAME.into(),
            description: "PIV smartcards and tokens over PC/SC (keys generated on the card)".into(),
            hardware_backed: true,
            attestation_formats: vec![ATTESTATION_FORMAT.into(), "none".into()],
            pin_rules: PIN_RULES,
            operations: vec![
                Operation::Create,
                Operation::Sign,
                Operation::Delete,
                Operation::ChangePin,
                Operation::PinStatus,
                Operation::UnblockPin,
                Operation::ListCards,
                Operation::Attest,
            ],
        }
    }

    fn create_key(&self, key_id: &str, pin: &Pin) -> Result<CreatedKey, KeyStoreError> {
        self.create_key_with(key_id, pin, &CreateOptions::default())
            .map(|enrolled| enrolled.key)
    }

    fn create_key_with(
        &self,
        key_id: &str,
        pin: &Pin,
        options: &CreateOptions,
    ) -> Result<Enrolled, KeyStoreError> {
        let slot = match &options.slot {
            Some(text) => KeySlot::parse(text)
                .map_err(KeyStoreError::invalid_option)?
                .number(),
            None => self.config.default_slot,
        };
        check_pin_rules(pin)?;
        if pin.as_str() == piv::FACTORY_PIN {
            return Err(KeyStoreError::pin_rules(
                "123456 is every PIV card's factory PIN; choose another",
            ));
        }
        let mut session = self.session();
        let card = Self::card_for_enrollment(&mut session, options.reader.as_deref())?;
        // The management key was used: the card is reset at the end.
        let outcome = transact(card, After::Reset, |piv, label| {
            self.enroll_on(piv, label, key_id, pin, slot)
        });
        match outcome {
            Ok((_, result)) => result,
            Err(Stale::Failed(e)) => Err(e),
            Err(Stale::Card) => Err(KeyStoreError::new(
                Reason::CardNotPresent,
                "the card was removed or reset before the enrollment started",
            )
            .with_hint("Keep the card in the reader and try again.")),
            Err(Stale::Service) => Err(KeyStoreError::unavailable(
                "pcscd went away before the enrollment started; is pcscd running?",
            )),
        }
    }

    fn sign_digest(
        &self,
        key_ref: &[u8],
        pin: &Pin,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, KeyStoreError> {
        let key = KeyRef::decode(key_ref)?;
        self.on_card(&key, After::EndPin, |piv, label| {
            pin_outcome(
                piv.verify_pin(pin.as_str())
                    .map_err(|e| card_error(label, e))?,
            )?;
            piv.sign_p256(key.slot, digest)
                .map_err(|e| card_error(label, e))
        })
    }

    /// YubiKey-style PIV attestation: format [`ATTESTATION_FORMAT`], data
    /// the key's attestation certificate then the card's F9 certificate
    /// (DER, one after the other). Cards that cannot attest give "none".
    fn attest(
        &self,
        key_ref: &[u8],
        _pin: &Pin,
        _nonce: &[u8; 32],
    ) -> Result<Attestation, KeyStoreError> {
        let key = KeyRef::decode(key_ref)?;
        self.on_card(&key, After::Nothing, |piv, label| {
            let Some(attested) = piv.attest(key.slot).map_err(|e| card_error(label, e))? else {
                return Ok(Attestation::none());
            };
            let Some(intermediate) = piv
                .attestation_certificate()
                .map_err(|e| card_error(label, e))?
            else {
                return Ok(Attestation::none());
            };
            let mut data = attested;
            data.extend_from_slice(&intermediate);
            Ok(Attestation {
                format: ATTESTATION_FORMAT.into(),
                data,
            })
        })
    }

    fn delete_key(&self, key_ref: &[u8]) -> Result<(), KeyStoreError> {
        let key = KeyRef::decode(key_ref)?;
        let object = piv::cert_object(key.slot).ok_or_else(|| {
            KeyStoreError::internal(format!("{:02x} is not a key slot", key.slot))
        })?;
        // The management key was used: the card is reset at the end.
        self.on_card(&key, After::Reset, |piv, label| {
            self.authenticate(piv, label)?;
            piv.put_data(object, &[]).map_err(|e| card_error(label, e))
        })
    }

    fn change_pin(
        &self,
        key_ref: &[u8],
        old_pin: &Pin,
        new_pin: &Pin,
    ) -> Result<Vec<u8>, KeyStoreError> {
        check_pin_rules(new_pin)?;
        let key = KeyRef::decode(key_ref)?;
        self.on_card(&key, After::EndPin, |piv, label| {
            let check = piv
                .change_secret(false, old_pin.as_str(), new_pin.as_str())
                .map_err(|e| card_error(label, e))?;
            pin_outcome(check)
        })?;
        Ok(key_ref.to_vec())
    }

    fn pin_status(&self, key_ref: &[u8]) -> Result<PinStatus, KeyStoreError> {
        let key = KeyRef::decode(key_ref)?;
        self.on_card(&key, After::Nothing, |piv, label| {
            if let Some(meta) = piv
                .secret_metadata(false)
                .map_err(|e| card_error(label, e))?
            {
                return Ok(PinStatus {
                    tries_left: Some(u32::from(meta.tries_left)),
                    locked: meta.tries_left == 0,
                });
            }
            Ok(match piv.pin_state().map_err(|e| card_error(label, e))? {
                SecretCheck::Ok => PinStatus {
                    tries_left: None,
                    locked: false,
                },
                SecretCheck::Wrong { tries_left } => PinStatus {
                    tries_left: Some(tries_left),
                    locked: false,
                },
                SecretCheck::Blocked => PinStatus {
                    tries_left: Some(0),
                    locked: true,
                },
            })
        })
    }

    fn unblock_pin(&self, key_ref: &[u8], puk: &Pin, new_pin: &Pin) -> Result<(), KeyStoreError> {
        check_pin_rules(new_pin)?;
        let key = KeyRef::decode(key_ref)?;
        let check = self.on_card(&key, After::EndPin, |piv, label| {
            piv.unblock_pin(puk.as_str(), new_pin.as_str())
                .map_err(|e| card_error(label, e))
        })?;
        match check {
            SecretCheck::Ok => Ok(()),
            SecretCheck::Wrong { tries_left } if tries_left > 0 => Err(KeyStoreError::new(
                Reason::PukWrong,
                format!(
                    "wrong PUK for the card; {tries_left} {} left",
                    if tries_left == 1 { "try" } else { "tries" }
                ),
            )
            .with_tries_left(Some(tries_left))),
            SecretCheck::Wrong { .. } | SecretCheck::Blocked => Err(KeyStoreError::new(
                Reason::PukWrong,
                "the card's PUK is blocked; the card must be reset and the user enrolled again",
            )
            .with_tries_left(Some(0))
            .with_hint("Reset the card (e.g. ykman piv reset), then remove the user and enroll them again.")),
        }
    }

    /// Every reader and its card, scanned afresh; the PIV cards found
    /// are kept for later operations.
    fn cards(&self) -> Result<Vec<CardInfo>, KeyStoreError> {
        let mut guard = self.session();
        let (session, readers) = Self::fresh_scan(&mut guard)?;
        let mut cards = Vec::new();
        for reader in readers {
            let mut info = CardInfo {
                reader: reader.clone(),
                ..CardInfo::default()
            };
            match Self::scan(&session.context, &reader)? {
                Slot::Empty => {}
                Slot::NotPiv { problem } => {
                    info.card_present = true;
                    info.problem = problem;
                }
                Slot::Piv(card) => {
                    info.card_present = true;
                    info.application_found = true;
                    info.card_id = card.card_id.clone();
                    info.serial = card.serial.map(|s| s.to_string()).unwrap_or_default();
                    session.cards.push(*card);
                }
            }
            cards.push(info);
        }
        Ok(cards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_refs_round_trip_and_reject_garbage() {
        let key = KeyRef {
            card_id: "00112233445566778899aabbccddeeff".into(),
            serial: Some(12345678),
            slot: 0x9a,
        };
        let encoded = key.encode();
        assert_eq!(
            String::from_utf8(encoded.clone()).unwrap(),
            "piv1 card=00112233445566778899aabbccddeeff serial=12345678 slot=9a"
        );
        assert_eq!(KeyRef::decode(&encoded).unwrap(), key);
        let no_serial = KeyRef {
            serial: None,
            slot: 0x95,
            ..key
        };
        assert_eq!(KeyRef::decode(&no_serial.encode()).unwrap(), no_serial);
        for bad in [
            &b"u-1234"[..],
            b"piv1 card=x serial=1 slot=9b",
            b"piv1 card= serial=1 slot=9a",
            b"piv1 card=x serial=abc slot=9a",
            b"piv1 card=x serial=1 slot=9a extra",
            b"piv1 serial=1 card=x slot=9a",
            &[0xff, 0xfe],
        ] {
            assert!(
                matches!(KeyRef::decode(bad), Err(ref e) if e.message.contains("not a PIV key reference")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn slots() {
        for (text, slot) in [("9a", 0x9a), ("9C", 0x9c), ("82", 0x82), ("95", 0x95)] {
            assert_eq!(parse_slot(text), Some(slot));
        }
        for text in ["9b", "96", "81", "f9", "", "zz"] {
            assert_eq!(parse_slot(text), None, "{text}");
        }
    }

    #[test]
    fn pin_rules_are_piv_rules() {
        assert!(check_pin_rules(&Pin::new("12345")).is_err());
        assert!(check_pin_rules(&Pin::new("123456789")).is_err());
        assert!(check_pin_rules(&Pin::new("654321")).is_ok());
        assert!(check_pin_rules(&Pin::new("abcdefgh")).is_ok());
    }
}
