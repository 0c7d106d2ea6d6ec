//! Where fleetkeyd and fleetkeyctl meet by default: system paths when run
//! as root, per-user XDG paths otherwise, so a developer needs nothing
//! installed.

use std::path::PathBuf;

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

fn home() -> PathBuf {
    env_dir("HOME").unwrap_or_else(|| PathBuf::from(format!("/tmp/fleetkey-{}", effective_uid())))
}

/// The default socket: the system one for root, else
/// `$XDG_RUNTIME_DIR/fleetkey/fleetkeyd.sock` (or `/tmp/fleetkey-UID/`).
pub fn default_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    env_dir("XDG_RUNTIME_DIR")
        .map(|d| d.join("fleetkey"))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/fleetkey-{}", effective_uid())))
        .join("fleetkeyd.sock")
}

/// The default state directory: the system one for root, else
/// `$XDG_STATE_HOME/fleetkey` (or `~/.local/state/fleetkey`).
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from(SYSTEM_STATE_DIR);
    }
    env_dir("XDG_STATE_HOME")
        .unwrap_or_else(|| home().join(".local/state"))
        .join("fleetkey")
}

/// The default configuration file: the system one for root, else
/// `$XDG_CONFIG_HOME/fleetkey/fleetkeyd.toml` (or `~/.config/...`).
pub fn default_config() -> PathBuf {
    if is_root() {
        return PathBuf::from(SYSTEM_CONFIG);
    }
    env_dir("XDG_CONFIG_HOME")
        .unwrap_or_else(|| home().join(".config"))
        .join("fleetkey/fleetkeyd.toml")
}
