//! `ocpp-sim`: simulated OCPP peers for tests, benchmarks and docker topologies.
//!
//! * `ocpp-sim charger`: N charging stations that boot, heartbeat, authorize and run transactions
//!   against a CSMS or an `ocpp-node` listener, then print a one-line JSON summary on stdout.
//! * `ocpp-sim csms`: a plain OCPP-J CSMS that accepts any charger, answers every CALL at once
//!   with the smallest valid response and counts what it saw. It prints
//!   `listening csms ws://HOST:PORT/PATH` when ready, and a one-line JSON summary on stdout on
//!   SIGTERM, SIGINT or `--duration` expiry. It can send CSMS-initiated calls (`--on-boot`).
//!
//! * `ocpp-sim load`: the benchmark load generator. N chargers (1.6 or 2.0.1) boot, then send
//!   Heartbeats in a closed loop (next CALL on each answer) or an open loop (a fixed total rate,
//!   latency from the scheduled send time), or stay connected idle (`ready <n>` on stdout). A
//!   closed or open run prints one JSON line: `{"mode","version","chargers","duration_s","sent",
//!   "answered","errors","msgs_per_s","latency_us":{"p50","p90","p99","max","mean"}}`.
//!   See [`load`].
//! * `ocpp-sim backend`: the plain backend of relay benchmarks: any charger at
//!   `/<anything>/<id>`, every CALL answered at once with the minimal valid response. Prints
//!   `listening backend ws://HOST:PORT/ocpp`, and `{"connections":n,"calls":n,"signed":n}` at exit.
//! * `ocpp-sim forward`: the bare forwarder relays are compared against: each WebSocket at
//!   `/<anything>/<id>` gets one upstream WebSocket to `<upstream>/<id>` with the same
//!   subprotocol, and frames are copied both ways unchanged. Prints
//!   `listening forward ws://HOST:PORT/ocpp`.
//! * `ocpp-sim site`: a closed-loop site for load-management tests: N chargers (1.6 or 2.0.1)
//!   each run one endless transaction whose EV draw follows the charging profiles set on it
//!   (ramped), and a Modbus TCP meter (SDM630 registers) reads a scripted base load plus that
//!   draw. Prints `listening meter HOST:PORT`, a JSON state line every 200 ms, and a
//!   `{"summary":{..}}` line at the end. See [`site`].
//!
//! At startup the soft open-file limit is raised to the hard limit, so that thousands of
//! simulated chargers fit.
//!
//! Frames are encoded and decoded with the `wire` crate, the same codec the node uses, so the
//! simulator exercises exactly what the node parses. Logs go to stderr (`RUST_LOG` filters them);
//! stdout carries only machine-readable lines: the `listening` line and the summary.

mod backend;
mod charger;
mod csms;
mod forward;
mod load;
mod nofile;
mod payloads;
mod session;
mod site;
mod ws;

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
    /// Generate benchmark load: N chargers sending Heartbeats, closed or open loop, or idle.
    Load(load::Args),
    /// A plain benchmark backend: any charger, every CALL answered at once, counted.
    Backend(backend::Args),
    /// A bare WebSocket forwarder: one upstream connection per charger, frames copied unchanged.
    Forward(forward::Args),
    /// A load-management site: profile-obeying chargers and a Modbus meter of their draw.
    Site(site::Args),
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
    nofile::raise();
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
            Command::Load(args) => load::run(args).await,
            Command::Backend(args) => backend::run(args).await,
            Command::Forward(args) => forward::run(args).await,
            Command::Site(args) => site::run(args).await,
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
