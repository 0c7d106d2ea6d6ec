//! Camera enrollment for fleetkey: frame sources (V4L2 cameras with the
//! `capture` feature, image files always), luma conversion of camera pixel
//! formats, and a QR scanner that reads what phones read.
//!
//! Everything but [`camera`] builds without system libraries, so a plain
//! build can still enroll from an image file (`--qr-image`) and decode
//! images offline (`fleetkeyctl qr decode`).

#[cfg(feature = "capture")]
pub mod camera;
pub mod device;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod image_file;
pub mod scan;
pub mod scanner;
pub mod source;

pub use frame::{FrameError, LumaFrame, PixelFormat, RawFrame};
pub use image_file::{ImageError, decode_image};
pub use scan::{Found, Opener, ScanEvent, ScanOptions, scan_for_enrollment};
pub use scanner::Scanner;
pub use source::{
    CameraFormat, CameraInfo, CaptureError, Facing, FrameSource, ImageSource, SourceInfo,
};
#[cfg(any(test, feature = "testset"))]
pub mod testset;
