//! The `fleetkey-portal` command line: serve the API, issue codes, look at
//! users and devices. Data goes to stdout, messages and logs to stderr.

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use fleetkey_proto::terminal::escape;
use fleetkey_proto::time::{now_unix, rfc3339};
use fleetkey_proto::{EnrollmentPayload, user_name};
use p256::ecdsa::VerifyingKey;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use serde::Serialize;
use tokio::net::TcpListener;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::error::PortalError;
use crate::qr;
use crate::rate_limit::{DEFAULT_BURST, DEFAULT_PER_SECOND, RateLimit};
use crate::server::{TrustAnchors, bound_url, check_public_url, check_tls, run_with};
use crate::store::{CodeKind, CodeRecord, EkCertificateStatus, Enrollment, Store, StoreError};

mod migrate;

/// The default lifetime of an activation code, in seconds.
pub const DEFAULT_TTL_SECS: i64 = 600;
/// The longest lifetime `code issue` accepts (one year).
pub const MAX_TTL_SECS: i64 = 365 * 24 * 3600;

/// fleetkey's reference portal: the relying party that fleetkeyd devices
/// enroll with.
#[derive(Debug, Parser)]
#[command(
    name = "fleetkey-portal",
    version,
    about = "fleetkey's reference portal: issues activation codes, registers devices, enrolls users",
    long_about = "fleetkey's reference portal: the relying party that fleetkeyd devices enroll with.\n\n\
        A typical session: `fleetkey-portal serve --listen 127.0.0.1:7000 --db portal.db` in one \
        terminal, then `fleetkey-portal code issue --db portal.db --kind device` to get a code (and \
        QR code) that activates a device, and `fleetkey-portal code issue --db portal.db --kind user \
        --user alice` for each user to add to it.\n\n\
        Data (URLs, codes, JSON) goes to stdout; messages and logs go to stderr. Errors are printed \
        as `error: ...` with exit status 1; command-line usage errors (a missing or invalid option, \
        options that do not go together) exit with status 2.\n\n\
        The database and its -wal/-shm files are private to the user running the portal (mode \
        0600), and codes are kept only as keyed hashes: the key is in DB.key beside the database \
        (made on first run, mode 0600); back both up together.\n\n\
        FLEETKEY_PORTAL_LOG sets the log level (error, warn, info, debug, trace)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the portal's gRPC API (fleetkey.portal.v1) to devices.
    #[command(
        long_about = "Serve the portal's gRPC API (fleetkey.portal.v1) to devices.\n\n\
        Once listening, prints the portal's URL as one line on stdout (e.g. http://127.0.0.1:40123) \
        and records it in the database, where `code issue` takes it for the QR codes. Listening on \
        port 0 picks a free port. Plaintext is allowed only on a loopback address; any other \
        address needs --tls-cert and --tls-key. Stops gracefully on SIGTERM or SIGINT.\n\n\
        Rate limits: each peer (IP address; IPv6 by /64) and each registered device has a token \
        bucket of --rate-limit-burst calls that refills at --rate-limit-per-second. CheckCode, \
        RegisterDevice and CompleteTpmActivation, and signed calls whose device signature does not \
        verify, are charged to the peer; EnrollUser and RevokeUser that the device's key signed are \
        charged to the device only. A call over the limit is answered RATE_LIMITED with \
        retry_after_seconds."
    )]
    Serve(ServeArgs),
    /// Issue activation codes.
    #[command(subcommand)]
    Code(CodeCommand),
    /// Look at enrolled users, revoke their credentials.
    #[command(subcommand)]
    User(UserCommand),
    /// Look at registered devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Ask a user's devices to approve a login (docs/approvals.md).
    #[command(subcommand)]
    Login(LoginCommand),
}

#[derive(Debug, Subcommand)]
pub enum LoginCommand {
    /// Make a login challenge for a user: prints its id, the number to show
    /// at the login, and its expiry. Every device where the user has an
    /// active credential receives it.
    Start(LoginStartArgs),
    /// Wait until a login challenge is approved, denied or expired; prints
    /// the outcome (exit status 0 only when approved).
    Wait(LoginWaitArgs),
}

#[derive(Debug, Args)]
pub struct LoginStartArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// The user logging in.
    #[arg(long, value_name = "NAME", value_parser = parse_user_name)]
    pub user: String,
    /// What the person sees on the device (at most 1024 bytes).
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub context: String,
    /// Seconds until the challenge expires (1 to 3600).
    #[arg(long, value_name = "SECONDS", default_value_t = crate::login::DEFAULT_TTL_SECS)]
    pub ttl: i64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LoginWaitArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// The challenge id `login start` printed.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DbArg {
    /// The portal database (SQLite); created by `serve` or `code issue`.
    #[arg(long, value_name = "FILE", env = "FLEETKEY_PORTAL_DB")]
    pub db: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:7000, [::1]:0 or localhost:7000.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    #[command(flatten)]
    pub db: DbArg,
    /// URL devices reach the portal at, put in QR codes (default: http:// or
    /// https:// and the bound address).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// TLS certificate chain (PEM); serves https with --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Root certificates (PEM) that PIV key attestations must chain to;
    /// without it PIV-attested keys are recorded as not hardware-backed
    #[arg(long, value_name = "PEM")]
    pub piv_attestation_roots: Option<PathBuf>,
    /// CA certificates (PEM bundle: roots and intermediates) that TPM EK
    /// certificates must chain to. With it, a device presenting a TPM
    /// identity must send its EK certificate, for the EK it presents,
    /// chaining through these to a self-signed one of them; without it EK
    /// certificates are not checked (recorded as "not checked").
    #[arg(long, value_name = "FILE")]
    pub tpm_ek_roots: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Calls a peer or a device may make at once before the rate limit
    /// applies.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BURST,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,
    /// Calls per second a peer or a device may make once its burst is
    /// spent (a decimal number, e.g. 0.5).
    #[arg(long, value_name = "RATE", default_value_t = DEFAULT_PER_SECOND,
          value_parser = parse_rate)]
    pub rate_limit_per_second: f64,
    /// Turn the rate limits off (for benchmarks; never on a portal others
    /// can reach).
    #[arg(long, conflicts_with_all = ["rate_limit_burst", "rate_limit_per_second"])]
    pub no_rate_limit: bool,
    /// Refuse activations and user adds from devices whose integrity
    /// evidence (docs/integrity.md) is not quoted by their TPM or whose
    /// checks up to this HSI level (0-4) do not all pass.
    #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(0..=4))]
    pub require_integrity: Option<u8>,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    RateLimit {
        burst: 1,
        per_second: rate,
    }
    .validate()
    .map(|limit| limit.per_second)
}

/// A user name from the command line, by the one user-name rule
/// (docs/user-names.md): its normalized form, or why it is refused.
pub fn parse_user_name(text: &str) -> Result<String, String> {
    user_name::normalize(text).map_err(|error| format!("USER_NAME_INVALID: {error}"))
}

#[derive(Debug, Subcommand)]
pub enum CodeCommand {
    /// Issue a single-use activation code and show it with its QR code.
    #[command(
        long_about = "Issue a single-use activation code and show it with its QR code.\n\n\
        A device code (--kind device) activates a device: `fleetkeyctl activate CODE`. An add-user \
        code (--kind user --user NAME) adds that user to an activated device: `fleetkeyctl user add \
        CODE`. The code expires after --ttl seconds and works once.\n\n\
        The QR code carries the enrollment URI fleetkey://enroll?v=1&c=CODE&p=PORTAL_URL&u=USER&e=EXPIRY, \
        with the portal URL from --portal-url or else the one `serve` recorded in the database.\n\n\
        Prints the QR code and Code/Kind/User/URI/Expires lines, or with --json one object: \
        {\"code\", \"uri\", \"expires_at\" (RFC 3339), \"kind\", \"user\" (null for none)}.\n\n\
        With --batch FILE, issues add-user codes for every user in FILE: CSV (name[,ttl_seconds], \
        an optional `name,ttl_seconds` header) or JSON lines ({\"user\": NAME, \"ttl\": SECONDS}), \
        told apart by the first line. The whole file is checked first (names by the user-name rule, \
        TTLs, no user twice, at most 16 MiB, lines of at most 64 KiB, at most 10000 users): a bad \
        line is named by its number and nothing is issued. The codes are issued in one transaction, \
        then printed as one JSON line per user: {\"user\", \"code\", \"uri\", \"expires_at\"}, \
        which `fleetkeyctl user add-batch` reads as it is."
    )]
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// What the code redeems for: activating a device, or adding a user.
    #[arg(long, value_enum, required_unless_present = "batch")]
    pub kind: Option<CodeKind>,
    /// The user the code enrolls (required with --kind user; a hint shown
    /// on the device with --kind device). Checked and normalized by the one
    /// user-name rule (docs/user-names.md).
    #[arg(long, value_name = "NAME", required_if_eq("kind", "user"),
          value_parser = parse_user_name)]
    pub user: Option<String>,
    /// Seconds until the code expires.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TTL_SECS,
          value_parser = clap::value_parser!(i64).range(1..=MAX_TTL_SECS))]
    pub ttl: i64,
    /// Print one JSON object instead of the QR code and text.
    #[arg(long)]
    pub json: bool,
    /// Also write the QR code as a PNG image (8 pixels per module).
    #[arg(long, value_name = "FILE")]
    pub qr_png: Option<PathBuf>,
    /// Portal URL to put in the QR code (default: the one `serve` recorded).
    #[arg(long, value_name = "URL")]
    pub portal_url: Option<String>,
    /// Issue add-user codes for every user in FILE (CSV or JSON lines);
    /// prints one JSON line per user. --ttl is the default TTL.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kind", "user", "qr_png"])]
    pub batch: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Show a user's active enrollment (credential, public key, backend).
    #[command(
        long_about = "Show a user's active enrollment: device, credential id, backend, \
        whether the key is hardware-backed, and the public key (PEM).\n\n\
        The attestation detail says what the portal verified of the key: nothing (\"none\"), a PIV \
        attestation chain, or a TPM2_Certify by the device's TPM attestation key (\"tpm2-certify\"), \
        or why an attestation was not checked.\n\n\
        With --json, one object: {\"user\", \"device_id\", \"credential_id\", \"backend\", \
        \"attestation_format\", \"hardware_backed\", \"attestation_detail\" (what was verified; \
        empty for enrollments made before portal schema 2), \"enrolled_at\" (RFC 3339), \
        \"public_key_pem\"}. A user enrolled on several devices needs --device."
    )]
    Show(UserShowArgs),
    /// List active enrollments, one line per user and device.
    #[command(
        long_about = "List active enrollments, one line per user and device.\n\n\
        With --json, an array of {\"user\", \"device_id\", \"credential_id\", \"backend\", \
        \"attestation_format\", \"hardware_backed\", \"attestation_detail\", \"enrolled_at\" (RFC 3339)}."
    )]
    List(ListArgs),
    /// Revoke a user's credential on a device.
    #[command(
        long_about = "Revoke a user's active credential on a device, as the device itself would \
        with RevokeUser: the portal stops trusting the key, and the user can be enrolled on that \
        device again with a new add-user code (`code issue --kind user --user NAME`). Use it when a \
        device was lost or decommissioned, or when `fleetkeyctl user remove` could not reach the \
        portal. The key on the device is not touched.\n\n\
        A user enrolled on several devices needs --device. With --json, one object: {\"user\", \
        \"device_id\", \"credential_id\", \"revoked_at\" (RFC 3339)}."
    )]
    Revoke(UserRevokeArgs),
    /// Issue a reset code: an add-user code that replaces the user's
    /// credential on a device (`fleetkeyctl user reset NAME --code CODE`).
    #[command(long_about = migrate::RESET_CODE_ABOUT)]
    ResetCode(migrate::UserResetCodeArgs),
}

#[derive(Debug, Args)]
pub struct UserShowArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// The user's name, as bound to their add-user code (normalized by the
    /// user-name rule, so a full-width or decomposed form finds it).
    #[arg(value_name = "NAME", value_parser = parse_user_name)]
    pub user: String,
    /// The device to show the user's enrollment on.
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UserRevokeArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// The user whose credential to revoke.
    #[arg(value_name = "NAME", value_parser = parse_user_name)]
    pub user: String,
    /// The device to revoke the user's credential on.
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List registered devices with their number of active users and TPM identity.
    #[command(
        long_about = "List registered devices with their number of active users and whether \
        their TPM identity was verified at activation (the attestation key bound to the \
        endorsement key by TPM2_ActivateCredential) and what became of the EK certificate: \
        verified (chained to serve --tpm-ek-roots), not-checked (the portal had no \
        --tpm-ek-roots), absent (the TPM has none, and nothing required it).\n\n\
        With --json, an array of {\"device_id\", \"name\", \"registered_at\" (RFC 3339), \
        \"active_users\", \"tpm_verified\" (bool), \"tpm_verified_at\" (RFC 3339 or null), \
        \"ak_name\" (hex or null), \"ek_certificate\" (\"verified\", \"not-checked\", \"absent\", \
        or null without a TPM identity), \"ek_certificate_anchor\" (the trusted certificate's \
        subject, or null), \"attestation_detail\"}."
    )]
    List(ListArgs),
    /// Show one device: its identity and its last verified integrity state.
    #[command(
        long_about = "Show one device: its name, registration, TPM identity, users, and its last \
        verified integrity state (docs/integrity.md): the HSI level, the summary of failing checks, \
        whether a TPM quote vouched for it, when and on what occasion (activation, user add, \
        on-demand) it was verified, and whether a fresh report was requested.\n\n\
        With --json, one object: the fields of `device list --json` and \"integrity\" (null or \
        {\"level\", \"summary\", \"tpm_verified\", \"report_digest\", \"exceptions\", \
        \"verified_at\", \"occasion\"}) and \"integrity_requested_at\" (RFC 3339 or null)."
    )]
    Show(DeviceShowArgs),
    /// Ask a device for a fresh, TPM-quoted integrity report.
    #[command(
        long_about = "Ask a device for a fresh integrity report quoted by its TPM. The request is \
        recorded and sent on the device's stream to this portal (at once while the device is \
        connected, else when it connects next, while `serve` runs); the device answers, and \
        `device show` then shows the verified result."
    )]
    Integrity(DeviceIntegrityArgs),
    /// Move a device's users to a new device: one replacing add-user code
    /// per user, as a batch file for `fleetkeyctl user add-batch`.
    #[command(long_about = migrate::MIGRATE_ABOUT)]
    Migrate(migrate::DeviceMigrateArgs),
}

#[derive(Debug, Args)]
pub struct DeviceShowArgs {
    /// The device ID.
    pub device: String,
    #[command(flatten)]
    pub db: DbArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeviceIntegrityArgs {
    /// The device ID.
    pub device: String,
    #[command(flatten)]
    pub db: DbArg,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Runs a parsed command line.
pub fn run_cli(cli: Cli) -> Result<(), PortalError> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Code(CodeCommand::Issue(args)) => issue(args),
        Command::User(UserCommand::Show(args)) => user_show(args),
        Command::User(UserCommand::List(args)) => user_list(args),
        Command::User(UserCommand::Revoke(args)) => user_revoke(args),
        Command::Device(DeviceCommand::List(args)) => device_list(args),
        Command::Login(LoginCommand::Start(args)) => login_start(args),
        Command::Login(LoginCommand::Wait(args)) => login_wait(args),
        Command::Device(DeviceCommand::Show(args)) => device_show(args),
        Command::Device(DeviceCommand::Integrity(args)) => device_integrity(args),
        Command::Device(DeviceCommand::Migrate(args)) => migrate::device_migrate(args),
        Command::User(UserCommand::ResetCode(args)) => migrate::user_reset_code(args),
    }
}

fn stdout_error(error: std::io::Error) -> PortalError {
    PortalError::io("cannot write to stdout", error)
}

fn print(text: &str) -> Result<(), PortalError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    out.flush().map_err(stdout_error)
}

fn print_json(value: &impl Serialize) -> Result<(), PortalError> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print(&text)
}

// ---- serve ----

/// Resolves `--listen` to one socket address.
pub fn resolve_listen(listen: &str) -> Result<SocketAddr, PortalError> {
    if let Ok(addr) = listen.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let usage = |why: String| {
        PortalError::Usage(format!(
            "--listen {listen:?} {why}; give HOST:PORT, e.g. 127.0.0.1:7000, [::1]:7000 or localhost:0"
        ))
    };
    let mut addrs = listen
        .to_socket_addrs()
        .map_err(|e| usage(format!("is not a usable address ({e})")))?;
    addrs
        .next()
        .ok_or_else(|| usage("resolves to no address".into()))
}

fn load_tls(cert: &Path, key: &Path) -> Result<ServerTlsConfig, PortalError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| PortalError::ReadFile {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let identity = Identity::from_pem(read("TLS certificate", cert)?, read("TLS key", key)?);
    let tls = ServerTlsConfig::new().identity(identity);
    check_tls(&tls)?;
    Ok(tls)
}

fn serve(args: ServeArgs) -> Result<(), PortalError> {
    let addr = resolve_listen(&args.listen)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(load_tls(cert, key)?),
        (None, None) => None,
        _ => {
            return Err(PortalError::Usage(
                "--tls-cert and --tls-key go together".into(),
            ));
        }
    };
    if tls.is_none() && !addr.ip().is_loopback() {
        return Err(PortalError::Usage(format!(
            "refusing to serve plaintext on {addr}, which is not a loopback address: \
             pass --tls-cert and --tls-key, or listen on 127.0.0.1 or [::1]"
        )));
    }
    if let Some(url) = &args.public_url {
        check_public_url(url)?;
    }
    let roots = match &args.piv_attestation_roots {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| PortalError::io(format!("cannot read {}", path.display()), e))?;
            crate::attestation::roots_from_pem(&text).map_err(|why| {
                PortalError::Usage(format!("--piv-attestation-roots {}: {why}", path.display()))
            })?
        }
        None => Vec::new(),
    };
    let tpm_ek_roots = match &args.tpm_ek_roots {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                PortalError::Usage(format!(
                    "--tpm-ek-roots {}: cannot read it: {e}",
                    path.display()
                ))
            })?;
            Some(crate::der::pem_certificates(&text).map_err(|why| {
                PortalError::Usage(format!(
                    "--tpm-ek-roots {}: {why}; give a PEM file of CA certificates (BEGIN CERTIFICATE)",
                    path.display()
                ))
            })?)
        }
        None => None,
    };
    let trust = TrustAnchors {
        piv_attestation_roots: roots,
        tpm_ek_roots,
        require_integrity: args.require_integrity,
    };
    let rate_limit = (!args.no_rate_limit).then_some(RateLimit {
        burst: args.rate_limit_burst,
        per_second: args.rate_limit_per_second,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| PortalError::io("cannot start the async runtime", e))?;
    runtime.block_on(async move {
        // Handlers first: a signal right after the URL is printed must stop
        // the server gracefully, not kill it.
        let shutdown = shutdown_signal()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| PortalError::io(format!("cannot listen on {addr}"), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| PortalError::io("cannot read the listener's address", e))?;
        let url = match args.public_url {
            Some(url) => url,
            None => {
                if bound.ip().is_unspecified() {
                    tracing::warn!(
                        %bound,
                        "listening on an unspecified address: QR codes will carry it; pass --public-url with the name devices use"
                    );
                }
                bound_url(bound, tls.is_some())
            }
        };
        let store = Store::open(&args.db.db)?;
        store.db().set_public_url(&url)?;
        print(&format!("{url}\n"))?;
        tracing::info!(%url, "portal listening");
        run_with(store, listener, tls, trust, rate_limit, shutdown).await
    })
}

/// Completes on SIGTERM or SIGINT. The handlers are installed on call.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send, PortalError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| PortalError::io("cannot handle SIGTERM", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| PortalError::io("cannot handle SIGINT", e))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

// ---- code issue ----

/// What `code issue --json` prints.
#[derive(Debug, Serialize)]
pub struct IssuedCode {
    /// Display form, `XXXX-XXXX-XXXX-XXXX`.
    pub code: String,
    /// The enrollment URI carried by the QR code.
    pub uri: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
    pub kind: CodeKind,
    pub user: Option<String>,
}

fn issue(args: IssueArgs) -> Result<(), PortalError> {
    let Some(kind) = args.kind else {
        return issue_batch(args);
    };
    // clap has checked --user against the user-name rule, and requires it
    // with --kind user.
    if kind == CodeKind::User && args.user.is_none() {
        return Err(PortalError::Usage(
            "--kind user needs --user NAME: an add-user code is bound to the user it enrolls"
                .into(),
        ));
    }
    let (mut store, portal_url) = issuing_store(&args)?;

    let now = now_unix();
    let crate::store::IssuedCode { code, record } =
        store.issue_code(kind, args.user.as_deref(), args.ttl, now)?;
    let payload = EnrollmentPayload {
        code: code.clone(),
        portal_url,
        user_hint: record.user.clone(),
        expires_at: Some(record.expires_at),
    };
    let uri = payload.to_uri();
    tracing::info!(kind = %record.kind, user = ?record.user, "code issued");

    if let Some(path) = &args.qr_png {
        let bytes = qr::png(&uri)?;
        std::fs::write(path, bytes).map_err(|source| PortalError::WriteFile {
            path: path.clone(),
            source,
        })?;
        eprintln!("wrote the QR code to {}", path.display());
    }

    if args.json {
        return print_json(&IssuedCode {
            code: code.to_string(),
            uri,
            expires_at: rfc3339(record.expires_at),
            kind: record.kind,
            user: record.user,
        });
    }
    let ansi = std::io::stdout().is_terminal();
    let mut text = qr::terminal(&uri, ansi)?;
    text.push_str("\n\n");
    text.push_str(&human_issue(&code, &record, &uri, now));
    print(&text)
}

/// The store to issue codes in, and the portal URL the codes carry.
fn issuing_store(args: &IssueArgs) -> Result<(Store, String), PortalError> {
    store_with_url(&args.db, args.portal_url.as_ref())
}

/// The store at `db`, and the portal URL codes carry: `portal_url`, or
/// the one `serve` recorded.
fn store_with_url(db: &DbArg, portal_url: Option<&String>) -> Result<(Store, String), PortalError> {
    if let Some(url) = portal_url {
        check_public_url(url).map_err(|_| {
            PortalError::Usage(format!(
                "--portal-url {url:?} is not an http:// or https:// URL with a host"
            ))
        })?;
    }
    let store = match portal_url {
        Some(_) => Store::open(&db.db)?,
        None => match Store::open_existing(&db.db) {
            Err(StoreError::Missing(_)) => return Err(PortalError::NoPortalUrl),
            other => other?,
        },
    };
    let portal_url = match portal_url {
        Some(url) => url.clone(),
        None => store.db().public_url()?.ok_or(PortalError::NoPortalUrl)?,
    };
    Ok((store, portal_url))
}

/// `code issue --batch FILE`: checks the whole file, issues every code in
/// one transaction, then prints one JSON line per user.
fn issue_batch(args: IssueArgs) -> Result<(), PortalError> {
    let Some(path) = args.batch.as_deref() else {
        return Err(PortalError::Usage(
            "give --kind device, --kind user --user NAME, or --batch FILE".into(),
        ));
    };
    let text = crate::batch::read(path)?;
    let users = crate::batch::parse(&path.display().to_string(), &text, args.ttl, MAX_TTL_SECS)?;
    let (mut store, portal_url) = issuing_store(&args)?;
    let now = now_unix();
    let issued = store.immediate(|db| {
        users
            .iter()
            .map(|entry| {
                // 75 random bits make a collision all but impossible;
                // retrying on one costs nothing.
                for _ in 0..8 {
                    let code =
                        fleetkey_proto::ActivationCode::generate().map_err(StoreError::Random)?;
                    let record = CodeRecord::new(
                        db.code_hash(&code),
                        CodeKind::User,
                        Some(&entry.user),
                        now,
                        entry.ttl,
                    );
                    if db.insert_code(&record)? {
                        return Ok((code, record));
                    }
                }
                Err(StoreError::NoFreeCode(8))
            })
            .collect::<Result<Vec<_>, StoreError>>()
    })?;
    tracing::info!(users = issued.len(), "batch of add-user codes issued");
    let mut text = String::new();
    for (code, record) in issued {
        let uri = EnrollmentPayload {
            code: code.clone(),
            portal_url: portal_url.clone(),
            user_hint: record.user.clone(),
            expires_at: Some(record.expires_at),
        }
        .to_uri();
        let line = crate::batch::BatchCode {
            user: record.user.unwrap_or_default(),
            code: code.to_string(),
            uri,
            expires_at: rfc3339(record.expires_at),
        };
        text.push_str(&serde_json::to_string(&line)?);
        text.push('\n');
    }
    print(&text)
}

fn human_issue(
    code: &fleetkey_proto::ActivationCode,
    record: &CodeRecord,
    uri: &str,
    now: i64,
) -> String {
    let kind = match record.kind {
        CodeKind::Device => "device activation (fleetkeyctl activate)",
        CodeKind::User => "add user (fleetkeyctl user add)",
    };
    let mut rows = vec![("Code:", code.to_string()), ("Kind:", kind.to_string())];
    if let Some(user) = &record.user {
        rows.push(("User:", user.clone()));
    }
    rows.push(("URI:", uri.to_string()));
    rows.push((
        "Expires:",
        format!(
            "{} (in {})",
            rfc3339(record.expires_at),
            duration_text(record.expires_at - now)
        ),
    ));
    aligned(&rows)
}

/// `90` -> `1 min 30 s`.
fn duration_text(secs: i64) -> String {
    let secs = secs.max(0);
    let (days, hours, minutes, seconds) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let parts: Vec<String> = [(days, "d"), (hours, "h"), (minutes, "min"), (seconds, "s")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}"))
        .collect();
    if parts.is_empty() {
        "0 s".into()
    } else {
        parts.join(" ")
    }
}

/// `Label:   value` lines with the values aligned. Values are escaped for
/// the terminal: names, details and URIs come from devices and callers.
fn aligned(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(label, value)| format!("{label:<width$}  {}\n", escape(value)))
        .collect()
}

/// A table with a header row and columns padded to their widest cell;
/// cells are escaped for the terminal, as in [`aligned`].
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape(cell).into_owned()).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.push('\n');
        text
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.into()
}

// ---- user show / list ----

/// What `user show --json` prints.
#[derive(Debug, Serialize)]
pub struct UserDetails {
    pub user: String,
    pub device_id: String,
    pub credential_id: String,
    pub backend: String,
    pub attestation_format: String,
    pub hardware_backed: bool,
    /// What the portal verified of the key's attestation.
    pub attestation_detail: String,
    /// RFC 3339, UTC.
    pub enrolled_at: String,
    pub public_key_pem: String,
}

/// One element of `user list --json`.
#[derive(Debug, Serialize)]
pub struct UserListEntry {
    pub user: String,
    pub device_id: String,
    pub credential_id: String,
    pub backend: String,
    pub attestation_format: String,
    pub hardware_backed: bool,
    /// What the portal verified of the key's attestation.
    pub attestation_detail: String,
    /// RFC 3339, UTC.
    pub enrolled_at: String,
}

fn public_key_pem(enrollment: &Enrollment) -> Result<String, PortalError> {
    let corrupt = |error: String| StoreError::Corrupt {
        what: "user public key",
        value: format!("credential {}: {error}", enrollment.credential_id),
    };
    let key = VerifyingKey::from_public_key_der(&enrollment.public_key)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(key
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| corrupt(e.to_string()))?)
}

/// The one active enrollment of `user` (on `device`, when given).
fn pick_enrollment(
    db: &crate::store::Db<'_>,
    user: &str,
    device: Option<&str>,
) -> Result<Enrollment, PortalError> {
    let mut enrollments = db.active_enrollments(Some(user))?;
    if let Some(device) = device {
        enrollments.retain(|e| e.device_id == device);
    }
    match enrollments.len() {
        0 => Err(PortalError::NotFound(match device {
            Some(device) => format!(
                "user {} is not enrolled on device {}",
                escape(user),
                escape(device)
            ),
            None => format!("no user {} is enrolled with this portal", escape(user)),
        })),
        1 => Ok(enrollments.remove(0)),
        _ => {
            let devices: Vec<&str> = enrollments.iter().map(|e| e.device_id.as_str()).collect();
            Err(PortalError::Usage(format!(
                "user {} is enrolled on {} devices ({}); pick one with --device ID",
                escape(user),
                devices.len(),
                devices.join(", ")
            )))
        }
    }
}

fn user_show(args: UserShowArgs) -> Result<(), PortalError> {
    let store = Store::open_existing(&args.db.db)?;
    let enrollment = pick_enrollment(&store.db(), &args.user, args.device.as_deref())?;
    let details = UserDetails {
        public_key_pem: public_key_pem(&enrollment)?,
        user: enrollment.user,
        device_id: enrollment.device_id,
        credential_id: enrollment.credential_id,
        backend: enrollment.backend,
        attestation_format: enrollment.attestation_format,
        hardware_backed: enrollment.hardware_backed,
        attestation_detail: enrollment.attestation_detail,
        enrolled_at: rfc3339(enrollment.enrolled_at),
    };
    if args.json {
        return print_json(&details);
    }
    let mut text = aligned(&[
        ("User:", details.user),
        ("Device:", details.device_id),
        ("Credential:", details.credential_id),
        ("Backend:", details.backend),
        ("Hardware-backed:", yes_no(details.hardware_backed)),
        ("Attestation:", details.attestation_format),
        (
            "Verified:",
            if details.attestation_detail.is_empty() {
                "(not recorded: enrolled before portal schema 2)".to_string()
            } else {
                details.attestation_detail
            },
        ),
        ("Enrolled:", details.enrolled_at),
        ("Public key:", String::new()),
    ]);
    text.push_str(&details.public_key_pem);
    print(&text)
}

fn user_list(args: ListArgs) -> Result<(), PortalError> {
    let store = Store::open_existing(&args.db.db)?;
    let entries: Vec<UserListEntry> = store
        .db()
        .active_enrollments(None)?
        .into_iter()
        .map(|e| UserListEntry {
            user: e.user,
            device_id: e.device_id,
            credential_id: e.credential_id,
            backend: e.backend,
            attestation_format: e.attestation_format,
            hardware_backed: e.hardware_backed,
            attestation_detail: e.attestation_detail,
            enrolled_at: rfc3339(e.enrolled_at),
        })
        .collect();
    if args.json {
        return print_json(&entries);
    }
    if entries.is_empty() {
        eprintln!("No users are enrolled.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .into_iter()
        .map(|e| {
            vec![
                e.user,
                e.device_id,
                e.backend,
                yes_no(e.hardware_backed),
                e.enrolled_at,
                e.credential_id,
            ]
        })
        .collect();
    print(&table(
        &[
            "USER",
            "DEVICE",
            "BACKEND",
            "HARDWARE",
            "ENROLLED",
            "CREDENTIAL",
        ],
        &rows,
    ))
}

/// What `user revoke --json` prints.
#[derive(Debug, Serialize)]
pub struct RevokedCredential {
    pub user: String,
    pub device_id: String,
    pub credential_id: String,
    /// RFC 3339, UTC.
    pub revoked_at: String,
}

fn user_revoke(args: UserRevokeArgs) -> Result<(), PortalError> {
    let mut store = Store::open_existing(&args.db.db)?;
    let enrollment = pick_enrollment(&store.db(), &args.user, args.device.as_deref())?;
    let now = now_unix();
    let revoked = store
        .immediate(|db| {
            db.revoke(
                &enrollment.device_id,
                &enrollment.user,
                Some(&enrollment.credential_id),
                now,
            )
        })?
        .ok_or_else(|| {
            PortalError::NotFound(format!(
                "user {}'s credential {} on device {} was revoked by someone else meanwhile",
                escape(&enrollment.user),
                enrollment.credential_id,
                enrollment.device_id
            ))
        })?;
    tracing::info!(
        user = %escape(&revoked.user),
        device_id = %revoked.device_id,
        credential_id = %revoked.credential_id,
        "credential revoked by the portal's administrator"
    );
    let result = RevokedCredential {
        user: revoked.user,
        device_id: revoked.device_id,
        credential_id: revoked.credential_id,
        revoked_at: rfc3339(now),
    };
    if args.json {
        return print_json(&result);
    }
    print(&format!(
        "Revoked {}'s credential {} on device {}.\n",
        escape(&result.user),
        result.credential_id,
        result.device_id
    ))?;
    eprintln!(
        "The device's key is no longer trusted. To enroll the user on that device again, issue a new code: fleetkey-portal code issue --kind user --user \"{}\"",
        escape(&result.user)
    );
    Ok(())
}

// ---- device list ----

/// One element of `device list --json`.
#[derive(Debug, Serialize)]
pub struct DeviceListEntry {
    pub device_id: String,
    pub name: String,
    /// RFC 3339, UTC.
    pub registered_at: String,
    pub active_users: u64,
    /// Whether the device proved a TPM identity (AK bound to EK) at activation.
    pub tpm_verified: bool,
    /// RFC 3339, UTC; null without a TPM identity.
    pub tpm_verified_at: Option<String>,
    /// The AK's name, hex; null without a TPM identity.
    pub ak_name: Option<String>,
    /// `verified`, `not-checked` or `absent`; null without a TPM identity.
    pub ek_certificate: Option<EkCertificateStatus>,
    /// The trusted certificate the EK certificate chained to.
    pub ek_certificate_anchor: Option<String>,
    /// What the portal verified of the device's identity.
    pub attestation_detail: String,
    /// The last verified integrity level (HSI 0-4); null when never verified.
    pub integrity_level: Option<u8>,
    /// Whether a TPM quote vouched for it.
    pub integrity_tpm_verified: Option<bool>,
    /// RFC 3339; null when never verified.
    pub integrity_verified_at: Option<String>,
}

fn device_list(args: ListArgs) -> Result<(), PortalError> {
    let store = Store::open_existing(&args.db.db)?;
    let db = store.db();
    let entries: Vec<DeviceListEntry> = db
        .devices()?
        .into_iter()
        .map(|d| {
            let tpm = d.device.tpm.as_ref();
            let integrity = db.integrity(&d.device.device_id)?;
            Ok(DeviceListEntry {
                integrity_level: integrity.as_ref().map(|i| i.level),
                integrity_tpm_verified: integrity.as_ref().map(|i| i.tpm_verified),
                integrity_verified_at: integrity.as_ref().map(|i| rfc3339(i.verified_at)),
                tpm_verified: tpm.is_some(),
                tpm_verified_at: tpm.map(|t| rfc3339(t.verified_at)),
                ak_name: tpm.map(|t| hex::encode(&t.ak_name)),
                ek_certificate: tpm.map(|t| t.ek_certificate_status),
                ek_certificate_anchor: tpm.and_then(|t| t.ek_certificate_anchor.clone()),
                attestation_detail: if d.device.attestation_detail.is_empty() {
                    crate::service::DETAIL_NO_TPM.to_string()
                } else {
                    d.device.attestation_detail.clone()
                },
                device_id: d.device.device_id,
                name: d.device.name,
                registered_at: rfc3339(d.device.registered_at),
                active_users: d.active_users,
            })
        })
        .collect::<Result<_, PortalError>>()?;
    if args.json {
        return print_json(&entries);
    }
    if entries.is_empty() {
        eprintln!("No devices are registered.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .into_iter()
        .map(|d| {
            vec![
                d.device_id,
                d.active_users.to_string(),
                d.registered_at,
                if d.tpm_verified { "verified" } else { "-" }.to_string(),
                d.ek_certificate
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| "-".into()),
                integrity_cell(
                    d.integrity_level,
                    d.integrity_tpm_verified,
                    d.integrity_verified_at.as_deref(),
                ),
                d.name,
            ]
        })
        .collect();
    print(&table(
        &[
            "DEVICE",
            "USERS",
            "REGISTERED",
            "TPM",
            "EK CERT",
            "INTEGRITY",
            "NAME",
        ],
        &rows,
    ))
}

// ---- login ----

fn login_start(args: LoginStartArgs) -> Result<(), PortalError> {
    let store = Store::open_existing(&args.db.db)?;
    let now = now_unix();
    let challenge = crate::login::start(&store.db(), &args.user, &args.context, args.ttl, now)
        .map_err(|error| match error {
            crate::login::StartError::Store(error) => PortalError::Store(error),
            crate::login::StartError::Refused(message) => PortalError::Usage(message),
        })?;
    tracing::info!(challenge = %challenge.id, user = %challenge.user, "login challenge made");
    if args.json {
        return print_json(&crate::login::Started {
            id: challenge.id,
            user: challenge.user,
            number: challenge.number,
            expires_at: rfc3339(challenge.expires_at),
        });
    }
    print(&aligned(&[
        ("challenge", challenge.id.clone()),
        ("user", challenge.user.clone()),
        (
            "number",
            format!("{} (show it at the login)", challenge.number),
        ),
        ("expires", rfc3339(challenge.expires_at)),
    ]))
}

/// How often `login wait` looks at the database.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(50);

fn login_wait(args: LoginWaitArgs) -> Result<(), PortalError> {
    let store = Store::open_existing(&args.db.db)?;
    let outcome = loop {
        let now = now_unix();
        let challenge = crate::login::get(&store.db(), &args.id)?.ok_or_else(|| {
            PortalError::NotFound(format!("no login challenge {}", escape(&args.id)))
        })?;
        if challenge.outcome(now) != "pending" {
            break crate::login::Outcome::of(&challenge, now);
        }
        std::thread::sleep(WAIT_POLL);
    };
    if args.json {
        print_json(&outcome)?;
    } else {
        let mut rows = vec![
            ("challenge", outcome.id.clone()),
            ("user", outcome.user.clone()),
            ("outcome", outcome.outcome.clone()),
        ];
        if let (Some(device), Some(signer)) = (&outcome.device_id, &outcome.signed_by) {
            rows.push((
                "signature",
                format!("verified: signed by the {signer} key of device {device}"),
            ));
        }
        if outcome.suspicious {
            rows.push((
                "warning",
                "a wrong number was given on the device: someone else may be trying to log in"
                    .into(),
            ));
        }
        print(&aligned(&rows))?;
    }
    if outcome.outcome == "approved" {
        Ok(())
    } else {
        Err(PortalError::NotApproved(outcome.outcome))
    }
}

/// `HSI:2 (TPM) 2026-..`, `HSI:1 (unquoted) ...`, or `-`.
fn integrity_cell(level: Option<u8>, tpm: Option<bool>, at: Option<&str>) -> String {
    match (level, at) {
        (Some(level), Some(at)) => format!(
            "HSI:{level} ({}) {at}",
            if tpm == Some(true) { "TPM" } else { "unquoted" }
        ),
        _ => "-".into(),
    }
}

/// `device show --json`.
#[derive(Debug, Serialize)]
pub struct DeviceShow {
    #[serde(flatten)]
    pub device: DeviceListEntry,
    pub integrity: Option<IntegrityShow>,
    /// RFC 3339: when `device integrity` asked for a fresh report that
    /// the device has not answered yet.
    pub integrity_requested_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IntegrityShow {
    pub level: u8,
    pub summary: String,
    pub tpm_verified: bool,
    pub report_digest: String,
    pub exceptions: Vec<String>,
    /// RFC 3339.
    pub verified_at: String,
    /// `activation`, `user add` or `on-demand`.
    pub occasion: String,
}

fn device_show(args: DeviceShowArgs) -> Result<(), PortalError> {
    let store = Store::open_existing(&args.db.db)?;
    let db = store.db();
    let Some(summary) = db
        .devices()?
        .into_iter()
        .find(|d| d.device.device_id == args.device)
    else {
        return Err(PortalError::NotFound(format!(
            "no device {} is registered",
            escape(&args.device)
        )));
    };
    let integrity = db.integrity(&summary.device.device_id)?;
    let requested = db.integrity_request(&summary.device.device_id)?;
    let tpm = summary.device.tpm.as_ref();
    let shown = DeviceShow {
        device: DeviceListEntry {
            tpm_verified: tpm.is_some(),
            tpm_verified_at: tpm.map(|t| rfc3339(t.verified_at)),
            ak_name: tpm.map(|t| hex::encode(&t.ak_name)),
            ek_certificate: tpm.map(|t| t.ek_certificate_status),
            ek_certificate_anchor: tpm.and_then(|t| t.ek_certificate_anchor.clone()),
            attestation_detail: summary.device.attestation_detail.clone(),
            integrity_level: integrity.as_ref().map(|i| i.level),
            integrity_tpm_verified: integrity.as_ref().map(|i| i.tpm_verified),
            integrity_verified_at: integrity.as_ref().map(|i| rfc3339(i.verified_at)),
            device_id: summary.device.device_id.clone(),
            name: summary.device.name.clone(),
            registered_at: rfc3339(summary.device.registered_at),
            active_users: summary.active_users,
        },
        integrity: integrity.map(|i| IntegrityShow {
            level: i.level,
            summary: i.summary,
            tpm_verified: i.tpm_verified,
            report_digest: i.report_digest,
            exceptions: i
                .exceptions
                .split(',')
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect(),
            verified_at: rfc3339(i.verified_at),
            occasion: i.occasion,
        }),
        integrity_requested_at: requested.map(rfc3339),
    };
    if args.json {
        return print_json(&shown);
    }
    let d = &shown.device;
    let integrity = match &shown.integrity {
        None => "never verified".to_string(),
        Some(i) => format!(
            "{} — {}, verified {} at {}{}",
            i.summary,
            if i.tpm_verified {
                "quoted by the device's TPM"
            } else {
                "not quoted (no TPM): the device's word only"
            },
            i.verified_at,
            i.occasion,
            if i.exceptions.is_empty() {
                String::new()
            } else {
                format!("; exceptions: {}", i.exceptions.join(", "))
            }
        ),
    };
    let mut rows = vec![
        ("Device", d.device_id.clone()),
        ("Name", d.name.clone()),
        ("Registered", d.registered_at.clone()),
        ("Active users", d.active_users.to_string()),
        ("Attestation", d.attestation_detail.clone()),
        ("Integrity", integrity),
    ];
    if let Some(at) = &shown.integrity_requested_at {
        rows.push((
            "Requested",
            format!("a fresh report, at {at}; sent on the device's stream, answered when it is connected"),
        ));
    }
    print(&aligned(&rows))
}

fn device_integrity(args: DeviceIntegrityArgs) -> Result<(), PortalError> {
    let store = Store::open_existing(&args.db.db)?;
    crate::service::integrity::request(&store.db(), &args.device)
        .map_err(|f| PortalError::NotFound(f.message))?;
    eprintln!(
        "Requested a fresh integrity report from {}; the portal sends the request on the device's stream (at once if it is connected, else when it connects) and the device answers. See `fleetkey-portal device show {}`.",
        escape(&args.device),
        escape(&args.device)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_text(600), "10 min");
        assert_eq!(duration_text(90), "1 min 30 s");
        assert_eq!(duration_text(0), "0 s");
        assert_eq!(duration_text(86_400 + 3600), "1 d 1 h");
    }

    #[test]
    fn tables_align() {
        let text = table(
            &["A", "BB"],
            &[vec!["xxx".into(), "y".into()], vec!["z".into(), "w".into()]],
        );
        assert_eq!(text, "A    BB\nxxx  y\nz    w\n");
    }

    #[test]
    fn listen_addresses_resolve() {
        assert!(resolve_listen("127.0.0.1:0").unwrap().ip().is_loopback());
        assert!(resolve_listen("[::1]:7000").unwrap().ip().is_loopback());
        assert!(resolve_listen("localhost:0").unwrap().ip().is_loopback());
        assert!(matches!(
            resolve_listen("no port"),
            Err(PortalError::Usage(_))
        ));
    }
}
