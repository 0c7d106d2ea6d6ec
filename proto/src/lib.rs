//! Every wire format of fleetkey, in one place: the daemon and portal gRPC
//! APIs (generated from `proto/`), the activation code, the enrollment
//! payload URI carried by QR codes, the messages devices sign for the
//! portal, and the stable error reasons.

pub mod binding;
pub mod code;
pub mod failure;
#[doc(hidden)]
pub mod fuzzing;
pub mod paths;
pub mod payload;
pub mod terminal;
pub mod time;
pub mod user_name;

pub use code::{ActivationCode, CodeError};
pub use failure::{Failure, Reason};
pub use payload::{EnrollmentInput, EnrollmentPayload, PayloadError};

/// The daemon API, `fleetkey.v1`.
pub mod daemon {
    tonic::include_proto!("fleetkey.v1");
}

/// The encoded `FileDescriptorSet` of the daemon API (`fleetkey/v1/daemon.proto`),
/// which the daemon serves through gRPC server reflection.
pub const DAEMON_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fleetkey_daemon_descriptor.bin"));

/// The portal API, `fleetkey.portal.v1`.
pub mod portal {
    tonic::include_proto!("fleetkey.portal.v1");
}
