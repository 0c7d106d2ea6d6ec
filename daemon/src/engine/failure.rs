//! Key-store errors as the caller sees them: one `Failure` with a reason.

use fleetkey_plugin::KeyStoreError;
use fleetkey_proto::{Failure, Reason};

/// A key-store failure other than a PIN check, as the caller sees it.
pub(crate) fn key_store_failure(backend: &str, error: KeyStoreError) -> Failure {
    let reason = match &error {
        KeyStoreError::Unsupported { .. } => Reason::Unsupported,
        KeyStoreError::PinIncorrect { .. } => Reason::PinWrong,
        KeyStoreError::PinLocked => Reason::PinLocked,
        KeyStoreError::PinRules(_) => Reason::PinPolicy,
        KeyStoreError::Unavailable(_) => Reason::BackendUnavailable,
        KeyStoreError::HardwareLockout { .. } => Reason::TpmLockout,
        KeyStoreError::KeyRejected(_) => Reason::TpmKeyRejected,
        KeyStoreError::CardNotPresent(_) => Reason::CardNotPresent,
        KeyStoreError::CardMismatch(_) => Reason::CardMismatch,
        KeyStoreError::ManagementKeyRejected(_) => Reason::CardManagementKey,
        KeyStoreError::CardUnsupported(_) => Reason::CardUnsupported,
        KeyStoreError::PukIncorrect { .. } => Reason::PukWrong,
        KeyStoreError::InvalidOption(_) => Reason::InvalidArgument,
        KeyStoreError::KeyNotFound(_)
        | KeyStoreError::Corrupt { .. }
        | KeyStoreError::Io { .. }
        | KeyStoreError::Backend(_) => Reason::Internal,
    };
    if reason == Reason::Internal {
        tracing::error!(backend, %error, "key store failure");
    }
    let mut failure = Failure::new(reason, format!("key store '{backend}': {error}"))
        .with_meta("backend", backend);
    match error {
        KeyStoreError::HardwareLockout {
            retry_after_seconds: Some(seconds),
            ..
        } => {
            failure = failure
                .with_meta("retry_after_seconds", seconds)
                .with_hint(format!(
                    "The TPM refuses every PIN for now (too many wrong PINs in total); try again in at most {seconds} s, or have an administrator reset it (tpm2_dictionarylockout --clear-lockout)."
                ));
        }
        KeyStoreError::PinIncorrect {
            tries_left: Some(tries_left),
        } => {
            failure = Failure::new(
                reason,
                format!("key store '{backend}': wrong PIN; the card allows {tries_left} more"),
            )
            .with_meta("backend", backend)
            .with_meta("tries_left", tries_left)
            .with_hint("This card's PIN is already set: give the card's PIN (or unblock the card with its PUK first).");
        }
        KeyStoreError::PinLocked => {
            failure = failure
                .with_meta("tries_left", 0)
                .with_hint("The card has blocked its PIN; unblock it with its PUK (e.g. ykman piv access unblock-pin) before enrolling.");
        }
        _ => {}
    }
    failure
}
