//! Login challenges (docs/approvals.md): `login start` makes one for a
//! user, every device where the user has an active enrollment receives it
//! on its stream, and the device answers with a signature over
//! `fleetkey_proto::binding::challenge_answer_message`.
//!
//! Table `login_challenges` (schema version 4): id (PK), user, nonce (32
//! random bytes), context, portal_name, number (10..=99, the number the
//! login screen shows), created_at, expires_at, state (`pending`,
//! `approved`, `denied`), answered_at, answered_by_device, number_given,
//! signer (`user`/`device`), suspicious (1 when a wrong number was given),
//! credential_id (the key that signed an approval). A challenge is
//! expired when it is pending and `expires_at` has passed.
//!
//! The answer check ([`check_answer`]) runs inside one `BEGIN IMMEDIATE`
//! transaction, so a challenge is answered at most once even when answers
//! race: a second answer (a replay) finds it answered.

use std::collections::HashMap;
use std::sync::Mutex;

use fleetkey_proto::binding::{self, Decision};
use fleetkey_proto::portal::{AnswerChallengeRequest, LoginChallenge, Signer};
use fleetkey_proto::time::rfc3339;
use fleetkey_proto::{Failure, Reason, terminal};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use rusqlite::{OptionalExtension, Row, Transaction, params};
use serde::Serialize;

use crate::store::{Db, StoreError, random_id};

/// The longest context text, in bytes (what a device must hold and show).
pub const MAX_CONTEXT_BYTES: usize = 1024;
/// The longest a challenge may live, in seconds.
pub const MAX_TTL_SECS: i64 = 3600;
/// The default lifetime of a challenge, in seconds.
pub const DEFAULT_TTL_SECS: i64 = 120;
/// Pending challenges one user may have at once.
pub const MAX_PENDING_PER_USER: i64 = 32;
/// How long a stream nonce may be used, in seconds.
pub const STREAM_NONCE_TTL_SECS: i64 = 60;
/// Stream nonces kept at once (oldest dropped first).
pub const MAX_STREAM_NONCES: usize = 4096;
/// The name the portal gives itself in challenges.
pub const PORTAL_NAME: &str = "fleetkey reference portal";

const CREATE_V4_TABLES: &str = "
CREATE TABLE login_challenges (
    id                 TEXT PRIMARY KEY NOT NULL,
    user               TEXT NOT NULL,
    nonce              BLOB NOT NULL CHECK (length(nonce) = 32),
    context            TEXT NOT NULL,
    portal_name        TEXT NOT NULL,
    number             INTEGER NOT NULL CHECK (number BETWEEN 10 AND 99),
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied')),
    answered_at        INTEGER,
    answered_by_device TEXT,
    number_given       INTEGER,
    signer             TEXT,
    suspicious         INTEGER NOT NULL DEFAULT 0,
    credential_id      TEXT
);
CREATE INDEX login_challenges_pending ON login_challenges (user) WHERE state = 'pending';
";

/// Version 3 to 4: the login challenges table.
pub fn migrate_v3_to_v4(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(CREATE_V4_TABLES)?;
    Ok(())
}

/// A login challenge as the portal keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub id: String,
    pub user: String,
    pub nonce: Vec<u8>,
    pub context: String,
    pub portal_name: String,
    pub number: u32,
    pub created_at: i64,
    pub expires_at: i64,
    pub state: String,
    pub answered_at: Option<i64>,
    pub answered_by_device: Option<String>,
    pub number_given: Option<u32>,
    pub signer: Option<String>,
    pub suspicious: bool,
    pub credential_id: Option<String>,
}

const COLUMNS: &str = "SELECT id, user, nonce, context, portal_name, number, created_at, expires_at, state, answered_at, answered_by_device, number_given, signer, suspicious, credential_id FROM login_challenges";

impl Challenge {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            user: row.get(1)?,
            nonce: row.get(2)?,
            context: row.get(3)?,
            portal_name: row.get(4)?,
            number: row.get(5)?,
            created_at: row.get(6)?,
            expires_at: row.get(7)?,
            state: row.get(8)?,
            answered_at: row.get(9)?,
            answered_by_device: row.get(10)?,
            number_given: row.get(11)?,
            signer: row.get(12)?,
            suspicious: row.get(13)?,
            credential_id: row.get(14)?,
        })
    }

    /// `pending`, `approved`, `denied` or `expired` at `now`.
    pub fn outcome(&self, now: i64) -> &str {
        if self.state == "pending" && now >= self.expires_at {
            "expired"
        } else {
            &self.state
        }
    }

    /// What is pushed to devices.
    pub fn to_proto(&self) -> LoginChallenge {
        LoginChallenge {
            id: self.id.clone(),
            user: self.user.clone(),
            nonce: self.nonce.clone(),
            context: self.context.clone(),
            portal_name: self.portal_name.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

/// A new challenge id: `chl-` and 20 base32 characters (100 bits).
pub fn new_challenge_id() -> Result<String, StoreError> {
    random_id("chl-", 20)
}

/// A two-digit number, 10 to 99, uniformly.
fn random_number() -> Result<u32, StoreError> {
    loop {
        let mut byte = [0u8; 1];
        getrandom::fill(&mut byte).map_err(StoreError::Random)?;
        // 180 = 2 * 90: the values below it map evenly onto 90 numbers.
        if byte[0] < 180 {
            return Ok(10 + u32::from(byte[0]) % 90);
        }
    }
}

/// Why `login start` refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
}

/// Makes a challenge for `user` (already normalized), valid for `ttl`
/// seconds from `now`.
pub fn start(
    db: &Db<'_>,
    user: &str,
    context: &str,
    ttl: i64,
    now: i64,
) -> Result<Challenge, StartError> {
    if context.len() > MAX_CONTEXT_BYTES {
        return Err(StartError::Refused(format!(
            "--context is {} bytes; at most {MAX_CONTEXT_BYTES} are allowed",
            context.len()
        )));
    }
    if !(1..=MAX_TTL_SECS).contains(&ttl) {
        return Err(StartError::Refused(format!(
            "--ttl must be 1 to {MAX_TTL_SECS} seconds"
        )));
    }
    let conn = db.conn();
    let devices: i64 = conn
        .query_row(
            "SELECT count(*) FROM enrollments WHERE user = ?1 AND revoked_at IS NULL",
            [user],
            |r| r.get(0),
        )
        .map_err(StoreError::from)?;
    if devices == 0 {
        return Err(StartError::Refused(format!(
            "user {} has no active credential on any device",
            terminal::escape(user)
        )));
    }
    let pending: i64 = conn
        .query_row(
            "SELECT count(*) FROM login_challenges WHERE user = ?1 AND state = 'pending' AND expires_at > ?2",
            params![user, now],
            |r| r.get(0),
        )
        .map_err(StoreError::from)?;
    if pending >= MAX_PENDING_PER_USER {
        return Err(StartError::Refused(format!(
            "user {} already has {pending} pending login challenges (the most allowed)",
            terminal::escape(user)
        )));
    }
    let mut nonce = vec![0u8; 32];
    getrandom::fill(&mut nonce).map_err(StoreError::Random)?;
    let challenge = Challenge {
        id: new_challenge_id()?,
        user: user.to_string(),
        nonce,
        context: context.to_string(),
        portal_name: db
            .public_url()?
            .map(|url| format!("{PORTAL_NAME} ({url})"))
            .unwrap_or_else(|| PORTAL_NAME.to_string()),
        number: random_number()?,
        created_at: now,
        expires_at: now.saturating_add(ttl),
        state: "pending".into(),
        answered_at: None,
        answered_by_device: None,
        number_given: None,
        signer: None,
        suspicious: false,
        credential_id: None,
    };
    conn.execute(
        "INSERT INTO login_challenges (id, user, nonce, context, portal_name, number, created_at, expires_at, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending')",
        params![
            challenge.id,
            challenge.user,
            challenge.nonce,
            challenge.context,
            challenge.portal_name,
            challenge.number,
            challenge.created_at,
            challenge.expires_at
        ],
    )
    .map_err(StoreError::from)?;
    Ok(challenge)
}

/// The challenge with this id.
pub fn get(db: &Db<'_>, id: &str) -> Result<Option<Challenge>, StoreError> {
    Ok(db
        .conn()
        .query_row(
            &format!("{COLUMNS} WHERE id = ?1"),
            [id],
            Challenge::from_row,
        )
        .optional()?)
}

/// Pending, unexpired challenges for the users enrolled on `device_id`.
pub fn pending_for_device(
    db: &Db<'_>,
    device_id: &str,
    now: i64,
) -> Result<Vec<Challenge>, StoreError> {
    // Runs on every stream poll of every device: the pending challenges
    // (few, by their partial index), each checked against the user's own
    // enrollments (by the user index). An `IN (SELECT user ...)` would
    // scan every enrollment of the portal on each poll.
    let mut stmt = db.conn().prepare_cached(&format!(
        "{COLUMNS} WHERE state = 'pending' AND expires_at > ?2 AND EXISTS \
         (SELECT 1 FROM enrollments e WHERE e.user = login_challenges.user \
          AND e.device_id = ?1 AND e.revoked_at IS NULL) \
         ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map(params![device_id, now], Challenge::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What an accepted answer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    Approved,
    Denied,
}

/// Checks an answer and records it, in the caller's IMMEDIATE
/// transaction. `Ok(Err(..))` is a refusal whose change (a wrong number
/// recorded as a suspicious denial) must be committed.
pub fn check_answer(
    db: &Db<'_>,
    request: &AnswerChallengeRequest,
    now: i64,
) -> Result<Result<Answered, Failure>, Failure> {
    // A migration whose deadline has come revokes its old credentials
    // first, so that no answer signed by one is taken after the deadline,
    // even between two of `serve`'s sweeps.
    crate::migrate::sweep_due(db, now)?;
    let device = db.device(&request.device_id)?.ok_or_else(|| {
        Failure::new(
            Reason::DeviceUnknown,
            format!(
                "device {} is not registered with this portal",
                terminal::escape(&request.device_id)
            ),
        )
    })?;
    let challenge = get(db, &request.challenge_id)?.ok_or_else(|| {
        Failure::new(
            Reason::ChallengeUnknown,
            format!(
                "no login challenge {} on this portal",
                terminal::escape(&request.challenge_id)
            ),
        )
    })?;
    if challenge.state != "pending" {
        return Err(Failure::new(
            Reason::ChallengeAnswered,
            format!(
                "login challenge {} was already answered ({}) at {}",
                challenge.id,
                challenge.state,
                rfc3339(challenge.answered_at.unwrap_or_default())
            ),
        ));
    }
    if now >= challenge.expires_at {
        return Err(Failure::new(
            Reason::ChallengeExpired,
            format!(
                "login challenge {} expired at {}",
                challenge.id,
                rfc3339(challenge.expires_at)
            ),
        ));
    }
    let enrollment = db
        .active_enrollment(&device.device_id, &challenge.user)?
        .ok_or_else(|| {
            Failure::new(
                Reason::UserUnknown,
                format!(
                    "user {} has no active credential on device {}",
                    terminal::escape(&challenge.user),
                    device.device_id
                ),
            )
        })?;
    let decision = match request.decision() {
        fleetkey_proto::portal::Decision::Approve => Decision::Approve,
        fleetkey_proto::portal::Decision::Deny => Decision::Deny,
        fleetkey_proto::portal::Decision::Unspecified => {
            return Err(Failure::new(
                Reason::InvalidArgument,
                "the answer names no decision",
            ));
        }
    };
    let (key_der, signer) = match (request.signer(), decision) {
        (Signer::User, _) => (&enrollment.public_key, "user"),
        (Signer::Device, Decision::Deny) => (&device.public_key, "device"),
        (Signer::Device, Decision::Approve) => {
            return Err(Failure::new(
                Reason::SignatureInvalid,
                "an approval must be signed by the user's key, not the device key",
            ));
        }
        (Signer::Unspecified, _) => {
            return Err(Failure::new(
                Reason::InvalidArgument,
                "the answer names no signer",
            ));
        }
    };
    let number = match decision {
        Decision::Approve => request.number,
        Decision::Deny => 0,
    };
    let message = binding::challenge_answer_message(
        &challenge.id,
        &challenge.nonce,
        &challenge.context,
        number,
        decision,
        &device.device_id,
    );
    let key = VerifyingKey::from_public_key_der(key_der)
        .map_err(|_| Failure::new(Reason::Internal, "a stored public key is unreadable"))?;
    let signature = Signature::from_der(&request.signature).map_err(|_| {
        Failure::new(
            Reason::SignatureInvalid,
            "the answer's signature is not a DER-encoded ECDSA P-256 signature",
        )
    })?;
    key.verify_prehash(&binding::digest(&message), &signature)
        .map_err(|_| {
            Failure::new(
                Reason::SignatureInvalid,
                format!(
                    "the answer to login challenge {} does not verify with the {signer} key",
                    challenge.id
                ),
            )
        })?;
    let wrong_number = decision == Decision::Approve && number != challenge.number;
    let state = if decision == Decision::Approve && !wrong_number {
        "approved"
    } else {
        "denied"
    };
    db.conn()
        .execute(
            "UPDATE login_challenges SET state = ?2, answered_at = ?3, answered_by_device = ?4, \
             number_given = ?5, signer = ?6, suspicious = ?7, credential_id = ?8 \
             WHERE id = ?1 AND state = 'pending'",
            params![
                challenge.id,
                state,
                now,
                device.device_id,
                number,
                signer,
                wrong_number,
                enrollment.credential_id
            ],
        )
        .map_err(StoreError::from)?;
    if wrong_number {
        tracing::warn!(
            challenge = %challenge.id,
            user = %terminal::escape(&challenge.user),
            device_id = %device.device_id,
            "SUSPICIOUS: a wrong number was given; the login is denied"
        );
        return Ok(Err(Failure::new(
            Reason::NumberWrong,
            format!(
                "the number given for login challenge {} is not the one the login screen showed; the login is denied",
                challenge.id
            ),
        )
        .with_hint(
            "If you did not start this login yourself, someone else is trying to log in as you.",
        )));
    }
    Ok(Ok(if state == "approved" {
        Answered::Approved
    } else {
        Answered::Denied
    }))
}

/// Fresh nonces handed out for opening device streams: each usable once,
/// for [`STREAM_NONCE_TTL_SECS`], by the device it was made for.
#[derive(Debug, Default)]
pub struct NonceBook {
    nonces: Mutex<HashMap<Vec<u8>, (String, i64)>>,
}

impl NonceBook {
    /// A new nonce for `device_id`.
    pub fn issue(&self, device_id: &str, now: i64) -> Result<Vec<u8>, Failure> {
        let mut nonce = vec![0u8; 32];
        getrandom::fill(&mut nonce)
            .map_err(|e| Failure::new(Reason::Internal, format!("random generator: {e}")))?;
        let mut nonces = self
            .nonces
            .lock()
            .map_err(|_| Failure::new(Reason::Internal, "the nonce book lock is poisoned"))?;
        nonces.retain(|_, (_, expires)| *expires > now);
        if nonces.len() >= MAX_STREAM_NONCES {
            return Err(Failure::new(
                Reason::RateLimited,
                "too many stream nonces are outstanding; try again shortly",
            )
            .with_meta("retry_after_seconds", 5));
        }
        nonces.insert(
            nonce.clone(),
            (device_id.to_string(), now + STREAM_NONCE_TTL_SECS),
        );
        Ok(nonce)
    }

    /// Uses up `nonce`; true when it was issued for `device_id` and is
    /// still fresh.
    pub fn take(&self, device_id: &str, nonce: &[u8], now: i64) -> bool {
        let Ok(mut nonces) = self.nonces.lock() else {
            return false;
        };
        match nonces.remove(nonce) {
            Some((device, expires)) => device == device_id && expires > now,
            None => false,
        }
    }
}

/// `login start --json` output.
#[derive(Debug, Serialize)]
pub struct Started {
    pub id: String,
    pub user: String,
    pub number: u32,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

/// `login wait --json` output.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub id: String,
    pub user: String,
    /// `approved`, `denied` or `expired`.
    pub outcome: String,
    /// A wrong number was given: someone else may be trying to log in.
    pub suspicious: bool,
    /// The device that answered.
    pub device_id: Option<String>,
    /// `user` (the user's key) or `device` (the device key).
    pub signed_by: Option<String>,
    pub credential_id: Option<String>,
    /// The portal verified the answer's signature before recording it.
    pub signature_verified: bool,
}

impl Outcome {
    pub fn of(challenge: &Challenge, now: i64) -> Self {
        let answered = challenge.answered_at.is_some();
        Self {
            id: challenge.id.clone(),
            user: challenge.user.clone(),
            outcome: challenge.outcome(now).to_string(),
            suspicious: challenge.suspicious,
            device_id: challenge.answered_by_device.clone(),
            signed_by: challenge.signer.clone(),
            credential_id: challenge.credential_id.clone(),
            signature_verified: answered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_two_digits() {
        for _ in 0..500 {
            let n = random_number().unwrap();
            assert!((10..=99).contains(&n));
        }
    }

    #[test]
    fn nonces_are_single_use_and_bound_to_the_device() {
        let book = NonceBook::default();
        let nonce = book.issue("dev-a", 100).unwrap();
        assert!(!book.take("dev-b", &nonce, 100));
        // Taken (and lost) by the wrong device.
        assert!(!book.take("dev-a", &nonce, 100));
        let nonce = book.issue("dev-a", 100).unwrap();
        assert!(book.take("dev-a", &nonce, 101));
        assert!(!book.take("dev-a", &nonce, 101));
        let nonce = book.issue("dev-a", 100).unwrap();
        assert!(!book.take("dev-a", &nonce, 100 + STREAM_NONCE_TTL_SECS));
    }

    /// Every device's stream polls for its pending challenges ten times a
    /// second: the query must not read every enrollment of the portal (it
    /// did, and enrolling slowed as the portal grew).
    #[test]
    fn the_stream_poll_uses_indexes_not_a_scan_of_the_enrollments() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("portal.db")).unwrap();
        let db = store.db();
        let mut stmt = db
            .conn()
            .prepare(
                "EXPLAIN QUERY PLAN SELECT id FROM login_challenges WHERE state = 'pending' \
                 AND expires_at > 0 AND EXISTS (SELECT 1 FROM enrollments e \
                 WHERE e.user = login_challenges.user AND e.device_id = 'd' \
                 AND e.revoked_at IS NULL) ORDER BY created_at, id",
            )
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map([], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // One indexed look-up per pending challenge (device and user), not
        // a list of every user enrolled on the device, nor a scan.
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH e EXISTS USING INDEX")),
            "{plan:?}"
        );
        assert!(
            !plan
                .iter()
                .any(|step| step.starts_with("SCAN e") || step.contains("LIST SUBQUERY")),
            "{plan:?}"
        );
        // The statement the stream runs is this one.
        pending_for_device(&db, "d", 0).unwrap();
    }
}
