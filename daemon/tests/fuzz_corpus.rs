//! The `daemon_requests` fuzz target replayed on stable over its corpus,
//! with a mutation smoke: the daemon's request handlers in process
//! (`fleetkeyd::fuzzing::Harness`).

use std::path::Path;

use fleetkey_proto::fuzzing::replay;
use fleetkeyd::fuzzing::Harness;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn daemon_requests_corpus_replays_and_survives_mutations() {
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness::new(dir.path()).unwrap();
    let done = replay(repo(), "daemon_requests", 20, 2000, |data| {
        harness.run(data)
    })
    .unwrap();
    assert!(done.files >= 20, "{done:?}");
}

#[test]
fn the_harness_notices_a_key_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness::new(dir.path()).unwrap();
    // GetStatus from root: an answer, and the daemon is whole.
    harness.run(&[0, 0]).unwrap();
    std::fs::create_dir_all(dir.path().join("soft-keys")).unwrap();
    std::fs::write(dir.path().join("soft-keys/orphan.key"), b"x").unwrap();
    let error = harness.run(&[0, 0]).unwrap_err();
    assert!(error.contains("keys left"), "{error}");
}
