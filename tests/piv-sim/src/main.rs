//! `fleetkey-piv-sim`: a simulated PIV card (NIST SP 800-73-4) that plugs
//! into the real PC/SC stack through pcscd's virtual reader driver, vpcd
//! (Debian's `vsmartcard-vpcd`).
//!
//! The card connects to vpcd on TCP (default 127.0.0.1:35963, the first
//! slot of Debian's `/etc/reader.conf.d/vpcd`; the next slot is 35964).
//! Starting the process inserts the card; stopping it removes the card.
//! State (PIN, PUK, retry counters, management key, keys, data objects) is
//! kept in a JSON file per card, so a card keeps its keys across "removal".
//!
//! It is a test fixture, but it answers as a PIV card does, so that
//! OpenSC's `piv` driver accepts it, plus the YubiKey extensions fleetkey
//! uses where present (version, serial, PIN metadata, attestation).

mod card;
mod vpcd;
mod x509;

use std::path::PathBuf;

use clap::Parser;

/// A simulated PIV card on pcscd's vpcd virtual reader.
#[derive(Debug, Parser)]
#[command(name = "fleetkey-piv-sim", version)]
struct Args {
    /// The card's state file (created with a new card identity if missing)
    #[arg(long, value_name = "FILE")]
    state: PathBuf,
    /// vpcd's host
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// vpcd's port: 35963 for the first virtual reader, 35964 for the next
    #[arg(long, default_value_t = 35963)]
    port: u16,
    /// Serial number of a new card (default: random)
    #[arg(long)]
    serial: Option<u32>,
    /// A new card gets an attestation key (slot F9) certified by this
    /// simulated manufacturer CA (a file, created if missing; its
    /// certificate is also written as FILE.pem, for a portal to trust).
    /// Without it the card cannot attest.
    #[arg(long, value_name = "FILE")]
    attestation_ca: Option<PathBuf>,
    /// Test hook: drop off the reader (as a pulled card) on the first
    /// signature request, without answering it
    #[arg(long)]
    pull_on_sign: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let card = match card::Card::load_or_create(
        &args.state,
        args.serial,
        args.attestation_ca.as_deref(),
    ) {
        Ok(card) => card,
        Err(e) => {
            eprintln!("fleetkey-piv-sim: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut card = card.with_pull_on_sign(args.pull_on_sign);
    match vpcd::run(&args.host, args.port, &mut card) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetkey-piv-sim: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
