//! Hardening: IOMMU, an enforcing LSM, Yama ptrace scope, unprivileged
//! BPF, and a read-only or dm-verity root file system.

use super::{fail, ids, pass};
use crate::{Attribute, Root};

pub fn iommu(root: &Root) -> Attribute {
    const HINT: &str = "Turn on VT-d/AMD-Vi in the firmware setup and boot with intel_iommu=on (or amd_iommu=on): without an IOMMU any PCIe or Thunderbolt device can read memory.";
    let units = root.list("/sys/class/iommu", 256);
    if units.is_empty() {
        fail(
            ids::IOMMU,
            "not-found",
            "no IOMMU is active (/sys/class/iommu is empty)",
            HINT,
        )
    } else {
        pass(
            ids::IOMMU,
            "enabled",
            format!("IOMMU units: {}", units.join(", ")),
        )
    }
}

pub fn lsm(root: &Root) -> Attribute {
    const HINT: &str = "Enforce a mandatory access control LSM: SELinux in enforcing mode, or AppArmor with profiles in enforce mode.";
    let active = root
        .read_text("/sys/kernel/security/lsm")
        .unwrap_or_default();
    if root
        .read_text("/sys/fs/selinux/enforce")
        .is_ok_and(|v| v == "1")
    {
        return pass(ids::LSM, "enforcing", "SELinux is enforcing");
    }
    if root
        .read_text("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v == "Y")
    {
        let profiles = root
            .read_text("/sys/kernel/security/apparmor/profiles")
            .unwrap_or_default();
        let enforced = profiles
            .lines()
            .filter(|l| l.trim_end().ends_with("(enforce)"))
            .count();
        if enforced > 0 {
            return pass(
                ids::LSM,
                "enforcing",
                format!("AppArmor enforces {enforced} profiles"),
            );
        }
        return fail(
            ids::LSM,
            "not-enforcing",
            "AppArmor is on but enforces no profile",
            HINT,
        );
    }
    let detail = if root.exists("/sys/fs/selinux/enforce") {
        "SELinux is permissive".to_string()
    } else if active.is_empty() {
        "no SELinux or AppArmor".to_string()
    } else {
        format!("no SELinux or AppArmor enforcing (active LSMs: {active})")
    };
    fail(ids::LSM, "not-enforcing", detail, HINT)
}

pub fn ptrace(root: &Root) -> Attribute {
    const HINT: &str = "Set kernel.yama.ptrace_scope = 1 (or higher) in /etc/sysctl.d/: then a process cannot read another process's memory unless it is its parent.";
    match root.read_text("/proc/sys/kernel/yama/ptrace_scope") {
        Ok(v) if matches!(v.as_str(), "1" | "2" | "3") => {
            pass(ids::PTRACE, "enabled", format!("ptrace_scope = {v}"))
        }
        Ok(v) => fail(
            ids::PTRACE,
            "not-enabled",
            format!("ptrace_scope = {v}: any process may trace the user's other processes"),
            HINT,
        ),
        Err(e) => fail(
            ids::PTRACE,
            "not-found",
            format!("the kernel has no Yama LSM ({e})"),
            HINT,
        ),
    }
}

pub fn bpf(root: &Root) -> Attribute {
    const HINT: &str = "Set kernel.unprivileged_bpf_disabled = 1 (or 2) in /etc/sysctl.d/.";
    match root.read_text("/proc/sys/kernel/unprivileged_bpf_disabled") {
        Ok(v) if v == "1" || v == "2" => pass(
            ids::BPF,
            "enabled",
            format!("unprivileged_bpf_disabled = {v}"),
        ),
        Ok(v) => fail(
            ids::BPF,
            "not-enabled",
            format!("unprivileged_bpf_disabled = {v}: unprivileged users may load BPF programs"),
            HINT,
        ),
        Err(e) if e.is_missing() => pass(
            ids::BPF,
            "not-supported",
            "the kernel has no bpf() system call",
        ),
        Err(e) => fail(ids::BPF, "not-found", e.to_string(), HINT),
    }
}

/// The mount of `/` from mountinfo (the last one: later mounts hide
/// earlier ones): (options, source).
fn root_mount(mountinfo: &str) -> Option<(String, String)> {
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let mount_point = fields.get(4)?;
        let options = fields.get(5)?;
        let dash = fields.iter().position(|f| *f == "-")?;
        let source = fields.get(dash + 2)?;
        (*mount_point == "/").then(|| (options.to_string(), source.to_string()))
    })
}

/// Whether block device `source` is a dm-verity device.
fn is_verity(root: &Root, source: &str) -> bool {
    let dm = if let Some(n) = source.strip_prefix("/dev/dm-") {
        Some(format!("dm-{n}"))
    } else if let Some(name) = source.strip_prefix("/dev/mapper/") {
        root.list("/sys/block", 4096)
            .into_iter()
            .filter(|d| d.starts_with("dm-"))
            .find(|d| {
                root.read_text(&format!("/sys/block/{d}/dm/name"))
                    .is_ok_and(|n| n == name)
            })
    } else {
        None
    };
    dm.and_then(|d| root.read_text(&format!("/sys/block/{d}/dm/uuid")).ok())
        .is_some_and(|uuid| uuid.starts_with("CRYPT-VERITY-"))
}

pub fn root_fs(root: &Root) -> Attribute {
    const HINT: &str = "Mount the root file system read-only, or put it on dm-verity (an image-based OS), so a compromise does not survive a reboot.";
    let mountinfo = match root.read_text("/proc/self/mountinfo") {
        Ok(t) => t,
        Err(e) => return fail(ids::ROOT_FS, "not-found", e.to_string(), HINT),
    };
    let Some((options, source)) = root_mount(&mountinfo) else {
        return fail(
            ids::ROOT_FS,
            "not-found",
            "no mount of / in /proc/self/mountinfo",
            HINT,
        );
    };
    if is_verity(root, &source) {
        pass(
            ids::ROOT_FS,
            "enabled",
            format!("/ is on dm-verity ({source})"),
        )
    } else if options.split(',').any(|o| o == "ro") {
        pass(
            ids::ROOT_FS,
            "enabled",
            format!("/ is mounted read-only ({source})"),
        )
    } else {
        fail(
            ids::ROOT_FS,
            "not-enabled",
            format!("/ is mounted read-write ({source})"),
            HINT,
        )
    }
}
