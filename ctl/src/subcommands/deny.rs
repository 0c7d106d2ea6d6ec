//! `fleetkeyctl deny ID`: denies a login challenge.

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::DenyRequest;

use super::Context;
use super::approvals::approval_json;
use crate::output;

/// Deny a login challenge (no PIN needed: the device key signs the denial)
#[derive(Debug, clap::Args)]
pub struct Deny {
    /// The challenge id (fleetkeyctl approvals list)
    #[arg(value_name = "ID")]
    pub id: String,
}

impl Deny {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let response = client
            .deny(DenyRequest {
                id: self.id.clone(),
            })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        let approval = response.approval.unwrap_or_default();
        if ctx.json {
            output::json(&approval_json(&approval))
        } else {
            output::data(&format!("{} {}", approval.id, approval.state))
        }
    }
}
