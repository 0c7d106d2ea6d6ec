//! What `user add-batch` reads: the batch file (JSON lines, one user a
//! line) and the PIN file (`user<TAB>pin` or `{"user", "pin"}` lines),
//! both bounded, and the PIN file refused unless only its owner, the
//! caller, can read it.
//!
//! Everything here is checked locally, without the daemon: a batch line's
//! JSON shape and its code's check character, a PIN file's mode, owner and
//! shape. A PIN never appears in an error message.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use fleetkey_proto::{EnrollmentInput, Failure, Reason, user_name};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::pin::Pin;

/// Largest batch or PIN file read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Longest line of a batch or PIN file.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One line of a batch file as written: the code or URI, and where to
/// enroll. Other fields (the portal's `user`, `expires_at`, ...) are
/// allowed; `user` is kept as a hint (see [`BatchLine::hint`]).
#[derive(Debug, Deserialize)]
struct LineJson {
    code: String,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    reader: Option<String>,
    #[serde(default)]
    slot: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// A batch line that passed the local checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLine {
    /// The code or URI, as given (trimmed).
    pub code: String,
    /// The code's canonical form: what tells two lines apart.
    pub compact: String,
    /// "" for the daemon's default key store.
    pub backend: String,
    pub reader: String,
    pub slot: String,
    /// Whom the line says it enrolls: its `user` field, else the URI's
    /// `u=`. Only a hint, used locally (which PIN, duplicates, whether a
    /// line whose code was used is done): the portal says whom a code
    /// enrolls.
    pub hint: Option<String>,
}

/// A file's lines: (1-based number, text), blank lines left out.
pub type Lines = Vec<(usize, String)>;

fn invalid(message: String) -> Failure {
    Failure::new(Reason::InvalidArgument, message)
}

/// Reads a file of at most [`MAX_FILE_BYTES`], split into lines of at most
/// [`MAX_LINE_BYTES`]; a longer line or one that is not UTF-8 refuses the
/// whole file, naming the line. `what` names the file in errors.
pub fn read_lines(file: std::fs::File, path: &Path, what: &str) -> Result<Lines, Failure> {
    let shown = path.display();
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(format!("cannot read the {what} {shown}: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(invalid(format!(
            "the {what} {shown} is larger than {MAX_FILE_BYTES} bytes (16 MiB); split it"
        ))
        .with_hint("Split the batch into files of at most 16 MiB and run each."));
    }
    let mut lines = Vec::new();
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = index + 1;
        if raw.len() > MAX_LINE_BYTES {
            return Err(invalid(format!(
                "line {line} of the {what} {shown} is longer than {MAX_LINE_BYTES} bytes (64 KiB)"
            ))
            .with_meta("line", line));
        }
        let text = std::str::from_utf8(raw).map_err(|_| {
            invalid(format!(
                "line {line} of the {what} {shown} is not UTF-8 text"
            ))
            .with_meta("line", line)
        })?;
        let text = text.strip_suffix('\r').unwrap_or(text);
        if !text.trim().is_empty() {
            lines.push((line, text.to_string()));
        }
    }
    Ok(lines)
}

/// Opens and reads the batch file.
pub fn read_batch(path: &Path) -> Result<Lines, Failure> {
    let file = std::fs::File::open(path).map_err(|e| {
        invalid(format!(
            "cannot open the batch file {}: {e}",
            path.display()
        ))
    })?;
    let lines = read_lines(file, path, "batch file")?;
    if lines.is_empty() {
        return Err(invalid(format!(
            "the batch file {} has no lines",
            path.display()
        )));
    }
    Ok(lines)
}

/// Checks one batch line locally: its JSON shape, the code's check
/// character (or the URI), the user hint's name.
pub fn parse_line(text: &str) -> Result<BatchLine, Failure> {
    let json: LineJson = serde_json::from_str(text).map_err(|e| {
        invalid(format!(
            "not a batch line {{\"code\": CODE_OR_URI, \"backend\"?, \"reader\"?, \"slot\"?}}: {e}"
        ))
    })?;
    let input = EnrollmentInput::parse(&json.code).map_err(Failure::from)?;
    let uri_hint = match &input {
        EnrollmentInput::Payload(payload) => payload.user_hint.clone(),
        EnrollmentInput::Code(_) => None,
    };
    let hint =
        match json.user.or(uri_hint) {
            Some(name) => Some(user_name::normalize(&name).map_err(|e| {
                Failure::new(Reason::UserNameInvalid, format!("the line's user: {e}"))
            })?),
            None => None,
        };
    Ok(BatchLine {
        code: json.code.trim().to_string(),
        compact: input.code().compact().to_string(),
        backend: json.backend.unwrap_or_default(),
        reader: json.reader.unwrap_or_default(),
        slot: json.slot.unwrap_or_default(),
        hint,
    })
}

/// The PINs of `--pins FILE`, by normalized user name.
#[derive(Default)]
pub struct PinFile {
    pins: HashMap<String, Pin>,
}

impl std::fmt::Debug for PinFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinFile")
            .field("users", &self.pins.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct PinJson {
    user: String,
    pin: String,
}

impl PinFile {
    /// Opens `--pins FILE`: refused unless it is a regular file of the
    /// caller's (effective uid) that nobody else may read or write (mode
    /// 0600 or stricter). The checks are made on the open file, so the
    /// file read is the file checked.
    pub fn open(path: &Path) -> Result<Self, Failure> {
        let shown = path.display();
        let file = std::fs::File::open(path)
            .map_err(|e| invalid(format!("cannot open the PIN file {shown}: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| invalid(format!("cannot read the PIN file {shown}: {e}")))?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let refuse = |why: String| {
            Failure::new(
                Reason::PermissionDenied,
                format!("the PIN file {shown} {why}"),
            )
            .with_hint(format!(
                "PINs must be readable by you alone: chown $(id -u) {shown}; chmod 600 {shown}"
            ))
        };
        if !meta.is_file() {
            return Err(refuse("is not a regular file".into()));
        }
        if meta.uid() != euid {
            return Err(refuse(format!(
                "belongs to uid {}, not to you (uid {euid})",
                meta.uid()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(refuse(format!(
                "has mode {:04o}: others may read or change it",
                meta.mode() & 0o7777
            )));
        }
        let lines = read_lines(file, path, "PIN file")?;
        Self::parse(&lines, &shown.to_string())
    }

    /// Parses the PIN file's lines: `user<TAB>pin` or `{"user", "pin"}`
    /// (a user name never starts with `{`).
    pub fn parse(lines: &Lines, shown: &str) -> Result<Self, Failure> {
        let mut pins = HashMap::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (line, text) in lines {
            let bad = |why: &str| {
                invalid(format!("line {line} of the PIN file {shown}: {why}"))
                    .with_hint(
                        "Write one user a line: NAME<TAB>PIN, or {\"user\": NAME, \"pin\": PIN}.",
                    )
                    .with_meta("line", line)
            };
            let (name, pin) = if text.starts_with('{') {
                // The parse error is not shown: it could quote the PIN.
                let entry: PinJson = serde_json::from_str(text)
                    .map_err(|_| bad("not a JSON line {\"user\", \"pin\"}"))?;
                (entry.user, Zeroizing::new(entry.pin))
            } else {
                let Some((name, pin)) = text.split_once('\t') else {
                    return Err(bad("no tab between the user and the PIN"));
                };
                (name.to_string(), Zeroizing::new(pin.to_string()))
            };
            let user =
                user_name::normalize(&name).map_err(|e| bad(&format!("USER_NAME_INVALID: {e}")))?;
            if let Some(first) = seen.insert(user.clone(), *line) {
                return Err(bad(&format!(
                    "user {user} already has a PIN on line {first}"
                )));
            }
            pins.insert(user, pin);
        }
        Ok(Self { pins })
    }

    pub fn get(&self, user: &str) -> Option<&Pin> {
        self.pins.get(user)
    }
}

/// Where a batch's PINs come from.
pub enum Pins {
    /// `--pins FILE`: one PIN per user.
    File(PinFile),
    /// `--pin-stdin`: one PIN for every user.
    One(Pin),
    /// Neither (`--dry-run` only).
    None,
}

impl Pins {
    /// The PIN of `user`; `None` when the PIN file has none for them.
    pub fn get(&self, user: &str) -> Option<&Pin> {
        match self {
            Pins::File(file) => file.get(user),
            Pins::One(pin) => Some(pin),
            Pins::None => None,
        }
    }
}

/// Checks a PIN against the length limits `status` reports (min, max; 0
/// for none) and the printable-ASCII rule every policy has. The daemon
/// checks again, with the digits-only rule if it has one.
pub fn check_pin(pin: &str, (min, max): (u32, u32)) -> Result<(), Failure> {
    let length = u32::try_from(pin.chars().count()).unwrap_or(u32::MAX);
    let rule = super::status::length_rule(min, max);
    if length < min || (max != 0 && length > max) {
        return Err(Failure::new(
            Reason::PinPolicy,
            format!("the PIN has {length} characters; the policy asks for {rule}"),
        ));
    }
    if !pin.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Failure::new(
            Reason::PinPolicy,
            "the PIN may contain only printable ASCII characters, without spaces",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const CODE: &str = "K7QF-9XWM-2HPD-TR4Q";

    fn valid_code() -> String {
        fleetkey_proto::ActivationCode::from_body(*b"K7QF9XWM2HPDTR4").to_string()
    }

    #[test]
    fn portal_lines_are_read_as_they_are() {
        let code = valid_code();
        let uri = format!(
            "fleetkey://enroll?v=1&c={code}&p=http%3A%2F%2F127.0.0.1%3A1&u=%EF%BD%82ob&e=1900000000"
        );
        let line = parse_line(&format!(
            "{{\"user\":\"alice\",\"code\":\"{code}\",\"uri\":\"x\",\"expires_at\":\"2030-01-01T00:00:00Z\"}}"
        ))
        .unwrap();
        assert_eq!(line.hint.as_deref(), Some("alice"));
        assert_eq!(line.compact, code.replace('-', ""));
        let line = parse_line(&format!("{{\"code\":\"{uri}\",\"backend\":\"soft\"}}")).unwrap();
        assert_eq!(
            line.hint.as_deref(),
            Some("bob"),
            "the URI's u=, normalized"
        );
        assert_eq!(line.backend, "soft");
    }

    #[test]
    fn bad_lines_say_why() {
        let mistyped = parse_line(&format!("{{\"code\":\"{CODE}X\"}}")).unwrap_err();
        assert_eq!(mistyped.reason, Reason::CodeMalformed);
        let mut wrong = valid_code().into_bytes();
        wrong[0] = if wrong[0] == b'A' { b'B' } else { b'A' };
        let wrong = String::from_utf8(wrong).unwrap();
        let failure = parse_line(&format!("{{\"code\":\"{wrong}\"}}")).unwrap_err();
        assert_eq!(failure.reason, Reason::CodeMistyped);
        let failure = parse_line("{\"kode\": 1}").unwrap_err();
        assert_eq!(failure.reason, Reason::InvalidArgument);
        let failure = parse_line("alice").unwrap_err();
        assert!(
            failure.message.starts_with("not a batch line"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn lines_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("batch");
        std::fs::write(&path, format!("a\n\n{}\n", "x".repeat(MAX_LINE_BYTES + 1))).unwrap();
        let failure = read_batch(&path).unwrap_err();
        assert!(
            failure.message.contains("line 3 of the batch file"),
            "{}",
            failure.message
        );
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(MAX_FILE_BYTES + 1).unwrap();
        let failure = read_batch(&path).unwrap_err();
        assert!(
            failure.message.contains("larger than"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn pin_files_are_private_and_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        std::fs::write(
            &path,
            "alice\t1234\n{\"user\": \"ｂｏｂ\", \"pin\": \"5678\"}\r\n\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let failure = PinFile::open(&path).unwrap_err();
        assert_eq!(failure.reason, Reason::PermissionDenied);
        assert!(failure.message.contains("mode 0644"), "{}", failure.message);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pins = PinFile::open(&path).unwrap();
        assert_eq!(pins.get("alice").unwrap().as_str(), "1234");
        assert_eq!(pins.get("bob").unwrap().as_str(), "5678");
        assert!(pins.get("carol").is_none());

        for text in [
            "alice 1234\n",
            "alice\t1\nalice\t2\n",
            "{\"user\":\"a\",\"pin\":\"SECRET\"\n",
        ] {
            std::fs::write(&path, text).unwrap();
            let failure = PinFile::open(&path).unwrap_err();
            assert_eq!(failure.reason, Reason::InvalidArgument, "{text:?}");
            assert!(!failure.message.contains("SECRET"), "{}", failure.message);
            assert!(failure.message.contains("line "), "{}", failure.message);
        }
    }

    #[test]
    fn pins_are_checked_against_the_limits() {
        assert!(check_pin("1234", (4, 64)).is_ok());
        assert_eq!(
            check_pin("123", (4, 64)).unwrap_err().reason,
            Reason::PinPolicy
        );
        assert!(check_pin("123456789", (4, 8)).is_err());
        assert!(check_pin("12 34", (0, 0)).is_err());
        assert!(check_pin("1", (0, 0)).is_ok());
    }
}
