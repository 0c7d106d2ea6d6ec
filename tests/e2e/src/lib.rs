//! A harness that runs the real programs: `fleetkey-portal serve`,
//! `fleetkeyd` and `fleetkeyctl`, each in its own temporary directory, on
//! loopback and Unix sockets only. The binaries come from the same target
//! directory as the test (build them first: `cargo build --workspace
//! --bins`; the README's test command does).
//!
//! Helpers panic with a clear message: they are test code.

mod daemon;
mod dbus;
mod fault_proxy;
mod helpers;
mod pcsc;
mod portal;
mod swtpm;

pub use daemon::*;
pub use dbus::*;
pub use fault_proxy::*;
pub use helpers::*;
pub use pcsc::*;
pub use portal::*;
pub use swtpm::*;
pub mod approvals;
pub mod readme;
pub use readme::{readme_block, run_script};
