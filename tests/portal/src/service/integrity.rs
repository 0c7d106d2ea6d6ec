//! The portal's side of integrity (docs/integrity.md): nonces handed out
//! with code checks, evidence verified at activation and user add, the
//! policy of `serve --require-integrity LEVEL`, and the on-demand path
//! (`fleetkey-portal device integrity DEVICE` records a request; the
//! device's stream carries it with a nonce, and the device submits fresh
//! evidence).

use std::sync::{Arc, Mutex};

use fleetkey_integrity::Policy;
use fleetkey_integrity::quote::Evidence;
use fleetkey_proto::portal::{SubmitIntegrityRequest, SubmitIntegrityResponse};
use fleetkey_proto::time::now_unix;
use fleetkey_proto::{ActivationCode, Failure, Reason, binding};

use super::{PortalService, internal, known_device};
use crate::integrity::{Expected, NonceBook, Verified};
use crate::store::{Db, IntegrityRecord};

/// Largest evidence JSON accepted: the report, a quote and an event log
/// of at most 8 MiB as hex.
pub const MAX_EVIDENCE_BYTES: usize = 17 << 20;

/// The nonces issued and the level required, shared by the handlers.
#[derive(Debug, Default)]
pub struct IntegrityGate {
    nonces: Mutex<NonceBook>,
    /// `serve --require-integrity LEVEL`: evidence is required, must be
    /// quoted by a TPM, and every check up to LEVEL must pass.
    pub require_level: Option<u8>,
}

/// The nonce book key of a code (activation and user add).
pub fn code_key(code: &ActivationCode) -> String {
    format!("code:{}", code.compact())
}

fn refused(message: String) -> Failure {
    Failure::new(Reason::IntegrityRefused, message).with_hint(
        "The device's integrity evidence did not satisfy this portal; `fleetkeyctl integrity` on the device shows its checks.",
    )
}

impl IntegrityGate {
    pub fn new(require_level: Option<u8>) -> Self {
        Self {
            nonces: Mutex::new(NonceBook::default()),
            require_level,
        }
    }

    /// A fresh nonce for `key`.
    pub fn issue(&self, key: &str, now: i64) -> Result<Vec<u8>, Failure> {
        let mut book = self
            .nonces
            .lock()
            .map_err(|_| internal("the nonce book's lock is poisoned"))?;
        book.issue(key, now)
            .map(|n| n.to_vec())
            .map_err(|e| internal(format!("the random generator failed: {e}")))
    }

    /// Verifies `evidence_json` (empty: the device sent none) against the
    /// nonce issued under `key` and the AK `ak_public`. None when no
    /// evidence came and none is required.
    pub fn check(
        &self,
        key: &str,
        evidence_json: &str,
        ak_public: Option<&[u8]>,
        now: i64,
    ) -> Result<Option<Verified>, Failure> {
        if evidence_json.is_empty() {
            return match self.require_level {
                Some(level) => Err(refused(format!(
                    "the device sent no integrity evidence, and this portal requires HSI:{level} verified by a TPM"
                ))),
                None => Ok(None),
            };
        }
        if evidence_json.len() > MAX_EVIDENCE_BYTES {
            return Err(refused(format!(
                "the integrity evidence is {} bytes, more than {MAX_EVIDENCE_BYTES}",
                evidence_json.len()
            )));
        }
        let evidence: Evidence = serde_json::from_str(evidence_json)
            .map_err(|e| refused(format!("the integrity evidence does not parse: {e}")))?;
        let policy = Policy {
            min_level: self.require_level.unwrap_or(0),
            ..Policy::default()
        };
        let expected = Expected {
            device_id: key,
            ak_public,
            policy: &policy,
            require_quote: self.require_level.is_some(),
        };
        let mut book = self
            .nonces
            .lock()
            .map_err(|_| internal("the nonce book's lock is poisoned"))?;
        crate::integrity::verify(&evidence, &expected, &mut book, now)
            .map(Some)
            .map_err(|e| refused(format!("integrity evidence refused: {e}")))
    }
}

/// Records what was verified for `device_id`.
pub fn record(
    db: &Db<'_>,
    device_id: &str,
    verified: &Verified,
    occasion: &str,
) -> Result<(), Failure> {
    db.set_integrity(&IntegrityRecord {
        device_id: device_id.to_string(),
        level: verified.level,
        summary: verified.summary.clone(),
        tpm_verified: verified.tpm_verified,
        report_digest: verified.report_digest.clone(),
        exceptions: verified.exceptions.join(","),
        verified_at: verified.verified_at,
        occasion: occasion.to_string(),
    })?;
    Ok(())
}

impl PortalService {
    /// The gate the handlers share.
    pub(super) fn gate(&self) -> Arc<IntegrityGate> {
        self.integrity.clone()
    }

    /// A nonce for the device's answer to an operator's request, when
    /// one is pending and was not yet sent on this stream (`pushed` is the
    /// request time last sent). Called by the device stream.
    pub(crate) async fn integrity_request_for(
        &self,
        device_id: &str,
        pushed: &mut Option<i64>,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let id = device_id.to_string();
        let requested = self
            .with_store(move |store| Ok(store.db().integrity_request(&id)?))
            .await?;
        match requested {
            Some(at) if *pushed != Some(at) => {
                *pushed = Some(at);
                Ok(Some(self.integrity.issue(device_id, now_unix())?))
            }
            _ => Ok(None),
        }
    }

    /// The device's answer to a request: verified and recorded; the
    /// request is then done.
    pub async fn submit_integrity(
        &self,
        request: SubmitIntegrityRequest,
    ) -> Result<SubmitIntegrityResponse, Failure> {
        let message = binding::integrity_submit_message(&request.device_id, &request.evidence);
        let (device, ()) = self
            .signed_by_device(
                "SubmitIntegrity",
                None,
                &request.device_id,
                &request.device_signature,
                || Ok((message, ())),
            )
            .await?;
        let now = now_unix();
        let ak = device.tpm.as_ref().map(|t| t.ak_public.clone());
        let gate = self.gate();
        let evidence = request.evidence;
        let id = device.device_id.clone();
        let checked = gate.check(&id, &evidence, ak.as_deref(), now);
        let result = match &checked {
            Ok(Some(v)) => format!(
                "verified: {}{}",
                v.summary,
                if v.tpm_verified {
                    ""
                } else {
                    " (no TPM: the device's word only)"
                }
            ),
            Ok(None) => "no evidence".into(),
            Err(f) => f.message.clone(),
        };
        self.with_store(move |store| {
            let db = store.db();
            if let Ok(Some(verified)) = &checked {
                record(&db, &id, verified, "on-demand")?;
            }
            db.clear_integrity_request(&id)?;
            if let Err(failure) = checked {
                tracing::warn!(device_id = %id, %failure, "on-demand integrity evidence refused");
            }
            Ok(())
        })
        .await?;
        tracing::info!(device_id = %device.device_id, %result, "on-demand integrity evidence");
        Ok(SubmitIntegrityResponse { result })
    }
}

/// `fleetkey-portal device integrity DEVICE`: records the request; the
/// device's stream carries it (now, or when the device connects next).
pub fn request(db: &Db<'_>, device_id: &str) -> Result<(), Failure> {
    known_device(db, device_id)?;
    db.request_integrity(device_id, now_unix())?;
    Ok(())
}
