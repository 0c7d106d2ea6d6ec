//! `fleetkeyctl integrity [--json] [--quote --nonce HEX --out DIR]`: the
//! device's integrity report, and a TPM2_Quote over it that
//! `tpm2_checkquote` verifies.

use std::path::PathBuf;

use fleetkey_integrity::quote::{MAX_NONCE, MIN_NONCE, Quote, write_checkquote_files};
use fleetkey_integrity::{Report, hex, unhex};
use fleetkey_proto::daemon::{GetIntegrityRequest, IntegrityResponse};
use fleetkey_proto::terminal::escape;
use fleetkey_proto::{Failure, Reason};
use serde::Serialize;

use super::Context;
use crate::output;

/// Show the device's integrity report (HSI-style checks), optionally quoted by its TPM
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Shows each integrity check of this device (modelled on fwupd's Host \
Security ID): its ID, level, result and, when it fails, how to fix it; \
then the report's HSI level. With --quote --nonce HEX, the device's TPM \
also quotes the report (TPM2_Quote by the attestation key over PCRs 0-7, \
with qualifying data SHA-256(report digest || nonce)); --out DIR writes \
the files tpm2_checkquote verifies: quote.msg, quote.sig, quote.pcrs, \
ak.pem, report.json, qualifying-data.hex and, when there is one, the \
event log (eventlog.bin). Anyone may run it.",
    after_long_help = "\
Examples:
  fleetkeyctl integrity
  fleetkeyctl integrity --quote --nonce $(openssl rand -hex 32) --out q/
  tpm2_checkquote -u q/ak.pem -m q/quote.msg -s q/quote.sig -f q/quote.pcrs -g sha256 -q $(cat q/qualifying-data.hex)"
)]
pub struct Integrity {
    /// Quote the report with the TPM (needs --nonce)
    #[arg(long)]
    pub quote: bool,
    /// The verifier's nonce, 16 to 64 bytes as hex
    #[arg(long, value_name = "HEX", requires = "quote")]
    pub nonce: Option<String>,
    /// Write the quote's files for tpm2_checkquote into DIR (created)
    #[arg(long, value_name = "DIR", requires = "quote")]
    pub out: Option<PathBuf>,
}

impl Integrity {
    pub fn usage_problem(&self) -> Option<String> {
        (self.quote && self.nonce.is_none())
            .then(|| "--quote needs --nonce HEX (16 to 64 bytes from the verifier)".to_string())
    }

    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        if let Some(problem) = self.usage_problem() {
            return Err(Failure::new(Reason::InvalidArgument, problem));
        }
        let nonce = match &self.nonce {
            Some(text) => parse_nonce(text)?,
            None => Vec::new(),
        };
        let mut client = ctx.client().await?;
        let response = client
            .get_integrity(GetIntegrityRequest { nonce })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        let shown = Shown::from_response(&response)?;
        if let Some(dir) = &self.out {
            write_files(&response, shown.quote.as_ref(), dir)?;
        }
        if ctx.json {
            output::json(&shown)
        } else {
            output::data(&integrity_text(&shown))
        }
    }
}

/// The nonce from hex: 16 to 64 bytes.
pub fn parse_nonce(text: &str) -> Result<Vec<u8>, Failure> {
    match unhex(text, MAX_NONCE) {
        Some(bytes) if bytes.len() >= MIN_NONCE => Ok(bytes),
        _ => Err(Failure::new(
            Reason::InvalidArgument,
            format!("--nonce must be {MIN_NONCE} to {MAX_NONCE} bytes as hex digits"),
        )
        .with_hint("e.g. --nonce $(openssl rand -hex 32)")),
    }
}

/// What `integrity` shows (`--json` prints it as is).
#[derive(Debug, Serialize)]
pub struct Shown {
    pub report: Report,
    /// Present with --quote when the device has a TPM.
    pub quote: Option<Quote>,
    /// Hex; present with --quote.
    pub qualifying_data: Option<String>,
    /// PEM of the key that verifies the quote.
    pub ak_public_key_pem: Option<String>,
    /// Why there is no quote although one was asked for.
    pub no_quote_reason: Option<String>,
}

impl Shown {
    pub fn from_response(response: &IntegrityResponse) -> Result<Shown, Failure> {
        let bad = |what: &str, e: serde_json::Error| {
            Failure::new(
                Reason::Internal,
                format!("the daemon sent a {what} that does not parse: {e}"),
            )
        };
        let report: Report =
            serde_json::from_str(&response.report_json).map_err(|e| bad("report", e))?;
        let quote = if response.quote_json.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&response.quote_json).map_err(|e| bad("quote", e))?)
        };
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(Shown {
            report,
            quote,
            qualifying_data: (!response.qualifying_data.is_empty())
                .then(|| hex(&response.qualifying_data)),
            ak_public_key_pem: nonempty(&response.ak_public_key_pem),
            no_quote_reason: nonempty(&response.no_quote_reason),
        })
    }
}

fn write_files(
    response: &IntegrityResponse,
    quote: Option<&Quote>,
    dir: &std::path::Path,
) -> Result<(), Failure> {
    let failed = |what: String| {
        Failure::new(Reason::Internal, what)
            .with_hint("Check that the --out directory is writable.")
    };
    let Some(quote) = quote else {
        return Err(Failure::new(
            Reason::Unsupported,
            format!("no quote to write: {}", escape(&response.no_quote_reason)),
        ));
    };
    std::fs::create_dir_all(dir).map_err(|e| failed(format!("creating {}: {e}", dir.display())))?;
    write_checkquote_files(quote, dir).map_err(|e| failed(e.to_string()))?;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes)
            .map_err(|e| failed(format!("writing {}: {e}", dir.join(name).display())))
    };
    write("ak.pem", response.ak_public_key_pem.as_bytes())?;
    write("report.json", response.report_json.as_bytes())?;
    write(
        "qualifying-data.hex",
        hex(&response.qualifying_data).as_bytes(),
    )?;
    if !response.event_log.is_empty() {
        write("eventlog.bin", &response.event_log)?;
    }
    Ok(())
}

/// The report for people: one block per check, failing ones first.
pub fn integrity_text(shown: &Shown) -> String {
    let report = &shown.report;
    let mut text = format!("Integrity: {}\n", escape(&report.summary()));
    if !report.remotely_verifiable {
        text.push_str("No TPM: this report cannot be verified remotely.\n");
    }
    text.push('\n');
    let mut attributes: Vec<_> = report.attributes.iter().collect();
    attributes.sort_by_key(|a| (a.passes(), a.level, a.id.clone()));
    for a in attributes {
        text.push_str(&format!(
            "{:<4} HSI:{} {} ({})\n     {}\n",
            if a.passes() { "ok" } else { "FAIL" },
            a.level,
            escape(&a.id),
            escape(&a.result),
            escape(&a.detail)
        ));
        if !a.hint.is_empty() {
            text.push_str(&format!("     fix: {}\n", escape(&a.hint)));
        }
    }
    if let Some(q) = &shown.qualifying_data {
        text.push_str(&format!("\nQuoted by the TPM; qualifying data {q}\n"));
    }
    if let Some(reason) = &shown.no_quote_reason {
        text.push_str(&format!("\nNo quote: {}\n", escape(reason)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetkey_integrity::{Attribute, Outcome};

    #[test]
    fn nonces_are_16_to_64_bytes_of_hex() {
        assert_eq!(parse_nonce(&"ab".repeat(16)).unwrap().len(), 16);
        assert!(parse_nonce(&"ab".repeat(15)).is_err());
        assert!(parse_nonce(&"ab".repeat(65)).is_err());
        assert!(parse_nonce("zz").is_err());
    }

    #[test]
    fn failing_checks_come_first_with_their_hint() {
        let a = |id: &str, pass: bool| Attribute {
            id: id.into(),
            level: 1,
            outcome: if pass { Outcome::Pass } else { Outcome::Fail },
            result: "x".into(),
            detail: "d".into(),
            hint: if pass { "" } else { "do this" }.into(),
        };
        let shown = Shown {
            report: Report::new(vec![a("a.ok", true), a("b.bad", false)], false),
            quote: None,
            qualifying_data: None,
            ak_public_key_pem: None,
            no_quote_reason: None,
        };
        let text = integrity_text(&shown);
        assert!(
            text.starts_with("Integrity: HSI:0 (1 of 2 checks fail: b.bad)"),
            "{text}"
        );
        assert!(text.contains("cannot be verified remotely"), "{text}");
        let bad = text.find("FAIL HSI:1 b.bad").unwrap();
        assert!(bad < text.find("ok   HSI:1 a.ok").unwrap(), "{text}");
        assert!(text.contains("fix: do this"), "{text}");
    }
}
