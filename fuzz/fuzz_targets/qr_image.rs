//! Image files and MJPEG frames through the QR scanner.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = fleetkey_v4l::fuzzing::qr_image(data) {
        panic!("{broken}");
    }
});
