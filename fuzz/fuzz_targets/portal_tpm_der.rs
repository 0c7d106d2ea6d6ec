//! The portal's TPM structure and X.509 DER parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = fleetkey_portal::fuzzing::tpm_der(data) {
        panic!("{broken}");
    }
});
