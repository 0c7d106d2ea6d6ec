//! Why a TPM operation failed: one variant per operation, each with the
//! TSS error it came from, and the one place where TPM response codes are
//! turned into the key-store errors the daemon understands.

use fleetkey_plugin::{KeyStoreError, Reason};
use tss_esapi::constants::response_code::{Tss2ResponseCode, Tss2ResponseCodeKind};

/// TSS2 response-code layer of the TCTI (transport) layer: the connection
/// to the TPM broke, not the command.
const TSS2_TCTI_LAYER: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("no TPM answers (tried {tried}); {last}")]
    NoTpm { tried: String, last: String },
    #[error("TCTI {tcti:?} is not valid: {source}")]
    BadTcti {
        tcti: String,
        #[source]
        source: tss_esapi::Error,
    },
    #[error("the TPM context lock was poisoned by a crashed thread; restart fleetkeyd")]
    Poisoned,
    #[error("reading TPM properties failed: {0}")]
    Properties(#[source] tss_esapi::Error),
    #[error("making the storage primary key failed: {0}")]
    Primary(#[source] tss_esapi::Error),
    #[error("using the persistent storage key at {handle:#010x} failed: {source}")]
    PersistentPrimary {
        handle: u32,
        #[source]
        source: tss_esapi::Error,
    },
    #[error("starting an HMAC session failed: {0}")]
    Session(#[source] tss_esapi::Error),
    #[error("creating the key failed: {0}")]
    Create(#[source] tss_esapi::Error),
    #[error("loading the key failed: {0}")]
    Load(#[source] tss_esapi::Error),
    #[error("signing failed: {0}")]
    Sign(#[source] tss_esapi::Error),
    #[error("changing the key's authorization value failed: {0}")]
    ChangeAuth(#[source] tss_esapi::Error),
    #[error("making the endorsement or attestation key failed: {0}")]
    Attest(#[source] tss_esapi::Error),
    #[error("certifying the key with the attestation key failed: {0}")]
    Certify(#[source] tss_esapi::Error),
    #[error("quoting the PCRs with the attestation key failed: {0}")]
    Quote(#[source] tss_esapi::Error),
    #[error(
        "the TPM could not answer the portal's credential challenge (TPM2_ActivateCredential): {0}; the challenge was not made for this TPM's endorsement and attestation keys"
    )]
    ActivateCredential(#[source] tss_esapi::Error),
    #[error("the portal's credential challenge is malformed: {0}")]
    BadChallenge(String),
    #[error("building a TPM structure failed: {0}")]
    Structure(#[source] tss_esapi::Error),
    #[error("the TPM rejected the key blob: {0}")]
    KeyRejected(String),
    #[error("stored TPM key blob is damaged: {0}")]
    BadBlob(String),
    #[error("the TPM answered with an unexpected {0}")]
    Unexpected(String),
    #[error("the PIN is {0} bytes long; the TPM takes at most 32")]
    PinTooLong(usize),
    #[error("wrong PIN (the TPM's authorization check failed)")]
    WrongPin,
    #[error(
        "the TPM is in dictionary-attack lockout: it refuses every PIN until its failure counter decays{}",
        recovery_hint(*.recovery_seconds)
    )]
    Lockout { recovery_seconds: Option<u64> },
    #[error("the TPM refused the lockout authorization")]
    LockoutAuthWrong,
    #[error(
        "the TPM's lockout authorization is blocked after a wrong one, for its lockoutRecovery time"
    )]
    LockoutAuthBlocked,
    #[error("the lockout authorization is {0} bytes long; the TPM takes at most 64")]
    LockoutAuthTooLong(usize),
    #[error("the lockout-hierarchy command failed ({step}): TSS2_RC {code}")]
    DaParameters { step: &'static str, code: String },
}

fn recovery_hint(seconds: Option<u64>) -> String {
    match seconds {
        Some(s) => format!(" (in at most {s} s)"),
        None => String::new(),
    }
}

impl TpmError {
    /// The inner TSS error, when there is one.
    fn tss(&self) -> Option<&tss_esapi::Error> {
        match self {
            TpmError::BadTcti { source, .. } | TpmError::PersistentPrimary { source, .. } => {
                Some(source)
            }
            TpmError::Properties(e)
            | TpmError::Primary(e)
            | TpmError::Session(e)
            | TpmError::Create(e)
            | TpmError::Load(e)
            | TpmError::Sign(e)
            | TpmError::ChangeAuth(e)
            | TpmError::Attest(e)
            | TpmError::Certify(e)
            | TpmError::Quote(e)
            | TpmError::ActivateCredential(e)
            | TpmError::Structure(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the connection broke or the TPM lost what this context had
    /// loaded (the TPM or simulator restarted: the storage key's handle
    /// is gone): worth reopening the context once.
    pub fn is_connection_lost(&self) -> bool {
        if matches!(self, TpmError::NoTpm { .. }) {
            return true;
        }
        let Some(error) = self.tss() else {
            return false;
        };
        if raw_code(error).is_some_and(|rc| (rc >> 16) & 0xff == TSS2_TCTI_LAYER) {
            return true;
        }
        // TPM_RC_REFERENCE_H0..H6 / S0..S6 (a handle or session that is not
        // loaded) and TPM_RC_INITIALIZE (TPM2_Startup not run yet).
        raw_code(error).is_some_and(|rc| {
            (rc & 0xffff_ff00 == 0x900 && (rc & 0xff) >= 0x10 && (rc & 0xff) <= 0x1e) || rc == 0x100
        })
    }
}

/// The numeric TSS2_RC of an error from the TSS.
pub fn raw_code(error: &tss_esapi::Error) -> Option<u32> {
    let tss_esapi::Error::Tss2Error(code) = error else {
        return None;
    };
    let text = match code {
        Tss2ResponseCode::Success => return Some(0),
        Tss2ResponseCode::FormatZero(rc) => rc.to_string(),
        Tss2ResponseCode::FormatOne(rc) => rc.to_string(),
    };
    // Both formats display as "Response code value: 0x...".
    let hex = text.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// What kind of TPM response an error carries.
pub fn kind(error: &tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match error {
        tss_esapi::Error::Tss2Error(code) => {
            // Only TPM-layer codes (layer 0) are TPM responses; TSS layers
            // reuse the numbers with other meanings.
            let layer = raw_code(error).map(|rc| (rc >> 16) & 0xff);
            if layer == Some(0) { code.kind() } else { None }
        }
        tss_esapi::Error::WrapperError(_) => None,
    }
}

impl From<TpmError> for KeyStoreError {
    fn from(error: TpmError) -> Self {
        match error {
            TpmError::WrongPin => KeyStoreError::pin_incorrect(None),
            TpmError::Lockout { recovery_seconds } => {
                let hint = match recovery_seconds {
                    Some(seconds) => format!(
                        "The TPM refuses every PIN for now (too many wrong PINs in total); try again in at most {seconds} s, or have an administrator reset it (tpm2_dictionarylockout --clear-lockout)."
                    ),
                    None => Reason::TpmLockout.default_hint().to_string(),
                };
                KeyStoreError::new(Reason::TpmLockout, error.to_string())
                    .with_retry_after(recovery_seconds)
                    .with_hint(hint)
            }
            TpmError::PinTooLong(_) => KeyStoreError::pin_rules(&error),
            TpmError::LockoutAuthWrong => KeyStoreError::new(Reason::TpmLockoutAuthWrong, error.to_string()),
            TpmError::LockoutAuthBlocked => KeyStoreError::new(Reason::TpmLockoutAuthBlocked, error.to_string()),
            TpmError::LockoutAuthTooLong(_) => KeyStoreError::invalid_option(error.to_string()),
            TpmError::KeyRejected(_) => KeyStoreError::new(Reason::TpmKeyRejected, error.to_string()),
            TpmError::BadBlob(ref detail) => KeyStoreError::corrupt("TPM key blob", detail),
            TpmError::NoTpm { .. } | TpmError::Poisoned | TpmError::BadTcti { .. } => {
                KeyStoreError::unavailable(&error)
            }
            other if other.is_connection_lost() => KeyStoreError::unavailable(&other)
                .with_hint("The connection to the TPM broke (the TPM or its resource manager restarted); try again."),
            other => KeyStoreError::internal(format!("TPM: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tss_esapi::constants::response_code::Tss2ResponseCode;

    fn tss(rc: u32) -> tss_esapi::Error {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc))
    }

    #[test]
    fn tpm_codes_map_to_key_store_errors() {
        // TPM_RC_AUTH_FAIL for session 1, TPM_RC_LOCKOUT.
        assert_eq!(raw_code(&tss(0x98e)), Some(0x98e));
        assert_eq!(kind(&tss(0x98e)), Some(Tss2ResponseCodeKind::AuthFail));
        assert_eq!(kind(&tss(0x921)), Some(Tss2ResponseCodeKind::Lockout));
        // The same number from a TSS layer (here the ESAPI, layer 7) is not
        // a TPM answer.
        assert_eq!(kind(&tss(0x7_098e)), None);
        let wrong = KeyStoreError::from(TpmError::WrongPin);
        assert!(
            wrong.is(Reason::PinWrong) && wrong.tries_left.is_none(),
            "{wrong:?}"
        );
        let lockout = KeyStoreError::from(TpmError::Lockout {
            recovery_seconds: Some(1000),
        });
        assert!(lockout.is(Reason::TpmLockout), "{lockout:?}");
        assert_eq!(lockout.retry_after_seconds, Some(1000));
        assert!(lockout.to_string().contains("1000 s"), "{lockout}");
        // The TPM's own hint, with the wait, reaches the failure.
        let failure = lockout.into_failure("tpm");
        assert!(failure.hint.contains("1000 s"), "{failure:?}");
        assert!(
            failure.hint.contains("tpm2_dictionarylockout"),
            "{failure:?}"
        );
        assert_eq!(failure.meta("retry_after_seconds"), Some("1000"));
        let rejected = KeyStoreError::from(TpmError::KeyRejected("integrity".into()));
        assert_eq!(rejected.into_failure("tpm").reason, Reason::TpmKeyRejected);
    }

    #[test]
    fn lost_connections_and_reset_tpms_are_recognised() {
        // TCTI I/O error (layer 10), TPM_RC_REFERENCE_H0, TPM_RC_INITIALIZE.
        for rc in [0xa_000a, 0x910, 0x100] {
            assert!(TpmError::Sign(tss(rc)).is_connection_lost(), "{rc:#x}");
            assert!(KeyStoreError::from(TpmError::Load(tss(rc))).is(Reason::BackendUnavailable));
        }
        for rc in [0x98e, 0x921, 0x9a2] {
            assert!(!TpmError::Sign(tss(rc)).is_connection_lost(), "{rc:#x}");
        }
        assert!(!TpmError::WrongPin.is_connection_lost());
    }
}
