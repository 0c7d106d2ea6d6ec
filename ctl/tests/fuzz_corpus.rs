//! The `code_uri` fuzz target (which also runs the `user add-batch` line
//! check) replayed on stable over its corpus, with a mutation smoke.

use std::path::Path;

use fleetkey_proto::fuzzing::{corpus_files, replay};
use fleetkeyctl::fuzzing::code_uri;
use fleetkeyctl::subcommands::user_add_batch_input::parse_line;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn code_uri_with_batch_lines_replays_and_survives_mutations() {
    let done = replay(repo(), "code_uri", 10, 3000, code_uri).unwrap();
    assert!(done.files >= 10, "{done:?}");
}

#[test]
fn code_uri_corpus_holds_a_valid_batch_line() {
    let files = corpus_files(repo(), "code_uri").unwrap();
    let lines = files
        .iter()
        .filter(|(_, bytes)| parse_line(&String::from_utf8_lossy(bytes)).is_ok())
        .count();
    assert!(lines >= 1, "no corpus file is a valid batch line");
}
