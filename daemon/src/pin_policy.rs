//! The deployment's PIN policy, combined with the rules a backend imposes.

use fleetkey_plugin::{Pin, PinRules};
use fleetkey_proto::{Failure, Reason};

use crate::config::PinConfig;

/// Checks a new PIN; the failure names the rule it breaks.
pub fn check(
    policy: &PinConfig,
    backend: &str,
    rules: &PinRules,
    pin: &Pin,
) -> Result<(), Failure> {
    let length = pin.char_count();
    let mut min = policy.min_length as usize;
    let mut max = policy.max_length as usize;
    let mut source = "the device's PIN policy";
    if let Some(backend_min) = rules.min_length.filter(|m| *m > min) {
        min = backend_min;
        source = "the key store";
    }
    if let Some(backend_max) = rules.max_length.filter(|m| *m < max) {
        max = backend_max;
        source = "the key store";
    }
    let fail = |message: String| {
        Err(Failure::new(Reason::PinPolicy, message)
            .with_hint(format!(
                "Choose a PIN of {min} to {max} {}.",
                if policy.digits_only {
                    "digits"
                } else {
                    "printable ASCII characters without spaces"
                }
            ))
            .with_meta("min_length", min)
            .with_meta("max_length", max)
            .with_meta("backend", backend))
    };
    if min > max {
        return fail(format!(
            "no PIN can satisfy both the device's policy ({}-{} characters) and the '{backend}' key store",
            policy.min_length, policy.max_length
        ));
    }
    if length < min || length > max {
        return fail(format!(
            "the PIN has {length} characters; {source} for '{backend}' asks for {min} to {max}"
        ));
    }
    if policy.digits_only {
        if !pin.as_str().chars().all(|c| c.is_ascii_digit()) {
            return fail("the PIN may contain only digits".into());
        }
    } else if !pin.as_str().chars().all(|c| c.is_ascii_graphic()) {
        return fail("the PIN may contain only printable ASCII characters, without spaces".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_default(pin: &str) -> Result<(), Failure> {
        check(
            &PinConfig::default(),
            "soft",
            &PinRules::default(),
            &Pin::new(pin),
        )
    }

    #[test]
    fn default_policy_is_four_to_six_printable() {
        assert!(check_default("1234").is_ok());
        assert!(check_default("a1b2c3").is_ok());
        let short = check_default("123").unwrap_err();
        assert_eq!(short.reason, Reason::PinPolicy);
        assert!(short.message.contains("3 characters"), "{}", short.message);
        assert!(check_default("1234567").is_err());
        assert!(
            check_default("12 34")
                .unwrap_err()
                .message
                .contains("printable")
        );
        assert!(check_default("12é4").is_err());
    }

    #[test]
    fn backend_rules_narrow_the_policy() {
        let piv = PinRules {
            min_length: Some(6),
            max_length: Some(8),
        };
        let err = check(&PinConfig::default(), "pcsc", &piv, &Pin::new("1234")).unwrap_err();
        assert!(err.message.contains("the key store"), "{}", err.message);
        assert!(check(&PinConfig::default(), "pcsc", &piv, &Pin::new("123456")).is_ok());
        let narrow = PinConfig {
            max_length: 4,
            ..PinConfig::default()
        };
        let err = check(&narrow, "pcsc", &piv, &Pin::new("123456")).unwrap_err();
        assert!(
            err.message.contains("no PIN can satisfy"),
            "{}",
            err.message
        );
    }

    #[test]
    fn digits_only() {
        let digits = PinConfig {
            digits_only: true,
            ..PinConfig::default()
        };
        assert!(check(&digits, "soft", &PinRules::default(), &Pin::new("1234")).is_ok());
        assert!(check(&digits, "soft", &PinRules::default(), &Pin::new("12a4")).is_err());
    }
}
