//! Activation codes: 15 random Crockford base32 characters (75 bits) and a
//! Luhn mod 32 check character, shown as four groups of four
//! (`K7QF-9XWM-2HPD-TR4Q`). The format is specified in
//! `docs/enrollment-codes.md`.

use std::fmt;
use std::str::FromStr;

/// Crockford's base32 alphabet: digits and letters without I, L, O and U.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a code, check character included.
pub const CODE_LEN: usize = 16;
/// Random characters in a code.
pub const BODY_LEN: usize = CODE_LEN - 1;

/// Why typed text is not an activation code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("no activation code was given")]
    Empty,
    #[error(
        "'{character}' (character {position} of the code) is not used in activation codes; they use 0-9 and A-Z without U"
    )]
    InvalidCharacter { character: char, position: usize },
    #[error("an activation code has 16 characters (four groups of four); this one has {found}")]
    WrongLength { found: usize },
    #[error("the code's check character does not match: a character was mistyped")]
    CheckMismatch,
}

/// A well-formed activation code (its check character verified).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ActivationCode {
    chars: [u8; CODE_LEN],
}

impl ActivationCode {
    /// A new code with 75 random bits from the operating system.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut random = [0u8; BODY_LEN];
        getrandom::fill(&mut random)?;
        let mut body = [0u8; BODY_LEN];
        for (slot, byte) in body.iter_mut().zip(random) {
            // 256 is a multiple of 32, so taking the low five bits is unbiased.
            *slot = ALPHABET[usize::from(byte & 0x1f)];
        }
        Ok(Self::from_body(body))
    }

    /// Completes 15 alphabet characters with their check character.
    ///
    /// Characters outside the alphabet are a programming error and are
    /// replaced by `0`.
    pub fn from_body(body: [u8; BODY_LEN]) -> Self {
        let mut chars = [b'0'; CODE_LEN];
        for (slot, c) in chars.iter_mut().zip(body) {
            *slot = if value_of(c).is_some() { c } else { b'0' };
        }
        chars[BODY_LEN] = check_character(&chars[..BODY_LEN]);
        Self { chars }
    }

    /// Parses typed input: case, spaces and hyphens are ignored, `I`/`L` read
    /// as `1` and `O` as `0`. A mistyped character is caught by the check
    /// character.
    pub fn parse(input: &str) -> Result<Self, CodeError> {
        let mut chars = [0u8; CODE_LEN];
        let mut count = 0usize;
        for c in input.chars() {
            if c.is_whitespace() || c == '-' {
                continue;
            }
            count += 1;
            let normalized = normalize(c).ok_or(CodeError::InvalidCharacter {
                character: c,
                position: count,
            })?;
            if count <= CODE_LEN {
                chars[count - 1] = normalized;
            }
        }
        match count {
            0 => Err(CodeError::Empty),
            CODE_LEN => {
                let code = Self { chars };
                if luhn_sum(&code.chars) == 0 {
                    Ok(code)
                } else {
                    Err(CodeError::CheckMismatch)
                }
            }
            found => Err(CodeError::WrongLength { found }),
        }
    }

    /// The canonical form without hyphens: what goes on the wire.
    pub fn compact(&self) -> &str {
        // The characters all come from ALPHABET, which is ASCII.
        std::str::from_utf8(&self.chars).unwrap_or_default()
    }

    /// The display form, `XXXX-XXXX-XXXX-XXXX`.
    pub fn grouped(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ActivationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let compact = self.compact();
        for group in 0..4 {
            if group > 0 {
                f.write_str("-")?;
            }
            f.write_str(&compact[group * 4..group * 4 + 4])?;
        }
        Ok(())
    }
}

impl fmt::Debug for ActivationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActivationCode({self})")
    }
}

impl FromStr for ActivationCode {
    type Err = CodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn normalize(c: char) -> Option<u8> {
    let upper = c.to_ascii_uppercase();
    let mapped = match upper {
        'I' | 'L' => '1',
        'O' => '0',
        other => other,
    };
    let byte = u8::try_from(mapped).ok()?;
    value_of(byte).map(|_| byte)
}

fn value_of(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u32)
}

/// Luhn mod 32 over the characters, rightmost first, doubling every second
/// one starting with the rightmost when `doubling_first` is set.
fn luhn_fold(chars: &[u8], doubling_first: bool) -> u32 {
    let mut double = doubling_first;
    let mut sum = 0u32;
    for &c in chars.iter().rev() {
        let value = value_of(c).unwrap_or(0);
        let addend = if double { value * 2 } else { value };
        sum += addend / 32 + addend % 32;
        double = !double;
    }
    sum % 32
}

/// The sum over a whole code (check character included): zero when valid.
fn luhn_sum(code: &[u8]) -> u32 {
    luhn_fold(code, false)
}

fn check_character(body: &[u8]) -> u8 {
    let remainder = luhn_fold(body, true);
    ALPHABET[((32 - remainder) % 32) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn body_strategy() -> impl Strategy<Value = [u8; BODY_LEN]> {
        proptest::array::uniform15(proptest::sample::select(ALPHABET.to_vec()))
    }

    #[test]
    fn generated_codes_parse_and_differ() {
        let a = ActivationCode::generate().unwrap();
        let b = ActivationCode::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(ActivationCode::parse(&a.to_string()).unwrap(), a);
        let shown = a.to_string();
        assert_eq!(shown.len(), 19);
        assert_eq!(shown.matches('-').count(), 3);
    }

    #[test]
    fn normalization_accepts_what_people_type() {
        let code = ActivationCode::from_body(*b"K7QF9XWM2HPDTR1");
        let typed = code.to_string().to_lowercase().replace('-', " ");
        assert_eq!(ActivationCode::parse(&typed).unwrap(), code);
        let with_l = code.compact().replace('1', "l");
        assert_eq!(ActivationCode::parse(&with_l).unwrap(), code);
        let zero = ActivationCode::from_body(*b"000000000000000");
        let with_o = zero.compact().replace('0', "O");
        assert_eq!(ActivationCode::parse(&with_o).unwrap(), zero);
        assert_eq!(ActivationCode::parse(&format!("  {code}  ")).unwrap(), code);
    }

    #[test]
    fn bad_input_says_why() {
        assert_eq!(ActivationCode::parse("  - "), Err(CodeError::Empty));
        assert_eq!(
            ActivationCode::parse("K7QF-9XWM-2HPD"),
            Err(CodeError::WrongLength { found: 12 })
        );
        assert_eq!(
            ActivationCode::parse("K7QF-9XWM-2HPD-TR4QQ"),
            Err(CodeError::WrongLength { found: 17 })
        );
        assert_eq!(
            ActivationCode::parse("K7QU-9XWM-2HPD-TR4Q"),
            Err(CodeError::InvalidCharacter {
                character: 'U',
                position: 4
            })
        );
        assert!(matches!(
            ActivationCode::parse("K7QF-9XWM-2HPD-TR4é"),
            Err(CodeError::InvalidCharacter {
                character: 'é', ..
            })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(body in body_strategy()) {
            let code = ActivationCode::from_body(body);
            prop_assert_eq!(&code.compact().as_bytes()[..BODY_LEN], &body[..]);
            prop_assert_eq!(ActivationCode::parse(&code.to_string()).unwrap(), code.clone());
            prop_assert_eq!(ActivationCode::parse(code.compact()).unwrap(), code);
        }

        #[test]
        fn every_single_substitution_is_caught(body in body_strategy()) {
            let code = ActivationCode::from_body(body);
            for position in 0..CODE_LEN {
                for &replacement in ALPHABET {
                    if replacement == code.chars[position] {
                        continue;
                    }
                    let mut typo = code.chars;
                    typo[position] = replacement;
                    let typed = std::str::from_utf8(&typo).unwrap();
                    prop_assert_eq!(ActivationCode::parse(typed), Err(CodeError::CheckMismatch));
                }
            }
        }

        #[test]
        fn garbage_never_panics_and_is_rejected_with_a_reason(input in ".{0,40}") {
            match ActivationCode::parse(&input) {
                Ok(code) => prop_assert_eq!(ActivationCode::parse(&code.to_string()).unwrap(), code),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
