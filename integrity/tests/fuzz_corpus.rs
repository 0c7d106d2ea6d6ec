//! The `integrity_quote_eventlog` fuzz target replayed on stable over its
//! corpus, with a mutation smoke.

use std::path::Path;

use fleetkey_integrity::eventlog::EventLog;
use fleetkey_integrity::fuzzing::quote_eventlog;
use fleetkey_integrity::quote::QuoteAttest;
use fleetkey_proto::fuzzing::{corpus_files, replay};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn quote_eventlog_corpus_replays_and_survives_mutations() {
    let done = replay(repo(), "integrity_quote_eventlog", 4, 3000, quote_eventlog).unwrap();
    assert!(done.files >= 4, "{done:?}");
}

#[test]
fn quote_eventlog_corpus_holds_a_quote_and_a_log() {
    let files = corpus_files(repo(), "integrity_quote_eventlog").unwrap();
    let quotes = files
        .iter()
        .filter(|(_, b)| QuoteAttest::parse(b).is_ok())
        .count();
    let logs = files
        .iter()
        .filter(|(_, b)| EventLog::parse(b).is_ok())
        .count();
    assert!(quotes >= 1 && logs >= 1, "{quotes} quotes, {logs} logs");
}
