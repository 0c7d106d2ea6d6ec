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
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

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
        fleetkey_proto::payload::validate_portal_url(url)
            .map_err(|_| fleetkeyd::args::portal_url_flag_problem(url))?;
        config.portal_url = Some(url.clone());
    }
    if let Some(bus) = args.dbus {
        config.dbus = bus;
    }
    if let Some(level) = args.log_level {
        config.log_level = level;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The handle SIGHUP changes the log level through.
type LevelHandle = tracing_subscriber::reload::Handle<
    tracing_subscriber::filter::LevelFilter,
    tracing_subscriber::Registry,
>;

/// On each SIGHUP, reads the configuration again (file, drop-ins, then the
/// same flags) and applies what can change while running: `log_level` and
/// `[pin]`. Other changed settings are named in the log as waiting for a
/// restart. A configuration that does not load is logged and ignored: the
/// running one stays.
async fn reload_on_hangup(
    args: Args,
    started: Config,
    engine: Arc<Engine>,
    log_level: LevelHandle,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; configuration reload is off");
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP received, reloading the configuration");
        let new = match load_config(&args) {
            Ok(new) => new,
            Err(e) => {
                tracing::warn!(error = %e, "configuration reload failed; keeping the running configuration");
                fleetkeyd::systemd::notify_or_log(
                    "STATUS=Configuration reload failed; see the log",
                );
                continue;
            }
        };
        let level =
            tracing_subscriber::filter::LevelFilter::from_level(new.log_level.tracing_level());
        if let Err(e) = log_level.modify(|filter| *filter = level) {
            tracing::warn!(error = %e, "could not change the log level");
        }
        engine.set_pin_policy(new.pin);
        let waiting = started.restart_needed(&new);
        if !waiting.is_empty() {
            tracing::warn!(
                settings = %waiting.join(", "),
                "changed settings take effect only when fleetkeyd restarts"
            );
        }
        tracing::info!(
            log_level = ?new.log_level,
            pin_min_length = new.pin.min_length,
            pin_max_length = new.pin.max_length,
            pin_max_attempts = new.pin.max_attempts,
            pin_digits_only = new.pin.digits_only,
            "configuration reloaded"
        );
        fleetkeyd::systemd::notify_or_log("STATUS=Configuration reloaded");
    }
}

fn run(args: Args) -> Result<(), String> {
    let config = load_config(&args)?;
    // Under systemd the journal records the time itself, and nothing
    // that is not a terminal gets colour codes.
    // The level sits in a reload layer so that SIGHUP can change it.
    let to_journal = fleetkeyd::systemd::stderr_is_journal();
    let (level, log_level) = tracing_subscriber::reload::Layer::new(
        tracing_subscriber::filter::LevelFilter::from_level(config.log_level.tracing_level()),
    );
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let registry = tracing_subscriber::registry().with(level);
    if to_journal {
        registry.with(logs.without_time()).init();
    } else {
        registry.with(logs).init();
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
    let state = Arc::new(StateStore::open(&state_dir.join("state.db")).map_err(|e| e.to_string())?);
    let audit = fleetkeyd::audit::AuditLog::open_anchored(
        &state_dir.join(fleetkeyd::audit::FILE_NAME),
        state.clone(),
    )
    .map_err(|e| e.to_string())?;
    let audit = Arc::new(audit);
    fleetkeyd::audit::AuditLog::flush_every(&audit);
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
            state,
            backends,
            PortalConnector::new(portal_ca).allow_plaintext(&config.allow_plaintext_portals),
            audit.clone(),
        ));
        engine
            .recover()
            .await
            .map_err(|f| format!("startup recovery failed: {}", f.message))?;
        let retrying = engine.clone();
        tokio::spawn(async move { retrying.retry_pending().await });
        tokio::spawn(reload_on_hangup(
            args,
            config.clone(),
            engine.clone(),
            log_level,
        ));
        let streaming = engine.clone();
        tokio::spawn(async move { streaming.run_portal_stream().await });
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
        let admins = AdminPolicy::new(config.admin_group.as_deref());
        // Held until the daemon stops: dropping it leaves the bus.
        let _bus = fleetkeyd::dbus::start(config.dbus, engine.clone(), admins.clone()).await;
        let service = Service::new(engine, admins);
        let stop_signal = shutdown_signal();
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
            stop_signal.await;
            fleetkeyd::systemd::notify_or_log("STOPPING=1");
        };
        server::serve(service, listener, owned_socket, shutdown)
            .await
            .map_err(|e| e.to_string())?;
        if let Err(error) = audit.flush() {
            tracing::error!(%error, "cannot sync the audit log at exit");
        }
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

/// Installs the SIGTERM and SIGINT handlers now (before the daemon says it
/// is ready, so a stop sent right after READY is not the default action's
/// kill) and returns a future that completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = signal(SignalKind::terminate())
        .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
    async move {
        let Ok((mut term, mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    }
}
