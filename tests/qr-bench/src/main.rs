//! Runs fleetkey's scanner and the reference decoders over the robustness
//! set (640x480 and 1280x720 frames, generated the same way on every run)
//! and prints, beside each target of issue 14: the share of fleetkey codes
//! read, wrong payloads, false reads on frames without a code, the
//! milliseconds per frame (p50, p90) on one thread, per-class read rates,
//! and the time of `fleetkeyctl qr decode FILE` (process start included).
//!
//!     taskset -c 1 cargo run --release -p fleetkey-qr-bench [-- --quick]
//!
//! `--quick` runs every 8th fleetkey frame (and every foreign and
//! code-free frame): well under a minute. `--every N` takes every Nth
//! instead; `--no-references` runs fleetkey's scanner alone (the figures
//! with a target need nothing else); `--targets-file PATH` also writes the
//! closing table there, a row per line, tab-separated (figure, measured,
//! target, status), for the sign benchmark's own closing table.
//! `--dump DIR` writes the frames as PNG files; `--ctl PATH` names the
//! fleetkeyctl binary (default: the one beside this bench's binary,
//! built with `cargo build --release -p fleetkeyctl`).
//!
//! "live" is how the daemon scans a camera: each frame gets the live
//! passes for its tick, and a code counts as read when one of 4 frames of
//! the same scene reads it; its times are per frame. Times are CPU time
//! (the thread's, and the child processes'), so that a machine shared with
//! other work still gives the cost on one core. zbarimg (Debian
//! zbar-tools) runs as a process per frame on a PNG file, so its times
//! include process start and PNG decoding; it is skipped when not
//! installed. "any reference" counts a frame read when plain rqrr, rxing or
//! zbarimg read it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use fleetkey_v4l::Scanner;
use fleetkey_v4l::testset::{Class, Expected, LARGE, SMALL, Sample, robustness_set, subset};

/// Live scanning: the same scene for up to this many frames (a sixth of
/// a second at 30 fps), each frame timed on its own.
const LIVE_FRAMES: u64 = 4;

/// What one decoder did on one frame.
#[derive(Clone, Default)]
struct Outcome {
    read: bool,
    /// Payloads that are not the frame's own.
    wrong: usize,
}

struct Row {
    name: &'static str,
    outcomes: Vec<Outcome>,
    /// Milliseconds per frame, by frame width.
    millis: BTreeMap<usize, Vec<f64>>,
}

struct Options {
    /// Every how many fleetkey frames to take (1: the whole set).
    every: usize,
    references: bool,
    targets_file: Option<PathBuf>,
    dump: Option<PathBuf>,
    ctl: Option<PathBuf>,
    passes: bool,
    matrix: Option<PathBuf>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        every: 1,
        references: true,
        targets_file: None,
        dump: None,
        ctl: None,
        passes: false,
        matrix: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.every = 8,
            "--every" => {
                options.every = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or("--every takes a whole number above 0")?;
            }
            "--no-references" => options.references = false,
            "--targets-file" => {
                options.targets_file = Some(
                    args.next()
                        .map(PathBuf::from)
                        .ok_or("--targets-file takes a path")?,
                );
            }
            "--dump" => options.dump = args.next().map(PathBuf::from),
            "--ctl" => options.ctl = args.next().map(PathBuf::from),
            "--passes" => options.passes = true,
            "--matrix" => options.matrix = args.next().map(PathBuf::from),
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: fleetkey-qr-bench [--quick | --every N] [--no-references] [--targets-file PATH] [--passes] [--matrix CSV] [--dump DIR] [--ctl PATH]"
                ));
            }
        }
    }
    Ok(options)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let started = Instant::now();
    let set = if options.every > 1 {
        subset(options.every)
    } else {
        robustness_set()
    };
    let generated = started.elapsed();
    let count = |f: &dyn Fn(&Sample) -> bool| set.iter().filter(|s| f(s)).count();
    let fleetkey_frames = count(&|s| matches!(s.expected, Expected::Fleetkey(_)));
    println!(
        "robustness set{}: {} frames ({} of {}x{}, {} of {}x{}): {fleetkey_frames} with fleetkey codes, {} foreign codes, {} without a code; generated in {:.1} s",
        if options.every > 1 {
            format!(" (1 in {} fleetkey frames)", options.every)
        } else {
            String::new()
        },
        set.len(),
        count(&|s| s.frame.width() == SMALL.0),
        SMALL.0,
        SMALL.1,
        count(&|s| s.frame.width() == LARGE.0),
        LARGE.0,
        LARGE.1,
        count(&|s| matches!(s.expected, Expected::Foreign(_))),
        count(&|s| s.expected == Expected::Nothing),
        generated.as_secs_f64(),
    );

    let dir = tempfile::tempdir()?;
    let mut files = Vec::new();
    for (i, sample) in set.iter().enumerate() {
        let path = dir.path().join(format!("{i}-{}.png", sample.name));
        write_png(&path, sample)?;
        files.push(path);
    }
    if std::env::var_os("QR_BENCH_GENERATE_ONLY").is_some() {
        return Ok(());
    }
    if let Some(dump) = &options.dump {
        std::fs::create_dir_all(dump)?;
        for sample in &set {
            write_png(&dump.join(format!("{}.png", sample.name)), sample)?;
        }
        println!("frames written to {}", dump.display());
    }

    if options.passes {
        passes_table(&set);
        return Ok(());
    }
    if let Some(path) = &options.matrix {
        cost_matrix(&set, path)?;
        return Ok(());
    }

    let plain = Scanner::plain();
    let ours = Scanner::new();
    let mut rows = Vec::new();
    if options.references {
        rows.push(run("plain rqrr", &set, |s| plain.scan(&s.frame)));
        rows.push(run("rxing (+ inverted pass)", &set, rxing_decode));
        match zbar_row(&set, &files) {
            Ok(row) => rows.push(row),
            Err(e) => println!("zbarimg skipped: {e}"),
        }
        let any = any_row(&set, &rows);
        rows.push(any);
    }
    let image = run("fleetkey scanner (image)", &set, |s| ours.scan(&s.frame));
    let live = run_live("fleetkey scanner (live)", &set, &ours);
    rows.push(image);
    rows.push(live);

    println!();
    println!(
        "{:<26} {:>9} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "decoder", "read", "%", "wrong", "false", "p50 640", "p90 640", "p50 1280", "p90 1280"
    );
    for row in &rows {
        let s = summary(row, &set);
        println!(
            "{:<26} {:>5}/{:<3} {:>6.1} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9}",
            row.name,
            s.read,
            s.fleetkey,
            percent(s.read, s.fleetkey),
            s.wrong,
            s.false_reads,
            ms(row, SMALL.0, 50),
            ms(row, SMALL.0, 90),
            ms(row, LARGE.0, 50),
            ms(row, LARGE.0, 90),
        );
    }
    println!(
        "(read: fleetkey frames whose URI was read; wrong: payloads not the frame's own on frames with a code; false: payloads on frames without a code; times: CPU ms per frame on one thread, zbarimg's process included)"
    );

    println!();
    print!("{:<14} {:>7}", "class", "frames");
    for row in &rows {
        print!(" {:>10}", short_name(row.name));
    }
    println!();
    for class in Class::FLEETKEY {
        let indices: Vec<usize> = set
            .iter()
            .enumerate()
            .filter(|(_, s)| s.class == class)
            .map(|(i, _)| i)
            .collect();
        if indices.is_empty() {
            continue;
        }
        print!("{:<14} {:>7}", class.name(), indices.len());
        for row in &rows {
            let read = indices.iter().filter(|&&i| row.outcomes[i].read).count();
            print!(" {:>9.0}%", percent(read, indices.len()));
        }
        println!();
    }

    let decode = qr_decode_times(&options, &set, &files);

    let image = summary(&rows[rows.len() - 2], &set);
    let live_row = &rows[rows.len() - 1];
    let live = summary(live_row, &set);
    println!();
    println!(
        "{:<58} {:>10} {:>10}  status",
        "figure (issue 14)", "measured", "target"
    );
    let mut table = String::new();
    let mut target = |figure: &str, measured: String, target: &str, met: Option<bool>| {
        let status = match met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "reported",
        };
        println!("{figure:<58} {measured:>10} {target:>10}  {status}");
        table.push_str(&format!("{figure}\t{measured}\t{target}\t{status}\n"));
    };
    let rate = percent(image.read, image.fleetkey);
    target(
        "detection, image mode (% of decodable fleetkey frames)",
        format!("{rate:.1}%"),
        ">= 93%",
        Some(rate >= 93.0),
    );
    target(
        "wrong payloads, image mode",
        image.wrong.to_string(),
        "0",
        Some(image.wrong == 0),
    );
    target(
        "false reads on frames without a code, image mode",
        image.false_reads.to_string(),
        "0",
        Some(image.false_reads == 0),
    );
    let live_rate = percent(live.read, live.fleetkey);
    target(
        "detection, live within 4 frames (%)",
        format!("{live_rate:.1}%"),
        "-",
        None,
    );
    target(
        "wrong payloads + false reads, live",
        (live.wrong + live.false_reads).to_string(),
        "0",
        Some(live.wrong + live.false_reads == 0),
    );
    let p90 = percentile(live_row.millis.get(&SMALL.0).map_or(&[][..], |v| v), 90);
    target(
        "live p90 per 640x480 frame (CPU ms, one thread)",
        format!("{p90:.1}"),
        "<= 33",
        Some(p90 <= 33.0),
    );
    let p90 = percentile(live_row.millis.get(&LARGE.0).map_or(&[][..], |v| v), 90);
    target(
        "live p90 per 1280x720 frame (CPU ms, one thread)",
        format!("{p90:.1}"),
        "-",
        None,
    );
    match decode {
        Ok(((runs, p50, p90), (free_runs, free_p50, free_p90))) => {
            target(
                &format!("qr decode FILE p50, {runs} pictures with a code (CPU ms)"),
                format!("{p50:.1}"),
                "-",
                None,
            );
            target(
                &format!("qr decode FILE p90, {runs} pictures with a code (CPU ms)"),
                format!("{p90:.1}"),
                "<= 60",
                Some(p90 <= 60.0),
            );
            target(
                &format!("qr decode FILE p50/p90, {free_runs} code-free pictures (CPU ms)"),
                format!("{free_p50:.0}/{free_p90:.0}"),
                "-",
                None,
            );
        }
        Err(e) => {
            println!("qr decode timing skipped: {e}");
            target(
                "qr decode FILE p90, pictures with a code (CPU ms)",
                "skipped".into(),
                "<= 60",
                Some(false),
            );
        }
    }
    if let Some(path) = &options.targets_file {
        std::fs::write(path, &table)?;
    }

    println!();
    for row in &rows[rows.len() - 2..] {
        let missed: Vec<&str> = set
            .iter()
            .zip(&row.outcomes)
            .filter(|(s, o)| matches!(s.expected, Expected::Fleetkey(_)) && !o.read)
            .map(|(s, _)| s.name.as_str())
            .collect();
        println!(
            "{} missed ({}): {}",
            row.name,
            missed.len(),
            missed.join(" ")
        );
        let wrong: Vec<&str> = set
            .iter()
            .zip(&row.outcomes)
            .filter(|(_, o)| o.wrong > 0)
            .map(|(s, _)| s.name.as_str())
            .collect();
        if !wrong.is_empty() {
            println!("{} WRONG PAYLOADS: {}", row.name, wrong.join(" "));
        }
    }
    Ok(())
}

fn short_name(name: &str) -> &str {
    match name {
        "plain rqrr" => "rqrr",
        "rxing (+ inverted pass)" => "rxing",
        "zbarimg (process per frame)" => "zbar",
        "any reference" => "any ref",
        "fleetkey scanner (image)" => "fk image",
        "fleetkey scanner (live)" => "fk live",
        other => other,
    }
}

struct Summary {
    read: usize,
    fleetkey: usize,
    wrong: usize,
    false_reads: usize,
}

fn summary(row: &Row, set: &[Sample]) -> Summary {
    let mut s = Summary {
        read: 0,
        fleetkey: 0,
        wrong: 0,
        false_reads: 0,
    };
    for (sample, outcome) in set.iter().zip(&row.outcomes) {
        match sample.expected {
            Expected::Fleetkey(_) => {
                s.fleetkey += 1;
                s.read += usize::from(outcome.read);
                s.wrong += outcome.wrong;
            }
            Expected::Foreign(_) => s.wrong += outcome.wrong,
            Expected::Nothing => s.false_reads += outcome.wrong,
        }
    }
    s
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn ms(row: &Row, width: usize, p: usize) -> String {
    match row.millis.get(&width) {
        Some(values) if !values.is_empty() => format!("{:.1}", percentile(values, p)),
        _ => "-".into(),
    }
}

fn outcome(sample: &Sample, texts: &[String]) -> Outcome {
    match &sample.expected {
        Expected::Fleetkey(uri) => Outcome {
            read: texts.iter().any(|t| t == uri),
            wrong: texts.iter().filter(|t| *t != uri).count(),
        },
        Expected::Foreign(text) => Outcome {
            read: false,
            wrong: texts.iter().filter(|t| *t != text).count(),
        },
        Expected::Nothing => Outcome {
            read: false,
            wrong: texts.len(),
        },
    }
}

fn run(name: &'static str, set: &[Sample], mut decode: impl FnMut(&Sample) -> Vec<String>) -> Row {
    let mut row = Row {
        name,
        outcomes: Vec::new(),
        millis: BTreeMap::new(),
    };
    for sample in set {
        // zbarimg is a child process: its CPU time counts too.
        let started = thread_cpu_ms() + children_cpu_ms();
        let texts = decode(sample);
        row.millis
            .entry(sample.frame.width())
            .or_default()
            .push(thread_cpu_ms() + children_cpu_ms() - started);
        row.outcomes.push(outcome(sample, &texts));
    }
    row
}

fn run_live(name: &'static str, set: &[Sample], scanner: &Scanner) -> Row {
    let mut row = Row {
        name,
        outcomes: Vec::new(),
        millis: BTreeMap::new(),
    };
    for sample in set {
        let mut texts = Vec::new();
        for tick in 0..LIVE_FRAMES {
            let started = thread_cpu_ms();
            texts = scanner.scan_live(&sample.frame, tick);
            row.millis
                .entry(sample.frame.width())
                .or_default()
                .push(thread_cpu_ms() - started);
            if !texts.is_empty() {
                break;
            }
        }
        row.outcomes.push(outcome(sample, &texts));
    }
    row
}

/// A frame counts as read when any reference decoder read it; any wrong
/// payload of any of them counts.
fn any_row(set: &[Sample], references: &[Row]) -> Row {
    let outcomes = (0..set.len())
        .map(|i| Outcome {
            read: references.iter().any(|r| r.outcomes[i].read),
            wrong: references.iter().map(|r| r.outcomes[i].wrong).sum(),
        })
        .collect();
    Row {
        name: "any reference",
        outcomes,
        millis: BTreeMap::new(),
    }
}

fn rxing_decode(sample: &Sample) -> Vec<String> {
    let (w, h) = (sample.frame.width() as u32, sample.frame.height() as u32);
    let pixels = sample.frame.pixels().to_vec();
    let attempt = |luma: Vec<u8>| {
        rxing::helpers::detect_in_luma(luma, w, h, Some(rxing::BarcodeFormat::QR_CODE))
            .ok()
            .map(|r| r.getText().to_string())
    };
    if let Some(text) = attempt(pixels.clone()) {
        return vec![text];
    }
    attempt(pixels.iter().map(|p| 255 - p).collect())
        .into_iter()
        .collect()
}

fn zbar_row(set: &[Sample], files: &[PathBuf]) -> Result<Row, String> {
    Command::new("zbarimg")
        .arg("--version")
        .output()
        .map_err(|e| format!("zbarimg cannot run ({e}); apt-get install zbar-tools"))?;
    let mut index = 0;
    Ok(run("zbarimg (process per frame)", set, |_| {
        let path = &files[index];
        index += 1;
        Command::new("zbarimg")
            .args(["-q", "--raw", "-Sdisable", "-Sqrcode.enable"])
            .arg(path)
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }))
}

/// `fleetkeyctl qr decode FILE` on pictures of the set, one process
/// each: (pictures, p50 ms, p90 ms) for pictures with a fleetkey code, and
/// the same for pictures without one (every pass runs on those).
type Times = (usize, f64, f64);

fn qr_decode_times(
    options: &Options,
    set: &[Sample],
    files: &[PathBuf],
) -> Result<(Times, Times), String> {
    let ctl = match &options.ctl {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("fleetkeyctl"),
    };
    if !ctl.exists() {
        return Err(format!(
            "{} not found (cargo build --release -p fleetkeyctl, or --ctl PATH)",
            ctl.display()
        ));
    }
    // Every other picture with a code, and every code-free picture.
    let step = 2;
    let (mut with_code, mut without) = (Vec::new(), Vec::new());
    for (i, (sample, file)) in set.iter().zip(files).enumerate() {
        let fleetkey = matches!(sample.expected, Expected::Fleetkey(_));
        if fleetkey && i % step != 0 {
            continue;
        }
        let started = children_cpu_ms();
        let out = Command::new(&ctl)
            .args(["qr", "decode"])
            .arg(file)
            .output()
            .map_err(|e| format!("{}: {e}", ctl.display()))?;
        let millis = children_cpu_ms() - started;
        let text = String::from_utf8_lossy(&out.stdout);
        match &sample.expected {
            Expected::Fleetkey(uri) => {
                if !text.trim().is_empty() && text.trim() != uri {
                    return Err(format!("qr decode read {text:?} in {}", sample.name));
                }
                with_code.push(millis);
            }
            Expected::Nothing => {
                if !text.trim().is_empty() {
                    return Err(format!("qr decode read {text:?} in {}", sample.name));
                }
                without.push(millis);
            }
            Expected::Foreign(_) => {}
        }
    }
    let times = |v: &[f64]| (v.len(), percentile(v, 50), percentile(v, 90));
    Ok((times(&with_code), times(&without)))
}

fn write_png(path: &Path, sample: &Sample) -> Result<(), Box<dyn std::error::Error>> {
    let file = std::fs::File::create(path)?;
    let mut encoder = png::Encoder::new(
        std::io::BufWriter::new(file),
        u32::try_from(sample.frame.width())?,
        u32::try_from(sample.frame.height())?,
    );
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(sample.frame.pixels())?;
    writer.finish()?;
    Ok(())
}

/// This thread's CPU time in milliseconds: on a shared machine the wall
/// clock also counts the other processes' turns on the core.
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

/// CPU time (user + system) of the waited-for child processes so far,
/// in milliseconds: a `qr decode` process's whole cost, start included.
fn children_cpu_ms() -> f64 {
    // SAFETY: getrusage fills one rusage through a valid pointer; all-zero
    // is a valid rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    if rc != 0 {
        return 0.0;
    }
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

fn percentile(values: &[f64], p: usize) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1) - 1;
    sorted[rank.min(sorted.len() - 1)]
}

/// Each pass alone: its read rate per class and its cost, then the
/// passes in greedy order of new frames read (for choosing the scanner's
/// order; `--passes`).
fn passes_table(set: &[Sample]) {
    use fleetkey_v4l::scanner::ALL_PASSES;
    let rows: Vec<(String, Row)> = ALL_PASSES
        .iter()
        .map(|pass| {
            let scanner = Scanner::with_passes(vec![*pass]);
            (
                format!("{pass:?}"),
                run("pass", set, |s| scanner.scan(&s.frame)),
            )
        })
        .collect();
    print!(
        "{:<28} {:>5} {:>5} {:>7} {:>7}",
        "pass", "read", "wrong", "p90 640", "p90 1280"
    );
    for class in Class::FLEETKEY {
        print!(" {:>5}", &class.name()[..class.name().len().min(5)]);
    }
    println!();
    for (name, row) in &rows {
        let s = summary(row, set);
        print!(
            "{:<28} {:>5} {:>5} {:>7} {:>7}",
            name,
            s.read,
            s.wrong + s.false_reads,
            ms(row, SMALL.0, 90),
            ms(row, LARGE.0, 90)
        );
        for class in Class::FLEETKEY {
            let idx: Vec<usize> = (0..set.len()).filter(|&i| set[i].class == class).collect();
            let read = idx.iter().filter(|&&i| row.outcomes[i].read).count();
            print!(" {:>5.0}", percent(read, idx.len()));
        }
        println!();
    }
    let mut covered = vec![false; set.len()];
    let mut left: Vec<usize> = (0..rows.len()).collect();
    println!("\ngreedy (new frames read per ms at 640x480):");
    while !left.is_empty() {
        let gain = |r: usize| {
            rows[r]
                .1
                .outcomes
                .iter()
                .zip(&covered)
                .filter(|(o, c)| o.read && !**c)
                .count()
        };
        let cost = |r: usize| {
            percentile(rows[r].1.millis.get(&SMALL.0).map_or(&[][..], |v| v), 50).max(0.1)
        };
        let Some(best) = left
            .iter()
            .copied()
            .max_by(|&a, &b| (gain(a) as f64 / cost(a)).total_cmp(&(gain(b) as f64 / cost(b))))
        else {
            break;
        };
        if gain(best) == 0 {
            break;
        }
        println!(
            "  {:<28} +{} (p50 {:.1} ms)",
            rows[best].0,
            gain(best),
            cost(best)
        );
        for (c, o) in covered.iter_mut().zip(&rows[best].1.outcomes) {
            *c |= o.read;
        }
        left.retain(|&r| r != best);
    }
    let fleetkey = set
        .iter()
        .filter(|s| matches!(s.expected, Expected::Fleetkey(_)))
        .count();
    println!(
        "all passes together read {}/{fleetkey}",
        covered.iter().filter(|c| **c).count()
    );
}

/// For choosing the passes and their order: per frame, the CPU cost of
/// each preparation and of each decoder stage on it, and what each read,
/// as CSV (`--matrix FILE`): frame,name,class,width,kind,prep,stage,read,wrong,ms.
fn cost_matrix(set: &[Sample], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use fleetkey_v4l::scanner::{Pass, Prep, decode_prepared, prepare, rxing_stages};
    use std::io::Write;
    const PREPS: [Prep; 13] = [
        Prep::Frame,
        Prep::Halved,
        Prep::Doubled,
        Prep::Smoothed,
        Prep::Normalized(8),
        Prep::Normalized(16),
        Prep::Threshold(8),
        Prep::Threshold(16),
        Prep::Threshold(32),
        Prep::HalvedSmoothed,
        Prep::HalvedNormalized(16),
        Prep::HalvedThreshold(8),
        Prep::HalvedThreshold(16),
    ];
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "frame,name,class,width,kind,prep,stage,read,wrong,ms")?;
    // QR_MATRIX_REVERSE: from the last frame back, to share the work
    // between two processes (one per core).
    let mut order: Vec<(usize, &Sample)> = set.iter().enumerate().collect();
    if std::env::var_os("QR_MATRIX_REVERSE").is_some() {
        order.reverse();
    }
    for (i, sample) in order {
        let kind = match sample.expected {
            Expected::Fleetkey(_) => "fleetkey",
            Expected::Foreign(_) => "foreign",
            Expected::Nothing => "nothing",
        };
        let head = format!(
            "{i},{},{},{},{kind}",
            sample.name,
            sample.class.name(),
            sample.frame.width()
        );
        for prep in PREPS {
            let started = thread_cpu_ms();
            let prepared = if prep == Prep::Frame {
                Some(sample.frame.clone())
            } else {
                prepare(&sample.frame, prep)
            };
            let took = thread_cpu_ms() - started;
            let Some(prepared) = prepared else {
                continue;
            };
            writeln!(out, "{head},{prep:?},prep,0,0,{took:.3}")?;
            let mut lap_start = thread_cpu_ms();
            let mut rows = Vec::new();
            rxing_stages(&prepared, &mut |stage, texts| {
                let now = thread_cpu_ms();
                let o = outcome(sample, &texts);
                rows.push(format!(
                    "{head},{prep:?},{stage:?},{},{},{:.3}",
                    u8::from(o.read),
                    o.wrong,
                    now - lap_start
                ));
                lap_start = thread_cpu_ms();
            });
            for row in rows {
                writeln!(out, "{row}")?;
            }
            if matches!(
                prep,
                Prep::Frame
                    | Prep::Halved
                    | Prep::Threshold(8)
                    | Prep::Threshold(16)
                    | Prep::HalvedThreshold(8)
                    | Prep::Normalized(16)
            ) {
                let started = thread_cpu_ms();
                let texts = decode_prepared(Pass::Rqrr(prep), &prepared);
                let took = thread_cpu_ms() - started;
                let o = outcome(sample, &texts);
                writeln!(
                    out,
                    "{head},{prep:?},Rqrr,{},{},{took:.3}",
                    u8::from(o.read),
                    o.wrong
                )?;
            }
        }
        out.flush()?;
    }
    out.flush()?;
    Ok(())
}
