//! Which attributes must pass: the daemon's `[integrity]` gate and the
//! portal's `--require-integrity` both use it. An attribute counts against
//! the device when it fails, is not ignored, and either belongs to a level
//! at or below `min_level` or is listed in `require`.

use serde::{Deserialize, Serialize};

use crate::checks::ids;
use crate::{Attribute, Outcome, Report};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The HSI level every attribute up to which must pass (0: none).
    #[serde(default)]
    pub min_level: u8,
    /// Attributes that must pass whatever their level.
    #[serde(default)]
    pub require: Vec<String>,
    /// Attributes never held against the device (the exceptions are
    /// reported, for the audit log).
    #[serde(default)]
    pub ignore: Vec<String>,
}

/// What a policy says of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The attributes that count against the device: empty when it may
    /// enroll.
    pub failing: Vec<Attribute>,
    /// Failing attributes the policy ignores.
    pub excepted: Vec<Attribute>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.failing.is_empty()
    }

    /// `ID: detail (hint)` per failing attribute, one per line.
    pub fn explain(&self) -> String {
        self.failing
            .iter()
            .map(|a| format!("{}: {} ({})", a.id, a.detail, a.hint))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Policy {
    /// Refuses unknown IDs, a level above 4, and an ID both required and
    /// ignored.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_level > 4 {
            return Err(format!(
                "min_level is {}; HSI levels are 0 to 4",
                self.min_level
            ));
        }
        for id in self.require.iter().chain(&self.ignore) {
            if ids::level(id).is_none() {
                let known: Vec<&str> = ids::ALL.iter().map(|(i, _)| *i).collect();
                return Err(format!(
                    "unknown integrity check {id:?}; known: {}",
                    known.join(", ")
                ));
            }
        }
        if let Some(id) = self.require.iter().find(|id| self.ignore.contains(id)) {
            return Err(format!("{id} is both required and ignored"));
        }
        Ok(())
    }

    pub fn judge(&self, report: &Report) -> Verdict {
        let mut failing = Vec::new();
        let mut excepted = Vec::new();
        for a in report.failing() {
            let counts = a.level <= self.min_level || self.require.contains(&a.id);
            if !counts {
                continue;
            }
            if self.ignore.contains(&a.id) {
                excepted.push(a.clone());
            } else {
                failing.push(a.clone());
            }
        }
        // A required check the report lacks (an older device) fails too.
        for id in &self.require {
            if report.attribute(id).is_none() {
                failing.push(Attribute {
                    id: id.clone(),
                    level: ids::level(id).unwrap_or(1),
                    outcome: Outcome::Fail,
                    result: "not-found".into(),
                    detail: "the report does not have this check".into(),
                    hint: "Update fleetkey on the device.".into(),
                });
            }
        }
        Verdict { failing, excepted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let a = |id: &str, pass: bool| Attribute {
            id: id.into(),
            level: ids::level(id).unwrap(),
            outcome: if pass { Outcome::Pass } else { Outcome::Fail },
            result: String::new(),
            detail: format!("{id} detail"),
            hint: format!("{id} hint"),
        };
        Report::new(
            vec![
                a(ids::SECURE_BOOT, false),
                a(ids::TPM, true),
                a(ids::IOMMU, false),
                a(ids::LSM, false),
            ],
            true,
        )
    }

    #[test]
    fn the_level_and_the_lists_decide() {
        let r = report();
        assert!(Policy::default().judge(&r).allowed());
        let v = Policy {
            min_level: 1,
            ..Default::default()
        }
        .judge(&r);
        assert_eq!(
            v.failing.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            [ids::SECURE_BOOT]
        );
        assert!(
            v.explain().contains("org.fleetkey.SecureBoot hint"),
            "{}",
            v.explain()
        );
        let v = Policy {
            min_level: 2,
            ignore: vec![ids::SECURE_BOOT.into()],
            ..Default::default()
        }
        .judge(&r);
        assert_eq!(v.failing.len(), 1);
        assert_eq!(v.failing[0].id, ids::IOMMU);
        assert_eq!(v.excepted[0].id, ids::SECURE_BOOT);
        let v = Policy {
            require: vec![ids::LSM.into(), ids::ROOT_FS.into()],
            ..Default::default()
        }
        .judge(&r);
        let failing: Vec<&str> = v.failing.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(failing, [ids::LSM, ids::ROOT_FS]);
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(
            Policy {
                min_level: 5,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Policy {
                require: vec!["org.fleetkey.Nope".into()],
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .contains("known:")
        );
        let both = Policy {
            require: vec![ids::LSM.into()],
            ignore: vec![ids::LSM.into()],
            min_level: 0,
        };
        assert!(both.validate().is_err());
        assert!(
            Policy {
                min_level: 4,
                ignore: vec![ids::LSM.into()],
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
    }
}
