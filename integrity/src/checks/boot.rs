//! Boot and kernel: UEFI Secure Boot and Setup Mode, kernel lockdown, the
//! taint flags, the kernel command line.

use super::{fail, ids, pass};
use crate::{Attribute, Root};

const EFIVARS: &str = "/sys/firmware/efi/efivars";
const GLOBAL_GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// An EFI global variable's one-byte value (efivarfs files begin with 4
/// bytes of attributes).
fn efi_byte(root: &Root, name: &str) -> Result<u8, String> {
    let path = format!("{EFIVARS}/{name}-{GLOBAL_GUID}");
    match root.read_bounded(&path, 64) {
        Ok(bytes) if bytes.len() == 5 => Ok(bytes[4]),
        Ok(bytes) => Err(format!("{path} is {} bytes, not 5", bytes.len())),
        Err(e) => Err(e.to_string()),
    }
}

pub fn secure_boot(root: &Root) -> Attribute {
    const HINT: &str =
        "Enable UEFI Secure Boot in the firmware setup (and enroll the distribution's keys).";
    if !root.exists("/sys/firmware/efi") {
        return fail(
            ids::SECURE_BOOT,
            "not-supported",
            "the system did not boot with UEFI",
            HINT,
        );
    }
    match efi_byte(root, "SecureBoot") {
        Ok(1) => pass(ids::SECURE_BOOT, "enabled", "Secure Boot is on"),
        Ok(v) => fail(
            ids::SECURE_BOOT,
            "not-enabled",
            format!("SecureBoot = {v}"),
            HINT,
        ),
        Err(e) => fail(ids::SECURE_BOOT, "not-found", e, HINT),
    }
}

pub fn setup_mode(root: &Root) -> Attribute {
    const HINT: &str = "Leave Setup Mode: enroll a Platform Key in the firmware setup, so nobody can replace the Secure Boot keys.";
    if !root.exists("/sys/firmware/efi") {
        return fail(
            ids::SETUP_MODE,
            "not-supported",
            "the system did not boot with UEFI",
            HINT,
        );
    }
    match efi_byte(root, "SetupMode") {
        Ok(0) => pass(
            ids::SETUP_MODE,
            "locked",
            "the firmware is in User Mode (a Platform Key is enrolled)",
        ),
        Ok(v) => fail(
            ids::SETUP_MODE,
            "not-locked",
            format!("SetupMode = {v}: anyone can enroll Secure Boot keys"),
            HINT,
        ),
        Err(e) => fail(ids::SETUP_MODE, "not-found", e, HINT),
    }
}

pub fn lockdown(root: &Root) -> Attribute {
    const HINT: &str = "Boot with lockdown=integrity (or confidentiality); with Secure Boot most distribution kernels enable it.";
    match root.read_text("/sys/kernel/security/lockdown") {
        Ok(text) => {
            let selected = text
                .split_whitespace()
                .find(|w| w.starts_with('[') && w.ends_with(']'))
                .map(|w| w.trim_matches(['[', ']']).to_string())
                .unwrap_or_default();
            match selected.as_str() {
                "integrity" | "confidentiality" => pass(
                    ids::LOCKDOWN,
                    "enabled",
                    format!("lockdown mode {selected}"),
                ),
                "none" => fail(ids::LOCKDOWN, "not-enabled", "lockdown mode none", HINT),
                _ => fail(
                    ids::LOCKDOWN,
                    "not-valid",
                    format!("unreadable lockdown state {text:?}"),
                    HINT,
                ),
            }
        }
        Err(e) => fail(
            ids::LOCKDOWN,
            "not-supported",
            format!("the kernel has no lockdown LSM ({e})"),
            HINT,
        ),
    }
}

/// The kernel's taint flags (Documentation/admin-guide/tainted-kernels.rst).
pub const TAINT_FLAGS: [(char, &str); 20] = [
    ('P', "proprietary module loaded"),
    ('F', "module force-loaded"),
    ('S', "kernel running on an out-of-specification system"),
    ('R', "module force-unloaded"),
    ('M', "processor reported a machine check exception"),
    ('B', "bad page referenced or unexpected page flags"),
    ('U', "taint requested by user space"),
    ('D', "kernel died recently (oops or BUG)"),
    ('A', "ACPI table overridden"),
    ('W', "kernel issued a warning"),
    ('C', "staging driver loaded"),
    ('I', "workaround for a platform firmware bug applied"),
    ('O', "externally-built (out-of-tree) module loaded"),
    ('E', "unsigned module loaded"),
    ('L', "soft lockup occurred"),
    ('K', "kernel live-patched"),
    ('X', "auxiliary taint (distribution-defined)"),
    ('T', "kernel built with the struct randomization plugin"),
    ('N', "in-kernel test run"),
    ('J', "user space used a mutating debug operation of fwctl"),
];

/// The taint value decoded: `E (unsigned module loaded), ...`.
pub fn decode_taint(value: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| value & (1u64 << bit) != 0)
        .map(|bit| match TAINT_FLAGS.get(bit as usize) {
            Some((letter, meaning)) => format!("{letter} ({meaning})"),
            None => format!("bit {bit} (unknown)"),
        })
        .collect()
}

pub fn tainted(root: &Root) -> Attribute {
    const HINT: &str = "Reboot, and find what tainted the kernel (dmesg | grep -i taint): remove out-of-tree or unsigned modules.";
    match root.read_text("/proc/sys/kernel/tainted") {
        Ok(text) => match text.parse::<u64>() {
            Ok(0) => pass(ids::TAINTED, "not-tainted", "the kernel is not tainted"),
            Ok(v) => fail(
                ids::TAINTED,
                "tainted",
                format!("taint {v}: {}", decode_taint(v).join(", ")),
                HINT,
            ),
            Err(_) => fail(
                ids::TAINTED,
                "not-valid",
                format!("unreadable taint value {text:?}"),
                HINT,
            ),
        },
        Err(e) => fail(ids::TAINTED, "not-found", e.to_string(), HINT),
    }
}

/// Kernel command-line options that undo the platform's protections, and
/// why. An entry ending in `=` matches any value.
pub const UNSAFE_CMDLINE: [(&str, &str); 26] = [
    ("init=", "replaces the init program"),
    ("rdinit=", "replaces the initramfs init program"),
    ("single", "single-user mode (a root shell)"),
    ("S", "single-user mode (a root shell)"),
    ("1", "single-user mode (a root shell)"),
    ("-s", "single-user mode (a root shell)"),
    ("emergency", "emergency mode (a root shell)"),
    ("rescue", "rescue mode (a root shell)"),
    ("systemd.unit=rescue.target", "rescue mode (a root shell)"),
    (
        "systemd.unit=emergency.target",
        "emergency mode (a root shell)",
    ),
    ("systemd.debug_shell", "a root shell on tty9"),
    ("systemd.debug-shell", "a root shell on tty9"),
    ("rd.break", "a root shell in the initramfs"),
    ("module.sig_enforce=0", "unsigned kernel modules load"),
    ("selinux=0", "SELinux off"),
    ("enforcing=0", "SELinux permissive"),
    ("apparmor=0", "AppArmor off"),
    ("iommu=off", "IOMMU off (DMA attacks)"),
    ("intel_iommu=off", "IOMMU off (DMA attacks)"),
    ("amd_iommu=off", "IOMMU off (DMA attacks)"),
    ("mitigations=off", "CPU vulnerability mitigations off"),
    ("nokaslr", "kernel address randomization off"),
    ("kgdboc=", "the kernel debugger on a console"),
    ("kgdbwait", "the kernel debugger waits at boot"),
    ("sysrq_always_enabled", "every magic SysRq function enabled"),
    ("debug", "kernel debug output"),
];

pub fn cmdline(root: &Root) -> Attribute {
    const HINT: &str = "Remove these options from the boot loader's kernel command line (and protect the boot loader's editor with a password).";
    let text = match root.read_text("/proc/cmdline") {
        Ok(text) => text,
        Err(e) => return fail(ids::CMDLINE, "not-found", e.to_string(), HINT),
    };
    let mut found = Vec::new();
    // Words after "--" are for init, not the kernel, but init reads them
    // too (single, emergency): check every word.
    for word in text.split_whitespace() {
        for (option, why) in UNSAFE_CMDLINE {
            let matches = if option.ends_with('=') {
                word.starts_with(option)
            } else {
                word == option
            };
            if matches {
                found.push(format!("{word} ({why})"));
            }
        }
    }
    if found.is_empty() {
        pass(
            ids::CMDLINE,
            "valid",
            "no unsafe kernel command-line options",
        )
    } else {
        fail(ids::CMDLINE, "not-valid", found.join(", "), HINT)
    }
}
