//! The `qr_image` fuzz target replayed on stable over its corpus, with a
//! mutation smoke.

use std::path::Path;

use fleetkey_proto::EnrollmentInput;
use fleetkey_proto::fuzzing::{corpus_files, replay};
use fleetkey_v4l::fuzzing::qr_image;
use fleetkey_v4l::{Scanner, decode_image};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn qr_image_corpus_replays_and_survives_mutations() {
    let done = replay(repo(), "qr_image", 3, 600, qr_image).unwrap();
    assert!(done.files >= 3, "{done:?}");
}

#[test]
fn qr_image_corpus_holds_a_readable_enrollment_code() {
    let files = corpus_files(repo(), "qr_image").unwrap();
    let scanner = Scanner::new();
    let read = files
        .iter()
        .filter_map(|(_, bytes)| decode_image(bytes).ok())
        .flat_map(|frame| scanner.scan(&frame))
        .filter(|text| EnrollmentInput::parse(text).is_ok())
        .count();
    assert!(
        read >= 1,
        "no corpus image holds a readable enrollment QR code"
    );
}
