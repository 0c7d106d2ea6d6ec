//! What capture needs to decide about devices, without the v4l crate:
//! which device a selector names, which pixel format and size to ask for,
//! and what an OS error means. Tested without a camera.

use std::io;
use std::path::{Path, PathBuf};

use crate::frame::PixelFormat;
use crate::source::CaptureError;

/// The size asked of cameras: enough for a code at arm's length, small
/// enough to decode every frame (the driver picks its nearest size).
pub const PREFERRED_WIDTH: u32 = 640;
pub const PREFERRED_HEIGHT: u32 = 480;

/// Which camera to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraSelector {
    /// The first usable camera.
    First,
    /// `/dev/videoN` given as N.
    Index(u32),
    /// A device path.
    Path(PathBuf),
}

impl CameraSelector {
    /// Reads `""` (the first usable camera), `N` or a path.
    pub fn parse(text: &str) -> Result<Self, CaptureError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(CameraSelector::First);
        }
        if let Ok(index) = text.parse::<u32>() {
            return Ok(CameraSelector::Index(index));
        }
        if text.starts_with('/') {
            return Ok(CameraSelector::Path(PathBuf::from(text)));
        }
        Err(CaptureError::NotFound(format!(
            "'{text}' is neither a camera number nor a device path (such as /dev/video0)"
        )))
    }
}

/// The `/dev/videoN` nodes in `dir`, by N.
pub fn video_nodes(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut nodes: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let index = name.strip_prefix("video")?.parse::<u32>().ok()?;
            Some((index, entry.path()))
        })
        .collect();
    nodes.sort();
    nodes
}

/// The format to capture in: the first of fleetkey's preferred formats
/// the camera offers.
pub fn choose_format(offered: &[[u8; 4]]) -> Option<PixelFormat> {
    PixelFormat::ALL.into_iter().find(|format| {
        offered
            .iter()
            .any(|f| PixelFormat::from_fourcc(*f) == Some(*format))
    })
}

/// Of the discrete sizes a camera offers, the one closest to 640x480 in
/// area, preferring sizes at least that large.
pub fn choose_size(sizes: &[(u32, u32)]) -> Option<(u32, u32)> {
    let target = u64::from(PREFERRED_WIDTH) * u64::from(PREFERRED_HEIGHT);
    sizes.iter().copied().min_by_key(|&(w, h)| {
        let area = u64::from(w) * u64::from(h);
        (area < target, area.abs_diff(target))
    })
}

/// What an OS error from opening or streaming a device means.
pub fn classify(device: &str, error: &io::Error, streaming: bool) -> CaptureError {
    let detail = error.to_string();
    match error.raw_os_error() {
        Some(libc_errno::EBUSY) => CaptureError::Busy {
            device: device.into(),
        },
        Some(libc_errno::ENOENT) if !streaming => {
            CaptureError::NotFound(format!("{device} does not exist"))
        }
        Some(libc_errno::EACCES | libc_errno::EPERM) => CaptureError::NoAccess {
            device: device.into(),
            detail,
        },
        Some(libc_errno::ENODEV | libc_errno::ENXIO | libc_errno::ENOENT) if !streaming => {
            CaptureError::NotFound(format!("{device} is gone ({detail})"))
        }
        _ if streaming => CaptureError::Lost {
            device: device.into(),
            detail,
        },
        _ => CaptureError::NoAccess {
            device: device.into(),
            detail,
        },
    }
}

/// The few errno values this module tells apart (Linux numbering).
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const ENXIO: i32 = 6;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const ENODEV: i32 = 19;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(CameraSelector::parse("").unwrap(), CameraSelector::First);
        assert_eq!(
            CameraSelector::parse(" 2 ").unwrap(),
            CameraSelector::Index(2)
        );
        assert_eq!(
            CameraSelector::parse("/dev/video4").unwrap(),
            CameraSelector::Path("/dev/video4".into())
        );
        assert!(matches!(
            CameraSelector::parse("front"),
            Err(CaptureError::NotFound(_))
        ));
    }

    #[test]
    fn formats_are_chosen_cheapest_first() {
        assert_eq!(
            choose_format(&[*b"MJPG", *b"YUYV"]),
            Some(PixelFormat::Yuyv)
        );
        assert_eq!(
            choose_format(&[*b"MJPG", *b"NV12"]),
            Some(PixelFormat::Nv12)
        );
        assert_eq!(choose_format(&[*b"JPEG"]), Some(PixelFormat::Mjpeg));
        assert_eq!(
            choose_format(&[*b"GREY", *b"YUYV"]),
            Some(PixelFormat::Grey)
        );
        assert_eq!(choose_format(&[*b"H264", *b"RGB3"]), None);
        assert_eq!(choose_format(&[]), None);
    }

    #[test]
    fn sizes_near_vga_are_preferred() {
        assert_eq!(
            choose_size(&[(1920, 1080), (640, 480), (320, 240)]),
            Some((640, 480))
        );
        assert_eq!(
            choose_size(&[(1920, 1080), (1280, 720), (320, 240)]),
            Some((1280, 720))
        );
        assert_eq!(choose_size(&[(320, 240), (160, 120)]), Some((320, 240)));
        assert_eq!(choose_size(&[]), None);
    }

    #[test]
    fn os_errors_become_camera_reasons() {
        let busy = io::Error::from_raw_os_error(16);
        assert!(matches!(
            classify("/dev/video0", &busy, false),
            CaptureError::Busy { .. }
        ));
        assert!(matches!(
            classify("/dev/video0", &busy, true),
            CaptureError::Busy { .. }
        ));
        let missing = io::Error::from_raw_os_error(2);
        assert!(matches!(
            classify("/dev/video9", &missing, false),
            CaptureError::NotFound(_)
        ));
        let gone = io::Error::from_raw_os_error(19);
        assert!(matches!(
            classify("/dev/video0", &gone, true),
            CaptureError::Lost { .. }
        ));
        let denied = io::Error::from_raw_os_error(13);
        assert!(matches!(
            classify("/dev/video0", &denied, false),
            CaptureError::NoAccess { .. }
        ));
    }

    #[test]
    fn video_nodes_are_listed_by_number() {
        let dir = std::env::temp_dir().join(format!("fleetkey-v4l-nodes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["video10", "video2", "video0", "vbi0", "videoX", "media0"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let nodes: Vec<u32> = video_nodes(&dir).into_iter().map(|(n, _)| n).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(nodes, vec![0, 2, 10]);
        assert!(video_nodes(Path::new("/nonexistent-dir")).is_empty());
    }
}
