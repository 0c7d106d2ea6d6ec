//! fleetkey's reference portal (relying party), `fleetkey-portal`.
//!
//! It issues single-use, expiring activation codes (device activation and
//! add-user), registers devices and enrolls users against them with proof
//! of possession, and revokes credentials: the `fleetkey.portal.v1.Portal`
//! gRPC API that fleetkeyd speaks. Tests and demos run against it, and it is
//! the reference an enterprise follows in its own portal.
//!
//! - [`store`]: the SQLite database (codes, devices, enrollments);
//!   [`code_key`]: codes kept as keyed hashes; [`files`]: the portal's
//!   files are private (0600).
//! - [`service`]: the gRPC service and its checks; [`rate_limit`]: the
//!   per-peer and per-device token buckets in front of it.
//! - [`server`]: running it ([`serve`] for tests and benchmarks).
//! - [`cli`]: the `fleetkey-portal` command line.
//! - [`qr`]: QR codes for terminals and PNG files.
//! - [`tpm`]: TPM 2.0 structures, TPM2_MakeCredential and the checks of
//!   docs/tpm-attestation.md; [`der`]: the X.509 subset certificate chains
//!   need; [`attestation`]: PIV attestation.
//! - [`login`]: login challenges answered on devices (docs/approvals.md).
//! - [`migrate`]: replacing codes: moving a device's users to another
//!   device (`device migrate`) and resetting one user (`user reset-code`).
//! - [`integrity`]: the check of a device's integrity report and quote
//!   (docs/integrity.md).

pub mod attestation;
pub mod batch;
pub mod cli;
pub mod code_key;
pub mod der;
pub mod error;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod integrity;
pub mod login;
pub mod migrate;
pub mod qr;
pub mod rate_limit;
pub mod server;
pub mod service;
pub mod store;
pub mod tpm;

pub use error::PortalError;
pub use server::{run, serve};
pub use service::PortalService;
pub use store::Store;
