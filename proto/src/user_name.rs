//! The one rule for user names, enforced alike by the portal (when it
//! issues a code) and the daemon (when a code names a user), and written
//! down in `docs/user-names.md`.
//!
//! A name is what a person reads in `user list` and on the portal, so two
//! names that look the same must be the same name. The rule:
//!
//! 1. The name is normalized to Unicode NFKC (so a full-width `ａｌｉｃｅ`,
//!    a ligature or a decomposed accent becomes the ordinary form); the
//!    normalized form is what is stored, compared and shown.
//! 2. It is 1 to [`MAX_CHARS`] characters and at most [`MAX_BYTES`] bytes
//!    of UTF-8 after normalization.
//! 3. It holds no control character (C0, DEL, C1), no format character
//!    (Unicode category Cf: bidi overrides and isolates, zero-width space,
//!    joiners, the BOM, soft hyphen, ...), no line or paragraph separator,
//!    no variation selector or invisible filler, no private-use or
//!    unassigned-surrogate code point, and no whitespace but the plain
//!    space (U+0020).
//! 4. It neither starts nor ends with a space, and has no two spaces in a
//!    row.
//! 5. Besides letters and digits of any script, it holds only the plain
//!    space and the punctuation `. - _ @ ' +` (so an e-mail-style name or
//!    "Jean-Luc O'Neill" is a name; "bad name!", an emoji or a symbol is
//!    not).
//!
//! Case is kept and matters (`Alice` and `alice` are two names), as Unix
//! user names do.

use unicode_normalization::UnicodeNormalization;

/// Longest name, in characters after normalization.
pub const MAX_CHARS: usize = 64;
/// Longest name, in bytes of UTF-8 after normalization.
pub const MAX_BYTES: usize = 256;

/// Why a user name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserNameError {
    #[error("the user name is empty")]
    Empty,
    #[error("the user name is longer than {MAX_CHARS} characters ({MAX_BYTES} bytes)")]
    TooLong,
    #[error("the user name contains the invisible or control character U+{0:04X}")]
    Forbidden(u32),
    #[error("the user name contains whitespace other than a plain space (U+{0:04X})")]
    Whitespace(u32),
    #[error("the user name starts or ends with a space, or has two spaces in a row")]
    Spaces,
    #[error(
        "the user name contains '{0}'; names hold letters, digits, spaces and . - _ @ ' + only"
    )]
    Disallowed(char),
}

/// Checks a user name against the rule and returns its normalized form.
///
/// Work is bounded: input longer than a few times the limit is refused
/// before it is normalized.
pub fn normalize(raw: &str) -> Result<String, UserNameError> {
    if raw.is_empty() {
        return Err(UserNameError::Empty);
    }
    // NFKC can expand a character into several (at most 18), and shrink
    // several into one, so a generous bound on the raw input keeps the
    // work small without refusing a name that would normalize short.
    if raw.len() > MAX_BYTES * 4 {
        return Err(UserNameError::TooLong);
    }
    for c in raw.chars() {
        check_char(c)?;
    }
    let name: String = raw.nfkc().collect();
    if name.chars().count() > MAX_CHARS || name.len() > MAX_BYTES {
        return Err(UserNameError::TooLong);
    }
    // Normalization can itself produce characters worth refusing (e.g. a
    // compatibility character that decomposes to a space).
    for c in name.chars() {
        check_char(c)?;
    }
    if name.starts_with(' ') || name.ends_with(' ') || name.contains("  ") {
        return Err(UserNameError::Spaces);
    }
    Ok(name)
}

/// Whether `raw` is a valid name that is already in normalized form.
pub fn is_normalized(raw: &str) -> bool {
    normalize(raw).is_ok_and(|name| name == raw)
}

fn check_char(c: char) -> Result<(), UserNameError> {
    if c == ' ' {
        return Ok(());
    }
    if c.is_control() || is_invisible(c) {
        return Err(UserNameError::Forbidden(c as u32));
    }
    if c.is_whitespace() {
        return Err(UserNameError::Whitespace(c as u32));
    }
    if c.is_alphanumeric() || PUNCTUATION.contains(&c) || is_combining_mark(c) {
        return Ok(());
    }
    Err(UserNameError::Disallowed(c))
}

/// The punctuation a name may hold besides letters, digits and spaces.
pub const PUNCTUATION: &[char] = &['.', '-', '_', '@', '\'', '+'];

/// Combining marks that scripts need inside words (vowel signs of Indic
/// scripts and the like) and that NFKC does not fold into a letter.
fn is_combining_mark(c: char) -> bool {
    matches!(
        c as u32,
        0x0300..=0x036F | 0x0483..=0x0489 | 0x0591..=0x05BD | 0x0610..=0x061A
            | 0x064B..=0x065F | 0x0900..=0x0DFF | 0x0E31..=0x0E3A | 0x0E47..=0x0E4E
            | 0x0EB1..=0x0EBC | 0x0EC8..=0x0ECD | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF
            | 0x20D0..=0x20FF | 0x302A..=0x302F | 0x3099..=0x309A | 0xFE20..=0xFE2F
    )
}

/// Format characters (category Cf), separators, variation selectors,
/// invisible fillers and private-use code points.
fn is_invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD                      // soft hyphen
        | 0x034F                    // combining grapheme joiner
        | 0x0600..=0x0605           // Arabic number signs
        | 0x061C                    // Arabic letter mark
        | 0x06DD
        | 0x070F
        | 0x0890..=0x0891
        | 0x08E2
        | 0x115F..=0x1160           // Hangul fillers
        | 0x17B4..=0x17B5           // Khmer inherent vowels (invisible)
        | 0x180B..=0x180F           // Mongolian selectors and vowel separator
        | 0x200B..=0x200F           // zero-width space, ZWNJ, ZWJ, LRM, RLM
        | 0x2028..=0x202E           // separators, bidi embeddings and overrides
        | 0x2060..=0x206F           // word joiner, invisible operators, bidi isolates
        | 0x3164                    // Hangul filler
        | 0xE000..=0xF8FF           // private use
        | 0xFE00..=0xFE0F           // variation selectors
        | 0xFEFF                    // byte order mark / ZWNBSP
        | 0xFFA0                    // half-width Hangul filler
        | 0xFFF0..=0xFFFB           // unassigned specials, interlinear annotation
        | 0x110BD
        | 0x110CD
        | 0x13430..=0x1343F         // Egyptian hieroglyph format controls
        | 0x1BCA0..=0x1BCA3         // shorthand format controls
        | 0x1D173..=0x1D17A         // musical symbol format controls
        | 0xE0000..=0xE0FFF         // tags and variation selectors supplement
        | 0xF0000..=0x10FFFF        // supplementary private use
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_names_pass_unchanged() {
        for name in [
            "alice",
            "Bob",
            "dave.smith",
            "o'brien",
            "José",
            "李雷",
            "a b",
        ] {
            assert_eq!(normalize(name).as_deref(), Ok(name), "{name}");
            assert!(is_normalized(name));
        }
    }

    #[test]
    fn look_alikes_are_refused_or_folded() {
        // The review's three names: only the first is a name.
        assert_eq!(normalize("alice").as_deref(), Ok("alice"));
        assert_eq!(
            normalize("alice\u{200B}"),
            Err(UserNameError::Forbidden(0x200B))
        );
        assert_eq!(
            normalize("\u{202E}ecila"),
            Err(UserNameError::Forbidden(0x202E))
        );
        // Compatibility forms fold to the ordinary name.
        assert_eq!(normalize("ａｌｉｃｅ").as_deref(), Ok("alice"));
        // A decomposed accent and the composed one are the same name.
        assert_eq!(normalize("Jose\u{0301}"), normalize("José"));
        assert!(!is_normalized("Jose\u{0301}"));
    }

    #[test]
    fn controls_whitespace_and_length() {
        assert_eq!(normalize(""), Err(UserNameError::Empty));
        assert_eq!(
            normalize("a\u{1b}]0;x"),
            Err(UserNameError::Forbidden(0x1b))
        );
        assert_eq!(normalize("a\u{85}b"), Err(UserNameError::Forbidden(0x85)));
        assert_eq!(normalize("a\tb"), Err(UserNameError::Forbidden(0x09)));
        assert_eq!(
            normalize("a\u{3000}b"),
            Err(UserNameError::Whitespace(0x3000))
        );
        assert_eq!(normalize(" alice"), Err(UserNameError::Spaces));
        assert_eq!(normalize("alice "), Err(UserNameError::Spaces));
        assert_eq!(normalize("al  ice"), Err(UserNameError::Spaces));
        assert_eq!(
            normalize(&"a".repeat(MAX_CHARS)).map(|n| n.len()),
            Ok(MAX_CHARS)
        );
        assert_eq!(
            normalize(&"a".repeat(MAX_CHARS + 1)),
            Err(UserNameError::TooLong)
        );
        assert_eq!(
            normalize(&"a".repeat(30_000_000)),
            Err(UserNameError::TooLong)
        );
        // Four-byte letters: 64 of them are 256 bytes, still allowed.
        assert!(normalize(&"𝒜".repeat(MAX_CHARS)).is_ok());
        assert!(normalize(&"𠀀".repeat(MAX_CHARS)).is_ok());
        assert_eq!(normalize("bad name!"), Err(UserNameError::Disallowed('!')));
        assert_eq!(normalize("a😀"), Err(UserNameError::Disallowed('😀')));
        assert_eq!(normalize("a/b"), Err(UserNameError::Disallowed('/')));
        assert!(normalize("jean-luc.o'neill+kiosk@example.com").is_ok());
        assert!(normalize("नमस्ते").is_ok());
    }

    proptest! {
        #[test]
        fn normalizing_is_idempotent(raw in "\\PC{0,80}") {
            if let Ok(name) = normalize(&raw) {
                prop_assert_eq!(normalize(&name), Ok(name.clone()));
                prop_assert!(name.chars().all(|c| c == ' ' || !(c.is_control() || c.is_whitespace() || is_invisible(c))));
                prop_assert!(name.chars().all(|c| c == ' ' || c.is_alphanumeric() || PUNCTUATION.contains(&c) || is_combining_mark(c)));
            }
        }

        #[test]
        fn never_panics(raw in any::<String>()) {
            let _ = normalize(&raw);
        }
    }
}
