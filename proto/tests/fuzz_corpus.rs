//! The `code_uri` fuzz target's corpus and regressions, replayed on stable
//! with a deterministic mutation smoke (README, "Fuzzing").

use std::path::Path;

use fleetkey_proto::fuzzing::{code_uri, corpus_files, replay};
use fleetkey_proto::{EnrollmentInput, EnrollmentPayload};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn code_uri_corpus_replays_and_survives_mutations() {
    let done = replay(repo(), "code_uri", 10, 5000, code_uri).unwrap();
    assert!(done.files >= 10, "{done:?}");
}

#[test]
fn code_uri_corpus_holds_valid_codes_and_uris() {
    let files = corpus_files(repo(), "code_uri").unwrap();
    let texts: Vec<String> = files
        .iter()
        .map(|(_, bytes)| String::from_utf8_lossy(bytes).into_owned())
        .collect();
    let uris = texts
        .iter()
        .filter(|t| EnrollmentPayload::parse_uri(t).is_ok())
        .count();
    let codes = texts
        .iter()
        .filter(|t| matches!(EnrollmentInput::parse(t), Ok(EnrollmentInput::Code(_))))
        .count();
    assert!(uris >= 1 && codes >= 1, "{uris} URIs, {codes} codes");
}
