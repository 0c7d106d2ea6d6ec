//! `fleetkeyctl user add CODE|URI`: enrolls a user with an add-user code,
//! typed, or read from a QR code by the daemon (`--camera`, `--qr-image`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use fleetkey_proto::daemon::add_user_scan_request::Source;
use fleetkey_proto::daemon::scan_progress::Event;
use fleetkey_proto::daemon::{self, AddUserRequest, AddUserScanRequest, GetStatusRequest, User};
use fleetkey_proto::terminal::escape;
use fleetkey_proto::{Failure, Reason};

use super::Context;
use super::activate::checked_enrollment_input;
use super::status::length_rule;
use super::user::{protection, user_json};
use crate::output;
use crate::pin::PinInput;

/// Enroll a user on this device with an add-user code or enrollment URI
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Enrolls the user an add-user code was issued for: creates a P-256 key for \
them in a key store (a TPM, a PIV smartcard or, for development only, \
software), protected by the PIN they choose, and registers its public key \
(with attestation) with the portal. The device must be activated first. \
Admins only.

CODE|URI is the code printed under the portal's QR code (any case, with or \
without hyphens and spaces), or the QR code's fleetkey://enroll?... URI. A \
mistyped code is caught before anything is contacted.

Instead of a code, --camera makes fleetkeyd scan the QR code with a camera \
(the first usable one, or DEVICE: /dev/videoN or N; see fleetkeyctl camera \
list), showing progress until the code is read or --timeout passes; \
--qr-image FILE reads it from a PNG or JPEG picture.

The PIN is asked twice on the terminal, without echo. With --pin-stdin it is \
the first line of standard input instead (asked once). It is never taken \
from the command line.",
    after_long_help = "\
Examples:
  # Interactive: asks for the PIN twice on the terminal
  fleetkeyctl user add K7QF-9XWM-2HPD-TR4Q

  # Scan the QR code shown by the portal with the first camera
  fleetkeyctl user add --camera

  # From the portal's PNG (fleetkey-portal code issue --qr-png FILE)
  fleetkeyctl user add --qr-image alice.png

  # In a script, into a given key store, JSON out
  printf '%s\\n' \"$PIN\" | fleetkeyctl --json user add --backend tpm --pin-stdin \\
      'fleetkey://enroll?v=1&c=K7QF-9XWM-2HPD-TR4Q&p=https%3A%2F%2Fportal.example.com'"
)]
pub struct UserAdd {
    /// The add-user code, or a fleetkey://enroll URI
    #[arg(value_name = "CODE|URI", required_unless_present_any = ["camera", "qr_image"], conflicts_with_all = ["camera", "qr_image"])]
    pub code: Option<String>,

    /// Scan the QR code with a camera: the first usable one, or DEVICE (/dev/videoN or N)
    #[arg(long, value_name = "DEVICE", num_args = 0..=1, default_missing_value = "", conflicts_with = "qr_image")]
    pub camera: Option<String>,

    /// Read the QR code from a PNG or JPEG image
    #[arg(long, value_name = "FILE")]
    pub qr_image: Option<PathBuf>,

    /// With --camera: seconds to scan before giving up (default 60)
    #[arg(long, value_name = "SECONDS", requires = "camera")]
    pub timeout: Option<u32>,

    /// Key store to create the key in (default: the daemon's default backend; see status)
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,

    /// Smartcard reader holding the card to enroll on (pcsc; default: the only card present)
    #[arg(long, value_name = "NAME")]
    pub reader: Option<String>,

    /// PIV key slot for the key (pcsc): 9a, 9c, 9d, 9e or 82 to 95 (default: from the config, 9a)
    #[arg(long, value_name = "SLOT")]
    pub slot: Option<String>,

    /// Read the PIN from the first line of standard input instead of the terminal
    #[arg(long)]
    pub pin_stdin: bool,
}

impl UserAdd {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let source = match (&self.code, &self.camera, &self.qr_image) {
            (Some(code), _, _) => return self.run_with_code(ctx, code).await,
            (None, Some(camera), _) => Source::Camera(camera.clone()),
            (None, None, Some(path)) => Source::Image(read_image(path)?),
            (None, None, None) => {
                return Err(Failure::new(
                    Reason::InvalidArgument,
                    "give a code, --camera or --qr-image",
                ));
            }
        };
        self.run_scan(ctx, source).await
    }

    async fn run_with_code(&self, ctx: &Context, code: &str) -> Result<(), Failure> {
        let code = checked_enrollment_input(code)?;
        let mut client = ctx.client().await?;
        let backend = self.backend.clone().unwrap_or_default();
        super::user_add_check::before_pin(ctx, &mut client, &code, &backend).await?;

        let mut pins = PinInput::from_flag(self.pin_stdin)?;
        // The URI's `u=` field is not shown: anyone can write it, and only
        // the portal says whom a code enrolls. The answer names that user.
        if matches!(pins, PinInput::Terminal)
            && let Ok(status) = client.get_status(GetStatusRequest {}).await
            && let Some(rule) = pin_rule(&status.into_inner(), &backend)
        {
            output::message(&format!("Choose a PIN: {rule}."));
        }
        let pin = pins.new_pin("PIN: ", "Repeat PIN: ", "PIN")?;

        let user = client
            .add_user(AddUserRequest {
                require_pin_change: false,
                code,
                pin: pin.to_string(),
                backend,
                reader: self.reader.clone().unwrap_or_default(),
                slot: self.slot.clone().unwrap_or_default(),
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        drop(pin);
        if ctx.json {
            output::json(&AddedJson {
                user: user_json(&user),
                notes: user.notes.clone(),
            })
        } else {
            for note in &user.notes {
                output::message(&format!("note: {}", escape(note)));
            }
            output::data(&added_text(&user))
        }
    }
}

/// `user add --json`: the user, and what the person should be told.
#[derive(Debug, serde::Serialize)]
pub struct AddedJson {
    #[serde(flatten)]
    pub user: super::user::UserJson,
    pub notes: Vec<String>,
}

impl UserAdd {
    /// Enrolls from a QR code the daemon reads, showing its progress.
    async fn run_scan(&self, ctx: &Context, source: Source) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let backend = self.backend.clone().unwrap_or_default();
        super::user_add_check::before_pin(ctx, &mut client, "", &backend).await?;
        let mut pins = PinInput::from_flag(self.pin_stdin)?;
        if matches!(pins, PinInput::Terminal)
            && let Ok(status) = client.get_status(GetStatusRequest {}).await
            && let Some(rule) = pin_rule(&status.into_inner(), &backend)
        {
            output::message(&format!("Choose a PIN: {rule}."));
        }
        let pin = pins.new_pin("PIN: ", "Repeat PIN: ", "PIN")?;
        let stream = client
            .add_user_scan(AddUserScanRequest {
                source: Some(source),
                pin: pin.to_string(),
                backend,
                timeout_seconds: self.timeout.unwrap_or(0),
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        drop(pin);
        let Event::Done(user) = follow_scan(ctx, stream).await? else {
            return Err(Failure::new(
                Reason::Internal,
                "fleetkeyd ended the scan with another answer than the user",
            ));
        };
        if ctx.json {
            output::json(&AddedJson {
                user: user_json(&user),
                notes: user.notes.clone(),
            })
        } else {
            for note in &user.notes {
                output::message(&format!("note: {}", escape(note)));
            }
            output::data(&added_text(&user))
        }
    }
}

/// Shows a scan's progress on stderr until its last message (the user
/// enrolled, or the device activated), which it returns.
pub async fn follow_scan(
    ctx: &Context,
    mut stream: tonic::Streaming<daemon::ScanProgress>,
) -> Result<Event, Failure> {
    let mut progress = Progress::new();
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => {
                progress.finish_line();
                return Err(Failure::new(
                    Reason::Internal,
                    "fleetkeyd ended the scan without an answer",
                ));
            }
            Err(status) => {
                progress.finish_line();
                return Err(ctx.rpc_failure(status));
            }
        };
        let Some(event) = message.event else { continue };
        if matches!(event, Event::Done(_) | Event::Activated(_)) {
            progress.finish_line();
            return Ok(event);
        }
        progress.show(&event);
    }
}

/// Reads `--qr-image`, checking locally that it is an image fleetkey reads.
pub fn read_image(path: &Path) -> Result<Vec<u8>, Failure> {
    read_and_decode_image(path).map(|(bytes, _)| bytes)
}

/// Reads an image file and decodes it to luma (once: `qr decode` scans
/// the frame this returns), with [`read_image`]'s checks and messages.
pub fn read_and_decode_image(path: &Path) -> Result<(Vec<u8>, fleetkey_v4l::LumaFrame), Failure> {
    let bad = |message: String| {
        Failure::new(Reason::InvalidArgument, message).with_hint(
            "Give a PNG or JPEG picture of the QR code (the portal's --qr-png file, or a screenshot).",
        )
    };
    let metadata =
        std::fs::metadata(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    if metadata.len() > fleetkey_v4l::image_file::MAX_IMAGE_BYTES as u64 {
        return Err(bad(format!(
            "{} is {} bytes; fleetkey reads images up to {} bytes",
            path.display(),
            metadata.len(),
            fleetkey_v4l::image_file::MAX_IMAGE_BYTES
        )));
    }
    let bytes =
        std::fs::read(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let frame = fleetkey_v4l::decode_image(&bytes)
        .map_err(|e| bad(format!("{} cannot be used: {e}", path.display())))?;
    Ok((bytes, frame))
}

/// Progress of a scan on stderr. Frame counts overwrite one line on a
/// terminal and are left out elsewhere; events get lines of their own.
struct Progress {
    terminal: bool,
    open_line: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            open_line: false,
        }
    }

    fn show(&mut self, event: &Event) {
        if let Event::FramesScanned(frames) = event {
            if self.terminal {
                use std::io::Write;
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{}", progress_text(event).unwrap_or_default());
                let _ = err.flush();
                self.open_line = frames.scanned > 0;
            }
            return;
        }
        if let Some(text) = progress_text(event) {
            self.finish_line();
            output::message(&text);
        }
    }

    fn finish_line(&mut self) {
        if self.open_line {
            output::message("");
            self.open_line = false;
        }
    }
}

/// The line shown for a progress event (`None` for the final answer).
pub fn progress_text(event: &Event) -> Option<String> {
    Some(match event {
        Event::CameraOpened(c) if c.name == "image" => {
            format!(
                "Reading the image ({} {}x{}).",
                escape(&c.format),
                c.width,
                c.height
            )
        }
        Event::CameraOpened(c) => format!(
            "Camera opened: {} ({}, {} {}x{}). Point it at the QR code.",
            escape(&c.name),
            escape(&c.path),
            escape(&c.format),
            c.width,
            c.height
        ),
        Event::FramesScanned(f) => format!(
            "Scanning: {} frames read{}",
            f.scanned,
            if f.dropped > 0 {
                format!(" ({} skipped while busy)", f.dropped)
            } else {
                String::new()
            }
        ),
        Event::ForeignCode(code) => format!(
            "warning: a QR code was read, but it is not a fleetkey enrollment code (QR_NOT_ENROLLMENT): \"{}\"; still scanning",
            shorten(&code.text)
        ),
        // The QR code's user hint is not shown: anyone can write it; the
        // final answer names the user the portal bound to the code.
        Event::CodeFound(found) => format!(
            "QR code found (after {} {}); the portal will say whom it enrolls.",
            found.frames_scanned,
            if found.frames_scanned == 1 {
                "frame"
            } else {
                "frames"
            }
        ),
        Event::Enrolling(_) => "Enrolling: registering the key with the portal...".to_string(),
        Event::Activating(_) => "Activating: registering the device with the portal...".to_string(),
        Event::Done(_) | Event::Activated(_) => return None,
    })
}

/// The first 60 characters of foreign text, escaped.
fn shorten(text: &str) -> String {
    if text.chars().count() > 60 {
        let head: String = text.chars().take(60).collect();
        format!("{}...", escape(&head))
    } else {
        escape(text).into_owned()
    }
}

/// The PIN length rule for enrolling into `backend` ("" = the default):
/// the daemon's policy narrowed by the key store's own limits.
pub fn pin_rule(status: &daemon::Status, backend: &str) -> Option<String> {
    let (min, max) = pin_limits(status, backend);
    (min != 0 || max != 0).then(|| length_rule(min, max))
}

/// The PIN length limits for enrolling into `backend` ("" = the default):
/// (min, max), 0 for none.
pub fn pin_limits(status: &daemon::Status, backend: &str) -> (u32, u32) {
    let policy = status.pin_policy.unwrap_or_default();
    let name = if backend.is_empty() {
        status.default_backend.as_str()
    } else {
        backend
    };
    let store = status.backends.iter().find(|b| b.name == name);
    let (store_min, store_max) = store.map_or((0, 0), |b| (b.pin_min_length, b.pin_max_length));
    let min = policy.min_length.max(store_min);
    let max = match (policy.max_length, store_max) {
        (0, m) | (m, 0) => m,
        (a, b) => a.min(b),
    };
    (min, max)
}

/// "Enrolled alice with the tpm key store (hardware-backed)."
pub fn added_text(user: &User) -> String {
    format!(
        "Enrolled {} with the {} key store ({}).",
        escape(&user.name),
        escape(&user.backend),
        protection(user.hardware_backed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subcommands::status::tests::sample_status;
    use crate::subcommands::user::tests::{alice, bob};

    #[test]
    fn sentences_say_plainly_what_protects_the_key() {
        assert_eq!(
            added_text(&alice()),
            "Enrolled alice with the tpm key store (hardware-backed)."
        );
        assert_eq!(
            added_text(&bob()),
            "Enrolled bob with the soft key store (software key, not hardware-backed)."
        );
    }

    #[test]
    fn add_json_has_the_enrollment_fields_only() {
        let value = serde_json::to_value(user_json(&alice())).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "user",
            "credential_id",
            "backend",
            "hardware_backed",
            "public_key_pem",
            "enrolled_at",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }

    #[test]
    fn progress_lines() {
        use fleetkey_proto::daemon::{CameraOpened, CodeFound, ForeignCode, FramesScanned};
        let opened = Event::CameraOpened(CameraOpened {
            name: "Integrated Camera".into(),
            path: "/dev/video0".into(),
            format: "YUYV".into(),
            width: 640,
            height: 480,
        });
        assert_eq!(
            progress_text(&opened).unwrap(),
            "Camera opened: Integrated Camera (/dev/video0, YUYV 640x480). Point it at the QR code."
        );
        let frames = Event::FramesScanned(FramesScanned {
            scanned: 42,
            dropped: 3,
        });
        assert_eq!(
            progress_text(&frames).unwrap(),
            "Scanning: 42 frames read (3 skipped while busy)"
        );
        let foreign = Event::ForeignCode(ForeignCode {
            text: "https://example.com".into(),
        });
        assert!(
            progress_text(&foreign)
                .unwrap()
                .contains("QR_NOT_ENROLLMENT")
        );
        let found = Event::CodeFound(CodeFound {
            user_hint: "alice".into(),
            portal_url: String::new(),
            frames_scanned: 7,
        });
        let shown = progress_text(&found).unwrap();
        assert!(!shown.contains("alice"), "{shown}");
        let hostile = Event::ForeignCode(ForeignCode {
            text: "\u{1b}]0;pwned\u{7}\u{1b}[2Jx".into(),
        });
        assert!(!progress_text(&hostile).unwrap().contains('\u{1b}'));
        let named = User {
            name: "mal\u{1b}[2Jlory".into(),
            ..alice()
        };
        assert!(!added_text(&named).contains('\u{1b}'));
        assert_eq!(progress_text(&Event::Done(alice())), None);
    }

    #[test]
    fn images_are_checked_locally() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read_image(&dir.path().join("absent.png")).unwrap_err();
        assert_eq!(missing.reason, Reason::InvalidArgument);
        let text = dir.path().join("code.txt");
        std::fs::write(&text, "K7QF-9XWM-2HPD-TR4Q").unwrap();
        let failure = read_image(&text).unwrap_err();
        assert!(
            failure.message.contains("not a PNG or JPEG"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn pin_rules_combine_policy_and_store() {
        let status = sample_status();
        assert_eq!(pin_rule(&status, "").as_deref(), Some("4 to 64 characters"));
        assert_eq!(
            pin_rule(&status, "pcsc").as_deref(),
            Some("6 to 8 characters")
        );
        assert_eq!(
            pin_rule(&status, "nope").as_deref(),
            Some("4 to 64 characters")
        );
        let open = daemon::Status::default();
        assert_eq!(pin_rule(&open, ""), None);
    }
}
