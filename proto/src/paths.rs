//! Where fleetkeyd and fleetkeyctl meet by default.
//!
//! The system daemon serves `/run/fleetkey/fleetkeyd.sock`, and the CLI
//! uses that socket whenever it exists, for every user. A per-user daemon
//! is a development mode: its socket is `$XDG_RUNTIME_DIR/fleetkey/
//! fleetkeyd.sock` (a directory only its user can write), and there is no
//! fallback to a shared, world-writable place such as `/tmp`, where any
//! local user could put a socket of their own first (docs/security.md).

use std::path::{Path, PathBuf};

/// System socket path.
pub const SYSTEM_SOCKET: &str = "/run/fleetkey/fleetkeyd.sock";
/// System state directory.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/fleetkey";
/// System configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/fleetkey/fleetkeyd.toml";

/// Whether this process runs as root.
pub fn is_root() -> bool {
    effective_uid() == 0
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn env_dir(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// The home directory: `$HOME`, else the password database's entry.
fn home() -> Option<PathBuf> {
    env_dir("HOME").or_else(passwd_home)
}

fn passwd_home() -> Option<PathBuf> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and the buffer's length
    // is passed with it; `result` is null or points at `entry`, whose
    // strings live in `buffer`.
    let rc = unsafe {
        libc::getpwuid_r(
            effective_uid(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || entry.pw_dir.is_null() {
        return None;
    }
    // SAFETY: pw_dir is a NUL-terminated string inside `buffer`.
    let dir = unsafe { CStr::from_ptr(entry.pw_dir) };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes()));
    path.is_absolute().then_some(path)
}

/// The per-user (development) socket, `$XDG_RUNTIME_DIR/fleetkey/
/// fleetkeyd.sock`; none without `XDG_RUNTIME_DIR`.
pub fn user_socket() -> Option<PathBuf> {
    env_dir("XDG_RUNTIME_DIR").map(|d| d.join("fleetkey").join("fleetkeyd.sock"))
}

/// The daemon's default socket: the system one for root, else the
/// per-user one; none for a non-root daemon without `XDG_RUNTIME_DIR`
/// (it must then be given `--socket`).
pub fn default_socket() -> Option<PathBuf> {
    if is_root() {
        return Some(PathBuf::from(SYSTEM_SOCKET));
    }
    user_socket()
}

/// The CLI's default socket: the system socket when it exists (or the
/// caller is root), else the per-user one when `XDG_RUNTIME_DIR` is set,
/// else the system socket again (so the error names where the daemon was
/// looked for). Never a path under a world-writable directory.
pub fn client_socket() -> PathBuf {
    client_socket_with(Path::new(SYSTEM_SOCKET), is_root(), user_socket())
}

fn client_socket_with(system: &Path, root: bool, user: Option<PathBuf>) -> PathBuf {
    let system_exists = std::fs::symlink_metadata(system).is_ok();
    if system_exists || root {
        return system.to_path_buf();
    }
    user.unwrap_or_else(|| system.to_path_buf())
}

/// The default state directory: the system one for root, else
/// `$XDG_STATE_HOME/fleetkey` (or `~/.local/state/fleetkey`); none when
/// no home directory is known.
pub fn default_state_dir() -> Option<PathBuf> {
    if is_root() {
        return Some(PathBuf::from(SYSTEM_STATE_DIR));
    }
    env_dir("XDG_STATE_HOME")
        .or_else(|| home().map(|h| h.join(".local/state")))
        .map(|d| d.join("fleetkey"))
}

/// The default configuration file: the system one for root, else
/// `$XDG_CONFIG_HOME/fleetkey/fleetkeyd.toml` (or `~/.config/...`); none
/// when no home directory is known.
pub fn default_config() -> Option<PathBuf> {
    if is_root() {
        return Some(PathBuf::from(SYSTEM_CONFIG));
    }
    env_dir("XDG_CONFIG_HOME")
        .or_else(|| home().map(|h| h.join(".config")))
        .map(|d| d.join("fleetkey/fleetkeyd.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_prefers_an_existing_system_socket() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("fleetkeyd.sock");
        let user = Some(PathBuf::from("/run/user/1000/fleetkey/fleetkeyd.sock"));
        // Absent system socket: the per-user one, if any.
        assert_eq!(
            client_socket_with(&system, false, user.clone()),
            user.clone().unwrap()
        );
        assert_eq!(client_socket_with(&system, false, None), system);
        assert_eq!(client_socket_with(&system, true, user.clone()), system);
        // Present: the system socket, for every user.
        drop(std::os::unix::net::UnixListener::bind(&system).unwrap());
        assert_eq!(client_socket_with(&system, false, user), system);
    }

    #[test]
    fn no_default_under_tmp() {
        for path in [Some(client_socket()), default_socket()]
            .into_iter()
            .flatten()
        {
            assert!(!path.starts_with("/tmp"), "{}", path.display());
        }
        for path in [default_state_dir(), default_config()]
            .into_iter()
            .flatten()
        {
            assert!(!path.starts_with("/tmp"), "{}", path.display());
        }
    }
}
