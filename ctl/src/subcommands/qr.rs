//! `fleetkeyctl qr decode FILE...`: reads QR codes in images, offline, with
//! the same scanner the daemon uses. For debugging and scripts.

use std::path::PathBuf;

use fleetkey_proto::Failure;
use fleetkey_v4l::Scanner;
use fleetkey_v4l::scan::is_fleetkey;
use serde::Serialize;

use super::user_add::read_and_decode_image;
use crate::output;

/// The QR commands (offline: no daemon needed).
#[derive(Debug, clap::Subcommand)]
pub enum QrCommand {
    Decode(QrDecode),
}

/// Decode the QR codes in images (offline)
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Reads the QR codes in PNG or JPEG images with fleetkey's scanner (the one \
fleetkeyd uses for --camera and --qr-image) and prints each code's text on \
its own line, fleetkey enrollment URIs and other codes alike. It needs no \
daemon.

Exit status: 0 when at least one code was read, 1 when none was, 64 \
(INVALID_ARGUMENT) when an image cannot be read (the other images are still \
decoded). An unreadable image wins: with one good and one unreadable image \
the exit status is 64, and the good image's codes are printed all the same.",
    after_long_help = "\
Examples:
  fleetkeyctl qr decode alice.png
  fleetkeyctl qr decode screenshot.jpg | grep '^fleetkey:'
  fleetkeyctl --json qr decode *.png"
)]
pub struct QrDecode {
    /// PNG or JPEG images
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

/// `qr decode --json`.
#[derive(Debug, Serialize)]
pub struct DecodeJson {
    pub images: Vec<ImageJson>,
}

#[derive(Debug, Serialize)]
pub struct ImageJson {
    pub file: String,
    pub codes: Vec<CodeJson>,
    /// Why the image could not be read; `""` when it was.
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct CodeJson {
    pub text: String,
    /// Whether it is meant for fleetkey (a `fleetkey:` URI).
    pub fleetkey: bool,
}

impl QrCommand {
    /// Runs offline; returns the exit status.
    pub fn run(&self, json: bool) -> u8 {
        match self {
            QrCommand::Decode(cmd) => cmd.run(json),
        }
    }
}

impl QrDecode {
    pub fn run(&self, json: bool) -> u8 {
        let scanner = Scanner::new();
        let mut images = Vec::new();
        let mut unreadable: Option<Failure> = None;
        for file in &self.files {
            let mut image = ImageJson {
                file: file.display().to_string(),
                codes: Vec::new(),
                error: String::new(),
            };
            // Decoded once: the frame read_and_decode_image checked is
            // the one scanned.
            match read_and_decode_image(file) {
                Ok((_, frame)) => {
                    image.codes = scanner
                        .scan(&frame)
                        .into_iter()
                        .map(|text| CodeJson {
                            fleetkey: is_fleetkey(&text),
                            text,
                        })
                        .collect();
                }
                Err(failure) => {
                    image.error = failure.message.clone();
                    if !json {
                        output::message(&output::failure_text(&failure));
                    }
                    unreadable.get_or_insert(failure);
                }
            }
            images.push(image);
        }
        let found = images.iter().any(|i| !i.codes.is_empty());
        let printed = if json {
            output::json(&DecodeJson { images })
        } else {
            // QR payloads are foreign text: one escaped line each.
            let lines: Vec<String> = images
                .iter()
                .flat_map(|i| {
                    i.codes
                        .iter()
                        .map(|c| fleetkey_proto::terminal::escape(&c.text).into_owned())
                })
                .collect();
            if lines.is_empty() {
                Ok(())
            } else {
                output::data(&lines.join("\n"))
            }
        };
        if let Err(failure) = printed {
            output::print_failure(&failure, false);
            return failure.reason.exit_code();
        }
        match unreadable {
            Some(failure) => failure.reason.exit_code(),
            None if found => 0,
            None => {
                if !json {
                    output::message("No QR code was read.");
                }
                1
            }
        }
    }
}
