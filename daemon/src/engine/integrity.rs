//! The integrity report (docs/integrity.md): the checks of
//! `fleetkey-integrity` run through the configured root, the gate on
//! activation and `user add` (`[integrity]` in fleetkeyd.toml), the
//! evidence the portal verifies (report, TPM2_Quote by the attestation
//! key, event log), and the on-demand path: the portal asks for a fresh
//! report on the device's stream (approvals.rs), and the device answers.

use fleetkey_integrity::eventlog::MAX_LOG_BYTES;
use fleetkey_integrity::quote::{Evidence, MAX_NONCE, MIN_NONCE, PcrValue, Quote, qualifying_data};
use fleetkey_integrity::{Inputs, Report, Root, hex};
use fleetkey_plugin::Operation;
use fleetkey_proto::{Failure, Reason, binding, daemon, portal};

use super::{Engine, Requester, public_key_pem};
use crate::audit::AuditEvent;
use crate::device_key::DeviceKey;
use crate::state::DeviceRecord;

/// Where Linux exposes the measured-boot event log.
const EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

/// A report quoted by the TPM, or why it could not be.
pub(super) struct Quoted {
    pub quote: Option<Quote>,
    pub ak_public_key_der: Vec<u8>,
    pub qualifying_data: [u8; 32],
    pub event_log: Vec<u8>,
    pub no_quote_reason: String,
}

impl Engine {
    /// What the checks look at: the configured root, the daemon's binary
    /// and config, the enrolled users, the kiosk accounts and `extra`
    /// (a user about to be added).
    fn integrity_inputs(&self, extra: Option<&str>) -> Inputs {
        let mut own_files = Vec::new();
        if let Ok(exe) = std::env::current_exe() {
            own_files.push(exe.to_string_lossy().into_owned());
        }
        if let Some(path) = &self.integrity.config_path {
            own_files.push(path.to_string_lossy().into_owned());
        }
        let mut accounts: Vec<String> = self.state.active_user_names().unwrap_or_default();
        accounts.extend(self.integrity.kiosk_accounts.iter().cloned());
        accounts.extend(extra.map(str::to_string));
        accounts.sort();
        accounts.dedup();
        Inputs {
            root: Root::new(&self.integrity.root),
            own_files,
            accounts,
        }
    }

    /// Runs every check (on the blocking pool: it reads files).
    pub(super) async fn integrity_report(&self, extra: Option<&str>) -> Result<Report, Failure> {
        let inputs = self.integrity_inputs(extra);
        tokio::task::spawn_blocking(move || fleetkey_integrity::report(&inputs))
            .await
            .map_err(|e| Failure::new(Reason::Internal, format!("a worker thread failed: {e}")))
    }

    /// The gate: refuses `operation` with INTEGRITY_REFUSED when a check
    /// the `[integrity]` section requires fails, listing each with its
    /// hint; records refusals and configured exceptions in the audit log.
    /// Returns the report, for the evidence sent to the portal.
    pub(super) async fn integrity_gate(
        &self,
        who: Requester,
        operation: &str,
        extra: Option<&str>,
    ) -> Result<Report, Failure> {
        let report = self.integrity_report(extra).await?;
        let verdict = self.integrity.policy().judge(&report);
        for excepted in &verdict.excepted {
            tracing::warn!(operation, check = %excepted.id, detail = %excepted.detail, "integrity check fails; the configuration lets it pass");
            self.audit(
                who,
                AuditEvent::IntegrityException {
                    operation: operation.to_string(),
                    check: excepted.id.clone(),
                },
            );
        }
        if verdict.allowed() {
            return Ok(report);
        }
        let failing: Vec<String> = verdict.failing.iter().map(|a| a.id.clone()).collect();
        tracing::warn!(operation, failing = ?failing, "refused by the integrity gate");
        self.audit(
            who,
            AuditEvent::IntegrityRefused {
                operation: operation.to_string(),
                failing,
            },
        );
        Err(Failure::new(
            Reason::IntegrityRefused,
            format!(
                "{operation} refused: this device fails {} integrity check(s) the configuration requires:\n{}",
                verdict.failing.len(),
                verdict
                    .failing
                    .iter()
                    .map(|a| format!("- {}: {}\n  fix: {}", a.id, a.detail, a.hint))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        )
        .with_hint("Fix each check as its hint says (fleetkeyctl integrity shows them all), or change [integrity] in fleetkeyd.toml."))
    }

    /// Quotes `report` with `nonce` by the first key store that has an
    /// attestation key (the TPM); without one, no quote and why. With
    /// `needs_log`, a machine without a measured-boot event log is not
    /// quoted either: the portal could not check the PCRs against it.
    pub(super) async fn quote_report(
        &self,
        report: &Report,
        nonce: &[u8],
        who: Requester,
        needs_log: bool,
    ) -> Result<Quoted, Failure> {
        let digest: [u8; 32] = fleetkey_integrity::unhex(&report.digest, 32)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| Failure::new(Reason::Internal, "the report's digest is not 32 bytes"))?;
        let qualifying = qualifying_data(&digest, nonce).map_err(|e| {
            Failure::new(Reason::InvalidArgument, e.to_string()).with_hint(format!(
                "Give a nonce of {MIN_NONCE} to {MAX_NONCE} bytes (hex)."
            ))
        })?;
        let root = Root::new(&self.integrity.root);
        let event_log = tokio::task::spawn_blocking(move || {
            root.read_bounded(EVENT_LOG, MAX_LOG_BYTES as u64)
                .unwrap_or_default()
        })
        .await
        .map_err(|e| Failure::new(Reason::Internal, format!("a worker thread failed: {e}")))?;
        let mut quoted = Quoted {
            quote: None,
            ak_public_key_der: Vec::new(),
            qualifying_data: qualifying,
            event_log,
            no_quote_reason: "no key store of this device has an attestation key (no TPM): the report cannot be verified remotely".into(),
        };
        if needs_log && quoted.event_log.is_empty() {
            quoted.no_quote_reason = format!(
                "this machine has no measured-boot event log ({EVENT_LOG}): a quote could not be checked against it"
            );
            return Ok(quoted);
        }
        for store in self.stores() {
            if !store.info().operations.contains(&Operation::Attest) {
                continue;
            }
            // The TPM's time is charged to whoever asked.
            let store = store.for_requester(who);
            if let Some(made) = store.quote(qualifying).await? {
                quoted.quote = Some(Quote {
                    attest: hex(&made.attest),
                    signature: hex(&made.signature),
                    pcrs: made
                        .pcrs
                        .iter()
                        .map(|(pcr, value)| PcrValue {
                            pcr: *pcr,
                            value: hex(value),
                        })
                        .collect(),
                });
                quoted.ak_public_key_der = made.ak_public_key_der;
                quoted.no_quote_reason.clear();
                break;
            }
        }
        Ok(quoted)
    }

    /// The evidence the portal verifies, as JSON: `report` quoted over
    /// `nonce` (an empty nonce: none was asked for, nothing is sent).
    pub(super) async fn evidence_json(
        &self,
        report: &Report,
        nonce: &[u8],
        who: Requester,
    ) -> Result<String, Failure> {
        if nonce.is_empty() {
            return Ok(String::new());
        }
        let quoted = self.quote_report(report, nonce, who, true).await?;
        let evidence = Evidence {
            report: report.clone(),
            nonce: hex(nonce),
            quote: quoted.quote,
            event_log: hex(&quoted.event_log),
        };
        serde_json::to_string(&evidence)
            .map_err(|e| Failure::new(Reason::Internal, format!("encoding the evidence: {e}")))
    }

    /// `fleetkeyctl integrity [--quote --nonce HEX]`.
    pub async fn get_integrity(
        &self,
        who: Requester,
        nonce: &[u8],
    ) -> Result<daemon::IntegrityResponse, Failure> {
        let report = self.integrity_report(None).await?;
        let report_json = serde_json::to_string(&report)
            .map_err(|e| Failure::new(Reason::Internal, format!("encoding the report: {e}")))?;
        if nonce.is_empty() {
            return Ok(daemon::IntegrityResponse {
                report_json,
                ..Default::default()
            });
        }
        let quoted = self.quote_report(&report, nonce, who, false).await?;
        let quote_json = match &quoted.quote {
            Some(quote) => serde_json::to_string(quote)
                .map_err(|e| Failure::new(Reason::Internal, format!("encoding the quote: {e}")))?,
            None => String::new(),
        };
        let ak_public_key_pem = if quoted.ak_public_key_der.is_empty() {
            String::new()
        } else {
            public_key_pem(&quoted.ak_public_key_der)?
        };
        Ok(daemon::IntegrityResponse {
            report_json,
            quote_json,
            ak_public_key_pem,
            qualifying_data: quoted.qualifying_data.to_vec(),
            no_quote_reason: quoted.no_quote_reason,
            event_log: quoted.event_log,
        })
    }

    /// The `status` line: (summary, level, remotely verifiable).
    pub(super) async fn integrity_status(&self) -> (String, u32, bool) {
        match self.integrity_report(None).await {
            Ok(report) => (
                report.summary(),
                u32::from(report.level),
                report.remotely_verifiable,
            ),
            Err(failure) => (
                format!("integrity report failed: {}", failure.message),
                0,
                false,
            ),
        }
    }

    /// Answers an operator's request for a fresh report, which came on
    /// the portal stream with `nonce`: the report, quoted over the nonce
    /// where a TPM can, signed by the device key and submitted. Logs the
    /// portal's verdict.
    pub(super) async fn answer_integrity_request(&self, device: &DeviceRecord, nonce: &[u8]) {
        match self.submit_fresh_evidence(device, nonce).await {
            Ok(result) => {
                tracing::info!(%result, "sent a fresh integrity report the portal asked for")
            }
            Err(failure) => {
                tracing::warn!(%failure, "could not answer the portal's integrity request")
            }
        }
    }

    async fn submit_fresh_evidence(
        &self,
        device: &DeviceRecord,
        nonce: &[u8],
    ) -> Result<String, Failure> {
        // The portal's nonce is 32 bytes; a hostile portal's is bounded here.
        if !(MIN_NONCE..=MAX_NONCE).contains(&nonce.len()) {
            return Err(Failure::new(
                Reason::PortalError,
                format!(
                    "the portal's integrity nonce is {} bytes, not {MIN_NONCE} to {MAX_NONCE}",
                    nonce.len()
                ),
            ));
        }
        let key = DeviceKey::from_secret(&device.key_secret)?;
        let report = self.integrity_report(None).await?;
        let evidence = self
            .evidence_json(&report, nonce, Requester::Daemon)
            .await?;
        let device_signature = key.sign_digest(&binding::digest(
            &binding::integrity_submit_message(&device.device_id, &evidence),
        ))?;
        let mut portal = self.portal.connect(&device.portal_url).await?;
        let answer = portal
            .submit_integrity(portal::SubmitIntegrityRequest {
                device_id: device.device_id.clone(),
                evidence,
                device_signature,
            })
            .await?;
        Ok(answer.result)
    }
}
