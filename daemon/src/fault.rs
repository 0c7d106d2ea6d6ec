//! A test-only fault hook: `FLEETKEY_TEST_CRASH_AT=<point>` in the
//! daemon's environment makes it abort (as kill -9 would stop it) when it
//! reaches that point, so end-to-end tests can crash it at an exact place.
//! Never set it in production. Points:
//!
//! - `after-enroll`: the portal has committed `EnrollUser`, the user's row
//!   is still pending (`tests/e2e/tests/enroll_crash.rs`).
//! - `reset-after-enroll`: the portal has committed a user reset's
//!   `EnrollUser` (old credential revoked), the user's row still has the
//!   old key (`tests/e2e/tests/reset.rs`).

/// The variable that names the crash point.
pub const CRASH_AT: &str = "FLEETKEY_TEST_CRASH_AT";

/// Aborts the process if the test environment asks for a crash at `point`.
pub fn crash_point(point: &str) {
    if std::env::var_os(CRASH_AT).is_some_and(|v| v == point) {
        tracing::error!(point, "{CRASH_AT} set: aborting (test-only fault hook)");
        std::process::abort();
    }
}
