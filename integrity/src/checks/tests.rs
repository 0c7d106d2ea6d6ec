use super::fake::{FakeRoot, GUID};
use super::*;
use crate::eventlog::{EV_POST_CODE, LogBuilder, TPM_ALG_SHA256};

fn check(f: &FakeRoot, id: &str) -> Attribute {
    check_for(f, id, &["alice", "kiosk"])
}

fn check_for(f: &FakeRoot, id: &str, accounts: &[&str]) -> Attribute {
    let r = report(&f.inputs(accounts));
    assert!(r.is_consistent());
    r.attribute(id).unwrap().clone()
}

#[track_caller]
fn fails(a: &Attribute, result: &str, detail: &str) {
    assert_eq!(a.outcome, Outcome::Fail, "{a:?}");
    assert_eq!(a.result, result, "{a:?}");
    assert!(a.detail.contains(detail), "{detail:?} not in {a:?}");
    assert!(!a.hint.is_empty(), "{a:?}");
}

#[track_caller]
fn passes(a: &Attribute, result: &str) {
    assert_eq!(a.outcome, Outcome::Pass, "{a:?}");
    assert_eq!(a.result, result, "{a:?}");
    assert!(a.hint.is_empty());
}

#[test]
fn a_good_machine_passes_every_check_at_level_4() {
    let f = FakeRoot::good();
    let r = report(&f.inputs(&["alice", "kiosk"]));
    let failing: Vec<_> = r.failing().collect();
    assert!(failing.is_empty(), "{failing:#?}");
    assert_eq!(r.level, 4);
    assert!(r.remotely_verifiable);
    assert_eq!(r.attributes.len(), ids::ALL.len());
    for (id, level) in ids::ALL {
        assert_eq!(r.attribute(id).unwrap().level, level);
    }
}

#[test]
fn secure_boot_and_setup_mode() {
    let f = FakeRoot::good();
    f.write(
        &format!("/sys/firmware/efi/efivars/SecureBoot-{GUID}"),
        [6, 0, 0, 0, 0],
    );
    fails(
        &check(&f, ids::SECURE_BOOT),
        "not-enabled",
        "SecureBoot = 0",
    );
    f.write(
        &format!("/sys/firmware/efi/efivars/SecureBoot-{GUID}"),
        [6, 0, 0, 0, 1, 1],
    );
    fails(&check(&f, ids::SECURE_BOOT), "not-found", "not 5");
    f.remove(&format!("/sys/firmware/efi/efivars/SecureBoot-{GUID}"));
    fails(&check(&f, ids::SECURE_BOOT), "not-found", "does not exist");
    f.write(
        &format!("/sys/firmware/efi/efivars/SetupMode-{GUID}"),
        [6, 0, 0, 0, 1],
    );
    fails(&check(&f, ids::SETUP_MODE), "not-locked", "SetupMode = 1");
    f.remove("/sys/firmware/efi");
    fails(&check(&f, ids::SECURE_BOOT), "not-supported", "UEFI");
    fails(&check(&f, ids::SETUP_MODE), "not-supported", "UEFI");
    let r = report(&f.inputs(&[]));
    assert_eq!(r.level, 0);
}

#[test]
fn kernel_lockdown() {
    let f = FakeRoot::good();
    f.write(
        "/sys/kernel/security/lockdown",
        "none integrity [confidentiality]\n",
    );
    passes(&check(&f, ids::LOCKDOWN), "enabled");
    f.write(
        "/sys/kernel/security/lockdown",
        "[none] integrity confidentiality\n",
    );
    fails(&check(&f, ids::LOCKDOWN), "not-enabled", "none");
    f.write("/sys/kernel/security/lockdown", "garbage\n");
    fails(&check(&f, ids::LOCKDOWN), "not-valid", "garbage");
    f.remove("/sys/kernel/security/lockdown");
    fails(&check(&f, ids::LOCKDOWN), "not-supported", "no lockdown");
}

#[test]
fn taint_flags_are_decoded() {
    let f = FakeRoot::good();
    f.write("/proc/sys/kernel/tainted", "12289\n"); // P, O, E
    let a = check(&f, ids::TAINTED);
    fails(&a, "tainted", "P (proprietary module loaded)");
    assert!(
        a.detail.contains("O (externally-built") && a.detail.contains("E (unsigned module loaded)"),
        "{a:?}"
    );
    assert_eq!(boot::decode_taint(1 << 40), vec!["bit 40 (unknown)"]);
    f.write("/proc/sys/kernel/tainted", "x\n");
    fails(&check(&f, ids::TAINTED), "not-valid", "x");
    f.remove("/proc/sys/kernel/tainted");
    fails(&check(&f, ids::TAINTED), "not-found", "tainted");
}

#[test]
fn unsafe_command_line_options_are_named() {
    let f = FakeRoot::good();
    f.write(
        "/proc/cmdline",
        "root=/dev/sda1 init=/bin/sh module.sig_enforce=0 quiet -- single\n",
    );
    let a = check(&f, ids::CMDLINE);
    fails(&a, "not-valid", "init=/bin/sh (replaces the init program)");
    assert!(
        a.detail.contains("module.sig_enforce=0") && a.detail.contains("single ("),
        "{a:?}"
    );
    f.write("/proc/cmdline", "root=/dev/sda1 debug\n");
    fails(
        &check(&f, ids::CMDLINE),
        "not-valid",
        "debug (kernel debug output)",
    );
    // Look-alikes are not flagged: debugfs=off, rescue_foo, module.sig_enforce=1.
    f.write(
        "/proc/cmdline",
        "debugfs=off rescue_foo module.sig_enforce=1 initrd=/x\n",
    );
    passes(&check(&f, ids::CMDLINE), "valid");
}

#[test]
fn tpm_presence_and_banks() {
    let f = FakeRoot::good();
    passes(&check(&f, ids::PCR_BANKS), "valid");
    assert!(check(&f, ids::PCR_BANKS).detail.contains("sha1, sha256"));
    f.write("/sys/class/tpm/tpm0/tpm_version_major", "1\n");
    fails(&check(&f, ids::TPM), "not-valid", "version 1");
    f.remove("/sys/class/tpm/tpm0/pcr-sha256");
    fails(&check(&f, ids::PCR_BANKS), "not-valid", "no SHA-256");
    f.remove("/sys/class/tpm/tpm0/pcr-sha1");
    fails(&check(&f, ids::PCR_BANKS), "not-found", "no PCR banks");
    f.remove("/sys/class/tpm");
    let r = report(&f.inputs(&[]));
    fails(
        r.attribute(ids::TPM).unwrap(),
        "not-found",
        "cannot be verified remotely",
    );
    assert!(!r.remotely_verifiable);
}

#[test]
fn the_event_log_must_replay_to_the_tpms_pcrs() {
    let f = FakeRoot::good();
    passes(&check(&f, ids::EVENT_LOG), "valid");
    // An extension outside the log (or a log edited after the fact).
    f.write("/sys/class/tpm/tpm0/pcr-sha256/4", "00".repeat(32));
    fails(&check(&f, ids::EVENT_LOG), "not-valid", "PCR 4 is 0000");
    // A log that extends something else than the TPM saw.
    let good_pcrs = std::fs::read_to_string(f.path("/sys/class/tpm/tpm0/pcr-sha256/0")).unwrap();
    let mut b = LogBuilder::new(&[TPM_ALG_SHA256]);
    b.event(0, EV_POST_CODE, b"other firmware");
    f.event_log(&b.bytes());
    f.write("/sys/class/tpm/tpm0/pcr-sha256/0", good_pcrs);
    fails(&check(&f, ids::EVENT_LOG), "not-valid", "PCR 0 is");
    f.write(
        "/sys/kernel/security/tpm0/binary_bios_measurements",
        b"\x00\x01garbage",
    );
    fails(&check(&f, ids::EVENT_LOG), "not-valid", "truncated");
    f.event_log(&b.bytes());
    f.remove("/sys/class/tpm/tpm0/pcr-sha256/7");
    fails(&check(&f, ids::EVENT_LOG), "not-verified", "not readable");
    f.remove("/sys/kernel/security/tpm0");
    fails(
        &check(&f, ids::EVENT_LOG),
        "not-found",
        "no measured-boot event log",
    );
}

#[test]
fn iommu() {
    let f = FakeRoot::good();
    passes(&check(&f, ids::IOMMU), "enabled");
    f.remove("/sys/class/iommu/dmar0");
    fails(&check(&f, ids::IOMMU), "not-found", "empty");
}

#[test]
fn an_lsm_must_enforce() {
    let f = FakeRoot::good();
    assert!(
        check(&f, ids::LSM)
            .detail
            .contains("AppArmor enforces 1 profiles")
    );
    f.write(
        "/sys/kernel/security/apparmor/profiles",
        "lsb_release (complain)\n",
    );
    fails(&check(&f, ids::LSM), "not-enforcing", "enforces no profile");
    f.write("/sys/module/apparmor/parameters/enabled", "N\n");
    fails(
        &check(&f, ids::LSM),
        "not-enforcing",
        "active LSMs: lockdown,capability,yama,apparmor",
    );
    f.write("/sys/fs/selinux/enforce", "0");
    fails(
        &check(&f, ids::LSM),
        "not-enforcing",
        "SELinux is permissive",
    );
    f.write("/sys/fs/selinux/enforce", "1");
    passes(&check(&f, ids::LSM), "enforcing");
}

#[test]
fn yama_ptrace_scope() {
    let f = FakeRoot::good();
    f.write("/proc/sys/kernel/yama/ptrace_scope", "3\n");
    passes(&check(&f, ids::PTRACE), "enabled");
    f.write("/proc/sys/kernel/yama/ptrace_scope", "0\n");
    fails(&check(&f, ids::PTRACE), "not-enabled", "ptrace_scope = 0");
    f.remove("/proc/sys/kernel/yama");
    fails(&check(&f, ids::PTRACE), "not-found", "no Yama");
}

#[test]
fn unprivileged_bpf() {
    let f = FakeRoot::good();
    f.write("/proc/sys/kernel/unprivileged_bpf_disabled", "0\n");
    fails(&check(&f, ids::BPF), "not-enabled", "= 0");
    f.write("/proc/sys/kernel/unprivileged_bpf_disabled", "1\n");
    passes(&check(&f, ids::BPF), "enabled");
    f.remove("/proc/sys/kernel/unprivileged_bpf_disabled");
    passes(&check(&f, ids::BPF), "not-supported");
}

#[test]
fn root_fs_read_only_or_verity() {
    let f = FakeRoot::good();
    passes(&check(&f, ids::ROOT_FS), "enabled");
    // A later read-write mount over / hides the read-only one.
    f.write(
        "/proc/self/mountinfo",
        "1 0 8:1 / / ro shared:1 - ext4 /dev/sda1 ro\n30 1 0:40 / / rw,relatime - overlay overlay rw\n",
    );
    fails(
        &check(&f, ids::ROOT_FS),
        "not-enabled",
        "read-write (overlay)",
    );
    f.write(
        "/proc/self/mountinfo",
        "1 0 253:0 / / rw,relatime - ext4 /dev/mapper/root rw\n",
    );
    f.write("/sys/block/dm-0/dm/name", "root\n");
    f.write("/sys/block/dm-0/dm/uuid", "CRYPT-LUKS2-abc-root\n");
    fails(&check(&f, ids::ROOT_FS), "not-enabled", "/dev/mapper/root");
    f.write("/sys/block/dm-0/dm/uuid", "CRYPT-VERITY-0123-root\n");
    assert!(check(&f, ids::ROOT_FS).detail.contains("dm-verity"));
    f.write(
        "/proc/self/mountinfo",
        "1 0 253:0 / / rw - ext4 /dev/dm-0 rw\n",
    );
    passes(&check(&f, ids::ROOT_FS), "enabled");
    f.write(
        "/proc/self/mountinfo",
        "25 1 0:5 / /dev rw - devtmpfs udev rw\n",
    );
    fails(&check(&f, ids::ROOT_FS), "not-found", "no mount of /");
}

#[test]
fn fleetkeys_files_must_be_roots_alone() {
    let f = FakeRoot::good();
    passes(&check(&f, ids::OWN_FILES), "valid");
    f.chown("/usr/sbin/fleetkeyd", 1000, 0);
    fails(
        &check(&f, ids::OWN_FILES),
        "not-valid",
        "/usr/sbin/fleetkeyd is owned by uid 1000",
    );
    f.chown("/usr/sbin/fleetkeyd", 0, 0);
    f.chmod("/etc/fleetkey/fleetkeyd.toml", 0o666);
    fails(
        &check(&f, ids::OWN_FILES),
        "not-valid",
        "fleetkeyd.toml is writable by every user",
    );
    f.chmod("/etc/fleetkey/fleetkeyd.toml", 0o664);
    passes(&check(&f, ids::OWN_FILES), "valid"); // group root may write
    f.chown("/etc/fleetkey/fleetkeyd.toml", 0, 1000);
    fails(
        &check(&f, ids::OWN_FILES),
        "not-valid",
        "writable by group 1000",
    );
    f.chown("/etc/fleetkey/fleetkeyd.toml", 0, 0);
    f.chmod("/usr/sbin", 0o777);
    fails(
        &check(&f, ids::OWN_FILES),
        "not-valid",
        "/usr/sbin is writable by every user",
    );
    f.chmod("/usr/sbin", 0o755);
    f.remove("/etc/fleetkey/fleetkeyd.toml");
    fails(&check(&f, ids::OWN_FILES), "not-valid", "does not exist");
}

#[test]
fn accounts_with_root_power_make_the_device_rooted() {
    let f = FakeRoot::good();
    let a = check_for(&f, ids::ROOTED, &["alice", "kiosk", "ghost"]);
    passes(&a, "not-rooted");
    assert!(a.detail.contains("ghost are not local accounts"), "{a:?}");
    // Thousands of enrolled users: the detail names ten and counts the rest.
    let many: Vec<String> = (0..5000).map(|i| format!("user{i:04}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let a = check_for(&f, ids::ROOTED, &many);
    passes(&a, "not-rooted");
    assert!(
        a.detail
            .contains("and 4990 more have no administrator rights"),
        "{a:?}"
    );
    assert!(a.detail.len() < 400, "{} bytes", a.detail.len());
    // Listed member of sudo (and so of the %sudo rule).
    f.write("/etc/group", "sudo:x:27:bob,alice\nalice:x:1000:\n");
    let a = check(&f, ids::ROOTED);
    fails(&a, "rooted", "alice is in group sudo");
    assert!(a.detail.contains("%sudo in /etc/sudoers"), "{a:?}");
    // Primary group wheel.
    f.write("/etc/group", "wheel:x:1000:\n");
    fails(&check(&f, ids::ROOTED), "rooted", "alice is in group wheel");
    // A sudoers.d rule of its own.
    f.write("/etc/group", "alice:x:1000:\n");
    f.write(
        "/etc/sudoers.d/kiosk",
        "kiosk ALL=(root) NOPASSWD: /usr/bin/systemctl\n",
    );
    fails(
        &check(&f, ids::ROOTED),
        "rooted",
        "kiosk has a sudo rule (kiosk in /etc/sudoers.d/kiosk)",
    );
    // Files sudo skips are skipped.
    f.remove("/etc/sudoers.d/kiosk");
    f.write("/etc/sudoers.d/kiosk.dpkg-old", "kiosk ALL=(ALL) ALL\n");
    passes(&check(&f, ids::ROOTED), "not-rooted");
    // uid 0 under another name.
    f.write("/etc/passwd", "alice:x:0:1000::/root:/bin/sh\n");
    fails(&check(&f, ids::ROOTED), "rooted", "alice has uid 0");
    // A setuid-root shell makes everyone root, whoever is enrolled.
    f.write("/etc/passwd", "alice:x:1000:1000::/home/alice:/bin/bash\n");
    f.chmod("/bin/bash", 0o4755);
    let a = check_for(&f, ids::ROOTED, &[]);
    fails(&a, "rooted", "the shell /bin/bash is setuid root");
    // A setuid login shell that /etc/shells does not list.
    f.chmod("/bin/bash", 0o755);
    f.write(
        "/etc/passwd",
        "alice:x:1000:1000::/home/alice:/opt/rootsh\n",
    );
    f.write("/opt/rootsh", "");
    f.chmod("/opt/rootsh", 0o4755);
    fails(
        &check(&f, ids::ROOTED),
        "rooted",
        "alice has the setuid-root login shell /opt/rootsh",
    );
}
