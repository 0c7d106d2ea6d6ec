//! One file per subcommand, each a clap `Args` struct with a `run` method
//! and pure functions shaping its output (tested without a daemon).

pub mod activate;
pub mod approvals;
pub mod approve;
pub mod audit;
pub mod camera;
pub mod card;
pub mod deactivate;
pub mod deny;
pub mod doctor;
pub mod integrity;
pub mod qr;
pub mod sign;
pub mod status;
pub mod tpm;
pub mod user;
pub mod user_add;
pub mod user_add_batch;
pub mod user_add_batch_input;
pub mod user_add_check;
pub mod user_list;
pub mod user_pin_change;
pub mod user_pin_unblock;
pub mod user_remove;
pub mod user_reset;
pub mod user_show;

use std::path::PathBuf;

use fleetkey_proto::Failure;

use crate::connection::{self, Client};

/// What every subcommand gets: where the daemon is and how to print.
#[derive(Debug, Clone)]
pub struct Context {
    pub socket: PathBuf,
    pub json: bool,
}

impl Context {
    /// Connects to the daemon (DAEMON_UNREACHABLE when it is not there).
    pub async fn client(&self) -> Result<Client, Failure> {
        connection::connect(&self.socket).await
    }

    /// The failure carried by an RPC's status.
    pub fn rpc_failure(&self, status: tonic::Status) -> Failure {
        connection::rpc_failure(&self.socket, &status)
    }
}

/// fleetkeyctl's commands.
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    Status(status::Status),
    Activate(activate::Activate),
    /// Enroll, list, show and remove users; change a user's PIN
    #[command(subcommand)]
    User(user::UserCommand),
    Sign(sign::Sign),
    /// Smartcard readers and cards
    #[command(subcommand)]
    Card(card::CardCommand),
    /// List the cameras fleetkeyd can scan QR codes with
    #[command(subcommand)]
    Camera(camera::CameraCommand),
    /// Decode QR codes in images, offline
    #[command(subcommand)]
    Qr(qr::QrCommand),
    Doctor(doctor::Doctor),
    /// Login challenges from the portal: list, watch
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
    Approve(approve::Approve),
    Deny(deny::Deny),
    /// Show and verify the audit log (admins only)
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    Deactivate(deactivate::Deactivate),
    /// The TPM's dictionary-attack parameters (administrators)
    #[command(subcommand)]
    Tpm(tpm::TpmCommand),
    Integrity(integrity::Integrity),
}

impl Subcommand {
    /// Runs the command against the daemon.
    pub async fn run(&self, ctx: &Context) -> Result<(), Failure> {
        match self {
            Subcommand::Status(cmd) => cmd.run(ctx).await,
            Subcommand::Activate(cmd) => cmd.run(ctx).await,
            Subcommand::User(cmd) => cmd.run(ctx).await,
            Subcommand::Sign(cmd) => cmd.run(ctx).await,
            Subcommand::Card(cmd) => cmd.run(ctx).await,
            Subcommand::Camera(cmd) => cmd.run(ctx).await,
            Subcommand::Tpm(cmd) => cmd.run(ctx).await,
            // Offline; lib.rs runs it before any runtime is made.
            Subcommand::Qr(_) => Ok(()),
            // Prints its own report; lib.rs runs it.
            Subcommand::Doctor(_) => Ok(()),
            Subcommand::Approvals(cmd) => cmd.run(ctx).await,
            Subcommand::Approve(cmd) => cmd.run(ctx).await,
            Subcommand::Deny(cmd) => cmd.run(ctx).await,
            Subcommand::Audit(cmd) => cmd.run(ctx).await,
            Subcommand::Deactivate(cmd) => cmd.run(ctx).await,
            Subcommand::Integrity(cmd) => cmd.run(ctx).await,
        }
    }

    /// The top-level command name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Subcommand::Status(_) => "status",
            Subcommand::Activate(_) => "activate",
            Subcommand::User(_) => "user",
            Subcommand::Sign(_) => "sign",
            Subcommand::Card(_) => "card",
            Subcommand::Camera(_) => "camera",
            Subcommand::Qr(_) => "qr",
            Subcommand::Doctor(_) => "doctor",
            Subcommand::Approvals(_) => "approvals",
            Subcommand::Approve(_) => "approve",
            Subcommand::Deny(_) => "deny",
            Subcommand::Audit(_) => "audit",
            Subcommand::Deactivate(_) => "deactivate",
            Subcommand::Tpm(_) => "tpm",
            Subcommand::Integrity(_) => "integrity",
        }
    }

    /// A usage error clap's declarations cannot catch, if any.
    pub fn usage_problem(&self) -> Option<String> {
        match self {
            Subcommand::Sign(cmd) => cmd.usage_problem(),
            Subcommand::Approve(cmd) => cmd.usage_problem(),
            Subcommand::Integrity(cmd) => cmd.usage_problem(),
            _ => None,
        }
    }
}
