//! `fleetkeyctl activate CODE|URI` (or `--camera`, `--qr-image`):
//! registers this device with a portal.

use std::path::PathBuf;

use fleetkey_proto::daemon::activate_scan_request::Source;
use fleetkey_proto::daemon::scan_progress::Event;
use fleetkey_proto::daemon::{ActivateRequest, ActivateResponse, ActivateScanRequest};
use fleetkey_proto::terminal::escape;
use fleetkey_proto::{EnrollmentInput, Failure, Reason};
use serde::Serialize;

use super::Context;
use super::user_add::{follow_scan, read_image};
use crate::output;

/// Activate this device with a device activation code, its URI, or its QR code
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Activates this device with the portal that issued the device activation \
code: the device gets its device ID and from then on users can be added. \
The code is the one printed under the portal's QR code (any case, with or \
without hyphens and spaces; I and L read as 1, O as 0), or the QR code's \
fleetkey://enroll?... URI. A mistyped code is caught before anything is \
contacted. A bare code goes to the daemon's configured default portal. \
Instead of a code, --camera makes fleetkeyd scan the portal's QR code with a \
camera (the first usable one, or DEVICE: /dev/videoN or N), and --qr-image \
reads it from a picture (PNG, JPEG or PGM); the scan's progress is shown on \
stderr, as for `user add --camera`. Admins only.",
    after_long_help = "\
Examples:
  fleetkeyctl activate K7QF-9XWM-2HPD-TR4Q
  fleetkeyctl activate 'fleetkey://enroll?v=1&c=K7QF-9XWM-2HPD-TR4Q&p=https%3A%2F%2Fportal.example.com'
  fleetkeyctl activate --camera            # scan the QR code the portal shows
  fleetkeyctl activate --qr-image device-code.png"
)]
pub struct Activate {
    /// The device activation code, or a fleetkey://enroll URI
    #[arg(value_name = "CODE|URI", required_unless_present_any = ["camera", "qr_image"], conflicts_with_all = ["camera", "qr_image"])]
    pub code: Option<String>,

    /// Scan the QR code with a camera: the first usable one, or DEVICE (/dev/videoN or N)
    #[arg(long, value_name = "DEVICE", num_args = 0..=1, default_missing_value = "", conflicts_with = "qr_image")]
    pub camera: Option<String>,

    /// Read the QR code from a picture (PNG, JPEG or PGM)
    #[arg(long, value_name = "FILE")]
    pub qr_image: Option<PathBuf>,

    /// With --camera: seconds to scan before giving up (default 60)
    #[arg(long, value_name = "SECONDS", requires = "camera")]
    pub timeout: Option<u32>,
}

impl Activate {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let source = match (&self.code, &self.camera, &self.qr_image) {
            (Some(code), _, _) => return self.run_with_code(ctx, code).await,
            (None, Some(camera), _) => Source::Camera(camera.clone()),
            (None, None, Some(path)) => Source::Image(read_image(path)?),
            (None, None, None) => {
                return Err(Failure::new(
                    Reason::InvalidArgument,
                    "give a code, --camera or --qr-image",
                ));
            }
        };
        self.run_scan(ctx, source).await
    }

    async fn run_with_code(&self, ctx: &Context, code: &str) -> Result<(), Failure> {
        let code = checked_enrollment_input(code)?;
        let mut client = ctx.client().await?;
        let response = client
            .activate(ActivateRequest { code })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        show(ctx, &response)
    }

    /// Activates with the code the daemon reads, showing its progress.
    async fn run_scan(&self, ctx: &Context, source: Source) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let stream = client
            .activate_scan(ActivateScanRequest {
                source: Some(source),
                timeout_seconds: self.timeout.unwrap_or(0),
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        match follow_scan(ctx, stream).await? {
            Event::Activated(response) => show(ctx, &response),
            _ => Err(Failure::new(
                Reason::Internal,
                "fleetkeyd ended the scan with another answer than the activation",
            )),
        }
    }
}

fn show(ctx: &Context, response: &ActivateResponse) -> Result<(), Failure> {
    if ctx.json {
        output::json(&activate_json(response))
    } else {
        output::data(&activate_text(response))
    }
}

/// Checks a code or URI locally (a typo is caught without contacting
/// anything) and returns the trimmed text to send: the daemon parses it
/// again.
pub fn checked_enrollment_input(input: &str) -> Result<String, Failure> {
    EnrollmentInput::parse(input).map_err(Failure::from)?;
    Ok(input.trim().to_string())
}

/// `activate --json`.
#[derive(Debug, Serialize)]
pub struct ActivateJson {
    pub device_id: String,
    pub portal_url: String,
    /// What the portal verified of the device's TPM; empty when the device
    /// has no TPM that attests.
    pub attestation: String,
}

pub fn activate_json(response: &ActivateResponse) -> ActivateJson {
    ActivateJson {
        device_id: response.device_id.clone(),
        portal_url: response.portal_url.clone(),
        attestation: response.attestation.clone(),
    }
}

pub fn activate_text(response: &ActivateResponse) -> String {
    let mut text = format!(
        "Device activated: {} ({})",
        escape(&response.device_id),
        escape(&response.portal_url)
    );
    if !response.attestation.is_empty() {
        text.push_str(&format!("\nAttestation: {}", escape(&response.attestation)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetkey_proto::{ActivationCode, Reason};
    use serde_json::json;

    #[test]
    fn json_and_text() {
        let mut response = ActivateResponse {
            device_id: "dev-42".into(),
            portal_url: "https://portal.example.com".into(),
            attestation: String::new(),
        };
        assert_eq!(
            serde_json::to_value(activate_json(&response)).unwrap(),
            json!({"device_id": "dev-42", "portal_url": "https://portal.example.com", "attestation": ""})
        );
        assert_eq!(
            activate_text(&response),
            "Device activated: dev-42 (https://portal.example.com)"
        );
        response.attestation = "TPM attestation key bound to the EK".into();
        assert_eq!(
            activate_text(&response),
            "Device activated: dev-42 (https://portal.example.com)\nAttestation: TPM attestation key bound to the EK"
        );
    }

    #[test]
    fn local_validation() {
        let code = ActivationCode::from_body(*b"K7QF9XWM2HPDTR4");
        let typed = format!("  {}\n", code.to_string().to_lowercase());
        assert_eq!(
            checked_enrollment_input(&typed).unwrap(),
            code.to_string().to_lowercase()
        );

        let mut mistyped = code.compact().to_string();
        let last = if mistyped.ends_with('0') { "1" } else { "0" };
        mistyped.replace_range(15..16, last);
        let failure = checked_enrollment_input(&mistyped).unwrap_err();
        assert_eq!(failure.reason, Reason::CodeMistyped);
        assert_eq!(failure.reason.exit_code(), 11);

        let failure = checked_enrollment_input("ABC").unwrap_err();
        assert_eq!(failure.reason, Reason::CodeMalformed);

        let failure = checked_enrollment_input("fleetkey://pair?v=1").unwrap_err();
        assert_eq!(failure.reason, Reason::PayloadInvalid);

        let uri = format!("fleetkey://enroll?v=9&c={code}&p=https://x");
        let failure = checked_enrollment_input(&uri).unwrap_err();
        assert_eq!(failure.reason, Reason::PayloadVersion);
    }
}
