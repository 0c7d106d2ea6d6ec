//! How large a request may be, per RPC. Only `AddUserScan` and
//! `ActivateScan` carry an image; every other request is a few short strings (a code, a PIN, a
//! user name, a digest), so its body is cut off at [`SMALL_REQUEST_BYTES`]
//! before it is decoded. tonic's own limit (set in `server.rs`) stays at
//! the image size, for the one RPC that needs it.

use std::task::{Context, Poll};

/// The most any request but `AddUserScan` may carry.
pub const SMALL_REQUEST_BYTES: usize = 64 * 1024;

/// The largest request: an image for `AddUserScan`, and some room.
pub const MAX_REQUEST_BYTES: usize = fleetkey_v4l::image_file::MAX_IMAGE_BYTES + 64 * 1024;

/// How long a stopping daemon (SIGTERM, SIGINT) lets open connections
/// finish their requests before it closes them. A request cut off is
/// ended as if its client had gone away. Well under systemd's stop
/// timeout (90 s), so the stop stays orderly.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The RPCs that may carry more than [`SMALL_REQUEST_BYTES`].
const LARGE_RPCS: &[&str] = &[
    "/fleetkey.v1.Fleetkey/AddUserScan",
    "/fleetkey.v1.Fleetkey/ActivateScan",
];

/// The body limit for a request to `path`.
pub fn limit_for(path: &str) -> usize {
    if LARGE_RPCS.contains(&path) {
        MAX_REQUEST_BYTES
    } else {
        SMALL_REQUEST_BYTES
    }
}

/// A tower layer that caps each request's body at its RPC's limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLimitLayer;

impl<S> tower::Layer<S> for RequestLimitLayer {
    type Service = RequestLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimit { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestLimit<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for RequestLimit<S>
where
    S: tower::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let limit = limit_for(request.uri().path());
        let request =
            request.map(|body| tonic::body::Body::new(http_body_util::Limited::new(body, limit)));
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_scans_get_the_image_limit() {
        assert_eq!(
            limit_for("/fleetkey.v1.Fleetkey/AddUserScan"),
            MAX_REQUEST_BYTES
        );
        assert_eq!(
            limit_for("/fleetkey.v1.Fleetkey/ActivateScan"),
            MAX_REQUEST_BYTES
        );
        assert_eq!(limit_for("/fleetkey.v1.Fleetkey/Sign"), SMALL_REQUEST_BYTES);
        assert_eq!(
            limit_for("/fleetkey.v1.Fleetkey/AddUserScanX"),
            SMALL_REQUEST_BYTES
        );
    }
}
