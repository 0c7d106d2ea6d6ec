//! Key-store errors as the caller sees them: one `Failure` with a reason.
//! The key store says what went wrong (its reason, message, hint and
//! typed details); the mapping is the same for every store. The daemon
//! adds only what it knows itself: its own wrong-PIN count.

use fleetkey_plugin::KeyStoreError;
use fleetkey_proto::{Failure, Reason};

/// A key-store failure as the caller sees it: the store's own reason,
/// message, hint and details ([`KeyStoreError::into_failure`]).
pub(crate) fn key_store_failure(backend: &str, error: KeyStoreError) -> Failure {
    if error.is(Reason::Internal) {
        tracing::error!(backend, %error, "key store failure");
    }
    error.into_failure(backend)
}

/// A wrong PIN (`PIN_WRONG` from the store), counted: `failed` wrong PINs
/// in a row of `max`. The daemon's count runs beside the store's own and
/// the smaller `tries_left` wins; at 0 the user is locked. The store's
/// hint stays while the user may try again.
pub(crate) fn wrong_pin_failure(
    user: &str,
    backend: &str,
    error: KeyStoreError,
    failed: u32,
    max: u32,
) -> Failure {
    let ours = max.saturating_sub(failed);
    let tries_left = error.tries_left.map_or(ours, |store| store.min(ours));
    let mut failure = key_store_failure(backend, error);
    if tries_left == 0 {
        failure.reason = Reason::PinLocked;
        failure.hint = Reason::PinLocked.default_hint().to_string();
        failure.message = format!("wrong PIN; user {user} is now locked after {failed} wrong PINs");
    } else {
        failure.message = format!(
            "wrong PIN for user {user}; {tries_left} {} left",
            if tries_left == 1 { "try" } else { "tries" }
        );
    }
    failure.with_meta("tries_left", tries_left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stores_reason_hint_and_details_reach_the_failure() {
        let error = KeyStoreError::new(Reason::CardMismatch, "card 1 is in reader R")
            .with_hint("Insert card 2.")
            .with_retry_after(Some(30));
        let failure = key_store_failure("pcsc", error);
        assert_eq!(failure.reason, Reason::CardMismatch);
        assert_eq!(failure.message, "key store 'pcsc': card 1 is in reader R");
        assert_eq!(failure.hint, "Insert card 2.");
        assert_eq!(failure.meta("backend"), Some("pcsc"));
        assert_eq!(failure.meta("retry_after_seconds"), Some("30"));
        // Without a hint of its own, the reason's.
        let failure = key_store_failure("soft", KeyStoreError::internal("disk full"));
        assert_eq!(failure.reason, Reason::Internal);
        assert_eq!(failure.hint, Reason::Internal.default_hint());
    }

    #[test]
    fn the_stores_tries_left_wins_when_smaller_and_its_hint_stays() {
        let card = || KeyStoreError::pin_incorrect(Some(2)).with_hint("Give the card's own PIN.");
        // The daemon allows 4 more; the card 2.
        let failure = wrong_pin_failure("alice", "pcsc", card(), 1, 5);
        assert_eq!(failure.reason, Reason::PinWrong);
        assert_eq!(failure.meta("tries_left"), Some("2"));
        assert_eq!(failure.hint, "Give the card's own PIN.");
        assert_eq!(failure.message, "wrong PIN for user alice; 2 tries left");
        // The daemon's count is smaller.
        let failure = wrong_pin_failure("alice", "pcsc", card(), 4, 5);
        assert_eq!(failure.meta("tries_left"), Some("1"));
        // A store that does not count: the daemon's count alone.
        let failure = wrong_pin_failure("bob", "soft", KeyStoreError::pin_incorrect(None), 2, 5);
        assert_eq!(failure.meta("tries_left"), Some("3"));
        assert_eq!(failure.hint, Reason::PinWrong.default_hint());
        // At the limit: locked.
        let failure = wrong_pin_failure("bob", "soft", KeyStoreError::pin_incorrect(None), 5, 5);
        assert_eq!(failure.reason, Reason::PinLocked);
        assert_eq!(failure.meta("tries_left"), Some("0"));
        assert!(failure.message.contains("locked after 5"), "{failure}");
    }
}
