//! Calls to the portal. Failures the portal reports with a fleetkey reason
//! (CODE_EXPIRED, ALREADY_ENROLLED, ...) pass through unchanged; a portal
//! that cannot be reached is PORTAL_UNREACHABLE, naming the URL.
//!
//! Before any connection is opened the URL is checked: its scheme and host
//! are compared in lower case, and plain `http://` is refused
//! (PORTAL_INSECURE) unless the host is loopback (127.0.0.0/8, ::1,
//! `localhost`) or listed in the config's `allow_plaintext_portals`: a QR
//! code must not be able to send codes and enrollments across the network
//! in clear.

use std::net::IpAddr;
use std::time::Duration;

use fleetkey_proto::portal::portal_client::PortalClient as Grpc;
use fleetkey_proto::portal::{
    CheckCodeRequest, CheckCodeResponse, CompleteTpmActivationRequest, EnrollUserRequest,
    EnrollUserResponse, RegisterDeviceRequest, RegisterDeviceResponse, RevokeUserRequest,
};
use fleetkey_proto::{Failure, Reason};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 pings on idle connections, and how long a ping may go unanswered.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Opens connections to portals.
#[derive(Clone, Default)]
pub struct PortalConnector {
    extra_ca: Option<Vec<u8>>,
    /// Lower-case host names and addresses allowed over plain http://.
    plaintext_hosts: Vec<String>,
}

impl PortalConnector {
    pub fn new(extra_ca_pem: Option<Vec<u8>>) -> Self {
        Self {
            extra_ca: extra_ca_pem,
            plaintext_hosts: Vec::new(),
        }
    }

    /// Hosts besides loopback that may be reached over plain http://
    /// (the config's `allow_plaintext_portals`).
    pub fn allow_plaintext(mut self, hosts: &[String]) -> Self {
        self.plaintext_hosts = hosts.iter().map(|h| normalize_host(h)).collect();
        self
    }

    /// The URL as it will be dialled (scheme and host in lower case), or
    /// PORTAL_INSECURE for plain http:// to a host that is neither
    /// loopback nor allowed; nothing is opened either way.
    pub fn checked_url(&self, url: &str) -> Result<PortalUrl, Failure> {
        let parsed = PortalUrl::parse(url).ok_or_else(|| {
            Failure::new(
                Reason::PortalUnreachable,
                format!("cannot reach the portal at {url}: bad URL"),
            )
            .with_meta("portal", url)
        })?;
        if !parsed.tls && !is_loopback(&parsed.host) && !self.plaintext_hosts.contains(&parsed.host)
        {
            return Err(Failure::new(
                Reason::PortalInsecure,
                format!(
                    "refusing to send enrollment data in clear to the portal at {url}: plain \
                     http:// is allowed only to loopback and to hosts in allow_plaintext_portals"
                ),
            )
            .with_meta("portal", url));
        }
        Ok(parsed)
    }

    pub async fn connect(&self, url: &str) -> Result<Portal, Failure> {
        let checked = self.checked_url(url)?;
        let unreachable = |detail: String| {
            Failure::new(
                Reason::PortalUnreachable,
                format!("cannot reach the portal at {url}: {detail}"),
            )
            .with_meta("portal", url)
        };
        let mut endpoint = Endpoint::from_shared(checked.url.clone())
            .map_err(|e| unreachable(format!("bad URL ({e})")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // A dead peer on a long-lived stream (approvals) is noticed.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_INTERVAL)
            .keep_alive_while_idle(true);
        if checked.tls {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &self.extra_ca {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| unreachable(format!("TLS setup failed ({e})")))?;
        }
        let channel: Channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        Ok(Portal {
            url: url.to_string(),
            client: Grpc::new(channel),
        })
    }
}

/// A portal URL with its scheme and host in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalUrl {
    /// The whole URL, normalized.
    pub url: String,
    pub tls: bool,
    /// Lower case; an IPv6 address without its brackets.
    pub host: String,
}

impl PortalUrl {
    /// None unless `url` is http:// or https:// (in any case) with a host.
    pub fn parse(url: &str) -> Option<PortalUrl> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let tls = match scheme.as_str() {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        // Userinfo has no place in a portal URL; "a@b" would hide the host.
        if authority.contains('@') || authority.is_empty() {
            return None;
        }
        let authority = authority.to_ascii_lowercase();
        let host = if let Some(bracketed) = authority.strip_prefix('[') {
            bracketed.split(']').next()?.to_string()
        } else {
            authority.split(':').next()?.to_string()
        };
        if host.is_empty() {
            return None;
        }
        Some(PortalUrl {
            url: format!("{scheme}://{authority}{tail}"),
            tls,
            host,
        })
    }
}

fn normalize_host(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) => inner.to_string(),
        None => host,
    }
}

/// 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) and `localhost`.
fn is_loopback(host: &str) -> bool {
    if host == "localhost" || host == "localhost." {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// A connection to one portal.
pub struct Portal {
    url: String,
    client: Grpc<Channel>,
}

impl Portal {
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn check_code(&mut self, code: &str) -> Result<CheckCodeResponse, Failure> {
        let request = CheckCodeRequest { code: code.into() };
        match self.client.check_code(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.failure(&status)),
        }
    }

    pub async fn register_device(
        &mut self,
        request: RegisterDeviceRequest,
    ) -> Result<RegisterDeviceResponse, Failure> {
        match self.client.register_device(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.failure(&status)),
        }
    }

    pub async fn complete_tpm_activation(
        &mut self,
        request: CompleteTpmActivationRequest,
    ) -> Result<RegisterDeviceResponse, Failure> {
        match self.client.complete_tpm_activation(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.failure(&status)),
        }
    }

    pub async fn enroll_user(
        &mut self,
        request: EnrollUserRequest,
    ) -> Result<EnrollUserResponse, Failure> {
        match self.client.enroll_user(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.failure(&status)),
        }
    }

    pub async fn deactivate_device(
        &mut self,
        request: fleetkey_proto::portal::DeactivateDeviceRequest,
    ) -> Result<u32, Failure> {
        match self.client.deactivate_device(request).await {
            Ok(response) => Ok(response.into_inner().revoked_credentials),
            Err(status) => Err(self.failure(&status)),
        }
    }

    pub async fn revoke_user(&mut self, request: RevokeUserRequest) -> Result<(), Failure> {
        match self.client.revoke_user(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(self.failure(&status)),
        }
    }

    // --- approvals ---

    /// A fresh nonce to open the device stream with.
    pub async fn stream_nonce(&mut self, device_id: &str) -> Result<Vec<u8>, Failure> {
        let request = fleetkey_proto::portal::GetStreamNonceRequest {
            device_id: device_id.into(),
        };
        match self.client.get_stream_nonce(request).await {
            Ok(response) => Ok(response.into_inner().nonce),
            Err(status) => Err(self.failure(&status)),
        }
    }

    /// Opens the device's event stream; each message is at most
    /// `max_message_bytes`.
    pub async fn open_device_stream(
        &mut self,
        request: fleetkey_proto::portal::OpenDeviceStreamRequest,
        max_message_bytes: usize,
    ) -> Result<tonic::Streaming<fleetkey_proto::portal::DeviceEvent>, Failure> {
        let mut client = self
            .client
            .clone()
            .max_decoding_message_size(max_message_bytes);
        match client.open_device_stream(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.failure(&status)),
        }
    }

    /// Sends a signed answer to a login challenge; the portal's outcome.
    pub async fn answer_challenge(
        &mut self,
        request: fleetkey_proto::portal::AnswerChallengeRequest,
    ) -> Result<String, Failure> {
        match self.client.answer_challenge(request).await {
            Ok(response) => Ok(response.into_inner().outcome),
            Err(status) => Err(self.failure(&status)),
        }
    }

    pub async fn submit_integrity(
        &mut self,
        request: fleetkey_proto::portal::SubmitIntegrityRequest,
    ) -> Result<fleetkey_proto::portal::SubmitIntegrityResponse, Failure> {
        match self.client.submit_integrity(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.failure(&status)),
        }
    }

    /// A stream error as a failure.
    pub fn stream_failure(&self, status: &tonic::Status) -> Failure {
        self.failure(status)
    }

    fn failure(&self, status: &tonic::Status) -> Failure {
        let failure = Failure::from_status(status);
        let ours = fleetkey_proto::failure::is_fleetkey_status(status);
        if ours {
            return failure.with_meta("portal", &self.url);
        }
        let reason = match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Reason::PortalUnreachable
            }
            _ => Reason::PortalError,
        };
        Failure::new(
            reason,
            format!("the portal at {} failed: {}", self.url, status.message()),
        )
        .with_meta("portal", &self.url)
    }
}

/// The whole source chain of an error on one line: tonic's transport
/// errors say only "transport error" at the top.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        // Layers often repeat their source's words ("tcp connect error:
        // tcp connect error: ..."): each is said once.
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1
                .as_deref()
                .map(|l| l as &(dyn std::error::Error + 'static))
        }
    }

    #[test]
    fn an_error_chain_says_each_layer_once() {
        let error = Layer(
            "tcp connect error",
            Some(Box::new(Layer(
                "tcp connect error",
                Some(Box::new(Layer("Connection refused (os error 111)", None))),
            ))),
        );
        assert_eq!(
            error_chain(&error),
            "tcp connect error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn schemes_and_hosts_compare_in_lower_case() {
        let url = PortalUrl::parse("HTTPS://Portal.Example.COM:8443/Fleet").unwrap();
        assert!(url.tls);
        assert_eq!(url.host, "portal.example.com");
        assert_eq!(url.url, "https://portal.example.com:8443/Fleet");
        let v6 = PortalUrl::parse("Http://[::1]:7000").unwrap();
        assert!(!v6.tls);
        assert_eq!(v6.host, "::1");
        for bad in [
            "ftp://x",
            "https://",
            "http://user@evil.example",
            "portal:80",
            "http://:80",
        ] {
            assert_eq!(PortalUrl::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn plaintext_only_to_loopback_or_allowed_hosts() {
        let connector = PortalConnector::new(None);
        for ok in [
            "http://127.0.0.1:7000",
            "http://127.9.8.7",
            "HTTP://LOCALHOST:1",
            "http://[::1]:7000",
            "https://192.0.2.1:7000",
            "HTTPS://portal.example.com",
        ] {
            assert!(connector.checked_url(ok).is_ok(), "{ok}");
        }
        for refused in [
            "http://192.0.2.1:7000",
            "HTTP://192.0.2.1",
            "http://portal.example.com",
            "http://localhost.example.com",
            "http://128.0.0.1",
            "http://[::2]",
        ] {
            let failure = connector.checked_url(refused).unwrap_err();
            assert_eq!(failure.reason, Reason::PortalInsecure, "{refused}");
            assert_eq!(failure.meta("portal"), Some(refused));
        }
        let allowed =
            connector.allow_plaintext(&["Portal.Lab.Internal".into(), "[2001:db8::1]".into()]);
        assert!(
            allowed
                .checked_url("http://portal.lab.internal:80/x")
                .is_ok()
        );
        assert!(allowed.checked_url("http://[2001:db8::1]:80").is_ok());
        assert_eq!(
            allowed
                .checked_url("http://other.lab.internal")
                .unwrap_err()
                .reason,
            Reason::PortalInsecure
        );
    }
}
