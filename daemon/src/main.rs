//! `fleetkeyd`: starts the daemon. See `fleetkeyd --help`.

use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use fleetkeyd::args::Args;
use fleetkeyd::auth::AdminPolicy;
use fleetkeyd::backends::Backends;
use fleetkeyd::config::Config;
use fleetkeyd::engine::Engine;
use fleetkeyd::portal_client::PortalConnector;
use fleetkeyd::server::{self, Service};
use fleetkeyd::state::StateStore;

fn main() -> ExitCode {
    quiet_tss_log();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fleetkeyd: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The TPM library (tpm2-tss) logs every failed TPM command to stderr,
/// wrong PINs included, which the daemon reports itself in its own log.
/// Silence it unless the operator set TSS2_LOG.
fn quiet_tss_log() {
    if cfg!(feature = "tpm") && std::env::var_os("TSS2_LOG").is_none() {
        // SAFETY: called first thing in main, before any other thread
        // exists, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("TSS2_LOG", "all+none") };
    }
}

fn load_config(args: &Args) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::load(path, true),
        None => match fleetkey_proto::paths::default_config() {
            Some(path) => Config::load(&path, false),
            // No home directory: no per-user file to look for.
            None => Ok(Config::default()),
        },
    }
    .map_err(|e| e.to_string())?;
    if let Some(socket) = &args.socket {
        config.socket = Some(socket.clone());
    }
    if let Some(dir) = &args.state_dir {
        config.state_dir = Some(dir.clone());
    }
    if let Some(url) = &args.portal_url {
        config.portal_url = Some(url.clone());
    }
    if let Some(level) = args.log_level {
        config.log_level = level;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn run(args: Args) -> Result<(), String> {
    let config = load_config(&args)?;
    // Under systemd the journal records the time itself, and nothing
    // that is not a terminal gets colour codes.
    let to_journal = fleetkeyd::systemd::stderr_is_journal();
    let logs = tracing_subscriber::fmt()
        .with_max_level(config.log_level.tracing_level())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if to_journal {
        logs.without_time().init();
    } else {
        logs.init();
    }
    // The socket systemd's fleetkeyd.socket hands over, if it did; taken
    // before the runtime starts any thread (it edits the environment).
    let activated = fleetkeyd::systemd::take_listener()?;

    let state_dir = config
        .state_dir
        .clone()
        .or_else(fleetkey_proto::paths::default_state_dir)
        .ok_or("no state directory: HOME is not set and this user has no home directory; give --state-dir")?;
    let socket = config
        .socket
        .clone()
        .or_else(fleetkey_proto::paths::default_socket)
        .ok_or(
            "no socket path: XDG_RUNTIME_DIR is not set; give --socket (in a directory only this user \
             or root can write), or run the system daemon as root",
        )?;
    std::fs::create_dir_all(&state_dir)
        .and_then(|()| std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot use state directory {}: {e}", state_dir.display()))?;
    let state = StateStore::open(&state_dir.join("state.db")).map_err(|e| e.to_string())?;
    let audit = fleetkeyd::audit::AuditLog::open(&state_dir.join(fleetkeyd::audit::FILE_NAME))
        .map_err(|e| e.to_string())?;
    let portal_ca = match &config.portal_ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read portal_ca_file {}: {e}", path.display()))?,
        ),
        None => None,
    };

    give_freed_memory_back();
    // One thread serves every connection; key-store work (Argon2, hardware)
    // runs on the blocking pool. Measured (cargo bench -p fleetkey-e2e):
    // fewer cross-thread wake-ups than a multi-thread runtime, and better
    // tail latency with 16 concurrent clients on 2 cores.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let backends = Backends::open(&config, &state_dir);
        let engine = Arc::new(Engine::new(
            &config,
            Arc::new(state),
            backends,
            PortalConnector::new(portal_ca).allow_plaintext(&config.allow_plaintext_portals),
            Arc::new(audit),
        ));
        engine
            .recover()
            .await
            .map_err(|f| format!("startup recovery failed: {}", f.message))?;
        let retrying = engine.clone();
        tokio::spawn(async move { retrying.retry_pending().await });
        let polling = engine.clone();
        tokio::spawn(async move { polling.poll_integrity().await });
        let (listener, owned_socket) = match activated {
            Some(listener) => (
                tokio::net::UnixListener::from_std(listener)
                    .map_err(|e| format!("cannot use the socket systemd handed over: {e}"))?,
                None,
            ),
            None => (
                server::bind_socket(&socket).map_err(|e| e.to_string())?,
                Some(socket.as_path()),
            ),
        };
        let service = Service::new(engine, AdminPolicy::new(config.admin_group.as_deref()));
        tracing::info!(
            socket = %socket.display(),
            socket_activated = owned_socket.is_none(),
            state_dir = %state_dir.display(),
            version = env!("CARGO_PKG_VERSION"),
            "fleetkeyd ready"
        );
        fleetkeyd::systemd::notify_or_log(&format!(
            "READY=1\nSTATUS=Serving on {}",
            socket.display()
        ));
        let shutdown = async {
            shutdown_signal().await;
            fleetkeyd::systemd::notify_or_log("STOPPING=1");
        };
        server::serve(service, listener, owned_socket, shutdown)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!("fleetkeyd stopped");
        Ok(())
    })
}

/// Makes glibc's allocator hand large freed blocks back to the system.
/// By default its mmap threshold grows with every large block freed, so
/// Argon2's buffers (19 MiB each by default) end up in per-thread arenas
/// that keep them after a burst of signing; a fixed threshold keeps every
/// block of 1 MiB or more in its own mapping, unmapped when freed. The
/// work queue trims the arenas when it falls idle (engine/keystore.rs).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_freed_memory_back() {
    // SAFETY: mallopt only changes allocator parameters; called before
    // the runtime starts its threads.
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024) };
    if set != 1 {
        tracing::warn!("could not set the allocator's mmap threshold");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_freed_memory_back() {}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}
