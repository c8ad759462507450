//! `ocpp-sim load`: the load generator of the benchmarks.
//!
//! Charger i (1..=N) connects to `<url>/<id-prefix><i>` offering `ocpp1.6` or `ocpp2.0.1`, sends
//! BootNotification and waits for it to be Accepted; at most `--connect-concurrency` chargers
//! connect and boot at once. When all have booted (or failed), the run starts for all of them at
//! the same instant: `--warmup` seconds that are not measured, then the measured window of
//! `--duration` seconds, in which every charger sends Heartbeat CALLs:
//!
//! * `closed`: each charger sends its next Heartbeat as soon as the previous answer arrives.
//!   Latency is from the send to the answer.
//! * `open`: a fixed schedule of `--rate` CALLs per second in total, spread over the chargers
//!   round-robin (send k is due at `start + k / rate`, on charger `k mod N`). OCPP-J allows one
//!   outstanding CALL per direction, so a charger whose previous CALL is still unanswered queues
//!   its due sends and sends the next one when the answer arrives. Latency is measured from the
//!   **scheduled** send time, so queueing behind a slow answer counts (no coordinated omission).
//!   Sends are woken by one pacer thread that sleeps with the OS's precision, not tokio's 1 ms
//!   timer wheel (see [`pace`]). The generator's own lag (from the scheduled time to the send of
//!   a CALL nothing held up: pacer and task wake-up, typically tens of µs) is included in the
//!   latencies and logged on stderr (`RUST_LOG=info`; a warning when it averages over 1 ms).
//! * `idle`: connect and boot all chargers, print `ready <n>` (n = chargers booted), then stay
//!   connected without traffic until `--duration` elapses, or SIGTERM or SIGINT.
//!
//! At the end of a `closed` or `open` run, one JSON line goes to stdout:
//! `{"mode","version","chargers","duration_s","sent","answered","errors","msgs_per_s",
//! "latency_us":{"p50","p90","p99","max","mean"}}`. `sent` counts the CALLs sent in the measured
//! window (in `open` mode, those scheduled in it and sent before its end); `answered` those of
//! them whose CALLRESULT arrived before the window's end; `errors` those answered with a
//! CALLERROR or unanswered after `--timeout`, plus each charger that failed to connect or boot or
//! lost its connection. So `sent - answered - errors` is what was in flight at the stop (at most
//! one per charger). `msgs_per_s` is `answered / duration_s`; the latencies are those of the
//! answered CALLs, in microseconds, from HDR histograms (3 significant digits).
//!
//! The generator must not be the bottleneck: one task per charger, frames formatted directly
//! into their buffer, answers decoded without building a JSON tree, no timer per CALL, and no
//! lock or shared counter on the per-CALL path. Each charger records into its own histogram
//! (created at its first measured answer, about 16 KiB), and the histograms are merged at the end.
//! Only `ws://` URLs are supported.

mod conn;

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::task::AtomicWaker;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use wire::{Limits, OcppVersion};

use crate::charger::parse_version;
use crate::ws::parse_secs;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Base `ws://` URL; charger i connects to `<url>/<id-prefix><i>`, i = 1..=N.
    #[arg(long)]
    url: String,
    /// Number of chargers (N).
    #[arg(long)]
    chargers: u32,
    /// OCPP version: 1.6 or 2.0.1.
    #[arg(long, value_parser = parse_version, default_value = "1.6")]
    version: OcppVersion,
    /// closed: next CALL when the answer arrives; open: a fixed total rate; idle: connect only.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Open mode: CALLs per second, in total across all chargers.
    #[arg(long, value_name = "MSGS_PER_S")]
    rate: Option<f64>,
    /// Seconds measured (closed, open; default 10), or seconds to stay connected (idle; default:
    /// until SIGTERM or SIGINT).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<Duration>,
    /// Seconds of traffic before the measured window, not measured.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "1")]
    warmup: Duration,
    #[arg(long, default_value = "LOAD-")]
    id_prefix: String,
    /// Chargers connecting and booting at the same time.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: u32,
    /// Seconds to wait for a connection, a boot, or any answer.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "10")]
    timeout: Duration,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Closed,
    Open,
    Idle,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Open => "open",
            Mode::Idle => "idle",
        }
    }
}

/// When the run starts, when measuring starts (after the warmup), and when it ends. Idle
/// chargers get a plan only when they are to disconnect, with `end` already past.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// What every charger task reads.
pub struct Ctx {
    base_url: String,
    prefix: String,
    version: OcppVersion,
    mode: Mode,
    chargers: u32,
    /// Open mode: the total rate.
    rate: f64,
    timeout: Duration,
    limits: Limits,
    ws_config: tokio_tungstenite::tungstenite::protocol::WebSocketConfig,
    connect_gate: Semaphore,
    /// Open mode: one per charger, woken by the pacer when a send of that charger is due.
    wakers: Box<[AtomicWaker]>,
}

/// One charger's counts and latencies.
#[derive(Default)]
pub struct Tally {
    sent: u64,
    answered: u64,
    errors: u64,
    /// Whether the charger failed to connect or boot, or lost its connection.
    failed: bool,
    histogram: Option<Histogram<u32>>,
    /// Open mode: how late the measured CALLs that no earlier CALL held up were sent after their
    /// scheduled time: the generator's own lag (pacer and task wake-up), which the latencies
    /// include.
    lag: Lag,
}

/// Count, sum and maximum of the generator's send lag.
#[derive(Default, Clone, Copy)]
struct Lag {
    count: u32,
    sum: Duration,
    max: Duration,
}

impl Lag {
    fn add(&mut self, lag: Duration) {
        self.count += 1;
        self.sum += lag;
        self.max = self.max.max(lag);
    }

    fn merge(&mut self, other: Lag) {
        self.count += other.count;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }
}

impl Tally {
    fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let histogram = self.histogram.get_or_insert_with(new_histogram);
        // `record` grows the histogram as needed (`saturating_record` would clamp to its current
        // range); it fails only for values no histogram can hold.
        if histogram.record(micros).is_err() {
            histogram.saturating_record(micros);
        }
    }
}

/// An auto-resizing histogram with 3 significant digits, starting small (values up to 2 µs).
fn new_histogram<T: hdrhistogram::Counter>() -> Histogram<T> {
    match Histogram::new(3) {
        Ok(histogram) => histogram,
        Err(e) => unreachable!("3 significant digits are valid: {e:?}"),
    }
}

/// Adds a charger's histogram to the total. Each bucket's count is recorded at the bucket's
/// highest equivalent value, which falls in the same bucket of the total (same precision).
fn merge(total: &mut Histogram<u64>, one: &Histogram<u32>) {
    for bucket in one.iter_recorded() {
        let (value, count) = (bucket.value_iterated_to(), bucket.count_at_value());
        if total.record_n(value, u64::from(count)).is_err() {
            total.saturating_record_n(value, u64::from(count));
        }
    }
}

/// The offset of send k from the start of an open-loop run. The pacer and the chargers both
/// compute due times with this one function, so they agree to the nanosecond.
fn offset(k: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(k as f64 / rate)
}

pub async fn run(args: Args) -> Result<bool> {
    if args.chargers == 0 {
        bail!("--chargers must be at least 1");
    }
    if args.connect_concurrency == 0 {
        bail!("--connect-concurrency must be at least 1");
    }
    let rate = match (args.mode, args.rate) {
        (Mode::Open, Some(rate)) if rate.is_finite() && rate > 0.0 => rate,
        (Mode::Open, _) => bail!("--mode open needs --rate MSGS_PER_S > 0"),
        (_, Some(_)) => bail!("--rate applies to --mode open only"),
        (_, None) => 0.0,
    };
    let measured = match args.mode {
        Mode::Idle => None,
        _ => Some(args.duration.unwrap_or(Duration::from_secs(10))),
    };
    if measured.is_some_and(|d| d.is_zero()) {
        bail!("--duration must be more than 0");
    }
    let n = args.chargers;
    let paced = if args.mode == Mode::Open { n } else { 0 };
    let limits = Limits::default();
    let ctx = Arc::new(Ctx {
        base_url: args.url.trim_end_matches('/').to_owned(),
        prefix: args.id_prefix.clone(),
        version: args.version,
        mode: args.mode,
        chargers: n,
        rate,
        timeout: args.timeout,
        limits,
        ws_config: crate::ws::config(limits.max_frame_bytes),
        connect_gate: Semaphore::new(args.connect_concurrency as usize),
        wakers: (0..paced).map(|_| AtomicWaker::new()).collect(),
    });
    // Idle mode stops on a signal; the handlers go in before `ready` is printed. The measured
    // modes keep the default actions: a signal ends them without a summary.
    let shutdown = match measured {
        None => Some(crate::csms::shutdown_signal(args.duration)?),
        Some(_) => None,
    };

    let connecting = Instant::now();
    let (plan_tx, plan_rx) = watch::channel(None::<Plan>);
    let (booted_tx, mut booted_rx) = mpsc::unbounded_channel::<bool>();
    let mut tasks = Vec::with_capacity(n as usize);
    for index in 0..n {
        let task = conn::run(Arc::clone(&ctx), index, plan_rx.clone(), booted_tx.clone());
        tasks.push(tokio::spawn(task));
    }
    drop(booted_tx);
    let mut booted = 0u32;
    while let Some(ok) = booted_rx.recv().await {
        booted += u32::from(ok);
    }
    tracing::info!(
        booted,
        failed = n - booted,
        elapsed_ms = connecting.elapsed().as_millis() as u64,
        "chargers connected and booted"
    );

    let plan = match measured {
        None => {
            println!("ready {booted}");
            std::io::stdout().flush()?;
            if let Some(shutdown) = shutdown {
                shutdown.await;
            }
            let now = Instant::now();
            Plan {
                start: now,
                measure_from: now,
                end: now,
            }
        }
        Some(duration) => {
            // A little head room, so every charger is waiting when the start comes.
            let start =
                Instant::now() + Duration::from_millis(20) + Duration::from_micros(u64::from(n));
            let measure_from = start + args.warmup;
            Plan {
                start,
                measure_from,
                end: measure_from + duration,
            }
        }
    };
    let _ = plan_tx.send(Some(plan));
    let pacer = (args.mode == Mode::Open).then(|| {
        let ctx = Arc::clone(&ctx);
        std::thread::spawn(move || pace(&ctx, plan))
    });

    let mut total = Tally::default();
    let mut merged = new_histogram::<u64>();
    let mut failed = 0u32;
    for task in tasks {
        let tally = match task.await {
            Ok(tally) => tally,
            Err(e) => {
                tracing::error!("charger task panicked: {e}");
                Tally {
                    errors: 1,
                    failed: true,
                    ..Tally::default()
                }
            }
        };
        total.sent += tally.sent;
        total.answered += tally.answered;
        total.errors += tally.errors;
        total.lag.merge(tally.lag);
        failed += u32::from(tally.failed);
        if let Some(histogram) = &tally.histogram {
            merge(&mut merged, histogram);
        }
    }
    if pacer.is_some_and(|pacer| pacer.join().is_err()) {
        tracing::error!("the pacer thread panicked");
    }
    if total.lag.count > 0 {
        let mean = total.lag.sum / total.lag.count;
        let (mean_us, max_us) = (mean.as_micros() as u64, total.lag.max.as_micros() as u64);
        if mean > Duration::from_millis(1) {
            tracing::warn!(
                mean_us,
                max_us,
                "the generator sent late: it may be the bottleneck, and the latencies include its lag"
            );
        } else {
            tracing::info!(mean_us, max_us, "generator send lag behind the schedule");
        }
    }
    if let Some(duration) = measured {
        let secs = duration.as_secs_f64();
        let round1 = |x: f64| (x * 10.0).round() / 10.0;
        let summary = json!({
            "mode": args.mode.name(),
            "version": args.version.subprotocol().trim_start_matches("ocpp"),
            "chargers": n,
            "duration_s": secs,
            "sent": total.sent,
            "answered": total.answered,
            "errors": total.errors,
            "msgs_per_s": round1(total.answered as f64 / secs),
            "latency_us": {
                "p50": merged.value_at_quantile(0.50),
                "p90": merged.value_at_quantile(0.90),
                "p99": merged.value_at_quantile(0.99),
                "max": merged.max(),
                "mean": round1(merged.mean()),
            },
        });
        println!("{summary}");
        std::io::stdout().flush()?;
    }
    if failed > 0 {
        tracing::error!(
            failed,
            "chargers failed to connect or boot, or lost their connection"
        );
    }
    Ok(failed == 0)
}

/// The open-loop pacer, on its own thread: wakes charger `k mod N` when send k is due.
///
/// tokio's timers round up to the next millisecond, so the pacer sleeps with
/// `std::thread::sleep` instead, with the thread's timer slack at its minimum. Even so a sleep
/// overshoots by some tens of microseconds (more in a VM); the pacer learns by how much and
/// wakes that much early, then spins for the few microseconds left. When the next send is due
/// sooner than that overshoot it just sleeps, and the sends that fell due meanwhile are woken
/// together: a high rate costs no spinning.
fn pace(ctx: &Ctx, plan: Plan) {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    const MAX_EARLY: Duration = Duration::from_micros(200);
    let n = u64::from(ctx.chargers);
    let start = plan.start.into_std();
    let end = plan.end.into_std();
    // The expected overshoot of a sleep, a moving average.
    let mut early = Duration::from_micros(50);
    let mut k: u64 = 0;
    loop {
        let due = start + offset(k, ctx.rate);
        if due >= end {
            return;
        }
        let now = std::time::Instant::now();
        if due > now {
            let gap = due - now;
            if gap > early {
                let target = due - early;
                std::thread::sleep(target - now);
                let overshoot = std::time::Instant::now().saturating_duration_since(target);
                early = ((early * 7 + overshoot) / 8).min(MAX_EARLY);
                while std::time::Instant::now() < due {
                    std::hint::spin_loop();
                }
            } else {
                std::thread::sleep(gap);
            }
        }
        // `k % n < n`, which is the length of `wakers`.
        ctx.wakers[(k % n) as usize].wake();
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_keep_outliers_and_merge_exactly() {
        let mut a = Tally::default();
        for micros in [50, 60, 70, 80] {
            a.record(Duration::from_micros(micros));
        }
        let mut b = Tally::default();
        b.record(Duration::from_micros(90));
        // Far beyond the range a new histogram starts with: it must grow, not clamp.
        b.record(Duration::from_secs(5));
        let mut total = new_histogram::<u64>();
        for tally in [&a, &b] {
            merge(&mut total, tally.histogram.as_ref().unwrap());
        }
        assert_eq!(total.len(), 6);
        assert_eq!(total.value_at_quantile(0.5), 70);
        assert!(total.equivalent(total.max(), 5_000_000), "{}", total.max());
        assert_eq!(total.min(), 50);
    }

    #[test]
    fn open_loop_offsets_follow_the_rate() {
        assert_eq!(offset(0, 200.0), Duration::ZERO);
        assert_eq!(offset(1, 200.0), Duration::from_millis(5));
        assert_eq!(offset(400, 200.0), Duration::from_secs(2));
    }
}
