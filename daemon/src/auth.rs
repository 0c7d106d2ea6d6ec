//! Who is calling, from the kernel, and what they may do. Admins are root,
//! the daemon's own user, and members of the configured admin group;
//! everyone else may read, sign and change a PIN, and only with the user's
//! PIN.
//!
//! The caller's uid, gid and supplementary groups are the ones the kernel
//! recorded when the connection was made (SO_PEERCRED, SO_PEERGROUPS), read
//! once when the daemon accepts it ([`PeerStream::accept`]) and carried
//! with the connection. Nothing is looked up later by PID: a connection
//! handed to another process, or outliving a process whose PID is reused,
//! keeps the rights of whoever opened it.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use fleetkey_proto::{Failure, Reason};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::transport::server::Connected;

/// A caller as the kernel reported it at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups at connect time.
    pub groups: Arc<[u32]>,
    /// For logs only: never used to look anything up.
    pub pid: i32,
}

impl Caller {
    /// The peer of a request on the Unix socket.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, Failure> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| {
                Failure::new(
                    Reason::PermissionDenied,
                    "the caller's identity could not be read from the socket",
                )
            })
    }

    /// The credentials the kernel recorded for the peer of `socket` when
    /// it connected.
    pub fn of_socket(socket: &impl AsRawFd) -> io::Result<Caller> {
        let fd = socket.as_raw_fd();
        let cred = peer_cred(fd)?;
        Ok(Caller {
            uid: cred.uid,
            gid: cred.gid,
            groups: peer_groups(fd)?.into(),
            pid: cred.pid,
        })
    }
}

fn peer_cred(fd: i32) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is valid for writes of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

/// SO_PEERGROUPS (Linux 4.13; the libc crate does not export it for
/// every target): 59 everywhere but sparc.
#[cfg(not(target_arch = "sparc64"))]
const SO_PEERGROUPS: libc::c_int = 59;
#[cfg(target_arch = "sparc64")]
const SO_PEERGROUPS: libc::c_int = 0x003d;

/// The peer's supplementary groups as recorded at connect time. The
/// kernel says how much room it needs when the buffer is too small.
fn peer_groups(fd: i32) -> io::Result<Vec<u32>> {
    // NGROUPS_MAX is 65536; start small, grow to what the kernel asks.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is valid for writes of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
            return Err(error);
        }
        groups.resize(count.min(65_536), 0);
    }
    Err(io::Error::other("the peer's group list kept growing"))
}

/// An accepted connection with its caller's credentials, read once at
/// accept. tonic puts [`Caller`] into every request's extensions.
#[derive(Debug)]
pub struct PeerStream {
    stream: UnixStream,
    caller: Caller,
}

impl PeerStream {
    /// Reads the peer's credentials now; a connection whose credentials
    /// cannot be read is refused.
    pub fn accept(stream: UnixStream) -> io::Result<PeerStream> {
        let caller = Caller::of_socket(&stream)?;
        Ok(PeerStream { stream, caller })
    }
}

impl Connected for PeerStream {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        self.caller.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Decides who is an admin.
#[derive(Debug, Clone)]
pub struct AdminPolicy {
    daemon_uid: u32,
    admin_group: Option<(String, u32)>,
}

impl AdminPolicy {
    /// Resolves the admin group once, at startup; a group that does not
    /// exist is logged and grants nothing.
    pub fn new(admin_group: Option<&str>) -> Self {
        let admin_group = admin_group.and_then(|name| match group_id(name) {
            Some(gid) => Some((name.to_string(), gid)),
            None => {
                tracing::warn!(
                    group = name,
                    "admin_group does not exist; only root and the daemon's user are admins"
                );
                None
            }
        });
        Self {
            daemon_uid: fleetkey_proto::paths::effective_uid(),
            admin_group,
        }
    }

    pub fn is_admin(&self, caller: &Caller) -> bool {
        if caller.uid == 0 || caller.uid == self.daemon_uid {
            return true;
        }
        let Some((_, gid)) = &self.admin_group else {
            return false;
        };
        caller.gid == *gid || caller.groups.contains(gid)
    }

    /// PERMISSION_DENIED unless the caller is an admin.
    pub fn require_admin(&self, caller: &Caller, action: &str) -> Result<(), Failure> {
        if self.is_admin(caller) {
            return Ok(());
        }
        Err(Failure::new(
            Reason::PermissionDenied,
            format!(
                "uid {} may not {action}; only {} may",
                caller.uid,
                self.admins_text()
            ),
        )
        .with_hint(self.admin_hint()))
    }

    /// Who the admins are, for messages: root, the daemon's own user when
    /// it is not root, and the members of the admin group when one is
    /// configured (and exists).
    fn admins_text(&self) -> String {
        let mut who = vec!["root".to_string()];
        if self.daemon_uid != 0 {
            who.push(format!("the daemon's user (uid {})", self.daemon_uid));
        }
        if let Some((name, _)) = &self.admin_group {
            who.push(format!("members of group '{name}'"));
        }
        match who.len() {
            1 => who.remove(0),
            _ => {
                let last = who.pop().unwrap_or_default();
                format!("{} or {last}", who.join(", "))
            }
        }
    }

    /// What to do, for this configuration: the same admins as the message.
    fn admin_hint(&self) -> String {
        let mut ways = vec!["as root (e.g. with sudo)".to_string()];
        if self.daemon_uid != 0 {
            ways.push(format!("as the daemon's user (uid {})", self.daemon_uid));
        }
        match &self.admin_group {
            Some((name, _)) => {
                ways.push(format!("as a member of group '{name}'"));
                format!("Run it {}.", ways.join(", or "))
            }
            None => format!(
                "Run it {}. No admin group is configured: to let other users do this, set admin_group in fleetkeyd.toml.",
                ways.join(", or ")
            ),
        }
    }
}

/// The gid of a group name, through NSS.
fn group_id(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, and the buffer's length
    // is passed with it; `result` is null or points at `group`.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut group,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(group.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            groups: groups.into(),
            pid: 1,
        }
    }

    #[test]
    fn root_and_self_are_admins_others_not() {
        let policy = AdminPolicy::new(None);
        let me = caller(fleetkey_proto::paths::effective_uid(), 12345, &[]);
        let nobody = caller(65534, 65534, &[0]);
        assert!(policy.is_admin(&caller(0, 0, &[])));
        assert!(policy.is_admin(&me));
        if me.uid != nobody.uid {
            assert!(!policy.is_admin(&nobody));
            let err = policy.require_admin(&nobody, "add users").unwrap_err();
            assert_eq!(err.reason, Reason::PermissionDenied);
            assert!(err.message.contains("uid 65534 may not add users"));
        }
    }

    /// The message and the hint name the same admins, as configured.
    #[test]
    fn permission_denied_says_who_may_as_configured() {
        let nobody = caller(65534, 65534, &[]);
        let no_group = AdminPolicy {
            daemon_uid: 0,
            admin_group: None,
        };
        let err = no_group.require_admin(&nobody, "add users").unwrap_err();
        assert_eq!(err.message, "uid 65534 may not add users; only root may");
        assert_eq!(
            err.hint,
            "Run it as root (e.g. with sudo). No admin group is configured: to let other users do this, set admin_group in fleetkeyd.toml."
        );
        let group = AdminPolicy {
            daemon_uid: 0,
            admin_group: Some(("fleetkey-admin".into(), 990)),
        };
        let err = group.require_admin(&nobody, "add users").unwrap_err();
        assert_eq!(
            err.message,
            "uid 65534 may not add users; only root or members of group 'fleetkey-admin' may"
        );
        assert_eq!(
            err.hint,
            "Run it as root (e.g. with sudo), or as a member of group 'fleetkey-admin'."
        );
        let service_user = AdminPolicy {
            daemon_uid: 997,
            admin_group: Some(("fleetkey-admin".into(), 990)),
        };
        let err = service_user
            .require_admin(&nobody, "add users")
            .unwrap_err();
        assert_eq!(
            err.message,
            "uid 65534 may not add users; only root, the daemon's user (uid 997) or members of group 'fleetkey-admin' may"
        );
    }

    #[test]
    fn admin_group_by_primary_or_supplementary_gid() {
        // "root" exists everywhere with gid 0.
        let policy = AdminPolicy::new(Some("root"));
        assert_eq!(policy.admin_group.as_ref().map(|g| g.1), Some(0));
        assert!(policy.is_admin(&caller(4242, 0, &[])));
        assert!(policy.is_admin(&caller(4242, 4242, &[7, 0])));
        assert!(!policy.is_admin(&caller(4242, 4242, &[7, 8])));
        assert!(
            AdminPolicy::new(Some("no-such-group-fleetkey"))
                .admin_group
                .is_none()
        );
    }

    #[tokio::test]
    async fn credentials_come_from_the_socket() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = PeerStream::accept(a).unwrap();
        let me = peer.connect_info();
        assert_eq!(me.uid, fleetkey_proto::paths::effective_uid());
        // SAFETY: no preconditions.
        assert_eq!(me.gid, unsafe { libc::getegid() });
        let expected = {
            // SAFETY: a zero-length query returns the count only.
            let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
            let mut groups = vec![0; usize::try_from(n).unwrap()];
            // SAFETY: `groups` has room for `n` entries.
            unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
            groups
        };
        let mut got = me.groups.to_vec();
        let mut want = expected;
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }
}
