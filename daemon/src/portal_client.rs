//! Calls to the portal. Failures the portal reports with a fleetkey reason
//! (CODE_EXPIRED, ALREADY_ENROLLED, ...) pass through unchanged; a portal
//! that cannot be reached is PORTAL_UNREACHABLE, naming the URL.

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

/// Opens connections to portals.
#[derive(Clone, Default)]
pub struct PortalConnector {
    extra_ca: Option<Vec<u8>>,
}

impl PortalConnector {
    pub fn new(extra_ca_pem: Option<Vec<u8>>) -> Self {
        Self {
            extra_ca: extra_ca_pem,
        }
    }

    pub async fn connect(&self, url: &str) -> Result<Portal, Failure> {
        let unreachable = |detail: String| {
            Failure::new(
                Reason::PortalUnreachable,
                format!("cannot reach the portal at {url}: {detail}"),
            )
            .with_meta("portal", url)
        };
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| unreachable(format!("bad URL ({e})")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if url.starts_with("https://") {
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

    pub async fn revoke_user(&mut self, request: RevokeUserRequest) -> Result<(), Failure> {
        match self.client.revoke_user(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(self.failure(&status)),
        }
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
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
