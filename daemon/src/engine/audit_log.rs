//! Reading and checking the audit log (audit.rs) for the `ReadAudit` and
//! `VerifyAudit` calls. Both read the file on the blocking pool.

use fleetkey_proto::{Failure, Reason, daemon};

use super::Engine;
use crate::audit::AuditError;

/// Entries in one page when the caller gives no limit.
pub const DEFAULT_PAGE: u32 = 100;
/// The most entries one call returns, whatever the caller asks.
pub const MAX_PAGE: u32 = 1000;

impl Engine {
    /// One page of the log: at most `MAX_PAGE` entries after `after_seq`.
    pub async fn read_audit(
        &self,
        after_seq: u64,
        limit: u32,
    ) -> Result<daemon::ReadAuditResponse, Failure> {
        let limit = match limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let log = self.audit.clone();
        let (entries_json, more) =
            tokio::task::spawn_blocking(move || log.page(after_seq, limit as usize))
                .await
                .map_err(worker_failed)?
                .map_err(audit_failure)?;
        Ok(daemon::ReadAuditResponse { entries_json, more })
    }

    /// Checks the whole log against its chain and its anchored head.
    pub async fn verify_audit(&self) -> Result<daemon::VerifyAuditResponse, Failure> {
        let log = self.audit.clone();
        let verified = tokio::task::spawn_blocking(move || log.verify())
            .await
            .map_err(worker_failed)?
            .map_err(audit_failure)?;
        Ok(daemon::VerifyAuditResponse {
            entries: verified.entries,
            anchored_seq: verified.anchored_seq.unwrap_or(0),
        })
    }
}

fn worker_failed(e: tokio::task::JoinError) -> Failure {
    Failure::new(Reason::Internal, format!("a worker thread failed: {e}"))
}

fn audit_failure(error: AuditError) -> Failure {
    match error {
        AuditError::Broken { line, problem } => Failure::new(
            Reason::AuditTampered,
            format!("the audit log breaks at line {line}: {problem}"),
        )
        .with_meta("line", line)
        .with_hint(
            "Keep a copy of the log and of state.db for investigation; docs/audit.md says how to start a new log.",
        ),
        other => Failure::new(Reason::StateError, other.to_string()),
    }
}
