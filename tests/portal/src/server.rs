//! Running the gRPC server.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fleetkey_proto::payload::validate_portal_url;
use fleetkey_proto::portal::portal_server::PortalServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

use crate::error::PortalError;
use crate::rate_limit::RateLimit;
use crate::service::PortalService;
use crate::store::Store;

/// How long a shutdown waits for open connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The URL a listener is reached at when no public URL is configured:
/// `http://` or `https://` and the bound address (`[v6]:port` for IPv6).
pub fn bound_url(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

/// Checks a URL to be advertised in QR codes.
pub fn check_public_url(url: &str) -> Result<(), PortalError> {
    validate_portal_url(url).map_err(|error| {
        PortalError::Usage(format!(
            "--public-url {url:?} is not usable: it must be an http:// or https:// URL with a host ({error})"
        ))
    })
}

/// Checks that a TLS configuration (certificate and key) is usable.
pub fn check_tls(tls: &ServerTlsConfig) -> Result<(), PortalError> {
    Server::builder()
        .tls_config(tls.clone())
        .map(|_| ())
        .map_err(|error| PortalError::Tls(tls_error_text(&error)))
}

fn tls_error_text(error: &tonic::transport::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Serves the portal API in plaintext on `listener` until `shutdown`
/// completes, with the database at `db`.
///
/// The advertised URL (`public_url`, else `http://` and the bound address)
/// is stored in the database first, so that `code issue` finds it.
pub async fn serve(
    db: &Path,
    listener: TcpListener,
    public_url: Option<String>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), PortalError> {
    let addr = listener
        .local_addr()
        .map_err(|e| PortalError::io("cannot read the listener's address", e))?;
    let url = public_url.unwrap_or_else(|| bound_url(addr, false));
    check_public_url(&url)?;
    let store = Store::open(db)?;
    store.db().set_public_url(&url)?;
    run(store, listener, None, shutdown).await
}

/// Serves the portal API on `listener` (with TLS when `tls` is given, and
/// the default rate limits) until `shutdown` completes, then waits up to
/// [`SHUTDOWN_GRACE`] for open connections to finish. The caller has set
/// up the store.
pub async fn run(
    store: Store,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), PortalError> {
    run_with(
        store,
        listener,
        tls,
        TrustAnchors::default(),
        Some(RateLimit::default()),
        shutdown,
    )
    .await
}

/// What attestations are checked against.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    /// SubjectPublicKeyInfo DER of the roots PIV attestations chain to.
    pub piv_attestation_roots: Vec<Vec<u8>>,
    /// Certificates (DER) EK certificates must chain through to a
    /// self-signed one; `None`: EK certificates are not checked.
    pub tpm_ek_roots: Option<Vec<Vec<u8>>>,
    /// `serve --require-integrity LEVEL`.
    pub require_integrity: Option<u8>,
}

/// [`run`], checking attestations against `trust`, with `rate_limit` per
/// peer and per device (`None`: no limits).
pub async fn run_with(
    store: Store,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    trust: TrustAnchors,
    rate_limit: Option<RateLimit>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), PortalError> {
    let addr = listener
        .local_addr()
        .map_err(|e| PortalError::io("cannot read the listener's address", e))?;
    let mut builder = Server::builder();
    let tls_on = tls.is_some();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|error| PortalError::Tls(tls_error_text(&error)))?;
    }
    tracing::info!(
        %addr,
        tls = tls_on,
        db = %store.path().display(),
        rate_limit = ?rate_limit,
        "serving the portal API"
    );
    let (drain, draining) = oneshot::channel::<()>();
    let mut service = PortalService::new(store)
        .with_piv_attestation_roots(trust.piv_attestation_roots)
        .with_rate_limit(rate_limit)
        .with_required_integrity(trust.require_integrity);
    if let Some(roots) = trust.tpm_ek_roots {
        service = service.with_tpm_ek_roots(roots);
    }
    // Migrations whose deadline came while the portal was down are swept
    // now, the others as their deadline comes.
    let sweeper = tokio::spawn(sweep_migrations(std::sync::Arc::clone(service.store())));
    let server = builder
        .add_service(PortalServer::new(service))
        // TCP_NODELAY: a response is several small writes (headers, data,
        // trailers); with Nagle's algorithm the later ones wait for the
        // client's delayed ACK, 40 ms on Linux, on every call.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = draining.await;
            },
        );
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => {
            sweeper.abort();
            return result.map_err(PortalError::from);
        }
        () = shutdown => {}
    }
    sweeper.abort();
    // Stop accepting, let the calls in progress finish, but do not wait
    // forever for clients that keep their connections open.
    let _ = drain.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "clients still connected after the grace period; closing"
        ),
    }
    tracing::info!("portal stopped");
    Ok(())
}

/// Revokes the old credentials of migrations whose deadline has come
/// (`crate::migrate::sweep_due`): at once, then every
/// [`crate::migrate::SWEEP_INTERVAL`].
async fn sweep_migrations(store: std::sync::Arc<std::sync::Mutex<Store>>) {
    let mut ticks = tokio::time::interval(crate::migrate::SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let store = std::sync::Arc::clone(&store);
        let swept = tokio::task::spawn_blocking(move || {
            let mut store = store
                .lock()
                .map_err(|_| "the portal's store lock is poisoned".to_string())?;
            let now = fleetkey_proto::time::now_unix();
            store
                .immediate(|db| crate::migrate::sweep_due(db, now))
                .map_err(|error: crate::store::StoreError| error.to_string())
        })
        .await;
        match swept {
            Ok(Ok(swept)) => {
                for credential in swept {
                    tracing::info!(
                        migration = %credential.migration_id,
                        user = %fleetkey_proto::terminal::escape(&credential.user),
                        credential_id = %credential.credential_id,
                        "migration deadline: old credential revoked (not replaced in time)"
                    );
                }
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "could not sweep migrations past their deadline")
            }
            Err(error) => tracing::error!(%error, "the migration sweep task failed"),
        }
    }
}
