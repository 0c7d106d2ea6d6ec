//! `fleetkeyctl approvals list|watch`: the login challenges the portal
//! asked this device (docs/approvals.md).

use fleetkey_proto::Failure;
use fleetkey_proto::daemon::{Approval, WatchApprovalsRequest};
use fleetkey_proto::terminal::escape;
use fleetkey_proto::time::rfc3339;
use serde::Serialize;

use super::Context;
use crate::output;

/// Login challenges from the portal
#[derive(Debug, clap::Subcommand)]
pub enum ApprovalsCommand {
    /// List the login challenges this device keeps (pending first)
    List,
    /// Print the login challenges, then each change as it happens, until
    /// interrupted (with --json: one JSON object a line)
    Watch,
}

impl ApprovalsCommand {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let watch = matches!(self, ApprovalsCommand::Watch);
        let mut client = ctx.client().await?;
        let mut stream = client
            .watch_approvals(WatchApprovalsRequest { watch })
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        let mut all = Vec::new();
        loop {
            let next = stream.message().await.map_err(|s| ctx.rpc_failure(s))?;
            let Some(approval) = next else { break };
            if watch {
                if ctx.json {
                    let line = serde_json::to_string(&approval_json(&approval)).map_err(|e| {
                        Failure::new(fleetkey_proto::Reason::Internal, e.to_string())
                    })?;
                    output::data(&line)?;
                } else {
                    output::data(&approval_line(&approval))?;
                }
            } else {
                all.push(approval);
            }
        }
        if watch {
            return Ok(());
        }
        // Pending first, then the rest, each oldest first.
        all.sort_by_key(|a| (a.state != "pending", a.created_at));
        if ctx.json {
            let list: Vec<_> = all.iter().map(approval_json).collect();
            return output::json(&list);
        }
        if all.is_empty() {
            output::message("no login challenges");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|a| {
                vec![
                    a.id.clone(),
                    escape(&a.user).into_owned(),
                    a.state.clone(),
                    rfc3339(a.expires_at),
                    escape(&a.context).into_owned(),
                ]
            })
            .collect();
        output::data(&output::table(
            &["ID", "USER", "STATE", "EXPIRES", "CONTEXT"],
            &rows,
        ))
    }
}

/// One line of `approvals watch`.
pub fn approval_line(a: &Approval) -> String {
    format!(
        "{} {} user={} expires={} context=\"{}\" portal=\"{}\"",
        a.id,
        a.state,
        escape(&a.user),
        rfc3339(a.expires_at),
        escape(&a.context),
        escape(&a.portal_name)
    )
}

/// The JSON form of a challenge.
#[derive(Debug, Serialize)]
pub struct ApprovalJson {
    pub id: String,
    pub user: String,
    pub state: String,
    pub context: String,
    pub portal_name: String,
    /// RFC 3339.
    pub created_at: String,
    pub expires_at: String,
    /// RFC 3339; absent while pending.
    pub answered_at: Option<String>,
}

pub fn approval_json(a: &Approval) -> ApprovalJson {
    ApprovalJson {
        id: a.id.clone(),
        user: a.user.clone(),
        state: a.state.clone(),
        context: a.context.clone(),
        portal_name: a.portal_name.clone(),
        created_at: rfc3339(a.created_at),
        expires_at: rfc3339(a.expires_at),
        answered_at: (a.answered_at > 0).then(|| rfc3339(a.answered_at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_escaped_in_lines() {
        let a = Approval {
            id: "chl-a".into(),
            user: "alice".into(),
            context: "log in\u{1b}[2J\u{202e}".into(),
            portal_name: "p".into(),
            state: "pending".into(),
            ..Default::default()
        };
        let line = approval_line(&a);
        assert!(!line.contains('\u{1b}'));
        assert!(!line.contains('\u{202e}'));
    }
}
