//! The `piv_apdu_tlv` fuzz target replayed on stable over its corpus,
//! with a mutation smoke. No card or pcscd is needed: the card answers
//! with the input.

use std::path::Path;

use fleetkey_pcsc::fuzzing::piv_apdu_tlv;
use fleetkey_proto::fuzzing::replay;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn piv_apdu_tlv_corpus_replays_and_survives_mutations() {
    let done = replay(repo(), "piv_apdu_tlv", 4, 5000, piv_apdu_tlv).unwrap();
    assert!(done.files >= 4, "{done:?}");
}
