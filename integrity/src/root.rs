//! The file-system root every check reads from: `/` on a real machine, a
//! directory laid out like one in tests. Reads are bounded: a check never
//! holds more than a few kilobytes of any one file (the event log, at most
//! [`crate::eventlog::MAX_LOG_BYTES`]).

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Longest small text file (a sysfs or procfs value, /etc/group) read.
pub const MAX_TEXT_BYTES: u64 = 1 << 20;

/// Where checks read sysfs, procfs, efivars and /etc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    base: PathBuf,
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path} does not exist")]
    Missing { path: String },
    #[error("{path} is larger than {max} bytes")]
    TooLarge { path: String, max: u64 },
    #[error("reading {path} failed: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ReadError {
    pub fn is_missing(&self) -> bool {
        matches!(self, ReadError::Missing { .. })
    }
}

impl Default for Root {
    fn default() -> Self {
        Root::new("/")
    }
}

impl Root {
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Root { base: base.into() }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `path` (absolute, as on the real machine) under this root. `..`
    /// components are dropped, so a path never leaves the root.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        let mut out = self.base.clone();
        for component in path.as_ref().components() {
            if let Component::Normal(part) = component {
                out.push(part);
            }
        }
        out
    }

    /// The bytes of `path`, at most `max`.
    pub fn read_bounded(&self, path: &str, max: u64) -> Result<Vec<u8>, ReadError> {
        let full = self.path(path);
        let file = File::open(&full).map_err(|source| io_error(path, source))?;
        let mut bytes = Vec::new();
        file.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|source| io_error(path, source))?;
        if bytes.len() as u64 > max {
            return Err(ReadError::TooLarge {
                path: path.to_string(),
                max,
            });
        }
        Ok(bytes)
    }

    /// A small text file, trimmed.
    pub fn read_text(&self, path: &str) -> Result<String, ReadError> {
        let bytes = self.read_bounded(path, MAX_TEXT_BYTES)?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_string())
    }

    pub fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }

    /// The entries' names of a directory, sorted; empty when it is missing.
    /// At most `max` names.
    pub fn list(&self, path: &str, max: usize) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.path(path)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .take(max)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The metadata of `path`, not following a final symbolic link.
    pub fn metadata(&self, path: &str) -> Result<Metadata, ReadError> {
        std::fs::symlink_metadata(self.path(path)).map_err(|source| io_error(path, source))
    }
}

fn io_error(path: &str, source: std::io::Error) -> ReadError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ReadError::Missing {
            path: path.to_string(),
        }
    } else {
        ReadError::Io {
            path: path.to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let root = Root::new("/fake");
        assert_eq!(root.path("/proc/cmdline"), Path::new("/fake/proc/cmdline"));
        assert_eq!(
            root.path("/../../etc/../group"),
            Path::new("/fake/etc/group")
        );
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'x'; 100]).unwrap();
        let root = Root::new(dir.path());
        assert_eq!(root.read_bounded("/big", 100).unwrap().len(), 100);
        assert!(matches!(
            root.read_bounded("/big", 99),
            Err(ReadError::TooLarge { .. })
        ));
        assert!(root.read_bounded("/none", 10).unwrap_err().is_missing());
    }
}
