//! fleetkeyd's command line, in the library so that the man page
//! generator (`packaging/gen`) renders the same definition the daemon
//! parses.

use std::path::PathBuf;

use clap::Parser;

/// The fleetkey daemon: hardware-backed user keys for shared Linux devices.
///
/// Serves the fleetkey API (gRPC) on a Unix socket; use fleetkeyctl to talk
/// to it. Run as root it uses /run/fleetkey, /var/lib/fleetkey and
/// /etc/fleetkey/fleetkeyd.toml; as another user, per-user XDG directories,
/// so it runs without installing anything.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct Args {
    /// Configuration file (TOML; see fleetkeyd.example.toml). Default:
    /// /etc/fleetkey/fleetkeyd.toml as root, else
    /// $XDG_CONFIG_HOME/fleetkey/fleetkeyd.toml; a missing default file
    /// means built-in defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Unix socket to serve on (overrides the config file).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// State directory (overrides the config file).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Portal for typed codes (overrides the config file).
    #[arg(long, value_name = "URL")]
    pub portal_url: Option<String>,
    /// Log level: error, warn, info, debug, trace (overrides the config file).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<crate::config::LogLevel>,
    /// D-Bus bus to own org.fleetkey.Daemon1 on: auto, system, session or
    /// off (overrides the config file; see docs/dbus.md).
    #[arg(long, value_name = "BUS")]
    pub dbus: Option<crate::config::BusChoice>,
}

/// Why `--portal-url URL` cannot be used, naming the flag, with what to
/// type instead.
pub fn portal_url_flag_problem(url: &str) -> String {
    let shown = fleetkey_proto::terminal::escape(url);
    if url.contains("://") {
        format!(
            "--portal-url {shown} is not a portal URL: it must start with http:// or https:// and name a host"
        )
    } else {
        format!(
            "--portal-url {shown} is not a portal URL: it must start with http:// or https://, e.g. --portal-url https://{shown} (or http://{shown} for a portal without TLS)"
        )
    }
}

#[cfg(test)]
mod portal_url_tests {
    use super::*;

    #[test]
    fn a_bare_address_gets_the_flag_named_and_a_scheme_suggested() {
        assert_eq!(
            portal_url_flag_problem("127.0.0.1:27443"),
            "--portal-url 127.0.0.1:27443 is not a portal URL: it must start with http:// or https://, e.g. --portal-url https://127.0.0.1:27443 (or http://127.0.0.1:27443 for a portal without TLS)"
        );
        assert_eq!(
            portal_url_flag_problem("ftp://x"),
            "--portal-url ftp://x is not a portal URL: it must start with http:// or https:// and name a host"
        );
    }
}
