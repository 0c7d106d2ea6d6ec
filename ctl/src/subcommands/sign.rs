//! `fleetkeyctl sign --user NAME --in FILE`: signs a file's SHA-256 with a
//! user's key.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use fleetkey_proto::daemon::{SignRequest, SignResponse};
use fleetkey_proto::{Failure, Reason};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Context;
use crate::output;
use crate::pin::PinInput;

/// Sign a file with a user's key (ECDSA P-256 over its SHA-256)
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Signs data with a user's key: computes the SHA-256 of the file given with \
--in (streamed, so it may be large; - reads standard input), has the daemon \
sign that digest with the user's key after checking their PIN, and prints \
the ECDSA P-256 signature (ASN.1 DER, base64) as one line on stdout. With \
--out the raw DER signature is also written to a file, in the form OpenSSL \
verifies. Anyone may run it; the user's PIN is needed.

The PIN is asked on the terminal without echo, or read from the first line \
of standard input with --pin-stdin. Standard input cannot carry both the \
data and the PIN: --in - and --pin-stdin together are a usage error.",
    after_long_help = "\
Examples:
  # Sign, keep the DER signature, verify it with OpenSSL
  fleetkeyctl sign --user alice --in report.pdf --out report.pdf.sig
  fleetkeyctl --json user show alice | jq -r .public_key_pem > alice.pem
  openssl dgst -sha256 -verify alice.pem -signature report.pdf.sig report.pdf

  # Sign standard input; the PIN is asked on the terminal
  tar c docs/ | fleetkeyctl sign --user alice --in -

  # In a script
  printf '%s\\n' \"$PIN\" | fleetkeyctl --json sign --user alice --in data.bin --pin-stdin"
)]
pub struct Sign {
    /// The user whose key signs
    #[arg(long, value_name = "NAME")]
    pub user: String,

    /// The file to sign; - for standard input
    #[arg(long = "in", value_name = "FILE")]
    pub input: PathBuf,

    /// Also write the raw DER signature to this file
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Read the PIN from the first line of standard input instead of the terminal
    #[arg(long)]
    pub pin_stdin: bool,
}

/// `--in -`.
fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

impl Sign {
    /// `--in -` with `--pin-stdin` is a usage error.
    pub fn usage_problem(&self) -> Option<String> {
        (self.pin_stdin && is_stdin(&self.input)).then(|| {
            "'--in -' and '--pin-stdin' cannot be used together: standard input cannot carry both the data and the PIN".to_string()
        })
    }

    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        if let Some(problem) = self.usage_problem() {
            return Err(Failure::new(Reason::InvalidArgument, problem));
        }
        // Open the input first: a wrong path is caught before anything else.
        let reader: Box<dyn Read> = if is_stdin(&self.input) {
            Box::new(io::stdin().lock())
        } else {
            Box::new(File::open(&self.input).map_err(|e| read_failure(&self.input, &e))?)
        };
        let mut client = ctx.client().await?;
        let mut pins = PinInput::from_flag(self.pin_stdin)?;
        let digest = sha256(reader).map_err(|e| read_failure(&self.input, &e))?;
        let pin = pins.existing(
            &format!("PIN for {}: ", fleetkey_proto::terminal::escape(&self.user)),
            "PIN",
        )?;
        let response = client
            .sign(SignRequest {
                user: self.user.clone(),
                pin: pin.to_string(),
                digest: digest.to_vec(),
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        drop(pin);

        if let Some(out) = &self.out {
            std::fs::write(out, &response.signature_der).map_err(|e| {
                Failure::new(
                    Reason::InvalidArgument,
                    format!("cannot write the signature to {}: {e}", out.display()),
                )
                .with_hint("Check the path given to --out; the data was signed, sign again once it is writable.")
            })?;
        }
        if ctx.json {
            output::json(&sign_json(&response))
        } else {
            output::data(&BASE64.encode(&response.signature_der))
        }
    }
}

fn read_failure(path: &Path, error: &io::Error) -> Failure {
    let name = if is_stdin(path) {
        "standard input".to_string()
    } else {
        path.display().to_string()
    };
    Failure::new(
        Reason::InvalidArgument,
        format!("cannot read {name}: {error}"),
    )
    .with_hint("Check the file given with --in.")
}

/// SHA-256 of everything `reader` yields, read in blocks.
pub fn sha256(mut reader: impl Read) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(&hasher.finalize());
    Ok(digest)
}

/// `sign --json`.
#[derive(Debug, Serialize)]
pub struct SignJson {
    /// Base64 (standard alphabet, padded) of the DER signature.
    pub signature: String,
    pub public_key_pem: String,
}

pub fn sign_json(response: &SignResponse) -> SignJson {
    SignJson {
        signature: BASE64.encode(&response.signature_der),
        public_key_pem: response.public_key_pem.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    #[test]
    fn digest_of_known_inputs() {
        let empty = sha256(&b""[..]).unwrap();
        assert_eq!(
            BASE64.encode(empty),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        let abc = sha256(&b"abc"[..]).unwrap();
        assert_eq!(
            abc[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(\"abc\") starts ba7816bf"
        );
    }

    #[test]
    fn digest_streams_large_files() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let block = vec![0x5au8; 100_000];
        for _ in 0..3 {
            file.write_all(&block).unwrap();
        }
        file.flush().unwrap();
        let streamed = sha256(File::open(file.path()).unwrap()).unwrap();
        let whole: [u8; 32] = Sha256::digest(block.repeat(3)).into();
        assert_eq!(streamed, whole);
    }

    #[test]
    fn json_shape() {
        let response = SignResponse {
            signature_der: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02],
            public_key_pem: "PEM".into(),
        };
        assert_eq!(
            serde_json::to_value(sign_json(&response)).unwrap(),
            json!({"signature": "MAYCAQECAQI=", "public_key_pem": "PEM"})
        );
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let error = File::open("/nonexistent/data.bin").unwrap_err();
        let failure = read_failure(Path::new("/nonexistent/data.bin"), &error);
        assert_eq!(failure.reason, Reason::InvalidArgument);
        assert!(
            failure
                .message
                .starts_with("cannot read /nonexistent/data.bin: ")
        );
    }
}
