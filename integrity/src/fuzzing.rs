//! Fuzzing entry point of the `integrity_quote_eventlog` target (the
//! `fuzz/` crate) and its stable replay (`tests/fuzz_corpus.rs`): what
//! the portal runs on a device's quote and event log.

use crate::eventlog::{self, EventLog};
use crate::quote::{CertifyAttest, QuoteAttest};

/// `QuoteAttest::parse`, `CertifyAttest::parse` and `EventLog::parse` on
/// the bytes, then the log's replay in every bank it declares. A replay
/// must give 24 PCRs of the bank's digest size.
pub fn quote_eventlog(data: &[u8]) -> Result<(), String> {
    if let Ok(quote) = QuoteAttest::parse(data)
        && quote
            .selection
            .iter()
            .any(|s| s.pcrs.windows(2).any(|w| w[0] >= w[1]))
    {
        return Err(format!(
            "quote PCR selection not ascending: {:?}",
            quote.selection
        ));
    }
    let _ = CertifyAttest::parse(data);
    if let Ok(log) = EventLog::parse(data) {
        for &(alg, _) in &log.spec.algorithms {
            let Ok(pcrs) = log.replay(alg) else { continue };
            let size = eventlog::hash(alg, b"").map(|h| h.len());
            if pcrs.len() != eventlog::PCR_COUNT || pcrs.iter().any(|pcr| Some(pcr.len()) != size) {
                return Err(format!(
                    "replay of bank 0x{alg:04x} gave {} PCRs of sizes {:?}",
                    pcrs.len(),
                    pcrs.iter().map(Vec::len).collect::<Vec<_>>()
                ));
            }
        }
    }
    Ok(())
}
