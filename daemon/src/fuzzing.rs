//! The daemon's request handlers in process, for the `daemon_requests`
//! fuzz target (the `fuzz/` crate) and its stable replay
//! (`tests/fuzz_corpus.rs`).
//!
//! A [`Harness`] is the gRPC service of a real engine: the software key
//! store (cheap Argon2), a state directory, an empty integrity root, the
//! audit log, and a portal URL on a closed loopback port, so that nothing
//! that needs the portal can succeed and nothing waits on the network.
//! One input is one call: its first byte picks the RPC, its second the
//! caller (root, or an unprivileged uid), the rest is the request message
//! (protobuf). The streamed scans (`AddUserScan`, `ActivateScan`) and
//! `ListCameras`, which open image files and camera devices, are left out.
//!
//! After every call the harness checks that the daemon is still whole:
//! `GetStatus` and `ListUsers` answer, no user exists (none can enroll
//! without a portal, so any user would be half made), no key is left in
//! the key store, and the audit log verifies (every 64th call).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetkey_proto::EnrollmentInput;
use fleetkey_proto::daemon::fleetkey_server::Fleetkey;
use fleetkey_proto::daemon::{
    ActivateRequest, AddUserRequest, ApproveRequest, ChangePinRequest, CheckAddUserRequest,
    DeactivateRequest, DenyRequest, GetIntegrityRequest, GetStatusRequest, GetUserRequest,
    ListCardsRequest, ListUsersRequest, ProvisionTpmRequest, ReadAuditRequest, RemoveUserRequest,
    ResetUserRequest, SignRequest, UnblockPinRequest, VerifyAuditRequest, WatchApprovalsRequest,
};
use prost::Message;

use crate::audit::AuditLog;
use crate::auth::{AdminPolicy, Caller};
use crate::backends::Backends;
use crate::config::Config;
use crate::engine::Engine;
use crate::portal_client::PortalConnector;
use crate::server::Service;
use crate::state::StateStore;

/// The portal every request is sent to: port 1 on loopback, which no one
/// serves, so a connection is refused at once.
pub const CLOSED_PORTAL: &str = "http://127.0.0.1:1";

/// The longest one call may take before the harness calls it a hang.
pub const MAX_CALL: Duration = Duration::from_secs(10);

/// How many RPCs the first byte chooses from.
pub const RPCS: u8 = 20;

/// The daemon's service over a real engine, in a directory of its own.
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    service: Service,
    engine: Arc<Engine>,
    keys: PathBuf,
    calls: AtomicU64,
}

fn io_error(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Harness {
    /// A daemon whose files live in `dir` (which should be empty).
    pub fn new(dir: &Path) -> Result<Self, String> {
        let root = dir.join("integrity-root");
        std::fs::create_dir_all(&root).map_err(io_error("integrity root"))?;
        let config_file = dir.join("fleetkeyd.toml");
        std::fs::write(
            &config_file,
            format!(
                "portal_url = \"{CLOSED_PORTAL}\"\n\
                 [backends.soft]\nargon2_memory_kib = 64\nargon2_iterations = 1\n\
                 [backends.tpm]\nenabled = false\n[backends.pcsc]\nenabled = false\n\
                 [integrity]\nroot = \"{}\"\n",
                root.display()
            ),
        )
        .map_err(io_error("config"))?;
        let config = Config::load(&config_file, true).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_error("runtime"))?;
        let state = Arc::new(StateStore::open(&dir.join("state.db")).map_err(|e| e.to_string())?);
        let audit = Arc::new(
            AuditLog::open(&dir.join(crate::audit::FILE_NAME)).map_err(|e| e.to_string())?,
        );
        let engine = {
            let _entered = runtime.enter();
            let backends = Backends::open(&config, dir);
            Arc::new(Engine::new(
                &config,
                state,
                backends,
                PortalConnector::new(None),
                audit,
            ))
        };
        let service = Service::new(engine.clone(), AdminPolicy::new(None));
        Ok(Self {
            runtime,
            service,
            engine,
            keys: dir.join("soft-keys"),
            calls: AtomicU64::new(0),
        })
    }

    /// One call from the fuzzer's bytes, then the checks that the daemon
    /// is whole. `Err` when a check fails or the call hangs; a refused
    /// request is fine.
    pub fn run(&self, data: &[u8]) -> Result<(), String> {
        let [rpc, who, message @ ..] = data else {
            return Ok(());
        };
        let caller = Caller {
            uid: if who & 1 == 0 {
                0
            } else {
                1000 + u32::from(who >> 1)
            },
            gid: 1000,
            groups: Arc::from(Vec::new()),
            pid: 1,
        };
        let rpc = rpc % RPCS;
        let started = Instant::now();
        self.runtime.block_on(async {
            tokio::time::timeout(MAX_CALL, self.call(rpc, caller, message))
                .await
                .map_err(|_| format!("RPC {rpc} did not answer within {MAX_CALL:?}"))
        })?;
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        self.check_whole(n.is_multiple_of(64))
            .map_err(|e| format!("after RPC {rpc} ({:?}): {e}", started.elapsed()))
    }

    async fn call(&self, rpc: u8, caller: Caller, message: &[u8]) {
        let s = &self.service;
        macro_rules! call {
            ($method:ident, $type:ty) => {
                call!($method, $type, |m| m)
            };
            ($method:ident, $type:ty, $fix:expr) => {{
                let Ok(decoded) = <$type>::decode(message) else {
                    return;
                };
                #[allow(clippy::redundant_closure_call)]
                let mut request = tonic::Request::new(($fix)(decoded));
                request.extensions_mut().insert(caller);
                // Refusals are answers; only panics, hangs and broken
                // state are findings.
                let _ = s.$method(request).await;
            }};
        }
        match rpc {
            0 => call!(get_status, GetStatusRequest),
            1 => call!(activate, ActivateRequest, |mut m: ActivateRequest| {
                m.code = closed_portal(m.code);
                m
            }),
            2 => call!(add_user, AddUserRequest, |mut m: AddUserRequest| {
                m.code = closed_portal(m.code);
                m
            }),
            3 => call!(list_users, ListUsersRequest),
            4 => call!(get_user, GetUserRequest),
            5 => call!(remove_user, RemoveUserRequest),
            6 => call!(change_pin, ChangePinRequest),
            7 => call!(sign, SignRequest),
            8 => call!(list_cards, ListCardsRequest),
            9 => call!(unblock_pin, UnblockPinRequest),
            10 => call!(get_integrity, GetIntegrityRequest),
            11 => call!(read_audit, ReadAuditRequest),
            12 => call!(verify_audit, VerifyAuditRequest),
            13 => call!(
                check_add_user,
                CheckAddUserRequest,
                |mut m: CheckAddUserRequest| {
                    m.code = closed_portal(m.code);
                    m
                }
            ),
            14 => call!(deactivate, DeactivateRequest),
            15 => call!(watch_approvals, WatchApprovalsRequest),
            16 => call!(approve, ApproveRequest),
            17 => call!(deny, DenyRequest),
            18 => call!(reset_user, ResetUserRequest, |mut m: ResetUserRequest| {
                m.code = closed_portal(m.code);
                m
            }),
            _ => call!(provision_tpm, ProvisionTpmRequest),
        }
    }

    /// The daemon answers, holds no user and no key, and (with `audit`)
    /// its audit log verifies.
    fn check_whole(&self, audit: bool) -> Result<(), String> {
        self.runtime.block_on(async {
            self.engine
                .status()
                .await
                .map_err(|f| format!("GetStatus fails: {f}"))?;
            let users = self
                .engine
                .list_users()
                .await
                .map_err(|f| format!("ListUsers fails: {f}"))?;
            if let Some(user) = users.first() {
                return Err(format!(
                    "user {:?} exists though no portal can be reached",
                    user.name
                ));
            }
            if audit {
                self.engine
                    .verify_audit()
                    .await
                    .map_err(|f| format!("the audit log does not verify: {f}"))?;
            }
            Ok(())
        })?;
        let left = match std::fs::read_dir(&self.keys) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", self.keys.display())),
        };
        if !left.is_empty() {
            return Err(format!("keys left in the key store: {left:?}"));
        }
        Ok(())
    }
}

/// The code as given, unless it is a URI naming another portal: then the
/// same URI naming the closed one (the fuzzer must not dial out).
fn closed_portal(code: String) -> String {
    match EnrollmentInput::parse(&code) {
        Ok(EnrollmentInput::Payload(mut payload)) if payload.portal_url != CLOSED_PORTAL => {
            payload.portal_url = CLOSED_PORTAL.to_string();
            payload.to_uri()
        }
        _ => code,
    }
}
