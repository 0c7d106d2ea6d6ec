//! Frame sources: where luma frames come from. A V4L2 camera
//! (`camera::V4l2Source`, with the `capture` feature) and an image file
//! ([`ImageSource`]) implement the same trait, so the whole
//! scan-and-enroll path runs in tests without a camera.

use std::fmt;

use crate::frame::{FrameError, LumaFrame};
use crate::image_file::{ImageError, decode_image};

/// Which way a camera faces, where the system tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facing {
    Front,
    Back,
    /// A separate (USB) camera.
    External,
    Unknown,
}

impl Facing {
    pub fn as_str(self) -> &'static str {
        match self {
            Facing::Front => "front",
            Facing::Back => "back",
            Facing::External => "external",
            Facing::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Facing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an open source delivers, for progress messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// A name for people: the camera's card name, or "image".
    pub name: String,
    /// The device path, or a description of the image.
    pub path: String,
    /// The pixel format negotiated (`YUYV`, ...; `PNG`/`JPEG` for images).
    pub format: String,
    pub width: usize,
    pub height: usize,
}

/// Why frames could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    #[error("no camera: {0}")]
    NotFound(String),
    #[error("camera {device} cannot be opened: {detail}")]
    NoAccess { device: String, detail: String },
    #[error("camera {device} is busy: another program is using it")]
    Busy { device: String },
    #[error("camera {device} stopped delivering frames: {detail}")]
    Lost { device: String, detail: String },
    #[error(
        "camera {device} offers no format fleetkey reads (it offers {offered}; fleetkey reads GREY, YUYV, NV12 and MJPEG)"
    )]
    NoUsableFormat { device: String, offered: String },
    #[error("this fleetkeyd was built without camera support (the v4l feature)")]
    NotBuilt,
    #[error("the image cannot be read: {0}")]
    Image(#[from] ImageError),
    #[error("a frame cannot be read: {0}")]
    Frame(#[from] FrameError),
}

/// A source of luma frames.
pub trait FrameSource {
    /// What the source is and what it delivers.
    fn info(&self) -> SourceInfo;

    /// The next frame, waiting for it; `None` when the source has no more
    /// (an image file after its one frame; a camera never).
    fn next_frame(&mut self) -> Result<Option<LumaFrame>, CaptureError>;
}

/// An image file as a source: one frame, then the end.
pub struct ImageSource {
    info: SourceInfo,
    frame: Option<LumaFrame>,
}

impl ImageSource {
    /// Decodes a PNG or JPEG image.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CaptureError> {
        let frame = decode_image(bytes)?;
        let format = if bytes.starts_with(b"\x89PNG") {
            "PNG"
        } else {
            "JPEG"
        };
        Ok(Self::from_frame(frame, format))
    }

    /// A frame already in memory.
    pub fn from_frame(frame: LumaFrame, format: &str) -> Self {
        Self {
            info: SourceInfo {
                name: "image".into(),
                path: format!("{format} image"),
                format: format.into(),
                width: frame.width(),
                height: frame.height(),
            },
            frame: Some(frame),
        }
    }
}

impl FrameSource for ImageSource {
    fn info(&self) -> SourceInfo {
        self.info.clone()
    }

    fn next_frame(&mut self) -> Result<Option<LumaFrame>, CaptureError> {
        Ok(self.frame.take())
    }
}

/// A camera as `camera list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraInfo {
    /// `/dev/videoN`.
    pub path: String,
    /// N of `/dev/videoN`: what `--camera N` takes.
    pub index: u32,
    /// The card name the driver gives (e.g. "Integrated Camera").
    pub name: String,
    /// Where it is attached (e.g. "usb-0000:00:14.0-8").
    pub bus: String,
    pub driver: String,
    pub facing: Facing,
    /// Every pixel format it offers, fleetkey-readable or not.
    pub formats: Vec<CameraFormat>,
}

/// A pixel format a camera offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CameraFormat {
    /// The four-character code, e.g. `YUYV`.
    pub fourcc: String,
    /// The driver's description.
    pub description: String,
    /// Whether fleetkey can read it.
    pub readable: bool,
}

impl CameraInfo {
    /// Whether fleetkey can capture from it.
    pub fn usable(&self) -> bool {
        self.formats.iter().any(|f| f.readable)
    }
}

/// Guesses where a camera faces from its name and bus (V4L2 has no field
/// for it): laptop and tablet drivers name them "front"/"rear"; USB
/// cameras are external.
pub fn guess_facing(name: &str, bus: &str) -> Facing {
    let lower = name.to_ascii_lowercase();
    if lower.contains("front") || lower.contains("user facing") {
        Facing::Front
    } else if lower.contains("rear") || lower.contains("back") || lower.contains("world facing") {
        Facing::Back
    } else if lower.contains("integrated") || lower.contains("built-in") {
        // Laptop lid cameras look at the user.
        Facing::Front
    } else if bus.starts_with("usb-") {
        Facing::External
    } else {
        Facing::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_source_gives_one_frame_then_ends() {
        let frame = LumaFrame::from_fn(4, 3, |x, _| x as u8).unwrap();
        let mut source = ImageSource::from_frame(frame.clone(), "PNG");
        assert_eq!(source.info().width, 4);
        assert_eq!(source.next_frame().unwrap(), Some(frame));
        assert_eq!(source.next_frame().unwrap(), None);
    }

    #[test]
    fn bad_image_bytes_are_an_image_error() {
        assert!(matches!(
            ImageSource::from_bytes(b"not an image"),
            Err(CaptureError::Image(ImageError::UnknownFormat))
        ));
    }

    #[test]
    fn facing_is_guessed_from_names() {
        assert_eq!(
            guess_facing("Integrated Camera: Integrated C", "usb-0000:00:14.0-8"),
            Facing::Front
        );
        assert_eq!(guess_facing("ov5693 rear", "platform:ipu3"), Facing::Back);
        assert_eq!(
            guess_facing("HD Pro Webcam C920", "usb-0000:00:14.0-2"),
            Facing::External
        );
        assert_eq!(
            guess_facing("Dummy video device (0x0000)", "platform:v4l2loopback-000"),
            Facing::Unknown
        );
    }
}
