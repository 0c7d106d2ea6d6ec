//! The code and URI parsers, and the `user add-batch` line check.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = fleetkeyctl::fuzzing::code_uri(data) {
        panic!("{broken}");
    }
});
