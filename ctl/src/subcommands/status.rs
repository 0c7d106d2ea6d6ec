//! `fleetkeyctl status`: version, activation, PIN policy, users, backends.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::{self, GetStatusRequest};
use fleetkey_proto::terminal::escape;
use fleetkey_proto::time::rfc3339;
use serde::Serialize;

use super::Context;
use crate::output;

/// Show the daemon's version, activation state, PIN policy and key stores
#[derive(Debug, clap::Args)]
#[command(long_about = "\
Shows fleetkeyd's version, whether the device is activated (its device ID \
and portal), the PIN policy, how many users are enrolled, and every key \
store (backend): whether it is available (and why not), whether its keys \
are hardware-backed, what it can do and which attestation formats it \
produces. Anyone may run it.")]
pub struct Status {}

impl Status {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let status = client
            .get_status(GetStatusRequest {})
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        if ctx.json {
            output::json(&status_json(&status))
        } else {
            output::data(&status_text(&status))
        }
    }
}

/// `status --json`.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    pub version: String,
    pub activated: bool,
    pub device_id: String,
    pub portal_url: String,
    /// RFC 3339; null when not activated.
    pub activated_at: Option<String>,
    /// What the portal verified of the device's TPM at activation; empty
    /// when none.
    pub device_attestation: String,
    pub default_backend: String,
    pub user_count: u32,
    pub pin_policy: PinPolicyJson,
    pub backends: Vec<BackendJson>,
    pub ctl_version: String,
    /// The portal stream (docs/approvals.md): `connected`, `connecting`,
    /// `disconnected` or `inactive`.
    pub portal_stream: String,
    /// RFC 3339: since when the stream is in that state.
    pub portal_stream_since: Option<String>,
    /// Why the last connection failed or ended; empty when none did.
    pub portal_stream_error: String,
    pub portal_stream_connections: u32,
    /// Login challenges waiting for an answer.
    pub pending_approvals: u32,
    /// The integrity report in one line (fleetkeyctl integrity).
    pub integrity_summary: String,
    /// Its HSI level (0-4).
    pub integrity_level: u32,
    pub integrity_remotely_verifiable: bool,
}

#[derive(Debug, Serialize)]
pub struct PinPolicyJson {
    pub min_length: u32,
    pub max_length: u32,
    pub max_attempts: u32,
}

#[derive(Debug, Serialize)]
pub struct BackendJson {
    pub name: String,
    pub description: String,
    pub available: bool,
    pub unavailable_reason: String,
    pub hardware_backed: bool,
    pub attestation_formats: Vec<String>,
    pub capabilities: Vec<String>,
    pub pin_min_length: u32,
    pub pin_max_length: u32,
    /// Wrong PINs in a row after which a user of this backend is locked.
    pub pin_max_attempts: u32,
    /// Facts about the hardware (e.g. a TPM's manufacturer and firmware);
    /// `warning` holds what the operator must know.
    pub details: std::collections::BTreeMap<String, String>,
}

/// Shapes the daemon's status for `--json`.
pub fn status_json(status: &daemon::Status) -> StatusJson {
    let policy = status.pin_policy.unwrap_or_default();
    StatusJson {
        version: status.version.clone(),
        activated: status.activated,
        device_id: status.device_id.clone(),
        portal_url: status.portal_url.clone(),
        activated_at: (status.activated && status.activated_at != 0)
            .then(|| rfc3339(status.activated_at)),
        device_attestation: status.device_attestation.clone(),
        default_backend: status.default_backend.clone(),
        user_count: status.user_count,
        pin_policy: PinPolicyJson {
            min_length: policy.min_length,
            max_length: policy.max_length,
            max_attempts: policy.max_attempts,
        },
        backends: status.backends.iter().map(backend_json).collect(),
        ctl_version: crate::CTL_VERSION.to_string(),
        portal_stream: status.portal_stream.clone(),
        portal_stream_since: (status.portal_stream_since != 0)
            .then(|| rfc3339(status.portal_stream_since)),
        portal_stream_error: status.portal_stream_error.clone(),
        portal_stream_connections: status.portal_stream_connections,
        pending_approvals: status.pending_approvals,
        integrity_summary: status.integrity_summary.clone(),
        integrity_level: status.integrity_level,
        integrity_remotely_verifiable: status.integrity_remotely_verifiable,
    }
}

fn backend_json(backend: &daemon::Backend) -> BackendJson {
    BackendJson {
        name: backend.name.clone(),
        description: backend.description.clone(),
        available: backend.available,
        unavailable_reason: backend.unavailable_reason.clone(),
        hardware_backed: backend.hardware_backed,
        attestation_formats: backend.attestation_formats.clone(),
        capabilities: backend.capabilities.clone(),
        pin_min_length: backend.pin_min_length,
        pin_max_length: backend.pin_max_length,
        pin_max_attempts: backend.pin_max_attempts,
        details: backend
            .details
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// "4 to 64 characters", "at least 4 characters", ...; 0 means no limit.
pub fn length_rule(min: u32, max: u32) -> String {
    let plural = |n: u32| if n == 1 { "character" } else { "characters" };
    match (min, max) {
        (0, 0) => "any length".to_string(),
        (min, 0) => format!("at least {min} {}", plural(min)),
        (0, max) => format!("at most {max} {}", plural(max)),
        (min, max) if min == max => format!("exactly {min} {}", plural(min)),
        (min, max) => format!("{min} to {max} characters"),
    }
}

fn pin_policy_text(policy: &daemon::PinPolicy) -> String {
    let lockout = match policy.max_attempts {
        0 => "never locked".to_string(),
        1 => "locked after 1 wrong PIN".to_string(),
        n => format!("locked after {n} wrong PINs"),
    };
    format!(
        "{}; {lockout}",
        length_rule(policy.min_length, policy.max_length)
    )
}

/// The human summary.
pub fn status_text(status: &daemon::Status) -> String {
    let policy = status.pin_policy.unwrap_or_default();
    let mut text = format!(
        "fleetkeyd {} (fleetkeyctl {})\n",
        escape(&status.version),
        crate::CTL_VERSION
    );
    let device = if status.activated {
        let mut line = format!("activated as {}", escape(&status.device_id));
        if !status.portal_url.is_empty() {
            line.push_str(&format!(" with {}", escape(&status.portal_url)));
        }
        if status.activated_at != 0 {
            line.push_str(&format!(" since {}", rfc3339(status.activated_at)));
        }
        line
    } else if status.portal_url.is_empty() {
        "not activated (no default portal configured)".to_string()
    } else {
        format!(
            "not activated (default portal: {})",
            escape(&status.portal_url)
        )
    };
    let default_backend = if status.default_backend.is_empty() {
        "-".into()
    } else {
        escape(&status.default_backend)
    };
    text.push_str(&format!("Device:           {device}\n"));
    if status.activated {
        let attestation = if status.device_attestation.is_empty() {
            "unknown (activated by an older fleetkeyd)".into()
        } else {
            escape(&status.device_attestation)
        };
        text.push_str(&format!("Attestation:      {attestation}\n"));
        let mut stream = escape(&status.portal_stream).into_owned();
        if !status.portal_stream_error.is_empty() && status.portal_stream != "connected" {
            stream.push_str(&format!(" ({})", escape(&status.portal_stream_error)));
        }
        text.push_str(&format!("Portal stream:    {stream}\n"));
        text.push_str(&format!(
            "Approvals:        {} pending\n",
            status.pending_approvals
        ));
    }
    if !status.integrity_summary.is_empty() {
        text.push_str(&format!(
            "Integrity:        {}{}\n",
            escape(&status.integrity_summary),
            if status.integrity_remotely_verifiable {
                ""
            } else {
                "; no TPM: cannot be verified remotely"
            }
        ));
    }
    text.push_str(&format!("Users:            {}\n", status.user_count));
    text.push_str(&format!("Default backend:  {default_backend}\n"));
    text.push_str(&format!("PIN policy:       {}\n", pin_policy_text(&policy)));

    text.push('\n');
    if status.backends.is_empty() {
        text.push_str("No key stores (backends) are configured.\n");
        return text;
    }
    let rows: Vec<Vec<String>> = status
        .backends
        .iter()
        .map(|b| {
            vec![
                b.name.clone(),
                output::yes_no(b.available).to_string(),
                if b.hardware_backed {
                    "yes".to_string()
                } else {
                    "no (software)".to_string()
                },
                match (b.pin_min_length, b.pin_max_length) {
                    (0, 0) => "-".to_string(),
                    (min, max) => length_rule(min, max),
                },
                list_or_dash(&b.attestation_formats),
                list_or_dash(&b.capabilities),
            ]
        })
        .collect();
    text.push_str(&output::table(
        &[
            "BACKEND",
            "AVAILABLE",
            "HARDWARE",
            "PIN LENGTH",
            "ATTESTATION",
            "CAPABILITIES",
        ],
        &rows,
    ));
    for backend in status.backends.iter().filter(|b| b.available) {
        let policy_max = policy.max_attempts;
        if backend.pin_max_attempts != 0 && backend.pin_max_attempts < policy_max {
            text.push_str(&format!(
                "\n{}: users are locked after {} wrong PINs (fewer than the policy's {policy_max}: the hardware needs it)\n",
                escape(&backend.name),
                backend.pin_max_attempts
            ));
        }
        let mut details: Vec<(&String, &String)> = backend
            .details
            .iter()
            .filter(|(k, _)| k.as_str() != "warning")
            .collect();
        details.sort();
        if !details.is_empty() {
            text.push_str(&format!("\n{}:\n", escape(&backend.name)));
            for (key, value) in details {
                text.push_str(&format!("  {}: {}\n", escape(key), escape(value)));
            }
        }
        if let Some(warning) = backend.details.get("warning") {
            text.push_str(&format!(
                "warning: {}: {}\n",
                escape(&backend.name),
                escape(warning)
            ));
        }
    }
    let unavailable: Vec<&daemon::Backend> =
        status.backends.iter().filter(|b| !b.available).collect();
    if !unavailable.is_empty() {
        text.push('\n');
        for backend in unavailable {
            let why = if backend.unavailable_reason.is_empty() {
                "no reason given".into()
            } else {
                escape(&backend.unavailable_reason)
            };
            text.push_str(&format!(
                "{} is unavailable: {why}\n",
                escape(&backend.name)
            ));
        }
    }
    text
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn sample_status() -> daemon::Status {
        daemon::Status {
            integrity_summary: String::new(),
            integrity_level: 0,
            integrity_remotely_verifiable: false,
            version: "0.1.0".into(),
            activated: true,
            device_id: "dev-42".into(),
            portal_url: "https://portal.example.com".into(),
            backends: vec![
                daemon::Backend {
                    name: "soft".into(),
                    description: "software keys (development only)".into(),
                    available: true,
                    unavailable_reason: String::new(),
                    hardware_backed: false,
                    attestation_formats: vec![],
                    capabilities: vec!["create".into(), "sign".into()],
                    pin_min_length: 0,
                    pin_max_length: 0,
                    details: Default::default(),
                    pin_max_attempts: 5,
                },
                daemon::Backend {
                    name: "pcsc".into(),
                    description: "PIV smartcard".into(),
                    available: false,
                    unavailable_reason: "no smartcard reader".into(),
                    hardware_backed: true,
                    attestation_formats: vec!["piv".into()],
                    capabilities: vec!["create".into(), "sign".into(), "attest".into()],
                    pin_min_length: 6,
                    pin_max_length: 8,
                    details: [("manufacturer".to_string(), "Yubico".to_string())]
                        .into_iter()
                        .collect(),
                    pin_max_attempts: 0,
                },
            ],
            user_count: 2,
            default_backend: "soft".into(),
            pin_policy: Some(daemon::PinPolicy {
                min_length: 4,
                max_length: 64,
                max_attempts: 5,
            }),
            activated_at: 1_795_918_359,
            device_attestation: "no TPM identity".into(),
            ..Default::default()
        }
    }

    #[test]
    fn json_shape() {
        let value = serde_json::to_value(status_json(&sample_status())).unwrap();
        assert_eq!(
            value,
            json!({
                "version": "0.1.0",
                "activated": true,
                "device_id": "dev-42",
                "portal_url": "https://portal.example.com",
                "activated_at": "2026-11-29T02:12:39Z",
                "device_attestation": "no TPM identity",
                "default_backend": "soft",
                "user_count": 2,
                "pin_policy": {"min_length": 4, "max_length": 64, "max_attempts": 5},
                "backends": [
                    {
                        "name": "soft",
                        "description": "software keys (development only)",
                        "available": true,
                        "unavailable_reason": "",
                        "hardware_backed": false,
                        "attestation_formats": [],
                        "capabilities": ["create", "sign"],
                        "pin_min_length": 0,
                        "pin_max_length": 0,
                        "pin_max_attempts": 5,
                        "details": {}
                    },
                    {
                        "name": "pcsc",
                        "description": "PIV smartcard",
                        "available": false,
                        "unavailable_reason": "no smartcard reader",
                        "hardware_backed": true,
                        "attestation_formats": ["piv"],
                        "capabilities": ["create", "sign", "attest"],
                        "pin_min_length": 6,
                        "pin_max_length": 8,
                        "pin_max_attempts": 0,
                        "details": {"manufacturer": "Yubico"}
                    }
                ],
                "ctl_version": crate::CTL_VERSION,
                "portal_stream": "",
                "portal_stream_since": null,
                "portal_stream_error": "",
                "portal_stream_connections": 0,
                "pending_approvals": 0,
                "integrity_summary": "",
                "integrity_level": 0,
                "integrity_remotely_verifiable": false,
            })
        );
    }

    #[test]
    fn not_activated_has_null_time_and_zero_policy_when_missing() {
        let status = daemon::Status {
            integrity_summary: String::new(),
            integrity_level: 0,
            integrity_remotely_verifiable: false,
            version: "0.1.0".into(),
            portal_url: "https://default.example".into(),
            ..Default::default()
        };
        let value = serde_json::to_value(status_json(&status)).unwrap();
        assert_eq!(value["activated"], json!(false));
        assert_eq!(value["activated_at"], json!(null));
        assert_eq!(value["device_id"], json!(""));
        assert_eq!(
            value["pin_policy"],
            json!({"min_length": 0, "max_length": 0, "max_attempts": 0})
        );
        assert_eq!(value["backends"], json!([]));
        let text = status_text(&status);
        assert!(text.contains("not activated (default portal: https://default.example)"));
        assert!(text.contains("No key stores"));
    }

    #[test]
    fn human_summary() {
        let text = status_text(&sample_status());
        assert!(text.starts_with("fleetkeyd 0.1.0 (fleetkeyctl "), "{text}");
        assert!(text.contains(
            "activated as dev-42 with https://portal.example.com since 2026-11-29T02:12:39Z"
        ));
        assert!(text.contains("PIN policy:       4 to 64 characters; locked after 5 wrong PINs"));
        assert!(text.contains("Users:            2"));
        assert!(
            text.contains("Attestation:      no TPM identity\n"),
            "{text}"
        );
        assert!(text.contains("BACKEND  AVAILABLE  HARDWARE"));
        assert!(text.contains("soft     yes        no (software)"), "{text}");
        assert!(text.contains("6 to 8 characters"));
        assert!(text.contains("pcsc is unavailable: no smartcard reader"));
    }

    #[test]
    fn hardware_details_and_warnings_are_shown() {
        let mut status = sample_status();
        status.backends.push(daemon::Backend {
            name: "tpm".into(),
            available: true,
            hardware_backed: true,
            pin_max_attempts: 2,
            details: [
                ("manufacturer".to_string(), "IBM".to_string()),
                ("firmware".to_string(), "8217.4131".to_string()),
                ("warning".to_string(), "this TPM is a simulator".to_string()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        });
        let text = status_text(&status);
        assert!(
            text.contains("tpm:\n  firmware: 8217.4131\n  manufacturer: IBM\n"),
            "{text}"
        );
        assert!(
            text.contains("warning: tpm: this TPM is a simulator"),
            "{text}"
        );
        assert!(
            text.contains("tpm: users are locked after 2 wrong PINs"),
            "{text}"
        );
        let json = serde_json::to_value(status_json(&status)).unwrap();
        assert_eq!(json["backends"][2]["details"]["manufacturer"], "IBM");
        assert_eq!(json["backends"][2]["pin_max_attempts"], 2);
    }

    #[test]
    fn length_rules() {
        assert_eq!(length_rule(0, 0), "any length");
        assert_eq!(length_rule(4, 0), "at least 4 characters");
        assert_eq!(length_rule(0, 8), "at most 8 characters");
        assert_eq!(length_rule(6, 6), "exactly 6 characters");
        assert_eq!(length_rule(6, 8), "6 to 8 characters");
    }
}
