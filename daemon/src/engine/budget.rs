//! The TPM lockout budget (docs/tpm-lockout.md): a TPM counts wrong PINs
//! for all its keys together and locks every key when the count reaches
//! `maxTries`. No sequence of PINs the daemon lets through may bring it
//! there.
//!
//! The rule ([`decide`]): `room` is how many more failures the TPM takes
//! without entering lockout (`maxTries - 1 - counter`), less the PIN
//! attempts already on their way to the TPM. A user who has typed no wrong
//! PIN may try while `room >= 1`; a user who has, only while
//! `room >= 1 + RESERVE`, so that the last failure the TPM can take is
//! kept for someone who has made no mistake. Every attempt let through can
//! fail, and each leaves `room >= 0`: the TPM never reaches lockout
//! through the daemon (the model test below enumerates every sequence).
//!
//! The counter is read from the TPM at start, after every failure, and
//! again whenever the estimate would refuse; between reads it is
//! estimated downwards by the TPM's decay (one failure forgotten every
//! `interval` seconds), never below what the TPM can have.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fleetkey_plugin::SharedLockout;
use fleetkey_proto::{Failure, Reason};

/// Failures kept for users who have made no mistake: users with wrong
/// PINs on record stop this far before the TPM's last failure.
pub const RESERVE: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Pass,
    /// Refused by the budget; the wait until the TPM's decay lets this
    /// user try, where it can (None: never at these parameters).
    Refuse {
        wait_seconds: Option<u64>,
    },
}

/// Failures the TPM can still take without entering lockout.
pub fn room(lockout: &SharedLockout, counter: u32) -> u32 {
    lockout.max_tries.saturating_sub(1).saturating_sub(counter)
}

/// Whether one more PIN attempt may go to the TPM, for a user with
/// `failed_attempts` wrong PINs on record, with the TPM's counter at
/// `counter` and `in_flight` attempts already let through and unanswered.
pub fn decide(
    lockout: &SharedLockout,
    counter: u32,
    in_flight: u32,
    failed_attempts: u32,
) -> Decision {
    if lockout.in_lockout {
        // The TPM refuses before checking: nothing more is counted, and
        // the store answers TPM_LOCKOUT with the TPM's own wait.
        return Decision::Pass;
    }
    let need = if failed_attempts == 0 { 1 } else { 1 + RESERVE };
    let available = room(lockout, counter).saturating_sub(in_flight);
    if available >= need {
        return Decision::Pass;
    }
    // The counter must fall by this much before `need` fits.
    let short = u64::from(need - available);
    let reachable = u64::from(need) <= u64::from(lockout.max_tries.saturating_sub(1));
    let wait_seconds = (reachable && lockout.interval_seconds > 0)
        .then(|| short * u64::from(lockout.interval_seconds));
    Decision::Refuse { wait_seconds }
}

/// The counter now, estimated from a reading `elapsed_seconds` old: the
/// TPM forgets at least one failure per whole interval.
pub fn decayed(lockout: &SharedLockout, elapsed_seconds: u64) -> u32 {
    if lockout.interval_seconds == 0 {
        return lockout.counter;
    }
    let forgotten = elapsed_seconds / u64::from(lockout.interval_seconds);
    lockout
        .counter
        .saturating_sub(u32::try_from(forgotten).unwrap_or(u32::MAX))
}

/// `maxTries` for `users` users who may each type `per_user` wrong PINs in
/// a row: all of them may spend everything, and the reserve stays.
pub fn provisioned_max_tries(users: u32, per_user: u32) -> Option<u32> {
    users
        .checked_mul(per_user)?
        .checked_add(RESERVE)?
        .checked_add(1)
}

/// `recoveryTime` for a provisioned budget: the whole budget grows back
/// within a day, and no faster than one failure per 10 minutes.
pub fn provisioned_recovery_time(users: u32, per_user: u32) -> u32 {
    let total = users.saturating_mul(per_user).max(1);
    (86_400 / total).max(600)
}

struct Entry {
    lockout: SharedLockout,
    read_at: Instant,
    in_flight: u32,
}

/// The budget of every key store with a shared counter, by store name.
#[derive(Default)]
pub struct Budgets {
    entries: Mutex<HashMap<String, Entry>>,
    /// Stores known to have no shared counter.
    without: Mutex<std::collections::HashSet<String>>,
}

/// An attempt let through: counted as in flight until dropped.
pub struct Ticket {
    budgets: Arc<Budgets>,
    backend: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut entries) = self.budgets.entries.lock()
            && let Some(entry) = entries.get_mut(&self.backend)
        {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }
}

fn poisoned() -> Failure {
    Failure::new(Reason::Internal, "the TPM budget table was poisoned")
}

impl Budgets {
    /// Records a fresh reading of the store's counter.
    pub fn observe(&self, backend: &str, lockout: SharedLockout) -> Result<(), Failure> {
        let mut entries = self.entries.lock().map_err(|_| poisoned())?;
        let in_flight = entries.get(backend).map_or(0, |e| e.in_flight);
        entries.insert(
            backend.to_string(),
            Entry {
                lockout,
                read_at: Instant::now(),
                in_flight,
            },
        );
        Ok(())
    }

    /// Remembers that a store has no shared counter.
    pub fn mark_without(&self, backend: &str) {
        if let Ok(mut without) = self.without.lock() {
            without.insert(backend.to_string());
        }
    }

    /// Whether the store is known to have no shared counter.
    pub fn is_without(&self, backend: &str) -> bool {
        self.without
            .lock()
            .map(|w| w.contains(backend))
            .unwrap_or(false)
    }

    /// Whether the store has a budget (a reading was recorded).
    pub fn knows(&self, backend: &str) -> bool {
        self.entries
            .lock()
            .map(|e| e.contains_key(backend))
            .unwrap_or(true)
    }

    /// The last reading with the counter estimated for now, and the
    /// attempts in flight.
    pub fn current(&self, backend: &str) -> Option<(SharedLockout, u32)> {
        let entries = self.entries.lock().ok()?;
        let entry = entries.get(backend)?;
        let mut lockout = entry.lockout;
        lockout.counter = decayed(&lockout, entry.read_at.elapsed().as_secs());
        Some((lockout, entry.in_flight))
    }

    /// Decides for one attempt and, when it passes, counts it in flight.
    pub fn admit(
        self: &Arc<Self>,
        backend: &str,
        failed_attempts: u32,
    ) -> Result<Result<Option<Ticket>, (Decision, SharedLockout)>, Failure> {
        let mut entries = self.entries.lock().map_err(|_| poisoned())?;
        let Some(entry) = entries.get_mut(backend) else {
            return Ok(Ok(None));
        };
        let counter = decayed(&entry.lockout, entry.read_at.elapsed().as_secs());
        let decision = decide(&entry.lockout, counter, entry.in_flight, failed_attempts);
        if decision != Decision::Pass {
            let mut lockout = entry.lockout;
            lockout.counter = counter;
            return Ok(Err((decision, lockout)));
        }
        entry.in_flight += 1;
        Ok(Ok(Some(Ticket {
            budgets: self.clone(),
            backend: backend.to_string(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpm(max_tries: u32, counter: u32) -> SharedLockout {
        SharedLockout {
            max_tries,
            counter,
            interval_seconds: 1000,
            lockout_recovery_seconds: 1000,
            in_lockout: false,
            lockout_auth_set: false,
        }
    }

    /// The model: `users` users, each with the daemon's per-user limit;
    /// every PIN let through may be wrong. Enumerates every sequence of
    /// attempts (who tries, right or wrong PIN) up to `depth`, with the
    /// TPM starting at `counter`, and checks that no sequence the rule lets
    /// through reaches the TPM's lockout; also that a user who has made no
    /// mistake is let through whenever the TPM can take one more failure.
    fn explore(max_tries: u32, per_user: u32, failed: &mut Vec<u32>, counter: u32, depth: u32) {
        let lockout = tpm(max_tries, counter);
        assert!(counter < max_tries, "lockout reached: {failed:?}");
        if depth == 0 {
            return;
        }
        for user in 0..failed.len() {
            if failed[user] >= per_user {
                continue; // locked by the daemon's per-user count
            }
            let decision = decide(&lockout, counter, 0, failed[user]);
            if failed[user] == 0 && room(&lockout, counter) >= 1 {
                assert_eq!(decision, Decision::Pass, "a clean user refused: {failed:?}");
            }
            if decision != Decision::Pass {
                continue;
            }
            // A right PIN: the user's count is reset, the TPM's is not.
            let before = failed[user];
            failed[user] = 0;
            explore(max_tries, per_user, failed, counter, depth - 1);
            // A wrong PIN: both count it.
            failed[user] = before + 1;
            explore(max_tries, per_user, failed, counter + 1, depth - 1);
            failed[user] = before;
        }
    }

    #[test]
    fn no_sequence_the_rule_lets_through_reaches_lockout() {
        for max_tries in 1..=7 {
            for users in 1..=4 {
                for start in 0..max_tries {
                    let mut failed = vec![0; users];
                    explore(max_tries, max_tries.max(2) - 1, &mut failed, start, 7);
                }
            }
        }
    }

    #[test]
    fn attempts_in_flight_count_as_failures_to_come() {
        // Two clean users at once with room for one: only the first passes.
        let lockout = tpm(3, 1);
        assert_eq!(decide(&lockout, 1, 0, 0), Decision::Pass);
        assert!(matches!(decide(&lockout, 1, 1, 0), Decision::Refuse { .. }));
        // Concurrent attempts through `admit`, with tickets held.
        let budgets = Arc::new(Budgets::default());
        // maxTries 3: room for two failures, so two clean attempts at once.
        budgets.observe("tpm", tpm(3, 0)).unwrap();
        let a = budgets.admit("tpm", 0).unwrap().ok().flatten();
        let b = budgets.admit("tpm", 0).unwrap().ok().flatten();
        assert!(a.is_some() && b.is_some());
        assert!(budgets.admit("tpm", 0).unwrap().is_err());
        drop(a);
        assert!(budgets.admit("tpm", 0).unwrap().is_ok());
    }

    #[test]
    fn with_three_tries_the_arithmetic_is_this() {
        // swtpm's factory maxTries 3: two failures may be counted.
        // A user who erred may not spend the last one...
        assert_eq!(
            decide(&tpm(3, 1), 1, 0, 1),
            Decision::Refuse {
                wait_seconds: Some(1000)
            }
        );
        // ...a clean user may: the counter leaves room for exactly that one.
        assert_eq!(decide(&tpm(3, 1), 1, 0, 0), Decision::Pass);
        // With no room left, everyone waits for one decay interval.
        assert_eq!(
            decide(&tpm(3, 2), 2, 0, 0),
            Decision::Refuse {
                wait_seconds: Some(1000)
            }
        );
        assert_eq!(
            decide(&tpm(3, 2), 2, 0, 1),
            Decision::Refuse {
                wait_seconds: Some(2000)
            }
        );
        // maxTries 2: a user who erred can never try again before decay
        // brings the counter to 0, which is not enough room: never.
        assert_eq!(
            decide(&tpm(2, 0), 0, 0, 1),
            Decision::Refuse { wait_seconds: None }
        );
        // In lockout the TPM answers itself (and counts nothing).
        let mut locked = tpm(3, 3);
        locked.in_lockout = true;
        assert_eq!(decide(&locked, 3, 0, 1), Decision::Pass);
    }

    #[test]
    fn decay_lowers_the_estimate_by_whole_intervals() {
        assert_eq!(decayed(&tpm(3, 2), 999), 2);
        assert_eq!(decayed(&tpm(3, 2), 1000), 1);
        assert_eq!(decayed(&tpm(3, 2), 5000), 0);
    }

    #[test]
    fn provisioning_gives_every_user_every_wrong_pin() {
        // 4 users x 5 wrong PINs, plus the reserve, plus the last failure.
        let max_tries = provisioned_max_tries(4, 5).unwrap();
        assert_eq!(max_tries, 22);
        let lockout = tpm(max_tries, 0);
        let mut counter = 0;
        for _user in 0..4 {
            for wrong in 0..5 {
                assert_eq!(decide(&lockout, counter, 0, wrong), Decision::Pass);
                counter += 1;
            }
        }
        // A fifth user, who has made no mistake, can still try.
        assert_eq!(decide(&lockout, counter, 0, 0), Decision::Pass);
        assert!(counter + 1 < max_tries);
        assert_eq!(provisioned_recovery_time(4, 5), 4320);
        assert_eq!(provisioned_recovery_time(100, 100), 600);
        assert_eq!(provisioned_max_tries(u32::MAX, 2), None);
    }
}
