//! The portal's persistent state, in SQLite: settings, activation codes,
//! registered devices and user enrollments.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so an
//! acknowledged registration or enrollment survives a crash or power cut.
//! Every redemption runs in one `BEGIN IMMEDIATE` transaction
//! ([`Store::immediate`]): the write lock is taken before the code is read,
//! so two devices racing for one code cannot both win.
//!
//! The database and its `-wal`/`-shm` files are mode 0600 ([`crate::files`]),
//! `secure_delete` is on (deleted rows are overwritten, not left in free
//! space), and codes are kept only as keyed hashes
//! ([`crate::code_key`]): the key lives in `portal.db.key` beside the
//! database, so the database alone leaks no usable code.
//!
//! Schema version 6 (`PRAGMA user_version`; version 1 to 5 databases are
//! migrated on open):
//!
//! | table | columns |
//! | --- | --- |
//! | settings | key (PK), value — `public_url` is the URL put in QR codes; `code_key_check` identifies the code key |
//! | codes | code_hash (HMAC-SHA256 of the compact form, PK; since v3, replacing the code's text), kind (`device`/`user`), user, created_at, expires_at, used_at, used_by_device; since v6: replaces_credential (the credential the enrollment that redeems it revokes, in the same transaction) |
//! | devices | device_id (PK), public_key (SPKI DER), name, registered_at; since v2: tpm_ak_public, tpm_ak_name, tpm_ek_public, tpm_ek_certificate, tpm_ek_certificate_status (`verified`/`not-checked`/`absent`), tpm_ek_certificate_anchor, tpm_verified_at (all NULL for devices without a verified TPM identity), attestation_detail |
//! | enrollments | device_id, user, credential_id (unique), public_key (SPKI DER), backend, attestation_format, hardware_backed, enrolled_at, revoked_at, code_hash (the code redeemed; `code` before v3); since v2: attestation_detail |
//! | tpm_challenges (v2) | code_hash (`code` before v3), device_public_key (PK together), device_name, secret_sha256 (never the secret), ak_public, ak_name, ek_public, ek_certificate, ek_certificate_status, ek_certificate_anchor, created_at — credential challenges waiting for CompleteTpmActivation |
//! | device_integrity (v5) | device_id (PK), level, summary, tpm_verified, report_digest, exceptions, verified_at, occasion (`activation`/`user add`/`on-demand`) — the last verified integrity evidence (docs/integrity.md) |
//! | integrity_requests (v5) | device_id (PK), requested_at, nonce_issued_at — `device integrity` requests the device has not answered |
//!
//! | migrations (v6) | migration_id (PK), old_device_id, created_at, deadline, voided_at, swept_at — see [`crate::migrate`] |
//! | migration_users (v6) | migration_id, user (PK together), old_credential_id, code_hash, outcome (NULL, `replaced`, `revoked`, `voided`), new_credential_id, outcome_at |
//!
//! | login_challenges (v4) | see [`crate::login`]: login challenges for users' devices (docs/approvals.md) |
//!
//! A partial unique index allows only one active (not revoked) enrollment
//! per (device_id, user). Times are Unix seconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetkey_proto::ActivationCode;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde::Serialize;

use crate::code_key::{CodeHash, CodeKey, KeyError, key_path};
use crate::files::{create_private, make_private, sqlite_side_files};

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 6;
/// The settings key holding the code key's check value.
pub const SETTING_CODE_KEY_CHECK: &str = "code_key_check";
/// How long a statement waits for another process's lock (e.g. `code issue`
/// while `serve` is writing).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The settings key holding the URL devices reach the portal at.
pub const SETTING_PUBLIC_URL: &str = "public_url";

/// Version 1, as first released; newer versions are migrations from it.
const SCHEMA_V1: &str = "
CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE codes (
    code           TEXT PRIMARY KEY NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('device', 'user')),
    user           TEXT,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER,
    used_by_device TEXT,
    CHECK (kind = 'device' OR user IS NOT NULL)
);
CREATE TABLE devices (
    device_id     TEXT PRIMARY KEY NOT NULL,
    public_key    BLOB NOT NULL,
    name          TEXT NOT NULL,
    registered_at INTEGER NOT NULL
);
CREATE TABLE enrollments (
    device_id          TEXT NOT NULL REFERENCES devices (device_id),
    user               TEXT NOT NULL,
    credential_id      TEXT NOT NULL UNIQUE,
    public_key         BLOB NOT NULL,
    backend            TEXT NOT NULL,
    attestation_format TEXT NOT NULL,
    hardware_backed    INTEGER NOT NULL,
    enrolled_at        INTEGER NOT NULL,
    revoked_at         INTEGER,
    code               TEXT REFERENCES codes (code)
);
CREATE UNIQUE INDEX enrollments_one_active
    ON enrollments (device_id, user) WHERE revoked_at IS NULL;
CREATE INDEX enrollments_by_user ON enrollments (user);
CREATE INDEX enrollments_by_code ON enrollments (code);
";

/// Version 1 to 2: TPM identities of devices, pending TPM credential
/// challenges, and what was verified of each enrollment's attestation.
const MIGRATE_V1_TO_V2: &str = "
ALTER TABLE devices ADD COLUMN tpm_ak_public BLOB;
ALTER TABLE devices ADD COLUMN tpm_ak_name BLOB;
ALTER TABLE devices ADD COLUMN tpm_ek_public BLOB;
ALTER TABLE devices ADD COLUMN tpm_ek_certificate BLOB;
ALTER TABLE devices ADD COLUMN tpm_ek_certificate_status TEXT;
ALTER TABLE devices ADD COLUMN tpm_ek_certificate_anchor TEXT;
ALTER TABLE devices ADD COLUMN tpm_verified_at INTEGER;
ALTER TABLE devices ADD COLUMN attestation_detail TEXT NOT NULL DEFAULT '';
ALTER TABLE enrollments ADD COLUMN attestation_detail TEXT NOT NULL DEFAULT '';
CREATE TABLE tpm_challenges (
    code                  TEXT NOT NULL REFERENCES codes (code),
    device_public_key     BLOB NOT NULL,
    device_name           TEXT NOT NULL,
    secret_sha256         BLOB NOT NULL,
    ak_public             BLOB NOT NULL,
    ak_name               BLOB NOT NULL,
    ek_public             BLOB NOT NULL,
    ek_certificate        BLOB NOT NULL,
    ek_certificate_status TEXT NOT NULL,
    ek_certificate_anchor TEXT,
    created_at            INTEGER NOT NULL,
    PRIMARY KEY (code, device_public_key)
);
";

/// Version 2 to 3, part one: the tables that named codes by their text,
/// made again to name them by their keyed hash. The rows are copied with
/// their hashes by [`Store::migrate_v2_to_v3`], then the old tables go.
const CREATE_V3_TABLES: &str = "
CREATE TABLE codes_v3 (
    code_hash      BLOB PRIMARY KEY NOT NULL CHECK (length(code_hash) = 32),
    kind           TEXT NOT NULL CHECK (kind IN ('device', 'user')),
    user           TEXT,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER,
    used_by_device TEXT,
    CHECK (kind = 'device' OR user IS NOT NULL)
);
CREATE TABLE enrollments_v3 (
    device_id          TEXT NOT NULL REFERENCES devices (device_id),
    user               TEXT NOT NULL,
    credential_id      TEXT NOT NULL UNIQUE,
    public_key         BLOB NOT NULL,
    backend            TEXT NOT NULL,
    attestation_format TEXT NOT NULL,
    hardware_backed    INTEGER NOT NULL,
    enrolled_at        INTEGER NOT NULL,
    revoked_at         INTEGER,
    code_hash          BLOB REFERENCES codes (code_hash),
    attestation_detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE tpm_challenges_v3 (
    code_hash             BLOB NOT NULL REFERENCES codes (code_hash),
    device_public_key     BLOB NOT NULL,
    device_name           TEXT NOT NULL,
    secret_sha256         BLOB NOT NULL,
    ak_public             BLOB NOT NULL,
    ak_name               BLOB NOT NULL,
    ek_public             BLOB NOT NULL,
    ek_certificate        BLOB NOT NULL,
    ek_certificate_status TEXT NOT NULL,
    ek_certificate_anchor TEXT,
    created_at            INTEGER NOT NULL,
    PRIMARY KEY (code_hash, device_public_key)
);
";

/// Version 2 to 3, part two: the old tables replaced by the new ones.
const REPLACE_V2_TABLES: &str = "
DROP TABLE tpm_challenges;
DROP TABLE enrollments;
DROP TABLE codes;
ALTER TABLE codes_v3 RENAME TO codes;
ALTER TABLE enrollments_v3 RENAME TO enrollments;
ALTER TABLE tpm_challenges_v3 RENAME TO tpm_challenges;
CREATE UNIQUE INDEX enrollments_one_active
    ON enrollments (device_id, user) WHERE revoked_at IS NULL;
CREATE INDEX enrollments_by_user ON enrollments (user);
CREATE INDEX enrollments_by_code ON enrollments (code_hash);
";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the portal database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("no portal database at {0}; `fleetkey-portal serve --db FILE` creates one")]
    Missing(PathBuf),
    #[error("could not find an unused activation code in {0} tries")]
    NoFreeCode(u32),
    #[error(
        "the portal database {path} has schema version {found}, newer than this fleetkey-portal understands ({supported}); use a newer fleetkey-portal"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{0} is not a fleetkey-portal database (it has tables but no schema version)")]
    Foreign(PathBuf),
    #[error("portal database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the operating system's random generator failed: {0}")]
    Random(getrandom::Error),
    #[error("the portal database holds a malformed {what}: {value:?}")]
    Corrupt { what: &'static str, value: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot {action} {path}: {source}")]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a code redeems for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CodeKind {
    /// Activates a device (registers its device key).
    Device,
    /// Adds a user to an activated device.
    User,
}

impl CodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CodeKind::Device => "device",
            CodeKind::User => "user",
        }
    }
}

impl FromSql for CodeKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "device" => Ok(CodeKind::Device),
            "user" => Ok(CodeKind::User),
            other => Err(FromSqlError::Other(
                format!("unknown code kind {other:?}").into(),
            )),
        }
    }
}

impl std::fmt::Display for CodeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An issued activation code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRecord {
    /// The keyed hash of the code; the code itself is not kept.
    pub code_hash: CodeHash,
    pub kind: CodeKind,
    /// The user an add-user code is bound to (optional on device codes,
    /// where it is only a hint shown to the person activating).
    pub user: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub used_by_device: Option<String>,
    /// The credential the enrollment that redeems this code revokes
    /// (`device migrate`, `user reset-code`).
    pub replaces_credential: Option<String>,
}

/// Whether a code can still be redeemed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeState {
    Usable,
    /// Redeemed; a used code stays used even after it would have expired.
    Used {
        at: i64,
        by_device: Option<String>,
    },
    /// Expired (at `expires_at`) without being redeemed.
    Expired {
        at: i64,
    },
}

impl CodeRecord {
    /// A new unused code of `kind` (by its hash), valid for `ttl` seconds
    /// from `now`.
    pub fn new(
        code_hash: CodeHash,
        kind: CodeKind,
        user: Option<&str>,
        now: i64,
        ttl: i64,
    ) -> Self {
        Self {
            code_hash,
            kind,
            user: user.map(str::to_string),
            created_at: now,
            expires_at: now.saturating_add(ttl),
            used_at: None,
            used_by_device: None,
            replaces_credential: None,
        }
    }

    /// The code's state at `now`. A code is expired from `expires_at` on.
    pub fn state(&self, now: i64) -> CodeState {
        if let Some(at) = self.used_at {
            CodeState::Used {
                at,
                by_device: self.used_by_device.clone(),
            }
        } else if now >= self.expires_at {
            CodeState::Expired {
                at: self.expires_at,
            }
        } else {
            CodeState::Usable
        }
    }

    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            code_hash: row.get("code_hash")?,
            kind: row.get("kind")?,
            user: row.get("user")?,
            created_at: row.get("created_at")?,
            expires_at: row.get("expires_at")?,
            used_at: row.get("used_at")?,
            used_by_device: row.get("used_by_device")?,
            replaces_credential: row.get("replaces_credential")?,
        })
    }
}

/// What became of a device's EK certificate at activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EkCertificateStatus {
    /// Chained to the portal's `--tpm-ek-roots`, and certifies the EK.
    Verified,
    /// Sent, but the portal had no `--tpm-ek-roots` to check it against.
    NotChecked,
    /// The TPM has none, and the portal had no `--tpm-ek-roots`.
    Absent,
}

impl EkCertificateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EkCertificateStatus::Verified => "verified",
            EkCertificateStatus::NotChecked => "not-checked",
            EkCertificateStatus::Absent => "absent",
        }
    }
}

impl FromSql for EkCertificateStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "verified" => Ok(EkCertificateStatus::Verified),
            "not-checked" => Ok(EkCertificateStatus::NotChecked),
            "absent" => Ok(EkCertificateStatus::Absent),
            other => Err(FromSqlError::Other(
                format!("unknown EK certificate status {other:?}").into(),
            )),
        }
    }
}

/// A device's TPM identity: the AK bound to the EK by a credential
/// challenge (docs/tpm-attestation.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmIdentity {
    /// Marshalled TPMT_PUBLIC of the attestation key.
    pub ak_public: Vec<u8>,
    /// The AK's name (nameAlg || digest).
    pub ak_name: Vec<u8>,
    /// Marshalled TPMT_PUBLIC of the endorsement key.
    pub ek_public: Vec<u8>,
    /// The EK certificate (DER) as sent; empty when none.
    pub ek_certificate: Vec<u8>,
    pub ek_certificate_status: EkCertificateStatus,
    /// The self-signed certificate the EK certificate chained to, when verified.
    pub ek_certificate_anchor: Option<String>,
    /// When the AK was proven (or, on a pending challenge, when it was drawn).
    pub verified_at: i64,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub device_id: String,
    /// SubjectPublicKeyInfo DER of the device key.
    pub public_key: Vec<u8>,
    pub name: String,
    pub registered_at: i64,
    /// Set when the device proved a TPM identity at activation.
    pub tpm: Option<TpmIdentity>,
    /// What the portal verified of the device's identity, for people.
    pub attestation_detail: String,
}

impl Device {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        let ak_public: Option<Vec<u8>> = row.get("tpm_ak_public")?;
        let tpm = match ak_public {
            Some(ak_public) => Some(TpmIdentity {
                ak_public,
                ak_name: row.get("tpm_ak_name")?,
                ek_public: row.get("tpm_ek_public")?,
                ek_certificate: row.get("tpm_ek_certificate")?,
                ek_certificate_status: row.get("tpm_ek_certificate_status")?,
                ek_certificate_anchor: row.get("tpm_ek_certificate_anchor")?,
                verified_at: row.get("tpm_verified_at")?,
            }),
            None => None,
        };
        Ok(Self {
            device_id: row.get("device_id")?,
            public_key: row.get("public_key")?,
            name: row.get("name")?,
            registered_at: row.get("registered_at")?,
            tpm,
            attestation_detail: row.get("attestation_detail")?,
        })
    }
}

/// A credential challenge waiting for CompleteTpmActivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTpmChallenge {
    /// The code's keyed hash.
    pub code_hash: CodeHash,
    pub device_public_key: Vec<u8>,
    pub device_name: String,
    /// SHA-256 of the secret drawn; the secret itself is not kept.
    pub secret_sha256: Vec<u8>,
    /// The identity to register once the secret comes back; `verified_at`
    /// is when the challenge was made.
    pub identity: TpmIdentity,
}

impl PendingTpmChallenge {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            code_hash: row.get("code_hash")?,
            device_public_key: row.get("device_public_key")?,
            device_name: row.get("device_name")?,
            secret_sha256: row.get("secret_sha256")?,
            identity: TpmIdentity {
                ak_public: row.get("ak_public")?,
                ak_name: row.get("ak_name")?,
                ek_public: row.get("ek_public")?,
                ek_certificate: row.get("ek_certificate")?,
                ek_certificate_status: row.get("ek_certificate_status")?,
                ek_certificate_anchor: row.get("ek_certificate_anchor")?,
                verified_at: row.get("created_at")?,
            },
        })
    }
}

/// A user's credential on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    pub device_id: String,
    pub user: String,
    pub credential_id: String,
    /// SubjectPublicKeyInfo DER of the user key.
    pub public_key: Vec<u8>,
    pub backend: String,
    pub attestation_format: String,
    pub hardware_backed: bool,
    pub enrolled_at: i64,
    pub revoked_at: Option<i64>,
    /// The add-user code this enrollment redeemed (its keyed hash).
    pub code_hash: Option<CodeHash>,
    /// What the portal verified of the key's attestation, for people.
    pub attestation_detail: String,
}

impl Enrollment {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            device_id: row.get("device_id")?,
            user: row.get("user")?,
            credential_id: row.get("credential_id")?,
            public_key: row.get("public_key")?,
            backend: row.get("backend")?,
            attestation_format: row.get("attestation_format")?,
            hardware_backed: row.get("hardware_backed")?,
            enrolled_at: row.get("enrolled_at")?,
            revoked_at: row.get("revoked_at")?,
            code_hash: row.get("code_hash")?,
            attestation_detail: row.get("attestation_detail")?,
        })
    }
}

/// A device with the number of users actively enrolled on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSummary {
    pub device: Device,
    pub active_users: u64,
}

/// The portal database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    key: CodeKey,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating it (mode 0600), its schema
    /// and its code key if needed, and migrating an older schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Private before SQLite opens it: SQLite gives its -wal and -shm
        // files the database's mode.
        for file in std::iter::once(path.to_path_buf()).chain(sqlite_side_files(path)) {
            make_private(&file).map_err(|source| StoreError::File {
                action: "protect",
                path: file.clone(),
                source,
            })?;
        }
        create_private(path).map_err(|source| StoreError::File {
            action: "create",
            path: path.to_path_buf(),
            source,
        })?;
        let open_error = |error: StoreError| match error {
            StoreError::Sqlite(source) => StoreError::Open {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        };
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        configure(&conn, path).map_err(open_error)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| open_error(e.into()))?;
        let key_file = key_path(path);
        let key = match CodeKey::load(&key_file)? {
            Some(key) => key,
            // Codes were hashed with a key that is gone: making a new one
            // would silently turn every issued code into an unknown one.
            None if version >= 3 => return Err(KeyError::Missing(key_file).into()),
            None => CodeKey::load_or_create(&key_file)?,
        };
        let mut store = Self {
            conn,
            path: path.to_path_buf(),
            key,
        };
        store.migrate().map_err(open_error)?;
        store.check_key()?;
        store
            .conn
            .pragma_update(None, "foreign_keys", true)
            .map_err(|e| open_error(e.into()))?;
        Ok(store)
    }

    /// Opens an existing database; a missing file is an error rather than
    /// a new empty portal (for commands that only read).
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_path_buf()));
        }
        Self::open(path)
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Brings the schema to [`SCHEMA_VERSION`] in one transaction.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        // Off while tables are replaced; `open` turns them on afterwards
        // (the pragma does nothing inside a transaction).
        self.conn.pragma_update(None, "foreign_keys", false)?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version == 0 {
            let tables: i64 = tx.query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |row| row.get(0),
            )?;
            if tables > 0 {
                return Err(StoreError::Foreign(path));
            }
            tx.execute_batch(SCHEMA_V1)?;
        }
        // From the version found (or a new version 1) up, in the same
        // transaction.
        if version <= 1 {
            tx.execute_batch(MIGRATE_V1_TO_V2)?;
        }
        if version <= 2 {
            migrate_v2_to_v3(&tx, &self.key)?;
        }
        if version <= 3 {
            crate::login::migrate_v3_to_v4(&tx)?;
        }
        if version <= 4 {
            migrate_v4_to_v5(&tx)?;
        }
        if version <= 5 {
            crate::migrate::migrate_v5_to_v6(&tx)?;
        }
        let broken: i64 =
            tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
                row.get(0)
            })?;
        if broken > 0 {
            return Err(StoreError::Corrupt {
                what: "set of references after the migration",
                value: format!("{broken} rows refer to rows that do not exist"),
            });
        }
        tx.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
            params![SETTING_CODE_KEY_CHECK, self.key.check_value()],
        )?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        if version > 0 {
            tracing::info!(path = %path.display(), from = version, to = SCHEMA_VERSION, "portal database migrated");
            self.compact();
        }
        Ok(())
    }

    /// Rewrites the database file and empties the WAL, so that nothing a
    /// migration replaced (codes as text) stays in free pages or old WAL
    /// frames.
    fn compact(&self) {
        if let Err(error) = self.conn.execute_batch("VACUUM") {
            tracing::warn!(path = %self.path.display(), %error, "could not VACUUM the migrated database");
        }
        let checkpoint = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            });
        match checkpoint {
            Ok(0) => {}
            Ok(_) => {
                tracing::warn!(path = %self.path.display(), "another process is reading the database: its WAL is emptied later")
            }
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "could not checkpoint the migrated database")
            }
        }
    }

    /// Refuses a key file that is not the one the database was made with.
    fn check_key(&self) -> Result<(), StoreError> {
        let expected = self.key.check_value();
        match self.db().setting(SETTING_CODE_KEY_CHECK)? {
            Some(found) if found == expected => Ok(()),
            Some(_) => Err(KeyError::Mismatch(key_path(&self.path)).into()),
            None => self.db().set_setting(SETTING_CODE_KEY_CHECK, &expected),
        }
    }

    /// Queries outside a transaction (each statement on its own).
    pub fn db(&self) -> Db<'_> {
        Db {
            conn: &self.conn,
            key: &self.key,
        }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction: committed when `f`
    /// returns `Ok`, rolled back otherwise.
    pub fn immediate<T, E>(&mut self, f: impl FnOnce(&Db<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let key = &self.key;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let value = f(&Db { conn: &tx, key })?;
        tx.commit().map_err(StoreError::from)?;
        Ok(value)
    }

    /// Issues a new code of `kind`, valid for `ttl` seconds from `now`.
    /// The code is returned here and never again: the database keeps only
    /// its keyed hash.
    pub fn issue_code(
        &mut self,
        kind: CodeKind,
        user: Option<&str>,
        ttl: i64,
        now: i64,
    ) -> Result<IssuedCode, StoreError> {
        // 75 random bits make a collision all but impossible; retrying on
        // one costs nothing.
        const TRIES: u32 = 8;
        for _ in 0..TRIES {
            let code = ActivationCode::generate().map_err(StoreError::Random)?;
            let record = CodeRecord::new(self.key.hash(&code), kind, user, now, ttl);
            if self.db().insert_code(&record)? {
                return Ok(IssuedCode { code, record });
            }
        }
        Err(StoreError::NoFreeCode(TRIES))
    }
}

/// A code just issued: the only time the code itself is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCode {
    pub code: ActivationCode,
    /// What the database keeps of it.
    pub record: CodeRecord,
}

/// Connection settings: WAL, full sync, overwrite deleted content.
fn configure(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            path = %path.display(),
            journal_mode = %mode,
            "the portal database could not switch to WAL mode"
        );
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "secure_delete", true)?;
    Ok(())
}

/// Version 2 to 3: every code (in codes, enrollments and pending TPM
/// challenges) replaced by its keyed hash.
fn migrate_v2_to_v3(tx: &Transaction<'_>, key: &CodeKey) -> Result<(), StoreError> {
    // Codes were stored in their canonical compact form; hash what parses
    // exactly as a fresh issue would, and anything else as it is (it could
    // never be redeemed anyway).
    let hash = |text: &str| match ActivationCode::parse(text) {
        Ok(code) => key.hash(&code),
        Err(_) => key.hash_compact(text),
    };
    tx.execute_batch(CREATE_V3_TABLES)?;
    let codes: Vec<String> = tx
        .prepare("SELECT code FROM codes")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for code in codes {
        tx.execute(
            "INSERT INTO codes_v3 SELECT ?1, kind, user, created_at, expires_at, used_at,
                 used_by_device FROM codes WHERE code = ?2",
            params![hash(&code), code],
        )?;
    }
    tx.execute(
        "INSERT INTO enrollments_v3 SELECT device_id, user, credential_id, public_key, backend,
             attestation_format, hardware_backed, enrolled_at, revoked_at, NULL,
             attestation_detail FROM enrollments",
        [],
    )?;
    let redeemed: Vec<(String, String)> = tx
        .prepare("SELECT credential_id, code FROM enrollments WHERE code IS NOT NULL")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (credential_id, code) in redeemed {
        tx.execute(
            "UPDATE enrollments_v3 SET code_hash = ?1 WHERE credential_id = ?2",
            params![hash(&code), credential_id],
        )?;
    }
    let challenges: Vec<(String, Vec<u8>)> = tx
        .prepare("SELECT code, device_public_key FROM tpm_challenges")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (code, device_public_key) in challenges {
        tx.execute(
            "INSERT INTO tpm_challenges_v3 SELECT ?1, device_public_key, device_name,
                 secret_sha256, ak_public, ak_name, ek_public, ek_certificate,
                 ek_certificate_status, ek_certificate_anchor, created_at
             FROM tpm_challenges WHERE code = ?2 AND device_public_key = ?3",
            params![hash(&code), code, device_public_key],
        )?;
    }
    tx.execute_batch(REPLACE_V2_TABLES)?;
    Ok(())
}

/// Version 5: the last verified integrity state of each device, and
/// the operators' pending requests for a fresh one (docs/integrity.md).
const MIGRATE_V4_TO_V5: &str = "
CREATE TABLE IF NOT EXISTS device_integrity (
    device_id      TEXT PRIMARY KEY REFERENCES devices(device_id),
    level          INTEGER NOT NULL,
    summary        TEXT NOT NULL,
    tpm_verified   INTEGER NOT NULL,
    report_digest  TEXT NOT NULL,
    exceptions     TEXT NOT NULL,
    verified_at    INTEGER NOT NULL,
    -- What the evidence came with: activation, user add, on-demand.
    occasion       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS integrity_requests (
    device_id      TEXT PRIMARY KEY REFERENCES devices(device_id),
    requested_at   INTEGER NOT NULL,
    -- Set when the device polled and was given a nonce; cleared by its
    -- answer.
    nonce_issued_at INTEGER
);
";

/// Version 4 to 5 (integrity); applies after the approvals' version 4.
fn migrate_v4_to_v5(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_batch(MIGRATE_V4_TO_V5)?;
    Ok(())
}

/// A device's last verified integrity state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrityRecord {
    pub device_id: String,
    pub level: u8,
    pub summary: String,
    pub tpm_verified: bool,
    pub report_digest: String,
    /// Failing checks the portal's policy ignored, comma-separated.
    pub exceptions: String,
    pub verified_at: i64,
    pub occasion: String,
}

impl IntegrityRecord {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        let level: i64 = row.get("level")?;
        Ok(IntegrityRecord {
            device_id: row.get("device_id")?,
            level: u8::try_from(level).unwrap_or(0),
            summary: row.get("summary")?,
            tpm_verified: row.get("tpm_verified")?,
            report_digest: row.get("report_digest")?,
            exceptions: row.get("exceptions")?,
            verified_at: row.get("verified_at")?,
            occasion: row.get("occasion")?,
        })
    }
}

impl Db<'_> {
    /// Records `record` as the device's last verified integrity state.
    pub fn set_integrity(&self, record: &IntegrityRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO device_integrity
             (device_id, level, summary, tpm_verified, report_digest, exceptions, verified_at, occasion)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                record.device_id,
                i64::from(record.level),
                record.summary,
                record.tpm_verified,
                record.report_digest,
                record.exceptions,
                record.verified_at,
                record.occasion
            ],
        )?;
        Ok(())
    }

    pub fn integrity(&self, device_id: &str) -> Result<Option<IntegrityRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM device_integrity WHERE device_id = ?1",
                [device_id],
                IntegrityRecord::from_row,
            )
            .optional()?)
    }

    /// Records an operator's request for a fresh report (once per device).
    pub fn request_integrity(&self, device_id: &str, now: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO integrity_requests (device_id, requested_at, nonce_issued_at)
             VALUES (?1, ?2, NULL)",
            params![device_id, now],
        )?;
        Ok(())
    }

    /// When the pending request for `device_id` was made, if there is one.
    pub fn integrity_request(&self, device_id: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT requested_at FROM integrity_requests WHERE device_id = ?1",
                [device_id],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// The device answered its request.
    pub fn clear_integrity_request(&self, device_id: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM integrity_requests WHERE device_id = ?1",
            [device_id],
        )?;
        Ok(())
    }
}

/// Queries and updates, inside or outside a transaction.
pub struct Db<'c> {
    conn: &'c Connection,
    key: &'c CodeKey,
}

impl Db<'_> {
    /// A setting's value.
    /// The connection, for the tables other modules own (`crate::login`).
    pub(crate) fn conn(&self) -> &Connection {
        self.conn
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// The URL devices reach the portal at, as last advertised by `serve`.
    pub fn public_url(&self) -> Result<Option<String>, StoreError> {
        self.setting(SETTING_PUBLIC_URL)
    }

    pub fn set_public_url(&self, url: &str) -> Result<(), StoreError> {
        self.set_setting(SETTING_PUBLIC_URL, url)
    }

    /// The keyed hash a code is stored under.
    pub fn code_hash(&self, code: &ActivationCode) -> CodeHash {
        self.key.hash(code)
    }

    /// Inserts a code; `false` when that code already exists.
    pub fn insert_code(&self, record: &CodeRecord) -> Result<bool, StoreError> {
        let inserted = self.conn.execute(
            "INSERT INTO codes (code_hash, kind, user, created_at, expires_at, used_at,
                 used_by_device, replaces_credential)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (code_hash) DO NOTHING",
            params![
                record.code_hash,
                record.kind.as_str(),
                record.user,
                record.created_at,
                record.expires_at,
                record.used_at,
                record.used_by_device,
                record.replaces_credential,
            ],
        )?;
        Ok(inserted == 1)
    }

    /// The record of an issued code.
    pub fn code(&self, code: &ActivationCode) -> Result<Option<CodeRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM codes WHERE code_hash = ?1",
                [self.code_hash(code)],
                CodeRecord::from_row,
            )
            .optional()?)
    }

    /// Marks an unused code used by `device_id`; `false` if it was already
    /// used (or does not exist).
    pub fn mark_code_used(
        &self,
        code_hash: &CodeHash,
        device_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let updated = self.conn.execute(
            "UPDATE codes SET used_at = ?2, used_by_device = ?3
             WHERE code_hash = ?1 AND used_at IS NULL",
            params![code_hash, now, device_id],
        )?;
        Ok(updated == 1)
    }

    pub fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM devices WHERE device_id = ?1",
                [device_id],
                Device::from_row,
            )
            .optional()?)
    }

    pub fn insert_device(&self, device: &Device) -> Result<(), StoreError> {
        let tpm = device.tpm.as_ref();
        self.conn.execute(
            "INSERT INTO devices (device_id, public_key, name, registered_at,
                 tpm_ak_public, tpm_ak_name, tpm_ek_public, tpm_ek_certificate,
                 tpm_ek_certificate_status, tpm_ek_certificate_anchor, tpm_verified_at,
                 attestation_detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                device.device_id,
                device.public_key,
                device.name,
                device.registered_at,
                tpm.map(|t| &t.ak_public),
                tpm.map(|t| &t.ak_name),
                tpm.map(|t| &t.ek_public),
                tpm.map(|t| &t.ek_certificate),
                tpm.map(|t| t.ek_certificate_status.as_str()),
                tpm.and_then(|t| t.ek_certificate_anchor.as_deref()),
                tpm.map(|t| t.verified_at),
                device.attestation_detail,
            ],
        )?;
        Ok(())
    }

    /// Stores a credential challenge, replacing one for the same code and
    /// device key.
    pub fn put_tpm_challenge(&self, challenge: &PendingTpmChallenge) -> Result<(), StoreError> {
        let identity = &challenge.identity;
        self.conn.execute(
            "INSERT OR REPLACE INTO tpm_challenges (code_hash, device_public_key, device_name,
                 secret_sha256, ak_public, ak_name, ek_public, ek_certificate,
                 ek_certificate_status, ek_certificate_anchor, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                challenge.code_hash,
                challenge.device_public_key,
                challenge.device_name,
                challenge.secret_sha256,
                identity.ak_public,
                identity.ak_name,
                identity.ek_public,
                identity.ek_certificate,
                identity.ek_certificate_status.as_str(),
                identity.ek_certificate_anchor,
                identity.verified_at,
            ],
        )?;
        Ok(())
    }

    /// The pending challenge for this code and device key.
    pub fn tpm_challenge(
        &self,
        code_hash: &CodeHash,
        device_public_key: &[u8],
    ) -> Result<Option<PendingTpmChallenge>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM tpm_challenges WHERE code_hash = ?1 AND device_public_key = ?2",
                params![code_hash, device_public_key],
                PendingTpmChallenge::from_row,
            )
            .optional()?)
    }

    /// Deletes the challenge for this code and device key, or with `None`
    /// every challenge for the code; returns how many were deleted.
    pub fn delete_tpm_challenges(
        &self,
        code_hash: &CodeHash,
        device_public_key: Option<&[u8]>,
    ) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM tpm_challenges
             WHERE code_hash = ?1 AND (?2 IS NULL OR device_public_key = ?2)",
            params![code_hash, device_public_key],
        )?)
    }

    /// Every device, oldest first, with its number of active users.
    pub fn devices(&self) -> Result<Vec<DeviceSummary>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT d.*, (SELECT count(*) FROM enrollments e
                          WHERE e.device_id = d.device_id AND e.revoked_at IS NULL) AS active_users
             FROM devices d ORDER BY d.registered_at, d.device_id",
        )?;
        let rows = statement.query_map([], |row| {
            let active_users: i64 = row.get("active_users")?;
            Ok(DeviceSummary {
                device: Device::from_row(row)?,
                active_users: u64::try_from(active_users).unwrap_or(0),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The user's active enrollment on the device.
    pub fn active_enrollment(
        &self,
        device_id: &str,
        user: &str,
    ) -> Result<Option<Enrollment>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM enrollments
                 WHERE device_id = ?1 AND user = ?2 AND revoked_at IS NULL",
                [device_id, user],
                Enrollment::from_row,
            )
            .optional()?)
    }

    /// The enrollment that redeemed this code, revoked or not.
    pub fn enrollment_by_code(
        &self,
        code_hash: &CodeHash,
    ) -> Result<Option<Enrollment>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM enrollments WHERE code_hash = ?1",
                [code_hash],
                Enrollment::from_row,
            )
            .optional()?)
    }

    /// Active enrollments, for one user or for all, by user then device.
    pub fn active_enrollments(&self, user: Option<&str>) -> Result<Vec<Enrollment>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT * FROM enrollments
             WHERE revoked_at IS NULL AND (?1 IS NULL OR user = ?1)
             ORDER BY user, enrolled_at, device_id",
        )?;
        let rows = statement.query_map([user], Enrollment::from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn insert_enrollment(&self, enrollment: &Enrollment) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO enrollments (device_id, user, credential_id, public_key, backend,
                 attestation_format, hardware_backed, enrolled_at, revoked_at, code_hash,
                 attestation_detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                enrollment.device_id,
                enrollment.user,
                enrollment.credential_id,
                enrollment.public_key,
                enrollment.backend,
                enrollment.attestation_format,
                enrollment.hardware_backed,
                enrollment.enrolled_at,
                enrollment.revoked_at,
                enrollment.code_hash,
                enrollment.attestation_detail,
            ],
        )?;
        Ok(())
    }

    /// Revokes the user's active credential on the device: the one named
    /// `credential_id`, or with `None` whichever is active (a device that
    /// lost the id still knows the name). Returns the revoked enrollment;
    /// `None` when there is no such active credential.
    pub fn revoke(
        &self,
        device_id: &str,
        user: &str,
        credential_id: Option<&str>,
        now: i64,
    ) -> Result<Option<Enrollment>, StoreError> {
        let Some(mut active) = self.active_enrollment(device_id, user)? else {
            return Ok(None);
        };
        if credential_id.is_some_and(|id| id != active.credential_id) {
            return Ok(None);
        }
        let updated = self.conn.execute(
            "UPDATE enrollments SET revoked_at = ?2
             WHERE credential_id = ?1 AND revoked_at IS NULL",
            params![active.credential_id, now],
        )?;
        if updated != 1 {
            return Ok(None);
        }
        active.revoked_at = Some(now);
        Ok(Some(active))
    }
}

impl Db<'_> {
    /// Removes a device: its enrollments (counting those still active)
    /// and its record. Returns the active ones, or None for no such
    /// device.
    pub fn delete_device(&self, device_id: &str) -> Result<Option<u32>, StoreError> {
        if self.device(device_id)?.is_none() {
            return Ok(None);
        }
        let active: i64 = self.conn.query_row(
            "SELECT count(*) FROM enrollments WHERE device_id = ?1 AND revoked_at IS NULL",
            params![device_id],
            |r| r.get(0),
        )?;
        // Everything that names the device goes with it (the foreign keys
        // would refuse the delete otherwise).
        for table in ["enrollments", "device_integrity", "integrity_requests"] {
            self.conn.execute(
                &format!("DELETE FROM {table} WHERE device_id = ?1"),
                params![device_id],
            )?;
        }
        self.conn.execute(
            "DELETE FROM devices WHERE device_id = ?1",
            params![device_id],
        )?;
        Ok(Some(u32::try_from(active).unwrap_or(u32::MAX)))
    }
}

/// RFC 4648 base32, lowercase: readable, case-insensitive-safe identifiers.
const ID_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// `prefix` followed by `len` random base32 characters (5 bits each).
pub fn random_id(prefix: &str, len: usize) -> Result<String, StoreError> {
    let mut random = vec![0u8; len];
    getrandom::fill(&mut random).map_err(StoreError::Random)?;
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    // 256 is a multiple of 32, so the low five bits are unbiased.
    id.extend(
        random
            .iter()
            .map(|byte| char::from(ID_ALPHABET[usize::from(byte & 0x1f)])),
    );
    Ok(id)
}

/// A new device id: `dev-` and 20 base32 characters (100 bits).
pub fn new_device_id() -> Result<String, StoreError> {
    random_id("dev-", 20)
}

/// A new credential id: `cred-` and 24 base32 characters (120 bits).
pub fn new_credential_id() -> Result<String, StoreError> {
    random_id("cred-", 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("portal.db")).unwrap();
        (dir, store)
    }

    fn device(id: &str) -> Device {
        Device {
            device_id: id.into(),
            public_key: vec![1, 2, 3],
            name: "kiosk".into(),
            registered_at: NOW,
            tpm: None,
            attestation_detail: String::new(),
        }
    }

    fn enrollment(device_id: &str, user: &str, credential_id: &str) -> Enrollment {
        Enrollment {
            device_id: device_id.into(),
            user: user.into(),
            credential_id: credential_id.into(),
            public_key: vec![4, 5, 6],
            backend: "soft".into(),
            attestation_format: "none".into(),
            hardware_backed: false,
            enrolled_at: NOW,
            revoked_at: None,
            code_hash: None,
            attestation_detail: "no attestation".into(),
        }
    }

    #[test]
    fn schema_is_versioned_and_durable() {
        let (dir, store) = store();
        let version: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        drop(store);
        // Reopening an up-to-date database keeps it.
        let store = Store::open(&dir.path().join("portal.db")).unwrap();
        store.db().set_public_url("http://127.0.0.1:1").unwrap();
        assert_eq!(
            store.db().public_url().unwrap().as_deref(),
            Some("http://127.0.0.1:1")
        );
    }

    /// A database as version 1 or 2 of the portal left it.
    fn old_database(path: &Path, version: i64) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        if version >= 2 {
            conn.execute_batch(MIGRATE_V1_TO_V2).unwrap();
        }
        conn.pragma_update(None, "user_version", version).unwrap();
        conn
    }

    /// Whether `needle` appears in any of the database's files.
    fn files_contain(path: &Path, needle: &str) -> Vec<PathBuf> {
        std::iter::once(path.to_path_buf())
            .chain(sqlite_side_files(path))
            .filter(|file| {
                std::fs::read(file).is_ok_and(|bytes| {
                    bytes
                        .windows(needle.len())
                        .any(|window| window == needle.as_bytes())
                })
            })
            .collect()
    }

    #[test]
    fn integrity_state_and_requests_are_kept_per_device() {
        let (_dir, store) = store();
        let db = store.db();
        db.insert_device(&device("dev-i")).unwrap();
        assert_eq!(db.integrity("dev-i").unwrap(), None);
        let record = IntegrityRecord {
            device_id: "dev-i".into(),
            level: 2,
            summary: "HSI:2 (1 of 15 checks fail: org.fleetkey.Lsm)".into(),
            tpm_verified: true,
            report_digest: "ab".repeat(32),
            exceptions: "org.fleetkey.Iommu".into(),
            verified_at: NOW,
            occasion: "activation".into(),
        };
        db.set_integrity(&record).unwrap();
        assert_eq!(db.integrity("dev-i").unwrap(), Some(record.clone()));
        let later = IntegrityRecord {
            level: 3,
            verified_at: NOW + 5,
            occasion: "on-demand".into(),
            ..record
        };
        db.set_integrity(&later).unwrap();
        assert_eq!(db.integrity("dev-i").unwrap(), Some(later));
        assert_eq!(db.integrity_request("dev-i").unwrap(), None);
        db.request_integrity("dev-i", NOW).unwrap();
        db.request_integrity("dev-i", NOW + 1).unwrap();
        assert_eq!(db.integrity_request("dev-i").unwrap(), Some(NOW + 1));
        db.clear_integrity_request("dev-i").unwrap();
        assert_eq!(db.integrity_request("dev-i").unwrap(), None);
        // Only for registered devices.
        assert!(db.request_integrity("dev-none", NOW).is_err());
        // A device deleted (deactivated) takes its integrity rows along.
        db.request_integrity("dev-i", NOW).unwrap();
        assert_eq!(db.delete_device("dev-i").unwrap(), Some(0));
        assert_eq!(db.integrity("dev-i").unwrap(), None);
        assert_eq!(db.integrity_request("dev-i").unwrap(), None);
    }

    #[test]
    fn a_version_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portal.db");
        let code = ActivationCode::generate().unwrap();
        {
            let conn = old_database(&path, 1);
            conn.execute(
                "INSERT INTO codes VALUES (?1, 'device', NULL, 1, 2, 1, 'dev-a')",
                [code.compact()],
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO devices VALUES ('dev-a', x'01', 'old kiosk', 1);
                 INSERT INTO enrollments VALUES ('dev-a', 'alice', 'cred-1', x'02', 'soft',
                     'none', 0, 1, NULL, NULL);",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let version: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let old = store.db().device("dev-a").unwrap().unwrap();
        assert_eq!((old.name.as_str(), old.tpm.as_ref()), ("old kiosk", None));
        assert_eq!(old.attestation_detail, "");
        let enrollment = store
            .db()
            .active_enrollment("dev-a", "alice")
            .unwrap()
            .unwrap();
        assert_eq!(enrollment.attestation_detail, "");
        assert_eq!(enrollment.code_hash, None);
        let used = store.db().code(&code).unwrap().unwrap();
        assert_eq!(used.used_by_device.as_deref(), Some("dev-a"));
        // The new columns and table work on the migrated database.
        let identity = TpmIdentity {
            ak_public: vec![1],
            ak_name: vec![2],
            ek_public: vec![3],
            ek_certificate: Vec::new(),
            ek_certificate_status: EkCertificateStatus::Absent,
            ek_certificate_anchor: None,
            verified_at: NOW,
        };
        store
            .db()
            .insert_device(&Device {
                tpm: Some(identity.clone()),
                attestation_detail: "bound".into(),
                ..device("dev-b")
            })
            .unwrap();
        assert_eq!(
            store.db().device("dev-b").unwrap().unwrap().tpm,
            Some(identity.clone())
        );
        let hash = store.db().code_hash(&code);
        let challenge = PendingTpmChallenge {
            code_hash: hash,
            device_public_key: vec![9],
            device_name: "new".into(),
            secret_sha256: vec![0; 32],
            identity,
        };
        store.db().put_tpm_challenge(&challenge).unwrap();
        store.db().put_tpm_challenge(&challenge).unwrap();
        assert_eq!(
            store.db().tpm_challenge(&hash, &[9]).unwrap(),
            Some(challenge)
        );
        assert_eq!(
            store.db().delete_tpm_challenges(&hash, Some(&[9])).unwrap(),
            1
        );
        drop(store);
        // Opening again does not migrate twice.
        Store::open(&path).unwrap();
    }

    #[test]
    fn a_version_2_database_keeps_its_codes_but_not_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portal.db");
        let unused = ActivationCode::generate().unwrap();
        let redeemed = ActivationCode::generate().unwrap();
        let pending = ActivationCode::generate().unwrap();
        let now = fleetkey_proto::time::now_unix();
        {
            let conn = old_database(&path, 2);
            conn.execute(
                "INSERT INTO codes VALUES (?1, 'user', 'alice', ?2, ?3, NULL, NULL)",
                params![unused.compact(), now, now + 600],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO codes VALUES (?1, 'user', 'bob', ?2, ?3, ?2, 'dev-a')",
                params![redeemed.compact(), now, now + 600],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO codes VALUES (?1, 'device', NULL, ?2, ?3, NULL, NULL)",
                params![pending.compact(), now, now + 600],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO devices (device_id, public_key, name, registered_at)
                 VALUES ('dev-a', x'01', 'kiosk', 1)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO enrollments VALUES ('dev-a', 'bob', 'cred-1', x'02', 'soft',
                     'none', 0, 1, NULL, ?1, 'no attestation')",
                [redeemed.compact()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO tpm_challenges VALUES (?1, x'09', 'tpm box', zeroblob(32), x'01',
                     x'02', x'03', x'', 'absent', NULL, 1)",
                [pending.compact()],
            )
            .unwrap();
            // The old portal's text is on disk (in the WAL or the file).
            assert!(!files_contain(&path, unused.compact()).is_empty());
        }
        let store = Store::open(&path).unwrap();
        // Every code still works as before: unused, used, pending.
        let record = store.db().code(&unused).unwrap().unwrap();
        assert_eq!(record.state(now), CodeState::Usable);
        assert_eq!(record.user.as_deref(), Some("alice"));
        let record = store.db().code(&redeemed).unwrap().unwrap();
        assert!(matches!(record.state(now), CodeState::Used { .. }));
        let enrollment = store
            .db()
            .enrollment_by_code(&store.db().code_hash(&redeemed))
            .unwrap()
            .unwrap();
        assert_eq!(enrollment.credential_id, "cred-1");
        let hash = store.db().code_hash(&pending);
        assert!(store.db().tpm_challenge(&hash, &[9]).unwrap().is_some());
        // And no file holds a code's text any more, in any of its forms.
        for code in [&unused, &redeemed, &pending] {
            for form in [code.compact().to_string(), code.to_string()] {
                assert_eq!(files_contain(&path, &form), Vec::<PathBuf>::new(), "{form}");
            }
        }
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    /// A version-5 database (before replacing codes and migrations) gains
    /// them on open; its codes read as replacing nothing, and its devices
    /// can be migrated.
    #[test]
    fn a_version_5_database_is_migrated_to_6() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portal.db");
        let code = ActivationCode::generate().unwrap();
        {
            let mut conn = old_database(&path, 2);
            // As `Store::migrate` runs them: tables are replaced.
            conn.pragma_update(None, "foreign_keys", false).unwrap();
            let key = CodeKey::load_or_create(&key_path(&path)).unwrap();
            let tx = conn.transaction().unwrap();
            migrate_v2_to_v3(&tx, &key).unwrap();
            crate::login::migrate_v3_to_v4(&tx).unwrap();
            migrate_v4_to_v5(&tx).unwrap();
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)",
                params![SETTING_CODE_KEY_CHECK, key.check_value()],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO codes VALUES (?1, 'user', 'alice', ?2, ?3, NULL, NULL)",
                params![key.hash(&code), NOW, NOW + 600],
            )
            .unwrap();
            tx.execute_batch(
                "INSERT INTO devices (device_id, public_key, name, registered_at)
                     VALUES ('dev-a', x'01', 'kiosk', 1);
                 INSERT INTO enrollments (device_id, user, credential_id, public_key, backend,
                     attestation_format, hardware_backed, enrolled_at)
                     VALUES ('dev-a', 'bob', 'cred-1', x'02', 'soft', 'none', 0, 1);
                 PRAGMA user_version = 5;",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        let version: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 6);
        let record = store.db().code(&code).unwrap().unwrap();
        assert_eq!(record.user.as_deref(), Some("alice"));
        assert_eq!(record.replaces_credential, None);
        let started = store
            .immediate(|db| crate::migrate::start(db, "dev-a", NOW + 60, NOW + 60, false, NOW))
            .unwrap();
        assert_eq!(started.codes.len(), 1);
        assert_eq!(
            started.codes[0].1.replaces_credential.as_deref(),
            Some("cred-1")
        );
    }

    #[test]
    fn the_code_key_must_be_the_databases_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portal.db");
        let key = key_path(&path);
        let (code, _) = {
            let mut store = Store::open(&path).unwrap();
            let issued = store.issue_code(CodeKind::Device, None, 600, NOW).unwrap();
            (issued.code, issued.record)
        };
        let original = std::fs::read(&key).unwrap();
        // Without its key the database is refused, not given a new key.
        std::fs::remove_file(&key).unwrap();
        let error = Store::open(&path).unwrap_err();
        assert!(
            matches!(error, StoreError::Key(KeyError::Missing(_))),
            "{error}"
        );
        assert!(!key.exists());
        // Another database's key is refused.
        std::fs::write(&key, [7u8; 32]).unwrap();
        let error = Store::open(&path).unwrap_err();
        assert!(
            matches!(error, StoreError::Key(KeyError::Mismatch(_))),
            "{error}"
        );
        // Its own key, restored with loose permissions, works and is narrowed.
        std::fs::write(&key, &original).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let store = Store::open(&path).unwrap();
        assert!(store.db().code(&code).unwrap().is_some());
        let mode = std::fs::metadata(&key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let (dir, store) = store();
        store
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        let error = Store::open(&dir.path().join("portal.db")).unwrap_err();
        assert!(
            matches!(error, StoreError::TooNew { found, .. } if found == SCHEMA_VERSION + 1),
            "{error}"
        );
        assert!(error.to_string().contains("newer fleetkey-portal"));
    }

    #[test]
    fn foreign_database_and_missing_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::Foreign(_))));
        let missing = dir.path().join("missing.db");
        assert!(matches!(
            Store::open_existing(&missing),
            Err(StoreError::Missing(_))
        ));
        assert!(!missing.exists());
    }

    #[test]
    fn code_lifecycle_and_single_use() {
        let (_dir, mut store) = store();
        let IssuedCode { code, record } =
            store.issue_code(CodeKind::Device, None, 600, NOW).unwrap();
        let read = store.db().code(&code).unwrap().unwrap();
        assert_eq!(read, record);
        assert_eq!(read.expires_at, NOW + 600);
        assert_eq!(read.state(NOW), CodeState::Usable);

        assert!(
            store
                .db()
                .mark_code_used(&record.code_hash, "dev-a", NOW + 5)
                .unwrap()
        );
        // Single use: a second redemption does not take.
        assert!(
            !store
                .db()
                .mark_code_used(&record.code_hash, "dev-b", NOW + 6)
                .unwrap()
        );
        let used = store.db().code(&code).unwrap().unwrap();
        assert_eq!(
            used.state(NOW + 6),
            CodeState::Used {
                at: NOW + 5,
                by_device: Some("dev-a".into())
            }
        );
        // A used code stays "used" after its expiry.
        assert!(matches!(used.state(NOW + 10_000), CodeState::Used { .. }));
        let never_issued = ActivationCode::generate().unwrap();
        assert!(store.db().code(&never_issued).unwrap().is_none());
    }

    #[test]
    fn codes_expire_at_their_expiry() {
        let (_dir, mut store) = store();
        let record = store
            .issue_code(CodeKind::Device, None, 1, NOW)
            .unwrap()
            .record;
        assert_eq!(record.state(NOW), CodeState::Usable);
        assert_eq!(record.state(NOW + 1), CodeState::Expired { at: NOW + 1 });
        assert_eq!(record.state(NOW + 100), CodeState::Expired { at: NOW + 1 });
    }

    #[test]
    fn kinds_and_users_are_kept() {
        let (_dir, mut store) = store();
        let user = store
            .issue_code(CodeKind::User, Some("alice"), 60, NOW)
            .unwrap();
        let device = store
            .issue_code(CodeKind::Device, Some("front desk"), 60, NOW)
            .unwrap();
        let user_record = user.record.clone();
        let user = store.db().code(&user.code).unwrap().unwrap();
        let device = store.db().code(&device.code).unwrap().unwrap();
        assert_eq!(
            (user.kind, user.user.as_deref()),
            (CodeKind::User, Some("alice"))
        );
        assert_eq!(
            (device.kind, device.user.as_deref()),
            (CodeKind::Device, Some("front desk"))
        );
        // An add-user code without a user is refused by the schema.
        let code = ActivationCode::generate().unwrap();
        assert!(
            store
                .db()
                .insert_code(&CodeRecord::new(
                    store.db().code_hash(&code),
                    CodeKind::User,
                    None,
                    NOW,
                    60
                ))
                .is_err()
        );
        // Inserting the same code twice reports the collision.
        assert!(!store.db().insert_code(&user_record).unwrap());
    }

    #[test]
    fn one_active_enrollment_per_device_and_user() {
        let (_dir, store) = store();
        store.db().insert_device(&device("dev-a")).unwrap();
        store.db().insert_device(&device("dev-b")).unwrap();
        let db = store.db();
        db.insert_enrollment(&enrollment("dev-a", "alice", "cred-1"))
            .unwrap();
        // Same user on another device, another user on the same device: fine.
        db.insert_enrollment(&enrollment("dev-b", "alice", "cred-2"))
            .unwrap();
        db.insert_enrollment(&enrollment("dev-a", "bob", "cred-3"))
            .unwrap();
        // A second active one for (dev-a, alice) is refused.
        assert!(
            db.insert_enrollment(&enrollment("dev-a", "alice", "cred-4"))
                .is_err()
        );
        // Credential ids are unique.
        assert!(
            db.insert_enrollment(&enrollment("dev-a", "carol", "cred-1"))
                .is_err()
        );
        assert_eq!(db.active_enrollments(Some("alice")).unwrap().len(), 2);
        assert_eq!(db.active_enrollments(None).unwrap().len(), 3);

        // Revoking frees the slot; the revoked row stays as history.
        assert!(
            db.revoke("dev-a", "alice", Some("cred-2"), NOW)
                .unwrap()
                .is_none()
        );
        let revoked = db
            .revoke("dev-a", "alice", Some("cred-1"), NOW)
            .unwrap()
            .unwrap();
        assert_eq!(revoked.revoked_at, Some(NOW));
        assert!(
            db.revoke("dev-a", "alice", Some("cred-1"), NOW)
                .unwrap()
                .is_none()
        );
        // By name only: whichever credential bob has on dev-a.
        let revoked = db.revoke("dev-a", "bob", None, NOW).unwrap().unwrap();
        assert_eq!(revoked.credential_id, "cred-3");
        assert!(db.revoke("dev-a", "bob", None, NOW).unwrap().is_none());
        assert!(db.active_enrollment("dev-a", "alice").unwrap().is_none());
        db.insert_enrollment(&enrollment("dev-a", "alice", "cred-4"))
            .unwrap();
        assert_eq!(
            db.active_enrollment("dev-a", "alice")
                .unwrap()
                .unwrap()
                .credential_id,
            "cred-4"
        );
        let devices = db.devices().unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].active_users, 1, "alice again; bob revoked");
        assert_eq!(devices[1].active_users, 1);
    }

    #[test]
    fn enrollment_needs_a_registered_device() {
        let (_dir, store) = store();
        assert!(
            store
                .db()
                .insert_enrollment(&enrollment("dev-nowhere", "alice", "cred-1"))
                .is_err()
        );
    }

    #[test]
    fn immediate_rolls_back_on_error() {
        let (_dir, mut store) = store();
        let result: Result<(), StoreError> = store.immediate(|db| {
            db.insert_device(&device("dev-a"))?;
            Err(StoreError::Corrupt {
                what: "test",
                value: String::new(),
            })
        });
        assert!(result.is_err());
        assert!(store.db().device("dev-a").unwrap().is_none());
        store
            .immediate(|db| db.insert_device(&device("dev-a")))
            .unwrap();
        assert!(store.db().device("dev-a").unwrap().is_some());
    }

    #[test]
    fn ids_have_their_prefix_and_differ() {
        let a = new_device_id().unwrap();
        let b = new_device_id().unwrap();
        assert!(a.starts_with("dev-") && a.len() == 24);
        assert_ne!(a, b);
        let c = new_credential_id().unwrap();
        assert!(c.starts_with("cred-") && c.len() == 29);
        assert!(c[5..].bytes().all(|b| ID_ALPHABET.contains(&b)));
    }
}
