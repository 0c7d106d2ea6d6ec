//! `code issue --batch FILE`: add-user codes for many users at once.
//!
//! The file lists users as CSV (`name[,ttl_seconds]`, an optional
//! `name,ttl_seconds` header, `#` comments and blank lines ignored) or as
//! JSON lines (`{"user": NAME, "ttl": SECONDS}`); which one is told by the
//! first line that is not blank: JSON lines start with `{`, which no user
//! name can. Every name goes through the one user-name rule. The whole file
//! is checked before anything is issued, and the codes are issued in one
//! transaction: a bad line names its line number and nothing is issued.
//!
//! The output is one JSON line per user, `{"user", "code", "uri",
//! "expires_at"}`: the exact shape `fleetkeyctl user add-batch` reads.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use fleetkey_proto::user_name;
use serde::{Deserialize, Serialize};

/// Largest batch file read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Longest line of a batch file.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most users in one batch.
pub const MAX_USERS: usize = 10_000;

/// One user of a batch file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchUser {
    /// 1-based line number in the file.
    pub line: usize,
    /// The normalized name.
    pub user: String,
    /// Seconds until the code expires.
    pub ttl: i64,
}

/// Why a batch file was refused.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{path}: line {line}: {why}")]
    Line {
        path: String,
        line: usize,
        why: String,
    },
    #[error("{path}: {why}")]
    File { path: String, why: String },
}

/// One JSON line of the input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonUser {
    user: String,
    ttl: Option<i64>,
}

/// One JSON line of the output (what `fleetkeyctl user add-batch` reads).
#[derive(Debug, Serialize)]
pub struct BatchCode {
    pub user: String,
    /// Display form, `XXXX-XXXX-XXXX-XXXX`.
    pub code: String,
    /// The enrollment URI.
    pub uri: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

/// Reads a batch file, bounded by [`MAX_FILE_BYTES`].
pub fn read(path: &Path) -> Result<String, BatchError> {
    let shown = path.display().to_string();
    let file_error = |why: String| BatchError::File {
        path: shown.clone(),
        why,
    };
    let file = std::fs::File::open(path).map_err(|e| file_error(format!("cannot open it: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(file_error(format!(
            "the file is larger than {MAX_FILE_BYTES} bytes (16 MiB); split the batch"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..valid]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        BatchError::Line {
            path: shown.clone(),
            line,
            why: "not UTF-8 text".into(),
        }
    })
}

/// Parses and checks a whole batch file: every line, the TTLs (1 to
/// `max_ttl`, `default_ttl` when absent) and that no user appears twice.
pub fn parse(
    path: &str,
    text: &str,
    default_ttl: i64,
    max_ttl: i64,
) -> Result<Vec<BatchUser>, BatchError> {
    let bad = |line: usize, why: String| BatchError::Line {
        path: path.to_string(),
        line,
        why,
    };
    let mut users = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut json: Option<bool> = None;
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        if raw.len() > MAX_LINE_BYTES {
            return Err(bad(
                line,
                format!("the line is longer than {MAX_LINE_BYTES} bytes (64 KiB)"),
            ));
        }
        let content = raw.strip_suffix('\r').unwrap_or(raw).trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let is_json = *json.get_or_insert_with(|| content.starts_with('{'));
        let (name, ttl) = if is_json {
            let entry: JsonUser = serde_json::from_str(content).map_err(|e| {
                bad(
                    line,
                    format!("not a JSON line {{\"user\": NAME, \"ttl\": SECONDS}}: {e}"),
                )
            })?;
            (entry.user, entry.ttl)
        } else {
            let mut fields = content.split(',').map(str::trim);
            let name = fields.next().unwrap_or_default().to_string();
            let ttl = fields.next();
            if fields.next().is_some() {
                return Err(bad(
                    line,
                    "too many fields: a CSV line is name[,ttl_seconds]".into(),
                ));
            }
            if users.is_empty()
                && seen.is_empty()
                && name.eq_ignore_ascii_case("name")
                && ttl.is_none_or(|t| t.eq_ignore_ascii_case("ttl_seconds"))
            {
                // The header line.
                continue;
            }
            let ttl = match ttl {
                None | Some("") => None,
                Some(text) => Some(text.parse::<i64>().map_err(|_| {
                    bad(
                        line,
                        format!("the TTL {text:?} is not a whole number of seconds"),
                    )
                })?),
            };
            (name, ttl)
        };
        let user = user_name::normalize(&name)
            .map_err(|e| bad(line, format!("USER_NAME_INVALID: {e}")))?;
        let ttl = ttl.unwrap_or(default_ttl);
        if !(1..=max_ttl).contains(&ttl) {
            return Err(bad(
                line,
                format!("the TTL {ttl} is not between 1 and {max_ttl} seconds"),
            ));
        }
        if let Some(first) = seen.insert(user.clone(), line) {
            return Err(bad(
                line,
                format!("user {user} is already on line {first}; each user gets one code"),
            ));
        }
        if users.len() == MAX_USERS {
            return Err(bad(
                line,
                format!("a batch holds at most {MAX_USERS} users; split the file"),
            ));
        }
        users.push(BatchUser { line, user, ttl });
    }
    if users.is_empty() {
        return Err(BatchError::File {
            path: path.to_string(),
            why: "no users in the file".into(),
        });
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(text: &str) -> Result<Vec<BatchUser>, BatchError> {
        parse("f", text, 600, 3600)
    }

    #[test]
    fn csv_with_header_and_ttls() {
        let parsed = users("name,ttl_seconds\nalice\n\n# comment\nbob, 120\r\n").unwrap();
        assert_eq!(
            parsed,
            vec![
                BatchUser {
                    line: 2,
                    user: "alice".into(),
                    ttl: 600
                },
                BatchUser {
                    line: 5,
                    user: "bob".into(),
                    ttl: 120
                },
            ]
        );
    }

    #[test]
    fn jsonl_is_detected() {
        let parsed =
            users("{\"user\": \"ａｌｉｃｅ\", \"ttl\": 60}\n{\"user\": \"bob\"}\n").unwrap();
        assert_eq!(parsed[0].user, "alice");
        assert_eq!(parsed[0].ttl, 60);
        assert_eq!(parsed[1].ttl, 600);
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (text, line, needle) in [
            ("alice\nbad name!\n", 2, "USER_NAME_INVALID"),
            ("alice\nbob,soon\n", 2, "not a whole number"),
            ("alice\nbob,0\n", 2, "between 1 and 3600"),
            ("alice\nbob\nalice\n", 3, "already on line 1"),
            ("alice,1,2\n", 1, "too many fields"),
            ("{\"user\":\"a\"}\n{\"usr\":\"b\"}\n", 2, "not a JSON line"),
        ] {
            match users(text) {
                Err(BatchError::Line { line: l, why, .. }) => {
                    assert_eq!(l, line, "{text:?}");
                    assert!(why.contains(needle), "{why}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let long = format!("alice\n{}\n", "a".repeat(MAX_LINE_BYTES + 1));
        assert!(matches!(
            users(&long),
            Err(BatchError::Line { line: 2, .. })
        ));
        assert!(matches!(
            users("\n# nothing\n"),
            Err(BatchError::File { .. })
        ));
    }
}
