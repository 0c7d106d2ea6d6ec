//! The portal's check of a device's integrity evidence (docs/integrity.md,
//! "What the portal checks"): the report, the TPM2_Quote over it by the
//! AK the portal learned at activation, the nonce the portal issued, the
//! event log replaying to the quoted PCRs, and the policy. [`verify`]
//! returns what to record, or the first check that failed.
//!
//! Nonces come from a [`NonceBook`]: issued per device, used once, and
//! only for [`NONCE_LIFETIME_SECS`]; it holds at most
//! [`MAX_NONCES_PER_DEVICE`] per device and [`MAX_NONCES`] in all (the
//! oldest are dropped first), so no caller can make it grow without bound.

use std::collections::{HashMap, VecDeque};

use fleetkey_integrity::eventlog::{EventLog, MAX_LOG_BYTES, TPM_ALG_SHA256};
use fleetkey_integrity::quote::{Evidence, QUOTED_PCRS, QuoteAttest, pcr_digest, qualifying_data};
use fleetkey_integrity::{Policy, Report, unhex};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::tpm::{self, Public, constant_time_eq};

/// How long an issued nonce may be answered.
pub const NONCE_LIFETIME_SECS: i64 = 300;
/// Outstanding nonces per device.
pub const MAX_NONCES_PER_DEVICE: usize = 8;
/// Outstanding nonces in all.
pub const MAX_NONCES: usize = 65_536;
/// Bytes of a nonce the portal issues.
pub const NONCE_BYTES: usize = 32;

/// Why evidence was refused: the check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    #[error("the nonce was not issued to this device, was already used, or expired")]
    NonceNotFresh,
    #[error("the report is inconsistent: its digest or level is not what its attributes give")]
    ReportInconsistent,
    #[error("the device sent no quote, and the policy requires a TPM-verified report")]
    Unverifiable,
    #[error(
        "the device registered no attestation key at activation, so its quote cannot be checked"
    )]
    NoAttestationKey,
    #[error("the quote is invalid: {0}")]
    QuoteInvalid(String),
    #[error(
        "the quote's signature does not verify with the device's attestation key (a quote from another TPM?)"
    )]
    WrongSigner,
    #[error("the quote does not bind this report and nonce (qualifying data differs)")]
    WrongQualifyingData,
    #[error("the PCR values sent are not the ones the TPM quoted")]
    PcrMismatch,
    #[error("the event log does not replay to the quoted PCRs: {0}")]
    EventLogMismatch(String),
    #[error("the device does not meet the integrity policy:\n{0}")]
    Policy(String),
}

/// What the portal records of verified evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// HSI level of the report.
    pub level: u8,
    /// `Report::summary`.
    pub summary: String,
    /// True when a quote by the device's AK vouched for the report and the
    /// event log; false for a device without TPM (its word only).
    pub tpm_verified: bool,
    pub report_digest: String,
    /// Failing attributes the policy ignores.
    pub exceptions: Vec<String>,
    pub verified_at: i64,
}

/// Nonces issued to devices, each usable once.
#[derive(Debug, Default)]
pub struct NonceBook {
    by_device: HashMap<String, VecDeque<([u8; NONCE_BYTES], i64)>>,
    order: VecDeque<String>,
}

impl NonceBook {
    /// A fresh random nonce for `device`.
    pub fn issue(&mut self, device: &str, now: i64) -> Result<[u8; NONCE_BYTES], getrandom::Error> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce)?;
        self.insert(device, nonce, now);
        Ok(nonce)
    }

    /// Records `nonce` as issued to `device` (e.g. the nonce of a code check).
    pub fn insert(&mut self, device: &str, nonce: [u8; NONCE_BYTES], now: i64) {
        let list = self.by_device.entry(device.to_string()).or_default();
        list.retain(|(_, at)| now.saturating_sub(*at) <= NONCE_LIFETIME_SECS);
        if list.len() >= MAX_NONCES_PER_DEVICE {
            list.pop_front();
        }
        list.push_back((nonce, now));
        self.order.push_back(device.to_string());
        while self.order.len() > MAX_NONCES {
            if let Some(oldest) = self.order.pop_front()
                && let Some(list) = self.by_device.get_mut(&oldest)
            {
                list.pop_front();
                if list.is_empty() {
                    self.by_device.remove(&oldest);
                }
            }
        }
    }

    /// Uses up `nonce` of `device`: true once, if issued less than
    /// [`NONCE_LIFETIME_SECS`] ago.
    pub fn take(&mut self, device: &str, nonce: &[u8], now: i64) -> bool {
        let Some(list) = self.by_device.get_mut(device) else {
            return false;
        };
        let found = list.iter().position(|(n, _)| constant_time_eq(n, nonce));
        match found {
            Some(i) => {
                let (_, at) = list.remove(i).unwrap_or(([0; NONCE_BYTES], i64::MAX));
                now >= at && now.saturating_sub(at) <= NONCE_LIFETIME_SECS
            }
            None => false,
        }
    }
}

/// What the portal expects of one device's evidence.
pub struct Expected<'a> {
    pub device_id: &'a str,
    /// The AK's TPMT_PUBLIC, as registered at activation (None: the
    /// device was activated without a TPM identity).
    pub ak_public: Option<&'a [u8]>,
    pub policy: &'a Policy,
    /// Refuse a report that no quote vouches for (`serve
    /// --require-integrity` with a TPM-less device).
    pub require_quote: bool,
}

/// Checks `evidence` in the order of docs/integrity.md; `nonces` yields
/// the nonce once.
pub fn verify(
    evidence: &Evidence,
    expected: &Expected<'_>,
    nonces: &mut NonceBook,
    now: i64,
) -> Result<Verified, IntegrityError> {
    let nonce = unhex(&evidence.nonce, NONCE_BYTES).ok_or(IntegrityError::NonceNotFresh)?;
    if !nonces.take(expected.device_id, &nonce, now) {
        return Err(IntegrityError::NonceNotFresh);
    }
    let report = &evidence.report;
    if !report.is_consistent() {
        return Err(IntegrityError::ReportInconsistent);
    }
    let tpm_verified = match &evidence.quote {
        Some(quote) => {
            check_quote(
                report,
                &nonce,
                quote,
                &evidence.event_log,
                expected.ak_public,
            )?;
            true
        }
        None if expected.require_quote => return Err(IntegrityError::Unverifiable),
        None => false,
    };
    let verdict = expected.policy.judge(report);
    if !verdict.allowed() {
        return Err(IntegrityError::Policy(verdict.explain()));
    }
    Ok(Verified {
        level: report.level,
        summary: report.summary(),
        tpm_verified,
        report_digest: report.digest.clone(),
        exceptions: verdict.excepted.iter().map(|a| a.id.clone()).collect(),
        verified_at: now,
    })
}

fn check_quote(
    report: &Report,
    nonce: &[u8],
    quote: &fleetkey_integrity::quote::Quote,
    event_log: &str,
    ak_public: Option<&[u8]>,
) -> Result<(), IntegrityError> {
    let invalid = IntegrityError::QuoteInvalid;
    let ak = ak_public.ok_or(IntegrityError::NoAttestationKey)?;
    let ak = Public::parse(ak).map_err(|e| invalid(format!("registered AK: {e}")))?;
    let ak_key = ak
        .p256_key()
        .map_err(|e| invalid(format!("registered AK: {e}")))?;
    let attest = unhex(&quote.attest, fleetkey_integrity::quote::MAX_ATTEST)
        .ok_or_else(|| invalid("the quote is not hex".into()))?;
    let signature =
        unhex(&quote.signature, 256).ok_or_else(|| invalid("the signature is not hex".into()))?;
    let signature = tpm::parse_ecdsa_signature(&signature).map_err(|e| invalid(e.to_string()))?;
    let digest = Sha256::digest(&attest);
    // TPMs do not normalize s; ECDSA accepts either.
    let normalized = signature.normalize_s();
    let verifies = ak_key.verify_prehash(&digest, &signature).is_ok()
        || (normalized != signature && ak_key.verify_prehash(&digest, &normalized).is_ok());
    if !verifies {
        return Err(IntegrityError::WrongSigner);
    }
    let parsed = QuoteAttest::parse(&attest).map_err(|e| invalid(e.to_string()))?;
    let report_digest: [u8; 32] = unhex(&report.digest, 32)
        .and_then(|d| d.try_into().ok())
        .ok_or(IntegrityError::ReportInconsistent)?;
    let expected = qualifying_data(&report_digest, nonce).map_err(|e| invalid(e.to_string()))?;
    if !constant_time_eq(&parsed.extra_data, &expected) {
        return Err(IntegrityError::WrongQualifyingData);
    }
    let selected = parsed
        .selection
        .iter()
        .map(|s| (s.bank, s.pcrs.clone()))
        .collect::<Vec<_>>();
    if selected != vec![(TPM_ALG_SHA256, QUOTED_PCRS.to_vec())] {
        return Err(invalid(format!(
            "it selects {selected:?}, not PCRs 0-7 of SHA-256"
        )));
    }
    let numbers: Vec<u32> = quote.pcrs.iter().map(|p| p.pcr).collect();
    let values: Vec<Vec<u8>> = quote
        .pcrs
        .iter()
        .map(|p| unhex(&p.value, 32).filter(|v| v.len() == 32))
        .collect::<Option<_>>()
        .ok_or(IntegrityError::PcrMismatch)?;
    if numbers != QUOTED_PCRS || pcr_digest(&values).as_slice() != parsed.pcr_digest.as_slice() {
        return Err(IntegrityError::PcrMismatch);
    }
    let log = unhex(event_log, MAX_LOG_BYTES).ok_or_else(|| {
        IntegrityError::EventLogMismatch("the event log is missing, not hex, or too large".into())
    })?;
    let log = EventLog::parse(&log).map_err(|e| IntegrityError::EventLogMismatch(e.to_string()))?;
    let replayed = log
        .replay(TPM_ALG_SHA256)
        .map_err(|e| IntegrityError::EventLogMismatch(e.to_string()))?;
    let differing: Vec<String> = values
        .iter()
        .zip(&replayed)
        .enumerate()
        .filter(|(_, (quoted, replayed))| quoted != replayed)
        .map(|(i, _)| format!("PCR {i}"))
        .collect();
    if !differing.is_empty() {
        return Err(IntegrityError::EventLogMismatch(format!(
            "{} differ",
            differing.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
