//! A fake machine in a temporary directory, for the checks' tests: starts
//! as a machine where every check passes; tests then break one thing.

#![allow(
    clippy::unwrap_used,
    reason = "a test fixture: a failure to lay out the fake machine fails the test"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::eventlog::{EventLog, TPM_ALG_SHA256, synthetic_boot};
use crate::{Inputs, Root, hex};

pub const GUID: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

pub struct FakeRoot {
    pub dir: tempfile::TempDir,
}

impl FakeRoot {
    pub fn path(&self, p: &str) -> PathBuf {
        Root::new(self.dir.path()).path(p)
    }

    pub fn write(&self, p: &str, bytes: impl AsRef<[u8]>) {
        let path = self.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    pub fn mkdir(&self, p: &str) {
        std::fs::create_dir_all(self.path(p)).unwrap();
    }

    pub fn remove(&self, p: &str) {
        let path = self.path(p);
        if path.is_dir() {
            std::fs::remove_dir_all(path).unwrap();
        } else {
            std::fs::remove_file(path).unwrap();
        }
    }

    pub fn chmod(&self, p: &str, mode: u32) {
        std::fs::set_permissions(self.path(p), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    pub fn chown(&self, p: &str, uid: u32, gid: u32) {
        std::os::unix::fs::chown(self.path(p), Some(uid), Some(gid)).unwrap();
    }

    /// Writes the event log and sets sysfs's SHA-256 PCRs to its replay.
    pub fn event_log(&self, log: &[u8]) {
        self.write("/sys/kernel/security/tpm0/binary_bios_measurements", log);
        let pcrs = EventLog::parse(log)
            .unwrap()
            .replay(TPM_ALG_SHA256)
            .unwrap();
        for (i, v) in pcrs.iter().enumerate() {
            self.write(
                &format!("/sys/class/tpm/tpm0/pcr-sha256/{i}"),
                format!("{}\n", hex(v).to_uppercase()),
            );
        }
    }

    pub fn inputs(&self, accounts: &[&str]) -> Inputs {
        Inputs {
            root: Root::new(self.dir.path()),
            own_files: vec![
                "/usr/sbin/fleetkeyd".into(),
                "/etc/fleetkey/fleetkeyd.toml".into(),
            ],
            accounts: accounts.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Lays out fleetkey's own file `p` (e.g. the daemon's real path):
    /// root-owned, mode 0755, every folder above it 0755.
    pub fn own_file(&self, p: &str) {
        self.write(p, "fleetkey");
        self.chmod(p, 0o755);
        let mut dir = self.path(p);
        while dir.pop() && dir.starts_with(self.dir.path()) && dir != self.dir.path() {
            self.chmod_path(&dir, 0o755);
        }
    }

    fn chmod_path(&self, path: &std::path::Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A machine where every check passes.
    pub fn good() -> FakeRoot {
        let f = FakeRoot {
            dir: tempfile::tempdir().unwrap(),
        };
        f.write(
            &format!("/sys/firmware/efi/efivars/SecureBoot-{GUID}"),
            [6, 0, 0, 0, 1],
        );
        f.write(
            &format!("/sys/firmware/efi/efivars/SetupMode-{GUID}"),
            [6, 0, 0, 0, 0],
        );
        f.write(
            "/sys/kernel/security/lockdown",
            "none [integrity] confidentiality\n",
        );
        f.write(
            "/sys/kernel/security/lsm",
            "lockdown,capability,yama,apparmor\n",
        );
        f.write("/proc/sys/kernel/tainted", "0\n");
        f.write(
            "/proc/cmdline",
            "BOOT_IMAGE=/vmlinuz-6.8 root=/dev/sda1 ro quiet splash debugfs=off\n",
        );
        f.write("/sys/class/tpm/tpm0/tpm_version_major", "2\n");
        f.mkdir("/sys/class/tpm/tpm0/pcr-sha1");
        f.event_log(&synthetic_boot(&[TPM_ALG_SHA256]).0);
        f.mkdir("/sys/class/iommu/dmar0");
        f.write("/sys/module/apparmor/parameters/enabled", "Y\n");
        f.write(
            "/sys/kernel/security/apparmor/profiles",
            "/usr/bin/man (enforce)\nlsb_release (complain)\n",
        );
        f.write("/proc/sys/kernel/yama/ptrace_scope", "1\n");
        f.write("/proc/sys/kernel/unprivileged_bpf_disabled", "2\n");
        f.write("/proc/self/mountinfo", "1 0 8:1 / / ro,relatime shared:1 - ext4 /dev/sda1 ro\n25 1 0:5 / /dev rw - devtmpfs udev rw\n");
        f.write("/usr/sbin/fleetkeyd", "binary");
        f.chmod("/usr/sbin/fleetkeyd", 0o755);
        f.write("/etc/fleetkey/fleetkeyd.toml", "");
        f.chmod("/etc/fleetkey/fleetkeyd.toml", 0o644);
        f.write(
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\nkiosk:x:1001:1001::/home/kiosk:/bin/sh\n",
        );
        f.write("/etc/group", "root:x:0:\nsudo:x:27:bob\nwheel:x:10:\nalice:x:1000:\nkiosk:x:1001:\nstaff:x:50:kiosk\n");
        f.write("/etc/sudoers", "# comment\nDefaults env_reset\nroot ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n");
        f.write("/etc/shells", "# /etc/shells\n/bin/sh\n/bin/bash\n");
        f.write("/bin/sh", "");
        f.write("/bin/bash", "");
        f.chmod("/bin/bash", 0o755);
        f
    }
}
