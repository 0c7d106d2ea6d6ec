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
use std::sync::{Arc, Mutex};

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
    /// The TPM's wrong-PIN counter reset by the daemon: the TPM has no
    /// lockout authorization, so anyone who can open it could do the same
    /// (docs/tpm-lockout.md). `tpm_counter` is the count before.
    TpmCounterReset {
        backend: String,
        tpm_counter: u32,
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
    /// A PIN was set anew with the PUK.
    PinUnblocked {
        user: String,
    },
    /// The log ended in a line torn by a crash; these bytes were cut off
    /// at the next start (and kept in `audit.log.torn`).
    TornEntryDropped {
        bytes: u64,
    },
    /// A user was enrolled again under the same name (`user reset`): new
    /// key and PIN; the portal revoked the old credential.
    UserReset {
        user: String,
        backend: String,
        hardware_backed: bool,
        old_credential_id: String,
        credential_id: String,
    },
}

/// What is hashed: everything in a line but the two hashes. The event's
/// `kind` and fields sit beside `seq`, `time` and `uid` (flattened).
/// Unknown fields are refused (by the event, which receives the fields
/// left over): a field added to a line would otherwise be dropped before
/// hashing and go unnoticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    /// 1 for the first entry, then one more per entry.
    pub seq: u64,
    /// Unix seconds.
    pub time: i64,
    /// The Unix user who asked for the operation, when one did.
    pub uid: Option<u32>,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    #[error("the audit log's head in state.db: {problem}")]
    Anchor { problem: String },
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
    /// Where the head is kept outside the log; None when the log is not
    /// anchored, or no longer reaches its anchor.
    anchor: Option<Arc<dyn Anchor>>,
    /// Entries written since the last flush (not yet synced to disk nor
    /// anchored).
    dirty: bool,
}

/// How often written entries are synced and anchored (group commit): one
/// fsync and one state.db write per interval, not per entry, so an
/// audited `sign` does not wait for the disk (docs/audit.md).
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Keeps the log's head (sequence number and hash of the last entry)
/// outside the log, in the state database, so that removing the last
/// entries (which leaves a valid chain) is found.
pub trait Anchor: Send + Sync {
    fn load(&self) -> Result<Option<(u64, String)>, String>;
    fn store(&self, seq: u64, hash: &str) -> Result<(), String>;
}

/// Where a torn last line is kept when it is cut off.
pub const TORN_FILE_NAME: &str = "audit.log.torn";

/// Cuts off bytes after the last newline (a line torn by a crash during
/// an append) and appends them to `audit.log.torn` beside the log.
/// Returns how many bytes were cut.
fn cut_torn_tail(path: &Path) -> std::io::Result<Option<u64>> {
    let data = match std::fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if data.is_empty() || data.ends_with(b"\n") {
        return Ok(None);
    }
    let keep = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let torn_path = path.with_file_name(TORN_FILE_NAME);
    let mut torn = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&torn_path)?;
    torn.write_all(&data[keep..])?;
    torn.write_all(b"\n")?;
    torn.sync_all()?;
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(keep as u64)?;
    file.sync_all()?;
    Ok(Some((data.len() - keep) as u64))
}

/// The open log. Appends are serialized by a mutex and written with one
/// `write` each, then synced.
pub struct AuditLog {
    path: PathBuf,
    head: Mutex<Head>,
    /// Where the head is kept (state.db), for `verify`.
    anchor: Option<Arc<dyn Anchor>>,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log at `path` and reads its last
    /// entry to continue the chain. The whole chain is not checked here;
    /// `verify` does that. No head anchor: see `open_anchored`.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Self::open_with(path, None)
    }

    /// Opens the log and keeps its head (the last entry's sequence number
    /// and hash) in `anchor` after each append, so that removing the last
    /// entries is found by `verify_anchored`.
    ///
    /// A torn last line (a crash in the middle of an append: bytes after
    /// the last newline) is cut off, kept in `audit.log.torn`, and the cut
    /// recorded as a `torn_entry_dropped` entry. A log that does not reach
    /// the anchored head (its last entries were removed) or disagrees with
    /// it is not anchored again: the daemon starts and goes on appending,
    /// but the anchor stays where it was, so `verify` keeps failing until
    /// an administrator moves the log aside (docs/audit.md).
    pub fn open_anchored(path: &Path, anchor: Arc<dyn Anchor>) -> Result<Self, AuditError> {
        Self::open_with(path, Some(anchor))
    }

    fn open_with(path: &Path, anchor: Option<Arc<dyn Anchor>>) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        let torn = cut_torn_tail(path).map_err(io)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let anchored = match &anchor {
            Some(anchor) => anchor
                .load()
                .map_err(|problem| AuditError::Anchor { problem })?,
            None => None,
        };
        let mut seq = 0;
        let mut hash = GENESIS.to_string();
        // Whether the log holds the anchored entry, unchanged.
        let mut reaches_anchor = anchored.is_none();
        let reader = BufReader::new(File::open(path).map_err(io)?);
        for (index, line) in reader.lines().enumerate() {
            let line = line.map_err(io)?;
            match serde_json::from_str::<Entry>(&line) {
                Ok(entry) => {
                    if let Some((anchor_seq, anchor_hash)) = &anchored
                        && entry.body.seq == *anchor_seq
                    {
                        reaches_anchor = entry.hash == *anchor_hash;
                    }
                    seq = entry.body.seq;
                    hash = entry.hash;
                }
                Err(error) => {
                    // Not torn (it ends in a newline): damaged or edited.
                    // The daemon still starts; `verify` reports it.
                    tracing::error!(line = index + 1, %error, path = %path.display(), "the audit log has a damaged line; `fleetkeyctl audit verify` reports it");
                }
            }
        }
        if !reaches_anchor {
            tracing::error!(path = %path.display(), "the audit log does not reach the head recorded in state.db: entries were removed or changed; `fleetkeyctl audit verify` fails until the log is moved aside (docs/audit.md)");
        }
        let log = Self {
            path: path.to_path_buf(),
            head: Mutex::new(Head {
                file,
                seq,
                hash,
                anchor: anchor.clone().filter(|_| reaches_anchor),
                dirty: false,
            }),
            anchor,
        };
        if let Some(bytes) = torn {
            tracing::warn!(path = %path.display(), bytes, "the audit log ended in a torn line (a crash during an append); it was cut off and kept in {TORN_FILE_NAME}");
            log.record(None, AuditEvent::TornEntryDropped { bytes });
        } else {
            // Brings the anchor up to the head after a crash between an
            // append and its anchoring.
            log.anchor_head()?;
        }
        Ok(log)
    }

    /// Syncs what was written since the last flush and then records the
    /// head in the anchor (in that order: the anchor never names an entry
    /// that a power cut could lose). Runs every [`FLUSH_INTERVAL`] (see
    /// [`AuditLog::flush_every`]), before `verify`, and when the log is
    /// dropped.
    pub fn flush(&self) -> Result<(), AuditError> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        if !head.dirty {
            return Ok(());
        }
        head.file.sync_data().map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })?;
        if let Some(anchor) = &head.anchor {
            anchor
                .store(head.seq, &head.hash)
                .map_err(|problem| AuditError::Anchor { problem })?;
        }
        head.dirty = false;
        Ok(())
    }

    /// Flushes every [`FLUSH_INTERVAL`] on a thread of its own, for as
    /// long as the log is in use.
    pub fn flush_every(log: &Arc<AuditLog>) {
        let weak = Arc::downgrade(log);
        let spawned = std::thread::Builder::new()
            .name("audit-flush".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(FLUSH_INTERVAL);
                    let Some(log) = weak.upgrade() else { return };
                    if let Err(error) = log.flush() {
                        tracing::error!(%error, "cannot sync the audit log");
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the audit log's flusher; entries are synced at exit and by audit verify only");
        }
    }

    /// Records the head in the anchor, when the log is anchored.
    fn anchor_head(&self) -> Result<(), AuditError> {
        let head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(anchor) = &head.anchor
            && head.seq > 0
        {
            anchor
                .store(head.seq, &head.hash)
                .map_err(|problem| AuditError::Anchor { problem })?;
        }
        Ok(())
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
        head.seq = entry.body.seq;
        head.hash = entry.hash.clone();
        head.dirty = true;
        Ok(entry)
    }

    /// The anchored head and the log's length, read together under the
    /// append lock, so that a reader sees only whole lines and an anchor
    /// the bytes it reads reach.
    fn snapshot(&self) -> Result<(Option<(u64, String)>, u64), AuditError> {
        let head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let anchor = match &self.anchor {
            Some(anchor) => anchor
                .load()
                .map_err(|problem| AuditError::Anchor { problem })?,
            None => None,
        };
        let length = head
            .file
            .metadata()
            .map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })?
            .len();
        Ok((anchor, length))
    }

    fn reader(&self, length: u64) -> Result<impl BufRead, AuditError> {
        let file = File::open(&self.path).map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(BufReader::new(std::io::Read::take(file, length)))
    }

    /// Checks the whole log and its anchored head (`verify_anchored`).
    pub fn verify(&self) -> Result<Verified, AuditError> {
        self.flush()?;
        let (anchor, length) = self.snapshot()?;
        verify_anchored(self.reader(length)?, anchor)
    }

    /// One page of entries after sequence number `after` (`read_page`).
    pub fn page(&self, after: u64, limit: usize) -> Result<(Vec<String>, bool), AuditError> {
        let (_, length) = self.snapshot()?;
        read_page(self.reader(length)?, after, limit).map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Appends one event; a failure is logged, not returned. For events
    /// recorded after the operation they describe has happened.
    pub fn record(&self, uid: Option<u32>, event: AuditEvent) {
        if let Err(error) = self.append(uid, event) {
            tracing::error!(%error, "cannot write the audit log");
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if let Err(error) = self.flush() {
            tracing::error!(%error, "cannot sync the audit log");
        }
    }
}

/// Checks a whole log: every line parses, the sequence numbers run 1, 2,
/// 3, ..., each `prev` is the hash of the line before and each `hash`
/// matches its line. Returns the entries.
pub fn verify(reader: impl BufRead) -> Result<Vec<Entry>, AuditError> {
    let mut entries = Vec::new();
    verify_each(reader, |entry| entries.push(entry))?;
    Ok(entries)
}

/// What `verify_anchored` found in a sound log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    /// The head recorded outside the log, if any.
    pub anchored_seq: Option<u64>,
}

/// `verify`, holding one entry at a time, and then checks the log
/// against its anchored head: the log must reach the anchored entry and
/// that entry must be the one anchored. So removing the last entries is
/// found as well as any change before them.
pub fn verify_anchored(
    reader: impl BufRead,
    anchor: Option<(u64, String)>,
) -> Result<Verified, AuditError> {
    let mut count = 0u64;
    let mut anchored_hash = None;
    verify_each(reader, |entry| {
        count += 1;
        if let Some((seq, _)) = &anchor
            && entry.body.seq == *seq
        {
            anchored_hash = Some(entry.hash);
        }
    })?;
    if let Some((seq, hash)) = &anchor {
        match anchored_hash {
            None => {
                return Err(AuditError::Broken {
                    line: count + 1,
                    problem: format!(
                        "the log ends after entry {count}, but state.db records entry {seq} as its last (entries at the end were removed)"
                    ),
                });
            }
            Some(found) if found != *hash => {
                return Err(AuditError::Broken {
                    line: *seq,
                    problem: "is not the entry state.db records as the log's head (the log was rewritten)".into(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(Verified {
        entries: count,
        anchored_seq: anchor.map(|(seq, _)| seq),
    })
}

fn verify_each(reader: impl BufRead, mut each: impl FnMut(Entry)) -> Result<(), AuditError> {
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
        each(entry);
    }
    Ok(())
}

/// One page of the log: at most `limit` lines (as written) whose sequence
/// number is above `after`, and whether more follow. Lines that do not
/// parse are skipped (`verify` reports them).
pub fn read_page(
    reader: impl BufRead,
    after: u64,
    limit: usize,
) -> Result<(Vec<String>, bool), std::io::Error> {
    let mut page = Vec::new();
    for line in reader.lines() {
        let line = line?;
        let Ok(entry) = serde_json::from_str::<Entry>(&line) else {
            continue;
        };
        if entry.body.seq <= after {
            continue;
        }
        if page.len() == limit {
            return Ok((page, true));
        }
        page.push(line);
    }
    Ok((page, false))
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
    fn the_event_sits_beside_the_frame_and_an_added_field_is_found() {
        let (_dir, path) = log_with(&events());
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert!(first["kind"].is_string(), "{first}");
        assert_eq!(first["seq"], 1);
        // A field the event does not have, added to a line, would vanish
        // when the line is hashed again; it must be refused instead.
        std::fs::write(
            &path,
            text.replacen("\"seq\":2,", "\"seq\":2,\"note\":\"x\",", 1),
        )
        .unwrap();
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        // A frame field given twice is refused too.
        std::fs::write(
            &path,
            text.replacen("\"seq\":2,", "\"seq\":2,\"seq\":2,", 1),
        )
        .unwrap();
        assert!(verify_file(&path).is_err());
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

    /// An anchor in memory, standing in for state.db.
    #[derive(Default)]
    struct MemoryAnchor(Mutex<Option<(u64, String)>>);

    impl Anchor for MemoryAnchor {
        fn load(&self) -> Result<Option<(u64, String)>, String> {
            Ok(self.0.lock().unwrap().clone())
        }
        fn store(&self, seq: u64, hash: &str) -> Result<(), String> {
            *self.0.lock().unwrap() = Some((seq, hash.to_string()));
            Ok(())
        }
    }

    fn anchored_log() -> (tempfile::TempDir, PathBuf, Arc<MemoryAnchor>, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let anchor = Arc::new(MemoryAnchor::default());
        let log = AuditLog::open_anchored(&path, anchor.clone()).unwrap();
        for event in events() {
            log.append(Some(1000), event).unwrap();
        }
        (dir, path, anchor, log)
    }

    #[test]
    fn the_anchor_finds_removed_last_entries() {
        let (_dir, path, anchor, log) = anchored_log();
        assert_eq!(log.verify().unwrap().entries, 3);
        assert_eq!(anchor.load().unwrap().unwrap().0, 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
        // The chain alone is sound; the anchor is not reached.
        assert_eq!(verify_file(&path).unwrap().len(), 2);
        let err = log.verify().unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("removed"), "{err}");
        // Reopened and appended to, the log still fails: the anchor is
        // not moved onto the shortened chain.
        drop(log);
        let log = AuditLog::open_anchored(&path, anchor.clone()).unwrap();
        log.append(None, AuditEvent::UserRemoved { user: "x".into() })
            .unwrap();
        log.append(None, AuditEvent::UserRemoved { user: "y".into() })
            .unwrap();
        assert_eq!(anchor.load().unwrap().unwrap().0, 3);
        let err = log.verify().unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("rewritten"), "{err}");
    }

    #[test]
    fn the_anchor_follows_a_flush_not_each_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let anchor = Arc::new(MemoryAnchor::default());
        let log = Arc::new(AuditLog::open_anchored(&path, anchor.clone()).unwrap());
        for user in ["a", "b"] {
            log.append(None, AuditEvent::Signed { user: user.into() })
                .unwrap();
        }
        // Written, not yet synced nor anchored.
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        assert_eq!(anchor.load().unwrap(), None);
        log.flush().unwrap();
        assert_eq!(anchor.load().unwrap().unwrap().0, 2);
        // Dropping the log flushes what is left.
        log.append(None, AuditEvent::Signed { user: "c".into() })
            .unwrap();
        drop(log);
        assert_eq!(anchor.load().unwrap().unwrap().0, 3);
        // The flusher thread does it on its own within the interval.
        let log = Arc::new(AuditLog::open_anchored(&path, anchor.clone()).unwrap());
        AuditLog::flush_every(&log);
        log.append(None, AuditEvent::Signed { user: "d".into() })
            .unwrap();
        let deadline = std::time::Instant::now() + FLUSH_INTERVAL * 20;
        while anchor.load().unwrap().unwrap().0 != 4 {
            assert!(std::time::Instant::now() < deadline, "not flushed");
            std::thread::sleep(FLUSH_INTERVAL / 4);
        }
    }

    #[test]
    fn a_torn_last_line_is_cut_off_kept_and_recorded() {
        let (dir, path, anchor, log) = anchored_log();
        drop(log);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":4,\"time\":17").unwrap();
        drop(file);
        let log = AuditLog::open_anchored(&path, anchor.clone()).unwrap();
        let verified = log.verify().unwrap();
        assert_eq!(verified.entries, 4);
        let entries = verify_file(&path).unwrap();
        assert_eq!(
            entries[3].body.event,
            AuditEvent::TornEntryDropped { bytes: 18 }
        );
        let kept = std::fs::read_to_string(dir.path().join(TORN_FILE_NAME)).unwrap();
        assert_eq!(kept, "{\"seq\":4,\"time\":17\n");
    }

    #[test]
    fn pages_are_bounded_and_continue_after_the_last_seen() {
        let (_dir, _path, _anchor, log) = anchored_log();
        let (page, more) = log.page(0, 2).unwrap();
        assert_eq!(page.len(), 2);
        assert!(more);
        assert!(page[1].contains("\"bob\""));
        let (page, more) = log.page(2, 2).unwrap();
        assert_eq!(page.len(), 1);
        assert!(!more);
        assert!(page[0].contains("\"carol\""));
    }
}
