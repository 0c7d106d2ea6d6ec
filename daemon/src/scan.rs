//! Enrollment from a QR code the daemon reads itself: from a camera it
//! owns (`user add --camera`) or from an image (`user add --qr-image`).
//! The scan runs on a blocking thread and streams progress; once a
//! fleetkey code is read, enrollment is the engine's `add_user`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleetkey_plugin::Pin;
use fleetkey_proto::daemon::add_user_scan_request::Source;
use fleetkey_proto::daemon::scan_progress::Event;
use fleetkey_proto::daemon::{
    Activating, Camera, CameraOpened, CodeFound, Enrolling, ForeignCode, FramesScanned,
    ListCamerasResponse, ScanProgress,
};
use fleetkey_proto::{EnrollmentPayload, Failure, Reason};
use fleetkey_v4l::{
    CameraInfo, FrameSource, ImageSource, Opener, ScanEvent, ScanOptions, Scanner,
    scan_for_enrollment,
};
use tokio::sync::mpsc;

use crate::engine::Engine;

/// How long a camera scan lasts when the request does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest scan a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// What the stream carries: progress, or the failure that ends it.
pub type ProgressItem = Result<ScanProgress, tonic::Status>;

/// The frame source a request names. Opening happens later, on the scan
/// thread; what can be checked now is.
pub fn opener(source: Option<Source>) -> Result<Opener, Failure> {
    match source {
        None => Err(Failure::new(
            Reason::InvalidArgument,
            "the request names neither a camera nor an image",
        )),
        Some(Source::Image(bytes)) => {
            // Decode now: a bad image is the request's fault, reported before
            // anything else happens.
            let image = ImageSource::from_bytes(&bytes)
                .map_err(|e| fleetkey_v4l::scan::capture_failure(&e))?;
            Ok(Box::new(
                move || Ok(Box::new(image) as Box<dyn FrameSource>),
            ))
        }
        Some(Source::Camera(selector)) => camera_opener(&selector),
    }
}

#[cfg(feature = "v4l")]
fn camera_opener(selector: &str) -> Result<Opener, Failure> {
    let selector = fleetkey_v4l::device::CameraSelector::parse(selector)
        .map_err(|e| fleetkey_v4l::scan::capture_failure(&e))?;
    Ok(Box::new(move || {
        fleetkey_v4l::camera::open(&selector).map(|s| Box::new(s) as Box<dyn FrameSource>)
    }))
}

#[cfg(not(feature = "v4l"))]
fn camera_opener(_selector: &str) -> Result<Opener, Failure> {
    Err(fleetkey_v4l::scan::capture_failure(
        &fleetkey_v4l::CaptureError::NotBuilt,
    ))
}

/// The cameras, as `ListCameras` answers.
pub async fn list_cameras() -> Result<ListCamerasResponse, Failure> {
    let cameras = tokio::task::spawn_blocking(find_cameras)
        .await
        .map_err(|e| Failure::new(Reason::Internal, format!("a worker thread failed: {e}")))?;
    Ok(ListCamerasResponse {
        capture_supported: cfg!(feature = "v4l"),
        cameras: cameras.iter().map(camera_message).collect(),
    })
}

#[cfg(feature = "v4l")]
fn find_cameras() -> Vec<CameraInfo> {
    fleetkey_v4l::camera::list_cameras()
}

#[cfg(not(feature = "v4l"))]
fn find_cameras() -> Vec<CameraInfo> {
    Vec::new()
}

fn camera_message(camera: &CameraInfo) -> Camera {
    Camera {
        path: camera.path.clone(),
        index: camera.index,
        name: camera.name.clone(),
        bus: camera.bus.clone(),
        driver: camera.driver.clone(),
        facing: camera.facing.to_string(),
        formats: camera.formats.iter().map(|f| f.fourcc.clone()).collect(),
        readable_formats: camera
            .formats
            .iter()
            .filter(|f| f.readable)
            .map(|f| f.fourcc.clone())
            .collect(),
        usable: camera.usable(),
    }
}

fn event(event: Event) -> ProgressItem {
    Ok(ScanProgress { event: Some(event) })
}

/// What to do with the code a scan found.
pub enum Then {
    /// Enroll the code's user with this PIN in this key store.
    Enroll { pin: Pin, backend: String },
    /// Activate the device with the code.
    Activate,
}

/// Scans, then enrolls; every step goes to `progress`, and a failure ends
/// it. When the client goes away, the scan stops and nothing is enrolled.
pub async fn scan_and_enroll(
    engine: Arc<Engine>,
    who: crate::engine::Requester,
    open: Opener,
    pin: Pin,
    backend: String,
    timeout: Duration,
    progress: mpsc::Sender<ProgressItem>,
) {
    scan_then(
        engine,
        who,
        open,
        Then::Enroll { pin, backend },
        timeout,
        progress,
    )
    .await;
}

/// Scans, then enrolls or activates with the code found; every step goes
/// to `progress`, and a failure ends it. When the client goes away, the
/// scan stops and nothing is done with the code.
pub async fn scan_then(
    engine: Arc<Engine>,
    who: crate::engine::Requester,
    open: Opener,
    then: Then,
    timeout: Duration,
    progress: mpsc::Sender<ProgressItem>,
) {
    let cancel = Arc::new(AtomicBool::new(false));
    let scan = {
        let progress = progress.clone();
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || {
            let options = ScanOptions {
                timeout,
                ..ScanOptions::default()
            };
            scan_for_enrollment(open, &Scanner::new(), options, &cancel.clone(), |e| {
                if progress.blocking_send(event(scan_event(e))).is_err() {
                    // The client hung up: stop looking.
                    cancel.store(true, Ordering::Relaxed);
                }
            })
        })
    };
    let found = match scan.await {
        Ok(Ok(found)) => found,
        Ok(Err(failure)) => {
            if !cancel.load(Ordering::Relaxed) {
                tracing::info!(reason = %failure.reason, "scan ended without an enrollment code");
            }
            let _ = progress.send(Err(failure.to_status())).await;
            return;
        }
        Err(e) => {
            let failure = Failure::new(Reason::Internal, format!("the scan thread failed: {e}"));
            let _ = progress.send(Err(failure.to_status())).await;
            return;
        }
    };
    tracing::info!(frames = found.scanned, "enrollment QR code read");
    let (user_hint, portal_url) = match EnrollmentPayload::parse_uri(&found.uri) {
        Ok(payload) => (payload.user_hint.unwrap_or_default(), payload.portal_url),
        Err(_) => (String::new(), String::new()),
    };
    let found_event = event(Event::CodeFound(CodeFound {
        user_hint,
        portal_url,
        frames_scanned: found.scanned,
    }));
    let working = match &then {
        Then::Enroll { .. } => Event::Enrolling(Enrolling {}),
        Then::Activate => Event::Activating(Activating {}),
    };
    if progress.send(found_event).await.is_err() || progress.send(event(working)).await.is_err() {
        tracing::info!("the client left before the code was used; nothing was done with it");
        return;
    }
    let answer = match then {
        Then::Enroll { pin, backend } => engine
            .add_user(
                who,
                &found.uri,
                pin,
                &backend,
                &fleetkey_plugin::CreateOptions::default(),
                false,
            )
            .await
            .map(|user| event(Event::Done(user))),
        Then::Activate => engine
            .activate(who, &found.uri)
            .await
            .map(|activated| event(Event::Activated(activated))),
    };
    let _ = progress
        .send(answer.unwrap_or_else(|failure| Err(failure.to_status())))
        .await;
}

fn scan_event(event: ScanEvent) -> Event {
    match event {
        ScanEvent::Opened(info) => Event::CameraOpened(CameraOpened {
            name: info.name,
            path: info.path,
            format: info.format,
            width: u32::try_from(info.width).unwrap_or(u32::MAX),
            height: u32::try_from(info.height).unwrap_or(u32::MAX),
        }),
        ScanEvent::Progress { scanned, dropped } => {
            Event::FramesScanned(FramesScanned { scanned, dropped })
        }
        ScanEvent::Foreign { text } => Event::ForeignCode(ForeignCode { text }),
    }
}

/// The scan time a request asks for, within bounds.
pub fn timeout(seconds: u32) -> Duration {
    if seconds == 0 {
        DEFAULT_TIMEOUT
    } else {
        Duration::from_secs(u64::from(seconds)).min(MAX_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(timeout(0), DEFAULT_TIMEOUT);
        assert_eq!(timeout(5), Duration::from_secs(5));
        assert_eq!(timeout(100_000), MAX_TIMEOUT);
    }

    #[test]
    fn requests_without_a_usable_source_are_refused_up_front() {
        assert_eq!(
            opener(None).err().map(|f| f.reason),
            Some(Reason::InvalidArgument)
        );
        let bad = opener(Some(Source::Image(b"not an image".to_vec())));
        assert_eq!(bad.err().map(|f| f.reason), Some(Reason::InvalidArgument));
        let selector = opener(Some(Source::Camera("front".into())));
        assert_eq!(
            selector.err().map(|f| f.reason),
            Some(Reason::CameraNotFound)
        );
    }

    #[cfg(not(feature = "v4l"))]
    #[test]
    fn without_the_v4l_feature_cameras_are_not_found() {
        let failure = opener(Some(Source::Camera(String::new())))
            .err()
            .map(|f| f.reason);
        assert_eq!(failure, Some(Reason::CameraNotFound));
    }

    #[cfg(feature = "v4l")]
    #[test]
    fn a_missing_camera_is_not_found_when_opened() {
        let open = opener(Some(Source::Camera("/dev/video-fleetkey-absent".into()))).unwrap();
        let failure = scan_for_enrollment(
            open,
            &Scanner::new(),
            ScanOptions::default(),
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap_err();
        assert_eq!(failure.reason, Reason::CameraNotFound);
    }
}
