//! The scan loop: frames from a source, decoded as they come, until a
//! fleetkey enrollment code is read, the time is up, or the source ends.
//!
//! The source runs on its own thread and leaves only its latest frame in a
//! one-frame slot: when decoding is slower than the camera, older frames
//! are dropped (and counted), never queued, so what is decoded is always
//! what the camera sees now.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use fleetkey_proto::{EnrollmentPayload, Failure, Reason};

use crate::frame::LumaFrame;
use crate::scanner::Scanner;
use crate::source::{CaptureError, FrameSource, SourceInfo};

/// What happens during a scan, for progress messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEvent {
    /// The source is open and delivering.
    Opened(SourceInfo),
    /// Frames decoded so far, and frames dropped because decoding was busy.
    Progress { scanned: u64, dropped: u64 },
    /// A QR code that is not a fleetkey enrollment code (reported once per
    /// distinct text; scanning goes on).
    Foreign { text: String },
}

/// How long to scan and how often to report.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    pub timeout: Duration,
    pub progress_interval: Duration,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            progress_interval: Duration::from_millis(500),
        }
    }
}

/// The camera of a scan, for messages.
pub type Opener = Box<dyn FnOnce() -> Result<Box<dyn FrameSource>, CaptureError> + Send>;

/// What a scan read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The enrollment URI, as read.
    pub uri: String,
    pub scanned: u64,
    pub dropped: u64,
}

#[derive(Default)]
struct Slot {
    opened: Option<Result<SourceInfo, CaptureError>>,
    latest: Option<LumaFrame>,
    dropped: u64,
    /// The source ended: `Some(None)` cleanly, `Some(Some(e))` with an error.
    ended: Option<Option<CaptureError>>,
    stop: bool,
}

type Shared = Arc<(Mutex<Slot>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, Slot> {
    // A panic on the capture thread leaves the slot as it was: still usable.
    shared.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens a source (on its own thread, as V4L2 buffers must stay on the
/// thread that maps them) and scans its frames until a fleetkey
/// enrollment URI is read. `cancel` stops the scan early (the caller went
/// away). Events are reported through `on_event` as they happen.
pub fn scan_for_enrollment(
    open: Opener,
    scanner: &Scanner,
    options: ScanOptions,
    cancel: &AtomicBool,
    mut on_event: impl FnMut(ScanEvent),
) -> Result<Found, Failure> {
    let shared: Shared = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
    let capture = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("fleetkey-capture".into())
            .spawn(move || capture_loop(open, &shared))
            .map_err(|e| {
                Failure::new(
                    Reason::Internal,
                    format!("cannot start the capture thread: {e}"),
                )
            })?
    };
    let result = scan_loop(&shared, scanner, options, cancel, &mut on_event);
    lock(&shared).stop = true;
    shared.1.notify_all();
    // The source returns within its own frame timeout; waiting releases the
    // device before the next scan can ask for it.
    let _ = capture.join();
    result
}

fn capture_loop(open: Opener, shared: &Shared) {
    let mut source = match open() {
        Ok(source) => source,
        Err(e) => {
            lock(shared).opened = Some(Err(e));
            shared.1.notify_all();
            return;
        }
    };
    lock(shared).opened = Some(Ok(source.info()));
    shared.1.notify_all();
    loop {
        if lock(shared).stop {
            return;
        }
        let next = source.next_frame();
        let mut slot = lock(shared);
        match next {
            Ok(Some(frame)) => {
                if slot.latest.replace(frame).is_some() {
                    slot.dropped += 1;
                }
            }
            Ok(None) => {
                slot.ended = Some(None);
                shared.1.notify_all();
                return;
            }
            Err(e) => {
                slot.ended = Some(Some(e));
                shared.1.notify_all();
                return;
            }
        }
        shared.1.notify_all();
    }
}

/// How long to wait for a camera to open before calling it lost.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a wait wakes up to check `cancel`.
const TICK: Duration = Duration::from_millis(100);

fn scan_loop(
    shared: &Shared,
    scanner: &Scanner,
    options: ScanOptions,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(ScanEvent),
) -> Result<Found, Failure> {
    let started = Instant::now();
    let opened = wait_for(
        shared,
        cancel,
        started + OPEN_TIMEOUT.min(options.timeout),
        |s| s.opened.take(),
    )?;
    let info = match opened {
        Some(Ok(info)) => info,
        Some(Err(e)) => return Err(capture_failure(&e)),
        None => {
            return Err(Failure::new(
                Reason::CameraLost,
                "the camera did not open in time",
            ));
        }
    };
    let is_image = info.name == "image";
    on_event(ScanEvent::Opened(info));

    let deadline = started + options.timeout;
    let mut scanned = 0u64;
    let mut foreign: HashSet<String> = HashSet::new();
    let mut last_progress = Instant::now();
    loop {
        // A camera always has a new frame ready: the deadline and the
        // cancel flag are checked here too, not only while waiting.
        if Instant::now() >= deadline {
            return Err(not_found(scanned, &foreign, options.timeout, is_image));
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Failure::new(Reason::Internal, "the scan was cancelled"));
        }
        let next = wait_for(shared, cancel, deadline, |s| {
            if let Some(frame) = s.latest.take() {
                Some(Ok((frame, s.dropped)))
            } else {
                s.ended.take().map(Err)
            }
        })?;
        let dropped = match next {
            None => {
                return Err(not_found(scanned, &foreign, options.timeout, is_image));
            }
            Some(Err(None)) => {
                return Err(not_found(scanned, &foreign, options.timeout, is_image));
            }
            Some(Err(Some(e))) => return Err(capture_failure(&e)),
            Some(Ok((frame, dropped))) => {
                scanned += 1;
                // An image gets every pass; camera frames share them out.
                let texts = if is_image {
                    scanner.scan(&frame)
                } else {
                    scanner.scan_live(&frame, scanned)
                };
                for text in texts {
                    if is_fleetkey(&text) {
                        EnrollmentPayload::parse_uri(&text)?;
                        return Ok(Found {
                            uri: text,
                            scanned,
                            dropped,
                        });
                    }
                    if foreign.insert(text.clone()) {
                        on_event(ScanEvent::Foreign { text });
                    }
                }
                dropped
            }
        };
        if last_progress.elapsed() >= options.progress_interval {
            last_progress = Instant::now();
            on_event(ScanEvent::Progress { scanned, dropped });
        }
    }
}

/// Waits until `take` finds something in the slot; `None` at the deadline.
fn wait_for<T>(
    shared: &Shared,
    cancel: &AtomicBool,
    deadline: Instant,
    mut take: impl FnMut(&mut Slot) -> Option<T>,
) -> Result<Option<T>, Failure> {
    let mut slot = lock(shared);
    loop {
        if let Some(value) = take(&mut slot) {
            return Ok(Some(value));
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(Failure::new(Reason::Internal, "the scan was cancelled"));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let wait = (deadline - now).min(TICK);
        slot = shared
            .1
            .wait_timeout(slot, wait)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

/// Whether a QR code's text is meant for fleetkey (even if malformed: a
/// broken fleetkey code is reported as such, not as a foreign code).
pub fn is_fleetkey(text: &str) -> bool {
    text.trim()
        .get(..9)
        .is_some_and(|head| head.eq_ignore_ascii_case("fleetkey:"))
}

/// Hint for a scan that read nothing.
pub const CAMERA_HINT: &str = "Hold the code steady in front of the camera: move it closer or farther until it fills about a third of the picture, light it evenly without glare on the screen, or try another camera (fleetkeyctl camera list). You can also type the code printed under the QR code: fleetkeyctl user add CODE.";

/// Hint for an image that holds no readable code.
pub const IMAGE_HINT: &str = "Use a sharper picture with the whole QR code and its white border in view (a screenshot of the portal works best), or type the code printed under the QR code: fleetkeyctl user add CODE.";

fn not_found(scanned: u64, foreign: &HashSet<String>, timeout: Duration, image: bool) -> Failure {
    if image && let Some(text) = foreign.iter().next() {
        return Failure::new(
            Reason::QrNotEnrollment,
            format!(
                "the image holds a QR code, but not a fleetkey enrollment code (it reads \"{}\")",
                shorten(text)
            ),
        );
    }
    let mut message = if image {
        "no QR code could be read in the image".to_string()
    } else {
        format!(
            "no fleetkey QR code was read in {} s ({scanned} frames scanned)",
            timeout.as_secs()
        )
    };
    if !foreign.is_empty() {
        message.push_str("; only QR codes that are not fleetkey enrollment codes were seen");
    }
    Failure::new(Reason::QrNotFound, message).with_hint(if image {
        IMAGE_HINT
    } else {
        CAMERA_HINT
    })
}

/// A foreign code's text, cut for a message.
pub fn shorten(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() > 60 {
        format!("{}...", clean.chars().take(60).collect::<String>())
    } else {
        clean
    }
}

/// The failure a capture error is reported as.
pub fn capture_failure(error: &CaptureError) -> Failure {
    let message = error.to_string();
    match error {
        CaptureError::NotFound(_) => Failure::new(Reason::CameraNotFound, message),
        CaptureError::NoAccess { .. } => Failure::new(Reason::CameraNotFound, message).with_hint(
            "fleetkeyd's user needs read and write access to the camera (usually: membership of the video group).",
        ),
        CaptureError::NoUsableFormat { .. } => Failure::new(Reason::CameraNotFound, message)
            .with_hint("Use another camera (fleetkeyctl camera list), or --qr-image with a picture of the code."),
        CaptureError::NotBuilt => Failure::new(Reason::CameraNotFound, message).with_hint(
            "Enroll from a picture of the code (--qr-image FILE) or type the code; or install a fleetkeyd built with the v4l feature.",
        ),
        CaptureError::Busy { .. } => Failure::new(Reason::CameraBusy, message),
        CaptureError::Lost { .. } | CaptureError::Frame(_) => {
            Failure::new(Reason::CameraLost, message)
        }
        CaptureError::Image(_) => Failure::new(Reason::InvalidArgument, message).with_hint(
            "Give a PNG or JPEG picture of the QR code (the portal's --qr-png file, or a screenshot).",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::source::ImageSource;
    use crate::testset::Expected;

    fn sample(kind: &str) -> (LumaFrame, Expected) {
        let s = crate::testset::sample(kind).unwrap();
        (s.frame, s.expected)
    }

    fn image_opener(frame: LumaFrame) -> Opener {
        Box::new(
            move || Ok(Box::new(ImageSource::from_frame(frame, "PNG")) as Box<dyn FrameSource>),
        )
    }

    /// A camera that repeats a frame forever, `delay` apart, and fails
    /// after `fail_after` frames when given.
    struct FakeCamera {
        frame: LumaFrame,
        delay: Duration,
        fail_after: Option<usize>,
        delivered: Arc<AtomicUsize>,
    }

    impl FrameSource for FakeCamera {
        fn info(&self) -> SourceInfo {
            SourceInfo {
                name: "Fake Camera".into(),
                path: "/dev/video0".into(),
                format: "YUYV".into(),
                width: 640,
                height: 480,
            }
        }
        fn next_frame(&mut self) -> Result<Option<LumaFrame>, CaptureError> {
            std::thread::sleep(self.delay);
            let n = self.delivered.fetch_add(1, Ordering::Relaxed);
            if self.fail_after.is_some_and(|limit| n >= limit) {
                return Err(CaptureError::Lost {
                    device: "/dev/video0".into(),
                    detail: "unplugged".into(),
                });
            }
            Ok(Some(self.frame.clone()))
        }
    }

    fn camera(
        frame: LumaFrame,
        delay_ms: u64,
        fail_after: Option<usize>,
    ) -> (Opener, Arc<AtomicUsize>) {
        let delivered = Arc::new(AtomicUsize::new(0));
        let counter = delivered.clone();
        let opener: Opener = Box::new(move || {
            Ok(Box::new(FakeCamera {
                frame,
                delay: Duration::from_millis(delay_ms),
                fail_after,
                delivered: counter,
            }) as Box<dyn FrameSource>)
        });
        (opener, delivered)
    }

    fn options(timeout_ms: u64) -> ScanOptions {
        ScanOptions {
            timeout: Duration::from_millis(timeout_ms),
            progress_interval: Duration::from_millis(50),
        }
    }

    #[test]
    fn an_image_with_an_enrollment_code_is_read() {
        let (frame, expected) = sample("fleetkey-clean");
        let mut events = Vec::new();
        let found = scan_for_enrollment(
            image_opener(frame),
            &Scanner::new(),
            options(5000),
            &AtomicBool::new(false),
            |e| events.push(e),
        )
        .unwrap();
        assert_eq!(Expected::Fleetkey(found.uri), expected);
        assert!(matches!(&events[0], ScanEvent::Opened(info) if info.name == "image"));
    }

    #[test]
    fn an_image_with_a_foreign_code_is_not_enrollment() {
        let (frame, _) = sample("foreign-0");
        let failure = scan_for_enrollment(
            image_opener(frame),
            &Scanner::new(),
            options(5000),
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap_err();
        assert_eq!(failure.reason, Reason::QrNotEnrollment);
        assert!(
            failure.message.contains("https://example.com/login"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn an_image_without_a_code_is_not_found_with_hints() {
        let (frame, _) = sample("nothing-0");
        let failure = scan_for_enrollment(
            image_opener(frame),
            &Scanner::new(),
            options(5000),
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap_err();
        assert_eq!(failure.reason, Reason::QrNotFound);
        assert_eq!(failure.hint, IMAGE_HINT);
    }

    #[test]
    fn a_camera_on_a_foreign_code_reports_it_once_then_times_out() {
        let (frame, _) = sample("foreign-1");
        let (opener, _) = camera(frame, 5, None);
        let mut events = Vec::new();
        let failure = scan_for_enrollment(
            opener,
            &Scanner::new(),
            options(600),
            &AtomicBool::new(false),
            |e| events.push(e),
        )
        .unwrap_err();
        assert_eq!(failure.reason, Reason::QrNotFound);
        assert_eq!(failure.hint, CAMERA_HINT);
        for word in [
            "closer or farther",
            "light",
            "another camera",
            "type the code",
        ] {
            assert!(failure.hint.contains(word), "hint lacks {word}");
        }
        let foreign: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, ScanEvent::Foreign { .. }))
            .collect();
        assert_eq!(foreign.len(), 1, "{events:?}");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ScanEvent::Progress { scanned, .. } if *scanned > 1))
        );
    }

    #[test]
    fn frames_are_dropped_not_queued_when_decoding_is_slower() {
        let (frame, _) = sample("nothing-1");
        // The camera is far faster than the scanner on a code-free frame.
        let (opener, delivered) = camera(frame, 1, None);
        let mut last = (0, 0);
        let options = ScanOptions {
            timeout: Duration::from_millis(1500),
            progress_interval: Duration::ZERO,
        };
        let failure = scan_for_enrollment(
            opener,
            &Scanner::new(),
            options,
            &AtomicBool::new(false),
            |e| {
                if let ScanEvent::Progress { scanned, dropped } = e {
                    last = (scanned, dropped);
                }
            },
        )
        .unwrap_err();
        assert_eq!(failure.reason, Reason::QrNotFound);
        let (scanned, dropped) = last;
        assert!(scanned >= 2, "too few frames scanned: {last:?}");
        assert!(dropped > 0, "nothing dropped: {last:?}");
        assert!(scanned as usize + dropped as usize <= delivered.load(Ordering::Relaxed));
    }

    #[test]
    fn a_camera_found_after_some_frames_gives_the_payload() {
        let (frame, expected) = sample("fleetkey-mirrored");
        let (opener, _) = camera(frame, 30, None);
        let found = scan_for_enrollment(
            opener,
            &Scanner::new(),
            options(5000),
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap();
        assert_eq!(Expected::Fleetkey(found.uri), expected);
    }

    #[test]
    fn camera_failures_have_their_reasons() {
        let (frame, _) = sample("nothing-0");
        let (opener, _) = camera(frame, 2, Some(3));
        let failure = scan_for_enrollment(
            opener,
            &Scanner::new(),
            options(5000),
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap_err();
        assert_eq!(failure.reason, Reason::CameraLost);

        for (error, reason) in [
            (
                CaptureError::Busy {
                    device: "/dev/video0".into(),
                },
                Reason::CameraBusy,
            ),
            (
                CaptureError::NotFound("no camera".into()),
                Reason::CameraNotFound,
            ),
            (CaptureError::NotBuilt, Reason::CameraNotFound),
        ] {
            let opener: Opener = Box::new(move || Err(error));
            let failure = scan_for_enrollment(
                opener,
                &Scanner::new(),
                options(5000),
                &AtomicBool::new(false),
                |_| {},
            )
            .unwrap_err();
            assert_eq!(failure.reason, reason);
            assert!(!failure.hint.is_empty());
        }
    }

    #[test]
    fn a_camera_that_never_opens_does_not_hang() {
        let opener: Opener = Box::new(|| {
            std::thread::sleep(Duration::from_millis(700));
            Err(CaptureError::NotFound("late".into()))
        });
        let started = Instant::now();
        let failure = scan_for_enrollment(
            opener,
            &Scanner::new(),
            options(300),
            &AtomicBool::new(false),
            |_| {},
        )
        .unwrap_err();
        assert_eq!(failure.reason, Reason::CameraLost);
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn cancelling_stops_the_scan() {
        let (frame, _) = sample("nothing-2");
        let (opener, _) = camera(frame, 5, None);
        let cancel = AtomicBool::new(true);
        let started = Instant::now();
        assert!(
            scan_for_enrollment(opener, &Scanner::new(), options(10_000), &cancel, |_| {}).is_err()
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn malformed_fleetkey_codes_are_payload_errors() {
        assert!(is_fleetkey("FLEETKEY://enroll?v=1"));
        assert!(!is_fleetkey("https://fleetkey.example"));
        assert_eq!(shorten(&"x".repeat(100)).len(), 63);
        assert_eq!(shorten("a\nb"), "a b");
    }
}
