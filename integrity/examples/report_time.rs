//! Times a full integrity report of this machine:
//! `cargo run --release -p fleetkey-integrity --example report_time [N]`.
//! Prints the report's summary and the mean time per report.

use std::time::Instant;

use fleetkey_integrity::{Inputs, report};

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let inputs = Inputs {
        own_files: vec!["/etc/passwd".into()],
        accounts: vec!["root".into()],
        ..Inputs::default()
    };
    let first = report(&inputs);
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(report(&inputs));
    }
    let mean = start.elapsed() / n.max(1);
    println!("{}", first.summary());
    println!("{n} reports, mean {mean:?} per report");
}
