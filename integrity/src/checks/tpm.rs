//! TPM and measured boot: a TPM 2.0, its PCR banks, and the event log
//! replaying to its PCRs 0-7 (read from sysfs, where the kernel shows the
//! TPM's PCR values since Linux 5.12).

use super::{fail, ids, pass};
use crate::eventlog::{EventLog, MAX_LOG_BYTES, TPM_ALG_SHA256};
use crate::{Attribute, Root, hex, unhex};

const TPM_DIR: &str = "/sys/class/tpm/tpm0";
const EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

pub fn tpm(root: &Root) -> Attribute {
    const HINT: &str = "Enable the TPM 2.0 (fTPM, PTT or a discrete TPM) in the firmware setup; without it the device cannot prove its state or keep keys in hardware.";
    if !root.exists(TPM_DIR) {
        return fail(
            ids::TPM,
            "not-found",
            "no TPM (no /sys/class/tpm/tpm0): this report cannot be verified remotely",
            HINT,
        );
    }
    match root.read_text(&format!("{TPM_DIR}/tpm_version_major")) {
        Ok(v) if v == "2" => pass(ids::TPM, "found", "TPM 2.0"),
        Ok(v) => fail(
            ids::TPM,
            "not-valid",
            format!("TPM version {v}, not 2.0"),
            HINT,
        ),
        Err(e) => fail(
            ids::TPM,
            "not-found",
            format!("the TPM's version is unknown ({e})"),
            HINT,
        ),
    }
}

/// The banks sysfs shows (`pcr-sha256`, ...), as `sha256`.
fn banks(root: &Root) -> Vec<String> {
    root.list(TPM_DIR, 256)
        .into_iter()
        .filter_map(|n| n.strip_prefix("pcr-").map(str::to_string))
        .collect()
}

pub fn pcr_banks(root: &Root) -> Attribute {
    const HINT: &str = "Activate the TPM's SHA-256 PCR bank in the firmware setup (a SHA-1 bank alone can be forged); Linux 5.12 or later shows the banks.";
    if !root.exists(TPM_DIR) {
        return fail(ids::PCR_BANKS, "not-found", "no TPM", HINT);
    }
    let banks = banks(root);
    if banks.iter().any(|b| b == "sha256") {
        pass(
            ids::PCR_BANKS,
            "valid",
            format!("PCR banks: {}", banks.join(", ")),
        )
    } else if banks.is_empty() {
        fail(
            ids::PCR_BANKS,
            "not-found",
            "the kernel shows no PCR banks",
            HINT,
        )
    } else {
        fail(
            ids::PCR_BANKS,
            "not-valid",
            format!("PCR banks: {} (no SHA-256)", banks.join(", ")),
            HINT,
        )
    }
}

/// PCR `index` of the SHA-256 bank, from sysfs.
fn pcr_value(root: &Root, index: usize) -> Result<Vec<u8>, String> {
    let path = format!("{TPM_DIR}/pcr-sha256/{index}");
    let text = root.read_text(&path).map_err(|e| e.to_string())?;
    unhex(&text, 32)
        .filter(|v| v.len() == 32)
        .ok_or_else(|| format!("{path} is not a SHA-256 value"))
}

pub fn event_log(root: &Root) -> Attribute {
    const HINT: &str = "The measured-boot event log must be present and match the TPM: boot with measured boot on in the firmware, and find what extended PCRs 0-7 outside the log.";
    let bytes = match root.read_bounded(EVENT_LOG, MAX_LOG_BYTES as u64) {
        Ok(bytes) => bytes,
        Err(e) => {
            return fail(
                ids::EVENT_LOG,
                "not-found",
                format!("no measured-boot event log ({e})"),
                HINT,
            );
        }
    };
    let log = match EventLog::parse(&bytes) {
        Ok(log) => log,
        Err(e) => return fail(ids::EVENT_LOG, "not-valid", e.to_string(), HINT),
    };
    let replayed = match log.replay(TPM_ALG_SHA256) {
        Ok(r) => r,
        Err(e) => return fail(ids::EVENT_LOG, "not-valid", e.to_string(), HINT),
    };
    let mut differing = Vec::new();
    for (index, expected) in replayed.iter().enumerate().take(8) {
        match pcr_value(root, index) {
            Ok(actual) if &actual == expected => {}
            Ok(actual) => differing.push(format!(
                "PCR {index} is {} but the log gives {}",
                hex(&actual),
                hex(expected)
            )),
            Err(e) => {
                return fail(
                    ids::EVENT_LOG,
                    "not-verified",
                    format!(
                        "{} events; the TPM's PCR values are not readable: {e}",
                        log.events.len()
                    ),
                    HINT,
                );
            }
        }
    }
    if differing.is_empty() {
        pass(
            ids::EVENT_LOG,
            "valid",
            format!("{} events replay to PCRs 0-7 (SHA-256)", log.events.len()),
        )
    } else {
        fail(ids::EVENT_LOG, "not-valid", differing.join("; "), HINT)
    }
}
