//! `fleetkeyctl doctor`: checks what fleetkey depends on and says how to
//! fix what is broken. Each check is `ok`, `warn` (works, but something
//! deserves attention), `fail` (broken) or `skip` (does not apply here);
//! the command exits with DOCTOR_PROBLEMS when any check fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fleetkey_proto::daemon::{self, GetStatusRequest, ListCamerasRequest, ListCardsRequest};
use fleetkey_proto::terminal::escape;
use fleetkey_proto::{Failure, Reason};
use serde::Serialize;

use crate::connection;
use crate::output;

/// The D-Bus name the daemon owns on the system bus.
pub const DBUS_NAME: &str = "org.fleetkey.Daemon1";

/// Clock skew against the portal beyond which activation and enrollment
/// codes (minutes long) and TLS certificates start to misbehave.
const SKEW_FAIL_SECONDS: u64 = 60;
/// Skew worth a warning (the Date header has whole seconds).
const SKEW_WARN_SECONDS: u64 = 5;
/// How long one network check may take.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// Check the daemon, the TPM, pcscd, cameras, the portal and D-Bus
#[derive(Debug, clap::Args)]
#[command(long_about = "\
Checks what fleetkey depends on and explains each problem with a fix: \
whether fleetkeyd answers and which user runs it; the TPM (device access, \
dictionary-attack state); pcscd and its smartcard readers; cameras and \
whether you may open them; the portal (reachable, TLS certificate valid, \
clock skew against it); whether the D-Bus name org.fleetkey.Daemon1 is \
owned on the system bus. Each check is ok, warn, fail or skip. Exits 0 \
when no check fails, else with DOCTOR_PROBLEMS (65).")]
pub struct Doctor {
    /// Portal to check (default: the one the device was activated with)
    #[arg(long, value_name = "URL")]
    pub portal_url: Option<String>,
    /// PEM file of CA certificates to trust for the portal, besides the
    /// system's (as the daemon's portal_ca_file)
    #[arg(long, value_name = "FILE")]
    pub portal_ca: Option<PathBuf>,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Health {
    fn label(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Warn => "warn",
            Health::Fail => "FAIL",
            Health::Skip => "skip",
        }
    }
}

/// One check: what was found and, when it is not ok, what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Health,
    pub summary: String,
    /// Empty when there is nothing to do.
    pub hint: String,
    pub details: BTreeMap<String, String>,
}

impl Check {
    fn new(name: &'static str, status: Health, summary: impl Into<String>) -> Self {
        Self {
            name,
            status,
            summary: summary.into(),
            hint: String::new(),
            details: BTreeMap::new(),
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = hint.into();
        self
    }

    fn detail(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

/// `doctor --json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// False when any check failed.
    pub ok: bool,
    /// DOCTOR_PROBLEMS when a check failed, else null.
    pub reason: Option<&'static str>,
    pub checks: Vec<Check>,
}

/// What the daemon told, for the checks that read it.
struct DaemonView {
    status: daemon::Status,
    client: connection::Client,
}

impl Doctor {
    /// Runs every check, prints the report and returns the exit status.
    pub fn run(&self, socket: &Path, json: bool) -> u8 {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let failure = Failure::new(
                    Reason::Internal,
                    format!("cannot start the I/O runtime: {e}"),
                );
                output::print_failure(&failure, json);
                return failure.reason.exit_code();
            }
        };
        let checks = runtime.block_on(self.checks(socket));
        let failed = checks.iter().filter(|c| c.status == Health::Fail).count();
        let report = Report {
            ok: failed == 0,
            reason: (failed > 0).then_some(Reason::DoctorProblems.as_str()),
            checks,
        };
        let printed = if json {
            output::json(&report)
        } else {
            output::data(&report_text(&report))
        };
        if let Err(failure) = printed {
            output::print_failure(&failure, json);
            return failure.reason.exit_code();
        }
        if failed > 0 {
            if !json {
                output::warn(&format!(
                    "{failed} check{} failed; fix {} as the hint says",
                    if failed == 1 { "" } else { "s" },
                    if failed == 1 { "it" } else { "each" }
                ));
            }
            Reason::DoctorProblems.exit_code()
        } else {
            0
        }
    }

    async fn checks(&self, socket: &Path) -> Vec<Check> {
        let (daemon_check, mut view) = check_daemon(socket).await;
        let mut checks = vec![daemon_check];
        checks.push(check_tpm(view.as_ref()));
        checks.push(check_pcsc(view.as_mut()).await);
        checks.push(check_cameras(view.as_mut()).await);
        let portal = self.portal_url.clone().or_else(|| {
            view.as_ref()
                .map(|v| v.status.portal_url.clone())
                .filter(|url| !url.is_empty())
        });
        checks.push(check_portal(portal.as_deref(), self.portal_ca.as_deref()).await);
        checks.push(check_dbus());
        checks.push(check_integrity(view.as_mut()).await);
        checks
    }
}

/// The text report: one line per check, its hint and details below.
pub fn report_text(report: &Report) -> String {
    let mut text = String::new();
    for check in &report.checks {
        text.push_str(&format!(
            "{:<5} {:<10} {}\n",
            check.status.label(),
            check.name,
            escape(&check.summary)
        ));
        for (key, value) in &check.details {
            text.push_str(&format!("{:16} {}: {}\n", "", escape(key), escape(value)));
        }
        if !check.hint.is_empty() {
            text.push_str(&format!("{:16} fix: {}\n", "", escape(&check.hint)));
        }
    }
    text
}

async fn check_daemon(socket: &Path) -> (Check, Option<DaemonView>) {
    let name = "daemon";
    let mut client = match connection::connect(socket).await {
        Ok(client) => client,
        Err(failure) => {
            let hint = if !socket.exists() {
                format!(
                    "No socket at {}: start the daemon (systemctl enable --now fleetkeyd.socket \
                     fleetkeyd.service), or give the socket it serves with --socket.",
                    socket.display()
                )
            } else {
                failure.hint.clone()
            };
            return (
                Check::new(name, Health::Fail, failure.message).hint(hint),
                None,
            );
        }
    };
    let server = server_uid(socket).await;
    let status = match client.get_status(GetStatusRequest {}).await {
        Ok(status) => status.into_inner(),
        Err(status) => {
            let failure = connection::rpc_failure(socket, &status);
            return (
                Check::new(
                    name,
                    Health::Fail,
                    format!("fleetkeyd does not answer status: {}", failure.message),
                )
                .hint(failure.hint),
                None,
            );
        }
    };
    let runner = match server {
        Some(uid) => format!(
            "uid {uid}{}",
            connection::user_name(uid)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ),
        None => "an unknown user".to_string(),
    };
    let mut check = Check::new(
        name,
        Health::Ok,
        format!(
            "fleetkeyd {} answers on {}, run by {runner}",
            status.version,
            socket.display()
        ),
    )
    .detail("activated", if status.activated { "yes" } else { "no" })
    .detail("users", status.user_count.to_string());
    if server == Some(0) {
        check = check.hint(
            "The daemon runs as root; the packaged service runs it as the _fleetkey user \
             (systemctl enable --now fleetkeyd.socket).",
        );
    }
    (check, Some(DaemonView { status, client }))
}

/// The uid serving the socket, as the kernel recorded it.
async fn server_uid(socket: &Path) -> Option<u32> {
    let stream = tokio::net::UnixStream::connect(socket).await.ok()?;
    stream.peer_cred().ok().map(|cred| cred.uid())
}

fn backend<'a>(view: Option<&'a DaemonView>, name: &str) -> Option<&'a daemon::Backend> {
    view?.status.backends.iter().find(|b| b.name == name)
}

/// A key store the configuration turned off or the build left out.
fn not_in_use(backend: &daemon::Backend) -> bool {
    let reason = &backend.unavailable_reason;
    reason.contains("disabled in the configuration") || reason.contains("built without")
}

fn check_tpm(view: Option<&DaemonView>) -> Check {
    let name = "tpm";
    if view.is_none() {
        return Check::new(name, Health::Skip, "the daemon did not answer");
    }
    let Some(tpm) = backend(view, "tpm") else {
        return Check::new(name, Health::Skip, "this fleetkeyd has no TPM key store");
    };
    if !tpm.available {
        if not_in_use(tpm) {
            return Check::new(
                name,
                Health::Skip,
                format!("not in use: {}", tpm.unavailable_reason),
            );
        }
        let reason = &tpm.unavailable_reason;
        let hint = if reason.contains("no such device") {
            "This machine has no TPM at that path: enable the TPM in the firmware setup, set \
             backends.tpm.tcti to the TPM to use (e.g. device:/dev/tpmrm0), or set \
             backends.tpm.enabled = false."
        } else if reason.contains("ermission denied") || reason.contains("EACCES") {
            "The daemon's user may not open the TPM: add it to the tss group (the packaged \
             service has SupplementaryGroups=tss), then restart fleetkeyd."
        } else {
            "Check that the TPM answers (tpm2_getcap properties-fixed) and that backends.tpm.tcti \
             names it, then restart fleetkeyd."
        };
        return Check::new(
            name,
            Health::Fail,
            format!("the TPM key store is unavailable: {reason}"),
        )
        .hint(hint);
    }
    let mut details: BTreeMap<String, String> = tpm.details.clone().into_iter().collect();
    let lockout = details.get("lockout").cloned().unwrap_or_default();
    details.insert(
        "pin_max_attempts".to_string(),
        tpm.pin_max_attempts.to_string(),
    );
    let mut check = Check::new(
        name,
        Health::Ok,
        format!(
            "TPM {} (firmware {}) answers on {}",
            details.get("manufacturer").map_or("", String::as_str),
            details.get("firmware").map_or("?", String::as_str),
            details.get("tcti").map_or("?", String::as_str),
        ),
    );
    check.details = details;
    if lockout.contains("IN LOCKOUT") {
        check.status = Health::Fail;
        check.summary = format!("the TPM is in dictionary-attack lockout: {lockout}");
        check.hint = "The TPM refuses every PIN until its failure counter decays (one failure \
                      per interval); an administrator with the lockout authorization can clear \
                      it at once: tpm2_dictionarylockout --clear-lockout (docs/operations.md)."
            .to_string();
    } else if lockout.starts_with("cannot be read") {
        check.status = Health::Warn;
        check.hint = "The dictionary-attack state could not be read; see the daemon's log.".into();
    } else if check.details.contains_key("warning") {
        check.status = Health::Warn;
        check.hint = "Use a hardware TPM in production: a simulator protects nothing.".into();
    }
    check
}

async fn check_pcsc(view: Option<&mut DaemonView>) -> Check {
    let name = "pcsc";
    let Some(view) = view else {
        return Check::new(name, Health::Skip, "the daemon did not answer");
    };
    let Some(pcsc) = view.status.backends.iter().find(|b| b.name == "pcsc") else {
        return Check::new(
            name,
            Health::Skip,
            "this fleetkeyd has no smartcard key store",
        );
    };
    if !pcsc.available {
        if not_in_use(pcsc) {
            return Check::new(
                name,
                Health::Skip,
                format!("not in use: {}", pcsc.unavailable_reason),
            );
        }
        return Check::new(
            name,
            Health::Fail,
            format!(
                "the smartcard key store is unavailable: {}",
                pcsc.unavailable_reason
            ),
        )
        .hint(
            "Start pcscd (systemctl enable --now pcscd.socket) and check that it sees the \
             reader (pcsc_scan), then restart fleetkeyd.",
        );
    }
    let cards = match view
        .client
        .list_cards(ListCardsRequest {
            backend: "pcsc".into(),
        })
        .await
    {
        Ok(cards) => cards.into_inner().cards,
        Err(status) => {
            return Check::new(
                name,
                Health::Fail,
                format!("pcscd does not list readers: {}", status.message()),
            )
            .hint(
                "Start pcscd (systemctl enable --now pcscd.socket) and check that it sees the \
                 reader (pcsc_scan).",
            );
        }
    };
    let mut check = if cards.is_empty() {
        Check::new(
            name,
            Health::Warn,
            "pcscd answers, but no reader is connected",
        )
        .hint("Connect a smartcard reader (or token) to enroll users on cards.")
    } else {
        let present = cards.iter().filter(|c| c.card_present).count();
        Check::new(
            name,
            Health::Ok,
            format!(
                "pcscd answers: {} reader{}, {present} with a card",
                cards.len(),
                if cards.len() == 1 { "" } else { "s" }
            ),
        )
    };
    for (index, card) in cards.iter().take(16).enumerate() {
        let state = if !card.card_present {
            "empty".to_string()
        } else if !card.problem.is_empty() {
            format!("card {}: {}", card.card_id, card.problem)
        } else {
            format!("card {}", card.card_id)
        };
        check = check.detail(
            &format!("reader {index}"),
            format!("{}: {state}", card.reader),
        );
    }
    check
}

async fn check_cameras(view: Option<&mut DaemonView>) -> Check {
    let name = "cameras";
    let nodes = fleetkey_v4l::device::video_nodes(Path::new("/dev"));
    let mut check = Check::new(name, Health::Ok, "");
    let mut closed = Vec::new();
    for (_, path) in &nodes {
        let openable = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map(|c| {
                // SAFETY: a valid NUL-terminated path; access() only reads it.
                unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
            })
            .unwrap_or(false);
        if !openable {
            closed.push(path.display().to_string());
        }
        check = check.detail(
            &path.display().to_string(),
            if openable {
                "you may open it"
            } else {
                "you may not open it"
            },
        );
    }
    let daemon_sees = match view {
        Some(view) => match view.client.list_cameras(ListCamerasRequest {}).await {
            Ok(list) => {
                let list = list.into_inner();
                Some((list.capture_supported, list.cameras.len()))
            }
            Err(_) => None,
        },
        None => None,
    };
    if let Some((supported, count)) = daemon_sees {
        check = check.detail(
            "daemon",
            if supported {
                format!("sees {count} camera{}", if count == 1 { "" } else { "s" })
            } else {
                "built without camera support".to_string()
            },
        );
    }
    if nodes.is_empty() {
        check.status = Health::Warn;
        check.summary = "no camera (/dev/video*) on this machine".into();
        check.hint = "Connect a camera to scan QR codes, or enroll from a picture of the code \
                      (user add --qr-image FILE) or by typing the code."
            .into();
        return check;
    }
    check.summary = format!(
        "{} camera node{}",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" }
    );
    match daemon_sees {
        Some((false, _)) => {
            check.status = Health::Warn;
            check.hint = "This fleetkeyd was built without camera support (feature v4l); \
                          enroll from QR images or typed codes."
                .into();
        }
        Some((true, 0)) => {
            check.status = Health::Fail;
            check.summary.push_str(", but the daemon can use none");
            check.hint = "The daemon's user may not open the cameras: add it to the video group \
                          (the packaged service has SupplementaryGroups=video), then restart \
                          fleetkeyd."
                .into();
        }
        _ if !closed.is_empty() => {
            check.status = Health::Warn;
            check.hint = format!(
                "You may not open {}: to test a camera yourself, join the video group \
                 (sudo usermod -aG video $USER, then log in again). fleetkeyd opens cameras \
                 with its own rights.",
                closed.join(", ")
            );
        }
        _ => {}
    }
    check
}

async fn check_portal(url: Option<&str>, ca: Option<&Path>) -> Check {
    let name = "portal";
    let Some(url) = url else {
        return Check::new(
            name,
            Health::Skip,
            "the device is not activated; give --portal-url to check a portal",
        );
    };
    let check = Check::new(name, Health::Ok, "").detail("url", url);
    let tls = url.starts_with("https://");
    if !tls && !url.starts_with("http://") {
        return Check {
            status: Health::Fail,
            summary: format!("{url} is not an http:// or https:// URL"),
            ..check
        }
        .hint("Give the portal's https:// URL.");
    }
    let mut endpoint = match tonic::transport::Endpoint::from_shared(url.to_string()) {
        Ok(endpoint) => endpoint
            .connect_timeout(NETWORK_TIMEOUT)
            .timeout(NETWORK_TIMEOUT),
        Err(e) => {
            return Check {
                status: Health::Fail,
                summary: format!("{url} is not a valid URL: {e}"),
                ..check
            }
            .hint("Give the portal's https:// URL.");
        }
    };
    if tls {
        let mut config = tonic::transport::ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = ca {
            match std::fs::read(ca) {
                Ok(pem) => {
                    config = config.ca_certificate(tonic::transport::Certificate::from_pem(pem))
                }
                Err(e) => {
                    return Check {
                        status: Health::Fail,
                        summary: format!("cannot read --portal-ca {}: {e}", ca.display()),
                        ..check
                    };
                }
            }
        }
        endpoint = match endpoint.tls_config(config) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                return Check {
                    status: Health::Fail,
                    summary: format!("cannot set up TLS: {e}"),
                    ..check
                };
            }
        };
    }
    let channel = match endpoint.connect().await {
        Ok(channel) => channel,
        Err(e) => {
            let detail = error_chain(&e);
            let certificate = detail.contains("certificate") || detail.contains("UnknownIssuer");
            return if certificate {
                Check {
                    status: Health::Fail,
                    summary: format!("the portal's TLS certificate is not valid: {detail}"),
                    ..check
                }
                .hint(
                    "Renew the portal's certificate, or trust its CA: the daemon's \
                     portal_ca_file (and --portal-ca here).",
                )
            } else {
                Check {
                    status: Health::Fail,
                    summary: format!("the portal cannot be reached: {detail}"),
                    ..check
                }
                .hint("Check the network, the portal's URL and that the portal runs.")
            };
        }
    };
    // A code no portal issues: the answer (an error) carries the portal's
    // clock in its Date header, and nothing is consumed.
    let mut client = fleetkey_proto::portal::portal_client::PortalClient::new(channel);
    let headers = match client
        .check_code(fleetkey_proto::portal::CheckCodeRequest {
            code: String::new(),
        })
        .await
    {
        Ok(response) => response.metadata().clone().into_headers(),
        Err(status) if status.code() == tonic::Code::Unavailable => {
            return Check {
                status: Health::Fail,
                summary: format!("the portal cannot be reached: {}", status.message()),
                ..check
            }
            .hint("Check the network, the portal's URL and that the portal runs.");
        }
        Err(status) => status.metadata().clone().into_headers(),
    };
    let mut check = Check {
        summary: if tls {
            "reachable, TLS certificate valid".to_string()
        } else {
            "reachable over plain http (allowed only on loopback or listed hosts)".to_string()
        },
        ..check
    };
    let portal_time = headers
        .get("date")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let Some(portal_time) = portal_time else {
        check.status = Health::Warn;
        check
            .summary
            .push_str("; its clock is unknown (no Date header)");
        return check;
    };
    let now = SystemTime::now();
    let (skew, ahead) = match portal_time.duration_since(now) {
        Ok(ahead) => (ahead.as_secs(), true),
        Err(e) => (e.duration().as_secs(), false),
    };
    check = check.detail(
        "clock_skew_seconds",
        format!("{}{skew}", if ahead { "+" } else { "-" }),
    );
    check
        .summary
        .push_str(&format!("; clocks differ by about {skew} s"));
    if skew > SKEW_FAIL_SECONDS {
        check.status = Health::Fail;
        check.hint = format!(
            "This machine's clock is {skew} s {} the portal's: codes may look expired and \
             certificates not yet valid. Set the time (timedatectl set-ntp true).",
            if ahead { "behind" } else { "ahead of" }
        );
    } else if skew > SKEW_WARN_SECONDS {
        check.status = Health::Warn;
        check.hint = "Keep the clock synchronised (timedatectl set-ntp true).".into();
    }
    check
}

/// An error and its sources, joined.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}

/// Asks the system bus (DBUS_SYSTEM_BUS_ADDRESS, else the standard one)
/// whether the daemon's name has an owner, with busctl.
fn check_dbus() -> Check {
    let name = "dbus";
    let ask = |method: &'static str| {
        std::process::Command::new("busctl")
            .args([
                "--system",
                "--timeout=5",
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus",
                method,
                "s",
                DBUS_NAME,
            ])
            .stdin(std::process::Stdio::null())
            .output()
    };
    let output = match ask("NameHasOwner") {
        Ok(output) => output,
        Err(e) => {
            return Check::new(name, Health::Warn, format!("cannot run busctl: {e}"))
                .hint("Install systemd's busctl to check the D-Bus service.");
        }
    };
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() {
        let error = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Check::new(name, Health::Warn, format!("no system bus to ask: {error}")).hint(
            "Without a system bus, kiosk UIs cannot use fleetkey's D-Bus interface; the gRPC \
             socket works regardless.",
        );
    }
    if answer != "b true" {
        return Check::new(
            name,
            Health::Fail,
            format!("nobody owns {DBUS_NAME} on the system bus"),
        )
        .hint(
            "Start the service (systemctl start fleetkeyd); if it runs, check its log \
             (journalctl -u fleetkeyd) and that the bus policy \
             /usr/share/dbus-1/system.d/org.fleetkey.Daemon1.conf is installed.",
        );
    }
    let mut check = Check::new(
        name,
        Health::Ok,
        format!("{DBUS_NAME} is owned on the system bus"),
    );
    if let Ok(owner) = ask("GetConnectionUnixUser")
        && owner.status.success()
    {
        let text = String::from_utf8_lossy(&owner.stdout);
        if let Some(uid) = text
            .trim()
            .strip_prefix("u ")
            .and_then(|u| u.parse::<u32>().ok())
        {
            check = check.detail(
                "owner",
                format!(
                    "uid {uid}{}",
                    connection::user_name(uid)
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ),
            );
        }
    }
    check
}

/// The daemon's integrity report (docs/integrity.md): ok when every check
/// passes; a warning naming each failing check and its fix otherwise
/// (whether a failing check refuses enrollment is the daemon's
/// `[integrity]` policy: `status` and `fleetkeyctl integrity` say more).
async fn check_integrity(view: Option<&mut DaemonView>) -> Check {
    let name = "integrity";
    let Some(view) = view else {
        return Check::new(name, Health::Skip, "the daemon did not answer");
    };
    let response = match view
        .client
        .get_integrity(daemon::GetIntegrityRequest { nonce: Vec::new() })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let failure = Failure::from_status(&status);
            return Check::new(
                name,
                Health::Fail,
                format!(
                    "the daemon could not make its integrity report: {}",
                    failure.message
                ),
            )
            .hint(
                "See the daemon's log (journalctl -u fleetkeyd) for the check that failed to run.",
            );
        }
    };
    let report: fleetkey_integrity::Report = match serde_json::from_str(&response.report_json) {
        Ok(report) => report,
        Err(e) => {
            return Check::new(
                name,
                Health::Fail,
                format!("the daemon's integrity report does not parse: {e}"),
            );
        }
    };
    integrity_check(&report)
}

/// The integrity check's verdict on a report.
fn integrity_check(report: &fleetkey_integrity::Report) -> Check {
    let name = "integrity";
    let failing: Vec<&fleetkey_integrity::Attribute> = report.failing().collect();
    let mut check = if failing.is_empty() {
        Check::new(name, Health::Ok, report.summary())
    } else {
        Check::new(name, Health::Warn, report.summary()).hint(
            "Fix each failing check as its line says; the daemon's [integrity] policy decides              which ones refuse activation and enrollment (fleetkeyctl integrity shows the report).",
        )
    };
    for attribute in failing {
        check = check.detail(
            &attribute.id,
            format!("{} (fix: {})", attribute.detail, attribute.hint),
        );
    }
    check.detail(
        "remotely verifiable",
        if report.remotely_verifiable {
            "yes: a TPM can quote this report"
        } else {
            "no TPM: the report is the device's word only"
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_warns_with_each_failing_check_and_its_fix() {
        let attribute = |id: &str, pass: bool| fleetkey_integrity::Attribute {
            id: id.into(),
            level: 1,
            outcome: if pass {
                fleetkey_integrity::Outcome::Pass
            } else {
                fleetkey_integrity::Outcome::Fail
            },
            result: String::new(),
            detail: format!("{id} detail"),
            hint: if pass {
                String::new()
            } else {
                format!("fix {id}")
            },
        };
        let good = fleetkey_integrity::Report::new(vec![attribute("a", true)], false);
        let check = integrity_check(&good);
        assert_eq!(check.status, Health::Ok);
        let bad = fleetkey_integrity::Report::new(
            vec![attribute("a", true), attribute("org.x.B", false)],
            true,
        );
        let check = integrity_check(&bad);
        assert_eq!(check.status, Health::Warn);
        assert!(check.summary.contains("org.x.B"), "{}", check.summary);
        assert_eq!(
            check.details["org.x.B"],
            "org.x.B detail (fix: fix org.x.B)"
        );
    }

    #[test]
    fn text_report_escapes_and_shows_hints() {
        let report = Report {
            ok: false,
            reason: Some("DOCTOR_PROBLEMS"),
            checks: vec![
                Check::new("tpm", Health::Fail, "bad\x1b[31m").hint("fix it"),
                Check::new("pcsc", Health::Ok, "fine").detail("reader 0", "r: empty"),
            ],
        };
        let text = report_text(&report);
        assert!(text.contains("FAIL  tpm"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains("fix: fix it"), "{text}");
        assert!(text.contains("reader 0: r: empty"), "{text}");
    }
}
