//! PIN input. PINs never come from the command line: they are asked on the
//! controlling terminal without echo (prompts on stderr), or read from
//! standard input with `--pin-stdin`, one PIN a line.
//!
//! PINs live in zeroize-on-drop buffers.

use std::io::{self, BufRead, StdinLock};

use fleetkey_proto::{Failure, Reason};
use zeroize::Zeroizing;

/// A PIN, wiped from memory when dropped.
pub type Pin = Zeroizing<String>;

/// The terminal rpassword reads from.
const TERMINAL: &str = "/dev/tty";

/// Room for any sensible PIN, so that reading one does not reallocate and
/// leave copies behind.
const PIN_CAPACITY: usize = 256;

/// Where PINs come from.
pub enum PinInput<R> {
    /// The controlling terminal, without echo.
    Terminal,
    /// Lines of a reader (standard input with `--pin-stdin`).
    Lines {
        reader: R,
        /// Lines read so far.
        read: usize,
    },
}

impl PinInput<StdinLock<'static>> {
    /// Standard input with `--pin-stdin`, else the terminal; an error when
    /// there is no terminal to ask on (checked now, before anything else is
    /// done or printed).
    pub fn from_flag(pin_stdin: bool) -> Result<Self, Failure> {
        if pin_stdin {
            Ok(PinInput::Lines {
                reader: io::stdin().lock(),
                read: 0,
            })
        } else if terminal_available() {
            Ok(PinInput::Terminal)
        } else {
            Err(no_terminal())
        }
    }
}

impl<R: BufRead> PinInput<R> {
    /// PIN input from the lines of `reader`.
    pub fn lines(reader: R) -> Self {
        PinInput::Lines { reader, read: 0 }
    }

    /// An existing PIN: asked once. `what` names it in errors ("PIN",
    /// "current PIN").
    pub fn existing(&mut self, prompt: &str, what: &str) -> Result<Pin, Failure> {
        match self {
            PinInput::Terminal => ask_terminal(prompt),
            PinInput::Lines { reader, read } => next_line(reader, read, what),
        }
    }

    /// A PIN being chosen: asked twice on a terminal (the two must match),
    /// read once from lines.
    pub fn new_pin(
        &mut self,
        prompt: &str,
        repeat_prompt: &str,
        what: &str,
    ) -> Result<Pin, Failure> {
        match self {
            PinInput::Terminal => {
                let first = ask_terminal(prompt)?;
                let second = ask_terminal(repeat_prompt)?;
                if *first != *second {
                    return Err(Failure::new(Reason::InvalidArgument, "the two PINs differ")
                        .with_hint("Type the same PIN at both prompts."));
                }
                Ok(first)
            }
            PinInput::Lines { reader, read } => next_line(reader, read, what),
        }
    }
}

/// Reads one PIN line: the trailing "\n" or "\r\n" is removed, nothing
/// else. `what` names the PIN in the error when the input has ended.
pub fn read_pin_line(reader: &mut impl BufRead, what: &str) -> Result<Option<Pin>, Failure> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(PIN_CAPACITY));
    let count = reader.read_until(b'\n', &mut bytes).map_err(|e| {
        Failure::new(
            Reason::InvalidArgument,
            format!("cannot read the {what} from standard input: {e}"),
        )
    })?;
    if count == 0 {
        return Ok(None);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        Failure::new(
            Reason::InvalidArgument,
            format!("the {what} on standard input is not UTF-8 text"),
        )
    })?;
    let mut pin = Zeroizing::new(String::with_capacity(text.len()));
    pin.push_str(text);
    Ok(Some(pin))
}

fn next_line(reader: &mut impl BufRead, read: &mut usize, what: &str) -> Result<Pin, Failure> {
    let line = *read + 1;
    let pin = read_pin_line(reader, what)?.ok_or_else(|| {
        Failure::new(
            Reason::InvalidArgument,
            format!("--pin-stdin: standard input ended before the {what} (line {line})"),
        )
        .with_hint(
            "Give one PIN a line on standard input; user pin change reads two lines: the current PIN, then the new one.",
        )
    })?;
    *read = line;
    Ok(pin)
}

/// The failure when no terminal can be asked.
pub fn no_terminal() -> Failure {
    Failure::new(
        Reason::InvalidArgument,
        "no terminal to ask for the PIN on; pass --pin-stdin",
    )
    .with_hint(
        "Pipe the PIN to standard input with --pin-stdin (one line; user pin change reads two: the current PIN, then the new one).",
    )
}

/// Whether the controlling terminal (which rpassword reads) can be opened.
pub fn terminal_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(TERMINAL)
        .is_ok_and(|tty| std::io::IsTerminal::is_terminal(&tty))
}

fn ask_terminal(prompt: &str) -> Result<Pin, Failure> {
    let config = rpassword::ConfigBuilder::new()
        .input_file_path(TERMINAL)
        .output_writer(io::stderr())
        .build();
    match rpassword::prompt_password_with_config(prompt, config) {
        Ok(pin) => Ok(Zeroizing::new(pin)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            // End the prompt's line before the error is printed.
            crate::output::message("");
            Err(Failure::new(Reason::InvalidArgument, "no PIN was entered")
                .with_hint("Type the PIN and press Enter."))
        }
        Err(e) => Err(Failure::new(
            Reason::InvalidArgument,
            format!("cannot read the PIN from the terminal: {e}"),
        )
        .with_hint("Pass --pin-stdin and pipe the PIN to standard input instead.")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn lines(text: &str) -> PinInput<Cursor<Vec<u8>>> {
        PinInput::lines(Cursor::new(text.as_bytes().to_vec()))
    }

    #[test]
    fn one_line() {
        let mut input = lines("123456\n");
        assert_eq!(input.existing("PIN: ", "PIN").unwrap().as_str(), "123456");
    }

    #[test]
    fn one_line_without_newline() {
        let mut input = lines("123456");
        assert_eq!(
            input
                .new_pin("PIN: ", "Repeat PIN: ", "PIN")
                .unwrap()
                .as_str(),
            "123456"
        );
    }

    #[test]
    fn two_lines_old_then_new() {
        let mut input = lines("1111\n2222\n");
        assert_eq!(input.existing("", "current PIN").unwrap().as_str(), "1111");
        // A chosen PIN is read once from lines, not twice.
        assert_eq!(input.new_pin("", "", "new PIN").unwrap().as_str(), "2222");
    }

    #[test]
    fn crlf_is_stripped_and_nothing_else() {
        let mut input = lines("12 34 \r\n\r5678\n");
        assert_eq!(input.existing("", "PIN").unwrap().as_str(), "12 34 ");
        assert_eq!(input.existing("", "PIN").unwrap().as_str(), "\r5678");
    }

    #[test]
    fn empty_line_is_an_empty_pin() {
        let mut input = lines("\n");
        assert_eq!(input.existing("", "PIN").unwrap().as_str(), "");
    }

    #[test]
    fn missing_line_is_a_clear_error() {
        let mut input = lines("1111\n");
        input.existing("", "current PIN").unwrap();
        let failure = input.new_pin("", "", "new PIN").unwrap_err();
        assert_eq!(failure.reason, Reason::InvalidArgument);
        assert_eq!(
            failure.message,
            "--pin-stdin: standard input ended before the new PIN (line 2)"
        );

        let failure = lines("").existing("", "PIN").unwrap_err();
        assert_eq!(
            failure.message,
            "--pin-stdin: standard input ended before the PIN (line 1)"
        );
    }

    #[test]
    fn non_utf8_is_refused() {
        let mut input = PinInput::lines(Cursor::new(vec![0xff, 0xfe, b'\n']));
        let failure = input.existing("", "PIN").unwrap_err();
        assert_eq!(failure.reason, Reason::InvalidArgument);
        assert!(failure.message.contains("not UTF-8"));
    }

    #[test]
    fn no_terminal_message() {
        let failure = no_terminal();
        assert_eq!(
            failure.message,
            "no terminal to ask for the PIN on; pass --pin-stdin"
        );
        assert_eq!(failure.reason.exit_code(), 64);
    }
}
