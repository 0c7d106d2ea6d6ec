//! The connection to fleetkeyd: gRPC over its Unix socket, and the mapping
//! of transport failures to fleetkey's reasons.
//!
//! Whoever listens on a socket can ask for a PIN, so before a single byte
//! is written the server's uid, as the kernel recorded it when the server
//! started listening (SO_PEERCRED), must be root, the caller's own uid, or
//! one named in `FLEETKEY_TRUSTED_UIDS`; otherwise the connection is
//! closed and the command fails with DAEMON_UNTRUSTED (docs/security.md).

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};

use fleetkey_proto::daemon::fleetkey_client::FleetkeyClient;
use fleetkey_proto::{Failure, Reason};
use hyper_util::rt::TokioIo;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

/// A client of the daemon API.
pub type Client = FleetkeyClient<Channel>;

/// The URI tonic needs; the connector ignores it and dials the socket.
const PLACEHOLDER_URI: &str = "http://[::]:50051";

/// The environment variable naming further uids whose daemon the CLI
/// trusts: numbers separated by commas or spaces.
pub const TRUSTED_UIDS_ENV: &str = "FLEETKEY_TRUSTED_UIDS";

/// Whose server the CLI talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedUids {
    uids: Vec<u32>,
}

impl TrustedUids {
    /// Root, this process's real and effective uids, and the uids in
    /// `FLEETKEY_TRUSTED_UIDS`; an entry that is not a uid is an error
    /// (a typo must not silently trust nobody, or somebody else).
    pub fn from_env() -> Result<Self, Failure> {
        let extra = std::env::var(TRUSTED_UIDS_ENV).unwrap_or_default();
        // SAFETY: getuid and geteuid have no preconditions.
        let own = unsafe { [libc::getuid(), libc::geteuid()] };
        let mut trusted = Self::parse(&own, &extra)?;
        trusted.uids.extend(system_daemon_uid());
        Ok(trusted)
    }

    fn parse(own: &[u32], extra: &str) -> Result<Self, Failure> {
        let mut uids = vec![0];
        uids.extend_from_slice(own);
        for entry in extra.split([',', ' ']).filter(|e| !e.is_empty()) {
            let uid = entry.parse::<u32>().map_err(|_| {
                Failure::new(
                    Reason::InvalidArgument,
                    format!(
                        "{TRUSTED_UIDS_ENV} holds '{}', which is not a numeric uid",
                        entry
                    ),
                )
                .with_hint(
                    "List uids as numbers separated by commas, e.g. FLEETKEY_TRUSTED_UIDS=998.",
                )
            })?;
            uids.push(uid);
        }
        Ok(Self { uids })
    }

    pub fn trusts(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }
}

/// The packaged daemon's own system user (`packaging/sysusers.d`), whose
/// uid serves `/run/fleetkey/fleetkeyd.sock` when fleetkeyd runs as the
/// systemd service. Only root can create that account, so trusting it
/// trusts what root installed.
pub const SYSTEM_DAEMON_USER: &str = "_fleetkey";

/// The uid of [`SYSTEM_DAEMON_USER`], when the account exists.
fn system_daemon_uid() -> Option<u32> {
    let name = std::ffi::CString::new(SYSTEM_DAEMON_USER).ok()?;
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and the buffer's length
    // is passed with it; `result` is null or points at `entry`.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(entry.pw_uid)
}

/// Raised inside the connector when the server's uid is not trusted.
#[derive(Debug, thiserror::Error)]
#[error("the socket is served by uid {server_uid}, which this user does not trust")]
struct Untrusted {
    server_uid: u32,
}

/// Connects to `socket` and checks its server's uid before anything is
/// written to it.
async fn dial_trusted(path: &Path, trusted: &TrustedUids) -> io::Result<tokio::net::UnixStream> {
    let stream = tokio::net::UnixStream::connect(path).await?;
    let server_uid = stream.peer_cred()?.uid();
    if !trusted.trusts(server_uid) {
        // Dropping the stream closes it; nothing was sent.
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            Untrusted { server_uid },
        ));
    }
    Ok(stream)
}

/// Connects to fleetkeyd's socket now, so that a missing daemon is reported
/// before anything is asked of the person (a PIN, say). The server's uid is
/// checked first (DAEMON_UNTRUSTED).
pub async fn connect(socket: &Path) -> Result<Client, Failure> {
    let trusted = TrustedUids::from_env()?;
    let endpoint = Endpoint::try_from(PLACEHOLDER_URI).map_err(|e| {
        Failure::new(
            Reason::Internal,
            format!("cannot build the daemon endpoint: {e}"),
        )
    })?;
    let path: PathBuf = socket.to_path_buf();
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            let trusted = trusted.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(dial_trusted(&path, &trusted).await?)) }
        }))
        .await
        .map_err(|e| unreachable(socket, &e))?;
    Ok(FleetkeyClient::new(channel))
}

/// DAEMON_UNREACHABLE for a connection that failed, naming the socket and
/// the underlying I/O error.
pub fn unreachable(socket: &Path, error: &(dyn StdError + 'static)) -> Failure {
    let io_error = find_io_error(error);
    if let Some(untrusted) = io_error
        .and_then(io::Error::get_ref)
        .and_then(|inner| inner.downcast_ref::<Untrusted>())
    {
        return untrusted_failure(socket, untrusted.server_uid);
    }
    let detail = match io_error {
        Some(io) => io.to_string(),
        None => error.to_string(),
    };
    let failure = Failure::new(
        Reason::DaemonUnreachable,
        format!("cannot reach fleetkeyd at {}: {detail}", socket.display()),
    );
    match io_error.map(io::Error::kind) {
        Some(io::ErrorKind::PermissionDenied) => failure.with_hint(
            "This user may not open the socket; check the permissions of the socket and its directory, or run as a member of the group that owns it.",
        ),
        _ => failure,
    }
}

/// DAEMON_UNTRUSTED, naming the socket and the uid found serving it.
fn untrusted_failure(socket: &Path, server_uid: u32) -> Failure {
    Failure::new(
        Reason::DaemonUntrusted,
        format!(
            "refusing to talk to {}: it is served by uid {server_uid}{}, not by root or this \
             user; nothing was sent",
            socket.display(),
            user_name(server_uid)
                .map(|name| format!(" ({name})"))
                .unwrap_or_default()
        ),
    )
    .with_meta("server_uid", server_uid)
}

/// The login name of `uid`, through NSS.
pub fn user_name(uid: u32) -> Option<String> {
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and the buffer's length
    // is passed with it; `result` is null or points at `entry`.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name is a NUL-terminated string inside `buffer`.
    let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

fn find_io_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current: Option<&'a (dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

/// The failure an RPC returned. A status without fleetkey's ErrorInfo and
/// with code UNAVAILABLE comes from the transport (the daemon went away
/// mid-call): that is DAEMON_UNREACHABLE, not an internal error.
pub fn rpc_failure(socket: &Path, status: &tonic::Status) -> Failure {
    let failure = Failure::from_status(status);
    if status.code() == Code::Unavailable && failure.reason == Reason::Internal {
        return Failure::new(
            Reason::DaemonUnreachable,
            format!(
                "lost the connection to fleetkeyd at {}: {}",
                socket.display(),
                status.message()
            ),
        );
    }
    failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_is_daemon_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let failure = connect(&socket).await.unwrap_err();
        assert_eq!(failure.reason, Reason::DaemonUnreachable);
        assert_eq!(failure.reason.exit_code(), 60);
        assert!(
            failure
                .message
                .starts_with(&format!("cannot reach fleetkeyd at {}: ", socket.display())),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("No such file"),
            "{}",
            failure.message
        );
    }

    #[tokio::test]
    async fn refusing_socket_is_daemon_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("stale.sock");
        // A socket file nobody listens on: bind, then close the listener.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let failure = connect(&socket).await.unwrap_err();
        assert_eq!(failure.reason, Reason::DaemonUnreachable);
        assert!(failure.message.contains("refused"), "{}", failure.message);
    }

    #[test]
    fn trusted_uids_are_root_self_and_the_listed_ones() {
        let trusted = TrustedUids::parse(&[1000, 1000], "998, 997,,").unwrap();
        for uid in [0, 1000, 998, 997] {
            assert!(trusted.trusts(uid), "{uid}");
        }
        assert!(!trusted.trusts(65534));
        let failure = TrustedUids::parse(&[1000], "fleetkey").unwrap_err();
        assert_eq!(failure.reason, Reason::InvalidArgument);
        assert!(
            failure.message.contains("'fleetkey'"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn untrusted_names_the_uid() {
        let failure = untrusted_failure(Path::new("/run/x.sock"), 4242);
        assert_eq!(failure.reason, Reason::DaemonUntrusted);
        assert_eq!(failure.reason.exit_code(), 61);
        assert_eq!(failure.meta("server_uid"), Some("4242"));
        assert!(failure.message.contains("uid 4242"), "{}", failure.message);
    }

    #[test]
    fn transport_statuses_are_unreachable_but_daemon_failures_stay() {
        let socket = Path::new("/run/x.sock");
        let transport = tonic::Status::unavailable("connection reset");
        assert_eq!(
            rpc_failure(socket, &transport).reason,
            Reason::DaemonUnreachable
        );

        let portal = Failure::new(Reason::PortalUnreachable, "portal down").to_status();
        let failure = rpc_failure(socket, &portal);
        assert_eq!(failure.reason, Reason::PortalUnreachable);
        assert_eq!(failure.message, "portal down");

        let wrong = Failure::new(Reason::PinWrong, "wrong PIN")
            .with_meta("tries_left", 2)
            .to_status();
        let failure = rpc_failure(socket, &wrong);
        assert_eq!(failure.reason, Reason::PinWrong);
        assert_eq!(failure.meta("tries_left"), Some("2"));
    }
}
