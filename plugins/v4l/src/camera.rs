//! V4L2 capture with the v4l crate: listing capture devices, opening one,
//! negotiating a format fleetkey reads, and streaming through mmap
//! buffers. Needs the `capture` feature (and libclang to build).

use std::path::{Path, PathBuf};
use std::time::Duration;

use v4l::buffer::Type;
use v4l::capability::Flags;
use v4l::framesize::FrameSizeEnum;
use v4l::io::traits::CaptureStream;
use v4l::prelude::{Device, MmapStream};
use v4l::video::Capture;
use v4l::{Format, FourCC};

use crate::device::{
    CameraSelector, PREFERRED_HEIGHT, PREFERRED_WIDTH, choose_format, choose_size, classify,
    video_nodes,
};
use crate::frame::{LumaFrame, PixelFormat, RawFrame};
use crate::source::{
    CameraFormat, CameraInfo, CaptureError, FrameSource, SourceInfo, guess_facing,
};

/// Where device nodes live.
const DEV: &str = "/dev";
/// mmap buffers: enough to keep the camera streaming while one is read.
const BUFFERS: u32 = 4;
/// A camera that sends no frame for this long is lost.
const FRAME_TIMEOUT: Duration = Duration::from_secs(3);
/// Dequeue attempts that may come back empty-handed in a row.
const EMPTY_DEQUEUES: u32 = 8;

/// The video capture devices, by number. Nodes that only carry metadata
/// (UVC cameras add one beside each picture node) are left out.
pub fn list_cameras() -> Vec<CameraInfo> {
    video_nodes(Path::new(DEV))
        .into_iter()
        .filter_map(|(index, path)| describe(index, &path).ok())
        .collect()
}

fn describe(index: u32, path: &Path) -> Result<CameraInfo, CaptureError> {
    let name = path.display().to_string();
    let device = Device::with_path(path).map_err(|e| classify(&name, &e, false))?;
    let caps = device
        .query_caps()
        .map_err(|e| classify(&name, &e, false))?;
    if !caps.capabilities.contains(Flags::VIDEO_CAPTURE) {
        return Err(CaptureError::NotFound(format!(
            "{name} is not a video capture node"
        )));
    }
    let formats = device
        .enum_formats()
        .map_err(|e| classify(&name, &e, false))?
        .into_iter()
        .map(|d| CameraFormat {
            fourcc: fourcc_text(d.fourcc),
            description: d.description,
            readable: PixelFormat::from_fourcc(d.fourcc.repr).is_some(),
        })
        .collect();
    Ok(CameraInfo {
        path: name,
        index,
        facing: guess_facing(&caps.card, &caps.bus),
        name: caps.card,
        bus: caps.bus,
        driver: caps.driver,
        formats,
    })
}

fn fourcc_text(fourcc: FourCC) -> String {
    String::from_utf8_lossy(&fourcc.repr).trim_end().to_string()
}

/// Opens the selected camera (the first usable one for
/// [`CameraSelector::First`]), ready to stream.
pub fn open(selector: &CameraSelector) -> Result<V4l2Source, CaptureError> {
    match selector {
        CameraSelector::Path(path) => V4l2Source::open(path),
        CameraSelector::Index(n) => V4l2Source::open(&Path::new(DEV).join(format!("video{n}"))),
        CameraSelector::First => {
            let cameras = list_cameras();
            let Some(camera) = cameras.iter().find(|c| c.usable()) else {
                return Err(CaptureError::NotFound(if cameras.is_empty() {
                    "no video capture device was found (no /dev/video* node this daemon can open)"
                        .into()
                } else {
                    format!(
                        "none of the cameras offers a format fleetkey reads ({})",
                        cameras
                            .iter()
                            .map(|c| c.path.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }));
            };
            V4l2Source::open(Path::new(&camera.path))
        }
    }
}

/// A streaming V4L2 camera.
pub struct V4l2Source {
    info: SourceInfo,
    format: PixelFormat,
    width: usize,
    height: usize,
    bytes_per_line: usize,
    stream: MmapStream<'static>,
    // Kept open for the stream's lifetime.
    _device: Device,
}

impl V4l2Source {
    /// Opens `path`, negotiates a format and size, and maps the buffers.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let name = path.display().to_string();
        let device = Device::with_path(path).map_err(|e| classify(&name, &e, false))?;
        let caps = device
            .query_caps()
            .map_err(|e| classify(&name, &e, false))?;
        if !caps.capabilities.contains(Flags::VIDEO_CAPTURE) {
            return Err(CaptureError::NotFound(format!(
                "{name} ({}) is not a video capture device",
                caps.card
            )));
        }
        let offered: Vec<[u8; 4]> = device
            .enum_formats()
            .map_err(|e| classify(&name, &e, false))?
            .iter()
            .map(|d| d.fourcc.repr)
            .collect();
        let Some(format) = choose_format(&offered) else {
            return Err(CaptureError::NoUsableFormat {
                device: name,
                offered: offered
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).trim_end().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let fourcc = FourCC::new(&format.fourcc());
        let (width, height) = preferred_size(&device, fourcc);
        let wanted = Format::new(width, height, fourcc);
        let actual = device
            .set_format(&wanted)
            .map_err(|e| classify(&name, &e, false))?;
        if actual.fourcc != fourcc {
            return Err(CaptureError::NoUsableFormat {
                device: name,
                offered: fourcc_text(actual.fourcc),
            });
        }
        let mut stream = MmapStream::with_buffers(&device, Type::VideoCapture, BUFFERS)
            .map_err(|e| classify(&name, &e, false))?;
        stream.set_timeout(FRAME_TIMEOUT);
        Ok(Self {
            info: SourceInfo {
                name: caps.card,
                path: name,
                format: format.to_string(),
                width: actual.width as usize,
                height: actual.height as usize,
            },
            format,
            width: actual.width as usize,
            height: actual.height as usize,
            bytes_per_line: actual.stride as usize,
            stream,
            _device: device,
        })
    }
}

/// The discrete size nearest 640x480, or 640x480 itself for cameras with
/// continuous sizes (the driver adjusts it).
fn preferred_size(device: &Device, fourcc: FourCC) -> (u32, u32) {
    let sizes: Vec<(u32, u32)> = device
        .enum_framesizes(fourcc)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|size| match size.size {
            FrameSizeEnum::Discrete(d) => Some((d.width, d.height)),
            FrameSizeEnum::Stepwise(_) => None,
        })
        .collect();
    choose_size(&sizes).unwrap_or((PREFERRED_WIDTH, PREFERRED_HEIGHT))
}

impl FrameSource for V4l2Source {
    fn info(&self) -> SourceInfo {
        self.info.clone()
    }

    fn next_frame(&mut self) -> Result<Option<LumaFrame>, CaptureError> {
        let mut empty = 0;
        loop {
            let (data, meta) = match self.stream.next() {
                Ok(next) => next,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(CaptureError::Lost {
                        device: self.info.path.clone(),
                        detail: format!("no frame for {} s", FRAME_TIMEOUT.as_secs()),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && empty < EMPTY_DEQUEUES => {
                    empty += 1;
                    continue;
                }
                Err(e) => return Err(classify(&self.info.path, &e, true)),
            };
            let used = (meta.bytesused as usize).min(data.len());
            if used == 0 && empty < EMPTY_DEQUEUES {
                // Some drivers hand back empty buffers while starting up.
                empty += 1;
                continue;
            }
            let raw = RawFrame {
                format: self.format,
                width: self.width,
                height: self.height,
                bytes_per_line: self.bytes_per_line,
                data: &data[..used],
            };
            return match raw.to_luma() {
                Ok(frame) => Ok(Some(frame)),
                // A corrupt MJPEG frame is skipped, as players do.
                Err(_) if self.format == PixelFormat::Mjpeg && empty < EMPTY_DEQUEUES => {
                    empty += 1;
                    continue;
                }
                Err(e) => Err(CaptureError::Frame(e)),
            };
        }
    }
}

/// A path for messages.
pub fn device_path(index: u32) -> PathBuf {
    Path::new(DEV).join(format!("video{index}"))
}
