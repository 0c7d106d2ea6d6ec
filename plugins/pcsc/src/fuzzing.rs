//! Fuzzing entry point of the `piv_apdu_tlv` target (the `fuzz/` crate)
//! and its stable replay (`tests/fuzz_corpus.rs`): what the key store
//! runs on a card's answers.

use p256::pkcs8::EncodePublicKey;

use crate::KeyRef;
use crate::apdu::{self, Response};
use crate::mgmt::ManagementKey;
use crate::piv::{Piv, Transmit};

/// A card whose answers are the fuzzer's: each a big-endian u16 length
/// and that many bytes (what is left when fewer remain). Once they run
/// out the card is gone.
struct ScriptedCard<'a> {
    answers: &'a [u8],
    sent: usize,
}

/// Commands one input may make a card answer: far more than the
/// operations below need, and a bound if a loop forgot one.
const MAX_COMMANDS: usize = 4096;

impl Transmit for ScriptedCard<'_> {
    fn transmit(&mut self, _apdu: &[u8]) -> Result<Vec<u8>, pcsc::Error> {
        self.sent += 1;
        if self.answers.is_empty() || self.sent > MAX_COMMANDS {
            return Err(pcsc::Error::RemovedCard);
        }
        let (len, rest) = match self.answers {
            [hi, lo, rest @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
            [_] => (0, &[][..]),
            [] => return Err(pcsc::Error::RemovedCard),
        };
        let (answer, next) = rest.split_at(len.min(rest.len()));
        self.answers = next;
        Ok(answer.to_vec())
    }
}

/// `Response::parse`, `parse_tlvs`, `find` and `KeyRef::decode` on the
/// bytes; then every PIV command the key store sends, against a card
/// that answers with the bytes, with the key store's own handling of
/// what comes back (the generated point as a P-256 key, the signature as
/// DER ECDSA). A key reference that
/// decodes must encode back to the same bytes' meaning.
pub fn piv_apdu_tlv(data: &[u8]) -> Result<(), String> {
    let _ = Response::parse(data);
    if let Some(objects) = apdu::parse_tlvs(data) {
        let mut again = Vec::new();
        for (tag, value) in &objects {
            again.extend(apdu::tlv(tag, value));
        }
        if apdu::parse_tlvs(&again).as_ref() != Some(&objects) {
            return Err(format!(
                "TLVs {objects:02x?} do not read back from {again:02x?}"
            ));
        }
    }
    let _ = apdu::find(data, &[0x53]);
    if let Ok(key) = KeyRef::decode(data) {
        match KeyRef::decode(&key.encode()) {
            Ok(again) if again == key => {}
            other => return Err(format!("key reference {key:?} reads back as {other:?}")),
        }
    }

    let mut piv = Piv::new(ScriptedCard {
        answers: data,
        sent: 0,
    });
    let _ = piv.select();
    let _ = piv.guid();
    let _ = piv.serial();
    let _ = piv.secret_metadata(false);
    let _ = piv.secret_metadata(true);
    let _ = piv.verify_pin("123456");
    let _ = piv.pin_state();
    let _ = piv.reset_pin_status();
    let _ = piv.change_secret(false, "123456", "654321");
    let _ = piv.unblock_pin("12345678", "123456");
    let _ = piv.authenticate(&ManagementKey::factory());
    if let Ok(point) = piv.generate_p256(0x9a)
        && let Ok(key) = p256::PublicKey::from_sec1_bytes(&point)
    {
        let _ = key.to_public_key_der();
    }
    if let Ok(signature) = piv.sign_p256(0x9a, &[0x5a; 32]) {
        let _ = p256::ecdsa::Signature::from_der(&signature);
    }
    // The key store passes attestation certificates on unread (the
    // portal's parsers, fuzzed by `portal_tpm_der`, read them).
    let _ = piv.attest(0x9a);
    let _ = piv.attestation_certificate();
    let _ = piv.get_data(0x5FC10A);
    Ok(())
}
