//! The connection to fleetkeyd: gRPC over its Unix socket, and the mapping
//! of transport failures to fleetkey's reasons.

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

/// Connects to fleetkeyd's socket now, so that a missing daemon is reported
/// before anything is asked of the person (a PIN, say).
pub async fn connect(socket: &Path) -> Result<Client, Failure> {
    let endpoint = Endpoint::try_from(PLACEHOLDER_URI).map_err(|e| {
        Failure::new(
            Reason::Internal,
            format!("cannot build the daemon endpoint: {e}"),
        )
    })?;
    let path: PathBuf = socket.to_path_buf();
    let channel =
        endpoint
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                }
            }))
            .await
            .map_err(|e| unreachable(socket, &e))?;
    Ok(FleetkeyClient::new(channel))
}

/// DAEMON_UNREACHABLE for a connection that failed, naming the socket and
/// the underlying I/O error.
pub fn unreachable(socket: &Path, error: &(dyn StdError + 'static)) -> Failure {
    let io_error = find_io_error(error);
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
