//! The quote's formats, shared by the device (which makes it with its TPM)
//! and the portal (which checks it): the qualifying data that binds a
//! report and a nonce, the TPMS_ATTEST of a TPM2_Quote, the PCR digest it
//! carries, the [`Evidence`] a device sends, and the files
//! `tpm2_checkquote` verifies. TPM structures are big-endian (TPM 2.0
//! Part 2).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Report;
use crate::eventlog::TPM_ALG_SHA256;

/// Shortest and longest nonce accepted (bytes).
pub const MIN_NONCE: usize = 16;
pub const MAX_NONCE: usize = 64;
/// The PCRs quoted: 0-7 of the SHA-256 bank (firmware and boot loader,
/// the ones the event log accounts for).
pub const QUOTED_PCRS: [u32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
/// Largest TPMS_ATTEST accepted.
pub const MAX_ATTEST: usize = 2048;

/// The first four bytes of every TPMS_ATTEST a TPM makes.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
pub const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// Why a quote was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuoteError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, QuoteError> {
    Err(QuoteError(message.into()))
}

/// The quote's qualifying data (TPM2_Quote's `qualifyingData`, the
/// TPMS_ATTEST's `extraData`): SHA-256(report digest || nonce). The
/// nonce is 16 to 64 bytes.
pub fn qualifying_data(report_digest: &[u8; 32], nonce: &[u8]) -> Result<[u8; 32], QuoteError> {
    if !(MIN_NONCE..=MAX_NONCE).contains(&nonce.len()) {
        return fail(format!(
            "the nonce is {} bytes; {MIN_NONCE} to {MAX_NONCE} are accepted",
            nonce.len()
        ));
    }
    let mut hash = Sha256::new();
    hash.update(report_digest);
    hash.update(nonce);
    Ok(hash.finalize().into())
}

/// SHA-256 over the concatenated PCR values, as TPM2_Quote computes its
/// `pcrDigest` with a SHA-256 signing scheme.
pub fn pcr_digest(values: &[Vec<u8>]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for v in values {
        hash.update(v);
    }
    hash.finalize().into()
}

/// A TPMS_PCR_SELECTION: a bank and its PCRs (ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    pub bank: u16,
    pub pcrs: Vec<u32>,
}

/// The parts of a TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE a verifier uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteAttest {
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
    pub firmware_version: u64,
    pub selection: Vec<PcrSelection>,
    pub pcr_digest: Vec<u8>,
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], QuoteError> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => fail(format!(
                "the attestation (TPMS_ATTEST) is truncated: {field} needs {n} bytes, {} are left",
                self.rest.len()
            )),
        }
    }

    fn uint(&mut self, n: usize, field: &str) -> Result<u64, QuoteError> {
        Ok(self
            .take(n, field)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn tpm2b(&mut self, field: &str, max: usize) -> Result<&'a [u8], QuoteError> {
        let size = self.uint(2, field)? as usize;
        if size > max {
            return fail(format!(
                "the attestation's {field} is {size} bytes, more than the {max} allowed"
            ));
        }
        self.take(size, field)
    }
}

/// The parts of a TPMS_ATTEST of type TPM_ST_ATTEST_CERTIFY (TPM2_Certify
/// of a key by the AK; the portal checks user keys with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifyAttest {
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
    pub firmware_version: u64,
    /// The certified object's name.
    pub name: Vec<u8>,
    pub qualified_name: Vec<u8>,
}

/// The header every TPMS_ATTEST has (TPM 2.0 Part 2, 10.12.12).
struct AttestHeader {
    qualified_signer: Vec<u8>,
    extra_data: Vec<u8>,
    clock: u64,
    reset_count: u32,
    restart_count: u32,
    safe: bool,
    firmware_version: u64,
}

/// A TPM name: a hash algorithm and a digest of up to 64 bytes.
const MAX_NAME: usize = 2 + 64;

/// Reads the header of a TPMS_ATTEST of type `expected` (named
/// `expected_name`), leaving the reader at the type-specific part. The one
/// TPMS_ATTEST parser: quotes and certifications both use it.
fn attest_header<'a>(
    data: &'a [u8],
    expected: u16,
    expected_name: &str,
) -> Result<(AttestHeader, Reader<'a>), QuoteError> {
    if data.len() > MAX_ATTEST {
        return fail(format!(
            "the attestation is {} bytes, more than {MAX_ATTEST}",
            data.len()
        ));
    }
    let mut r = Reader { rest: data };
    let magic = r.uint(4, "magic")? as u32;
    if magic != TPM_GENERATED_VALUE {
        return fail(format!(
            "the attestation does not begin with TPM_GENERATED_VALUE (0xff544347) but 0x{magic:08x}"
        ));
    }
    let kind = r.uint(2, "type")? as u16;
    if kind != expected {
        return fail(format!(
            "the attestation's type is 0x{kind:04x}, not {expected_name} (0x{expected:04x})"
        ));
    }
    let header = AttestHeader {
        qualified_signer: r.tpm2b("qualifiedSigner", MAX_NAME + 2)?.to_vec(),
        extra_data: r.tpm2b("extraData", 64 + 2)?.to_vec(),
        clock: r.uint(8, "clockInfo.clock")?,
        reset_count: r.uint(4, "clockInfo.resetCount")? as u32,
        restart_count: r.uint(4, "clockInfo.restartCount")? as u32,
        safe: r.uint(1, "clockInfo.safe")? != 0,
        firmware_version: r.uint(8, "firmwareVersion")?,
    };
    Ok((header, r))
}

impl Reader<'_> {
    fn finish(&self) -> Result<(), QuoteError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            fail(format!(
                "the attestation (TPMS_ATTEST) has {} unexpected bytes after its end",
                self.rest.len()
            ))
        }
    }
}

impl QuoteAttest {
    /// Parses a marshalled TPMS_ATTEST; refuses other types than quote.
    pub fn parse(data: &[u8]) -> Result<Self, QuoteError> {
        let (h, mut r) = attest_header(data, TPM_ST_ATTEST_QUOTE, "TPM_ST_ATTEST_QUOTE")?;
        let count = r.uint(4, "pcrSelect.count")?;
        if count > 16 {
            return fail(format!("the quote selects {count} PCR banks (16 at most)"));
        }
        let mut selection = Vec::new();
        for _ in 0..count {
            let bank = r.uint(2, "pcrSelect.hash")? as u16;
            let bitmap = r.tpm2b_u8("pcrSelect.pcrSelect")?;
            let pcrs = (0..bitmap.len() * 8)
                .filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
                .map(|i| i as u32)
                .collect();
            selection.push(PcrSelection { bank, pcrs });
        }
        let pcr_digest = r.tpm2b("pcrDigest", 64)?.to_vec();
        r.finish()?;
        Ok(QuoteAttest {
            qualified_signer: h.qualified_signer,
            extra_data: h.extra_data,
            clock: h.clock,
            reset_count: h.reset_count,
            restart_count: h.restart_count,
            safe: h.safe,
            firmware_version: h.firmware_version,
            selection,
            pcr_digest,
        })
    }
}

impl CertifyAttest {
    /// Parses a marshalled TPMS_ATTEST; refuses other types than certify.
    pub fn parse(data: &[u8]) -> Result<Self, QuoteError> {
        let (h, mut r) = attest_header(data, TPM_ST_ATTEST_CERTIFY, "TPM_ST_ATTEST_CERTIFY")?;
        let name = r.tpm2b("certify.name", MAX_NAME)?.to_vec();
        let qualified_name = r.tpm2b("certify.qualifiedName", MAX_NAME)?.to_vec();
        r.finish()?;
        Ok(CertifyAttest {
            qualified_signer: h.qualified_signer,
            extra_data: h.extra_data,
            clock: h.clock,
            reset_count: h.reset_count,
            restart_count: h.restart_count,
            safe: h.safe,
            firmware_version: h.firmware_version,
            name,
            qualified_name,
        })
    }
}

impl Reader<'_> {
    fn tpm2b_u8(&mut self, field: &str) -> Result<Vec<u8>, QuoteError> {
        let size = self.uint(1, field)? as usize;
        if size > 4 {
            return fail(format!("the quote's {field} is {size} bytes (4 at most)"));
        }
        Ok(self.take(size, field)?.to_vec())
    }
}

/// One quoted PCR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrValue {
    pub pcr: u32,
    /// Lowercase hex.
    pub value: String,
}

/// A TPM2_Quote as the device exports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// The marshalled TPMS_ATTEST, hex.
    pub attest: String,
    /// The marshalled TPMT_SIGNATURE, hex.
    pub signature: String,
    /// The SHA-256 bank's values of the quoted PCRs, ascending.
    pub pcrs: Vec<PcrValue>,
}

/// What a device sends to be verified: its report, the quote over it and
/// the nonce, and its event log (hex; empty when it has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    pub report: Report,
    pub nonce: String,
    pub quote: Option<Quote>,
    pub event_log: String,
}

/// The serialized PCR file of tpm2-tools (`tpm2_quote -o`,
/// `tpm2_checkquote -f`): the C structures as tpm2-tools keeps them,
/// little-endian: a TPML_PCR_SELECTION (count u32, 16 TPMS_PCR_SELECTION
/// of hash u16, sizeofSelect u8, pcrSelect\[4\], one padding byte), the
/// number of TPML_DIGEST that follow (u32), and those TPML_DIGEST (count
/// u32, 8 TPM2B_DIGEST of size u16 and a 64-byte buffer), 8 PCR values
/// per TPML_DIGEST.
pub fn tpm2_tools_pcr_file(pcrs: &[PcrValue]) -> Result<Vec<u8>, QuoteError> {
    let mut out = Vec::new();
    out.extend_from_slice(&1u32.to_le_bytes());
    let mut bitmap = [0u8; 4];
    for p in pcrs {
        if p.pcr >= 24 {
            return fail(format!("PCR {} is not 0-23", p.pcr));
        }
        bitmap[p.pcr as usize / 8] |= 1 << (p.pcr % 8);
    }
    out.extend_from_slice(&TPM_ALG_SHA256.to_le_bytes());
    out.push(3);
    out.extend_from_slice(&bitmap);
    out.push(0);
    out.resize(4 + 16 * 8, 0);
    let chunks: Vec<&[PcrValue]> = pcrs.chunks(8).collect();
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for chunk in chunks {
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        for i in 0..8 {
            let mut digest = [0u8; 66];
            if let Some(p) = chunk.get(i) {
                let value = crate::unhex(&p.value, 64)
                    .ok_or_else(|| QuoteError(format!("PCR {}'s value is not hex", p.pcr)))?;
                digest[..2].copy_from_slice(&(value.len() as u16).to_le_bytes());
                digest[2..2 + value.len()].copy_from_slice(&value);
            }
            out.extend_from_slice(&digest);
        }
    }
    Ok(out)
}

/// The files `tpm2_checkquote -m quote.msg -s quote.sig -f quote.pcrs
/// -g sha256 -q QUALIFYING_HEX -u AK` verifies, written into `dir`.
pub fn write_checkquote_files(quote: &Quote, dir: &std::path::Path) -> Result<(), QuoteError> {
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes)
            .map_err(|e| QuoteError(format!("writing {name}: {e}")))
    };
    let attest = crate::unhex(&quote.attest, MAX_ATTEST)
        .ok_or_else(|| QuoteError("the quote is not hex".into()))?;
    let signature = crate::unhex(&quote.signature, 1024)
        .ok_or_else(|| QuoteError("the signature is not hex".into()))?;
    write("quote.msg", &attest)?;
    write("quote.sig", &signature)?;
    write("quote.pcrs", &tpm2_tools_pcr_file(&quote.pcrs)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;

    fn attest(extra: &[u8], bitmap: [u8; 3], digest: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        a.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        a.extend_from_slice(&34u16.to_be_bytes());
        a.extend_from_slice(&[0x00, 0x0b]);
        a.extend_from_slice(&[9; 32]);
        a.extend_from_slice(&(extra.len() as u16).to_be_bytes());
        a.extend_from_slice(extra);
        a.extend_from_slice(&7u64.to_be_bytes());
        a.extend_from_slice(&1u32.to_be_bytes());
        a.extend_from_slice(&2u32.to_be_bytes());
        a.push(1);
        a.extend_from_slice(&0x2023u64.to_be_bytes());
        a.extend_from_slice(&1u32.to_be_bytes());
        a.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        a.push(3);
        a.extend_from_slice(&bitmap);
        a.extend_from_slice(&(digest.len() as u16).to_be_bytes());
        a.extend_from_slice(digest);
        a
    }

    #[test]
    fn a_quote_attest_parses() {
        let q = QuoteAttest::parse(&attest(&[5; 32], [0xff, 0, 0x01], &[1; 32])).unwrap();
        assert_eq!(q.extra_data, vec![5; 32]);
        assert_eq!(
            q.selection,
            vec![PcrSelection {
                bank: TPM_ALG_SHA256,
                pcrs: vec![0, 1, 2, 3, 4, 5, 6, 7, 16]
            }]
        );
        assert_eq!(q.pcr_digest, vec![1; 32]);
        assert_eq!(
            (q.clock, q.reset_count, q.restart_count, q.safe),
            (7, 1, 2, true)
        );
    }

    #[test]
    fn malformed_quotes_are_refused() {
        let good = attest(&[5; 32], [0xff, 0, 0], &[1; 32]);
        for cut in 0..good.len() {
            assert!(QuoteAttest::parse(&good[..cut]).is_err());
        }
        let mut long = good.clone();
        long.push(0);
        assert!(
            QuoteAttest::parse(&long)
                .unwrap_err()
                .0
                .contains("unexpected bytes")
        );
        let mut certify = good.clone();
        certify[5] = 0x17;
        assert!(
            QuoteAttest::parse(&certify)
                .unwrap_err()
                .0
                .contains("TPM_ST_ATTEST_QUOTE")
        );
        let mut magic = good;
        magic[0] = 0;
        assert!(
            QuoteAttest::parse(&magic)
                .unwrap_err()
                .0
                .contains("TPM_GENERATED_VALUE")
        );
    }

    #[test]
    fn qualifying_data_binds_report_and_nonce() {
        let a = qualifying_data(&[1; 32], &[2; 32]).unwrap();
        assert_ne!(a, qualifying_data(&[1; 32], &[3; 32]).unwrap());
        assert_ne!(a, qualifying_data(&[4; 32], &[2; 32]).unwrap());
        assert!(qualifying_data(&[1; 32], &[2; 15]).is_err());
        assert!(qualifying_data(&[1; 32], &[2; 65]).is_err());
    }

    #[test]
    fn the_pcr_file_has_tpm2_tools_layout() {
        let pcrs: Vec<PcrValue> = (0..9)
            .map(|i| PcrValue {
                pcr: i,
                value: hex(&[i as u8; 32]),
            })
            .collect();
        let file = tpm2_tools_pcr_file(&pcrs).unwrap();
        assert_eq!(file.len(), 132 + 4 + 2 * 532);
        assert_eq!(&file[4..11], &[0x0b, 0x00, 3, 0xff, 0x01, 0, 0]);
        assert_eq!(&file[132..136], &2u32.to_le_bytes());
        assert_eq!(&file[136..140], &8u32.to_le_bytes());
        assert_eq!(&file[140..142], &32u16.to_le_bytes());
        assert_eq!(file[142], 0);
        assert_eq!(&file[136 + 532..136 + 536], &1u32.to_le_bytes());
    }
}
