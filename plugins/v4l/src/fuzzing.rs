//! Fuzzing entry point of the `qr_image` target (the `fuzz/` crate) and
//! its stable replay (`tests/fuzz_corpus.rs`): an image file, or a
//! camera's MJPEG frame, through the scanner.

use crate::frame::{MAX_PIXELS, MAX_SIDE, decode_jpeg_luma};
use crate::image_file::decode_image;
use crate::scanner::Scanner;

/// `decode_image` (PNG or JPEG, as `--qr-image` and `qr decode` read a
/// file) and `decode_jpeg_luma` (a camera's MJPEG frame), then the
/// scanner's image and live passes on what decoded, and the enrollment
/// parser on every text read. A decoded frame must be within the bounds
/// and hold exactly width x height pixels.
pub fn qr_image(data: &[u8]) -> Result<(), String> {
    let scanner = Scanner::new();
    let mut frames = Vec::new();
    if let Ok(frame) = decode_image(data) {
        frames.push(frame);
    }
    if let Ok(frame) = decode_jpeg_luma(data) {
        frames.push(frame);
    }
    for frame in &frames {
        let (width, height) = (frame.width(), frame.height());
        if width == 0
            || height == 0
            || width > MAX_SIDE
            || height > MAX_SIDE
            || width * height > MAX_PIXELS
            || frame.pixels().len() != width * height
        {
            return Err(format!(
                "a {width}x{height} frame of {} pixels was decoded",
                frame.pixels().len()
            ));
        }
        let mut texts = scanner.scan(frame);
        texts.extend(scanner.scan_live(frame, 0));
        for text in texts {
            let _ = fleetkey_proto::EnrollmentInput::parse(&text);
        }
    }
    Ok(())
}
