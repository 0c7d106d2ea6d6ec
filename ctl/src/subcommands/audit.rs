//! `fleetkeyctl audit show|verify`: the daemon's hash-chained audit log
//! (docs/audit.md). Admins only.

use fleetkey_proto::daemon::{ReadAuditRequest, VerifyAuditRequest, VerifyAuditResponse};
use fleetkey_proto::terminal::escape;
use fleetkey_proto::time::rfc3339;
use fleetkey_proto::{Failure, Reason};
use serde::Serialize;
use serde_json::Value;

use super::Context;
use crate::output;

/// The audit commands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    Show(AuditShow),
    Verify(AuditVerify),
}

impl AuditCommand {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        match self {
            AuditCommand::Show(cmd) => cmd.run(ctx).await,
            AuditCommand::Verify(cmd) => cmd.run(ctx).await,
        }
    }
}

/// Entries asked for per call; the daemon gives at most 1000.
const PAGE: u32 = 500;

/// Show the audit log's entries, oldest first
#[derive(Debug, clap::Args)]
#[command(
    long_about = "\
Shows the security events the daemon recorded (activation, users added and \
removed, signatures, wrong PINs, locks, PIN changes), oldest first: sequence \
number, time, the Unix uid that asked, the event and its details. With --json, \
one document whose entries are the log's lines as written (with their hashes). \
It does not check the log: fleetkeyctl audit verify does. Admins only.",
    after_long_help = "\
Examples:
  fleetkeyctl audit show
  fleetkeyctl audit show --after 120
  fleetkeyctl --json audit show | jq '.entries[] | select(.kind == \"pin_wrong\")'"
)]
pub struct AuditShow {
    /// Only entries after this sequence number
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: u64,
}

impl AuditShow {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let mut after = self.after;
        let mut entries = Vec::new();
        loop {
            let page = client
                .read_audit(ReadAuditRequest {
                    after_seq: after,
                    limit: PAGE,
                })
                .await
                .map_err(|s| ctx.rpc_failure(s))?
                .into_inner();
            for line in &page.entries_json {
                let entry: Value = serde_json::from_str(line).map_err(|e| {
                    Failure::new(
                        Reason::Internal,
                        format!("the daemon sent an audit entry that is not JSON: {e}"),
                    )
                })?;
                if let Some(seq) = entry.get("seq").and_then(Value::as_u64) {
                    after = after.max(seq);
                }
                entries.push(entry);
            }
            if !page.more || page.entries_json.is_empty() {
                break;
            }
        }
        if ctx.json {
            output::json(&ShowJson { entries })
        } else {
            output::data(&show_text(&entries))
        }
    }
}

/// `audit show --json`.
#[derive(Debug, Serialize)]
pub struct ShowJson {
    pub entries: Vec<Value>,
}

/// Fields every entry has; the rest are the event's details.
const FRAME: [&str; 6] = ["seq", "time", "uid", "kind", "prev", "hash"];

/// The table `audit show` prints.
pub fn show_text(entries: &[Value]) -> String {
    if entries.is_empty() {
        return "The audit log is empty.".into();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|entry| {
            let field = |name: &str| entry.get(name).cloned().unwrap_or(Value::Null);
            let details = entry
                .as_object()
                .map(|fields| {
                    fields
                        .iter()
                        .filter(|(k, _)| !FRAME.contains(&k.as_str()))
                        .map(|(k, v)| match v {
                            Value::String(s) => format!("{k}={}", escape(s)),
                            other => format!("{k}={}", escape(&other.to_string())),
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            vec![
                field("seq").to_string(),
                field("time").as_i64().map(rfc3339).unwrap_or_default(),
                match field("uid") {
                    Value::Null => "daemon".into(),
                    uid => uid.to_string(),
                },
                field("kind")
                    .as_str()
                    .map(|s| escape(s).to_string())
                    .unwrap_or_default(),
                details,
            ]
        })
        .collect();
    output::table(&["SEQ", "TIME", "UID", "EVENT", "DETAILS"], &rows)
}

/// Check the audit log: chain and recorded head
#[derive(Debug, clap::Args)]
#[command(long_about = "\
Checks the whole audit log: every entry is chained to the one before by its \
hash, the sequence numbers run without a gap, and the log reaches the head \
(last sequence number and hash) the daemon keeps in state.db. So an entry \
edited, removed (anywhere, the last ones included) or moved is found. On \
success prints how many entries were checked; otherwise fails with \
AUDIT_TAMPERED (exit 105) naming the first line that breaks. Admins only.")]
pub struct AuditVerify {}

impl AuditVerify {
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        let mut client = ctx.client().await?;
        let verified = client
            .verify_audit(VerifyAuditRequest {})
            .await
            .map_err(|s| ctx.rpc_failure(s))?
            .into_inner();
        if ctx.json {
            output::json(&verify_json(&verified))
        } else {
            output::data(&verify_text(&verified))
        }
    }
}

/// `audit verify --json`.
#[derive(Debug, Serialize)]
pub struct VerifyJson {
    pub ok: bool,
    pub entries: u64,
    pub anchored_seq: Option<u64>,
}

pub fn verify_json(verified: &VerifyAuditResponse) -> VerifyJson {
    VerifyJson {
        ok: true,
        entries: verified.entries,
        anchored_seq: Some(verified.anchored_seq).filter(|s| *s > 0),
    }
}

pub fn verify_text(verified: &VerifyAuditResponse) -> String {
    format!(
        "The audit log is intact: {} entries, chained, up to the head recorded in state.db.",
        verified.entries
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_show_as_a_table_with_their_details() {
        let entries = vec![
            json!({"seq": 1, "time": 0, "uid": 0, "kind": "user_added", "user": "alice",
                   "backend": "soft", "hardware_backed": false, "prev": "00", "hash": "ab"}),
            json!({"seq": 2, "time": 0, "uid": null, "kind": "signed", "user": "a\u{1b}[2J",
                   "prev": "ab", "hash": "cd"}),
        ];
        let text = show_text(&entries);
        assert!(text.contains("user_added"), "{text}");
        assert!(text.contains("backend=soft"), "{text}");
        assert!(text.contains("daemon"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(!text.contains("hash="), "{text}");
    }

    #[test]
    fn verify_reports_the_count() {
        let verified = VerifyAuditResponse {
            entries: 7,
            anchored_seq: 7,
        };
        assert_eq!(
            verify_text(&verified),
            "The audit log is intact: 7 entries, chained, up to the head recorded in state.db."
        );
        assert_eq!(
            serde_json::to_value(verify_json(&verified)).unwrap(),
            json!({"ok": true, "entries": 7, "anchored_seq": 7})
        );
    }
}
