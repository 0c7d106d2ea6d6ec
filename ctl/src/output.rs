//! Printing: data on stdout, messages on stderr, failures as text or JSON.
//!
//! Nothing here panics when a stream is closed: `fleetkeyctl user list |
//! head -1` simply stops writing.

use std::collections::BTreeMap;
use std::io::{self, Write};

use fleetkey_proto::terminal::escape;
use fleetkey_proto::{Failure, Reason};
use serde::Serialize;
use serde_json::Value;

/// Writes `text` on stdout, adding a final newline when it lacks one.
pub fn data(text: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    let result = out
        .write_all(text.as_bytes())
        .and_then(|()| {
            if text.ends_with('\n') {
                Ok(())
            } else {
                out.write_all(b"\n")
            }
        })
        .and_then(|()| out.flush());
    match result {
        Ok(()) => Ok(()),
        // Whoever read our output has gone away: nothing is left to tell.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::new(
            Reason::Internal,
            format!("cannot write to standard output: {e}"),
        )
        .with_hint("Check where standard output goes (a full disk, a closed file).")),
    }
}

/// Prints `value` as a JSON document on stdout.
pub fn json<T: Serialize>(value: &T) -> Result<(), Failure> {
    data(&to_json(value)?)
}

/// The JSON text of `value`. The whitespace is not part of the contract.
pub fn to_json<T: Serialize>(value: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(value).map_err(|e| {
        Failure::new(
            Reason::Internal,
            format!("cannot encode the JSON output: {e}"),
        )
        .with_hint("This is a fleetkeyctl bug; please report it.")
    })
}

/// A message for the person on stderr (a write failure is ignored: there is
/// nowhere left to report it).
pub fn message(text: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// A warning on stderr: `warning: TEXT`.
pub fn warn(text: &str) {
    message(&format!("warning: {text}"));
}

/// `{"error": {...}}`, the JSON form of a failure.
#[derive(Debug, Serialize)]
pub struct ErrorDocument {
    pub error: ErrorBody,
}

/// The failure's reason, message and hint, then its metadata keys
/// (`tries_left` as a number).
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub reason: String,
    pub message: String,
    pub hint: String,
    #[serde(flatten)]
    pub details: BTreeMap<String, Value>,
}

/// Metadata keys whose values are numbers in the JSON form.
const NUMERIC_METADATA: &[&str] = &["tries_left", "server_uid", "line"];

/// Shapes a failure for `--json`.
pub fn failure_json(failure: &Failure) -> ErrorDocument {
    let details = failure
        .metadata
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "reason" | "message" | "hint"))
        .map(|(key, value)| {
            let json = match value.parse::<u64>() {
                Ok(n) if NUMERIC_METADATA.contains(&key.as_str()) => Value::from(n),
                _ => Value::from(value.as_str()),
            };
            (key.clone(), json)
        })
        .collect();
    ErrorDocument {
        error: ErrorBody {
            reason: failure.reason.as_str().to_string(),
            message: failure.message.clone(),
            hint: failure.hint.clone(),
            details,
        },
    }
}

/// The text form of a failure, for stderr:
///
/// ```text
/// error: MESSAGE (REASON)
/// hint: HINT
/// tries left: N
/// ```
///
/// Every metadata key is shown as a `key: value` line, underscores read as
/// spaces. Message, hint and metadata come from the daemon and, through
/// it, from the portal: every part is escaped for the terminal.
pub fn failure_text(failure: &Failure) -> String {
    let mut text = format!("error: {} ({})\n", escape(&failure.message), failure.reason);
    if !failure.hint.is_empty() {
        text.push_str(&format!("hint: {}\n", escape(&failure.hint)));
    }
    for (key, value) in &failure.metadata {
        text.push_str(&format!(
            "{}: {}\n",
            escape(&key.replace('_', " ")),
            escape(value)
        ));
    }
    text
}

/// Reports a failure: JSON on stdout with `--json`, text on stderr without.
pub fn print_failure(failure: &Failure, json_mode: bool) {
    if json_mode
        && let Ok(text) = to_json(&failure_json(failure))
        && data(&text).is_ok()
    {
        return;
    }
    let mut err = io::stderr().lock();
    let _ = err.write_all(failure_text(failure).as_bytes());
}

/// Left-aligned columns separated by two spaces; the last column is not
/// padded. Every cell is escaped for the terminal (cells hold names and
/// text from the daemon, the portal and the hardware).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape(cell).into_owned()).collect())
        .collect();
    let rows = rows.as_slice();
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header_cells: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(columns) {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// "yes" or "no".
pub fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failure_json_shape() {
        let failure = Failure::new(Reason::PinWrong, "wrong PIN for alice")
            .with_meta("tries_left", 2)
            .with_meta("backend", "tpm");
        let value = serde_json::to_value(failure_json(&failure)).unwrap();
        assert_eq!(
            value,
            json!({"error": {
                "reason": "PIN_WRONG",
                "message": "wrong PIN for alice",
                "hint": Reason::PinWrong.default_hint(),
                "tries_left": 2,
                "backend": "tpm",
            }})
        );
    }

    #[test]
    fn failure_json_without_metadata_and_odd_values() {
        let failure = Failure::new(Reason::CodeMistyped, "mistyped")
            .with_hint("compare")
            .with_meta("tries_left", "many")
            .with_meta("reason", "shadowed");
        let value = serde_json::to_value(failure_json(&failure)).unwrap();
        assert_eq!(
            value,
            json!({"error": {
                "reason": "CODE_MISTYPED",
                "message": "mistyped",
                "hint": "compare",
                "tries_left": "many",
            }})
        );
    }

    #[test]
    fn failure_text_shape() {
        let failure = Failure::new(Reason::PinWrong, "wrong PIN for alice")
            .with_hint("Check the PIN.")
            .with_meta("tries_left", 2);
        assert_eq!(
            failure_text(&failure),
            "error: wrong PIN for alice (PIN_WRONG)\nhint: Check the PIN.\ntries left: 2\n"
        );
        let bare = Failure::new(Reason::Internal, "boom").with_hint("");
        assert_eq!(failure_text(&bare), "error: boom (INTERNAL)\n");
    }

    #[test]
    fn failure_text_escapes_foreign_text() {
        let failure = Failure::new(Reason::PortalError, "portal says \u{1b}]0;pwned\u{7}")
            .with_hint("\u{1b}[2Jsee")
            .with_meta("portal", "http://x\r\n");
        let text = failure_text(&failure);
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
        assert!(text.contains("\\u{1b}]0;pwned\\u{7}"), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn table_cells_are_escaped() {
        let rows = vec![vec!["\u{1b}[2Jx".to_string(), "ok".to_string()]];
        let text = table(&["A", "B"], &rows);
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }

    #[test]
    fn exit_codes_follow_reasons() {
        for (reason, code) in [
            (Reason::CodeMistyped, 11),
            (Reason::PinWrong, 31),
            (Reason::DaemonUnreachable, 60),
            (Reason::InvalidArgument, 64),
        ] {
            assert_eq!(Failure::new(reason, "x").reason.exit_code(), code);
        }
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["alice".to_string(), "tpm".to_string(), "yes".to_string()],
            vec!["bob".to_string(), "soft".to_string(), "no".to_string()],
        ];
        assert_eq!(
            table(&["USER", "BACKEND", "HW"], &rows),
            "USER   BACKEND  HW\nalice  tpm      yes\nbob    soft     no\n"
        );
    }
}
