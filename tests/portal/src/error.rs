//! The portal's own errors (its CLI and server plumbing). Failures that a
//! device sees over gRPC are `fleetkey_proto::Failure`s instead.

use std::path::PathBuf;

use crate::store::StoreError;

/// Why a portal command or the server failed.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot set up TLS with the given certificate and key: {0}")]
    Tls(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {what} {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A command line that parses but makes no sense (a missing `--user`, a
    /// public listener without TLS, ...).
    #[error("{0}")]
    Usage(String),
    #[error(
        "no portal URL known: start `fleetkey-portal serve` on this database once, or pass --portal-url"
    )]
    NoPortalUrl,
    #[error("{0}")]
    NotFound(String),
    /// `login wait`: the login was not approved (denied or expired).
    #[error("the login was not approved: {0}")]
    NotApproved(String),
    #[error("cannot make a QR code of this URI: {0}")]
    Qr(#[from] qrcode::types::QrError),
    #[error("cannot encode the PNG: {0}")]
    Png(#[from] png::EncodingError),
    #[error(transparent)]
    Batch(#[from] crate::batch::BatchError),
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl PortalError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
