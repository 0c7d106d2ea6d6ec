//! The signed integrity report: TPM2_Quote by the device's attestation key
//! (the AK of [`crate::attest`], the one the portal learned at activation)
//! over PCRs 0-7 of the SHA-256 bank, with qualifying data = SHA-256(report
//! digest || nonce) (`fleetkey_integrity::quote::qualifying_data`). The
//! protocol is in `docs/integrity.md`.

use fleetkey_integrity::hex;
use fleetkey_integrity::quote::{PcrValue, QUOTED_PCRS, Quote, QuoteAttest, pcr_digest};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{
    Data, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, SignatureScheme,
};
use tss_esapi::traits::Marshall;

use crate::connection::Tpm;
use crate::error::TpmError;
use crate::{TpmKeyStore, attest, keys};

/// A quote and the AK that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceQuote {
    pub quote: Quote,
    /// The AK's public area (marshalled TPMT_PUBLIC).
    pub ak_public: Vec<u8>,
    /// The AK's public key, SubjectPublicKeyInfo DER.
    pub ak_public_key_der: Vec<u8>,
}

/// Attempts when a PCR changes between the quote and reading the values.
const ATTEMPTS: usize = 3;

fn selection() -> Result<PcrSelectionList, TpmError> {
    const SLOTS: [PcrSlot; 8] = [
        PcrSlot::Slot0,
        PcrSlot::Slot1,
        PcrSlot::Slot2,
        PcrSlot::Slot3,
        PcrSlot::Slot4,
        PcrSlot::Slot5,
        PcrSlot::Slot6,
        PcrSlot::Slot7,
    ];
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &SLOTS)
        .build()
        .map_err(TpmError::Structure)
}

/// The SHA-256 values of PCRs 0-7 (one TPM2_PCR_Read: a TPM returns up to
/// 8 digests at once).
fn read_pcrs(tpm: &mut Tpm) -> Result<Vec<Vec<u8>>, TpmError> {
    let wanted = selection()?;
    let (_, read, digests) = tpm
        .context
        .execute_without_session(|ctx| ctx.pcr_read(wanted.clone()))
        .map_err(TpmError::Quote)?;
    if read != wanted || digests.len() != QUOTED_PCRS.len() {
        return Err(TpmError::Unexpected(format!(
            "PCR read: {} values instead of the SHA-256 bank's PCRs 0-7 (does the TPM have a SHA-256 bank?)",
            digests.len()
        )));
    }
    Ok(digests.value().iter().map(|d| d.value().to_vec()).collect())
}

/// TPM2_Quote of PCRs 0-7 (SHA-256) by the AK with `qualifying_data`, and
/// the PCR values it covers. The values are read after the quote and
/// checked against its PCR digest; if a PCR was extended in between, the
/// quote is made again.
pub fn quote(tpm: &mut Tpm, qualifying_data: &[u8; 32]) -> Result<DeviceQuote, TpmError> {
    let data = Data::try_from(qualifying_data.to_vec()).map_err(TpmError::Structure)?;
    let pcrs = selection()?;
    let (ak, ak_public) = attest::ak(tpm)?;
    let result = (|| {
        for _ in 0..ATTEMPTS {
            let (attest, signature) = tpm
                .context
                .execute_with_nullauth_session(|ctx| {
                    ctx.quote(ak, data.clone(), SignatureScheme::Null, pcrs.clone())
                })
                .map_err(TpmError::Quote)?;
            let attest = attest.marshall().map_err(TpmError::Structure)?;
            let values = read_pcrs(tpm)?;
            let parsed = QuoteAttest::parse(&attest)
                .map_err(|e| TpmError::Unexpected(format!("quote: {e}")))?;
            if parsed.pcr_digest != pcr_digest(&values) {
                tracing::info!("a PCR changed while quoting; quoting again");
                continue;
            }
            return Ok(Quote {
                attest: hex(&attest),
                signature: hex(&signature.marshall().map_err(TpmError::Structure)?),
                pcrs: QUOTED_PCRS
                    .iter()
                    .zip(values)
                    .map(|(pcr, v)| PcrValue {
                        pcr: *pcr,
                        value: hex(&v),
                    })
                    .collect(),
            });
        }
        Err(TpmError::Unexpected(format!(
            "PCRs kept changing during {ATTEMPTS} quotes"
        )))
    })();
    Ok(DeviceQuote {
        quote: result?,
        ak_public: ak_public.marshall().map_err(TpmError::Structure)?,
        ak_public_key_der: keys::public_key_der(&ak_public)?,
    })
}

impl TpmKeyStore {
    /// [`quote`] on this store's TPM.
    pub fn quote(&self, qualifying_data: &[u8; 32]) -> Result<DeviceQuote, TpmError> {
        self.with_tpm(|tpm| quote(tpm, qualifying_data))
    }
}
