//! APDU answers, BER-TLV and key references, and the PIV commands against a card answering with the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = fleetkey_pcsc::fuzzing::piv_apdu_tlv(data) {
        panic!("{broken}");
    }
});
