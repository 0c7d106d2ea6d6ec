//! The PIV card application: APDU processing and the card's persistent
//! state.
//!
//! Implemented (SP 800-73-4 part 2): SELECT of the PIV AID, GET DATA, PUT
//! DATA, VERIFY (PIN 80), CHANGE REFERENCE DATA (PIN 80, PUK 81), RESET
//! RETRY COUNTER, GENERAL AUTHENTICATE (management key 9B by mutual or
//! external authentication with 3DES or AES; ECDSA P-256 signing with keys
//! 9A, 9C, 9D, 9E and 82-95), GENERATE ASYMMETRIC KEY PAIR (P-256),
//! command chaining and GET RESPONSE. YubiKey extensions: GET VERSION
//! (FD), GET SERIAL (F8), GET METADATA (F7) for the PIN and PUK, and
//! ATTEST (F9) on cards made with a manufacturer attestation CA.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::elliptic_curve::Generate;
use serde::{Deserialize, Serialize};

/// What the card answers to one APDU.
pub enum Reply {
    Response(Vec<u8>),
    /// The card leaves the reader without answering (test hook).
    Pull,
}

/// ATR: T=1, historical bytes "fleetkey-sim".
const ATR_HISTORICAL: &[u8] = b"fleetkey-sim";

/// The PIV application's full AID (NIST RID, PIX 0000 1000 0100).
const PIV_AID: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];

const SW_OK: u16 = 0x9000;
const SW_WRONG_LENGTH: u16 = 0x6700;
const SW_SECURITY: u16 = 0x6982;
const SW_BLOCKED: u16 = 0x6983;
const SW_WRONG_DATA: u16 = 0x6A80;
const SW_NOT_FOUND: u16 = 0x6A82;
const SW_WRONG_P1P2: u16 = 0x6A86;
const SW_INS: u16 = 0x6D00;
const SW_CLA: u16 = 0x6E00;
const SW_CONDITIONS: u16 = 0x6985;

const PIN_REF: u8 = 0x80;
const PUK_REF: u8 = 0x81;
const MGMT_REF: u8 = 0x9B;
const ALG_3DES: u8 = 0x03;
const ALG_AES128: u8 = 0x08;
const ALG_AES192: u8 = 0x0A;
const ALG_AES256: u8 = 0x0C;
const ALG_P256: u8 = 0x11;

pub const FACTORY_PIN: &str = "123456";
pub const FACTORY_PUK: &str = "12345678";
/// The well-known factory management key (3DES) of PIV cards and tokens.
pub const FACTORY_MGMT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

#[derive(Debug, Serialize, Deserialize)]
struct State {
    serial: u32,
    guid: String,
    pin: String,
    puk: String,
    pin_retries: u8,
    pin_tries_left: u8,
    puk_retries: u8,
    puk_tries_left: u8,
    pin_is_default: bool,
    puk_is_default: bool,
    mgmt_alg: u8,
    mgmt_key: String,
    /// Slot (hex) to private scalar (hex).
    keys: BTreeMap<String, String>,
    /// Data object tag (hex) to content (hex).
    objects: BTreeMap<String, String>,
    /// The attestation key (slot F9), hex; none: the card cannot attest.
    #[serde(default)]
    attestation_key: Option<String>,
}

/// The simulated manufacturer's attestation CA, shared by the cards made
/// with it (a file: its key and certificate; the certificate also as
/// `FILE.pem`, for the portal to trust).
#[derive(Debug, Serialize, Deserialize)]
struct ManufacturerCa {
    key: String,
    cert: String,
}

const CA_NAME: &str = "fleetkey PIV simulator attestation CA";

impl ManufacturerCa {
    fn load_or_create(path: &Path) -> Result<ManufacturerCa, String> {
        if let Ok(bytes) = std::fs::read(path) {
            return serde_json::from_slice(&bytes)
                .map_err(|e| format!("attestation CA {} is damaged: {e}", path.display()));
        }
        let key = SigningKey::try_generate().map_err(|e| format!("key generation: {e}"))?;
        let public = p256::PublicKey::from(key.verifying_key());
        let cert =
            crate::x509::certificate(CA_NAME, &public, CA_NAME, &key, &random::<8>()?, true)?;
        let ca = ManufacturerCa {
            key: hex::encode(key.to_bytes()),
            cert: hex::encode(&cert),
        };
        let text = serde_json::to_vec_pretty(&ca).map_err(|e| e.to_string())?;
        std::fs::write(path, text)
            .and_then(|()| std::fs::write(path.with_extension("pem"), crate::x509::pem(&cert)))
            .map_err(|e| format!("cannot write attestation CA {}: {e}", path.display()))?;
        Ok(ca)
    }
}

/// The F9 attestation certificate object (YubiKey keeps it in 5FFF01).
const ATTESTATION_OBJECT: &str = "5fff01";

pub struct Card {
    path: PathBuf,
    state: State,
    pull_on_sign: bool,
    /// Security status, lost at power off.
    pin_verified: bool,
    mgmt_authenticated: bool,
    /// Management-key challenge or witness awaiting its answer.
    pending_auth: Option<PendingAuth>,
    /// Data of a chained command so far.
    chain: Vec<u8>,
    /// Response bytes not yet fetched with GET RESPONSE.
    pending_response: Vec<u8>,
    atr: Vec<u8>,
}

enum PendingAuth {
    /// We sent an encrypted witness; expect it decrypted.
    Witness(Vec<u8>),
    /// We sent a plain challenge; expect it encrypted.
    Challenge(Vec<u8>),
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    hex::decode(text).map_err(|e| format!("bad hex {text:?}: {e}"))
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(bytes)
}

/// BER-TLV length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
}

fn tlv(tag: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = tag.to_vec();
    push_len(&mut out, value.len());
    out.extend_from_slice(value);
    out
}

/// Splits BER-TLV objects: (tag bytes, value).
fn parse_tlvs(mut data: &[u8]) -> Option<Vec<(Vec<u8>, &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let mut tag_len = 1;
        if data[0] & 0x1F == 0x1F {
            tag_len += 1;
            while *data.get(tag_len - 1)? & 0x80 != 0 {
                tag_len += 1;
            }
        }
        let tag = data.get(..tag_len)?.to_vec();
        let rest = &data[tag_len..];
        let (len, header) = match *rest.first()? {
            n if n < 0x80 => (usize::from(n), 1),
            0x81 => (usize::from(*rest.get(1)?), 2),
            0x82 => (
                usize::from(*rest.get(1)?) << 8 | usize::from(*rest.get(2)?),
                3,
            ),
            _ => return None,
        };
        let value = rest.get(header..header + len)?;
        out.push((tag, value));
        data = &rest[header + len..];
    }
    Some(out)
}

/// The data object holding a key slot's certificate.
fn cert_object(slot: u8) -> Option<u32> {
    match slot {
        0x9A => Some(0x5FC105),
        0x9C => Some(0x5FC10A),
        0x9D => Some(0x5FC10B),
        0x9E => Some(0x5FC101),
        0x82..=0x95 => Some(0x5FC10D + u32::from(slot - 0x82)),
        _ => None,
    }
}

fn is_key_slot(slot: u8) -> bool {
    cert_object(slot).is_some()
}

fn unpad(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|b| *b == 0xFF).unwrap_or(bytes.len());
    if bytes[end..].iter().any(|b| *b != 0xFF) {
        return None;
    }
    String::from_utf8(bytes[..end].to_vec()).ok()
}

impl Card {
    pub fn load_or_create(
        path: &Path,
        serial: Option<u32>,
        attestation_ca: Option<&Path>,
    ) -> Result<Card, String> {
        let state = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("card state {} is damaged: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let serial = match serial {
                    Some(serial) => serial,
                    None => u32::from_be_bytes(random::<4>()?) % 90_000_000 + 10_000_000,
                };
                let state = State {
                    serial,
                    guid: hex::encode(random::<16>()?),
                    pin: FACTORY_PIN.into(),
                    puk: FACTORY_PUK.into(),
                    pin_retries: 3,
                    pin_tries_left: 3,
                    puk_retries: 3,
                    puk_tries_left: 3,
                    pin_is_default: true,
                    puk_is_default: true,
                    mgmt_alg: ALG_3DES,
                    mgmt_key: hex::encode(FACTORY_MGMT_KEY),
                    keys: BTreeMap::new(),
                    objects: BTreeMap::new(),
                    attestation_key: None,
                };
                let mut card = Card::new(path, state);
                card.install_identity()?;
                if let Some(ca) = attestation_ca {
                    card.install_attestation(&ManufacturerCa::load_or_create(ca)?)?;
                }
                card.save()?;
                return Ok(card);
            }
            Err(e) => return Err(format!("cannot read card state {}: {e}", path.display())),
        };
        Ok(Card::new(path, state))
    }

    fn new(path: &Path, state: State) -> Card {
        let mut atr = vec![0x3B, 0x80 | ATR_HISTORICAL.len() as u8, 0x80, 0x01];
        atr.extend_from_slice(ATR_HISTORICAL);
        let tck = atr[1..].iter().fold(0u8, |acc, b| acc ^ b);
        atr.push(tck);
        Card {
            path: path.to_path_buf(),
            state,
            pull_on_sign: false,
            pin_verified: false,
            mgmt_authenticated: false,
            pending_auth: None,
            chain: Vec::new(),
            pending_response: Vec::new(),
            atr,
        }
    }

    pub fn with_pull_on_sign(mut self, pull: bool) -> Self {
        self.pull_on_sign = pull;
        self
    }

    pub fn atr(&self) -> &[u8] {
        &self.atr
    }

    /// The CHUID (with FASC-N and GUID), as an issuer writes it.
    fn install_identity(&mut self) -> Result<(), String> {
        let guid = unhex(&self.state.guid)?;
        // FASC-N of a "non-federal issuer" card: agency code 9999.
        let fascn = [
            0xD4, 0xE7, 0x39, 0xDA, 0x73, 0x9C, 0xED, 0x39, 0xCE, 0x73, 0x9D, 0x83, 0x68, 0x58,
            0x21, 0x08, 0x42, 0x10, 0x84, 0x21, 0xC8, 0x42, 0x10, 0xC3, 0xEB,
        ];
        let mut chuid = tlv(&[0x30], &fascn);
        chuid.extend(tlv(&[0x34], &guid));
        chuid.extend(tlv(&[0x35], b"20991231"));
        chuid.extend(tlv(&[0x3E], &[]));
        chuid.extend(tlv(&[0xFE], &[]));
        self.state
            .objects
            .insert("5fc102".into(), hex::encode(&chuid));
        Ok(())
    }

    /// An attestation key (F9) with a certificate from the manufacturer.
    fn install_attestation(&mut self, ca: &ManufacturerCa) -> Result<(), String> {
        let ca_key = SigningKey::from_slice(&unhex(&ca.key)?)
            .map_err(|e| format!("attestation CA key: {e}"))?;
        let key = SigningKey::try_generate().map_err(|e| format!("key generation: {e}"))?;
        let public = p256::PublicKey::from(key.verifying_key());
        let cert = crate::x509::certificate(
            &format!("fleetkey PIV simulator attestation {}", self.state.serial),
            &public,
            CA_NAME,
            &ca_key,
            &random::<8>()?,
            true,
        )?;
        let mut object = tlv(&[0x70], &cert);
        object.extend(tlv(&[0x71], &[0x00]));
        object.extend(tlv(&[0xFE], &[]));
        self.state
            .objects
            .insert(ATTESTATION_OBJECT.into(), hex::encode(&object));
        self.state.attestation_key = Some(hex::encode(key.to_bytes()));
        Ok(())
    }

    /// YubiKey ATTEST: a certificate for a key generated in `slot`, signed
    /// by the F9 key.
    fn attest(&mut self, c: &Command) -> Result<Vec<u8>, u16> {
        let Some(attestation_key) = &self.state.attestation_key else {
            return Err(SW_INS);
        };
        if !is_key_slot(c.p1) {
            return Err(SW_WRONG_P1P2);
        }
        let scalar = self
            .state
            .keys
            .get(&format!("{:02x}", c.p1))
            .ok_or(SW_NOT_FOUND)?;
        let internal = |_| 0x6581u16;
        let key =
            SigningKey::from_slice(&unhex(scalar).map_err(internal)?).map_err(|_| 0x6581u16)?;
        let signer = SigningKey::from_slice(&unhex(attestation_key).map_err(internal)?)
            .map_err(|_| 0x6581u16)?;
        let public = p256::PublicKey::from(key.verifying_key());
        crate::x509::certificate(
            &format!("fleetkey PIV simulator attested key {:02x}", c.p1),
            &public,
            &format!("fleetkey PIV simulator attestation {}", self.state.serial),
            &signer,
            &random::<8>().map_err(internal)?,
            false,
        )
        .map_err(internal)
    }

    fn save(&self) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| format!("cannot encode card state: {e}"))?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| format!("cannot write card state {}: {e}", self.path.display()))
    }

    /// Power off or reset: the security status is lost.
    pub fn power_off(&mut self) {
        self.pin_verified = false;
        self.mgmt_authenticated = false;
        self.pending_auth = None;
        self.chain.clear();
        self.pending_response.clear();
    }

    /// One command APDU to one response APDU.
    pub fn process(&mut self, apdu: &[u8]) -> Reply {
        let Some(command) = Command::parse(apdu) else {
            return Reply::Response(sw(SW_WRONG_LENGTH));
        };
        if command.cla & 0xEF != 0x00 {
            return Reply::Response(sw(SW_CLA));
        }
        if command.ins == 0xC0 {
            return Reply::Response(self.get_response(command.le));
        }
        self.pending_response.clear();
        let data = if command.cla & 0x10 != 0 {
            self.chain.extend_from_slice(&command.data);
            return Reply::Response(sw(SW_OK));
        } else if self.chain.is_empty() {
            command.data.clone()
        } else {
            let mut data = std::mem::take(&mut self.chain);
            data.extend_from_slice(&command.data);
            data
        };
        let command = Command { data, ..command };
        if command.ins == 0x87 && self.pull_on_sign && is_key_slot(command.p2) {
            return Reply::Pull;
        }
        let (body, status) = match self.execute(&command) {
            Ok(body) => (body, SW_OK),
            Err(status) => (Vec::new(), status),
        };
        if status != SW_OK {
            return Reply::Response(sw(status));
        }
        self.pending_response = body;
        Reply::Response(self.get_response(command.le))
    }

    /// The next part of a response, with 61 XX while more is left.
    fn get_response(&mut self, le: usize) -> Vec<u8> {
        let take = le.min(self.pending_response.len());
        let mut out: Vec<u8> = self.pending_response.drain(..take).collect();
        let left = self.pending_response.len();
        if left == 0 {
            out.extend(sw(SW_OK));
        } else {
            out.extend([0x61, left.min(256) as u8]);
        }
        out
    }

    fn execute(&mut self, c: &Command) -> Result<Vec<u8>, u16> {
        match c.ins {
            0xA4 => self.select(c),
            0xCB => self.get_data(c),
            0xDB => self.put_data(c),
            0x20 => self.verify(c),
            0x24 => self.change_reference(c),
            0x2C => self.reset_retry_counter(c),
            0x87 => self.general_authenticate(c),
            0x47 => self.generate(c),
            0xFD => Ok(vec![5, 4, 3]),
            0xF8 => Ok(self.state.serial.to_be_bytes().to_vec()),
            0xF7 => self.metadata(c),
            0xF9 => self.attest(c),
            _ => Err(SW_INS),
        }
    }

    fn persist(&self) -> Result<(), u16> {
        self.save().map_err(|e| {
            eprintln!("fleetkey-piv-sim: {e}");
            0x6581
        })
    }

    fn select(&mut self, c: &Command) -> Result<Vec<u8>, u16> {
        if c.p1 != 0x04 || c.data.len() < 5 || !PIV_AID.starts_with(&c.data) {
            return Err(SW_NOT_FOUND);
        }
        self.pin_verified = false;
        self.mgmt_authenticated = false;
        let mut apt = tlv(&[0x4F], &PIV_AID[5..]);
        apt.extend(tlv(&[0x79], &tlv(&[0x4F], &PIV_AID[..5])));
        apt.extend(tlv(&[0x50], b"fleetkey PIV simulator"));
        let mut algorithms = Vec::new();
        for alg in [ALG_3DES, ALG_AES128, ALG_AES192, ALG_AES256, ALG_P256] {
            algorithms.extend(tlv(&[0x80], &[alg]));
        }
        algorithms.extend(tlv(&[0x06], &[0x00]));
        apt.extend(tlv(&[0xAC], &algorithms));
        Ok(tlv(&[0x61], &apt))
    }

    fn object_tag(c: &Command) -> Result<u32, u16> {
        if (c.p1, c.p2) != (0x3F, 0xFF) {
            return Err(SW_WRONG_P1P2);
        }
        let tlvs = parse_tlvs(&c.data).ok_or(SW_WRONG_DATA)?;
        let (tag, value) = tlvs.first().ok_or(SW_WRONG_DATA)?;
        if tag.as_slice() != [0x5C] || value.is_empty() || value.len() > 3 {
            return Err(SW_WRONG_DATA);
        }
        Ok(value.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)))
    }

    fn get_data(&mut self, c: &Command) -> Result<Vec<u8>, u16> {
        let tag = Self::object_tag(c)?;
        if tag == 0x7E {
            // Discovery object: the AID, PIN usage policy "PIV PIN only".
            let mut value = tlv(&[0x4F], &PIV_AID);
            value.extend(tlv(&[0x5F, 0x2F], &[0x40, 0x00]));
            return Ok(tlv(&[0x7E], &value));
        }
        match self.state.objects.get(&format!("{tag:06x}")) {
            Some(content) => Ok(tlv(&[0x53], &unhex(content).map_err(|_| 0x6581u16)?)),
            None => Err(SW_NOT_FOUND),
        }
    }

    fn put_data(&mut self, c: &Command) -> Result<Vec<u8>, u16> {
        if !self.mgmt_authenticated {
            return Err(SW_SECURITY);
        }
        let tlvs = parse_tlvs(&c.data).ok_or(SW_WRONG_DATA)?;
        let tag = Self::object_tag(&Command {
            data: tlvs.first().map(|(t, v)| tlv(t, v)).ok_or(SW_WRONG_DATA)?,
            ..c.clone()
        })?;
        let (content_tag, content) = tlvs.get(1).ok_or(SW_WRONG_DATA)?;
        if content_tag.as_slice() != [0x53] {
            return Err(SW_WRONG_DATA);
        }
        let key = format!("{tag:06x}");
        if content.is_empty() {
            self.state.objects.remove(&key);
        } else {
            self.state.objects.insert(key, hex::encode(content));
        }
        self.persist()?;
        Ok(Vec::new())
    }

    fn check_secret(&mut self, reference: u8, given: &[u8]) -> Result<(), u16> {
        let (secret, left) = match reference {
            PIN_REF => (self.state.pin.clone(), self.state.pin_tries_left),
            PUK_REF => (self.state.puk.clone(), self.state.puk_tries_left),
            _ => return Err(SW_NOT_FOUND),
        };
        if left == 0 {
            return Err(SW_BLOCKED);
        }
        let ok = given.len() == 8 && unpad(given).is_some_and(|g| g == secret);
        let (tries, max) = match reference {
            PIN_REF => (&mut self.state.pin_tries_left, self.state.pin_retries),
            _ => (&mut self.state.puk_tries_left, self.state.puk_retries),
        };
        if ok {
            *tries = max;
        } else {
            *tries -= 1;
        }
        let left = *tries;
        self.persist()?;
        if ok {
            Ok(())
        } else if left == 0 {
            Err(SW_BLOCKED)
        } else {
            Err(0x63C0 | u16::from(left))
        }
    }

    fn verify(&mut self, c: &Command) -> Result<Vec<u8>, u16> {
        if c.p2 != PIN_REF {
            return Err(SW_NOT_FOUND);
        }
        if c.p1 == 0xFF {
            self.pin_verified = false;
            return Ok(Vec::new());
        }
        if c.data.is_empty() {
            return match (self.pin_verified, self.state.pin_tries_left) {
                (true, _) => Ok(Vec::new()),
                (false, 0) => Err(SW_BLOCKED),
                (false, left) => Err(0x63C0 | u16::from(left)),
            };
        }
        self.pin_verified = false;
        self.check_secret(PIN_REF, &c.data)?;
        self.pin_verified = true;
        Ok(Vec::new())
    }

    /// A new PIN or PUK: 6 to 8 bytes, as YubiKeys accept them.
    fn new_secret(bytes: &[u8]) -> Result<String, u16> {
        let secret = unpad(bytes).ok_or(SW_WRONG_DATA)?;
        if !(6..=8).contains(&secret.len()) {
            return Err(SW_WRONG_DATA);
        }
        Ok(secret)
    }

    fn change_reference(&mut self, c: &Command) -> Result<Vec<u8>, u16> {
        if c.data.len() != 16 {
            return Err(SW_WRONG_LENGTH);
        }
        let new = Self::new_secret(&c.data[8..])?;
        self.check_secret(c.p2, &c.data[..8])?;
        if c.p2 == PIN_REF {
            self.state.pin = new;
            self.state.pin_is_default = false;
        } else {
            self.state.puk = new;
            self.state.puk_is_default = false;
        }
        self.persist()?;
        Ok(Vec::new())
    }

    fn reset_retry_counter(&mut self, c: &Command) -> Result<Vec<u8>, u16> {
        if c.p2 != PIN_REF {
            return Err(SW_NOT_FOUND);
        }
        if c.data.len() != 16 {
            return Err(SW_WRONG_LENGTH);
        }
        let new = Self::new_secret(&c.data[8..])?;
        self.check_secret(PUK_REF, &c.data[..8])?;
        self.state.pin = new;
        self.state.pin_is_default = false;
        self.state.pin_tries_left = self.state.pin_retries;
        self.persist()?;
        Ok(Vec::new())
    }

    fn metadata(&mut self, c: &Command) -> Result<Vec<u8>, u16> {
        let (default, retries, left) = match c.p2 {
            PIN_REF => (
                self.state.pin_is_default,
                self.state.pin_retries,
                self.state.pin_tries_left,
            ),
            PUK_REF => (
                self.state.puk_is_default,
                self.state.puk_retries,
                self.state.puk_tries_left,
            ),
            _ => return Err(SW_NOT_FOUND),
        };
        let mut out = tlv(&[0x01], &[0xFF]);
        out.extend(tlv(&[0x05], &[u8::from(default)]));
        out.extend(tlv(&[0x06], &[retries, left]));
        Ok(out)
    }

    fn mgmt_cipher(&self, block: &mut [u8], encrypt: bool) -> Result<(), u16> {
        let key = unhex(&self.state.mgmt_key).map_err(|_| 0x6581u16)?;
        macro_rules! run {
            ($cipher:ty) => {{
                let cipher = <$cipher>::new_from_slice(&key).map_err(|_| 0x6581u16)?;
                let block = block.try_into().map_err(|_| SW_WRONG_DATA)?;
                if encrypt {
                    cipher.encrypt_block(block);
                } else {
                    cipher.decrypt_block(block);
                }
            }};
        }
        match self.state.mgmt_alg {
            ALG_3DES => run!(des::TdesEde3),
            ALG_AES128 => run!(aes::Aes128),
            ALG_AES192 => run!(aes::Aes192),
            ALG_AES256 => run!(aes::Aes256),
            _ => return Err(0x6581),
        }
        Ok(())
    }

    fn general_authenticate(&mut self, c: &Command) -> Result<Vec<u8>, u16> {
        let outer = parse_tlvs(&c.data).ok_or(SW_WRONG_DATA)?;
        let (tag, template) = outer.first().ok_or(SW_WRONG_DATA)?;
        if tag.as_slice() != [0x7C] {
            return Err(SW_WRONG_DATA);
        }
        let items = parse_tlvs(template).ok_or(SW_WRONG_DATA)?;
        let get = |t: u8| {
            items
                .iter()
                .find(|(tag, _)| tag.as_slice() == [t])
                .map(|(_, v)| *v)
        };
        if c.p2 == MGMT_REF {
            if c.p1 != self.state.mgmt_alg {
                return Err(SW_WRONG_P1P2);
            }
            let block_len = if c.p1 == ALG_3DES { 8 } else { 16 };
            return self.mgmt_auth(block_len, get(0x80), get(0x81), get(0x82));
        }
        if !is_key_slot(c.p2) {
            return Err(SW_NOT_FOUND);
        }
        if c.p1 != ALG_P256 {
            return Err(SW_WRONG_P1P2);
        }
        let scalar = self
            .state
            .keys
            .get(&format!("{:02x}", c.p2))
            .ok_or(SW_NOT_FOUND)?;
        let (Some(challenge), Some(response)) = (get(0x81), get(0x82)) else {
            return Err(SW_WRONG_DATA);
        };
        if !response.is_empty() || challenge.len() != 32 {
            return Err(SW_WRONG_DATA);
        }
        if !self.pin_verified {
            return Err(SW_SECURITY);
        }
        let key = SigningKey::from_slice(&unhex(scalar).map_err(|_| 0x6581u16)?)
            .map_err(|_| 0x6581u16)?;
        let signature: DerSignature = key.sign_prehash(challenge).map_err(|_| SW_WRONG_DATA)?;
        if c.p2 == 0x9C {
            // The signature key's PIN is good for one signature only.
            self.pin_verified = false;
        }
        Ok(tlv(&[0x7C], &tlv(&[0x82], signature.as_bytes())))
    }

    fn mgmt_auth(
        &mut self,
        block_len: usize,
        witness: Option<&[u8]>,
        challenge: Option<&[u8]>,
        response: Option<&[u8]>,
    ) -> Result<Vec<u8>, u16> {
        self.mgmt_authenticated = false;
        let pending = self.pending_auth.take();
        match (witness, challenge, response) {
            // Mutual step 1: the card sends an encrypted witness.
            (Some([]), None, None) => {
                let plain = random::<16>().map_err(|_| 0x6581u16)?[..block_len].to_vec();
                let mut encrypted = plain.clone();
                self.mgmt_cipher(&mut encrypted, true)?;
                self.pending_auth = Some(PendingAuth::Witness(plain));
                Ok(tlv(&[0x7C], &tlv(&[0x80], &encrypted)))
            }
            // Mutual step 2: decrypted witness and the host's challenge.
            (Some(decrypted), Some(host_challenge), Some([])) => {
                let Some(PendingAuth::Witness(plain)) = pending else {
                    return Err(SW_CONDITIONS);
                };
                if decrypted != plain.as_slice() || host_challenge.len() != block_len {
                    return Err(SW_SECURITY);
                }
                let mut answer = host_challenge.to_vec();
                self.mgmt_cipher(&mut answer, true)?;
                self.mgmt_authenticated = true;
                Ok(tlv(&[0x7C], &tlv(&[0x82], &answer)))
            }
            // External step 1: the card sends a challenge.
            (None, Some([]), None) => {
                let plain = random::<16>().map_err(|_| 0x6581u16)?[..block_len].to_vec();
                self.pending_auth = Some(PendingAuth::Challenge(plain.clone()));
                Ok(tlv(&[0x7C], &tlv(&[0x81], &plain)))
            }
            // External step 2: the challenge, encrypted.
            (None, None, Some(encrypted)) => {
                let Some(PendingAuth::Challenge(plain)) = pending else {
                    return Err(SW_CONDITIONS);
                };
                let mut decrypted = encrypted.to_vec();
                if decrypted.len() != block_len {
                    return Err(SW_SECURITY);
                }
                self.mgmt_cipher(&mut decrypted, false)?;
                if decrypted != plain {
                    return Err(SW_SECURITY);
                }
                self.mgmt_authenticated = true;
                Ok(Vec::new())
            }
            _ => Err(SW_WRONG_DATA),
        }
    }

    fn generate(&mut self, c: &Command) -> Result<Vec<u8>, u16> {
        if !is_key_slot(c.p2) {
            return Err(SW_NOT_FOUND);
        }
        if !self.mgmt_authenticated {
            return Err(SW_SECURITY);
        }
        let outer = parse_tlvs(&c.data).ok_or(SW_WRONG_DATA)?;
        let (tag, template) = outer.first().ok_or(SW_WRONG_DATA)?;
        if tag.as_slice() != [0xAC] {
            return Err(SW_WRONG_DATA);
        }
        let items = parse_tlvs(template).ok_or(SW_WRONG_DATA)?;
        let alg = items
            .iter()
            .find(|(t, _)| t.as_slice() == [0x80])
            .map(|(_, v)| *v);
        if alg != Some(&[ALG_P256][..]) {
            return Err(SW_WRONG_DATA);
        }
        let key = SigningKey::try_generate().map_err(|_| 0x6581u16)?;
        let point = key.verifying_key().to_sec1_point(false);
        self.state
            .keys
            .insert(format!("{:02x}", c.p2), hex::encode(key.to_bytes()));
        // A new key makes the slot's old certificate meaningless.
        if let Some(object) = cert_object(c.p2) {
            self.state.objects.remove(&format!("{object:06x}"));
        }
        self.persist()?;
        Ok(tlv(&[0x7F, 0x49], &tlv(&[0x86], point.as_bytes())))
    }
}

fn sw(status: u16) -> Vec<u8> {
    status.to_be_bytes().to_vec()
}

#[derive(Debug, Clone)]
struct Command {
    cla: u8,
    ins: u8,
    p1: u8,
    p2: u8,
    data: Vec<u8>,
    le: usize,
}

impl Command {
    /// Short and extended APDUs, cases 1 to 4.
    fn parse(apdu: &[u8]) -> Option<Command> {
        let [cla, ins, p1, p2, body @ ..] = apdu else {
            return None;
        };
        let (data, le) = match body {
            [] => (Vec::new(), 256),
            [le] => (Vec::new(), if *le == 0 { 256 } else { usize::from(*le) }),
            [0, hi, lo] => {
                let le = usize::from(*hi) << 8 | usize::from(*lo);
                (Vec::new(), if le == 0 { 65536 } else { le })
            }
            [0, hi, lo, rest @ ..] => {
                let lc = usize::from(*hi) << 8 | usize::from(*lo);
                let data = rest.get(..lc)?.to_vec();
                let le = match &rest[lc..] {
                    [] => 65536,
                    [hi, lo] => {
                        let le = usize::from(*hi) << 8 | usize::from(*lo);
                        if le == 0 { 65536 } else { le }
                    }
                    _ => return None,
                };
                (data, le)
            }
            [lc, rest @ ..] => {
                let lc = usize::from(*lc);
                let data = rest.get(..lc)?.to_vec();
                let le = match &rest[lc..] {
                    [] => 256,
                    [le] => {
                        if *le == 0 {
                            256
                        } else {
                            usize::from(*le)
                        }
                    }
                    _ => return None,
                };
                (data, le)
            }
        };
        Some(Command {
            cla: *cla,
            ins: *ins,
            p1: *p1,
            p2: *p2,
            data,
            le,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> (tempfile::TempDir, Card) {
        let dir = tempfile::tempdir().unwrap();
        let card =
            Card::load_or_create(&dir.path().join("card.json"), Some(12345678), None).unwrap();
        (dir, card)
    }

    fn send(card: &mut Card, apdu: &[u8]) -> (Vec<u8>, u16) {
        match card.process(apdu) {
            Reply::Response(r) => {
                let split = r.len() - 2;
                (
                    r[..split].to_vec(),
                    u16::from_be_bytes([r[split], r[split + 1]]),
                )
            }
            Reply::Pull => panic!("pulled"),
        }
    }

    fn verify(card: &mut Card, pin: &str) -> u16 {
        let mut apdu = vec![0x00, 0x20, 0x00, 0x80, 0x08];
        let mut padded = pin.as_bytes().to_vec();
        padded.resize(8, 0xFF);
        apdu.extend(padded);
        send(card, &apdu).1
    }

    #[test]
    fn select_answers_only_the_piv_aid() {
        let (_dir, mut card) = card();
        let (data, sw) = send(
            &mut card,
            &[0, 0xA4, 4, 0, 9, 0xA0, 0, 0, 3, 8, 0, 0, 0x10, 0],
        );
        assert_eq!(sw, SW_OK);
        assert_eq!(data[0], 0x61);
        assert_eq!(
            send(&mut card, &[0, 0xA4, 4, 0, 5, 0xA0, 0, 0, 0, 1]).1,
            SW_NOT_FOUND
        );
        assert_eq!(send(&mut card, &[0x80, 0xA4, 4, 0]).1, SW_CLA);
        assert_eq!(
            send(&mut card, &[0, 0xF8, 0, 0]).0,
            12345678u32.to_be_bytes()
        );
    }

    #[test]
    fn pin_retry_counter_blocks_and_puk_unblocks_persistently() {
        let (dir, mut card) = card();
        assert_eq!(verify(&mut card, "111111"), 0x63C2);
        assert_eq!(verify(&mut card, "111111"), 0x63C1);
        assert_eq!(verify(&mut card, FACTORY_PIN), SW_OK);
        for expected in [0x63C2, 0x63C1, SW_BLOCKED, SW_BLOCKED] {
            assert_eq!(verify(&mut card, "111111"), expected);
        }
        assert_eq!(verify(&mut card, FACTORY_PIN), SW_BLOCKED);
        // The state survives the card leaving the reader.
        let mut card = Card::load_or_create(&dir.path().join("card.json"), None, None).unwrap();
        assert_eq!(verify(&mut card, FACTORY_PIN), SW_BLOCKED);
        let mut apdu = vec![0x00, 0x2C, 0x00, 0x80, 16];
        apdu.extend(b"12345678");
        apdu.extend(b"654321\xFF\xFF");
        assert_eq!(send(&mut card, &apdu).1, SW_OK);
        assert_eq!(verify(&mut card, "654321"), SW_OK);
        assert_eq!(send(&mut card, &[0, 0x20, 0, 0x80]).1, SW_OK);
    }

    #[test]
    fn key_generation_needs_the_management_key() {
        let (_dir, mut card) = card();
        let generate = [0, 0x47, 0, 0x9A, 5, 0xAC, 3, 0x80, 1, 0x11];
        assert_eq!(send(&mut card, &generate).1, SW_SECURITY);
        // Mutual authentication with the factory 3DES key.
        let (data, sw) = send(&mut card, &[0, 0x87, 3, 0x9B, 4, 0x7C, 2, 0x80, 0]);
        assert_eq!(sw, SW_OK);
        let mut witness = data[4..12].to_vec();
        let cipher = des::TdesEde3::new_from_slice(&FACTORY_MGMT_KEY).unwrap();
        cipher.decrypt_block(witness.as_mut_slice().try_into().unwrap());
        let mut step2 = vec![0, 0x87, 3, 0x9B, 24, 0x7C, 22, 0x80, 8];
        step2.extend(&witness);
        step2.extend([0x81, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0x82, 0]);
        assert_eq!(send(&mut card, &step2).1, SW_OK);
        let (data, sw) = send(&mut card, &generate);
        assert_eq!(sw, SW_OK);
        assert_eq!(&data[..5], &[0x7F, 0x49, 0x43, 0x86, 0x41]);
    }

    #[test]
    fn chained_put_and_long_get_response() {
        let (_dir, mut card) = card();
        card.mgmt_authenticated = true;
        let cert = vec![0x42u8; 600];
        let mut data = tlv(&[0x5C], &[0x5F, 0xC1, 0x05]);
        data.extend(tlv(&[0x53], &tlv(&[0x70], &cert)));
        let chunks: Vec<&[u8]> = data.chunks(255).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let cla = if i + 1 < chunks.len() { 0x10 } else { 0x00 };
            let mut apdu = vec![cla, 0xDB, 0x3F, 0xFF, chunk.len() as u8];
            apdu.extend_from_slice(chunk);
            assert_eq!(send(&mut card, &apdu).1, SW_OK);
        }
        let (mut got, mut sw) = send(
            &mut card,
            &[0, 0xCB, 0x3F, 0xFF, 5, 0x5C, 3, 0x5F, 0xC1, 0x05, 0],
        );
        while sw >> 8 == 0x61 {
            let (more, next) = send(&mut card, &[0, 0xC0, 0, 0, sw as u8]);
            got.extend(more);
            sw = next;
        }
        assert_eq!(sw, SW_OK);
        assert_eq!(got, tlv(&[0x53], &tlv(&[0x70], &cert)));
    }
}
