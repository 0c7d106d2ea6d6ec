//! The audit log: an append-only record of security events in the state
//! directory, one JSON object per line, each line chained to the one
//! before it by a SHA-256 hash, so that an edited, removed or reordered
//! entry breaks the chain (`verify`).
//!
//! Entries name users, devices and challenges; never a PIN, a PUK, a
//! key or any other secret (the event types below have no field that
//! could hold one).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file name of the log inside the state directory.
pub const FILE_NAME: &str = "audit.log";

/// The `prev` of the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation for the chain hash.
const HASH_CONTEXT: &[u8] = b"fleetkey-audit-v1\n";

/// One security event. Serialized with a `kind` tag, for example
/// `{"kind":"user_added","user":"alice","backend":"tpm","hardware_backed":true}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuditEvent {
    DeviceActivated {
        device_id: String,
        portal: String,
    },
    DeviceDeactivated {
        device_id: String,
    },
    UserAdded {
        user: String,
        backend: String,
        hardware_backed: bool,
    },
    UserRemoved {
        user: String,
    },
    Signed {
        user: String,
    },
    PinWrong {
        user: String,
        attempts_left: u32,
    },
    PinLocked {
        user: String,
    },
    PinChanged {
        user: String,
    },
    Approved {
        user: String,
        challenge: String,
    },
    Denied {
        user: String,
        challenge: String,
    },
    /// The number given on the device was not the one the portal showed:
    /// counted as a denial, and suspicious.
    NumberWrong {
        user: String,
        challenge: String,
    },
    /// An integrity check failed but the configuration lets it pass.
    IntegrityException {
        operation: String,
        check: String,
    },
    /// A PIN attempt refused by the TPM lockout budget before the TPM was
    /// asked (docs/tpm-lockout.md).
    TpmBudgetSpent {
        user: String,
        backend: String,
        tpm_counter: u32,
        tpm_max_tries: u32,
        retry_after_seconds: Option<u64>,
    },
    /// The TPM's dictionary-attack parameters set by `tpm provision`.
    TpmProvisioned {
        backend: String,
        max_tries: u32,
        recovery_seconds: u32,
        lockout_recovery_seconds: u32,
        users: u32,
        per_user: u32,
    },
    /// Activation or enrollment refused by the integrity gate.
    IntegrityRefused {
        operation: String,
        failing: Vec<String>,
    },
}

/// What is hashed: everything in a line but the two hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// 1 for the first entry, then one more per entry.
    pub seq: u64,
    /// Unix seconds.
    pub time: i64,
    /// The Unix user who asked for the operation, when one did.
    pub uid: Option<u32>,
    pub event: AuditEvent,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(flatten)]
    pub body: Body,
    /// The previous entry's `hash` (hex), or zeros for the first.
    pub prev: String,
    /// SHA-256 over the context, `prev` and the body's JSON (hex).
    pub hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot use the audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log line {line}: {problem}")]
    Broken { line: u64, problem: String },
}

fn chain_hash(prev: &str, body: &Body) -> Result<String, serde_json::Error> {
    let json = serde_json::to_vec(body)?;
    let mut hasher = Sha256::new();
    hasher.update(HASH_CONTEXT);
    hasher.update(prev.as_bytes());
    hasher.update(b"\n");
    hasher.update(&json);
    Ok(hex::encode(hasher.finalize()))
}

struct Head {
    file: File,
    seq: u64,
    hash: String,
}

/// The open log. Appends are serialized by a mutex and written with one
/// `write` each, then synced.
pub struct AuditLog {
    path: PathBuf,
    head: Mutex<Head>,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log at `path` and reads its last
    /// entry to continue the chain. The whole chain is not checked here;
    /// `verify` does that.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mut seq = 0;
        let mut hash = GENESIS.to_string();
        let reader = BufReader::new(File::open(path).map_err(io)?);
        for (index, line) in reader.lines().enumerate() {
            let line = line.map_err(io)?;
            if line.is_empty() {
                continue;
            }
            let entry: Entry = serde_json::from_str(&line).map_err(|e| AuditError::Broken {
                line: index as u64 + 1,
                problem: e.to_string(),
            })?;
            seq = entry.body.seq;
            hash = entry.hash;
        }
        Ok(Self {
            path: path.to_path_buf(),
            head: Mutex::new(Head { file, seq, hash }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event. A failure to write is logged and returned; the
    /// caller decides whether the operation goes on.
    pub fn append(&self, uid: Option<u32>, event: AuditEvent) -> Result<Entry, AuditError> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let body = Body {
            seq: head.seq + 1,
            time: fleetkey_proto::time::now_unix(),
            uid,
            event,
        };
        let broken = |e: serde_json::Error| AuditError::Broken {
            line: body.seq,
            problem: e.to_string(),
        };
        let hash = chain_hash(&head.hash, &body).map_err(broken)?;
        let entry = Entry {
            body: body.clone(),
            prev: head.hash.clone(),
            hash,
        };
        let mut line = serde_json::to_vec(&entry).map_err(broken)?;
        line.push(b'\n');
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        head.file.write_all(&line).map_err(io)?;
        head.file.sync_data().map_err(io)?;
        head.seq = entry.body.seq;
        head.hash = entry.hash.clone();
        Ok(entry)
    }

    /// Appends one event; a failure is logged, not returned. For events
    /// recorded after the operation they describe has happened.
    pub fn record(&self, uid: Option<u32>, event: AuditEvent) {
        if let Err(error) = self.append(uid, event) {
            tracing::error!(%error, "cannot write the audit log");
        }
    }
}

/// Checks a whole log: every line parses, the sequence numbers run 1, 2,
/// 3, ..., each `prev` is the hash of the line before and each `hash`
/// matches its line. Returns the entries.
pub fn verify(reader: impl BufRead) -> Result<Vec<Entry>, AuditError> {
    let mut entries = Vec::new();
    let mut prev = GENESIS.to_string();
    for (index, line) in reader.lines().enumerate() {
        let number = index as u64 + 1;
        let broken = |problem: String| AuditError::Broken {
            line: number,
            problem,
        };
        let line = line.map_err(|e| broken(e.to_string()))?;
        let entry: Entry = serde_json::from_str(&line).map_err(|e| broken(e.to_string()))?;
        if entry.body.seq != number {
            return Err(broken(format!(
                "sequence number {} where {number} was expected (an entry was removed or moved)",
                entry.body.seq
            )));
        }
        if entry.prev != prev {
            return Err(broken(
                "does not follow the entry before it (an entry was removed, moved or edited)"
                    .into(),
            ));
        }
        let hash = chain_hash(&entry.prev, &entry.body).map_err(|e| broken(e.to_string()))?;
        if hash != entry.hash {
            return Err(broken(
                "its content does not match its hash (edited)".into(),
            ));
        }
        prev = entry.hash.clone();
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(events: &[AuditEvent]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let log = AuditLog::open(&path).unwrap();
        for event in events {
            log.append(Some(1000), event.clone()).unwrap();
        }
        (dir, path)
    }

    fn events() -> Vec<AuditEvent> {
        ["alice", "bob", "carol"]
            .iter()
            .map(|u| AuditEvent::Signed {
                user: u.to_string(),
            })
            .collect()
    }

    fn verify_file(path: &Path) -> Result<Vec<Entry>, AuditError> {
        verify(BufReader::new(File::open(path).unwrap()))
    }

    #[test]
    fn a_written_log_verifies_and_reopening_continues_the_chain() {
        let (_dir, path) = log_with(&events());
        let log = AuditLog::open(&path).unwrap();
        let entry = log
            .append(None, AuditEvent::UserRemoved { user: "bob".into() })
            .unwrap();
        assert_eq!(entry.body.seq, 4);
        let entries = verify_file(&path).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[3], entry);
    }

    #[test]
    fn an_edited_entry_is_found() {
        let (_dir, path) = log_with(&events());
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"bob\"", "\"eve\"", 1)).unwrap();
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("edited"), "{err}");
    }

    #[test]
    fn a_removed_or_swapped_entry_is_found() {
        let (_dir, path) = log_with(&events());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        assert!(
            verify_file(&path)
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
        std::fs::write(&path, format!("{}\n{}\n{}\n", lines[0], lines[2], lines[1])).unwrap();
        assert!(
            verify_file(&path)
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
    }
}
