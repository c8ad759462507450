//! `ocpp-sim site`: a closed-loop site for load-management tests: N chargers with EVs that obey
//! charging profiles, and the site's grid meter (Modbus TCP, SDM630 layout) that measures a
//! scripted base load plus whatever the chargers draw.
//!
//! A load manager under test reads the meter, sets profiles on the chargers through the CSMS or
//! node, and the meter then shows the effect, ramped as a real EV would follow.
//!
//! Stdout: `listening meter HOST:PORT` once the meter is up, then every 200 ms one JSON line
//! `{"t","base_a","total_a":[l1,l2,l3],"chargers":{"<id>":{"limit_a","draw_a","profiles",
//! "profile_changes"}}}`, and at the end (`--duration-s`, SIGTERM or SIGINT) one line
//! `{"summary":{"t","base_a","total_a","energy_kwh","meter_requests","meter_up","chargers":{..}}}`
//! whose chargers also carry `charging`, `connected`, `reconnects` and `energy_wh`.
//!
//! Modules: [`limit`] (profiles, limit, ramp; pure), [`state`] (the shared site), [`meter`]
//! (Modbus server and register image), [`ev`] (one charger's OCPP session), [`samples`]
//! (meter-value payloads).

mod ev;
mod limit;
mod meter;
mod samples;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::{Instant, MissedTickBehavior};
use wire::OcppVersion;

use crate::charger::parse_version;
use crate::ws::parse_secs;
use state::{BaseScript, Physics, Site};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Number of chargers (0: meter only).
    #[arg(long, default_value_t = 1)]
    chargers: u32,
    /// Base WebSocket URL; charger n connects to `<url>/<prefix><nn>` (nn from 01).
    #[arg(long)]
    url: Option<String>,
    #[arg(long, default_value = "SIM")]
    prefix: String,
    /// OCPP version: 1.6 or 2.0.1.
    #[arg(long, value_parser = parse_version, default_value = "1.6")]
    version: OcppVersion,
    /// Phases each EV draws on (1 to 3, from L1).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=3))]
    phases: u32,
    /// The EV's maximum current per phase, in A (also the limit without any profile).
    #[arg(long, default_value_t = 16.0)]
    max_a: f64,
    /// How fast the draw rises toward the limit, A/s; it falls at twice this (0: at once).
    #[arg(long, default_value_t = 8.0)]
    ramp_a_per_s: f64,
    /// Milliseconds after start before the chargers connect.
    #[arg(long, default_value_t = 0)]
    start_after_ms: u64,
    /// Seconds between a charger's meter values.
    #[arg(long, value_parser = parse_secs, default_value = "5")]
    meter_interval_s: Duration,
    /// The id tag (1.6) or ISO14443 id token (2.0.1) to charge with.
    #[arg(long, default_value = "TAG-OK")]
    id_tag: String,
    /// Where the Modbus TCP meter listens (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    meter_bind: SocketAddr,
    /// Base load per phase: `SECONDS:AMPS,...` steps from process start.
    #[arg(long, value_parser = BaseScript::parse, default_value = "0:0")]
    base: BaseScript,
    /// Stop answering as a meter (close listener and connections) this many seconds after start.
    #[arg(long, value_parser = parse_secs)]
    meter_stop_after_s: Option<Duration>,
    /// End the run after this many seconds (default: until SIGTERM or SIGINT).
    #[arg(long, value_parser = parse_secs)]
    duration_s: Option<Duration>,
}

/// How often the state line is printed.
const REPORT_EVERY: Duration = Duration::from_millis(200);

pub async fn run(args: Args) -> Result<bool> {
    if !(args.max_a.is_finite() && args.max_a > 0.0) {
        bail!("--max-a must be a positive number of amps");
    }
    if !(args.ramp_a_per_s.is_finite() && args.ramp_a_per_s >= 0.0) {
        bail!("--ramp-a-per-s must be a non-negative number");
    }
    if args.meter_interval_s.is_zero() {
        bail!("--meter-interval-s must be positive");
    }
    let url = match (&args.url, args.chargers) {
        (_, 0) => String::new(),
        (Some(url), _) => url.clone(),
        (None, _) => bail!("--url is required with --chargers above 0"),
    };
    let started = Instant::now();
    let width = args.chargers.to_string().len().max(2);
    let ids: Vec<String> = (1..=args.chargers)
        .map(|n| format!("{}{n:0width$}", args.prefix))
        .collect();
    let physics = Physics {
        phases: args.phases,
        max_a: args.max_a,
        ramp_a_per_s: args.ramp_a_per_s,
    };
    let site = Arc::new(Site::new(
        started.into_std(),
        args.base.clone(),
        physics,
        ids.clone(),
    ));
    let shutdown = crate::csms::shutdown_signal(args.duration_s)?;

    let listener = meter::bind(args.meter_bind).await?;
    println!("listening meter {}", listener.local_addr()?);
    let meter_up = Arc::new(AtomicBool::new(true));
    let stop_at = args.meter_stop_after_s.map(|d| started + d);
    let up = Arc::clone(&meter_up);
    tokio::spawn(meter::serve(listener, Arc::clone(&site), async move {
        match stop_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
        up.store(false, Ordering::Relaxed);
    }));

    for (index, id) in ids.into_iter().enumerate() {
        let cfg = ev::EvConfig {
            index,
            id,
            url: url.clone(),
            version: args.version,
            id_tag: args.id_tag.clone(),
            meter_interval: args.meter_interval_s,
            start_at: started + Duration::from_millis(args.start_after_ms),
        };
        tokio::spawn(ev::run(Arc::clone(&site), cfg));
    }

    let mut ticks = tokio::time::interval(REPORT_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticks.tick() => println!("{}", site.report()),
        }
    }
    println!("{}", site.summary(meter_up.load(Ordering::Relaxed)));
    Ok(true)
}
