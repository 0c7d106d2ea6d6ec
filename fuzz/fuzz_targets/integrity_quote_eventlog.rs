//! The TPMS_ATTEST and TCG2 event log parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = fleetkey_integrity::fuzzing::quote_eventlog(data) {
        panic!("{broken}");
    }
});
