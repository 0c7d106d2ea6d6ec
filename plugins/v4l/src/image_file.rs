//! Image files (PNG, JPEG) read as luma: what `--qr-image` and
//! `fleetkeyctl qr decode` hand to the scanner.

use std::io::Cursor;

use crate::frame::{LumaFrame, MAX_PIXELS, MAX_SIDE, decode_jpeg_luma};

/// The largest image file accepted, in bytes.
pub const MAX_IMAGE_BYTES: usize = 32 * 1024 * 1024;

/// Why an image could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is {0} bytes; fleetkey reads images up to {MAX_IMAGE_BYTES} bytes")]
    TooLarge(usize),
    #[error("the file is not a PNG or JPEG image")]
    UnknownFormat,
    #[error("the PNG image could not be decoded: {0}")]
    Png(String),
    #[error("the JPEG image could not be decoded: {0}")]
    Jpeg(String),
}

/// Decodes a PNG or JPEG image (told apart by their signatures) to luma.
/// Transparent pixels are read as white, as a page shows them.
pub fn decode_image(bytes: &[u8]) -> Result<LumaFrame, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(ImageError::TooLarge(bytes.len()));
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes).map_err(ImageError::Png)
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        decode_jpeg_luma(bytes).map_err(ImageError::Jpeg)
    } else {
        Err(ImageError::UnknownFormat)
    }
}

fn decode_png(bytes: &[u8]) -> Result<LumaFrame, String> {
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: MAX_PIXELS * 8,
        },
    );
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let (width, height) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!(
            "a {width}x{height} image is empty or larger than fleetkey reads"
        ));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "the image is too large".to_string())?;
    let mut buffer = vec![0; size];
    let output = reader.next_frame(&mut buffer).map_err(|e| e.to_string())?;
    let channels = output.color_type.samples();
    let line = output.line_size;
    if output.color_type == png::ColorType::Grayscale && channels == 1 {
        // Luma already (screenshots and the bench's pictures): the rows as
        // they are, without a per-pixel conversion.
        buffer.truncate(line * height);
        if line != width {
            let mut packed = Vec::with_capacity(width * height);
            for row in buffer.chunks_exact(line) {
                packed.extend_from_slice(row.get(..width).unwrap_or_default());
            }
            buffer = packed;
        }
        if buffer.len() != width * height {
            return Err("the decoded image is shorter than its header says".to_string());
        }
        return LumaFrame::new(width, height, buffer).map_err(|e| e.to_string());
    }
    let mut pixels = Vec::with_capacity(width * height);
    for y in 0..height {
        let row = buffer
            .get(y * line..y * line + width * channels)
            .ok_or_else(|| "the decoded image is shorter than its header says".to_string())?;
        for px in row.chunks_exact(channels) {
            pixels.push(luma_of(output.color_type, px));
        }
    }
    LumaFrame::new(width, height, pixels).map_err(|e| e.to_string())
}

/// Luma of one 8-bit pixel (BT.601 weights), alpha composited over white.
fn luma_of(color: png::ColorType, px: &[u8]) -> u8 {
    let over_white = |value: u32, alpha: u32| (value * alpha + 255 * (255 - alpha)) / 255;
    let rgb =
        |r: u8, g: u8, b: u8| (299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b)) / 1000;
    let value = match (color, px) {
        (png::ColorType::Grayscale, [l, ..]) => u32::from(*l),
        (png::ColorType::GrayscaleAlpha, [l, a, ..]) => over_white(u32::from(*l), u32::from(*a)),
        (png::ColorType::Rgb, [r, g, b, ..]) => rgb(*r, *g, *b),
        (png::ColorType::Rgba, [r, g, b, a, ..]) => over_white(rgb(*r, *g, *b), u32::from(*a)),
        // EXPAND turns indexed images into RGB(A); anything else reads as white.
        _ => 255,
    };
    u8::try_from(value).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(color: png::ColorType, width: u32, height: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn png_colour_types_become_luma() {
        let grey = png_bytes(png::ColorType::Grayscale, 2, 1, &[0, 200]);
        assert_eq!(decode_image(&grey).unwrap().pixels(), &[0, 200]);
        let rgb = png_bytes(png::ColorType::Rgb, 2, 1, &[255, 255, 255, 0, 0, 0]);
        assert_eq!(decode_image(&rgb).unwrap().pixels(), &[255, 0]);
        // Black, half-transparent black, fully transparent black.
        let rgba = png_bytes(
            png::ColorType::Rgba,
            3,
            1,
            &[0, 0, 0, 255, 0, 0, 0, 128, 0, 0, 0, 0],
        );
        assert_eq!(decode_image(&rgba).unwrap().pixels(), &[0, 127, 255]);
    }

    #[test]
    fn jpeg_becomes_luma() {
        let mut out = Vec::new();
        let data = vec![128u8; 16 * 16];
        jpeg_encoder::Encoder::new(&mut out, 95)
            .encode(&data, 16, 16, jpeg_encoder::ColorType::Luma)
            .unwrap();
        let frame = decode_image(&out).unwrap();
        assert_eq!((frame.width(), frame.height()), (16, 16));
        assert!(frame.pixels().iter().all(|p| p.abs_diff(128) <= 2));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert_eq!(decode_image(b""), Err(ImageError::Empty));
        assert_eq!(decode_image(b"GIF89a..."), Err(ImageError::UnknownFormat));
        let png = png_bytes(png::ColorType::Grayscale, 4, 4, &[0; 16]);
        assert!(matches!(
            decode_image(&png[..png.len() - 20]),
            Err(ImageError::Png(_))
        ));
        assert!(matches!(
            decode_image(&[0xff, 0xd8, 0xff, 0x00, 1, 2, 3]),
            Err(ImageError::Jpeg(_))
        ));
        let mut huge = png_bytes(png::ColorType::Grayscale, 1, 1, &[0]);
        // Patch the IHDR width to 100000 pixels: refused, not allocated.
        huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(matches!(decode_image(&huge), Err(ImageError::Png(_))));
    }
}
