//! The TCG2 crypto-agile event log (TCG PC Client Platform Firmware
//! Profile, section 10): what firmware and boot loader measured into the
//! TPM's PCRs, as Linux exposes it in
//! `/sys/kernel/security/tpm0/binary_bios_measurements`. [`EventLog::parse`]
//! reads it, [`EventLog::replay`] recomputes the PCRs it yields, and
//! [`LogBuilder`] writes one (for tests and for the synthetic logs of the
//! swtpm tests).
//!
//! The log is hostile input (on the portal it comes from the device): every
//! size is checked against the bytes left before anything is taken, the
//! whole log is at most [`MAX_LOG_BYTES`], an event's data at most
//! [`MAX_EVENT_BYTES`], a log at most [`MAX_EVENTS`] events, and an event's
//! digest count at most the number of algorithms the log's header
//! declares. Event data is not interpreted: replay uses the digests only.
//!
//! Layout (all integers little-endian): the first event is a SHA-1-format
//! `TCG_PCClientPCREvent` (pcrIndex, eventType = EV_NO_ACTION, 20 zero
//! bytes, eventSize, event) whose event is the `TCG_EfiSpecIDEvent`
//! (signature `"Spec ID Event03\0"`, platformClass, specVersionMinor,
//! specVersionMajor, specErrata, uintnSize, numberOfAlgorithms, then
//! (algorithmId u16, digestSize u16) per algorithm, vendorInfoSize u8 and
//! vendorInfo). Every following event is a `TCG_PCR_EVENT2`: pcrIndex u32,
//! eventType u32, digests (count u32, then per digest hashAlg u16 and the
//! digest of the size the header gave), eventSize u32, event.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// Largest log accepted (real logs are tens of kilobytes).
pub const MAX_LOG_BYTES: usize = 8 << 20;
/// Largest event data accepted.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// Most events accepted.
pub const MAX_EVENTS: usize = 65_536;
/// Most algorithms a log's header may declare.
pub const MAX_ALGORITHMS: usize = 8;
/// PCRs of a PC Client TPM.
pub const PCR_COUNT: usize = 24;

pub const EV_POST_CODE: u32 = 0x0000_0001;
pub const EV_NO_ACTION: u32 = 0x0000_0003;
pub const EV_SEPARATOR: u32 = 0x0000_0004;
pub const EV_S_CRTM_VERSION: u32 = 0x0000_0008;
pub const EV_EFI_ACTION: u32 = 0x8000_0007;

pub const TPM_ALG_SHA1: u16 = 0x0004;
pub const TPM_ALG_SHA256: u16 = 0x000b;
pub const TPM_ALG_SHA384: u16 = 0x000c;
pub const TPM_ALG_SHA512: u16 = 0x000d;

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";

/// Why a log was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventLogError {
    #[error("the event log is {0} bytes, more than the {MAX_LOG_BYTES} accepted")]
    TooLarge(usize),
    #[error(
        "the event log is truncated at byte {offset}: {field} needs {needed} bytes, {left} are left"
    )]
    Truncated {
        offset: usize,
        field: &'static str,
        needed: usize,
        left: usize,
    },
    #[error(
        "the event log does not begin with a TCG2 Spec ID event (it is not a crypto-agile log): {0}"
    )]
    NotCryptoAgile(String),
    #[error("event {index} at byte {offset}: {message}")]
    BadEvent {
        index: usize,
        offset: usize,
        message: String,
    },
    #[error("the event log has more than {MAX_EVENTS} events")]
    TooManyEvents,
    #[error("the event log has no {0} digests to replay")]
    NoSuchBank(&'static str),
    #[error("replaying {bank} is not supported (only SHA-256, SHA-384 and SHA-512)")]
    UnsupportedBank { bank: &'static str },
    #[error("event {index} (PCR {pcr}) has no {bank} digest")]
    MissingDigest {
        index: usize,
        pcr: u32,
        bank: &'static str,
    },
}

/// The algorithm's name, for messages.
pub fn algorithm_name(alg: u16) -> &'static str {
    match alg {
        TPM_ALG_SHA1 => "SHA-1",
        TPM_ALG_SHA256 => "SHA-256",
        TPM_ALG_SHA384 => "SHA-384",
        TPM_ALG_SHA512 => "SHA-512",
        0x0012 => "SM3-256",
        _ => "an unknown algorithm",
    }
}

/// The digest size of the algorithms this crate can hash.
fn known_size(alg: u16) -> Option<usize> {
    match alg {
        TPM_ALG_SHA1 => Some(20),
        TPM_ALG_SHA256 | 0x0012 => Some(32),
        TPM_ALG_SHA384 => Some(48),
        TPM_ALG_SHA512 => Some(64),
        _ => None,
    }
}

/// H(data) with the bank's hash, for the banks replay supports.
pub fn hash(alg: u16, data: &[u8]) -> Option<Vec<u8>> {
    match alg {
        TPM_ALG_SHA256 => Some(Sha256::digest(data).to_vec()),
        TPM_ALG_SHA384 => Some(Sha384::digest(data).to_vec()),
        TPM_ALG_SHA512 => Some(Sha512::digest(data).to_vec()),
        _ => None,
    }
}

/// The log's header (TCG_EfiSpecIDEvent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecId {
    pub platform_class: u32,
    pub version: (u8, u8, u8),
    pub uintn_size: u8,
    /// (algorithmId, digestSize) per declared algorithm.
    pub algorithms: Vec<(u16, u16)>,
}

/// One TCG_PCR_EVENT2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub pcr: u32,
    pub event_type: u32,
    /// (hashAlg, digest).
    pub digests: Vec<(u16, Vec<u8>)>,
    pub data: Vec<u8>,
}

/// A parsed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    pub spec: SpecId,
    pub events: Vec<Event>,
    /// The locality of TPM2_Startup from a StartupLocality event (PCR 0
    /// then starts at `0...0 || locality` instead of zeros).
    pub startup_locality: Option<u8>,
}

struct Reader<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], EventLogError> {
        let left = self.data.len() - self.offset;
        if n > left {
            return Err(EventLogError::Truncated {
                offset: self.offset,
                field,
                needed: n,
                left,
            });
        }
        let out = &self.data[self.offset..self.offset + n];
        self.offset += n;
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, EventLogError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, EventLogError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, EventLogError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn done(&self) -> bool {
        self.offset >= self.data.len()
    }
}

fn parse_spec_id(data: &[u8]) -> Result<SpecId, EventLogError> {
    let bad = |m: &str| EventLogError::NotCryptoAgile(m.to_string());
    let mut r = Reader { data, offset: 0 };
    let signature = r
        .take(16, "Spec ID signature")
        .map_err(|e| bad(&e.to_string()))?;
    if signature != SPEC_ID_SIGNATURE {
        return Err(bad("its signature is not \"Spec ID Event03\""));
    }
    let mut header = || -> Result<SpecId, EventLogError> {
        let platform_class = r.u32("platformClass")?;
        let minor = r.u8("specVersionMinor")?;
        let major = r.u8("specVersionMajor")?;
        let errata = r.u8("specErrata")?;
        let uintn_size = r.u8("uintnSize")?;
        let count = r.u32("numberOfAlgorithms")?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count == 0 || count > MAX_ALGORITHMS {
            return Err(bad(&format!(
                "it declares {count} algorithms (1 to {MAX_ALGORITHMS} accepted)"
            )));
        }
        let mut algorithms: Vec<(u16, u16)> = Vec::with_capacity(count);
        for _ in 0..count {
            let alg = r.u16("algorithmId")?;
            let size = r.u16("digestSize")?;
            if algorithms.iter().any(|(a, _)| *a == alg) {
                return Err(bad(&format!("it declares algorithm 0x{alg:04x} twice")));
            }
            if size == 0 || size > 64 || known_size(alg).is_some_and(|k| k != usize::from(size)) {
                return Err(bad(&format!(
                    "it declares {} (0x{alg:04x}) with a digest size of {size}",
                    algorithm_name(alg)
                )));
            }
            algorithms.push((alg, size));
        }
        let vendor = usize::from(r.u8("vendorInfoSize")?);
        r.take(vendor, "vendorInfo")?;
        Ok(SpecId {
            platform_class,
            version: (major, minor, errata),
            uintn_size,
            algorithms,
        })
    };
    let spec = header().map_err(|e| match e {
        EventLogError::NotCryptoAgile(_) => e,
        other => bad(&other.to_string()),
    })?;
    if major_minor_ok(&spec) {
        Ok(spec)
    } else {
        Err(bad(&format!(
            "its spec version is {}.{}, not 2.0",
            spec.version.0, spec.version.1
        )))
    }
}

fn major_minor_ok(spec: &SpecId) -> bool {
    spec.version.0 == 2 && spec.version.1 == 0
}

impl EventLog {
    /// Parses a whole log. Never panics, whatever the bytes.
    pub fn parse(data: &[u8]) -> Result<EventLog, EventLogError> {
        if data.len() > MAX_LOG_BYTES {
            return Err(EventLogError::TooLarge(data.len()));
        }
        let mut r = Reader { data, offset: 0 };
        // The SHA-1-format header event.
        let pcr = r.u32("pcrIndex")?;
        let event_type = r.u32("eventType")?;
        let digest = r.take(20, "SHA-1 digest")?;
        let size = r.u32("eventSize")? as usize;
        if pcr != 0 || event_type != EV_NO_ACTION || digest.iter().any(|b| *b != 0) {
            return Err(EventLogError::NotCryptoAgile(
                "the first event is not an EV_NO_ACTION event on PCR 0".into(),
            ));
        }
        if size > MAX_EVENT_BYTES {
            return Err(EventLogError::NotCryptoAgile(format!(
                "the header event is {size} bytes"
            )));
        }
        let spec = parse_spec_id(r.take(size, "the Spec ID event")?)?;

        let mut events = Vec::new();
        let mut startup_locality = None;
        while !r.done() {
            let index = events.len() + 1;
            if events.len() >= MAX_EVENTS {
                return Err(EventLogError::TooManyEvents);
            }
            let offset = r.offset;
            let bad = |message: String| EventLogError::BadEvent {
                index,
                offset,
                message,
            };
            let pcr = r.u32("pcrIndex")?;
            if pcr as usize >= PCR_COUNT {
                return Err(bad(format!("its PCR index {pcr} is not 0-23")));
            }
            let event_type = r.u32("eventType")?;
            let count = r.u32("digests.count")? as usize;
            if count > spec.algorithms.len() {
                return Err(bad(format!(
                    "it has {count} digests; the log declares {} algorithms",
                    spec.algorithms.len()
                )));
            }
            let mut digests: Vec<(u16, Vec<u8>)> = Vec::with_capacity(count);
            for _ in 0..count {
                let alg = r.u16("hashAlg")?;
                let Some(&(_, size)) = spec.algorithms.iter().find(|(a, _)| *a == alg) else {
                    return Err(bad(format!(
                        "it has a digest of algorithm 0x{alg:04x}, which the log does not declare"
                    )));
                };
                if digests.iter().any(|(a, _)| *a == alg) {
                    return Err(bad(format!("it has two {} digests", algorithm_name(alg))));
                }
                digests.push((alg, r.take(usize::from(size), "digest")?.to_vec()));
            }
            let size = r.u32("eventSize")? as usize;
            if size > MAX_EVENT_BYTES {
                return Err(bad(format!(
                    "its data is {size} bytes, more than the {MAX_EVENT_BYTES} accepted"
                )));
            }
            let data = r.take(size, "event data")?.to_vec();
            if event_type == EV_NO_ACTION
                && pcr == 0
                && data.len() == 17
                && data.starts_with(STARTUP_LOCALITY_SIGNATURE)
            {
                if startup_locality.is_some()
                    || events
                        .iter()
                        .any(|e: &Event| e.pcr == 0 && e.event_type != EV_NO_ACTION)
                {
                    return Err(bad(
                        "a StartupLocality event after PCR 0 was extended".into()
                    ));
                }
                startup_locality = data.get(16).copied();
            }
            events.push(Event {
                pcr,
                event_type,
                digests,
                data,
            });
        }
        Ok(EventLog {
            spec,
            events,
            startup_locality,
        })
    }

    /// The PCR values 0-23 of bank `alg` after extending every event
    /// (EV_NO_ACTION events are not extended). PCRs 17-22 start at all
    /// ones, as the TPM resets them; PCR 0 at the startup locality.
    pub fn replay(&self, alg: u16) -> Result<Vec<Vec<u8>>, EventLogError> {
        let bank = algorithm_name(alg);
        let size = hash(alg, b"")
            .map(|h| h.len())
            .ok_or(EventLogError::UnsupportedBank { bank })?;
        if !self.spec.algorithms.iter().any(|(a, _)| *a == alg) {
            return Err(EventLogError::NoSuchBank(bank));
        }
        let mut pcrs: Vec<Vec<u8>> = (0..PCR_COUNT)
            .map(|i| {
                let fill = if (17..=22).contains(&i) { 0xff } else { 0 };
                vec![fill; size]
            })
            .collect();
        if let (Some(locality), Some(pcr0)) = (self.startup_locality, pcrs.first_mut())
            && let Some(last) = pcr0.last_mut()
        {
            *last = locality;
        }
        for (i, event) in self.events.iter().enumerate() {
            if event.event_type == EV_NO_ACTION {
                continue;
            }
            let Some((_, digest)) = event.digests.iter().find(|(a, _)| *a == alg) else {
                return Err(EventLogError::MissingDigest {
                    index: i + 1,
                    pcr: event.pcr,
                    bank,
                });
            };
            if let Some(pcr) = pcrs.get_mut(event.pcr as usize) {
                let mut input = std::mem::take(pcr);
                input.extend_from_slice(digest);
                *pcr = hash(alg, &input).unwrap_or_default();
            }
        }
        Ok(pcrs)
    }
}

/// Writes a crypto-agile log: the Spec ID header for `algorithms`, then
/// events whose digests are the hash of their data in every bank.
pub struct LogBuilder {
    algorithms: Vec<u16>,
    bytes: Vec<u8>,
}

impl LogBuilder {
    /// A log with banks `algorithms` (each one [`hash`] supports).
    pub fn new(algorithms: &[u16]) -> LogBuilder {
        let mut spec = Vec::new();
        spec.extend_from_slice(SPEC_ID_SIGNATURE);
        spec.extend_from_slice(&0u32.to_le_bytes()); // platformClass: client
        spec.extend_from_slice(&[0, 2, 0, 2]); // 2.0, errata 0, UINTN = u64
        spec.extend_from_slice(&(algorithms.len() as u32).to_le_bytes());
        for alg in algorithms {
            spec.extend_from_slice(&alg.to_le_bytes());
            let size = hash(*alg, b"").map_or(0, |h| h.len()) as u16;
            spec.extend_from_slice(&size.to_le_bytes());
        }
        spec.push(0); // vendorInfoSize
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        bytes.extend_from_slice(&[0; 20]);
        bytes.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&spec);
        LogBuilder {
            algorithms: algorithms.to_vec(),
            bytes,
        }
    }

    /// An event whose digest in each bank is H(data); returns the SHA-256
    /// digest (what the tests extend into swtpm's PCR).
    pub fn event(&mut self, pcr: u32, event_type: u32, data: &[u8]) -> Vec<u8> {
        let digests: Vec<(u16, Vec<u8>)> = self
            .algorithms
            .iter()
            .map(|a| (*a, hash(*a, data).unwrap_or_default()))
            .collect();
        self.raw_event(pcr, event_type, &digests, data);
        hash(TPM_ALG_SHA256, data).unwrap_or_default()
    }

    /// The StartupLocality EV_NO_ACTION event.
    pub fn startup_locality(&mut self, locality: u8) {
        let mut data = STARTUP_LOCALITY_SIGNATURE.to_vec();
        data.push(locality);
        self.raw_event(0, EV_NO_ACTION, &[], &data);
    }

    /// An event with the digests given, whatever the data.
    pub fn raw_event(
        &mut self,
        pcr: u32,
        event_type: u32,
        digests: &[(u16, Vec<u8>)],
        data: &[u8],
    ) {
        self.bytes.extend_from_slice(&pcr.to_le_bytes());
        self.bytes.extend_from_slice(&event_type.to_le_bytes());
        self.bytes
            .extend_from_slice(&(digests.len() as u32).to_le_bytes());
        for (alg, digest) in digests {
            self.bytes.extend_from_slice(&alg.to_le_bytes());
            self.bytes.extend_from_slice(digest);
        }
        self.bytes
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(data);
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

/// A typical boot: the CRTM version, POST code and a separator on PCRs
/// 0-7, an EFI action on PCR 4. Returns the log and the SHA-256 events as
/// (PCR, digest) in order, to extend into a TPM.
pub fn synthetic_boot(banks: &[u16]) -> (Vec<u8>, Vec<(u32, Vec<u8>)>) {
    let mut log = LogBuilder::new(banks);
    let mut extended = Vec::new();
    let mut add = |log: &mut LogBuilder, pcr: u32, kind: u32, data: &[u8]| {
        let d = log.event(pcr, kind, data);
        extended.push((pcr, d));
    };
    add(
        &mut log,
        0,
        EV_S_CRTM_VERSION,
        b"fleetkey test firmware 1.0\0",
    );
    add(&mut log, 0, EV_POST_CODE, b"POST CODE");
    add(
        &mut log,
        4,
        EV_EFI_ACTION,
        b"Calling EFI Application from Boot Option",
    );
    for pcr in 0..8 {
        add(&mut log, pcr, EV_SEPARATOR, &[0, 0, 0, 0]);
    }
    (log.bytes(), extended)
}

#[cfg(test)]
mod tests;
