//! Fuzzing entry point of the `code_uri` target (the `fuzz/` crate) and
//! its stable replay (`tests/fuzz_corpus.rs`): the proto parsers, then the
//! `user add-batch` line check on the same bytes.

use crate::subcommands::user_add_batch_input::parse_line;

/// `fleetkey_proto::fuzzing::code_uri`, then `parse_line` on the whole
/// text and on each of its lines, as `user add-batch` reads a file. A
/// line it accepts must hold a code that parses again.
pub fn code_uri(data: &[u8]) -> Result<(), String> {
    fleetkey_proto::fuzzing::code_uri(data)?;
    let text = String::from_utf8_lossy(data);
    for line in std::iter::once(text.as_ref()).chain(text.lines()) {
        if let Ok(parsed) = parse_line(line) {
            if fleetkey_proto::ActivationCode::parse(&parsed.compact).is_err() {
                return Err(format!(
                    "batch line {line:?} accepted with a code that does not parse"
                ));
            }
            if let Some(hint) = &parsed.hint
                && !fleetkey_proto::user_name::is_normalized(hint)
            {
                return Err(format!(
                    "batch line {line:?} kept an unnormalized user {hint:?}"
                ));
            }
        }
    }
    Ok(())
}
