//! The portal's persistent state, in SQLite: settings, activation codes,
//! registered devices and user enrollments.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so an
//! acknowledged registration or enrollment survives a crash or power cut.
//! Every redemption runs in one `BEGIN IMMEDIATE` transaction
//! ([`Store::immediate`]): the write lock is taken before the code is read,
//! so two devices racing for one code cannot both win.
//!
//! Schema version 2 (`PRAGMA user_version`; version 1 databases are
//! migrated on open):
//!
//! | table | columns |
//! | --- | --- |
//! | settings | key (PK), value — `public_url` is the URL put in QR codes |
//! | codes | code (compact form, PK), kind (`device`/`user`), user, created_at, expires_at, used_at, used_by_device |
//! | devices | device_id (PK), public_key (SPKI DER), name, registered_at; since v2: tpm_ak_public, tpm_ak_name, tpm_ek_public, tpm_ek_certificate, tpm_ek_certificate_status (`verified`/`not-checked`/`absent`), tpm_ek_certificate_anchor, tpm_verified_at (all NULL for devices without a verified TPM identity), attestation_detail |
//! | enrollments | device_id, user, credential_id (unique), public_key (SPKI DER), backend, attestation_format, hardware_backed, enrolled_at, revoked_at, code (the code redeemed); since v2: attestation_detail |
//! | tpm_challenges (v2) | code, device_public_key (PK together), device_name, secret_sha256 (never the secret), ak_public, ak_name, ek_public, ek_certificate, ek_certificate_status, ek_certificate_anchor, created_at — credential challenges waiting for CompleteTpmActivation |
//!
//! A partial unique index allows only one active (not revoked) enrollment
//! per (device_id, user). Times are Unix seconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetkey_proto::ActivationCode;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 2;
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
    /// Canonical compact form (16 characters, no hyphens).
    pub code: String,
    pub kind: CodeKind,
    /// The user an add-user code is bound to (optional on device codes,
    /// where it is only a hint shown to the person activating).
    pub user: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub used_by_device: Option<String>,
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
    /// A new unused code of `kind`, valid for `ttl` seconds from `now`.
    pub fn new(
        code: &ActivationCode,
        kind: CodeKind,
        user: Option<&str>,
        now: i64,
        ttl: i64,
    ) -> Self {
        Self {
            code: code.compact().to_string(),
            kind,
            user: user.map(str::to_string),
            created_at: now,
            expires_at: now.saturating_add(ttl),
            used_at: None,
            used_by_device: None,
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
            code: row.get("code")?,
            kind: row.get("kind")?,
            user: row.get("user")?,
            created_at: row.get("created_at")?,
            expires_at: row.get("expires_at")?,
            used_at: row.get("used_at")?,
            used_by_device: row.get("used_by_device")?,
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
    /// Compact form.
    pub code: String,
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
            code: row.get("code")?,
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
    /// The add-user code this enrollment redeemed.
    pub code: Option<String>,
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
            code: row.get("code")?,
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
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating it (and its schema) if needed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut store = Self {
            conn,
            path: path.to_path_buf(),
        };
        store.configure().map_err(|error| match error {
            StoreError::Sqlite(source) => StoreError::Open {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })?;
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

    fn configure(&mut self) -> Result<(), StoreError> {
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                path = %self.path.display(),
                journal_mode = %mode,
                "the portal database could not switch to WAL mode"
            );
        }
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.conn.pragma_update(None, "foreign_keys", true)?;
        self.migrate()
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
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
        // From version 1 (new or existing) up, in the same transaction.
        tx.execute_batch(MIGRATE_V1_TO_V2)?;
        if version > 0 {
            tracing::info!(path = %path.display(), from = version, to = SCHEMA_VERSION, "portal database migrated");
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    /// Queries outside a transaction (each statement on its own).
    pub fn db(&self) -> Db<'_> {
        Db { conn: &self.conn }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction: committed when `f`
    /// returns `Ok`, rolled back otherwise.
    pub fn immediate<T, E>(&mut self, f: impl FnOnce(&Db<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let value = f(&Db { conn: &tx })?;
        tx.commit().map_err(StoreError::from)?;
        Ok(value)
    }

    /// Issues a new code of `kind`, valid for `ttl` seconds from `now`.
    pub fn issue_code(
        &mut self,
        kind: CodeKind,
        user: Option<&str>,
        ttl: i64,
        now: i64,
    ) -> Result<CodeRecord, StoreError> {
        // 75 random bits make a collision all but impossible; retrying on
        // one costs nothing.
        const TRIES: u32 = 8;
        for _ in 0..TRIES {
            let code = ActivationCode::generate().map_err(StoreError::Random)?;
            let record = CodeRecord::new(&code, kind, user, now, ttl);
            if self.db().insert_code(&record)? {
                return Ok(record);
            }
        }
        Err(StoreError::NoFreeCode(TRIES))
    }
}

/// Queries and updates, inside or outside a transaction.
pub struct Db<'c> {
    conn: &'c Connection,
}

impl Db<'_> {
    /// A setting's value.
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

    /// Inserts a code; `false` when that code already exists.
    pub fn insert_code(&self, record: &CodeRecord) -> Result<bool, StoreError> {
        let inserted = self.conn.execute(
            "INSERT INTO codes (code, kind, user, created_at, expires_at, used_at, used_by_device)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (code) DO NOTHING",
            params![
                record.code,
                record.kind.as_str(),
                record.user,
                record.created_at,
                record.expires_at,
                record.used_at,
                record.used_by_device,
            ],
        )?;
        Ok(inserted == 1)
    }

    /// The code with this compact form.
    pub fn code(&self, compact: &str) -> Result<Option<CodeRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM codes WHERE code = ?1",
                [compact],
                CodeRecord::from_row,
            )
            .optional()?)
    }

    /// Marks an unused code used by `device_id`; `false` if it was already
    /// used (or does not exist).
    pub fn mark_code_used(
        &self,
        compact: &str,
        device_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let updated = self.conn.execute(
            "UPDATE codes SET used_at = ?2, used_by_device = ?3
             WHERE code = ?1 AND used_at IS NULL",
            params![compact, now, device_id],
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
            "INSERT OR REPLACE INTO tpm_challenges (code, device_public_key, device_name,
                 secret_sha256, ak_public, ak_name, ek_public, ek_certificate,
                 ek_certificate_status, ek_certificate_anchor, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                challenge.code,
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
        compact: &str,
        device_public_key: &[u8],
    ) -> Result<Option<PendingTpmChallenge>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM tpm_challenges WHERE code = ?1 AND device_public_key = ?2",
                params![compact, device_public_key],
                PendingTpmChallenge::from_row,
            )
            .optional()?)
    }

    /// Deletes the challenge for this code and device key, or with `None`
    /// every challenge for the code; returns how many were deleted.
    pub fn delete_tpm_challenges(
        &self,
        compact: &str,
        device_public_key: Option<&[u8]>,
    ) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM tpm_challenges
             WHERE code = ?1 AND (?2 IS NULL OR device_public_key = ?2)",
            params![compact, device_public_key],
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
    pub fn enrollment_by_code(&self, compact: &str) -> Result<Option<Enrollment>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT * FROM enrollments WHERE code = ?1",
                [compact],
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
                 attestation_format, hardware_backed, enrolled_at, revoked_at, code,
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
                enrollment.code,
                enrollment.attestation_detail,
            ],
        )?;
        Ok(())
    }

    /// Revokes the user's active credential `credential_id` on the device;
    /// `false` when there is no such active credential.
    pub fn revoke(
        &self,
        device_id: &str,
        user: &str,
        credential_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let updated = self.conn.execute(
            "UPDATE enrollments SET revoked_at = ?4
             WHERE device_id = ?1 AND user = ?2 AND credential_id = ?3 AND revoked_at IS NULL",
            params![device_id, user, credential_id, now],
        )?;
        Ok(updated == 1)
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
            code: None,
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

    #[test]
    fn a_version_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portal.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute_batch(
                "INSERT INTO codes VALUES ('0000000000000000', 'device', NULL, 1, 2, 1, 'dev-a');
                 INSERT INTO devices VALUES ('dev-a', x'01', 'old kiosk', 1);
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
        let challenge = PendingTpmChallenge {
            code: "0000000000000000".into(),
            device_public_key: vec![9],
            device_name: "new".into(),
            secret_sha256: vec![0; 32],
            identity,
        };
        store.db().put_tpm_challenge(&challenge).unwrap();
        store.db().put_tpm_challenge(&challenge).unwrap();
        assert_eq!(
            store.db().tpm_challenge("0000000000000000", &[9]).unwrap(),
            Some(challenge)
        );
        assert_eq!(
            store
                .db()
                .delete_tpm_challenges("0000000000000000", Some(&[9]))
                .unwrap(),
            1
        );
        drop(store);
        // Opening again does not migrate twice.
        Store::open(&path).unwrap();
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
            matches!(error, StoreError::TooNew { found: 3, .. }),
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
        let record = store.issue_code(CodeKind::Device, None, 600, NOW).unwrap();
        assert!(ActivationCode::parse(&record.code).is_ok());
        let read = store.db().code(&record.code).unwrap().unwrap();
        assert_eq!(read, record);
        assert_eq!(read.expires_at, NOW + 600);
        assert_eq!(read.state(NOW), CodeState::Usable);

        assert!(
            store
                .db()
                .mark_code_used(&record.code, "dev-a", NOW + 5)
                .unwrap()
        );
        // Single use: a second redemption does not take.
        assert!(
            !store
                .db()
                .mark_code_used(&record.code, "dev-b", NOW + 6)
                .unwrap()
        );
        let used = store.db().code(&record.code).unwrap().unwrap();
        assert_eq!(
            used.state(NOW + 6),
            CodeState::Used {
                at: NOW + 5,
                by_device: Some("dev-a".into())
            }
        );
        // A used code stays "used" after its expiry.
        assert!(matches!(used.state(NOW + 10_000), CodeState::Used { .. }));
        assert!(store.db().code("0000000000000000").unwrap().is_none());
    }

    #[test]
    fn codes_expire_at_their_expiry() {
        let (_dir, mut store) = store();
        let record = store.issue_code(CodeKind::Device, None, 1, NOW).unwrap();
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
                .insert_code(&CodeRecord::new(&code, CodeKind::User, None, NOW, 60))
                .is_err()
        );
        // Inserting the same code twice reports the collision.
        assert!(!store.db().insert_code(&user).unwrap());
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
        assert!(!db.revoke("dev-a", "alice", "cred-2", NOW).unwrap());
        assert!(db.revoke("dev-a", "alice", "cred-1", NOW).unwrap());
        assert!(!db.revoke("dev-a", "alice", "cred-1", NOW).unwrap());
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
        assert_eq!(devices[0].active_users, 2);
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
