//! `ocpp-sim backend`: the plain backend of relay benchmarks. It accepts any charger at
//! `/<anything>/<id>`, echoes the highest offered subprotocol (ocpp1.6, ocpp2.0.1, ocpp2.1;
//! nothing offered is taken as 1.6), answers every CALL at once and counts them.
//!
//! It is the simulated CSMS ([`crate::csms`]) in its [`Flavor::Backend`] form: the per-frame path
//! is one decode, one table lookup, one relaxed increment of a per-connection counter and one
//! write, with no lock and no log line. Answers are the smallest valid ones: BootNotification
//! Accepted with `currentTime` and `interval`, Heartbeat `currentTime`, the schema's minimum for
//! the other charger-initiated actions, and `{}` for any action it does not know.
//!
//! Prints `listening backend ws://HOST:PORT/ocpp` when ready (any path works under it), and on
//! SIGTERM, SIGINT or `--duration` expiry one JSON line: `{"connections":n,"calls":n,"signed":n}`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use wire::OcppVersion;

use crate::csms::{self, Flavor, Options};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on; port 0 picks a free one (the `listening` line tells which).
    #[arg(long)]
    listen: SocketAddr,
    /// Print the summary and exit after SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = crate::ws::parse_secs)]
    duration: Option<Duration>,
}

pub async fn run(args: Args) -> Result<bool> {
    csms::serve(Options {
        flavor: Flavor::Backend,
        listen: args.listen,
        path: None,
        subprotocols: OcppVersion::ALL.to_vec(),
        refuse: Vec::new(),
        on_boot: Vec::new(),
        heartbeat_interval: 300,
        stats_every: None,
        duration: args.duration,
        by_charger: false,
    })
    .await
}
