//! The gRPC face of the engine on a Unix socket: who may call what, and
//! message conversion. Every failure leaves as a Status with a reason.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetkey_plugin::{CreateOptions, Pin};
use fleetkey_proto::daemon::fleetkey_server::{Fleetkey, FleetkeyServer};
use fleetkey_proto::daemon::{
    ActivateRequest, ActivateResponse, AddUserRequest, AddUserScanRequest, ChangePinRequest,
    ChangePinResponse, GetStatusRequest, GetUserRequest, ListCamerasRequest, ListCamerasResponse,
    ListCardsRequest, ListCardsResponse, ListUsersRequest, ListUsersResponse, RemoveUserRequest,
    RemoveUserResponse, SignRequest, SignResponse, Status, UnblockPinRequest, UnblockPinResponse,
    User,
};
use fleetkey_proto::{Failure, Reason};
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response};

use fleetkey_proto::daemon::{
    CheckAddUserRequest, CheckAddUserResponse, DeactivateRequest, DeactivateResponse,
    ReadAuditRequest, ReadAuditResponse, VerifyAuditRequest, VerifyAuditResponse,
};

use crate::auth::{AdminPolicy, Caller, PeerStream};
use crate::engine::{Engine, Requester};
use crate::limits::{self, MAX_REQUEST_BYTES};
use crate::scan;

type Reply<T> = Result<Response<T>, tonic::Status>;

fn reply<T>(result: Result<T, Failure>) -> Reply<T> {
    result.map(Response::new).map_err(|f| f.to_status())
}

pub struct Service {
    engine: Arc<Engine>,
    admins: AdminPolicy,
    watchers: Arc<Watchers>,
}

/// Open `WatchApprovals` streams per uid. Each holds a task, a buffer of
/// 64 messages and a subscription to the engine's changes, so one caller
/// may hold only a few (docs/daemon-limits.md).
#[derive(Debug, Default)]
pub struct Watchers {
    open: std::sync::Mutex<std::collections::HashMap<u32, usize>>,
}

/// Streams one uid may keep open at once.
pub const MAX_WATCHERS_PER_UID: usize = 8;

/// A watcher's place; given back when the stream ends.
pub struct WatcherSlot {
    watchers: Arc<Watchers>,
    uid: u32,
}

impl Watchers {
    fn take(self: &Arc<Self>, uid: u32) -> Result<WatcherSlot, Failure> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(uid).or_insert(0);
        if *count >= MAX_WATCHERS_PER_UID {
            return Err(Failure::new(
                Reason::Busy,
                format!("uid {uid} already has {MAX_WATCHERS_PER_UID} approval watches open"),
            )
            .with_hint("Close one (end `fleetkeyctl approvals watch`) and try again."));
        }
        *count += 1;
        Ok(WatcherSlot {
            watchers: self.clone(),
            uid,
        })
    }
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut open = self.watchers.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

impl Service {
    pub fn new(engine: Arc<Engine>, admins: AdminPolicy) -> Self {
        Self {
            engine,
            admins,
            watchers: Arc::default(),
        }
    }

    fn require_admin<T>(
        &self,
        request: &Request<T>,
        action: &str,
    ) -> Result<Caller, tonic::Status> {
        let caller = Caller::of(request).map_err(|f| f.to_status())?;
        self.admins.require_admin(&caller, action).map_err(|f| {
            tracing::warn!(uid = caller.uid, action, "refused: not an admin");
            f.to_status()
        })?;
        Ok(caller)
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, tonic::Status> {
        Caller::of(request).map_err(|f| f.to_status())
    }
}

/// Key-creation options from a request's optional fields (empty: unset).
fn create_options(reader: String, slot: String) -> CreateOptions {
    CreateOptions {
        reader: Some(reader).filter(|r| !r.is_empty()),
        slot: Some(slot).filter(|s| !s.is_empty()),
    }
}

/// Runs `work` apart from the call: a caller that hangs up (Ctrl-C, kill
/// -9 in the middle of `user add-batch`) must not cut an enrollment or a
/// reset in half, leaving a key or a pending row behind until the next
/// start.
async fn detached<T: Send + 'static>(
    what: &str,
    work: impl Future<Output = Result<T, Failure>> + Send + 'static,
) -> Result<T, Failure> {
    tokio::spawn(work).await.unwrap_or_else(|error| {
        Err(Failure::new(
            Reason::Internal,
            format!("the {what} task failed: {error}"),
        ))
    })
}

/// The progress stream of `AddUserScan`.
pub type ScanStream = ReceiverStream<scan::ProgressItem>;

#[tonic::async_trait]
impl Fleetkey for Service {
    type AddUserScanStream = ScanStream;

    async fn get_status(&self, request: Request<GetStatusRequest>) -> Reply<Status> {
        self.caller(&request)?;
        reply(self.engine.status().await)
    }

    async fn activate(&self, request: Request<ActivateRequest>) -> Reply<ActivateResponse> {
        let caller = self.require_admin(&request, "activate the device")?;
        tracing::info!(uid = caller.uid, "activation requested");
        reply(
            self.engine
                .activate(Requester::Uid(caller.uid), &request.into_inner().code)
                .await,
        )
    }

    async fn add_user(&self, request: Request<AddUserRequest>) -> Reply<User> {
        let caller = self.require_admin(&request, "add users")?;
        tracing::info!(uid = caller.uid, "add user requested");
        let request = request.into_inner();
        let pin = Pin::new(request.pin);
        let options = create_options(request.reader, request.slot);
        let engine = Arc::clone(&self.engine);
        let uid = caller.uid;
        reply(
            detached("enrollment", async move {
                engine
                    .add_user(
                        Requester::Uid(uid),
                        &request.code,
                        pin,
                        &request.backend,
                        &options,
                        request.require_pin_change,
                    )
                    .await
            })
            .await,
        )
    }

    async fn add_user_scan(
        &self,
        request: Request<AddUserScanRequest>,
    ) -> Reply<Self::AddUserScanStream> {
        let caller = self.require_admin(&request, "add users")?;
        let request = request.into_inner();
        let from_camera = matches!(
            request.source,
            Some(fleetkey_proto::daemon::add_user_scan_request::Source::Camera(_))
        );
        tracing::info!(
            uid = caller.uid,
            from_camera,
            "add user from a QR code requested"
        );
        let pin = Pin::new(request.pin);
        self.engine
            .check_add_user(&pin, &request.backend)
            .map_err(|f| f.to_status())?;
        let open = scan::opener(request.source).map_err(|f| f.to_status())?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(scan::scan_and_enroll(
            self.engine.clone(),
            Requester::Uid(caller.uid),
            open,
            pin,
            request.backend,
            scan::timeout(request.timeout_seconds),
            sender,
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type ActivateScanStream = ScanStream;

    async fn activate_scan(
        &self,
        request: Request<fleetkey_proto::daemon::ActivateScanRequest>,
    ) -> Reply<Self::ActivateScanStream> {
        use fleetkey_proto::daemon::activate_scan_request::Source as ActivateSource;
        use fleetkey_proto::daemon::add_user_scan_request::Source;
        let caller = self.require_admin(&request, "activate the device")?;
        let request = request.into_inner();
        let source = request.source.map(|source| match source {
            ActivateSource::Camera(camera) => Source::Camera(camera),
            ActivateSource::Image(image) => Source::Image(image),
        });
        tracing::info!(
            uid = caller.uid,
            from_camera = matches!(source, Some(Source::Camera(_))),
            "activation from a QR code requested"
        );
        let open = scan::opener(source).map_err(|f| f.to_status())?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(scan::scan_then(
            self.engine.clone(),
            Requester::Uid(caller.uid),
            open,
            scan::Then::Activate,
            scan::timeout(request.timeout_seconds),
            sender,
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn list_cameras(
        &self,
        request: Request<ListCamerasRequest>,
    ) -> Reply<ListCamerasResponse> {
        self.caller(&request)?;
        reply(scan::list_cameras().await)
    }

    // --- TPM lockout budget ---
    async fn provision_tpm(
        &self,
        request: Request<fleetkey_proto::daemon::ProvisionTpmRequest>,
    ) -> Reply<fleetkey_proto::daemon::ProvisionTpmResponse> {
        let caller = self.require_admin(&request, "provision the TPM")?;
        tracing::info!(uid = caller.uid, "TPM provisioning requested");
        reply(
            self.engine
                .provision_tpm(Requester::Uid(caller.uid), request.into_inner())
                .await,
        )
    }

    async fn list_users(&self, request: Request<ListUsersRequest>) -> Reply<ListUsersResponse> {
        self.caller(&request)?;
        reply(
            self.engine
                .list_users()
                .await
                .map(|users| ListUsersResponse { users }),
        )
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Reply<User> {
        self.caller(&request)?;
        reply(self.engine.get_user(&request.into_inner().name).await)
    }

    async fn remove_user(&self, request: Request<RemoveUserRequest>) -> Reply<RemoveUserResponse> {
        let caller = self.require_admin(&request, "remove users")?;
        let name = request.into_inner().name;
        tracing::info!(uid = caller.uid, user = %name, "remove user requested");
        reply(
            self.engine
                .remove_user(Requester::Uid(caller.uid), &name)
                .await,
        )
    }

    async fn change_pin(&self, request: Request<ChangePinRequest>) -> Reply<ChangePinResponse> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        check_pin_field("old_pin", &request.old_pin)?;
        check_pin_field("new_pin", &request.new_pin)?;
        let (old, new) = (Pin::new(request.old_pin), Pin::new(request.new_pin));
        reply(
            self.engine
                .change_pin(Requester::Uid(caller.uid), &request.user, old, new)
                .await
                .map(|()| ChangePinResponse {}),
        )
    }

    async fn sign(&self, request: Request<SignRequest>) -> Reply<SignResponse> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        check_pin_field("pin", &request.pin)?;
        let pin = Pin::new(request.pin);
        reply(
            self.engine
                .sign(
                    Requester::Uid(caller.uid),
                    &request.user,
                    pin,
                    &request.digest,
                )
                .await,
        )
    }

    async fn list_cards(&self, request: Request<ListCardsRequest>) -> Reply<ListCardsResponse> {
        self.caller(&request)?;
        let backend = request.into_inner().backend;
        reply(
            self.engine
                .list_cards(&backend)
                .await
                .map(|cards| ListCardsResponse { cards }),
        )
    }

    async fn unblock_pin(&self, request: Request<UnblockPinRequest>) -> Reply<UnblockPinResponse> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        check_pin_field("puk", &request.puk)?;
        check_pin_field("new_pin", &request.new_pin)?;
        let (puk, new) = (Pin::new(request.puk), Pin::new(request.new_pin));
        reply(
            self.engine
                .unblock_pin(Requester::Uid(caller.uid), &request.user, puk, new)
                .await
                .map(|()| UnblockPinResponse {}),
        )
    }

    // --- integrity ---
    async fn get_integrity(
        &self,
        request: Request<fleetkey_proto::daemon::GetIntegrityRequest>,
    ) -> Reply<fleetkey_proto::daemon::IntegrityResponse> {
        let caller = self.caller(&request)?;
        reply(
            self.engine
                .get_integrity(Requester::Uid(caller.uid), &request.into_inner().nonce)
                .await,
        )
    }

    // --- audit log ---

    async fn read_audit(&self, request: Request<ReadAuditRequest>) -> Reply<ReadAuditResponse> {
        self.require_admin(&request, "read the audit log")?;
        let request = request.into_inner();
        reply(
            self.engine
                .read_audit(request.after_seq, request.limit)
                .await,
        )
    }

    async fn verify_audit(
        &self,
        request: Request<VerifyAuditRequest>,
    ) -> Reply<VerifyAuditResponse> {
        self.require_admin(&request, "verify the audit log")?;
        reply(self.engine.verify_audit().await)
    }

    // --- first run ---

    async fn check_add_user(
        &self,
        request: Request<CheckAddUserRequest>,
    ) -> Reply<CheckAddUserResponse> {
        self.require_admin(&request, "add users")?;
        let request = request.into_inner();
        reply(
            self.engine
                .precheck_add_user(&request.code, &request.backend)
                .await,
        )
    }

    async fn deactivate(&self, request: Request<DeactivateRequest>) -> Reply<DeactivateResponse> {
        let caller = self.require_admin(&request, "deactivate the device")?;
        let remove_users = request.into_inner().remove_users;
        tracing::info!(uid = caller.uid, remove_users, "deactivation requested");
        reply(
            self.engine
                .deactivate(Requester::Uid(caller.uid), remove_users)
                .await,
        )
    }

    // --- approvals ---
    type WatchApprovalsStream = ApprovalStream;

    async fn watch_approvals(
        &self,
        request: Request<fleetkey_proto::daemon::WatchApprovalsRequest>,
    ) -> Reply<ApprovalStream> {
        let caller = self.caller(&request)?;
        let watch = request.into_inner().watch;
        let slot = self.watchers.take(caller.uid).map_err(|f| f.to_status())?;
        reply(approval_stream(self.engine.clone(), watch, slot))
    }

    async fn approve(
        &self,
        request: Request<fleetkey_proto::daemon::ApproveRequest>,
    ) -> Reply<fleetkey_proto::daemon::ApproveResponse> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        check_pin_field("pin", &request.pin)?;
        let pin = Pin::new(request.pin);
        reply(
            self.engine
                .approve(Requester::Uid(caller.uid), &request.id, request.number, pin)
                .await
                .map(|approval| fleetkey_proto::daemon::ApproveResponse {
                    approval: Some(approval),
                }),
        )
    }

    async fn deny(
        &self,
        request: Request<fleetkey_proto::daemon::DenyRequest>,
    ) -> Reply<fleetkey_proto::daemon::DenyResponse> {
        let caller = self.caller(&request)?;
        let request = request.into_inner();
        reply(
            self.engine
                .deny(Requester::Uid(caller.uid), &request.id)
                .await
                .map(|approval| fleetkey_proto::daemon::DenyResponse {
                    approval: Some(approval),
                }),
        )
    }

    // --- user reset ---
    async fn reset_user(
        &self,
        request: Request<fleetkey_proto::daemon::ResetUserRequest>,
    ) -> Reply<User> {
        // The rule of `user remove`: an admin's.
        let caller = self.require_admin(&request, "reset users")?;
        let request = request.into_inner();
        check_pin_field("pin", &request.pin)?;
        tracing::info!(uid = caller.uid, user = %fleetkey_proto::terminal::escape(&request.name), "user reset requested");
        let pin = Pin::new(request.pin);
        let options = create_options(request.reader, request.slot);
        let engine = Arc::clone(&self.engine);
        let uid = caller.uid;
        reply(
            detached("reset", async move {
                engine
                    .reset_user(
                        Requester::Uid(uid),
                        &request.name,
                        &request.code,
                        pin,
                        &request.backend,
                        &options,
                        request.require_pin_change,
                    )
                    .await
            })
            .await,
        )
    }
}

/// The stream of `WatchApprovals`.
pub type ApprovalStream = ReceiverStream<Result<fleetkey_proto::daemon::Approval, tonic::Status>>;

/// The kept challenges, then (with `watch`) each change until the caller
/// hangs up. A watcher that falls behind gets the whole list again.
fn approval_stream(
    engine: Arc<Engine>,
    watch: bool,
    slot: WatcherSlot,
) -> Result<ApprovalStream, Failure> {
    let mut events = engine.subscribe_approvals();
    let current = engine.approvals()?;
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        // Held while the stream lives.
        let _slot = slot;
        for approval in current {
            if sender.send(Ok(approval)).await.is_err() {
                return;
            }
        }
        if !watch {
            return;
        }
        loop {
            let next = tokio::select! {
                () = sender.closed() => return,
                next = events.recv() => next,
            };
            match next {
                Ok(approval) => {
                    if sender.send(Ok(approval)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let Ok(current) = engine.approvals() else {
                        return;
                    };
                    for approval in current {
                        if sender.send(Ok(approval)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(ReceiverStream::new(receiver))
}

/// The longest PIN or PUK any key store takes, in bytes; a longer one is
/// refused before it is copied or hashed.
pub(crate) const MAX_PIN_BYTES: usize = 256;

fn check_pin_field(field: &str, value: &str) -> Result<(), tonic::Status> {
    if value.len() > MAX_PIN_BYTES {
        return Err(fleetkey_proto::Failure::new(
            fleetkey_proto::Reason::InvalidArgument,
            format!(
                "{field} is {} bytes long; no PIN is longer than {MAX_PIN_BYTES}",
                value.len()
            ),
        )
        .to_status());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another fleetkeyd is already listening on {0}")]
    AlreadyRunning(PathBuf),
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error(
        "refusing to serve in {dir}: {problem}; the socket's directory must be owned by root or \
         the daemon's user (uid {daemon_uid}) and writable by no one else, so that no other user \
         can put a socket of their own in its place (see docs/security.md)"
    )]
    UnsafeDirectory {
        dir: PathBuf,
        problem: String,
        daemon_uid: u32,
    },
    #[error("cannot set up the socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot set up gRPC server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Binds the Unix socket: makes its directory, checks that no one but
/// root and the daemon's user can write it (or any directory above it,
/// unless sticky), replaces a stale socket left by a crash, refuses to
/// take over a live one. Anyone who can reach the socket may connect;
/// authorization is per call, from the caller's credentials.
pub fn bind_socket(path: &Path) -> Result<UnixListener, ServeError> {
    let socket_error = |source| ServeError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(socket_error)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(socket_error)?;
    }
    let dir = dir.canonicalize().map_err(socket_error)?;
    check_socket_dir(&dir, fleetkey_proto::paths::effective_uid())?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::AlreadyRunning(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(socket_error)?;
        }
        Ok(_) => {
            return Err(ServeError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_error(e)),
    }
    let listener = UnixListener::bind(path).map_err(socket_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(socket_error)?;
    if let Some(closed) = unreachable_by_others(&dir) {
        tracing::warn!(
            socket = %path.display(),
            directory = %closed.display(),
            "only this daemon's user (uid {}) and root can connect: {} is not searchable by \
             other users; for multi-user use, serve in a directory they can enter \
             (e.g. mode 0755, as /run/fleetkey)",
            fleetkey_proto::paths::effective_uid(),
            closed.display()
        );
    }
    Ok(listener)
}

/// The socket's directory must be owned by root or `daemon_uid` and
/// writable by no one else: whoever can write it can replace the socket
/// with their own and read the PINs sent to it. Each directory above it
/// must be owned by root or `daemon_uid` too, and be writable by no one
/// else unless it is sticky (as /tmp is: others cannot rename what they
/// do not own).
fn check_socket_dir(dir: &Path, daemon_uid: u32) -> Result<(), ServeError> {
    let unsafe_dir = |at: &Path, problem: String| ServeError::UnsafeDirectory {
        dir: at.to_path_buf(),
        problem,
        daemon_uid,
    };
    let mut current = Some(dir);
    let mut first = true;
    while let Some(at) = current {
        let meta = std::fs::metadata(at).map_err(|source| ServeError::Socket {
            path: at.to_path_buf(),
            source,
        })?;
        let mode = meta.mode();
        if meta.uid() != 0 && meta.uid() != daemon_uid {
            return Err(unsafe_dir(at, format!("it is owned by uid {}", meta.uid())));
        }
        let sticky = mode & 0o1000 != 0;
        if mode & 0o022 != 0 && (first || !sticky) {
            return Err(unsafe_dir(
                at,
                format!(
                    "its mode {:04o} lets {} write it",
                    mode & 0o7777,
                    if mode & 0o002 != 0 {
                        "every user"
                    } else {
                        "its group"
                    }
                ),
            ));
        }
        first = false;
        current = at.parent();
    }
    Ok(())
}

/// The first directory on the way to the socket that other users cannot
/// enter (no search permission for "others"), if any.
fn unreachable_by_others(dir: &Path) -> Option<PathBuf> {
    let mut chain: Vec<&Path> = dir.ancestors().collect();
    chain.reverse();
    chain
        .into_iter()
        .find(|at| std::fs::metadata(at).is_ok_and(|meta| meta.mode() & 0o001 == 0))
        .map(Path::to_path_buf)
}

/// Accepted connections, each with its caller's credentials read at
/// accept time. A connection whose credentials cannot be read is closed
/// (tonic skips the error and goes on accepting).
fn accepted(listener: UnixListener) -> impl tokio_stream::Stream<Item = io::Result<PeerStream>> {
    UnixListenerStream::new(listener).map(|accepted| {
        accepted.and_then(PeerStream::accept).inspect_err(|e| {
            tracing::warn!(error = %e, "connection dropped: cannot read its credentials");
        })
    })
}

/// Serves until `shutdown` completes, then removes the socket the daemon
/// bound itself (`socket_path`; None for a socket systemd handed over,
/// which systemd removes).
pub async fn serve(
    service: Service,
    listener: UnixListener,
    socket_path: Option<&Path>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // gRPC health (grpc.health.v1) and server reflection (v1 and v1alpha,
    // which grpcurl and older tools ask for), so that generic clients can
    // check, list and call the API (docs/clients.md).
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FleetkeyServer<Service>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fleetkey_proto::DAEMON_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fleetkey_proto::DAEMON_DESCRIPTOR_SET)
        .build_v1alpha()?;
    // tonic's graceful stop waits for every open connection to close,
    // and an HTTP/2 connection closes only once its client has read the
    // GOAWAY: a client that stops reading (a stopped process, a hostile
    // local user) would hold the daemon's stop forever. Open connections
    // get SHUTDOWN_GRACE to finish; then serving ends and the runtime,
    // dropped on return, closes them (key-store work already running
    // still completes).
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let serving = tonic::transport::Server::builder()
        .layer(limits::RequestLimitLayer)
        .add_service(FleetkeyServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(accepted(listener), signal);
    let grace_over = async {
        if stopped.await.is_err() {
            // Serving ended by itself; the select below takes that.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(limits::SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        result = serving => result,
        () = grace_over => {
            tracing::warn!(
                grace_s = limits::SHUTDOWN_GRACE.as_secs(),
                "connections still open after the stop's grace period; closing them"
            );
            Ok(())
        }
    };
    if let Some(socket_path) = socket_path
        && let Err(e) = std::fs::remove_file(socket_path)
    {
        tracing::warn!(socket = %socket_path.display(), error = %e, "could not remove the socket");
    }
    Ok(result?)
}
