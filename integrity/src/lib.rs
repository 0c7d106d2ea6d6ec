//! fleetkey's integrity report: the Linux analogue of a phone app's
//! "is this device rooted?" check, modelled on fwupd's Host Security ID
//! (HSI). Each [`Attribute`] has a stable ID (`org.fleetkey.SecureBoot`),
//! a result, the HSI level it belongs to and a hint that says how to fix
//! it. The [`Report`] is JSON-serializable and has a [`Report::digest`]
//! (SHA-256 over a canonical encoding) that a TPM quote binds
//! (docs/integrity.md).
//!
//! - [`checks`]: every check, each reading from a [`Root`] so tests can
//!   fake every state.
//! - [`eventlog`]: the TCG2 crypto-agile event log
//!   (`binary_bios_measurements`): parser, replay, and a writer for tests.
//! - [`quote`]: the quote's qualifying data, the TPMS_ATTEST of a quote,
//!   and the files `tpm2_checkquote` verifies.
//! - [`policy`]: which attributes must pass (the daemon's gate and the
//!   portal's policy).

pub mod checks;
pub mod eventlog;
#[doc(hidden)]
pub mod fuzzing;
pub mod policy;
pub mod quote;
pub mod root;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use checks::{Inputs, report};
pub use policy::Policy;
pub use root::Root;

/// Version of the report format and of its canonical encoding.
pub const REPORT_VERSION: u32 = 1;

/// Domain separation of the report digest.
const DIGEST_TAG: &[u8] = b"fleetkey integrity report v1\0";

/// Whether an attribute passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    Fail,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
        }
    }
}

/// One host security attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    /// Stable ID, e.g. `org.fleetkey.SecureBoot`.
    pub id: String,
    /// The HSI level (1-4) the attribute belongs to.
    pub level: u8,
    pub outcome: Outcome,
    /// fwupd-style result word: `enabled`, `not-enabled`, `tainted`,
    /// `not-found`, `valid`, `not-valid`, ...
    pub result: String,
    /// What was found, for people.
    pub detail: String,
    /// How to fix it (empty when it passes).
    pub hint: String,
}

impl Attribute {
    pub fn passes(&self) -> bool {
        self.outcome == Outcome::Pass
    }
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    /// The attributes, sorted by ID.
    pub attributes: Vec<Attribute>,
    /// HSI level: the highest level L such that every attribute of levels
    /// 1..=L passes (0 when a level-1 attribute fails).
    pub level: u8,
    /// Whether the device has a TPM 2.0 to quote this report with; without
    /// one the report is the device's word only.
    pub remotely_verifiable: bool,
    /// Lowercase hex SHA-256 of the canonical encoding ([`Report::digest`]).
    pub digest: String,
}

impl Report {
    /// Builds a report from attributes: sorts them, computes the level and
    /// the digest.
    pub fn new(mut attributes: Vec<Attribute>, remotely_verifiable: bool) -> Report {
        attributes.sort_by(|a, b| a.id.cmp(&b.id));
        let level = hsi_level(&attributes);
        let mut report = Report {
            version: REPORT_VERSION,
            attributes,
            level,
            remotely_verifiable,
            digest: String::new(),
        };
        report.digest = hex(&report.digest());
        report
    }

    /// SHA-256 over the canonical encoding: the tag
    /// `"fleetkey integrity report v1\0"`, the version (u32 big-endian), the
    /// `remotely_verifiable` byte, the attribute count (u32), then for each
    /// attribute in order: `id`, the level byte, `outcome`, `result`,
    /// `detail` and `hint`, each string as u32 big-endian length and UTF-8.
    /// The `level` and `digest` fields are derived and not encoded.
    pub fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(DIGEST_TAG);
        hash.update(self.version.to_be_bytes());
        hash.update([u8::from(self.remotely_verifiable)]);
        hash.update(len32(self.attributes.len()));
        for a in &self.attributes {
            field(&mut hash, &a.id);
            hash.update([a.level]);
            field(&mut hash, a.outcome.as_str());
            field(&mut hash, &a.result);
            field(&mut hash, &a.detail);
            field(&mut hash, &a.hint);
        }
        hash.finalize().into()
    }

    /// Whether `digest` and `level` are what the attributes say (a report
    /// received from elsewhere).
    pub fn is_consistent(&self) -> bool {
        self.digest == hex(&self.digest())
            && self.level == hsi_level(&self.attributes)
            && self.attributes.windows(2).all(|w| w[0].id < w[1].id)
    }

    pub fn attribute(&self, id: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.id == id)
    }

    pub fn failing(&self) -> impl Iterator<Item = &Attribute> {
        self.attributes.iter().filter(|a| !a.passes())
    }

    /// One line for `status`: `HSI:2 (3 of 15 checks fail: ...)`.
    pub fn summary(&self) -> String {
        let failing: Vec<&str> = self.failing().map(|a| a.id.as_str()).collect();
        if failing.is_empty() {
            format!(
                "HSI:{} (all {} checks pass)",
                self.level,
                self.attributes.len()
            )
        } else {
            format!(
                "HSI:{} ({} of {} checks fail: {})",
                self.level,
                failing.len(),
                self.attributes.len(),
                failing.join(", ")
            )
        }
    }
}

fn hsi_level(attributes: &[Attribute]) -> u8 {
    let mut level = 0;
    for l in 1..=4u8 {
        if attributes
            .iter()
            .filter(|a| a.level == l)
            .all(Attribute::passes)
        {
            level = l;
        } else {
            break;
        }
    }
    level
}

fn len32(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes()
}

fn field(hash: &mut Sha256, s: &str) {
    hash.update(len32(s.len()));
    hash.update(s.as_bytes());
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// Bytes from hex (either case, surrounding whitespace ignored); None when
/// malformed or longer than `max` bytes, checked before decoding.
pub fn unhex(text: &str, max: usize) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len() / 2 > max {
        return None;
    }
    ::hex::decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(id: &str, level: u8, pass: bool) -> Attribute {
        Attribute {
            id: id.into(),
            level,
            outcome: if pass { Outcome::Pass } else { Outcome::Fail },
            result: if pass { "enabled" } else { "not-enabled" }.into(),
            detail: String::new(),
            hint: String::new(),
        }
    }

    #[test]
    fn level_is_the_highest_level_all_of_whose_checks_pass() {
        let r = Report::new(
            vec![attr("a", 1, true), attr("b", 2, true), attr("c", 3, false)],
            true,
        );
        assert_eq!(r.level, 2);
        let r = Report::new(vec![attr("a", 1, false), attr("b", 2, true)], true);
        assert_eq!(r.level, 0);
        let r = Report::new(vec![attr("a", 1, true), attr("d", 4, true)], true);
        assert_eq!(r.level, 4);
        assert!(r.summary().starts_with("HSI:4 (all 2"), "{}", r.summary());
    }

    #[test]
    fn the_digest_covers_every_field_and_survives_json() {
        let r = Report::new(vec![attr("b", 2, true), attr("a", 1, true)], true);
        assert_eq!(r.attributes[0].id, "a");
        assert!(r.is_consistent());
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert!(back.is_consistent());
        assert_eq!(back.digest, r.digest);
        let mut changed = r.clone();
        changed.attributes[0].detail = "x".into();
        assert!(!changed.is_consistent());
        let mut changed = r.clone();
        changed.remotely_verifiable = false;
        assert_ne!(hex(&changed.digest()), r.digest);
        // Field boundaries are encoded: moving a byte between fields changes it.
        let mut a = r.clone();
        a.attributes[0].result = "ab".into();
        a.attributes[0].detail = "c".into();
        let mut b = r.clone();
        b.attributes[0].result = "a".into();
        b.attributes[0].detail = "bc".into();
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab]), 3).unwrap(), vec![0, 1, 0xab]);
        assert_eq!(unhex("ABcd", 2).unwrap(), vec![0xab, 0xcd]);
        assert!(unhex("abc", 8).is_none());
        assert!(unhex("zz", 8).is_none());
        assert!(unhex("aabb", 1).is_none());
    }
}
