//! Fuzzing entry points (the `fuzz/` crate's `code_uri` target) and the
//! corpus replay every crate's `tests/fuzz_corpus.rs` runs on stable.
//!
//! Each entry point takes the fuzzer's bytes, runs the real parsers on
//! them and returns `Err` only when an invariant breaks (a parsed value
//! that does not parse back to itself, say); a parser that refuses the
//! bytes is fine. The libFuzzer target and the stable test call the same
//! function, so what one finds the other keeps checking.

use std::path::{Path, PathBuf};

use crate::code::ActivationCode;
use crate::payload::{EnrollmentInput, EnrollmentPayload};
use crate::{terminal, user_name};

/// The code and URI parsers: `ActivationCode::parse`,
/// `EnrollmentPayload::parse_uri`, `EnrollmentInput::parse`, and the one
/// user-name rule, each checked to parse its own output back to itself.
pub fn code_uri(data: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(data);
    if let Ok(code) = ActivationCode::parse(&text) {
        for form in [code.to_string(), code.compact().to_string()] {
            if ActivationCode::parse(&form).as_ref() != Ok(&code) {
                return Err(format!("code {code:?} does not parse back from {form:?}"));
            }
        }
    }
    if let Ok(payload) = EnrollmentPayload::parse_uri(&text) {
        let uri = payload.to_uri();
        match EnrollmentPayload::parse_uri(&uri) {
            Ok(again) if again == payload => {}
            other => {
                return Err(format!(
                    "payload {payload:?} written as {uri:?} reads back as {other:?}"
                ));
            }
        }
    }
    if let Ok(input) = EnrollmentInput::parse(&text) {
        let compact = input.code().compact();
        if ActivationCode::parse(compact).as_ref() != Ok(input.code()) {
            return Err(format!("input {input:?} holds a code that does not parse"));
        }
    }
    if let Ok(name) = user_name::normalize(&text) {
        if user_name::normalize(&name).as_deref() != Ok(name.as_str()) {
            return Err(format!("user name {name:?} does not normalize to itself"));
        }
        if !user_name::is_normalized(&name) {
            return Err(format!("user name {name:?} is not reported as normalized"));
        }
    }
    if terminal::escape(&text).chars().any(terminal::is_unsafe) {
        return Err(format!(
            "escaping {text:?} left a character a terminal acts on"
        ));
    }
    Ok(())
}

/// The corpus and regression files of a fuzz target: every file in
/// `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` under
/// `repo_root`, sorted by path.
pub fn corpus_files(repo_root: &Path, target: &str) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let dir = repo_root.join("fuzz").join(kind).join(target);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        for entry in entries {
            let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A small fixed-seed generator (xorshift64*), so that the mutation smoke
/// test is the same on every run and needs no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: usize) -> usize {
        if bound == 0 {
            0
        } else {
            (self.next_u64() % bound as u64) as usize
        }
    }
}

/// One byte-level mutation of `input`: a bit flip, an interesting byte, an
/// insertion, a deletion, a duplicated run, or a splice with `other`.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, b'%', b'&', b'='];
                let i = rng.below(out.len());
                out[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let byte = rng.next_u64() as u8;
                out.insert(at, byte);
            }
            3 if !out.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                let start = at.min(end.saturating_sub(1));
                out.drain(start..end);
            }
            4 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(32)).min(out.len());
                let run = out[start..end].to_vec();
                let at = at.min(out.len());
                out.splice(at..at, run);
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let at = at.min(out.len());
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            _ => {
                // A two-byte big-endian length or count, set to an edge value.
                if out.len() >= 2 {
                    let i = rng.below(out.len() - 1);
                    let value: u16 = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0xffff][rng.below(8)];
                    out[i..i + 2].copy_from_slice(&value.to_be_bytes());
                }
            }
        }
    }
    out
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub files: usize,
    pub mutations: usize,
}

/// Runs `run` over every corpus and regression file of `target` (at least
/// `min_files` of them), then over `mutations` deterministic mutations of
/// them. The first `Err` (an invariant broken) stops the replay and says
/// which input it was; a panic fails the calling test by itself.
pub fn replay(
    repo_root: &Path,
    target: &str,
    min_files: usize,
    mutations: usize,
    mut run: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<Replayed, String> {
    let files = corpus_files(repo_root, target)?;
    if files.len() < min_files {
        return Err(format!(
            "fuzz/corpus/{target} and fuzz/regressions/{target} hold {} files, fewer than {min_files}",
            files.len()
        ));
    }
    for (path, bytes) in &files {
        run(bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut rng = Rng::new(0x5EED_F022 ^ target.len() as u64);
    for i in 0..mutations {
        let (path, seed) = &files[rng.below(files.len())];
        let (_, other) = &files[rng.below(files.len())];
        let input = mutate(&mut rng, seed, other);
        run(&input).map_err(|e| {
            format!(
                "mutation {i} of {} ({} bytes, hex {}): {e}",
                path.display(),
                input.len(),
                input
                    .iter()
                    .take(256)
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        })?;
    }
    Ok(Replayed {
        files: files.len(),
        mutations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_deterministic_and_change_the_input() {
        let seed = b"fleetkey://enroll?v=1&c=K7QF-9XWM-2HPD-TR4Q".to_vec();
        let run = |n: u64| {
            let mut rng = Rng::new(n);
            (0..50)
                .map(|_| mutate(&mut rng, &seed, b"other"))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert!(run(7).iter().filter(|m| **m != seed).count() > 40);
    }

    #[test]
    fn a_broken_invariant_names_its_input() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("fuzz/corpus/t");
        std::fs::create_dir_all(&corpus).unwrap();
        std::fs::write(corpus.join("a"), b"good").unwrap();
        std::fs::write(corpus.join("b"), b"bad").unwrap();
        let error = replay(dir.path(), "t", 1, 0, |data| {
            if data == b"bad" {
                Err("broken".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(error.contains("fuzz/corpus/t/b: broken"), "{error}");
        assert!(replay(dir.path(), "t", 3, 0, |_| Ok(())).is_err());
    }
}
