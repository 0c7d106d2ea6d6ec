//! Strings from outside (URIs, QR payloads, portal messages, user names)
//! made safe to print on a terminal.
//!
//! A terminal obeys escape sequences in what it prints: ESC `]0;` sets
//! the window title, ESC `[2J` clears the screen, a carriage return lets
//! the rest of a line overwrite its start, and bidi overrides reorder what
//! a person reads. Every human output of fleetkey's programs passes
//! foreign strings through [`escape`], which writes each such character
//! as a visible `\u{..}` (and `\\` for a backslash, so an escaped string
//! cannot pass for another one). Machine output (`--json`) carries the
//! strings as they are; JSON's own escaping covers them there.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether printing `c` raw could change what the terminal shows beyond
/// the character itself.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c as u32,
            0x00AD
                | 0x061C
                | 0x180E
                | 0x200B..=0x200F
                | 0x2028..=0x202E
                | 0x2060..=0x206F
                | 0xFEFF
                | 0xFFF9..=0xFFFB
        )
}

/// `s` with every control, bidi and zero-width character (and the
/// backslash) written as an escape; borrowed when there is none.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || is_unsafe(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Like [`escape`], but keeps line breaks (for multi-line text such as a
/// PEM block or a hint that spans lines).
pub fn escape_multiline(s: &str) -> String {
    s.split('\n')
        .map(|line| escape(line).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(escape("alice (José)"), Cow::Borrowed(_)));
    }

    #[test]
    fn escapes_are_visible() {
        let hostile = "\u{1b}]0;pwned\u{7}\u{1b}[2Jalice";
        let shown = escape(hostile);
        assert!(!shown.chars().any(is_unsafe), "{shown}");
        assert_eq!(shown, "\\u{1b}]0;pwned\\u{7}\\u{1b}[2Jalice");
        assert_eq!(escape("a\u{202E}b\u{200B}"), "a\\u{202e}b\\u{200b}");
        assert_eq!(escape("x\r\ny"), "x\\r\\ny");
        // A backslash is doubled, so "\u{1b}" typed literally stays
        // distinguishable from an escaped ESC.
        assert_eq!(escape("\\u{1b}"), "\\\\u{1b}");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
    }

    #[test]
    fn multiline_keeps_line_breaks_only() {
        assert_eq!(escape_multiline("a\u{1b}\nb"), "a\\u{1b}\nb");
    }
}
