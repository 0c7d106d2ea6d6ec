//! Before `user add` asks for a PIN: the daemon checks what it can without
//! one (`CheckAddUser`: activation, key store, the code's kind and user),
//! so that a person does not type a PIN twice only to learn the device is
//! not activated.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::CheckAddUserRequest;

use super::Context;
use crate::connection::Client;

/// Runs the daemon's check. A daemon too old to know the call is not
/// asked again: the enrollment itself checks the same things.
pub async fn before_pin(
    ctx: &Context,
    client: &mut Client,
    code: &str,
    backend: &str,
) -> Result<(), Failure> {
    match client
        .check_add_user(CheckAddUserRequest {
            code: code.to_string(),
            backend: backend.to_string(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::Unimplemented => Ok(()),
        Err(status) => Err(ctx.rpc_failure(status)),
    }
}
