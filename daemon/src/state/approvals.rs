//! Login challenges the portal asked this device (docs/approvals.md), in
//! table `challenges` (schema version 4). A challenge leaves `pending` in
//! one conditional UPDATE committed before its answer is sent, so neither
//! a race nor a crash (kill -9) lets it be answered twice.

use rusqlite::{OptionalExtension, params};

use super::{StateError, StateStore};

/// Version 3 to 4: the challenges table.
pub(super) fn migrate_v3_to_v4(conn: &rusqlite::Connection) -> Result<(), StateError> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE challenges (
             id TEXT PRIMARY KEY,
             user TEXT NOT NULL,
             nonce BLOB NOT NULL,
             context TEXT NOT NULL,
             portal_name TEXT NOT NULL,
             created_at INTEGER NOT NULL,
             expires_at INTEGER NOT NULL,
             received_at INTEGER NOT NULL,
             state TEXT NOT NULL CHECK (state IN ('pending', 'answering', 'approved', 'denied', 'number_wrong', 'failed')),
             answered_at INTEGER NOT NULL DEFAULT 0
         );
         CREATE INDEX challenges_by_state ON challenges (state);
         PRAGMA user_version = 4;
         COMMIT;",
    )?;
    Ok(())
}

/// A login challenge as the device keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeRecord {
    pub id: String,
    pub user: String,
    pub nonce: Vec<u8>,
    pub context: String,
    pub portal_name: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub received_at: i64,
    /// `pending`, `answering` (answer signed, being sent), `approved`,
    /// `denied`, `number_wrong`, `failed`.
    pub state: String,
    pub answered_at: i64,
}

const COLUMNS: &str = "SELECT id, user, nonce, context, portal_name, created_at, expires_at, received_at, state, answered_at FROM challenges";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChallengeRecord> {
    Ok(ChallengeRecord {
        id: r.get(0)?,
        user: r.get(1)?,
        nonce: r.get(2)?,
        context: r.get(3)?,
        portal_name: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        received_at: r.get(7)?,
        state: r.get(8)?,
        answered_at: r.get(9)?,
    })
}

/// How long answered and expired challenges are kept, in seconds.
pub const KEEP_ANSWERED_SECS: i64 = 24 * 3600;

impl StateStore {
    /// Stores a challenge unless one with its id is known; true when it is
    /// new. Refused (false) beyond `max_pending` pending ones.
    pub fn insert_challenge(
        &self,
        challenge: &ChallengeRecord,
        max_pending: u32,
        now: i64,
    ) -> Result<bool, StateError> {
        let conn = self.conn()?;
        conn.execute(
            "DELETE FROM challenges WHERE (state <> 'pending' OR expires_at <= ?1) AND expires_at <= ?1 - ?2",
            params![now, KEEP_ANSWERED_SECS],
        )?;
        let pending: u32 = conn.query_row(
            "SELECT count(*) FROM challenges WHERE state = 'pending' AND expires_at > ?1",
            [now],
            |r| r.get(0),
        )?;
        if pending >= max_pending {
            return Ok(false);
        }
        let added = conn.execute(
            "INSERT OR IGNORE INTO challenges (id, user, nonce, context, portal_name, created_at, expires_at, received_at, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending')",
            params![
                challenge.id,
                challenge.user,
                challenge.nonce,
                challenge.context,
                challenge.portal_name,
                challenge.created_at,
                challenge.expires_at,
                challenge.received_at
            ],
        )?;
        Ok(added == 1)
    }

    pub fn challenge(&self, id: &str) -> Result<Option<ChallengeRecord>, StateError> {
        Ok(self
            .conn()?
            .query_row(&format!("{COLUMNS} WHERE id = ?1"), [id], from_row)
            .optional()?)
    }

    /// Every kept challenge, oldest first.
    pub fn challenges(&self) -> Result<Vec<ChallengeRecord>, StateError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!("{COLUMNS} ORDER BY received_at, id"))?;
        let rows = stmt.query_map([], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Pending, unexpired challenges.
    pub fn pending_challenge_count(&self, now: i64) -> Result<u32, StateError> {
        Ok(self.conn()?.query_row(
            "SELECT count(*) FROM challenges WHERE state = 'pending' AND expires_at > ?1",
            [now],
            |r| r.get(0),
        )?)
    }

    /// Moves a challenge from `from` to `to`; false when it was not in
    /// `from` (someone else moved it first).
    pub fn move_challenge(
        &self,
        id: &str,
        from: &str,
        to: &str,
        now: i64,
    ) -> Result<bool, StateError> {
        let changed = self.conn()?.execute(
            "UPDATE challenges SET state = ?3, answered_at = ?4 WHERE id = ?1 AND state = ?2",
            params![id, from, to, now],
        )?;
        Ok(changed == 1)
    }
}
