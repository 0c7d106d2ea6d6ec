//! `device migrate` and `user reset-code`: replacing codes
//! ([`crate::migrate`]).

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use fleetkey_proto::EnrollmentPayload;
use fleetkey_proto::terminal::escape;
use fleetkey_proto::time::{now_unix, rfc3339};
use serde::Serialize;

use super::{
    DEFAULT_TTL_SECS, DbArg, MAX_TTL_SECS, aligned, human_issue, parse_user_name, pick_enrollment,
    print, print_json, store_with_url, table,
};
use crate::error::PortalError;
use crate::migrate::{self, DEFAULT_DEADLINE};
use crate::qr;
use crate::store::{CodeKind, Store};

pub const MIGRATE_ABOUT: &str = "Move a device's users to a new device.\n\n\
    Issues, in one transaction, a new single-use add-user code for every user with an active \
    credential on OLD_DEVICE, and prints them as JSON lines {\"user\", \"code\", \"uri\", \
    \"expires_at\"}: the batch file `fleetkeyctl user add-batch` reads on the new device (the \
    same shape as `code issue --batch`).\n\n\
    Each code replaces its user's old credential: when a new credential enrolls with it (on any \
    device), the portal revokes the old one in the same transaction. Until then the old \
    credential keeps working. At the deadline (--deadline: an RFC 3339 time, or a duration from \
    now such as 90s, 30m, 12h, 7d; default 7d) every old credential of the migration not \
    replaced yet is revoked: `serve` does it at the deadline (and at its start, for deadlines \
    that passed while it was stopped), and no login answer signed by an old key is accepted \
    after it. The codes expire at the deadline, or earlier with --ttl.\n\n\
    One migration per device is open at a time: while one is open, migrating the same device \
    again is refused, unless --reissue, which voids the open migration's unused codes (they \
    expire at once; users already moved stay moved) and issues new codes for every credential \
    still active on the old device, with the new deadline.\n\n\
    --status shows the device's newest migration user by user: pending (old credential still \
    active, code not used), replaced (moved: the new credential and its device), revoked (at \
    the deadline), voided (by --reissue), removed (the old credential was revoked otherwise, \
    e.g. `fleetkeyctl user remove` on the old device). With --json, one object: \
    {\"migration_id\", \"old_device_id\", \"created_at\", \"deadline\", \"state\" (open, \
    closed, voided), \"users\": [{\"user\", \"state\", \"old_credential_id\", \
    \"new_credential_id\", \"new_device_id\", \"at\"}]}. --status also revokes what is due, \
    as `serve` would.";

pub const RESET_CODE_ABOUT: &str = "Issue a reset code for a user: an add-user code that \
    replaces the user's active credential on a device.\n\n\
    On that device an admin runs `fleetkeyctl user reset NAME --code CODE`: the user gets a new \
    key and a new PIN under the same name (for a PIN that is locked or forgotten), and the \
    portal revokes the old credential in the same transaction that registers the new one. \
    fleetkeyd checks with the portal that the code replaces the user's own credential before it \
    makes a key, so any other code leaves the user as it was.\n\n\
    A user enrolled on several devices needs --device. Prints the QR code and the code, or with \
    --json one object: {\"code\", \"uri\", \"expires_at\", \"kind\", \"user\", \"device_id\", \
    \"replaces_credential_id\"}.";

#[derive(Debug, Args)]
pub struct DeviceMigrateArgs {
    /// The device whose users move (its id, as `device list` shows it).
    #[arg(value_name = "OLD_DEVICE")]
    pub device: String,
    #[command(flatten)]
    pub db: DbArg,
    /// When the old credentials not replaced by then are revoked: an RFC
    /// 3339 time, or a duration from now (90s, 30m, 12h, 7d, 1d12h).
    #[arg(long, value_name = "TIME|DURATION", conflicts_with = "status")]
    pub deadline: Option<String>,
    /// Seconds until the codes expire (default: at the deadline; never
    /// after it).
    #[arg(long, value_name = "SECONDS", conflicts_with = "status",
          value_parser = clap::value_parser!(i64).range(1..=MAX_TTL_SECS))]
    pub ttl: Option<i64>,
    /// Void the device's open migration (its unused codes expire now) and
    /// issue new codes for every credential still active on the device.
    #[arg(long, conflicts_with = "status")]
    pub reissue: bool,
    /// Portal URL to put in the URIs (default: the one `serve` recorded).
    #[arg(long, value_name = "URL", conflicts_with = "status")]
    pub portal_url: Option<String>,
    /// Show the device's newest migration, user by user, instead.
    #[arg(long)]
    pub status: bool,
    /// With --status: print one JSON object.
    #[arg(long, requires = "status")]
    pub json: bool,
}

pub fn device_migrate(args: DeviceMigrateArgs) -> Result<(), PortalError> {
    if args.status {
        return migrate_status(args);
    }
    let now = now_unix();
    let deadline_text = args.deadline.as_deref().unwrap_or(DEFAULT_DEADLINE);
    let deadline = migrate::parse_deadline(deadline_text, now)
        .map_err(|why| PortalError::Usage(format!("--deadline: {why}")))?;
    let expires_at = match args.ttl {
        None => deadline,
        Some(ttl) if now + ttl <= deadline => now + ttl,
        Some(ttl) => {
            return Err(PortalError::Usage(format!(
                "--ttl {ttl} would let the codes outlive the deadline {}; give a shorter --ttl or a later --deadline",
                rfc3339(deadline)
            )));
        }
    };
    let (mut store, portal_url) = store_with_url(&args.db, args.portal_url.as_ref())?;
    let started = store.immediate(|db| {
        migrate::start(db, &args.device, deadline, expires_at, args.reissue, now)
    })?;
    tracing::info!(
        migration = %started.migration.migration_id,
        device_id = %started.migration.old_device_id,
        users = started.codes.len(),
        "migration started"
    );
    let mut text = String::new();
    for (code, record) in &started.codes {
        let uri = EnrollmentPayload {
            code: code.clone(),
            portal_url: portal_url.clone(),
            user_hint: record.user.clone(),
            expires_at: Some(record.expires_at),
        }
        .to_uri();
        let line = crate::batch::BatchCode {
            user: record.user.clone().unwrap_or_default(),
            code: code.to_string(),
            uri,
            expires_at: rfc3339(record.expires_at),
        };
        text.push_str(&serde_json::to_string(&line)?);
        text.push('\n');
    }
    print(&text)?;
    if let Some((voided, count)) = &started.voided {
        eprintln!("Voided migration {voided}: its {count} unused codes expired now.");
    }
    eprintln!(
        "Migration {} of device {}: {} users. Each old credential is revoked when its user enrolls \
         with the new code, and those not moved by {} are revoked then. On the new device: \
         fleetkeyctl user add-batch --pins PINS FILE. Follow it with: fleetkey-portal device \
         migrate --status {}",
        started.migration.migration_id,
        escape(&started.migration.old_device_id),
        started.codes.len(),
        rfc3339(started.migration.deadline),
        escape(&started.migration.old_device_id),
    );
    Ok(())
}

fn migrate_status(args: DeviceMigrateArgs) -> Result<(), PortalError> {
    let mut store = Store::open_existing(&args.db.db)?;
    let now = now_unix();
    let status = store
        .immediate(|db| migrate::status(db, &args.device, now))?
        .ok_or_else(|| {
            PortalError::NotFound(format!(
                "device {} has never been migrated",
                escape(&args.device)
            ))
        })?;
    if args.json {
        return print_json(&status);
    }
    let mut text = aligned(&[
        ("Migration:", status.migration_id.clone()),
        ("Old device:", status.old_device_id.clone()),
        ("Started:", status.created_at.clone()),
        ("Deadline:", status.deadline.clone()),
        ("State:", status.state.clone()),
    ]);
    text.push('\n');
    let rows: Vec<Vec<String>> = status
        .users
        .iter()
        .map(|u| {
            vec![
                u.user.clone(),
                u.state.clone(),
                u.old_credential_id.clone(),
                u.new_device_id.clone().unwrap_or_else(|| "-".into()),
                u.new_credential_id.clone().unwrap_or_else(|| "-".into()),
                u.at.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    text.push_str(&table(
        &[
            "USER",
            "STATE",
            "OLD CREDENTIAL",
            "NEW DEVICE",
            "NEW CREDENTIAL",
            "AT",
        ],
        &rows,
    ));
    print(&text)
}

#[derive(Debug, Args)]
pub struct UserResetCodeArgs {
    #[command(flatten)]
    pub db: DbArg,
    /// The user whose credential the code replaces.
    #[arg(value_name = "NAME", value_parser = parse_user_name)]
    pub user: String,
    /// The device the user's credential is on (needed when on several).
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,
    /// Seconds until the code expires.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TTL_SECS,
          value_parser = clap::value_parser!(i64).range(1..=MAX_TTL_SECS))]
    pub ttl: i64,
    /// Print one JSON object instead of the QR code and text.
    #[arg(long)]
    pub json: bool,
    /// Also write the QR code as a PNG image.
    #[arg(long, value_name = "FILE")]
    pub qr_png: Option<PathBuf>,
    /// Portal URL to put in the URI (default: the one `serve` recorded).
    #[arg(long, value_name = "URL")]
    pub portal_url: Option<String>,
}

/// What `user reset-code --json` prints.
#[derive(Debug, Serialize)]
pub struct ResetCode {
    pub code: String,
    pub uri: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
    pub kind: CodeKind,
    pub user: String,
    pub device_id: String,
    pub replaces_credential_id: String,
}

pub fn user_reset_code(args: UserResetCodeArgs) -> Result<(), PortalError> {
    let (mut store, portal_url) = store_with_url(&args.db, args.portal_url.as_ref())?;
    let now = now_unix();
    let (enrollment, (code, record)) = store.immediate(|db| {
        // Picked and issued in one transaction: the credential cannot be
        // revoked in between.
        let enrollment = pick_enrollment(db, &args.user, args.device.as_deref())?;
        let issued = migrate::issue_replacing(
            db,
            &enrollment.user,
            &enrollment.credential_id,
            args.ttl,
            now,
        )?;
        Ok::<_, PortalError>((enrollment, issued))
    })?;
    tracing::info!(
        user = %escape(&enrollment.user),
        device_id = %enrollment.device_id,
        replaces = %enrollment.credential_id,
        "reset code issued"
    );
    let uri = EnrollmentPayload {
        code: code.clone(),
        portal_url,
        user_hint: record.user.clone(),
        expires_at: Some(record.expires_at),
    }
    .to_uri();
    if let Some(path) = &args.qr_png {
        std::fs::write(path, qr::png(&uri)?).map_err(|source| PortalError::WriteFile {
            path: path.clone(),
            source,
        })?;
        eprintln!("wrote the QR code to {}", path.display());
    }
    let result = ResetCode {
        code: code.to_string(),
        uri: uri.clone(),
        expires_at: rfc3339(record.expires_at),
        kind: CodeKind::User,
        user: enrollment.user.clone(),
        device_id: enrollment.device_id.clone(),
        replaces_credential_id: enrollment.credential_id.clone(),
    };
    if args.json {
        print_json(&result)?;
    } else {
        let ansi = std::io::stdout().is_terminal();
        let mut text = qr::terminal(&uri, ansi)?;
        text.push_str("\n\n");
        text.push_str(&human_issue(&code, &record, &uri, now));
        text.push_str(&aligned(&[
            ("Device:", result.device_id.clone()),
            ("Replaces:", result.replaces_credential_id.clone()),
        ]));
        print(&text)?;
    }
    eprintln!(
        "On device {}: fleetkeyctl user reset \"{}\" --code {} (the old credential is revoked when the new one enrolls)",
        escape(&result.device_id),
        escape(&result.user),
        result.code
    );
    Ok(())
}
