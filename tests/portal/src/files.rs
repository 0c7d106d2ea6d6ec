//! The portal's files are private to the user it runs as: the database,
//! SQLite's `-wal`, `-shm` and `-journal` files beside it, and the code key
//! (`portal.db.key`).
//!
//! SQLite creates its side files with the permissions of the database file
//! (less the umask), so the database is made 0600 before SQLite opens it:
//! created so when new, and an existing file (and its side files) narrowed
//! to 0600 when group or others could read it, with a warning. A file that
//! is already 0600 or stricter is left as it is.

use std::fs::{self, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of every file the portal creates.
pub const PRIVATE_MODE: u32 = 0o600;

/// The files SQLite keeps beside the database at `db`.
pub fn sqlite_side_files(db: &Path) -> [PathBuf; 3] {
    ["-wal", "-shm", "-journal"].map(|suffix| with_suffix(db, suffix))
}

/// `path` with `suffix` appended to its file name.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `path` empty with mode 0600 unless it exists.
pub fn create_private(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_MODE)
        .open(path)
        .map(|_| ())
}

/// Narrows an existing regular file to 0600 when group or others have any
/// access; returns whether it did. A missing file is left missing.
pub fn make_private(path: &Path) -> io::Result<bool> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    if !metadata.file_type().is_file() {
        return Ok(false);
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    fs::set_permissions(path, Permissions::from_mode(mode & 0o700))?;
    tracing::warn!(
        path = %path.display(),
        was = format!("{mode:04o}"),
        now = format!("{:04o}", mode & 0o700),
        "the file was readable by others; narrowed it to its owner"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn new_files_are_private_and_open_ones_are_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portal.db");
        create_private(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert!(!make_private(&path).unwrap());

        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        assert!(make_private(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        // Stricter than 0600 stays as it is.
        fs::set_permissions(&path, Permissions::from_mode(0o400)).unwrap();
        assert!(!make_private(&path).unwrap());
        assert_eq!(mode(&path), 0o400);
        assert!(!make_private(&dir.path().join("missing")).unwrap());
        assert_eq!(
            sqlite_side_files(&path)[0],
            dir.path().join("portal.db-wal")
        );
    }
}
