//! The PIV card application's commands (NIST SP 800-73-4 part 2), and the
//! YubiKey extensions fleetkey uses where a card has them.

use zeroize::Zeroizing;

use crate::apdu::{self, Response, StatusWord, tlv};
use crate::mgmt::ManagementKey;

/// The PIV application's AID (truncated, as cards accept it).
pub const PIV_AID: [u8; 9] = [0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00];
/// Every PIV card's factory PIN.
pub const FACTORY_PIN: &str = "123456";

const PIN_REF: u8 = 0x80;
const PUK_REF: u8 = 0x81;
const MGMT_REF: u8 = 0x9B;
const ALG_P256: u8 = 0x11;
const CHUID: u32 = 0x5FC102;
const ATTESTATION_OBJECT: u32 = 0x5FFF01;

/// The longest answer taken from a card, its GET RESPONSE parts together:
/// PIV objects (certificates among them) are a few kilobytes at most.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// GET RESPONSE commands sent for one answer: enough for
/// [`MAX_RESPONSE_BYTES`] in 256-byte parts.
pub const MAX_GET_RESPONSES: usize = MAX_RESPONSE_BYTES / 256 + 1;

/// Sends raw APDUs to a card.
pub trait Transmit {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, pcsc::Error>;
}

/// Why a PIV command failed.
#[derive(Debug, thiserror::Error)]
pub enum PivError {
    #[error("{command}: {source}")]
    Transport {
        command: &'static str,
        #[source]
        source: pcsc::Error,
    },
    #[error("{command}: the card answered {sw:04X}")]
    Status {
        command: &'static str,
        sw: StatusWord,
    },
    #[error("{command}: the card's answer is malformed ({detail})")]
    Malformed {
        command: &'static str,
        detail: String,
    },
}

impl PivError {
    pub fn sw(&self) -> Option<StatusWord> {
        match self {
            PivError::Status { sw, .. } => Some(*sw),
            _ => None,
        }
    }

    fn malformed(command: &'static str, detail: impl Into<String>) -> Self {
        PivError::Malformed {
            command,
            detail: detail.into(),
        }
    }
}

/// PIN or PUK, padded with 0xFF to 8 bytes as PIV wants.
fn padded(secret: &str) -> Zeroizing<Vec<u8>> {
    let mut bytes = Zeroizing::new(secret.as_bytes().to_vec());
    bytes.resize(8, 0xFF);
    bytes
}

/// The certificate data object of a key slot.
pub fn cert_object(slot: u8) -> Option<u32> {
    match slot {
        0x9A => Some(0x5FC105),
        0x9C => Some(0x5FC10A),
        0x9D => Some(0x5FC10B),
        0x9E => Some(0x5FC101),
        0x82..=0x95 => Some(0x5FC10D + u32::from(slot - 0x82)),
        _ => None,
    }
}

/// What a card tells about its PIN or PUK (YubiKey GET METADATA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretMetadata {
    pub is_default: bool,
    pub tries_total: u8,
    pub tries_left: u8,
}

/// Outcome of a PIN or PUK check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretCheck {
    Ok,
    Wrong { tries_left: u32 },
    Blocked,
}

/// A card with the PIV application selected.
pub struct Piv<T: Transmit> {
    card: T,
}

impl<T: Transmit> Piv<T> {
    pub fn new(card: T) -> Self {
        Piv { card }
    }

    /// One command, with chaining out and GET RESPONSE in.
    pub fn command(
        &mut self,
        name: &'static str,
        ins: u8,
        p1: u8,
        p2: u8,
        data: &[u8],
    ) -> Result<Response, PivError> {
        let transport = |source| PivError::Transport {
            command: name,
            source,
        };
        let mut last = None;
        for apdu in apdu::chained(0x00, ins, p1, p2, data) {
            let raw = self.card.transmit(&apdu).map_err(transport)?;
            let response =
                Response::parse(&raw).ok_or_else(|| PivError::malformed(name, "no status word"))?;
            if apdu[0] & 0x10 != 0 && response.sw != apdu::SW_OK {
                return Ok(response);
            }
            last = Some(response);
        }
        let mut response = last.ok_or_else(|| PivError::malformed(name, "nothing sent"))?;
        let mut rounds = 0usize;
        while response.sw >> 8 == 0x61 {
            // A card that keeps answering 61 XX (with or without data)
            // must not hold the daemon in this loop or fill its memory.
            rounds += 1;
            if rounds > MAX_GET_RESPONSES || response.data.len() > MAX_RESPONSE_BYTES {
                return Err(PivError::malformed(
                    name,
                    format!(
                        "the card's answer goes on past {MAX_RESPONSE_BYTES} bytes or {MAX_GET_RESPONSES} GET RESPONSE commands"
                    ),
                ));
            }
            let raw = self
                .card
                .transmit(&apdu::get_response(response.sw as u8))
                .map_err(transport)?;
            let next =
                Response::parse(&raw).ok_or_else(|| PivError::malformed(name, "no status word"))?;
            response.data.extend_from_slice(&next.data);
            response.sw = next.sw;
        }
        Ok(response)
    }

    /// A command that must answer 90 00.
    fn ok(
        &mut self,
        name: &'static str,
        ins: u8,
        p1: u8,
        p2: u8,
        data: &[u8],
    ) -> Result<Vec<u8>, PivError> {
        let response = self.command(name, ins, p1, p2, data)?;
        if response.sw != apdu::SW_OK {
            return Err(PivError::Status {
                command: name,
                sw: response.sw,
            });
        }
        Ok(response.data)
    }

    /// SELECT the PIV application. `Ok(false)`: the card has none.
    pub fn select(&mut self) -> Result<bool, PivError> {
        let response = self.command("SELECT PIV", 0xA4, 0x04, 0x00, &PIV_AID)?;
        Ok(response.sw == apdu::SW_OK)
    }

    /// GET DATA of an object; None when the card has no such object.
    pub fn get_data(&mut self, tag: u32) -> Result<Option<Vec<u8>>, PivError> {
        let tag_bytes = &tag.to_be_bytes()[1..];
        let response = self.command("GET DATA", 0xCB, 0x3F, 0xFF, &tlv(&[0x5C], tag_bytes))?;
        match response.sw {
            apdu::SW_OK => {
                let value = apdu::find(&response.data, &[0x53])
                    .ok_or_else(|| PivError::malformed("GET DATA", "no 53 object"))?;
                Ok(Some(value.to_vec()))
            }
            apdu::SW_NOT_FOUND => Ok(None),
            sw => Err(PivError::Status {
                command: "GET DATA",
                sw,
            }),
        }
    }

    /// PUT DATA; empty `content` deletes the object.
    pub fn put_data(&mut self, tag: u32, content: &[u8]) -> Result<(), PivError> {
        let mut data = tlv(&[0x5C], &tag.to_be_bytes()[1..]);
        data.extend(tlv(&[0x53], content));
        self.ok("PUT DATA", 0xDB, 0x3F, 0xFF, &data).map(|_| ())
    }

    /// The CHUID's GUID, hex; None when the card has no CHUID or no GUID.
    pub fn guid(&mut self) -> Result<Option<String>, PivError> {
        let Some(chuid) = self.get_data(CHUID)? else {
            return Ok(None);
        };
        Ok(apdu::find(&chuid, &[0x34])
            .filter(|guid| guid.len() == 16 && guid.iter().any(|b| *b != 0))
            .map(hex::encode))
    }

    /// YubiKey GET SERIAL; None on cards without it.
    pub fn serial(&mut self) -> Result<Option<u32>, PivError> {
        let response = self.command("GET SERIAL", 0xF8, 0x00, 0x00, &[])?;
        match (response.sw, <[u8; 4]>::try_from(response.data.as_slice())) {
            (apdu::SW_OK, Ok(bytes)) => Ok(Some(u32::from_be_bytes(bytes))),
            _ => Ok(None),
        }
    }

    /// YubiKey GET METADATA for the PIN (80) or PUK (81); None on cards
    /// without it.
    pub fn secret_metadata(&mut self, puk: bool) -> Result<Option<SecretMetadata>, PivError> {
        let reference = if puk { PUK_REF } else { PIN_REF };
        let response = self.command("GET METADATA", 0xF7, 0x00, reference, &[])?;
        if response.sw != apdu::SW_OK {
            return Ok(None);
        }
        let default = apdu::find(&response.data, &[0x05]);
        let retries = apdu::find(&response.data, &[0x06]);
        match (default, retries) {
            (Some([default]), Some([total, left])) => Ok(Some(SecretMetadata {
                is_default: *default != 0,
                tries_total: *total,
                tries_left: *left,
            })),
            _ => Ok(None),
        }
    }

    fn secret_check(command: &'static str, response: Response) -> Result<SecretCheck, PivError> {
        match response.sw {
            apdu::SW_OK => Ok(SecretCheck::Ok),
            apdu::SW_AUTH_BLOCKED => Ok(SecretCheck::Blocked),
            sw => match apdu::tries_left(sw) {
                Some(0) => Ok(SecretCheck::Blocked),
                Some(tries_left) => Ok(SecretCheck::Wrong { tries_left }),
                None => Err(PivError::Status { command, sw }),
            },
        }
    }

    /// VERIFY the PIN.
    pub fn verify_pin(&mut self, pin: &str) -> Result<SecretCheck, PivError> {
        let response = self.command("VERIFY", 0x20, 0x00, PIN_REF, &padded(pin))?;
        Self::secret_check("VERIFY", response)
    }

    /// VERIFY without data: the PIN's state without spending a try.
    /// `Ok` means verified in this session.
    pub fn pin_state(&mut self) -> Result<SecretCheck, PivError> {
        let response = self.command("VERIFY (status)", 0x20, 0x00, PIN_REF, &[])?;
        Self::secret_check("VERIFY (status)", response)
    }

    /// VERIFY with P1=FF: resets the PIN's security status (SP 800-73-4
    /// part 2, 3.2.1), so a PIN verified earlier no longer allows
    /// anything. `Ok(false)`: the card refused it (older cards); the
    /// caller must then reset the card instead.
    pub fn reset_pin_status(&mut self) -> Result<bool, PivError> {
        let response = self.command("VERIFY (reset)", 0x20, 0xFF, PIN_REF, &[])?;
        Ok(response.sw == apdu::SW_OK)
    }

    /// CHANGE REFERENCE DATA of the PIN (or PUK).
    pub fn change_secret(
        &mut self,
        puk: bool,
        old: &str,
        new: &str,
    ) -> Result<SecretCheck, PivError> {
        let mut data = padded(old);
        data.extend_from_slice(&padded(new));
        let reference = if puk { PUK_REF } else { PIN_REF };
        let response = self.command("CHANGE REFERENCE DATA", 0x24, 0x00, reference, &data)?;
        Self::secret_check("CHANGE REFERENCE DATA", response)
    }

    /// RESET RETRY COUNTER: a new PIN with the PUK.
    pub fn unblock_pin(&mut self, puk: &str, new_pin: &str) -> Result<SecretCheck, PivError> {
        let mut data = padded(puk);
        data.extend_from_slice(&padded(new_pin));
        let response = self.command("RESET RETRY COUNTER", 0x2C, 0x00, PIN_REF, &data)?;
        Self::secret_check("RESET RETRY COUNTER", response)
    }

    /// Mutual authentication with the management key (9B): the card
    /// proves it knows the key too. `Ok(false)`: the card refused the key.
    pub fn authenticate(&mut self, key: &ManagementKey) -> Result<bool, PivError> {
        const NAME: &str = "GENERAL AUTHENTICATE (management key)";
        let alg = key.algorithm_id();
        let step1 = tlv(&[0x7C], &tlv(&[0x80], &[]));
        let response = self.command(NAME, 0x87, alg, MGMT_REF, &step1)?;
        if response.sw != apdu::SW_OK {
            return match response.sw {
                // The card does not have a key of this algorithm.
                0x6A80 | 0x6A86 | apdu::SW_SECURITY_NOT_SATISFIED => Ok(false),
                sw => Err(PivError::Status { command: NAME, sw }),
            };
        }
        let witness = apdu::find(&response.data, &[0x7C])
            .and_then(|t| apdu::find(t, &[0x80]))
            .filter(|w| w.len() == key.block_len())
            .ok_or_else(|| PivError::malformed(NAME, "no witness"))?;
        let mut witness = Zeroizing::new(witness.to_vec());
        key.decrypt_block(&mut witness)
            .map_err(|e| PivError::malformed(NAME, e))?;
        let mut challenge = vec![0u8; key.block_len()];
        getrandom::fill(&mut challenge).map_err(|e| PivError::malformed(NAME, e.to_string()))?;
        let mut inner = tlv(&[0x80], &witness);
        inner.extend(tlv(&[0x81], &challenge));
        inner.extend(tlv(&[0x82], &[]));
        let response = self.command(NAME, 0x87, alg, MGMT_REF, &tlv(&[0x7C], &inner))?;
        match response.sw {
            apdu::SW_OK => {}
            apdu::SW_SECURITY_NOT_SATISFIED | 0x6A80 | 0x6300 => return Ok(false),
            sw => return Err(PivError::Status { command: NAME, sw }),
        }
        let answer = apdu::find(&response.data, &[0x7C])
            .and_then(|t| apdu::find(t, &[0x82]))
            .ok_or_else(|| PivError::malformed(NAME, "no response to our challenge"))?;
        let mut expected = challenge;
        key.encrypt_block(&mut expected)
            .map_err(|e| PivError::malformed(NAME, e))?;
        if answer != expected.as_slice() {
            return Err(PivError::malformed(
                NAME,
                "the card does not know the management key it accepted",
            ));
        }
        Ok(true)
    }

    /// YubiKey ATTEST: the attestation certificate (DER) of a key
    /// generated in `slot`, signed by the card's F9 attestation key; None
    /// on cards that cannot attest.
    pub fn attest(&mut self, slot: u8) -> Result<Option<Vec<u8>>, PivError> {
        let response = self.command("ATTEST", 0xF9, slot, 0x00, &[])?;
        match response.sw {
            apdu::SW_OK if response.data.first() == Some(&0x30) => Ok(Some(response.data)),
            apdu::SW_OK => Err(PivError::malformed("ATTEST", "not a certificate")),
            apdu::SW_INS_NOT_SUPPORTED | 0x6A80 | 0x6A86 | 0x6E00 => Ok(None),
            sw => Err(PivError::Status {
                command: "ATTEST",
                sw,
            }),
        }
    }

    /// The F9 attestation key's own certificate (object 5FFF01).
    pub fn attestation_certificate(&mut self) -> Result<Option<Vec<u8>>, PivError> {
        Ok(self
            .get_data(ATTESTATION_OBJECT)?
            .and_then(|object| apdu::find(&object, &[0x70]).map(<[u8]>::to_vec)))
    }

    /// GENERATE ASYMMETRIC KEY PAIR (P-256) in `slot`; the public point
    /// (SEC1, uncompressed).
    pub fn generate_p256(&mut self, slot: u8) -> Result<Vec<u8>, PivError> {
        const NAME: &str = "GENERATE ASYMMETRIC KEY PAIR";
        let data = tlv(&[0xAC], &tlv(&[0x80], &[ALG_P256]));
        let answer = self.ok(NAME, 0x47, 0x00, slot, &data)?;
        let point = apdu::find(&answer, &[0x7F, 0x49])
            .and_then(|t| apdu::find(t, &[0x86]))
            .filter(|p| p.len() == 65 && p[0] == 0x04)
            .ok_or_else(|| PivError::malformed(NAME, "no P-256 point"))?;
        Ok(point.to_vec())
    }

    /// GENERAL AUTHENTICATE with a slot's P-256 key over a digest; the DER
    /// ECDSA signature.
    pub fn sign_p256(&mut self, slot: u8, digest: &[u8; 32]) -> Result<Vec<u8>, PivError> {
        const NAME: &str = "GENERAL AUTHENTICATE (sign)";
        let mut inner = tlv(&[0x82], &[]);
        inner.extend(tlv(&[0x81], digest));
        let answer = self.ok(NAME, 0x87, ALG_P256, slot, &tlv(&[0x7C], &inner))?;
        let signature = apdu::find(&answer, &[0x7C])
            .and_then(|t| apdu::find(t, &[0x82]))
            .filter(|s| s.first() == Some(&0x30))
            .ok_or_else(|| PivError::malformed(NAME, "no signature"))?;
        Ok(signature.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A card that answers every command with the same bytes.
    struct Repeating(Vec<u8>, usize);

    impl Transmit for Repeating {
        fn transmit(&mut self, _apdu: &[u8]) -> Result<Vec<u8>, pcsc::Error> {
            self.1 += 1;
            Ok(self.0.clone())
        }
    }

    #[test]
    fn a_card_answering_61xx_forever_is_refused() {
        // 61 01 with no data: the answer never grows, the loop must end.
        let mut piv = Piv::new(Repeating(vec![0x61, 0x01], 0));
        let error = piv.select().unwrap_err();
        assert!(
            matches!(&error, PivError::Malformed { detail, .. } if detail.contains("GET RESPONSE")),
            "{error}"
        );
        assert_eq!(piv.card.1, MAX_GET_RESPONSES + 1);
        // 255 bytes and 61 00 each time: refused once past the size bound.
        let mut answer = vec![0xAB; 255];
        answer.extend([0x61, 0x00]);
        let mut piv = Piv::new(Repeating(answer, 0));
        assert!(matches!(
            piv.get_data(0x5FC102),
            Err(PivError::Malformed { .. })
        ));
        assert!(piv.card.1 <= MAX_GET_RESPONSES + 1);
    }

    #[test]
    fn a_long_answer_in_parts_is_joined() {
        struct Parts(Vec<Vec<u8>>);
        impl Transmit for Parts {
            fn transmit(&mut self, _apdu: &[u8]) -> Result<Vec<u8>, pcsc::Error> {
                Ok(self.0.remove(0))
            }
        }
        let mut piv = Piv::new(Parts(vec![
            [vec![1; 256], vec![0x61, 0x00]].concat(),
            [vec![2; 100], vec![0x90, 0x00]].concat(),
        ]));
        let response = piv.command("TEST", 0xCB, 0, 0, &[]).unwrap();
        assert_eq!(response.sw, apdu::SW_OK);
        assert_eq!(response.data.len(), 356);
    }
}
