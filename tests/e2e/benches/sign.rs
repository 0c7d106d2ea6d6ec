//! Sign benchmark: the software key store's raw sign (PIN check + sign, in
//! process) against `Sign` through the real fleetkeyd over its Unix
//! socket, with 1 and 16 concurrent clients, in one run; and, built with
//! `--all-features` and run as root, signing on a simulated PIV card
//! through the daemon against raw APDUs to the same card.
//!
//!     cargo build --release --workspace --bins --all-features && cargo bench -p fleetkey-e2e --all-features --bench sign
//!
//! With the `tpm` feature (`cargo bench -p fleetkey-e2e --all-features
//! --bench sign`), it also measures the TPM key store on swtpm: the raw
//! store's operations in process (create; create + TPM2_Certify + the
//! proof-of-possession sign that enrollment makes; load + sign) against
//! `AddUser` and `Sign`
//! through the daemon on the same swtpm, in alternating rounds (swtpm
//! serves one client at a time, so they take turns). `FLEETKEY_BENCH_ONLY=tpm` runs only that part.
//!
//! `FLEETKEY_BENCH_ONLY=batch` (issue 13) enrolls 1,000 users with
//! `fleetkeyctl user add-batch` on the soft store (cheap KDF) and 50 on
//! swtpm, against the raw key store's work for them, and compares `user
//! list` and `sign` on a state of 10,000 users with one of 10 (`--quick`:
//! 100, 5 and 500).
//!
//! The QR scanner's figures come from `fleetkey-qr-bench`, run as a
//! process (`FLEETKEY_BENCH_ONLY=qr`; whole set and reference decoders,
//! or with `--quick` 1 in 32 of its fleetkey frames and fleetkey's scanner
//! alone).
//!
//! The run ends with a table of every figure that has a target (issue 14)
//! and whether it is met. `-- --quick` runs every part with fewer rounds.
//! The parts, for `FLEETKEY_BENCH_ONLY`: tpm, default, cheap-kdf, piv, qr,
//! approvals, footprint, batch.
//!
//! `FLEETKEY_BENCH_ONLY=footprint` prints only the daemon's time to ready
//! and idle RSS (soft store only); the key-store settings print its RSS
//! after their 16-client runs.
//!
//! Each of the 16 clients signs as its own user (the daemon serializes PIN
//! checks per user, so that concurrent guesses cannot outrun the attempt
//! counter). At one client, raw and daemon samples are interleaved so that
//! drift in machine speed falls on both alike. Two key-store settings are
//! measured: the default Argon2id cost (what users get), and a cheap one
//! that leaves the daemon's own overhead visible.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetkey_e2e::{Daemon, Portal};
use fleetkey_plugin::{KeyStore, Pin};
use fleetkey_proto::daemon::SignRequest;
use fleetkey_proto::daemon::fleetkey_client::FleetkeyClient;
use fleetkey_soft::{SoftConfig, SoftKeyStore};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint};

const CLIENTS: usize = 16;
const PIN: &str = "1234";
/// The simulated PIV card's PIN (PIV wants 6 to 8 characters).
#[cfg_attr(not(feature = "pcsc"), allow(dead_code))]
const PIN_PIV: &str = "24681357";

struct Setting {
    label: &'static str,
    soft: SoftConfig,
    single_ops: usize,
    per_client_ops: usize,
}

#[derive(Clone, Copy)]
struct Stats {
    ops: usize,
    p50_us: f64,
    p99_us: f64,
    ops_per_s: f64,
}

fn stats(mut latencies: Vec<Duration>, wall: Duration) -> Stats {
    latencies.sort();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[index].as_secs_f64() * 1e6
    };
    Stats {
        ops: latencies.len(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        ops_per_s: latencies.len() as f64 / wall.as_secs_f64(),
    }
}

fn digest(i: usize) -> [u8; 32] {
    Sha256::digest(format!("challenge {i}")).into()
}

async fn connect(socket: &Path) -> FleetkeyClient<Channel> {
    FleetkeyClient::new(connect_channel(socket).await)
}

async fn connect_channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to fleetkeyd")
}

async fn daemon_sign(client: &mut FleetkeyClient<Channel>, user: &str, i: usize) -> Duration {
    let start = Instant::now();
    client
        .sign(SignRequest {
            user: user.into(),
            pin: PIN.into(),
            digest: digest(i).to_vec(),
        })
        .await
        .expect("daemon sign");
    start.elapsed()
}

fn raw_sign(store: &SoftKeyStore, key_ref: &[u8], i: usize) -> Duration {
    let start = Instant::now();
    store
        .sign_digest(key_ref, &Pin::new(PIN), &digest(i))
        .expect("raw sign");
    start.elapsed()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15; index 11 and 12 after the name.
    fields
        .get(11)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
}

/// CPU time the process has used, all threads, in nanoseconds (the first
/// field of each thread's schedstat; threads that ended are not counted,
/// so measure across spans where the daemon's threads stay).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn config_text(soft: &SoftConfig) -> String {
    format!(
        "log_level = \"warn\"\n[backends.soft]\nargon2_memory_kib = {}\nargon2_iterations = {}\nargon2_parallelism = {}\n",
        soft.argon2_memory_kib, soft.argon2_iterations, soft.argon2_parallelism
    )
}

fn run_setting(runtime: &tokio::runtime::Runtime, portal: &Portal, setting: &Setting) {
    // Raw key store with its own keys.
    let dir = fleetkey_e2e::open_tempdir();
    let store =
        Arc::new(SoftKeyStore::open(&dir.path().join("keys"), setting.soft).expect("open store"));
    let raw_keys: Vec<Vec<u8>> = (0..CLIENTS)
        .map(|i| {
            store
                .create_key(&format!("bench-{i}"), &Pin::new(PIN))
                .expect("create")
                .key_ref
        })
        .collect();

    // The daemon with the same settings and one user per client.
    let daemon = Daemon::start(&config_text(&setting.soft));
    daemon.activate(portal);
    let users: Vec<String> = (0..CLIENTS)
        .map(|i| format!("{}-user{i}", setting.label))
        .collect();
    for user in &users {
        daemon.add_user(portal, user, PIN);
    }

    // The transport alone (grpc.health Check: no work behind it), and
    // GetStatus (which asks each key store for its details).
    let (health_p50_us, status_p50_us) = runtime.block_on(async {
        let mut client = connect(&daemon.socket).await;
        let mut latencies = Vec::new();
        for _ in 0..500 {
            let start = Instant::now();
            client
                .get_status(fleetkey_proto::daemon::GetStatusRequest {})
                .await
                .expect("status");
            latencies.push(start.elapsed());
        }
        let status = stats(latencies, Duration::from_secs(1)).p50_us;
        let mut health = tonic_health::pb::health_client::HealthClient::new(
            connect_channel(&daemon.socket).await,
        );
        let mut latencies = Vec::new();
        for _ in 0..500 {
            let start = Instant::now();
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("health check");
            latencies.push(start.elapsed());
        }
        (stats(latencies, Duration::from_secs(1)).p50_us, status)
    });

    let pid = daemon.pid();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let idle_ticks = cpu_ticks(pid) - before;

    let mut raw1 = Vec::new();
    let mut daemon1 = Vec::new();
    let mut daemon_cpu = 0u64;
    let (raw1_wall, daemon1_wall) = runtime.block_on(async {
        let mut client = connect(&daemon.socket).await;
        for i in 0..3 {
            daemon_sign(&mut client, &users[0], i).await;
            raw_sign(&store, &raw_keys[0], i);
        }
        let (mut raw_wall, mut daemon_wall) = (Duration::ZERO, Duration::ZERO);
        for i in 0..setting.single_ops {
            let d = raw_sign(&store, &raw_keys[0], i);
            raw_wall += d;
            raw1.push(d);
            let cpu = cpu_ns(pid);
            let d = daemon_sign(&mut client, &users[0], i).await;
            daemon_cpu += cpu_ns(pid).saturating_sub(cpu);
            daemon_wall += d;
            daemon1.push(d);
        }
        (raw_wall, daemon_wall)
    });
    let raw1 = stats(raw1, raw1_wall);
    let daemon1 = stats(daemon1, daemon1_wall);

    // 16 threads on the raw store.
    let start = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let store = store.clone();
            let key = raw_keys[c].clone();
            let n = setting.per_client_ops;
            std::thread::spawn(move || {
                (0..n)
                    .map(|i| raw_sign(&store, &key, i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let raw16_lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    let raw16 = stats(raw16_lat, start.elapsed());

    // 16 clients on the daemon, each a process of its own under a uid of
    // its own, as 16 people at a kiosk would be: the daemon bounds each
    // caller's (uid's) share of its queue, and 16 clients of one uid would
    // be refused BUSY beyond that share (docs/daemon-limits.md).
    let daemon16 = clients_as_uids(&daemon.socket, &users, setting.per_client_ops);
    // After the run, once the queue has been idle long enough for the
    // daemon to give freed memory back (200 ms).
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_mb(pid);
    let soft = &setting.soft;
    println!(
        "\n== {} (Argon2id m={} KiB, t={}, p={}) ==",
        setting.label, soft.argon2_memory_kib, soft.argon2_iterations, soft.argon2_parallelism
    );
    println!(
        "{:<22}{:>8}{:>8}{:>12}{:>12}{:>10}",
        "", "clients", "ops", "p50 ms", "p99 ms", "ops/s"
    );
    for (name, clients, s) in [
        ("raw (in process)", 1, raw1),
        ("daemon (gRPC/UDS)", 1, daemon1),
        ("raw (in process)", CLIENTS, raw16),
        ("daemon (gRPC/UDS)", CLIENTS, daemon16),
    ] {
        println!(
            "{:<22}{:>8}{:>8}{:>12.3}{:>12.3}{:>10.1}",
            name,
            clients,
            s.ops,
            s.p50_us / 1000.0,
            s.p99_us / 1000.0,
            s.ops_per_s
        );
    }
    println!(
        "added latency at 1 client (daemon p50 - raw p50): {:.0} us (target < 100 us)",
        daemon1.p50_us - raw1.p50_us
    );
    println!(
        "the bare gRPC round trip (grpc.health Check p50): {health_p50_us:.0} us; GetStatus (key-store details included) p50: {status_p50_us:.0} us"
    );
    // Load on the machine stretches wall times; CPU time does not.
    let cpu_per_sign_us = daemon_cpu as f64 / setting.single_ops as f64 / 1000.0;
    println!(
        "daemon CPU per sign at 1 client: {cpu_per_sign_us:.0} us, of which the key store's work is about the raw p50 ({:.0} us): the daemon's own CPU {:.0} us per request",
        raw1.p50_us,
        cpu_per_sign_us - raw1.p50_us
    );
    println!(
        "ratio daemon/raw at 1 client: p50 {:.3}",
        daemon1.p50_us / raw1.p50_us
    );
    println!(
        "ratio daemon/raw at {CLIENTS} clients: throughput {:.3} (overhead {:.1}%, target < 10%), p50 {:.3}",
        daemon16.ops_per_s / raw16.ops_per_s,
        (1.0 - daemon16.ops_per_s / raw16.ops_per_s) * 100.0,
        daemon16.p50_us / raw16.p50_us
    );
    let label = setting.label;
    let added = daemon1.p50_us - raw1.p50_us;
    target(
        &format!("{label}: added latency at 1 client (daemon p50 - raw p50)"),
        format!("{added:.0} us"),
        "<= 100 us",
        added <= 100.0,
    );
    let throughput = daemon16.ops_per_s / raw16.ops_per_s;
    target(
        &format!("{label}: daemon ops/s / raw ops/s at {CLIENTS} clients"),
        format!("{throughput:.3}"),
        ">= 0.90",
        throughput >= 0.90,
    );
    target(
        &format!("{label}: daemon RSS after the {CLIENTS}-client run"),
        format!("{rss_after:.1} MB"),
        "< 20 MB",
        rss_after < 20.0,
    );
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    println!(
        "daemon CPU while idle for 2 s: {:.2}% of one core (no busy-spinning listener)",
        idle_ticks as f64 / ticks_per_s / 2.0 * 100.0
    );
    println!("daemon RSS after the {CLIENTS}-client run: {rss_after:.1} MB (target < 20 MB)");
}

/// Every figure with a target, for the closing table: (figure, value,
/// target, met).
static TARGETS: std::sync::Mutex<Vec<(String, String, String, bool)>> =
    std::sync::Mutex::new(Vec::new());

/// Records a figure against its target for the closing table.
fn target(figure: &str, value: String, target: &str, met: bool) {
    if let Ok(mut targets) = TARGETS.lock() {
        targets.push((figure.to_string(), value, target.to_string(), met));
    }
}

fn print_targets() {
    let Ok(targets) = TARGETS.lock() else { return };
    if targets.is_empty() {
        return;
    }
    println!("\n== figures against their targets (issue 14) ==");
    println!("{:<64}{:>14}  {:<12}", "figure", "value", "target");
    for (figure, value, target, met) in targets.iter() {
        println!(
            "{figure:<64}{value:>14}  {target:<12}{}",
            if *met { "met" } else { "NOT met" }
        );
    }
}

/// First uid of the client processes (setpriv; needs root).
const CLIENT_UID_BASE: u32 = 61_000;
/// The environment variable that makes this binary one client process.
const CLIENT_ENV: &str = "FLEETKEY_BENCH_CLIENT";

/// Runs one client process per user, each under its own uid, all started
/// together once every one has connected; their latencies, and the
/// throughput from the start to the last answer.
fn clients_as_uids(socket: &Path, users: &[String], per_client_ops: usize) -> Stats {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the concurrent runs start clients under other uids: run the bench as root"
    );
    let exe = std::env::current_exe().expect("the bench's own path");
    let mut children: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let uid = CLIENT_UID_BASE + i as u32;
            let mut child = Command::new("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(&exe)
                .env(
                    CLIENT_ENV,
                    format!("{}\n{user}\n{per_client_ops}", socket.display()),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("setpriv (util-linux) runs a client");
            let mut out = BufReader::new(child.stdout.take().expect("stdout"));
            let mut line = String::new();
            out.read_line(&mut line).expect("the client's ready line");
            assert_eq!(line.trim(), "ready", "client {i} did not connect");
            (child, out)
        })
        .collect();
    let start = Instant::now();
    for (child, _) in &mut children {
        let stdin = child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("start a client");
        stdin.flush().expect("start a client");
    }
    let mut latencies = Vec::new();
    let mut last = start.elapsed();
    for (mut child, out) in children {
        for line in out.lines() {
            let line = line.expect("a latency line");
            latencies.push(Duration::from_nanos(line.parse().expect("nanoseconds")));
        }
        last = last.max(start.elapsed());
        assert!(
            child.wait().expect("client exit").success(),
            "a client failed"
        );
    }
    assert_eq!(
        latencies.len(),
        users.len() * per_client_ops,
        "every sign answered"
    );
    stats(latencies, last)
}

/// One client process: connects, says `ready`, waits for `go`, signs
/// `ops` times as `user`, prints each latency in nanoseconds.
fn client_process(spec: &str) {
    use std::io::BufRead;
    let mut parts = spec.split('\n');
    let (Some(socket), Some(user), Some(ops)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("bad {CLIENT_ENV}: {spec:?}");
    };
    let ops: usize = ops.parse().expect("ops");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut client = connect(Path::new(socket)).await;
        // One warm-up sign, not counted.
        daemon_sign(&mut client, user, 0).await;
        println!("ready");
        let mut go = String::new();
        std::io::stdin().lock().read_line(&mut go).expect("go");
        let mut latencies = Vec::with_capacity(ops);
        for i in 0..ops {
            latencies.push(daemon_sign(&mut client, user, i).await);
        }
        let text: String = latencies
            .iter()
            .map(|d| format!("{}\n", d.as_nanos()))
            .collect();
        print!("{text}");
    });
}

fn main() {
    if let Ok(spec) = std::env::var(CLIENT_ENV) {
        client_process(&spec);
        return;
    }
    // `cargo bench` passes --bench; anything else is ignored.
    let quick = std::env::args().any(|a| a == "--quick");
    // --quick: fewer rounds everywhere (the run prints how long each part
    // took).
    let scale = if quick { 4 } else { 1 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // One client's latency is measured from a one-thread runtime, as
    // fleetkeyctl runs its calls: a multi-thread client adds a hop between
    // its own threads to every call (the bare gRPC round trip measured 190
    // us from the 2-worker runtime above, 87-130 us from this one).
    let single = one_thread();
    // Every user is added through it (two code checks each): no rate limit.
    let portal = Portal::start_with(&["--no-rate-limit"]);
    println!(
        "fleetkey sign benchmark: {} cores, {} clients for the concurrent runs",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        CLIENTS
    );
    let settings = [
        Setting {
            label: "default",
            soft: SoftConfig::default(),
            single_ops: if quick { 20 } else { 200 },
            per_client_ops: if quick { 2 } else { 12 },
        },
        Setting {
            label: "cheap-kdf",
            soft: SoftConfig {
                argon2_memory_kib: 8,
                argon2_iterations: 1,
                argon2_parallelism: 1,
            },
            single_ops: 2000 / scale,
            per_client_ops: 400 / scale,
        },
    ];
    let only = std::env::var("FLEETKEY_BENCH_ONLY").ok();
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let whole = Instant::now();
    let mut parts: Vec<(&str, Duration)> = Vec::new();
    let mut timed = |part: &'static str, run: &mut dyn FnMut()| {
        let start = Instant::now();
        run();
        parts.push((part, start.elapsed()));
    };
    #[cfg(feature = "tpm")]
    if wanted("tpm") {
        timed("tpm", &mut || {
            tpm::run(&portal, 40 / scale.min(4), 200 / scale)
        });
    }
    for setting in &settings {
        if wanted(setting.label) {
            timed(setting.label, &mut || {
                run_setting(&single, &portal, setting)
            });
        }
    }
    if wanted("piv") {
        timed("piv", &mut || piv::run(&single, &portal, scale));
    }
    if wanted("qr") {
        timed("qr", &mut || qr_scanner(quick));
    }
    if wanted("approvals") {
        // --quick: 10 rounds, 3 devices x 4 challenges.
        let (rounds, fleet) = if quick { (10, (3, 4)) } else { (100, (10, 10)) };
        timed("approvals", &mut || approvals::run(&runtime, rounds, fleet));
    }
    if wanted("footprint") {
        timed("footprint", &mut || footprint(if quick { 3 } else { 5 }));
    }
    if wanted("batch") {
        timed("batch", &mut || batch::run(&runtime, &portal, quick));
    }
    let spent: Vec<String> = parts
        .iter()
        .map(|(part, took)| format!("{part} {:.1} s", took.as_secs_f64()))
        .collect();
    println!(
        "\nthe run took {:.1} s: {}",
        whole.elapsed().as_secs_f64(),
        spent.join(", ")
    );
    print_targets();
}

/// The QR scanner's figures: `fleetkey-qr-bench` as a process (its
/// output shown as it comes), on the whole robustness set with the
/// reference decoders, or with --quick on 1 in 32 of its fleetkey frames
/// (every foreign and code-free frame still) and fleetkey's scanner alone.
/// Its targeted rows join this run's closing table.
fn qr_scanner(quick: bool) {
    let args: &[&str] = if quick {
        &["--every", "32", "--no-references"]
    } else {
        &[]
    };
    println!("\n== qr scanner (fleetkey-qr-bench {}) ==", args.join(" "));
    let dir = fleetkey_e2e::open_tempdir();
    let table = dir.path().join("targets.tsv");
    let status = std::process::Command::new(fleetkey_e2e::bin("fleetkey-qr-bench"))
        .args(args)
        .arg("--targets-file")
        .arg(&table)
        .status()
        .expect("run fleetkey-qr-bench");
    let rows = std::fs::read_to_string(&table).unwrap_or_default();
    if !status.success() || rows.is_empty() {
        target(
            "qr: fleetkey-qr-bench",
            format!("{status}"),
            "figures",
            false,
        );
        return;
    }
    for row in rows.lines() {
        if let [figure, measured, goal, verdict] = row.split('\t').collect::<Vec<_>>()[..]
            && verdict != "reported"
        {
            target(
                &format!("qr: {figure}"),
                measured.to_string(),
                goal,
                verdict == "met",
            );
        }
    }
}

/// A one-thread client runtime, as fleetkeyctl uses. Its connections are
/// driven only inside `block_on`: a part that stops the daemon between
/// calls makes a new one per batch of calls, so that dropping it closes
/// them (the daemon gives connections left open its stop's grace period).
fn one_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The resident set of a process, from /proc (VmRSS), in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The daemon's footprint with the soft store only: the time from
/// spawning it to its socket accepting a connection (polled every
/// 0.5 ms), and its RSS once idle, over `runs` starts (median).
fn footprint(runs: usize) {
    let mut ready = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let dir = fleetkey_e2e::open_tempdir();
        let config = dir.path().join("fleetkeyd.toml");
        std::fs::write(
            &config,
            "dbus = \"off\"\n[backends.tpm]\nenabled = false\n[backends.pcsc]\nenabled = false\n",
        )
        .expect("config");
        let socket = dir.path().join("fleetkeyd.sock");
        let start = Instant::now();
        let mut child = std::process::Command::new(fleetkey_e2e::bin("fleetkeyd"))
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start fleetkeyd");
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "not ready");
            std::thread::sleep(Duration::from_micros(500));
        }
        ready.push(start.elapsed());
        std::thread::sleep(Duration::from_secs(1));
        rss.push(rss_mb(child.id()));
        let _ = child.kill();
        let _ = child.wait();
    }
    ready.sort();
    rss.sort_by(f64::total_cmp);
    println!("\n== footprint (soft store only, {runs} starts, median) ==");
    println!(
        "time to ready: {:.1} ms (target < 100 ms)",
        ready[runs / 2].as_secs_f64() * 1000.0
    );
    println!("idle RSS: {:.1} MB (target < 20 MB)", rss[runs / 2]);
    let ready_ms = ready[runs / 2].as_secs_f64() * 1000.0;
    target(
        "footprint: time to ready (soft store)",
        format!("{ready_ms:.1} ms"),
        "< 100 ms",
        ready_ms < 100.0,
    );
    target(
        "footprint: idle RSS (soft store)",
        format!("{:.1} MB", rss[runs / 2]),
        "< 20 MB",
        rss[runs / 2] < 20.0,
    );
}

/// Login approvals (docs/approvals.md): the time from `login start` (the
/// portal's command) to the challenge being visible on the device's
/// `WatchApprovals` stream; `Approve` through the daemon against a bare
/// `Sign` of the same user, alternating; and one portal with 10 devices
/// and 100 challenges pending at once, all answered concurrently.
mod approvals {
    use std::time::{Duration, Instant};

    use fleetkey_e2e::{Daemon, FAST_SOFT_KEYS, Portal};
    use fleetkey_proto::daemon::{ApproveRequest, SignRequest, WatchApprovalsRequest};

    use super::{PIN, connect, digest, stats};

    fn login_start(portal: &Portal, user: &str) -> (String, u32) {
        let out = portal.cli(&["login", "start", "--user", user, "--ttl", "600", "--json"]);
        assert!(out.status.success(), "login start: {out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        (
            json["id"].as_str().expect("id").to_string(),
            u32::try_from(json["number"].as_u64().expect("number")).expect("number"),
        )
    }

    fn device(portal: &Portal, user: &str) -> Daemon {
        let daemon = Daemon::start(FAST_SOFT_KEYS);
        daemon.activate(portal);
        daemon.add_user(portal, user, PIN);
        let start = Instant::now();
        while daemon.ctl(&["--json", "status"]).json()["portal_stream"] != "connected" {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "stream not connected"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    /// `rounds` approvals on one device, then `fleet.0` devices with
    /// `fleet.1` pending challenges each, answered at once.
    pub fn run(runtime: &tokio::runtime::Runtime, rounds: usize, fleet: (usize, usize)) {
        let (device_count, per_device) = fleet;
        let portal = Portal::start_with(&["--no-rate-limit"]);
        let daemon = device(&portal, "approver");
        let (visible, approve, sign) = runtime.block_on(async {
            let mut client = connect(&daemon.socket).await;
            let mut watch = client
                .watch_approvals(WatchApprovalsRequest { watch: true })
                .await
                .expect("watch")
                .into_inner();
            let (mut visible, mut approve, mut sign) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..rounds {
                let start = Instant::now();
                let (id, number) = login_start(&portal, "approver");
                loop {
                    let seen = watch.message().await.expect("watch").expect("open");
                    if seen.id == id && seen.state == "pending" {
                        break;
                    }
                }
                visible.push(start.elapsed());
                let start = Instant::now();
                client
                    .approve(ApproveRequest {
                        id,
                        number,
                        pin: PIN.into(),
                    })
                    .await
                    .expect("approve");
                approve.push(start.elapsed());
                let start = Instant::now();
                client
                    .sign(SignRequest {
                        user: "approver".into(),
                        pin: PIN.into(),
                        digest: digest(i).to_vec(),
                    })
                    .await
                    .expect("sign");
                sign.push(start.elapsed());
            }
            (visible, approve, sign)
        });
        let zero = Duration::ZERO;
        let (v, a, s) = (
            stats(visible, zero),
            stats(approve, zero),
            stats(sign, zero),
        );
        println!("approvals ({rounds} rounds, cheap soft keys):");
        println!(
            "  login start -> visible on device   p50 {:>9.0} us  p99 {:>9.0} us",
            v.p50_us, v.p99_us
        );
        println!(
            "  Approve round trip (portal incl.)  p50 {:>9.0} us  p99 {:>9.0} us",
            a.p50_us, a.p99_us
        );
        println!(
            "  bare Sign through the daemon       p50 {:>9.0} us  p99 {:>9.0} us  (approve/sign p50 {:.1}x)",
            s.p50_us,
            s.p99_us,
            a.p50_us / s.p50_us
        );
        drop(daemon);

        // `device_count` devices with `per_device` pending challenges each,
        // all at once (100 in the full run).
        let devices: Vec<Daemon> = (0..device_count)
            .map(|d| device(&portal, &format!("user{d}")))
            .collect();
        let mut pending = Vec::new();
        for d in 0..device_count {
            for _ in 0..per_device {
                pending.push((d, login_start(&portal, &format!("user{d}"))));
            }
        }
        let start = Instant::now();
        for daemon in &devices {
            loop {
                let list = daemon.ctl(&["--json", "approvals", "list"]).json();
                let count = list
                    .as_array()
                    .map_or(0, |l| l.iter().filter(|a| a["state"] == "pending").count());
                if count == per_device {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(60), "not all visible");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let all_visible = start.elapsed();
        let start = Instant::now();
        let errors = runtime.block_on(async {
            let mut tasks = Vec::new();
            for (d, daemon) in devices.iter().enumerate() {
                let socket = daemon.socket.clone();
                let mine: Vec<(String, u32)> = pending
                    .iter()
                    .filter(|(device, _)| *device == d)
                    .map(|(_, c)| c.clone())
                    .collect();
                tasks.push(tokio::spawn(async move {
                    let mut client = connect(&socket).await;
                    let mut errors = 0;
                    for (id, number) in mine {
                        let answer = client
                            .approve(ApproveRequest {
                                id,
                                number,
                                pin: PIN.into(),
                            })
                            .await;
                        if answer.is_err() {
                            errors += 1;
                        }
                    }
                    errors
                }));
            }
            let mut errors = 0;
            for task in tasks {
                errors += task.await.expect("task");
            }
            errors
        });
        println!(
            "  {device_count} devices x {per_device} challenges: all {} visible {:.2} s after the last login start; \
             all answered in {:.2} s; errors: {errors}",
            device_count * per_device,
            all_visible.as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
    }
}

/// Signing on a simulated PIV card (fleetkey-piv-sim in pcscd's vpcd
/// reader): `Sign` through the daemon against the raw APDUs (VERIFY, then
/// GENERAL AUTHENTICATE) sent straight to the same card over PC/SC, one
/// after the other in the same run.
#[cfg(feature = "pcsc")]
mod piv {
    use std::ffi::CString;
    use std::time::{Duration, Instant};

    use fleetkey_e2e::{Daemon, Pcscd, Portal, SimCard, VPCD_READERS, is_root};
    use fleetkey_pcsc::piv::{Piv, SecretCheck, Transmit};

    use super::{PIN_PIV, connect, digest, stats};

    /// Issue 14's target for the daemon's p50 over the raw APDUs' p50.
    const PIV_RATIO_TARGET: f64 = 1.2;

    struct Card<'a>(&'a pcsc::Card);

    impl Transmit for Card<'_> {
        fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, pcsc::Error> {
            let mut buffer = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
            Ok(self.0.transmit(apdu, &mut buffer)?.to_vec())
        }
    }

    pub fn run(runtime: &tokio::runtime::Runtime, portal: &Portal, scale: usize) {
        if !is_root() {
            println!("\n== piv: skipped (starting pcscd needs root) ==");
            return;
        }
        let _pcscd = Pcscd::start();
        let _card = SimCard::new(0);
        let daemon = Daemon::start("log_level = \"warn\"\n[pin]\nmax_length = 8\n");
        daemon.activate(portal);
        let code = portal.user_code("piv-bench");
        daemon
            .ctl_with_stdin(
                &[
                    "--json",
                    "user",
                    "add",
                    &code.uri,
                    "--backend",
                    "pcsc",
                    "--pin-stdin",
                ],
                Some(&format!("{PIN_PIV}\n")),
            )
            .assert_ok();

        let context = pcsc::Context::establish(pcsc::Scope::User).expect("pcsc context");
        let reader = CString::new(VPCD_READERS[0].0).expect("reader name");
        let card = context
            .connect(&reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
            .expect("connect to the simulated card");
        assert!(
            Piv::new(Card(&card)).select().expect("select"),
            "the simulated card has no PIV application"
        );
        // What the target is measured against: VERIFY + GENERAL
        // AUTHENTICATE on a connection held open.
        let raw_sign = |i: usize| {
            let mut piv = Piv::new(Card(&card));
            let start = Instant::now();
            assert_eq!(piv.verify_pin(PIN_PIV).expect("verify"), SecretCheck::Ok);
            piv.sign_p256(0x9a, &digest(i)).expect("raw sign");
            start.elapsed()
        };
        let ops = 200 / scale;
        for i in 0..3 {
            raw_sign(i);
        }
        let raw: Vec<Duration> = (0..ops).map(raw_sign).collect();
        // What fleetkeyd does on the card for a signature: a transaction,
        // SELECT, VERIFY, GENERAL AUTHENTICATE, VERIFY P1=FF.
        let mut card = card;
        let mut raw_as_daemon = |i: usize| {
            let start = Instant::now();
            let transaction = card.transaction().expect("transaction");
            let mut piv = Piv::new(Card(&transaction));
            assert!(piv.select().expect("select"));
            assert_eq!(piv.verify_pin(PIN_PIV).expect("verify"), SecretCheck::Ok);
            piv.sign_p256(0x9a, &digest(i)).expect("raw sign");
            assert!(piv.reset_pin_status().expect("VERIFY P1=FF"));
            drop(transaction);
            start.elapsed()
        };
        let as_daemon: Vec<Duration> = (0..ops).map(&mut raw_as_daemon).collect();
        let (daemon_lat, status) = runtime.block_on(async {
            let mut client = connect(&daemon.socket).await;
            let daemon_sign =
                |client: &mut fleetkey_proto::daemon::fleetkey_client::FleetkeyClient<
                    tonic::transport::Channel,
                >,
                 i: usize| {
                    let request = fleetkey_proto::daemon::SignRequest {
                        user: "piv-bench".into(),
                        pin: PIN_PIV.into(),
                        digest: digest(i).to_vec(),
                    };
                    let mut client = client.clone();
                    async move {
                        let start = Instant::now();
                        client.sign(request).await.expect("daemon sign");
                        start.elapsed()
                    }
                };
            // Raw first, then the daemon (a daemon that resets the card
            // after each operation would break a raw session held open in
            // between; fleetkeyd ends the PIN's validity with VERIFY P1=FF
            // instead, but the order stays, so figures compare across
            // versions).
            for i in 0..3 {
                daemon_sign(&mut client, i).await;
            }
            let mut via_daemon = Vec::new();
            for i in 0..ops {
                via_daemon.push(daemon_sign(&mut client, i).await);
            }
            // The transport alone: grpc.health, no work behind it.
            let mut health = tonic_health::pb::health_client::HealthClient::new(
                super::connect_channel(&daemon.socket).await,
            );
            let mut status = Vec::new();
            for _ in 0..ops {
                let start = Instant::now();
                health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .expect("health check");
                status.push(start.elapsed());
            }
            (via_daemon, status)
        });
        let wall = |l: &[Duration]| l.iter().sum::<Duration>();
        let (raw_wall, daemon_wall) = (wall(&raw), wall(&daemon_lat));
        let raw = stats(raw, raw_wall);
        let as_daemon_wall = wall(&as_daemon);
        let as_daemon = stats(as_daemon, as_daemon_wall);
        let via_daemon = stats(daemon_lat, daemon_wall);
        let status_wall = wall(&status);
        let status = stats(status, status_wall);
        println!("\n== piv (simulated card on pcscd/vpcd, ECDSA P-256, slot 9a) ==");
        println!(
            "{:<34}{:>8}{:>12}{:>12}{:>10}",
            "", "ops", "p50 ms", "p99 ms", "ops/s"
        );
        for (name, s) in [
            ("raw APDUs (VERIFY + GEN. AUTH.)", raw),
            ("raw, as the daemon does it (1)", as_daemon),
            ("daemon Sign (gRPC/UDS)", via_daemon),
            ("bare gRPC round trip (grpc.health)", status),
        ] {
            println!(
                "{:<34}{:>8}{:>12.3}{:>12.3}{:>10.1}",
                name,
                s.ops,
                s.p50_us / 1000.0,
                s.p99_us / 1000.0,
                s.ops_per_s
            );
        }
        println!(
            "(1) in a PC/SC transaction: SELECT, VERIFY, GENERAL AUTHENTICATE, VERIFY P1=FF (ends the PIN's validity)"
        );
        let added = via_daemon.p50_us - raw.p50_us;
        let card = as_daemon.p50_us - raw.p50_us;
        println!(
            "added by the daemon at p50: {:.3} ms: the card work beyond the raw pair {:.3} ms (1), the bare gRPC round trip {:.3} ms, the daemon's own work {:.3} ms",
            added / 1000.0,
            card / 1000.0,
            status.p50_us / 1000.0,
            (added - card - status.p50_us) / 1000.0,
        );
        println!(
            "the least a daemon that keeps the PIN guarantee could reach: (raw as the daemon does it + bare round trip) / raw = {:.2}",
            (as_daemon.p50_us + status.p50_us) / raw.p50_us
        );
        println!(
            "PIV Sign / raw VERIFY + GENERAL AUTHENTICATE at p50: ratio {:.2} (target <= {PIV_RATIO_TARGET})",
            via_daemon.p50_us / raw.p50_us
        );
        let ratio = via_daemon.p50_us / raw.p50_us;
        super::target(
            "piv: Sign / raw VERIFY + GENERAL AUTHENTICATE (p50)",
            format!("{ratio:.3}"),
            "<= 1.2",
            ratio <= PIV_RATIO_TARGET,
        );
    }
}

#[cfg(not(feature = "pcsc"))]
mod piv {
    pub fn run(_: &tokio::runtime::Runtime, _: &fleetkey_e2e::Portal, _: usize) {
        println!("\n== piv: skipped (build with --all-features for the smartcard figures) ==");
    }
}

#[cfg(feature = "tpm")]
mod tpm {
    //! The TPM key store on swtpm: raw in process against the daemon.

    use std::time::{Duration, Instant};

    use fleetkey_e2e::{Daemon, Portal, Swtpm};
    use fleetkey_plugin::{KeyStore, Pin};
    use fleetkey_tpm::{TpmConfig, TpmKeyStore};

    use super::{PIN, Stats, connect, daemon_sign, digest, stats};

    fn row(name: &str, s: Stats) {
        println!(
            "{:<38}{:>6}{:>12.3}{:>12.3}{:>10.1}",
            name,
            s.ops,
            s.p50_us / 1000.0,
            s.p99_us / 1000.0,
            s.ops_per_s
        );
    }

    /// Raw and daemon measurements alternate in this many rounds, so that
    /// drift in swtpm's speed (large on a shared VM) falls on both alike.
    /// swtpm serves one client at a time: the raw store and the daemon
    /// take turns, each closing its connection after its round.
    const ROUNDS: usize = 4;

    /// Times `work`, adding its duration to `latencies` and `wall`.
    fn timed_into(latencies: &mut Vec<Duration>, wall: &mut Duration, work: impl FnOnce()) {
        let start = Instant::now();
        work();
        let took = start.elapsed();
        latencies.push(took);
        *wall += took;
    }

    pub fn run(portal: &Portal, users: usize, signs: usize) {
        let tpm = Swtpm::start();
        let tpm_config = TpmConfig {
            tcti: Some(tpm.tcti.clone()),
            persistent_handle: None,
            ..Default::default()
        };
        // Top-level keys come before the config's tables.
        let config = format!(
            "default_backend = \"tpm\"\nlog_level = \"warn\"\n{}",
            tpm.daemon_config()
        );
        let mut daemon = Daemon::start(&config);
        // Activation with TPM attestation: EK and AK made, the portal's
        // credential challenge answered (fleetkeyctl process included).
        let activation = Instant::now();
        daemon.activate(portal);
        let activation = activation.elapsed();
        daemon.terminate();

        let names: Vec<String> = (0..users).map(|i| format!("tpm-user{i}")).collect();
        // Codes are issued first (a portal CLI process each), so that only
        // AddUser itself is timed.
        let codes: Vec<String> = names.iter().map(|n| portal.user_code(n).uri).collect();
        let pin = Pin::new(PIN);
        let (mut create, mut create_pop, mut sign) = (Vec::new(), Vec::new(), Vec::new());
        // The same work as the daemon does it: one store operation, one
        // TPM session (KeyStore::create_for_enrollment).
        let mut one_session = Vec::new();
        let (mut add, mut daemon_signs) = (Vec::new(), Vec::new());
        let mut walls = [Duration::ZERO; 6];
        let mut keys = Vec::new();
        let mut identity = None;
        let mut status_p50_us = 0.0;
        let (mut add_ratios, mut sign_ratios) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let (create_pop_from, sign_from) = (create_pop.len(), sign.len());
            let users_now = round * users / ROUNDS..(round + 1) * users / ROUNDS;
            let signs_now = round * signs / ROUNDS..(round + 1) * signs / ROUNDS;

            // Raw: the key store in this process, alone on the TPM.
            let store = TpmKeyStore::open(&tpm_config).expect("open the TPM key store");
            identity.get_or_insert_with(|| store.identity().clone());
            for i in users_now.clone() {
                timed_into(&mut create, &mut walls[0], || {
                    keys.push(store.create_key(&format!("b-{i}"), &pin).expect("create"));
                });
            }
            for i in users_now.clone() {
                // What user add does on the TPM: create, TPM2_Certify by
                // the AK, and the proof-of-possession signature.
                timed_into(&mut create_pop, &mut walls[1], || {
                    let key = store.create_key(&format!("p-{i}"), &pin).expect("create");
                    store
                        .attest(&key.key_ref, &pin, &digest(i))
                        .expect("certify");
                    store
                        .sign_digest(&key.key_ref, &pin, &digest(i))
                        .expect("proof of possession");
                });
            }
            for i in users_now.clone() {
                timed_into(&mut one_session, &mut walls[5], || {
                    store
                        .create_for_enrollment(
                            &format!("s-{i}"),
                            &pin,
                            &Default::default(),
                            &digest(i),
                            &|_| digest(i),
                        )
                        .expect("create for enrollment");
                });
            }
            for i in signs_now.clone() {
                let key = &keys[i % keys.len()];
                timed_into(&mut sign, &mut walls[2], || {
                    store
                        .sign_digest(&key.key_ref, &pin, &digest(i))
                        .expect("sign");
                });
            }
            drop(store);

            // The daemon on the same TPM.
            daemon.restart();
            let runtime = super::one_thread();
            let (round_add, round_signs, round_status) = runtime.block_on(async {
                let mut client = connect(&daemon.socket).await;
                let mut round_add = Vec::new();
                for code in &codes[users_now.clone()] {
                    let start = Instant::now();
                    client
                        .add_user(fleetkey_proto::daemon::AddUserRequest {
                            code: code.clone(),
                            pin: PIN.into(),
                            backend: "tpm".into(),
                            ..Default::default()
                        })
                        .await
                        .expect("add user");
                    round_add.push(start.elapsed());
                }
                let enrolled = &names[..users_now.end];
                let mut round_signs = Vec::new();
                for i in signs_now.clone() {
                    round_signs
                        .push(daemon_sign(&mut client, &enrolled[i % enrolled.len()], i).await);
                }
                let mut status = Vec::new();
                for _ in 0..10 {
                    let start = Instant::now();
                    client
                        .get_status(fleetkey_proto::daemon::GetStatusRequest {})
                        .await
                        .expect("status");
                    status.push(start.elapsed());
                }
                (
                    round_add,
                    round_signs,
                    stats(status, Duration::from_secs(1)).p50_us,
                )
            });
            let p50 = |v: &[Duration]| stats(v.to_vec(), Duration::from_secs(1)).p50_us;
            add_ratios.push(p50(&round_add) / p50(&create_pop[create_pop_from..]));
            sign_ratios.push(p50(&round_signs) / p50(&sign[sign_from..]));
            walls[3] += round_add.iter().sum::<Duration>();
            walls[4] += round_signs.iter().sum::<Duration>();
            add.extend(round_add);
            daemon_signs.extend(round_signs);
            status_p50_us = round_status;
            // Closes the round's connection, so the daemon stops at once.
            drop(runtime);
            daemon.terminate();
        }
        let identity = identity.expect("at least one round");
        let (create_wall, create_pop_wall, sign_wall) = (walls[0], walls[1], walls[2]);
        let add = stats(add, walls[3]);
        let daemon_sign_stats = stats(daemon_signs, walls[4]);

        let create = stats(create, create_wall);
        let create_pop = stats(create_pop, create_pop_wall);
        let one_session = stats(one_session, walls[5]);
        let sign = stats(sign, sign_wall);
        println!(
            "\n== tpm on swtpm ({} {}, firmware {}) ==",
            identity.manufacturer, identity.vendor, identity.firmware
        );
        println!(
            "{:<38}{:>6}{:>12}{:>12}{:>10}",
            "", "ops", "p50 ms", "p99 ms", "ops/s"
        );
        println!(
            "device activation with TPM attestation (fleetkeyctl + daemon + portal, once): {:.1} ms",
            activation.as_secs_f64() * 1000.0
        );
        row("raw create (in process)", create);
        row("raw create + certify + PoP sign", create_pop);
        row("raw the same in one session", one_session);
        row("daemon AddUser (gRPC/UDS, + portal)", add);
        row("raw load + sign (in process)", sign);
        row("daemon Sign (gRPC/UDS)", daemon_sign_stats);
        println!(
            "ratio daemon AddUser / raw create + certify + PoP sign: p50 {:.3}, added {:.0} us (AddUser also makes two portal round trips and two durable SQLite commits)",
            add.p50_us / create_pop.p50_us,
            add.p50_us - create_pop.p50_us
        );
        println!(
            "daemon AddUser / raw create + certify + PoP sign in one session (the daemon's TPM work): p50 {:.3}, added {:.0} us",
            add.p50_us / one_session.p50_us,
            add.p50_us - one_session.p50_us
        );
        println!(
            "ratio daemon Sign / raw load + sign: p50 {:.3}, added {:.0} us (status RPC with TPM details: {:.0} us)",
            daemon_sign_stats.p50_us / sign.p50_us,
            daemon_sign_stats.p50_us - sign.p50_us,
            status_p50_us
        );
        let spread = |ratios: &[f64]| {
            let text: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            let max = ratios.iter().copied().fold(0.0, f64::max);
            (text.join(" "), max)
        };
        let (add_text, add_max) = spread(&add_ratios);
        let (sign_text, sign_max) = spread(&sign_ratios);
        println!(
            "per-round ratios (each round alternates raw and daemon): AddUser {add_text}; Sign {sign_text}"
        );
        super::target(
            "tpm: AddUser / raw create + certify + PoP sign, worst round",
            format!("{add_max:.3}"),
            "<= 1.10",
            add_max <= 1.10,
        );
        super::target(
            "tpm: Sign / raw load + sign, worst round",
            format!("{sign_max:.3}"),
            "<= 1.05",
            sign_max <= 1.05,
        );
    }
}

/// Issue 13's figures: `user add-batch` of many users against the raw key
/// store's work for the same users, and a state of many users against one
/// of 10 (`user list` and `sign` latency).
mod batch {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, Instant};

    use fleetkey_e2e::{Daemon, Portal, bin, open_tempdir};
    use fleetkey_plugin::{KeyStore, Pin};
    use fleetkey_proto::daemon::ListUsersRequest;
    use fleetkey_soft::{SoftConfig, SoftKeyStore};

    use super::{PIN, connect, daemon_sign, stats};

    const CHEAP: SoftConfig = SoftConfig {
        argon2_memory_kib: 8,
        argon2_iterations: 1,
        argon2_parallelism: 1,
    };

    /// Codes for `users` (`code issue --batch`) and a PIN file, in `dir`.
    fn batch_files(portal: &Portal, dir: &Path, prefix: &str, users: usize) -> (String, String) {
        let mut csv = String::from("name,ttl_seconds\n");
        let mut pins = String::new();
        for i in 0..users {
            csv.push_str(&format!("{prefix}{i:05},86400\n"));
            pins.push_str(&format!("{prefix}{i:05}\t{PIN}\n"));
        }
        let csv_path = dir.join(format!("{prefix}.csv"));
        std::fs::write(&csv_path, csv).expect("csv");
        let issued = portal.cli(&["code", "issue", "--batch", csv_path.to_str().expect("path")]);
        assert!(issued.status.success(), "code issue --batch: {issued:?}");
        let codes = dir.join(format!("{prefix}.jsonl"));
        std::fs::write(&codes, &issued.stdout).expect("codes");
        let pin_path = dir.join(format!("{prefix}.pins"));
        std::fs::write(&pin_path, pins).expect("pins");
        std::fs::set_permissions(&pin_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        (
            codes.to_str().expect("path").to_string(),
            pin_path.to_str().expect("path").to_string(),
        )
    }

    /// `fleetkeyctl user add-batch` of the files, timed; every user must
    /// be enrolled.
    fn add_batch(daemon: &Daemon, codes: &str, pins: &str, backend: &str) -> Duration {
        let start = Instant::now();
        let out = Command::new(bin("fleetkeyctl"))
            .arg("--socket")
            .arg(&daemon.socket)
            .args([
                "user",
                "add-batch",
                "--backend",
                backend,
                "--pins",
                pins,
                codes,
            ])
            .output()
            .expect("fleetkeyctl");
        let took = start.elapsed();
        assert!(out.status.success(), "add-batch: {out:?}");
        took
    }

    fn soft_daemon() -> Daemon {
        Daemon::start(&format!(
            "log_level = \"warn\"\n[backends.soft]\nargon2_memory_kib = {}\nargon2_iterations = {}\nargon2_parallelism = {}\n",
            CHEAP.argon2_memory_kib, CHEAP.argon2_iterations, CHEAP.argon2_parallelism
        ))
    }

    /// p50 of `user list` and of `sign` (in-process gRPC) on a daemon.
    fn list_and_sign(runtime: &tokio::runtime::Runtime, daemon: &Daemon, user: &str) -> (f64, f64) {
        runtime.block_on(async {
            let mut client = connect(&daemon.socket).await;
            let mut lists = Vec::new();
            for _ in 0..20 {
                let start = Instant::now();
                client.list_users(ListUsersRequest {}).await.expect("list");
                lists.push(start.elapsed());
            }
            let mut signs = Vec::new();
            for i in 0..200 {
                signs.push(daemon_sign(&mut client, user, i).await);
            }
            (
                stats(lists, Duration::from_secs(1)).p50_us,
                stats(signs, Duration::from_secs(1)).p50_us,
            )
        })
    }

    pub fn run(runtime: &tokio::runtime::Runtime, portal: &Portal, quick: bool) {
        let (users, big) = if quick { (100, 500) } else { (1_000, 10_000) };
        let dir = open_tempdir();
        println!("\n== batch enrollment (issue 13) ==");

        // The raw key store's work for the same users: one key each.
        let store = SoftKeyStore::open(&dir.path().join("raw-keys"), CHEAP).expect("store");
        let start = Instant::now();
        for i in 0..users {
            store
                .create_key(&format!("raw{i}"), &Pin::new(PIN))
                .expect("create");
        }
        let raw = start.elapsed();

        let daemon = soft_daemon();
        daemon.activate(portal);
        let (codes, pins) = batch_files(portal, dir.path(), "b", users);
        let took = add_batch(&daemon, &codes, &pins, "soft");
        let per_s = users as f64 / took.as_secs_f64();
        println!(
            "soft store, cheap KDF: {users} users by add-batch in {:.2} s ({per_s:.0} users/s); the raw store's key creation for them {:.2} s: the key store's share {:.1}%, the daemon's, the portal's and the CLI's {:.1}%",
            took.as_secs_f64(),
            raw.as_secs_f64(),
            raw.as_secs_f64() / took.as_secs_f64() * 100.0,
            (1.0 - raw.as_secs_f64() / took.as_secs_f64()) * 100.0
        );
        // A re-run with every user done.
        let rerun = add_batch(&daemon, &codes, &pins, "soft");
        println!("re-run with all {users} done: {:.2} s", rerun.as_secs_f64());
        drop(daemon);

        #[cfg(feature = "tpm")]
        tpm_batch(portal, dir.path(), if quick { 5 } else { 50 });

        // A state of `big` users against one of 10.
        let small = soft_daemon();
        small.activate(portal);
        let (codes, pins) = batch_files(portal, dir.path(), "s", 10);
        add_batch(&small, &codes, &pins, "soft");
        let (small_list, small_sign) = list_and_sign(runtime, &small, "s00003");
        drop(small);
        let large = soft_daemon();
        large.activate(portal);
        let (codes, pins) = batch_files(portal, dir.path(), "l", big);
        // In ten parts, each timed: enrolling must not slow down as the
        // state grows.
        let lines: Vec<String> = std::fs::read_to_string(&codes)
            .expect("codes")
            .lines()
            .map(str::to_string)
            .collect();
        let mut took = Duration::ZERO;
        let mut rates = Vec::new();
        for (i, part) in lines.chunks(big.div_ceil(10)).enumerate() {
            let path = dir.path().join(format!("l-part{i}.jsonl"));
            std::fs::write(&path, part.join("\n") + "\n").expect("part");
            let spent = add_batch(&large, path.to_str().expect("path"), &pins, "soft");
            rates.push(format!("{:.0}", part.len() as f64 / spent.as_secs_f64()));
            took += spent;
        }
        println!(
            "state of {big} users, enrolled in ten parts: users/s per part {}",
            rates.join(" ")
        );
        let (large_list, large_sign) = list_and_sign(runtime, &large, "l00003");
        println!(
            "state of {big} users (enrolled by add-batch in {:.1} s) against 10: user list p50 {:.2} ms vs {:.2} ms; sign p50 {:.3} ms vs {:.3} ms (ratio {:.2})",
            took.as_secs_f64(),
            large_list / 1000.0,
            small_list / 1000.0,
            large_sign / 1000.0,
            small_sign / 1000.0,
            large_sign / small_sign
        );
    }

    /// `users` users on swtpm: add-batch against the raw store's create +
    /// certify + proof-of-possession sign for as many keys.
    #[cfg(feature = "tpm")]
    fn tpm_batch(portal: &Portal, dir: &Path, users: usize) {
        use fleetkey_e2e::Swtpm;
        use fleetkey_tpm::{TpmConfig, TpmKeyStore};
        let tpm = Swtpm::start();
        let store = TpmKeyStore::open(&TpmConfig {
            tcti: Some(tpm.tcti.clone()),
            ..Default::default()
        })
        .expect("open the TPM");
        let pin = Pin::new(PIN);
        let start = Instant::now();
        for i in 0..users {
            let key = store.create_key(&format!("r{i}"), &pin).expect("create");
            store.attest(&key.key_ref, &pin, &[7; 32]).expect("certify");
            store
                .sign_digest(&key.key_ref, &pin, &[7; 32])
                .expect("pop");
        }
        let raw = start.elapsed();
        drop(store);
        let daemon = Daemon::start(&format!(
            "default_backend = \"tpm\"\nlog_level = \"warn\"\n{}",
            tpm.daemon_config()
        ));
        daemon.activate(portal);
        let (codes, pins) = batch_files(portal, dir, "t", users);
        let took = add_batch(&daemon, &codes, &pins, "tpm");
        println!(
            "TPM (swtpm): {users} users by add-batch in {:.2} s ({:.1} users/s); the raw store's create + certify + PoP sign for them {:.2} s: the TPM's share {:.1}%",
            took.as_secs_f64(),
            users as f64 / took.as_secs_f64(),
            raw.as_secs_f64(),
            raw.as_secs_f64() / took.as_secs_f64() * 100.0
        );
    }
}
