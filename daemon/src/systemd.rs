//! The daemon's manners under systemd, without linking libsystemd:
//! readiness and status notifications (`sd_notify`'s protocol: one
//! datagram to `$NOTIFY_SOCKET`), and socket activation (`$LISTEN_FDS`,
//! the listening socket handed over as fd 3). Started by hand, neither
//! variable is set and both are no-ops, so the same binary runs either way.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};

/// The first file descriptor systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;

/// Sends one notification (e.g. `READY=1`, `STATUS=...`, `STOPPING=1`,
/// `RELOADING=1`) to the service manager. Returns whether one was sent:
/// false when the daemon is not run by a service manager that asked for
/// notifications.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.to_string_lossy().into_owned();
    let address = notify_address(&path)?;
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &address)?;
    Ok(true)
}

/// Like [`notify`], logging instead of failing: a service manager that
/// cannot be told is not a reason to stop serving.
pub fn notify_or_log(state: &str) {
    if let Err(error) = notify(state) {
        tracing::warn!(%error, state, "could not notify the service manager");
    }
}

fn notify_address(path: &str) -> io::Result<SocketAddr> {
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes());
    }
    if !path.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET {path:?} is neither absolute nor abstract"),
        ));
    }
    SocketAddr::from_pathname(path)
}

/// The listening Unix socket systemd handed over, if it did (fd 3, with
/// `LISTEN_PID` naming this process). The variables are removed so that
/// child processes do not take the socket for theirs.
///
/// Call it before any other thread exists (it edits the environment).
pub fn take_listener() -> Result<Option<UnixListener>, String> {
    let (Some(pid), Some(fds)) = (
        std::env::var_os("LISTEN_PID"),
        std::env::var_os("LISTEN_FDS"),
    ) else {
        return Ok(None);
    };
    let for_us = pid.to_str().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    // SAFETY: the caller runs this before other threads exist, so nothing
    // reads the environment concurrently.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !for_us {
        return Ok(None);
    }
    let count: u32 = fds
        .to_str()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("LISTEN_FDS is not a number: {fds:?}"))?;
    if count != 1 {
        return Err(format!(
            "socket activation passed {count} sockets; fleetkeyd.socket must declare exactly one ListenStream"
        ));
    }
    check_unix_stream_listener(LISTEN_FDS_START)?;
    // SAFETY: fd 3 was handed to this process by the service manager for
    // it to own (LISTEN_PID is ours), and was checked to be a listening
    // Unix stream socket; nothing else in the process owns it.
    let listener = unsafe { UnixListener::from_raw_fd(LISTEN_FDS_START) };
    set_cloexec(LISTEN_FDS_START)?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot use the activated socket: {e}"))?;
    Ok(Some(listener))
}

fn check_unix_stream_listener(fd: RawFd) -> Result<(), String> {
    let int_option = |option: libc::c_int| -> Result<libc::c_int, String> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value and len are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(format!(
                "fd {fd} from socket activation is not a socket: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(value)
    };
    let (domain, kind, listening) = (
        int_option(libc::SO_DOMAIN)?,
        int_option(libc::SO_TYPE)?,
        int_option(libc::SO_ACCEPTCONN)?,
    );
    if domain != libc::AF_UNIX || kind != libc::SOCK_STREAM || listening == 0 {
        return Err(format!(
            "fd {fd} from socket activation is not a listening Unix stream socket"
        ));
    }
    Ok(())
}

fn set_cloexec(fd: RawFd) -> Result<(), String> {
    // SAFETY: fcntl on an fd this process owns, with no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(format!(
            "cannot set close-on-exec on the activated socket: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Whether stderr goes to the journal (systemd sets `JOURNAL_STREAM` to
/// the device and inode of the stream it connected), so that logs leave
/// out what the journal records itself (time stamps, colours).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `stat`, which is valid for its size.
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut stat) } != 0 {
        return false;
    }
    dev.parse::<u64>().ok() == Some(stat.st_dev) && ino.parse::<u64>().ok() == Some(stat.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_addresses() {
        assert!(notify_address("relative/path").is_err());
        assert!(notify_address("/run/systemd/notify").is_ok());
        assert!(notify_address("@abstract-name").is_ok());
    }

    #[test]
    fn a_regular_file_is_not_a_listener() {
        use std::os::fd::AsRawFd;
        let file = tempfile::tempfile().unwrap();
        assert!(check_unix_stream_listener(file.as_raw_fd()).is_err());
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(check_unix_stream_listener(listener.as_raw_fd()).is_ok());
        let datagram = UnixDatagram::unbound().unwrap();
        assert!(check_unix_stream_listener(datagram.as_raw_fd()).is_err());
    }
}
