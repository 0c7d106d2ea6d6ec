//! The D-Bus fixtures: a private dbus-daemon configured like the system
//! bus (nobody may own a name or call a method unless a policy file says
//! so), with the packaged policy file (packaging/dbus) installed; polkitd
//! started against it; busctl and gdbus runs on it, as root or another uid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::*;

/// The packaged bus policy file.
pub fn bus_policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/dbus/org.fleetkey.Daemon1.conf")
}

/// The packaged polkit actions.
pub fn polkit_policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/polkit/org.fleetkey.policy")
}

/// A private system-like bus.
pub struct PrivateBus {
    pub dir: TempDir,
    /// The bus address, as DBUS_SYSTEM_BUS_ADDRESS takes it.
    pub address: String,
    bus: Child,
    polkit: Option<Child>,
}

impl PrivateBus {
    pub fn start() -> PrivateBus {
        let dir = open_tempdir();
        let socket = dir.path().join("system_bus_socket");
        let config = dir.path().join("bus.conf");
        // As Debian's system.conf: deny by default, policy files allow.
        // polkitd's own policy comes from the polkitd package.
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include ignore_missing="yes">/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf</include>
  <include>{policy}</include>
</busconfig>
"#,
                socket = socket.display(),
                policy = bus_policy_file().display(),
            ),
        )
        .expect("write bus config");
        let bus = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon (apt package dbus-daemon)");
        let address = format!("unix:path={}", socket.display());
        let bus = PrivateBus {
            dir,
            address,
            bus,
            polkit: None,
        };
        wait_until(Duration::from_secs(10), "the private bus", || {
            socket.exists()
        });
        bus
    }

    /// Starts polkitd on this bus, with the packaged fleetkey actions
    /// installed where polkitd reads actions (as the .deb installs them).
    pub fn start_polkit(&mut self) {
        let installed = Path::new("/usr/share/polkit-1/actions/org.fleetkey.policy");
        let ours = std::fs::read(polkit_policy_file()).expect("read polkit policy");
        if std::fs::read(installed).ok().as_deref() != Some(ours.as_slice()) {
            std::fs::write(installed, &ours).expect("install the polkit actions (run as root)");
        }
        let polkit = Command::new("/usr/lib/polkit-1/polkitd")
            .arg("--no-debug")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start polkitd (apt package polkitd)");
        self.polkit = Some(polkit);
        self.wait_for_name("org.freedesktop.PolicyKit1");
    }

    pub fn has_owner(&self, name: &str) -> bool {
        let out = self.busctl(&[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            name,
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "b true"
    }

    pub fn wait_for_name(&self, name: &str) {
        wait_until(Duration::from_secs(20), name, || self.has_owner(name));
    }

    /// `busctl --address=<bus> ARGS` as root.
    pub fn busctl(&self, args: &[&str]) -> Output {
        Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .expect("run busctl")
    }

    /// A command on this bus as uid:gid with no supplementary groups.
    pub fn run_as(&self, uid: u32, gid: u32, program: &str, args: &[&str]) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(program)
            .args(args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .output()
            .expect("run setpriv")
    }

    /// `gdbus call --system` on this bus as uid:gid: prints D-Bus error
    /// names, which busctl does not.
    pub fn gdbus_call_as(&self, uid: u32, gid: u32, method: &str, args: &[&str]) -> Output {
        let mut all = vec![
            "call",
            "--system",
            "--dest",
            "org.fleetkey.Daemon1",
            "--object-path",
            "/org/fleetkey/Daemon1",
            "--method",
            method,
        ];
        all.extend_from_slice(args);
        self.run_as(uid, gid, "gdbus", &all)
    }

    /// A daemon on this bus (`dbus = "system"`), with fast software keys
    /// and `extra` top-level config lines; returns once it owns the name.
    pub fn daemon(&self, extra: &str) -> Daemon {
        let config = format!("dbus = \"system\"\n{extra}\n{FAST_SOFT_KEYS}");
        let daemon = Daemon::start_with_env(
            &config,
            &[("DBUS_SYSTEM_BUS_ADDRESS", self.address.as_str())],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.has_owner("org.fleetkey.Daemon1") {
            assert!(
                Instant::now() < deadline,
                "fleetkeyd did not own org.fleetkey.Daemon1: {}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        if let Some(mut polkit) = self.polkit.take() {
            let _ = polkit.kill();
            let _ = polkit.wait();
        }
        let _ = self.bus.kill();
        let _ = self.bus.wait();
    }
}

fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
