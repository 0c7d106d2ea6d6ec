//! Activation codes are stored as keyed hashes, never as text.
//!
//! The portal only ever compares a presented code with the ones it issued,
//! so the database holds HMAC-SHA256(code key, label || compact code) of
//! each code ([`CodeHash`]) and nothing from which a code can be read back.
//! The code key is 32 random bytes in its own file beside the database,
//! `portal.db.key` (mode 0600), made on first run. A copy of the database
//! alone (a backup, a leaked WAL) therefore reveals no usable code: 75
//! random bits per code cannot be searched without the key.
//!
//! The key file is written under a temporary name and linked into place,
//! so two processes opening a new database at once agree on one key, and a
//! crash never leaves a short key behind. The database records a check
//! value of its key (an HMAC of a fixed label), so a database opened with
//! another database's key file is refused instead of answering every code
//! with "unknown".

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fleetkey_proto::ActivationCode;
use hmac::{Hmac, KeyInit, Mac};
use rusqlite::ToSql;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use sha2::Sha256;

use crate::files::{PRIVATE_MODE, make_private, with_suffix};

/// Size of the code key, in bytes.
pub const KEY_LEN: usize = 32;
/// What is appended to the database's path to name its key file.
pub const KEY_FILE_SUFFIX: &str = ".key";
/// Domain separation of code hashes.
const CODE_LABEL: &[u8] = b"fleetkey-portal/code/v1\0";
/// Domain separation of the key's check value.
const CHECK_LABEL: &[u8] = b"fleetkey-portal/key-check/v1\0";

/// Why the code key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {action} the portal's code key {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the portal's code key {path} holds {found} bytes, not {KEY_LEN}; restore it from a backup"
    )]
    Length { path: PathBuf, found: usize },
    #[error(
        "the portal database has codes hashed with a key, but its key file {0} is missing; restore it from a backup (without it no issued code can be checked), or start a new database"
    )]
    Missing(PathBuf),
    #[error(
        "the code key {0} is not the key this portal database was made with; restore the database's own key file"
    )]
    Mismatch(PathBuf),
    #[error("the operating system's random generator failed: {0}")]
    Random(getrandom::Error),
    #[error("HMAC-SHA256 refused the code key")]
    Hmac,
}

/// The key file of the database at `db`: `db` with `.key` appended.
pub fn key_path(db: &Path) -> PathBuf {
    with_suffix(db, KEY_FILE_SUFFIX)
}

/// The keyed hash of one activation code: what the database stores.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeHash(pub [u8; 32]);

impl std::fmt::Debug for CodeHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CodeHash({})", hex::encode(&self.0[..4]))
    }
}

impl ToSql for CodeHash {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(&self.0[..]))
    }
}

impl FromSql for CodeHash {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let bytes = value.as_blob()?;
        <[u8; 32]>::try_from(bytes)
            .map(CodeHash)
            .map_err(|_| FromSqlError::InvalidBlobSize {
                expected_size: 32,
                blob_size: bytes.len(),
            })
    }
}

/// The secret that code hashes are keyed with.
#[derive(Clone)]
pub struct CodeKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeKey(..)")
    }
}

impl CodeKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<Self, KeyError> {
        // HMAC takes keys of any length; the error cannot happen.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(bytes).map_err(|_| KeyError::Hmac)?;
        Ok(Self { mac })
    }

    /// The hash of a code.
    pub fn hash(&self, code: &ActivationCode) -> CodeHash {
        self.hash_compact(code.compact())
    }

    /// The hash of a code's compact form (a migration reads those from old
    /// databases).
    pub fn hash_compact(&self, compact: &str) -> CodeHash {
        let mut mac = self.mac.clone();
        mac.update(CODE_LABEL);
        mac.update(compact.as_bytes());
        CodeHash(mac.finalize().into_bytes().into())
    }

    /// A value that identifies the key without revealing it, kept in the
    /// database to notice a key file that belongs to another database.
    pub fn check_value(&self) -> String {
        let mut mac = self.mac.clone();
        mac.update(CHECK_LABEL);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Reads the key file at `path`; `None` when there is none. A file
    /// that others could read is narrowed to 0600 first.
    pub fn load(path: &Path) -> Result<Option<Self>, KeyError> {
        make_private(path).map_err(|source| KeyError::Io {
            action: "protect",
            path: path.to_path_buf(),
            source,
        })?;
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KeyError::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let key = <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length {
            path: path.to_path_buf(),
            found: bytes.len(),
        })?;
        Self::from_bytes(&key).map(Some)
    }

    /// Reads the key file at `path`, or makes one (0600) when there is
    /// none. When two processes race, both end up with the one that was
    /// linked into place first.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        if let Some(key) = Self::load(path)? {
            return Ok(key);
        }
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(KeyError::Random)?;
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(KeyError::Random)?;
        let temporary = with_suffix(path, &format!(".new-{}", hex::encode(random)));
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::Io {
                action,
                path,
                source,
            }
        };
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(PRIVATE_MODE)
                .open(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()
        })();
        if let Err(error) = written {
            let _ = fs::remove_file(&temporary);
            return Err(io("write", &temporary)(error));
        }
        let linked = fs::hard_link(&temporary, path);
        let _ = fs::remove_file(&temporary);
        match linked {
            Ok(()) => {
                sync_parent(path).map_err(io("sync the directory of", path))?;
                tracing::info!(path = %path.display(), "made a new code key");
                Self::from_bytes(&bytes)
            }
            // Another process made it first: use theirs.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                Self::load(path)?.ok_or_else(|| KeyError::Missing(path.to_path_buf()))
            }
            Err(error) => Err(io("create", path)(error)),
        }
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fs::File::open(parent)?.sync_all(),
        _ => fs::File::open(".")?.sync_all(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn hashes_depend_on_key_and_code() {
        let a = CodeKey::from_bytes(&[1; KEY_LEN]).unwrap();
        let b = CodeKey::from_bytes(&[2; KEY_LEN]).unwrap();
        let code = ActivationCode::generate().unwrap();
        let other = ActivationCode::generate().unwrap();
        assert_eq!(a.hash(&code), a.hash_compact(code.compact()));
        assert_ne!(a.hash(&code), b.hash(&code));
        assert_ne!(a.hash(&code), a.hash(&other));
        assert_ne!(a.check_value(), b.check_value());
        assert_eq!(a.check_value().len(), 64);
    }

    #[test]
    fn the_key_file_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(&dir.path().join("portal.db"));
        assert!(CodeKey::load(&path).unwrap().is_none());
        let made = CodeKey::load_or_create(&path).unwrap();
        let metadata = fs::metadata(&path).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        assert_eq!(metadata.len(), KEY_LEN as u64);
        let again = CodeKey::load_or_create(&path).unwrap();
        assert_eq!(made.check_value(), again.check_value());
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        fs::write(&path, b"short").unwrap();
        assert!(matches!(
            CodeKey::load(&path),
            Err(KeyError::Length { found: 5, .. })
        ));
    }
}
