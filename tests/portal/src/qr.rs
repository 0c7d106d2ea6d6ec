//! QR codes of enrollment URIs: as text for a terminal, and as PNG.

use qrcode::QrCode;
use qrcode::render::unicode::Dense1x2;
use qrcode::types::Color;

use crate::error::PortalError;

/// Pixels per module in PNG output.
pub const PNG_MODULE_PIXELS: usize = 8;
/// The quiet zone around the symbol, in modules (what ISO/IEC 18004 asks).
pub const QUIET_ZONE_MODULES: usize = 4;

/// The QR code drawn with Unicode half blocks (two modules per character
/// cell), dark modules on a light background with the quiet zone.
///
/// Light modules are drawn as blocks in the foreground colour and dark ones
/// as spaces, which reads right on the usual light-on-dark terminal. With
/// `ansi`, every line also sets a white foreground on a black background,
/// so the code reads right whatever the terminal's colours.
pub fn terminal(data: &str, ansi: bool) -> Result<String, PortalError> {
    let code = QrCode::new(data.as_bytes())?;
    let text = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    if !ansi {
        return Ok(text);
    }
    Ok(text
        .lines()
        .map(|line| format!("\x1b[97;40m{line}\x1b[0m"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The QR code as an 8-bit grayscale PNG: [`PNG_MODULE_PIXELS`] pixels per
/// module, black on white, with a [`QUIET_ZONE_MODULES`] quiet zone.
pub fn png(data: &str) -> Result<Vec<u8>, PortalError> {
    let code = QrCode::new(data.as_bytes())?;
    let modules = code.width();
    let colors = code.to_colors();
    let side_modules = modules + 2 * QUIET_ZONE_MODULES;
    let side = side_modules * PNG_MODULE_PIXELS;

    let mut pixels = vec![0xffu8; side * side];
    for (index, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let x0 = (index % modules + QUIET_ZONE_MODULES) * PNG_MODULE_PIXELS;
        let y0 = (index / modules + QUIET_ZONE_MODULES) * PNG_MODULE_PIXELS;
        for y in y0..y0 + PNG_MODULE_PIXELS {
            pixels[y * side + x0..y * side + x0 + PNG_MODULE_PIXELS].fill(0);
        }
    }

    // A QR code is at most 177 modules wide, so the side fits in a u32.
    let side_u32 = u32::try_from(side).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side_u32, side_u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&pixels)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "fleetkey://enroll?v=1&c=K7QF-9XWM-2HPD-TR4Q&p=http%3A%2F%2F127.0.0.1%3A7000";

    #[test]
    fn terminal_rendering_has_a_quiet_zone() {
        let text = terminal(URI, false).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let width = QrCode::new(URI).unwrap().width() + 2 * QUIET_ZONE_MODULES;
        assert_eq!(lines.len(), width.div_ceil(2));
        assert!(lines.iter().all(|l| l.chars().count() == width));
        // The quiet zone is light, so drawn as full blocks.
        assert!(lines[0].chars().all(|c| c == '\u{2588}'));
        let ansi = terminal(URI, true).unwrap();
        assert!(ansi.lines().all(|l| l.starts_with("\x1b[97;40m")));
    }

    #[test]
    fn png_is_grayscale_with_8_pixel_modules() {
        let bytes = png(URI).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        let modules = QrCode::new(URI).unwrap().width();
        let side = ((modules + 2 * QUIET_ZONE_MODULES) * PNG_MODULE_PIXELS) as u32;
        assert_eq!((info.width, info.height), (side, side));
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        // Quiet zone white; the finder pattern's corner black.
        assert_eq!(buf[0], 0xff);
        let corner = QUIET_ZONE_MODULES * PNG_MODULE_PIXELS;
        assert_eq!(buf[corner * side as usize + corner], 0);
    }
}
