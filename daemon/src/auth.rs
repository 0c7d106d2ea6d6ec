//! Who is calling, from the kernel (SO_PEERCRED on the Unix socket), and
//! what they may do. Admins are root, the daemon's own user, and members
//! of the configured admin group; everyone else may read, sign and change
//! a PIN, and only with the user's PIN.

use std::ffi::CString;

use fleetkey_proto::{Failure, Reason};
use tonic::transport::server::UdsConnectInfo;

/// A caller as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Caller {
    /// The peer of a request on the Unix socket.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, Failure> {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or_else(|| {
                Failure::new(
                    Reason::PermissionDenied,
                    "the caller's identity could not be read from the socket",
                )
            })?;
        Ok(Caller {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        })
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
        caller.gid == *gid
            || caller
                .pid
                .is_some_and(|pid| supplementary_groups(pid).contains(gid))
    }

    /// PERMISSION_DENIED unless the caller is an admin.
    pub fn require_admin(&self, caller: &Caller, action: &str) -> Result<(), Failure> {
        if self.is_admin(caller) {
            return Ok(());
        }
        let who = match &self.admin_group {
            Some((name, _)) => format!("root or members of group '{name}'"),
            None => "root".to_string(),
        };
        Err(Failure::new(
            Reason::PermissionDenied,
            format!("uid {} may not {action}; only {who} may", caller.uid),
        ))
    }
}

/// The supplementary groups of a process, from /proc.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
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

    #[test]
    fn root_and_self_are_admins_others_not() {
        let policy = AdminPolicy::new(None);
        let root = Caller {
            uid: 0,
            gid: 0,
            pid: None,
        };
        let me = Caller {
            uid: fleetkey_proto::paths::effective_uid(),
            gid: 12345,
            pid: None,
        };
        let nobody = Caller {
            uid: 65534,
            gid: 65534,
            pid: None,
        };
        assert!(policy.is_admin(&root));
        assert!(policy.is_admin(&me));
        if me.uid != nobody.uid {
            assert!(!policy.is_admin(&nobody));
            let err = policy.require_admin(&nobody, "add users").unwrap_err();
            assert_eq!(err.reason, Reason::PermissionDenied);
            assert!(err.message.contains("uid 65534 may not add users"));
        }
    }

    #[test]
    fn admin_group_by_primary_gid() {
        // "root" exists everywhere with gid 0.
        let policy = AdminPolicy::new(Some("root"));
        assert_eq!(policy.admin_group.as_ref().map(|g| g.1), Some(0));
        assert!(policy.is_admin(&Caller {
            uid: 4242,
            gid: 0,
            pid: None
        }));
        assert!(
            AdminPolicy::new(Some("no-such-group-fleetkey"))
                .admin_group
                .is_none()
        );
    }

    #[test]
    fn supplementary_groups_of_this_process() {
        let pid = i32::try_from(std::process::id()).unwrap();
        // Readable for our own process; contents depend on the machine.
        let _ = supplementary_groups(pid);
        assert!(supplementary_groups(-1).is_empty());
    }
}
