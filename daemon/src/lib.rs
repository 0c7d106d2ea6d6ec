//! fleetkeyd: the fleetkey daemon. It keeps the device's identity and its
//! users' keys (in the key-store backends), enrolls users with activation
//! codes from the portal, and signs with a user's key when given the PIN.
//! See ARCHITECTURE.md at the repository root for the map.

pub mod args;
pub mod audit;
pub mod auth;
pub mod backends;
pub mod config;
pub mod dbus;
pub mod device_key;
pub mod engine;
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod pin_policy;
pub mod portal_client;
pub mod scan;
pub mod server;
pub mod state;
pub mod systemd;
