//! Moving a device's users to another device (`device migrate`) and
//! replacing one credential (`user reset-code`).
//!
//! Both rest on one mechanism: an add-user code may name the credential
//! it *replaces* (`codes.replaces_credential`). The `EnrollUser` that
//! redeems such a code revokes that credential in the same transaction
//! that records the new one ([`retire_replaced`], called by the service),
//! so the portal never holds both, nor neither.
//!
//! A migration (`migrations`, `migration_users`, schema version 6) is one
//! replacing code per active credential of the old device, all issued in
//! one transaction and printed as the batch file `fleetkeyctl user
//! add-batch` reads. Until its deadline the old credentials keep working;
//! each one is revoked as its replacement enrolls (outcome `replaced`).
//! At the deadline, those not replaced are revoked ([`sweep_due`], outcome
//! `revoked`): `serve` sweeps at start and every second, and the answer to
//! a login challenge sweeps first, so no answer signed by an old key is
//! accepted after the deadline even between two sweeps. The codes expire
//! at the deadline (or earlier, with `--ttl`).
//!
//! One migration per device is open at a time: a second `device migrate`
//! of the same device is refused while one is open, unless `--reissue`,
//! which voids the open one (its unused codes expire at once, its users
//! not yet replaced are marked `voided`) and issues new codes for every
//! credential still active on the old device.

use fleetkey_proto::ActivationCode;
use fleetkey_proto::terminal::escape;
use fleetkey_proto::time::rfc3339;
use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

use crate::code_key::CodeHash;
use crate::error::PortalError;
use crate::store::{CodeKind, CodeRecord, Db, Enrollment, StoreError, random_id};

/// How long a migration stays open when no `--deadline` is given.
pub const DEFAULT_DEADLINE: &str = "7d";
/// The furthest deadline accepted (one year), in seconds from now.
pub const MAX_DEADLINE_SECS: i64 = 365 * 24 * 3600;
/// How often `serve` revokes what reached its deadline.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Version 5 to 6: replacing codes and migrations.
const MIGRATE_V5_TO_V6: &str = "
ALTER TABLE codes ADD COLUMN replaces_credential TEXT;
CREATE TABLE migrations (
    migration_id  TEXT PRIMARY KEY NOT NULL,
    old_device_id TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    deadline      INTEGER NOT NULL,
    voided_at     INTEGER,
    swept_at      INTEGER
);
CREATE INDEX migrations_by_device ON migrations (old_device_id, created_at);
CREATE INDEX migrations_due ON migrations (deadline)
    WHERE voided_at IS NULL AND swept_at IS NULL;
CREATE TABLE migration_users (
    migration_id      TEXT NOT NULL REFERENCES migrations (migration_id),
    user              TEXT NOT NULL,
    old_credential_id TEXT NOT NULL,
    code_hash         BLOB NOT NULL REFERENCES codes (code_hash),
    outcome           TEXT CHECK (outcome IN ('replaced', 'revoked', 'voided')),
    new_credential_id TEXT,
    outcome_at        INTEGER,
    PRIMARY KEY (migration_id, user)
);
CREATE INDEX migration_users_by_code ON migration_users (code_hash);
";

/// Version 5 to 6, in the caller's migration transaction.
pub fn migrate_v5_to_v6(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(MIGRATE_V5_TO_V6)?;
    Ok(())
}

/// A deadline as given on the command line: an RFC 3339 time
/// (`2026-12-01T12:00:00Z`, `...+02:00`) or a duration from `now`
/// (`90s`, `30m`, `12h`, `7d`, `1d12h`, or plain seconds). It must be in
/// the future and at most a year away.
pub fn parse_deadline(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    let at = if text.contains('T') || text.contains('t') {
        parse_rfc3339(text).ok_or_else(|| {
            format!("{text:?} is not an RFC 3339 time such as 2026-12-01T12:00:00Z")
        })?
    } else {
        let secs = parse_duration(text).ok_or_else(|| {
            format!(
                "{text:?} is neither an RFC 3339 time nor a duration such as 90s, 30m, 12h, 7d or 1d12h"
            )
        })?;
        now.saturating_add(secs)
    };
    if at <= now {
        return Err(format!("the deadline {} has already passed", rfc3339(at)));
    }
    if at - now > MAX_DEADLINE_SECS {
        return Err(format!(
            "the deadline {} is more than a year away",
            rfc3339(at)
        ));
    }
    Ok(at)
}

/// `1d12h30m`, `90s`, `600` -> seconds.
fn parse_duration(text: &str) -> Option<i64> {
    if text.is_empty() {
        return None;
    }
    if let Ok(secs) = text.parse::<i64>() {
        return (secs > 0).then_some(secs);
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let n: i64 = number.parse().ok()?;
        number.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    (number.is_empty() && total > 0).then_some(total)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` -> Unix seconds.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let (h, m) = (num_of(&rest[1..3])?, num_of(&rest[4..6])?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset)
}

fn num_of(text: &str) -> Option<i64> {
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse().ok())?
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's civil-to-days (proleptic Gregorian), the inverse of
/// `fleetkey_proto::time`'s.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The credential a replacing code names is revoked, if it is still
/// active: in the caller's `EnrollUser` transaction, before the new one is
/// recorded. Returns whether it was active.
pub fn retire_replaced(db: &Db<'_>, credential_id: &str, now: i64) -> Result<bool, StoreError> {
    let updated = db.conn().execute(
        "UPDATE enrollments SET revoked_at = ?2 WHERE credential_id = ?1 AND revoked_at IS NULL",
        params![credential_id, now],
    )?;
    Ok(updated == 1)
}

/// Records, in the same transaction, that the code's migration user was
/// replaced by `new_credential_id`.
pub fn record_replaced(
    db: &Db<'_>,
    code_hash: &CodeHash,
    new_credential_id: &str,
    now: i64,
) -> Result<(), StoreError> {
    db.conn().execute(
        "UPDATE migration_users SET outcome = 'replaced', new_credential_id = ?2, outcome_at = ?3
         WHERE code_hash = ?1 AND outcome IS NULL",
        params![code_hash, new_credential_id, now],
    )?;
    Ok(())
}

/// An old credential the deadline revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweptCredential {
    pub migration_id: String,
    pub user: String,
    pub credential_id: String,
}

/// Revokes the old credentials of every migration whose deadline has come
/// (at `now` or before) that were not replaced, and closes those
/// migrations. Idempotent; runs in the caller's transaction.
pub fn sweep_due(db: &Db<'_>, now: i64) -> Result<Vec<SweptCredential>, StoreError> {
    let conn = db.conn();
    let due: Vec<String> = conn
        .prepare_cached(
            "SELECT migration_id FROM migrations
             WHERE voided_at IS NULL AND swept_at IS NULL AND deadline <= ?1",
        )?
        .query_map([now], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut swept = Vec::new();
    for migration_id in due {
        let waiting: Vec<(String, String)> = conn
            .prepare(
                "SELECT user, old_credential_id FROM migration_users
                 WHERE migration_id = ?1 AND outcome IS NULL ORDER BY user",
            )?
            .query_map([&migration_id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (user, credential_id) in waiting {
            if retire_replaced(db, &credential_id, now)? {
                conn.execute(
                    "UPDATE migration_users SET outcome = 'revoked', outcome_at = ?3
                     WHERE migration_id = ?1 AND user = ?2",
                    params![migration_id, user, now],
                )?;
                swept.push(SweptCredential {
                    migration_id: migration_id.clone(),
                    user,
                    credential_id,
                });
            }
        }
        conn.execute(
            "UPDATE migrations SET swept_at = ?2 WHERE migration_id = ?1",
            params![migration_id, now],
        )?;
    }
    Ok(swept)
}

/// A migration as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub migration_id: String,
    pub old_device_id: String,
    pub created_at: i64,
    pub deadline: i64,
    pub voided_at: Option<i64>,
    pub swept_at: Option<i64>,
}

impl Migration {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            migration_id: row.get("migration_id")?,
            old_device_id: row.get("old_device_id")?,
            created_at: row.get("created_at")?,
            deadline: row.get("deadline")?,
            voided_at: row.get("voided_at")?,
            swept_at: row.get("swept_at")?,
        })
    }

    /// `open` (before its deadline), `closed` (deadline passed) or
    /// `voided` (replaced by a `--reissue`).
    pub fn state(&self, now: i64) -> &'static str {
        if self.voided_at.is_some() {
            "voided"
        } else if self.swept_at.is_some() || now >= self.deadline {
            "closed"
        } else {
            "open"
        }
    }
}

/// The newest migration of a device.
pub fn latest(db: &Db<'_>, old_device_id: &str) -> Result<Option<Migration>, StoreError> {
    Ok(db
        .conn()
        .query_row(
            "SELECT * FROM migrations WHERE old_device_id = ?1
             ORDER BY created_at DESC, rowid DESC LIMIT 1",
            [old_device_id],
            Migration::from_row,
        )
        .optional()?)
}

/// What `device migrate` issued: one code per user, in user order.
#[derive(Debug)]
pub struct Started {
    pub migration: Migration,
    pub codes: Vec<(ActivationCode, CodeRecord)>,
    /// The migration `--reissue` voided, and how many of its codes.
    pub voided: Option<(String, usize)>,
}

/// Starts a migration of `old_device_id`: a replacing add-user code for
/// each of its active credentials, expiring at `expires_at` (at or before
/// `deadline`). Runs in the caller's IMMEDIATE transaction.
pub fn start(
    db: &Db<'_>,
    old_device_id: &str,
    deadline: i64,
    expires_at: i64,
    reissue: bool,
    now: i64,
) -> Result<Started, PortalError> {
    if db.device(old_device_id)?.is_none() {
        return Err(PortalError::NotFound(format!(
            "no device {} is registered",
            escape(old_device_id)
        )));
    }
    sweep_due(db, now)?;
    let mut voided = None;
    if let Some(open) = latest(db, old_device_id)?.filter(|m| m.state(now) == "open") {
        if !reissue {
            let pending: i64 = db.conn().query_row(
                "SELECT count(*) FROM migration_users WHERE migration_id = ?1 AND outcome IS NULL",
                [&open.migration_id],
                |row| row.get(0),
            ).map_err(StoreError::from)?;
            return Err(PortalError::Usage(format!(
                "device {old_device_id} has a migration open until {} ({}, {pending} users not moved yet); \
                 see `fleetkey-portal device migrate --status {old_device_id}`, or pass --reissue to void its \
                 unused codes and issue new ones",
                rfc3339(open.deadline),
                open.migration_id
            )));
        }
        voided = Some((
            open.migration_id.clone(),
            void(db, &open.migration_id, now)?,
        ));
    }
    let active: Vec<Enrollment> = db
        .active_enrollments(None)?
        .into_iter()
        .filter(|e| e.device_id == old_device_id)
        .collect();
    if active.is_empty() {
        return Err(PortalError::NotFound(format!(
            "device {old_device_id} has no active users: there is nothing to migrate"
        )));
    }
    let migration = Migration {
        migration_id: random_id("mig-", 20)?,
        old_device_id: old_device_id.to_string(),
        created_at: now,
        deadline,
        voided_at: None,
        swept_at: None,
    };
    db.conn()
        .execute(
            "INSERT INTO migrations (migration_id, old_device_id, created_at, deadline)
         VALUES (?1, ?2, ?3, ?4)",
            params![
                migration.migration_id,
                migration.old_device_id,
                now,
                deadline
            ],
        )
        .map_err(StoreError::from)?;
    let mut codes = Vec::with_capacity(active.len());
    for enrollment in &active {
        let (code, record) = issue_replacing(
            db,
            &enrollment.user,
            &enrollment.credential_id,
            expires_at - now,
            now,
        )?;
        db.conn()
            .execute(
                "INSERT INTO migration_users (migration_id, user, old_credential_id, code_hash)
             VALUES (?1, ?2, ?3, ?4)",
                params![
                    migration.migration_id,
                    enrollment.user,
                    enrollment.credential_id,
                    record.code_hash
                ],
            )
            .map_err(StoreError::from)?;
        codes.push((code, record));
    }
    Ok(Started {
        migration,
        codes,
        voided,
    })
}

/// Issues an add-user code for `user` that replaces `credential_id`.
pub fn issue_replacing(
    db: &Db<'_>,
    user: &str,
    credential_id: &str,
    ttl: i64,
    now: i64,
) -> Result<(ActivationCode, CodeRecord), StoreError> {
    // 75 random bits make a collision all but impossible; retrying on
    // one costs nothing.
    const TRIES: u32 = 8;
    for _ in 0..TRIES {
        let code = ActivationCode::generate().map_err(StoreError::Random)?;
        let record = CodeRecord {
            replaces_credential: Some(credential_id.to_string()),
            ..CodeRecord::new(db.code_hash(&code), CodeKind::User, Some(user), now, ttl)
        };
        if db.insert_code(&record)? {
            return Ok((code, record));
        }
    }
    Err(StoreError::NoFreeCode(TRIES))
}

/// Voids an open migration: its unused codes expire now, its users not
/// replaced yet are marked `voided`. Returns how many were voided.
fn void(db: &Db<'_>, migration_id: &str, now: i64) -> Result<usize, StoreError> {
    let conn = db.conn();
    conn.execute(
        "UPDATE codes SET expires_at = min(expires_at, ?2)
         WHERE used_at IS NULL AND code_hash IN
             (SELECT code_hash FROM migration_users WHERE migration_id = ?1 AND outcome IS NULL)",
        params![migration_id, now],
    )?;
    let voided = conn.execute(
        "UPDATE migration_users SET outcome = 'voided', outcome_at = ?2
         WHERE migration_id = ?1 AND outcome IS NULL",
        params![migration_id, now],
    )?;
    conn.execute(
        "UPDATE migrations SET voided_at = ?2 WHERE migration_id = ?1",
        params![migration_id, now],
    )?;
    Ok(voided)
}

/// `device migrate --status --json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    pub migration_id: String,
    pub old_device_id: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub deadline: String,
    /// `open`, `closed` or `voided`.
    pub state: String,
    pub users: Vec<UserStatus>,
}

/// One user of a migration.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UserStatus {
    pub user: String,
    /// `pending` (old credential active, code not redeemed), `replaced`
    /// (the new credential enrolled and the old one was revoked with it),
    /// `revoked` (at the deadline, not replaced), `voided` (by a
    /// `--reissue`), `removed` (the old credential was revoked otherwise:
    /// `user remove` on the old device, `user revoke`, deactivation).
    pub state: String,
    pub old_credential_id: String,
    /// The replacing credential, once `replaced`.
    pub new_credential_id: Option<String>,
    /// The device the user moved to, once `replaced`.
    pub new_device_id: Option<String>,
    /// RFC 3339: when the state was reached (replaced, revoked, voided).
    pub at: Option<String>,
}

/// The newest migration of `old_device_id`, user by user (after a sweep
/// of what is due, so that the deadline shows even without `serve`).
pub fn status(db: &Db<'_>, old_device_id: &str, now: i64) -> Result<Option<Status>, StoreError> {
    sweep_due(db, now)?;
    let Some(migration) = latest(db, old_device_id)? else {
        return Ok(None);
    };
    let users = db
        .conn()
        .prepare(
            "SELECT m.user, m.old_credential_id, m.outcome, m.new_credential_id, m.outcome_at,
                 (SELECT revoked_at IS NULL FROM enrollments o
                  WHERE o.credential_id = m.old_credential_id) AS old_active,
                 (SELECT device_id FROM enrollments n
                  WHERE n.credential_id = m.new_credential_id) AS new_device_id
             FROM migration_users m WHERE m.migration_id = ?1 ORDER BY m.user",
        )?
        .query_map([&migration.migration_id], |row| {
            let outcome: Option<String> = row.get("outcome")?;
            let old_active: Option<bool> = row.get("old_active")?;
            let at: Option<i64> = row.get("outcome_at")?;
            Ok(UserStatus {
                user: row.get("user")?,
                state: match outcome {
                    Some(outcome) => outcome,
                    None if old_active == Some(true) => "pending".into(),
                    None => "removed".into(),
                },
                old_credential_id: row.get("old_credential_id")?,
                new_credential_id: row.get("new_credential_id")?,
                new_device_id: row.get("new_device_id")?,
                at: at.map(rfc3339),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Some(Status {
        state: migration.state(now).to_string(),
        migration_id: migration.migration_id,
        old_device_id: migration.old_device_id,
        created_at: rfc3339(migration.created_at),
        deadline: rfc3339(migration.deadline),
        users,
    }))
}

#[cfg(test)]
mod tests;
