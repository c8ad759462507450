//! `ocpp-sim`: simulated OCPP peers for tests, benchmarks and docker topologies.
//!
//! * `ocpp-sim charger`: N charging stations that boot, heartbeat, authorize and run transactions
//!   against a CSMS or an `ocpp-node` listener, then print a one-line JSON summary on stdout.
//! * `ocpp-sim csms`: a plain OCPP-J CSMS that accepts any charger, answers every CALL at once
//!   with the smallest valid response and counts what it saw. It prints
//!   `listening csms ws://HOST:PORT/PATH` when ready, and a one-line JSON summary on stdout on
//!   SIGTERM, SIGINT or `--duration` expiry. It can send CSMS-initiated calls (`--on-boot`).
//!
//! Frames are encoded and decoded with the `wire` crate, the same codec the node uses, so the
//! simulator exercises exactly what the node parses. Logs go to stderr (`RUST_LOG` filters them);
//! stdout carries only machine-readable lines: the `listening` line and the summary.

mod charger;
mod csms;
mod payloads;
mod session;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "ocpp-sim",
    version,
    about = "Simulated OCPP charging stations and peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate charging stations that connect, boot and run transactions.
    Charger(charger::Args),
    /// Simulate a CSMS that accepts any charger and answers every call at once.
    Csms(csms::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ocpp-sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Charger(args) => charger::run(args).await,
            Command::Csms(args) => csms::run(args).await,
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ocpp-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}
