//! Luma (greyscale) frames, and the conversion of camera pixel formats to
//! luma. QR codes carry no colour, so the scanner only ever sees luma.

use std::fmt;

use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// The largest frame or image accepted, in pixels (a 48-megapixel photo):
/// anything larger is refused before memory is allocated for it.
pub const MAX_PIXELS: usize = 48_000_000;

/// The largest side of a frame or image, in pixels.
pub const MAX_SIDE: usize = 16_384;

/// Why bytes could not be turned into a luma frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "a {width}x{height} frame is empty or larger than fleetkey reads ({MAX_SIDE} pixels a side, {MAX_PIXELS} pixels in all)"
    )]
    BadSize { width: usize, height: usize },
    #[error("a {format} frame of {width}x{height} needs {needed} bytes, but {got} arrived")]
    Truncated {
        format: PixelFormat,
        width: usize,
        height: usize,
        needed: usize,
        got: usize,
    },
    #[error("a line of {bytes_per_line} bytes is too short for {width} pixels of {format}")]
    BadStride {
        format: PixelFormat,
        width: usize,
        bytes_per_line: usize,
    },
    #[error("the MJPEG frame could not be decoded: {0}")]
    Jpeg(String),
}

/// An 8-bit luma image, one byte per pixel, rows packed (no padding).
#[derive(Clone, PartialEq, Eq)]
pub struct LumaFrame {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl fmt::Debug for LumaFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LumaFrame({}x{})", self.width, self.height)
    }
}

impl LumaFrame {
    /// A frame of `width` x `height` pixels; `pixels` must hold exactly
    /// that many bytes.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<Self, FrameError> {
        check_size(width, height)?;
        if pixels.len() != width * height {
            return Err(FrameError::Truncated {
                format: PixelFormat::Grey,
                width,
                height,
                needed: width * height,
                got: pixels.len(),
            });
        }
        Ok(Self {
            width,
            height,
            pixels,
        })
    }

    /// A frame whose pixels are given by `f(x, y)`.
    pub fn from_fn(
        width: usize,
        height: usize,
        mut f: impl FnMut(usize, usize) -> u8,
    ) -> Result<Self, FrameError> {
        check_size(width, height)?;
        let mut pixels = Vec::with_capacity(width * height);
        for y in 0..height {
            for x in 0..width {
                pixels.push(f(x, y));
            }
        }
        Ok(Self {
            width,
            height,
            pixels,
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixels, row after row.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The pixel at (x, y); callers keep x < width and y < height.
    pub fn get(&self, x: usize, y: usize) -> u8 {
        self.pixels[y * self.width + x]
    }

    /// One row of pixels.
    pub fn row(&self, y: usize) -> &[u8] {
        &self.pixels[y * self.width..(y + 1) * self.width]
    }
}

fn check_size(width: usize, height: usize) -> Result<(), FrameError> {
    if width == 0
        || height == 0
        || width > MAX_SIDE
        || height > MAX_SIDE
        || width * height > MAX_PIXELS
    {
        return Err(FrameError::BadSize { width, height });
    }
    Ok(())
}

/// The camera pixel formats fleetkey reads, in the order it prefers them
/// (cheapest to turn into luma first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// 8-bit greyscale (`GREY`).
    Grey,
    /// Packed 4:2:2, Y0 U Y1 V (`YUYV`): every other byte is luma.
    Yuyv,
    /// Planar 4:2:0, a luma plane then interleaved chroma (`NV12`).
    Nv12,
    /// Motion JPEG (`MJPG`): each frame is a JPEG image.
    Mjpeg,
}

impl PixelFormat {
    /// Every format, in order of preference.
    pub const ALL: [PixelFormat; 4] = [
        PixelFormat::Grey,
        PixelFormat::Yuyv,
        PixelFormat::Nv12,
        PixelFormat::Mjpeg,
    ];

    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Grey => *b"GREY",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Nv12 => *b"NV12",
            PixelFormat::Mjpeg => *b"MJPG",
        }
    }

    /// The format with this four-character code, if fleetkey reads it
    /// (`JPEG` is read as MJPEG: cameras use both names for the same thing).
    pub fn from_fourcc(fourcc: [u8; 4]) -> Option<Self> {
        match &fourcc {
            b"GREY" => Some(PixelFormat::Grey),
            b"YUYV" => Some(PixelFormat::Yuyv),
            b"NV12" => Some(PixelFormat::Nv12),
            b"MJPG" | b"JPEG" => Some(PixelFormat::Mjpeg),
            _ => None,
        }
    }

    /// Bytes per line of luma-carrying samples for a packed width.
    fn min_bytes_per_line(self, width: usize) -> usize {
        match self {
            PixelFormat::Grey | PixelFormat::Nv12 => width,
            PixelFormat::Yuyv => width * 2,
            PixelFormat::Mjpeg => 0,
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.fourcc()))
    }
}

/// A raw frame as a camera delivers it.
#[derive(Debug, Clone, Copy)]
pub struct RawFrame<'a> {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    /// Bytes from one line to the next (0: packed, no padding). Ignored
    /// for MJPEG.
    pub bytes_per_line: usize,
    pub data: &'a [u8],
}

impl RawFrame<'_> {
    /// The frame's luma.
    pub fn to_luma(&self) -> Result<LumaFrame, FrameError> {
        let (format, width, height) = (self.format, self.width, self.height);
        if format == PixelFormat::Mjpeg {
            let frame = decode_jpeg_luma(self.data).map_err(FrameError::Jpeg)?;
            return Ok(frame);
        }
        check_size(width, height)?;
        let min = format.min_bytes_per_line(width);
        let stride = if self.bytes_per_line == 0 {
            min
        } else {
            self.bytes_per_line
        };
        if stride < min {
            return Err(FrameError::BadStride {
                format,
                width,
                bytes_per_line: stride,
            });
        }
        // Only the luma lines are needed; the last one need not be padded.
        let needed = stride * (height - 1) + min;
        if self.data.len() < needed {
            return Err(FrameError::Truncated {
                format,
                width,
                height,
                needed,
                got: self.data.len(),
            });
        }
        let mut pixels = Vec::with_capacity(width * height);
        for y in 0..height {
            let line = &self.data[y * stride..y * stride + min];
            match format {
                PixelFormat::Grey | PixelFormat::Nv12 => pixels.extend_from_slice(line),
                PixelFormat::Yuyv => pixels.extend(line.iter().step_by(2)),
                PixelFormat::Mjpeg => {}
            }
        }
        LumaFrame::new(width, height, pixels)
    }
}

/// Decodes a JPEG (or an MJPEG frame, whose Huffman tables may be left
/// out) straight to luma: the chroma is never computed.
pub fn decode_jpeg_luma(data: &[u8]) -> Result<LumaFrame, String> {
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::Luma)
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data), options);
    decoder.decode_headers().map_err(|e| e.to_string())?;
    let info = decoder
        .info()
        .ok_or_else(|| "the JPEG headers could not be read".to_string())?;
    let (width, height) = (usize::from(info.width), usize::from(info.height));
    check_size(width, height).map_err(|e| e.to_string())?;
    let pixels = decoder.decode().map_err(|e| e.to_string())?;
    if pixels.len() != width * height {
        return Err(format!(
            "the JPEG decoder gave {} bytes for {width}x{height} luma",
            pixels.len()
        ));
    }
    LumaFrame::new(width, height, pixels).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A known image: a gradient with a dark square.
    fn known() -> LumaFrame {
        LumaFrame::from_fn(64, 48, |x, y| {
            if (20..40).contains(&x) && (10..30).contains(&y) {
                10
            } else {
                u8::try_from((x * 3 + y) % 256).unwrap()
            }
        })
        .unwrap()
    }

    fn yuyv(frame: &LumaFrame, pad: usize) -> (Vec<u8>, usize) {
        let stride = frame.width() * 2 + pad;
        let mut data = Vec::new();
        for y in 0..frame.height() {
            for (i, &l) in frame.row(y).iter().enumerate() {
                data.push(l);
                data.push(if i % 2 == 0 { 90 } else { 200 }); // U / V
            }
            data.extend(std::iter::repeat_n(0xee, pad));
        }
        (data, stride)
    }

    fn nv12(frame: &LumaFrame, pad: usize) -> (Vec<u8>, usize) {
        let stride = frame.width() + pad;
        let mut data = Vec::new();
        for y in 0..frame.height() {
            data.extend_from_slice(frame.row(y));
            data.extend(std::iter::repeat_n(0xee, pad));
        }
        // Interleaved chroma plane, half height.
        data.extend(std::iter::repeat_n(128, stride * frame.height() / 2));
        (data, stride)
    }

    #[test]
    fn every_pixel_format_gives_back_the_luma() {
        let image = known();
        let (w, h) = (image.width(), image.height());
        let grey = RawFrame {
            format: PixelFormat::Grey,
            width: w,
            height: h,
            bytes_per_line: 0,
            data: image.pixels(),
        };
        assert_eq!(grey.to_luma().unwrap(), image);

        for pad in [0, 16] {
            let (data, stride) = yuyv(&image, pad);
            let raw = RawFrame {
                format: PixelFormat::Yuyv,
                width: w,
                height: h,
                bytes_per_line: stride,
                data: &data,
            };
            assert_eq!(raw.to_luma().unwrap(), image, "YUYV, padding {pad}");

            let (data, stride) = nv12(&image, pad);
            let raw = RawFrame {
                format: PixelFormat::Nv12,
                width: w,
                height: h,
                bytes_per_line: stride,
                data: &data,
            };
            assert_eq!(raw.to_luma().unwrap(), image, "NV12, padding {pad}");
        }

        // MJPEG: a JPEG of the image (colour, as cameras send), decoded to luma
        // within JPEG's loss.
        let rgb: Vec<u8> = image.pixels().iter().flat_map(|&l| [l, l, l]).collect();
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 95)
            .encode(&rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let raw = RawFrame {
            format: PixelFormat::Mjpeg,
            width: w,
            height: h,
            bytes_per_line: 0,
            data: &jpeg,
        };
        let luma = raw.to_luma().unwrap();
        assert_eq!((luma.width(), luma.height()), (w, h));
        let worst = luma
            .pixels()
            .iter()
            .zip(image.pixels())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 24, "MJPEG luma off by {worst}");
        let mean_error: usize = luma
            .pixels()
            .iter()
            .zip(image.pixels())
            .map(|(a, b)| usize::from(a.abs_diff(*b)))
            .sum::<usize>()
            / (w * h);
        assert!(mean_error <= 3, "MJPEG mean error {mean_error}");
    }

    #[test]
    fn short_and_odd_frames_are_errors() {
        let data = vec![0u8; 100];
        let raw = RawFrame {
            format: PixelFormat::Yuyv,
            width: 64,
            height: 48,
            bytes_per_line: 0,
            data: &data,
        };
        assert!(matches!(raw.to_luma(), Err(FrameError::Truncated { .. })));
        let raw = RawFrame {
            format: PixelFormat::Yuyv,
            width: 64,
            height: 1,
            bytes_per_line: 64,
            data: &data,
        };
        assert!(matches!(raw.to_luma(), Err(FrameError::BadStride { .. })));
        let raw = RawFrame {
            format: PixelFormat::Grey,
            width: 0,
            height: 48,
            bytes_per_line: 0,
            data: &data,
        };
        assert!(matches!(raw.to_luma(), Err(FrameError::BadSize { .. })));
        let raw = RawFrame {
            format: PixelFormat::Mjpeg,
            width: 64,
            height: 48,
            bytes_per_line: 0,
            data: &data,
        };
        assert!(matches!(raw.to_luma(), Err(FrameError::Jpeg(_))));
        assert!(LumaFrame::new(MAX_SIDE + 1, 1, vec![0; MAX_SIDE + 1]).is_err());
    }

    #[test]
    fn fourcc_round_trip() {
        for format in PixelFormat::ALL {
            assert_eq!(PixelFormat::from_fourcc(format.fourcc()), Some(format));
        }
        assert_eq!(PixelFormat::from_fourcc(*b"JPEG"), Some(PixelFormat::Mjpeg));
        assert_eq!(PixelFormat::from_fourcc(*b"H264"), None);
        assert_eq!(PixelFormat::Yuyv.to_string(), "YUYV");
    }
}
