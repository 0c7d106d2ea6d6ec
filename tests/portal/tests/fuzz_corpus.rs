//! The `portal_tpm_der` fuzz target replayed on stable over its corpus,
//! with a mutation smoke.

use std::path::Path;

use fleetkey_portal::fuzzing::tpm_der;
use fleetkey_portal::{der, tpm};
use fleetkey_proto::fuzzing::{corpus_files, replay};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn tpm_der_corpus_replays_and_survives_mutations() {
    let done = replay(repo(), "portal_tpm_der", 4, 2000, tpm_der).unwrap();
    assert!(done.files >= 4, "{done:?}");
}

#[test]
fn tpm_der_corpus_holds_a_public_area_and_a_certificate() {
    let files = corpus_files(repo(), "portal_tpm_der").unwrap();
    let publics = files
        .iter()
        .filter(|(_, b)| tpm::Public::parse(b).is_ok())
        .count();
    let certificates = files
        .iter()
        .filter(|(_, b)| der::certificate(b).is_some())
        .count();
    assert!(
        publics >= 1 && certificates >= 1,
        "{publics} public areas, {certificates} certificates"
    );
}
