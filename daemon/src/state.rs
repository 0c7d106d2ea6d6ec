//! The daemon's durable state in SQLite: device identity, users and their
//! PIN counters. WAL with synchronous commits, so whatever the daemon
//! acknowledged survives a crash or power cut. The schema carries a
//! version; a database from a newer fleetkeyd is refused, not guessed at.
//!
//! Reads are served from an in-memory copy, written through: each change
//! is committed to SQLite first and applied to the copy only once durable,
//! so signing reads no disk and the copy never runs ahead of the disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

mod approvals;
pub use approvals::ChallengeRecord;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state database {path} has schema version {found}, newer than this fleetkeyd knows ({SCHEMA_VERSION}); run the newer fleetkeyd or restore a backup"
    )]
    NewerSchema { path: String, found: i64 },
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("state database lock was poisoned by a crashed thread")]
    Poisoned,
    #[error("state database holds a damaged record: {0}")]
    Corrupt(String),
}

/// The device's identity once activated.
#[derive(Clone)]
pub struct DeviceRecord {
    pub device_id: String,
    pub portal_url: String,
    /// The device key's private scalar.
    pub key_secret: Zeroizing<Vec<u8>>,
    pub public_key_der: Vec<u8>,
    pub activated_at: i64,
    /// What the portal verified of the device's hardware identity at
    /// activation (e.g. the TPM's attestation key); empty when the device
    /// presented none.
    pub attestation: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserState {
    /// Key made, portal told or about to be: at startup the recorded
    /// `EnrollUser` request is sent again (the portal answers a repeat
    /// with the same credential); a row without one is rolled back.
    Pending,
    Active,
}

impl UserState {
    fn as_str(self) -> &'static str {
        match self {
            UserState::Pending => "pending",
            UserState::Active => "active",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub credential_id: String,
    pub backend: String,
    pub key_ref: Vec<u8>,
    pub public_key_der: Vec<u8>,
    pub hardware_backed: bool,
    pub state: UserState,
    pub failed_attempts: u32,
    pub enrolled_at: i64,
    /// While pending: the signed `EnrollUser` request (protobuf), exactly
    /// as sent to the portal, to send again after a crash. Empty once
    /// active.
    pub enroll_request: Vec<u8>,
}

/// The state database. Calls block briefly (a commit is an fsync); the
/// daemon makes them from blocking threads where it matters.
pub struct StateStore {
    conn: Mutex<Connection>,
    cache: RwLock<Cache>,
}

#[derive(Default)]
struct Cache {
    device: Option<DeviceRecord>,
    users: BTreeMap<String, UserRecord>,
    /// Users who must change an admin-chosen PIN (table
    /// `pin_change_required`), read on every signature.
    pin_change: std::collections::BTreeSet<String>,
}

impl StateStore {
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StateError::NewerSchema {
                path: path.display().to_string(),
                found: version,
            });
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE device (
                     id INTEGER PRIMARY KEY CHECK (id = 1),
                     device_id TEXT NOT NULL,
                     portal_url TEXT NOT NULL,
                     key_secret BLOB NOT NULL,
                     public_key BLOB NOT NULL,
                     activated_at INTEGER NOT NULL
                 );
                 CREATE TABLE users (
                     name TEXT PRIMARY KEY,
                     credential_id TEXT NOT NULL,
                     backend TEXT NOT NULL,
                     key_ref BLOB NOT NULL,
                     public_key BLOB NOT NULL,
                     hardware_backed INTEGER NOT NULL,
                     state TEXT NOT NULL CHECK (state IN ('pending', 'active')),
                     failed_attempts INTEGER NOT NULL DEFAULT 0,
                     enrolled_at INTEGER NOT NULL
                 );
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            // Version 2: what the portal verified of the device's hardware
            // identity (TPM attestation) at activation.
            conn.execute_batch(
                "BEGIN IMMEDIATE;
                 ALTER TABLE device ADD COLUMN attestation TEXT NOT NULL DEFAULT '';
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        if version < 3 {
            // Version 3: a pending user keeps the signed EnrollUser request,
            // so that startup can send the same request again rather than
            // roll back a user the portal may already have enrolled.
            conn.execute_batch(
                "BEGIN IMMEDIATE;
                 ALTER TABLE users ADD COLUMN enroll_request BLOB NOT NULL DEFAULT x'';
                 PRAGMA user_version = 3;
                 COMMIT;",
            )?;
        }
        if version < 4 {
            // Version 4: login challenges waiting for an answer.
            approvals::migrate_v3_to_v4(&conn)?;
        }
        if version < 5 {
            migrate_to_5(&conn)?;
        }
        if version < 6 {
            migrate_v6(&conn)?;
        }
        if version < 7 {
            // Version 7: users who must choose their own PIN first.
            conn.execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS pin_change_required (name TEXT PRIMARY KEY);
                 PRAGMA user_version = 7;
                 COMMIT;",
            )?;
        }
        if version < 8 {
            migrate_v8(&conn)?;
        }
        let cache = Cache {
            device: load_device(&conn)?,
            users: load_users(&conn)?
                .into_iter()
                .map(|u| (u.name.clone(), u))
                .collect(),
            pin_change: {
                let mut stmt = conn.prepare("SELECT name FROM pin_change_required")?;
                stmt.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<_, _>>()?
            },
        };
        Ok(Self {
            conn: Mutex::new(conn),
            cache: RwLock::new(cache),
        })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StateError> {
        self.conn.lock().map_err(|_| StateError::Poisoned)
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Cache>, StateError> {
        self.cache.read().map_err(|_| StateError::Poisoned)
    }

    /// Applies a change to the in-memory copy, after SQLite committed it.
    fn apply(&self, change: impl FnOnce(&mut Cache)) -> Result<(), StateError> {
        let mut cache = self.cache.write().map_err(|_| StateError::Poisoned)?;
        change(&mut cache);
        Ok(())
    }

    /// Applies a change to one user in the in-memory copy.
    fn apply_user(
        &self,
        name: &str,
        change: impl FnOnce(&mut UserRecord),
    ) -> Result<(), StateError> {
        self.apply(|cache| {
            if let Some(user) = cache.users.get_mut(name) {
                change(user);
            }
        })
    }

    pub fn device(&self) -> Result<Option<DeviceRecord>, StateError> {
        Ok(self.read()?.device.clone())
    }

    pub fn set_device(&self, device: &DeviceRecord) -> Result<(), StateError> {
        self.conn()?.execute(
            "INSERT INTO device (id, device_id, portal_url, key_secret, public_key, activated_at, attestation)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                device.device_id,
                device.portal_url,
                device.key_secret.as_slice(),
                device.public_key_der,
                device.activated_at,
                device.attestation
            ],
        )?;
        self.apply(|cache| cache.device = Some(device.clone()))
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<UserRecord>, StateError> {
        Ok(self.read()?.users.values().cloned().collect())
    }

    /// The names of the active users, without copying their records (the
    /// integrity checks read them on every enrollment).
    pub fn active_user_names(&self) -> Result<Vec<String>, StateError> {
        Ok(self
            .read()?
            .users
            .values()
            .filter(|u| u.state == UserState::Active)
            .map(|u| u.name.clone())
            .collect())
    }

    /// How many active users keep their keys in `backend`.
    pub fn active_users_of(&self, backend: &str) -> Result<usize, StateError> {
        Ok(self
            .read()?
            .users
            .values()
            .filter(|u| u.backend == backend && u.state == UserState::Active)
            .count())
    }

    /// The pending users only (enrollments not confirmed by the portal):
    /// few, so finding them costs nothing next to a copy of every user.
    pub fn pending_users(&self) -> Result<Vec<UserRecord>, StateError> {
        Ok(self
            .read()?
            .users
            .values()
            .filter(|u| u.state == UserState::Pending)
            .cloned()
            .collect())
    }

    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StateError> {
        Ok(self.read()?.users.get(name).cloned())
    }

    pub fn active_user_count(&self) -> Result<u32, StateError> {
        let cache = self.read()?;
        let count = cache
            .users
            .values()
            .filter(|u| u.state == UserState::Active)
            .count();
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// Records a user; fails if the name is taken.
    pub fn insert_user(&self, user: &UserRecord) -> Result<(), StateError> {
        self.insert_user_with(user, false)
    }

    /// Records a user and, in the same transaction, whether they must
    /// change their PIN before signing or approving.
    pub fn insert_user_with(
        &self,
        user: &UserRecord,
        require_pin_change: bool,
    ) -> Result<(), StateError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM pin_change_required WHERE name = ?1",
            [&user.name],
        )?;
        if require_pin_change {
            tx.execute(
                "INSERT INTO pin_change_required (name) VALUES (?1)",
                [&user.name],
            )?;
        }
        tx.execute(
            "INSERT INTO users (name, credential_id, backend, key_ref, public_key, hardware_backed, state, failed_attempts, enrolled_at, enroll_request)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                user.name,
                user.credential_id,
                user.backend,
                user.key_ref,
                user.public_key_der,
                user.hardware_backed,
                user.state.as_str(),
                user.failed_attempts,
                user.enrolled_at,
                user.enroll_request
            ],
        )?;
        tx.commit()?;
        drop(conn);
        self.apply(|cache| {
            cache.users.insert(user.name.clone(), user.clone());
            if require_pin_change {
                cache.pin_change.insert(user.name.clone());
            } else {
                cache.pin_change.remove(&user.name);
            }
        })
    }

    /// Whether `name` must change their PIN before signing or approving.
    pub fn pin_change_required(&self, name: &str) -> Result<bool, StateError> {
        Ok(self.read()?.pin_change.contains(name))
    }

    /// The user chose their own PIN.
    pub fn clear_pin_change(&self, name: &str) -> Result<(), StateError> {
        self.conn()?
            .execute("DELETE FROM pin_change_required WHERE name = ?1", [name])?;
        self.apply(|cache| {
            cache.pin_change.remove(name);
        })
    }

    pub fn activate_user(
        &self,
        name: &str,
        credential_id: &str,
        enrolled_at: i64,
    ) -> Result<(), StateError> {
        self.conn()?.execute(
            "UPDATE users SET state = 'active', credential_id = ?2, enrolled_at = ?3, enroll_request = x'' WHERE name = ?1",
            params![name, credential_id, enrolled_at],
        )?;
        self.apply_user(name, |user| {
            user.state = UserState::Active;
            user.credential_id = credential_id.to_string();
            user.enrolled_at = enrolled_at;
            user.enroll_request = Vec::new();
        })
    }

    /// Forgets the device's activation (and its device key), so that it
    /// can be activated again. The caller removes the users first.
    pub fn clear_device(&self) -> Result<(), StateError> {
        self.conn()?.execute("DELETE FROM device", [])?;
        self.apply(|cache| cache.device = None)
    }

    pub fn delete_user(&self, name: &str) -> Result<(), StateError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM pin_change_required WHERE name = ?1", [name])?;
        tx.execute("DELETE FROM users WHERE name = ?1", [name])?;
        tx.commit()?;
        drop(conn);
        self.apply(|cache| {
            cache.pin_change.remove(name);
            cache.users.remove(name);
        })
    }

    /// Counts a wrong PIN; returns the new count.
    pub fn record_failed_attempt(&self, name: &str) -> Result<u32, StateError> {
        let failed: u32 = self.conn()?.query_row(
            "UPDATE users SET failed_attempts = failed_attempts + 1 WHERE name = ?1 RETURNING failed_attempts",
            [name],
            |r| r.get(0),
        )?;
        self.apply_user(name, |user| user.failed_attempts = failed)?;
        Ok(failed)
    }

    pub fn reset_failed_attempts(&self, name: &str) -> Result<(), StateError> {
        self.conn()?.execute(
            "UPDATE users SET failed_attempts = 0 WHERE name = ?1",
            [name],
        )?;
        self.apply_user(name, |user| user.failed_attempts = 0)
    }

    pub fn set_key_ref(&self, name: &str, key_ref: &[u8]) -> Result<(), StateError> {
        self.conn()?.execute(
            "UPDATE users SET key_ref = ?2 WHERE name = ?1",
            params![name, key_ref],
        )?;
        self.apply_user(name, |user| user.key_ref = key_ref.to_vec())
    }
}

/// Version 5: the audit log's head (sequence number and hash of its last
/// entry), so that removing the log's last entries is found (audit.rs).
fn migrate_to_5(conn: &Connection) -> Result<(), StateError> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS audit_head (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             seq INTEGER NOT NULL,
             hash TEXT NOT NULL
         );
         PRAGMA user_version = 5;
         COMMIT;",
    )?;
    Ok(())
}

/// Version 6: the TPM lockout budget (docs/tpm-lockout.md): per key store
/// with a shared wrong-PIN counter, the last reading of that counter and
/// what `tpm provision` set. (The users' own wrong-PIN counts, which decide
/// who may still spend the budget, are in `users` already.)
fn migrate_v6(conn: &Connection) -> Result<(), StateError> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS lockout_budget (
             backend TEXT PRIMARY KEY,
             counter INTEGER NOT NULL DEFAULT 0,
             max_tries INTEGER NOT NULL DEFAULT 0,
             interval_s INTEGER NOT NULL DEFAULT 0,
             observed_at INTEGER NOT NULL DEFAULT 0,
             provisioned_users INTEGER NOT NULL DEFAULT 0,
             provisioned_per_user INTEGER NOT NULL DEFAULT 0,
             provisioned_max_tries INTEGER NOT NULL DEFAULT 0,
             provisioned_at INTEGER NOT NULL DEFAULT 0
         );
         PRAGMA user_version = 6;
         COMMIT;",
    )?;
    Ok(())
}

impl crate::audit::Anchor for StateStore {
    fn load(&self) -> Result<Option<(u64, String)>, String> {
        let conn = self.conn().map_err(|e| e.to_string())?;
        conn.query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .optional()
        .map_err(|e| e.to_string())?
        .map(|(seq, hash)| {
            u64::try_from(seq)
                .map(|seq| (seq, hash))
                .map_err(|_| format!("a negative sequence number {seq}"))
        })
        .transpose()
    }

    fn store(&self, seq: u64, hash: &str) -> Result<(), String> {
        let seq = i64::try_from(seq).map_err(|_| format!("sequence number {seq} is too large"))?;
        let conn = self.conn().map_err(|e| e.to_string())?;
        conn.execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            params![seq, hash],
        )
        .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// A key store's lockout budget as recorded (table `lockout_budget`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetRecord {
    pub counter: u32,
    pub max_tries: u32,
    pub interval_s: u32,
    /// Unix seconds of the reading; 0: never read.
    pub observed_at: i64,
    pub provisioned_users: u32,
    pub provisioned_per_user: u32,
    pub provisioned_max_tries: u32,
    /// Unix seconds; 0: never provisioned by fleetkey.
    pub provisioned_at: i64,
}

impl StateStore {
    pub fn budget(&self, backend: &str) -> Result<Option<BudgetRecord>, StateError> {
        let conn = self.conn()?;
        let mut statement = conn.prepare(
            "SELECT counter, max_tries, interval_s, observed_at, provisioned_users, provisioned_per_user, provisioned_max_tries, provisioned_at FROM lockout_budget WHERE backend = ?1",
        )?;
        let mut rows = statement.query([backend])?;
        let Some(r) = rows.next()? else {
            return Ok(None);
        };
        Ok(Some(BudgetRecord {
            counter: r.get(0)?,
            max_tries: r.get(1)?,
            interval_s: r.get(2)?,
            observed_at: r.get(3)?,
            provisioned_users: r.get(4)?,
            provisioned_per_user: r.get(5)?,
            provisioned_max_tries: r.get(6)?,
            provisioned_at: r.get(7)?,
        }))
    }

    /// Records a reading of the shared counter.
    pub fn record_budget_reading(
        &self,
        backend: &str,
        counter: u32,
        max_tries: u32,
        interval_s: u32,
        at: i64,
    ) -> Result<(), StateError> {
        self.conn()?.execute(
            "INSERT INTO lockout_budget (backend, counter, max_tries, interval_s, observed_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (backend) DO UPDATE SET counter = ?2, max_tries = ?3, interval_s = ?4, observed_at = ?5",
            params![backend, counter, max_tries, interval_s, at],
        )?;
        Ok(())
    }

    /// Records what `tpm provision` set.
    pub fn record_budget_provisioned(
        &self,
        backend: &str,
        users: u32,
        per_user: u32,
        max_tries: u32,
        at: i64,
    ) -> Result<(), StateError> {
        self.conn()?.execute(
            "INSERT INTO lockout_budget (backend, provisioned_users, provisioned_per_user, provisioned_max_tries, provisioned_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (backend) DO UPDATE SET provisioned_users = ?2, provisioned_per_user = ?3, provisioned_max_tries = ?4, provisioned_at = ?5",
            params![backend, users, per_user, max_tries, at],
        )?;
        Ok(())
    }
}

fn load_device(conn: &Connection) -> Result<Option<DeviceRecord>, StateError> {
    Ok(conn
        .query_row(
            "SELECT device_id, portal_url, key_secret, public_key, activated_at, attestation FROM device WHERE id = 1",
            [],
            |r| {
                Ok(DeviceRecord {
                    device_id: r.get(0)?,
                    portal_url: r.get(1)?,
                    key_secret: Zeroizing::new(r.get(2)?),
                    public_key_der: r.get(3)?,
                    activated_at: r.get(4)?,
                    attestation: r.get(5)?,
                })
            },
        )
        .optional()?)
}

fn load_users(conn: &Connection) -> Result<Vec<UserRecord>, StateError> {
    let mut stmt = conn.prepare(&format!("{USER_COLUMNS} ORDER BY name"))?;
    let rows = stmt.query_map([], user_from_row)?;
    rows.map(|r| r?.map_err(StateError::Corrupt)).collect()
}

const USER_COLUMNS: &str = "SELECT name, credential_id, backend, key_ref, public_key, hardware_backed, state, failed_attempts, enrolled_at, enroll_request FROM users";

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<UserRecord, String>> {
    let name: String = r.get(0)?;
    let state: String = r.get(6)?;
    let state = match state.as_str() {
        "pending" => UserState::Pending,
        "active" => UserState::Active,
        other => return Ok(Err(format!("user {name} has unknown state '{other}'"))),
    };
    Ok(Ok(UserRecord {
        name,
        credential_id: r.get(1)?,
        backend: r.get(2)?,
        key_ref: r.get(3)?,
        public_key_der: r.get(4)?,
        hardware_backed: r.get(5)?,
        state,
        failed_attempts: r.get(7)?,
        enrolled_at: r.get(8)?,
        enroll_request: r.get(9)?,
    }))
}

/// Version 8: user resets waiting for the portal (`fleetkeyctl user
/// reset`): the new key and the signed `EnrollUser` request, beside the
/// user's row, which keeps the old key until the portal answers. Goes with
/// the user (ON DELETE CASCADE).
fn migrate_v8(conn: &Connection) -> Result<(), StateError> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS user_resets (
             name TEXT PRIMARY KEY REFERENCES users (name) ON DELETE CASCADE,
             backend TEXT NOT NULL,
             key_ref BLOB NOT NULL,
             public_key BLOB NOT NULL,
             hardware_backed INTEGER NOT NULL,
             enroll_request BLOB NOT NULL,
             old_credential_id TEXT NOT NULL,
             require_pin_change INTEGER NOT NULL,
             created_at INTEGER NOT NULL
         );
         PRAGMA user_version = 8;
         COMMIT;",
    )?;
    Ok(())
}

/// A user reset whose new key exists and whose `EnrollUser` (which makes
/// the portal revoke the old credential) may or may not have reached the
/// portal (table `user_resets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetRecord {
    pub name: String,
    pub backend: String,
    pub key_ref: Vec<u8>,
    pub public_key_der: Vec<u8>,
    pub hardware_backed: bool,
    /// The signed request (protobuf), exactly as sent, to send again.
    pub enroll_request: Vec<u8>,
    pub old_credential_id: String,
    pub require_pin_change: bool,
    pub created_at: i64,
}

const RESET_COLUMNS: &str = "SELECT name, backend, key_ref, public_key, hardware_backed, enroll_request, old_credential_id, require_pin_change, created_at FROM user_resets";

fn reset_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ResetRecord> {
    Ok(ResetRecord {
        name: r.get(0)?,
        backend: r.get(1)?,
        key_ref: r.get(2)?,
        public_key_der: r.get(3)?,
        hardware_backed: r.get(4)?,
        enroll_request: r.get(5)?,
        old_credential_id: r.get(6)?,
        require_pin_change: r.get(7)?,
        created_at: r.get(8)?,
    })
}

impl StateStore {
    /// Records a reset before its request goes to the portal; fails if
    /// the user has one already or is not enrolled.
    pub fn insert_reset(&self, reset: &ResetRecord) -> Result<(), StateError> {
        self.conn()?.execute(
            "INSERT INTO user_resets (name, backend, key_ref, public_key, hardware_backed, enroll_request, old_credential_id, require_pin_change, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                reset.name,
                reset.backend,
                reset.key_ref,
                reset.public_key_der,
                reset.hardware_backed,
                reset.enroll_request,
                reset.old_credential_id,
                reset.require_pin_change,
                reset.created_at
            ],
        )?;
        Ok(())
    }

    /// Every reset waiting for the portal, by name.
    pub fn resets(&self) -> Result<Vec<ResetRecord>, StateError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!("{RESET_COLUMNS} ORDER BY name"))?;
        let rows = stmt.query_map([], reset_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn reset(&self, name: &str) -> Result<Option<ResetRecord>, StateError> {
        Ok(self
            .conn()?
            .query_row(
                &format!("{RESET_COLUMNS} WHERE name = ?1"),
                [name],
                reset_from_row,
            )
            .optional()?)
    }

    /// Forgets a reset the portal refused (the new key is deleted after).
    pub fn delete_reset(&self, name: &str) -> Result<(), StateError> {
        self.conn()?
            .execute("DELETE FROM user_resets WHERE name = ?1", [name])?;
        Ok(())
    }

    /// The portal accepted the reset: in one transaction the user's row
    /// takes the new key and credential (no wrong PINs counted, a PIN
    /// change required as asked) and the reset row goes. The old key is
    /// then named by no row; the caller deletes it (or startup does).
    pub fn complete_reset(
        &self,
        reset: &ResetRecord,
        credential_id: &str,
        enrolled_at: i64,
    ) -> Result<(), StateError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let updated = tx.execute(
            "UPDATE users SET credential_id = ?2, backend = ?3, key_ref = ?4, public_key = ?5,
                 hardware_backed = ?6, state = 'active', failed_attempts = 0, enrolled_at = ?7,
                 enroll_request = x''
             WHERE name = ?1",
            params![
                reset.name,
                credential_id,
                reset.backend,
                reset.key_ref,
                reset.public_key_der,
                reset.hardware_backed,
                enrolled_at
            ],
        )?;
        if updated != 1 {
            return Err(StateError::Corrupt(format!(
                "the reset of {} has no user row to complete",
                reset.name
            )));
        }
        tx.execute(
            "DELETE FROM pin_change_required WHERE name = ?1",
            [&reset.name],
        )?;
        if reset.require_pin_change {
            tx.execute(
                "INSERT INTO pin_change_required (name) VALUES (?1)",
                [&reset.name],
            )?;
        }
        tx.execute("DELETE FROM user_resets WHERE name = ?1", [&reset.name])?;
        tx.commit()?;
        drop(conn);
        self.apply(|cache| {
            if let Some(user) = cache.users.get_mut(&reset.name) {
                user.credential_id = credential_id.to_string();
                user.backend = reset.backend.clone();
                user.key_ref = reset.key_ref.clone();
                user.public_key_der = reset.public_key_der.clone();
                user.hardware_backed = reset.hardware_backed;
                user.state = UserState::Active;
                user.failed_attempts = 0;
                user.enrolled_at = enrolled_at;
                user.enroll_request = Vec::new();
            }
            if reset.require_pin_change {
                cache.pin_change.insert(reset.name.clone());
            } else {
                cache.pin_change.remove(&reset.name);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserRecord {
        UserRecord {
            name: name.into(),
            credential_id: String::new(),
            backend: "soft".into(),
            key_ref: b"k1".to_vec(),
            public_key_der: vec![1, 2, 3],
            hardware_backed: false,
            state: UserState::Pending,
            failed_attempts: 0,
            enrolled_at: 10,
            enroll_request: b"signed request".to_vec(),
        }
    }

    #[test]
    fn users_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = StateStore::open(&path).unwrap();
            store.insert_user(&user("alice")).unwrap();
            assert!(store.insert_user(&user("alice")).is_err());
            store.activate_user("alice", "cred-1", 20).unwrap();
            assert_eq!(store.record_failed_attempt("alice").unwrap(), 1);
            assert_eq!(store.record_failed_attempt("alice").unwrap(), 2);
        }
        let store = StateStore::open(&path).unwrap();
        let alice = store.user("alice").unwrap().unwrap();
        assert_eq!(alice.state, UserState::Active);
        assert_eq!(alice.credential_id, "cred-1");
        assert_eq!(alice.failed_attempts, 2);
        assert_eq!(store.active_user_count().unwrap(), 1);
        store.reset_failed_attempts("alice").unwrap();
        assert_eq!(store.user("alice").unwrap().unwrap().failed_attempts, 0);
        store.delete_user("alice").unwrap();
        assert!(store.user("alice").unwrap().is_none());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(StateStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = StateStore::open(&path).err().unwrap().to_string();
        assert!(
            err.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{err}"
        );
    }

    /// A version-1 database (before device attestation) opens, keeps its
    /// device, and reads as a device without attestation.
    #[test]
    fn version_1_databases_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE device (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 device_id TEXT NOT NULL, portal_url TEXT NOT NULL,
                 key_secret BLOB NOT NULL, public_key BLOB NOT NULL,
                 activated_at INTEGER NOT NULL);
             CREATE TABLE users (
                 name TEXT PRIMARY KEY, credential_id TEXT NOT NULL,
                 backend TEXT NOT NULL, key_ref BLOB NOT NULL,
                 public_key BLOB NOT NULL, hardware_backed INTEGER NOT NULL,
                 state TEXT NOT NULL CHECK (state IN ('pending', 'active')),
                 failed_attempts INTEGER NOT NULL DEFAULT 0,
                 enrolled_at INTEGER NOT NULL);
             INSERT INTO device VALUES (1, 'dev-old', 'http://127.0.0.1:1', x'07', x'01', 5);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let store = StateStore::open(&path).unwrap();
        let device = store.device().unwrap().unwrap();
        assert_eq!(device.device_id, "dev-old");
        assert_eq!(device.attestation, "");
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    /// A version-2 database (pending rows without their EnrollUser
    /// request) opens; its pending row reads with an empty request, which
    /// startup rolls back as before.
    #[test]
    fn version_2_databases_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE device (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 device_id TEXT NOT NULL, portal_url TEXT NOT NULL,
                 key_secret BLOB NOT NULL, public_key BLOB NOT NULL,
                 activated_at INTEGER NOT NULL,
                 attestation TEXT NOT NULL DEFAULT '');
             CREATE TABLE users (
                 name TEXT PRIMARY KEY, credential_id TEXT NOT NULL,
                 backend TEXT NOT NULL, key_ref BLOB NOT NULL,
                 public_key BLOB NOT NULL, hardware_backed INTEGER NOT NULL,
                 state TEXT NOT NULL CHECK (state IN ('pending', 'active')),
                 failed_attempts INTEGER NOT NULL DEFAULT 0,
                 enrolled_at INTEGER NOT NULL);
             INSERT INTO users VALUES ('bob', '', 'soft', x'01', x'02', 0, 'pending', 0, 7);
             PRAGMA user_version = 2;",
        )
        .unwrap();
        drop(conn);
        let store = StateStore::open(&path).unwrap();
        let bob = store.user("bob").unwrap().unwrap();
        assert_eq!(bob.state, UserState::Pending);
        assert!(bob.enroll_request.is_empty());
        store.insert_user(&user("carol")).unwrap();
        drop(store);
        let store = StateStore::open(&path).unwrap();
        assert_eq!(
            store.user("carol").unwrap().unwrap().enroll_request,
            b"signed request"
        );
        store.activate_user("carol", "cred-9", 11).unwrap();
        drop(store);
        let store = StateStore::open(&path).unwrap();
        assert!(
            store
                .user("carol")
                .unwrap()
                .unwrap()
                .enroll_request
                .is_empty()
        );
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    fn reset_of(name: &str) -> ResetRecord {
        ResetRecord {
            name: name.into(),
            backend: "soft".into(),
            key_ref: b"k2".to_vec(),
            public_key_der: vec![9, 9],
            hardware_backed: false,
            enroll_request: b"signed reset".to_vec(),
            old_credential_id: "cred-1".into(),
            require_pin_change: true,
            created_at: 30,
        }
    }

    #[test]
    fn a_reset_waits_beside_the_user_then_replaces_its_key_in_one_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = StateStore::open(&path).unwrap();
            // Only for an enrolled user.
            assert!(store.insert_reset(&reset_of("alice")).is_err());
            store.insert_user(&user("alice")).unwrap();
            store.activate_user("alice", "cred-1", 20).unwrap();
            for _ in 0..3 {
                store.record_failed_attempt("alice").unwrap();
            }
            store.insert_reset(&reset_of("alice")).unwrap();
            // One at a time.
            assert!(store.insert_reset(&reset_of("alice")).is_err());
        }
        // It survives a restart, and the user still has the old key.
        let store = StateStore::open(&path).unwrap();
        assert_eq!(store.resets().unwrap(), vec![reset_of("alice")]);
        let alice = store.user("alice").unwrap().unwrap();
        assert_eq!(
            (alice.key_ref.as_slice(), alice.failed_attempts),
            (&b"k1"[..], 3)
        );
        store
            .complete_reset(&reset_of("alice"), "cred-2", 40)
            .unwrap();
        for store in [store, StateStore::open(&path).unwrap()] {
            let alice = store.user("alice").unwrap().unwrap();
            assert_eq!(alice.key_ref, b"k2");
            assert_eq!(alice.public_key_der, vec![9, 9]);
            assert_eq!(alice.credential_id, "cred-2");
            assert_eq!(alice.failed_attempts, 0);
            assert_eq!(alice.enrolled_at, 40);
            assert!(store.pin_change_required("alice").unwrap());
            assert!(store.resets().unwrap().is_empty());
        }
        // A reset goes with its user.
        let store = StateStore::open(&path).unwrap();
        store.insert_reset(&reset_of("alice")).unwrap();
        store.delete_user("alice").unwrap();
        assert!(store.reset("alice").unwrap().is_none());
    }

    #[test]
    fn device_is_set_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&dir.path().join("state.db")).unwrap();
        assert!(store.device().unwrap().is_none());
        let device = DeviceRecord {
            device_id: "dev-1".into(),
            portal_url: "http://127.0.0.1:1".into(),
            key_secret: Zeroizing::new(vec![7; 32]),
            public_key_der: vec![1],
            activated_at: 5,
            attestation: "TPM".into(),
        };
        store.set_device(&device).unwrap();
        assert!(store.set_device(&device).is_err());
        assert_eq!(store.device().unwrap().unwrap().device_id, "dev-1");
    }
}
