//! Runs every decoder over the robustness set (640x480 frames, generated
//! the same way on every run) and prints, per decoder, how many fleetkey
//! codes it read, how many wrong payloads it gave, and the milliseconds per
//! frame (p50, p90), measured on one thread.
//!
//!     cargo run --release -p fleetkey-qr-bench
//!
//! "live" is how the daemon scans a camera: each frame gets rxing and one
//! rqrr pass in turn, and a code counts as read when one of 4 frames of the
//! same scene reads it; its times are per frame.
//!
//! zbarimg (Debian zbar-tools) runs as a process per frame on a PNG file,
//! so its times include process start and PNG decoding; it is skipped
//! when not installed.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use fleetkey_v4l::Scanner;
use fleetkey_v4l::scanner::Pass;
use fleetkey_v4l::testset::{Expected, Sample, robustness_set};

struct Row {
    name: &'static str,
    read: usize,
    fleetkey_frames: usize,
    wrong: usize,
    missed: Vec<String>,
    millis: Vec<f64>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let set = robustness_set();
    let frames = set.len();
    let fleetkey_frames = set
        .iter()
        .filter(|s| matches!(s.expected, Expected::Fleetkey(_)))
        .count();
    println!(
        "robustness set: {frames} frames of 640x480 ({fleetkey_frames} with fleetkey codes, {} foreign codes, {} without a code)",
        set.iter()
            .filter(|s| matches!(s.expected, Expected::Foreign(_)))
            .count(),
        set.iter()
            .filter(|s| s.expected == Expected::Nothing)
            .count(),
    );

    let plain = Scanner::plain();
    let ours = Scanner::new();
    let rqrr_only = Scanner::with_passes(vec![
        Pass::Plain,
        Pass::Inverted,
        Pass::LocalThreshold,
        Pass::LocalThresholdInverted,
        Pass::Doubled,
    ]);
    let mut rows = vec![
        run("plain rqrr", &set, |s| plain.scan(&s.frame)),
        run("fleetkey scanner (image)", &set, |s| ours.scan(&s.frame)),
        run_live("fleetkey scanner (live)", &set, &ours),
        run("rqrr passes only", &set, |s| rqrr_only.scan(&s.frame)),
        run("rxing (+ inverted pass)", &set, rxing_decode),
    ];
    match zbar_row(&set) {
        Ok(row) => rows.push(row),
        Err(e) => println!("zbarimg skipped: {e}"),
    }

    println!();
    println!(
        "{:<26} {:>9} {:>6} {:>8} {:>8}",
        "decoder", "read", "wrong", "p50 ms", "p90 ms"
    );
    for row in &rows {
        println!(
            "{:<26} {:>6}/{:<2} {:>6} {:>8.1} {:>8.1}",
            row.name,
            row.read,
            row.fleetkey_frames,
            row.wrong,
            percentile(&row.millis, 50),
            percentile(&row.millis, 90),
        );
    }
    println!();
    for row in &rows {
        println!("{} missed: {}", row.name, row.missed.join(" "));
    }
    Ok(())
}

fn run(name: &'static str, set: &[Sample], mut decode: impl FnMut(&Sample) -> Vec<String>) -> Row {
    let mut row = Row {
        name,
        read: 0,
        fleetkey_frames: 0,
        wrong: 0,
        missed: Vec::new(),
        millis: Vec::new(),
    };
    for sample in set {
        let started = Instant::now();
        let texts = decode(sample);
        row.millis.push(started.elapsed().as_secs_f64() * 1000.0);
        score(&mut row, sample, &texts);
    }
    row
}

/// Live scanning: the same scene for up to [`LIVE_FRAMES`] frames (a
/// sixth of a second at 30 fps), each frame timed on its own.
const LIVE_FRAMES: u64 = 4;

fn run_live(name: &'static str, set: &[Sample], scanner: &Scanner) -> Row {
    let mut row = Row {
        name,
        read: 0,
        fleetkey_frames: 0,
        wrong: 0,
        missed: Vec::new(),
        millis: Vec::new(),
    };
    for sample in set {
        let mut texts = Vec::new();
        for tick in 0..LIVE_FRAMES {
            let started = Instant::now();
            texts = scanner.scan_live(&sample.frame, tick);
            row.millis.push(started.elapsed().as_secs_f64() * 1000.0);
            if !texts.is_empty() {
                break;
            }
        }
        score(&mut row, sample, &texts);
    }
    row
}

fn score(row: &mut Row, sample: &Sample, texts: &[String]) {
    match &sample.expected {
        Expected::Fleetkey(uri) => {
            row.fleetkey_frames += 1;
            if texts.iter().any(|t| t == uri) {
                row.read += 1;
            } else {
                row.missed.push(sample.name.clone());
            }
            row.wrong += texts.iter().filter(|t| *t != uri).count();
        }
        Expected::Foreign(text) => row.wrong += texts.iter().filter(|t| *t != text).count(),
        Expected::Nothing => row.wrong += texts.len(),
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

fn zbar_row(set: &[Sample]) -> Result<Row, String> {
    Command::new("zbarimg")
        .arg("--version")
        .output()
        .map_err(|e| format!("zbarimg cannot run ({e}); apt-get install zbar-tools"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    for (i, sample) in set.iter().enumerate() {
        let path = dir.path().join(format!("{i}.png"));
        write_png(&path, sample).map_err(|e| e.to_string())?;
        files.push(path);
    }
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

fn write_png(path: &Path, sample: &Sample) -> Result<(), Box<dyn std::error::Error>> {
    let file = std::fs::File::create(path)?;
    let mut encoder = png::Encoder::new(
        file,
        u32::try_from(sample.frame.width())?,
        u32::try_from(sample.frame.height())?,
    );
    encoder.set_color(png::ColorType::Grayscale);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(sample.frame.pixels())?;
    writer.finish()?;
    Ok(())
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
