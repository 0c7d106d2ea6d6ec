//! Every check of the report. Each reads only through a [`Root`], so the
//! tests lay out a fake sysfs/procfs/efivars//etc in a directory and run
//! the same code a real machine runs.
//!
//! | ID | level | passes when |
//! | --- | --- | --- |
//! | see [`ids`] and docs/integrity.md | | |

mod accounts;
mod boot;
mod files;
mod hardening;
mod tpm;

use crate::{Attribute, Outcome, Report, Root};

/// The stable attribute IDs.
pub mod ids {
    pub const SECURE_BOOT: &str = "org.fleetkey.SecureBoot";
    pub const SETUP_MODE: &str = "org.fleetkey.UefiSetupMode";
    pub const LOCKDOWN: &str = "org.fleetkey.KernelLockdown";
    pub const TAINTED: &str = "org.fleetkey.KernelTainted";
    pub const CMDLINE: &str = "org.fleetkey.KernelCmdline";
    pub const TPM: &str = "org.fleetkey.Tpm";
    pub const PCR_BANKS: &str = "org.fleetkey.TpmPcrBanks";
    pub const EVENT_LOG: &str = "org.fleetkey.TpmEventLog";
    pub const IOMMU: &str = "org.fleetkey.Iommu";
    pub const LSM: &str = "org.fleetkey.Lsm";
    pub const PTRACE: &str = "org.fleetkey.YamaPtrace";
    pub const BPF: &str = "org.fleetkey.UnprivilegedBpf";
    pub const ROOT_FS: &str = "org.fleetkey.RootFsReadOnly";
    pub const OWN_FILES: &str = "org.fleetkey.FleetkeyFiles";
    pub const ROOTED: &str = "org.fleetkey.AdminAccounts";

    /// Every ID with its level.
    pub const ALL: [(&str, u8); 15] = [
        (SECURE_BOOT, 1),
        (SETUP_MODE, 1),
        (TAINTED, 1),
        (CMDLINE, 1),
        (TPM, 1),
        (OWN_FILES, 1),
        (ROOTED, 1),
        (LOCKDOWN, 2),
        (PCR_BANKS, 2),
        (EVENT_LOG, 2),
        (IOMMU, 2),
        (LSM, 3),
        (PTRACE, 3),
        (BPF, 3),
        (ROOT_FS, 4),
    ];

    /// The level of `id`.
    pub fn level(id: &str) -> Option<u8> {
        ALL.iter().find(|(i, _)| *i == id).map(|(_, l)| *l)
    }
}

/// What the checks look at.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub root: Root,
    /// fleetkey's own files (absolute, as on the machine): the daemon's
    /// binary and its config.
    pub own_files: Vec<String>,
    /// The Unix accounts of the users enrolled on the device and the
    /// configured kiosk accounts.
    pub accounts: Vec<String>,
}

/// Runs every check.
pub fn report(inputs: &Inputs) -> Report {
    let root = &inputs.root;
    let tpm = tpm::tpm(root);
    let verifiable = tpm.passes();
    let attributes = vec![
        boot::secure_boot(root),
        boot::setup_mode(root),
        boot::lockdown(root),
        boot::tainted(root),
        boot::cmdline(root),
        tpm,
        tpm::pcr_banks(root),
        tpm::event_log(root),
        hardening::iommu(root),
        hardening::lsm(root),
        hardening::ptrace(root),
        hardening::bpf(root),
        hardening::root_fs(root),
        files::own_files(root, &inputs.own_files),
        accounts::admin_accounts(root, &inputs.accounts),
    ];
    Report::new(attributes, verifiable)
}

fn attribute(id: &str, outcome: Outcome, result: &str, detail: String, hint: &str) -> Attribute {
    Attribute {
        id: id.to_string(),
        level: ids::level(id).unwrap_or(1),
        outcome,
        result: result.to_string(),
        detail,
        hint: if outcome == Outcome::Pass {
            String::new()
        } else {
            hint.to_string()
        },
    }
}

fn pass(id: &str, result: &str, detail: impl Into<String>) -> Attribute {
    attribute(id, Outcome::Pass, result, detail.into(), "")
}

fn fail(id: &str, result: &str, detail: impl Into<String>, hint: &str) -> Attribute {
    attribute(id, Outcome::Fail, result, detail.into(), hint)
}

#[cfg(any(test, feature = "fake"))]
pub mod fake;

#[cfg(test)]
mod tests;
