//! `ocpp-sim charger`: N simulated charging stations, each on its own connection.
//!
//! Each charger boots, sends heartbeats, reports its connector Available, authorizes its id tag
//! and runs K transactions with M meter values each, waiting for every answer. Any CALLERROR, a
//! rejected boot or id tag, or a lost connection fails that charger; the others carry on.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use wire::OcppVersion;

use crate::payloads::{v16, v201};
use crate::session::{Resilience, Session, Stats};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Base WebSocket URL; charger i connects to `<url>/<id-prefix><i>`.
    #[arg(long)]
    url: String,
    /// Number of chargers, numbered from 1.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// OCPP version: 1.6 or 2.0.1.
    #[arg(long, value_parser = parse_version, default_value = "1.6")]
    version: OcppVersion,
    #[arg(long, default_value = "SIM-")]
    id_prefix: String,
    /// Transactions per charger.
    #[arg(long, default_value_t = 1)]
    transactions: u32,
    /// Meter values per transaction (between start and stop).
    #[arg(long, default_value_t = 1)]
    meter_values: u32,
    /// Heartbeats per charger, sent after the boot.
    #[arg(long, default_value_t = 1)]
    heartbeats: u32,
    /// Basic-auth password (security profile 1/2); the user name is the charger id.
    #[arg(long)]
    password: Option<String>,
    /// The id tag (1.6) or ISO14443 id token (2.0.1) to authorize and charge with.
    #[arg(long, default_value = "TAG-OK")]
    id_tag: String,
    /// Seconds to wait for each answer (and for the connection).
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Seconds to stay connected after the script, answering CSMS-initiated calls.
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Milliseconds to pause before each CALL, so that a run spans a fault a test injects.
    #[arg(long, default_value_t = 0)]
    pace_ms: u64,
    /// After a lost connection, keep connecting again for this many seconds and resend the
    /// unanswered CALL (0: a lost connection fails the charger).
    #[arg(long, default_value_t = 0)]
    reconnect_for: u64,
}

pub fn parse_version(s: &str) -> Result<OcppVersion, String> {
    match s.trim_start_matches("ocpp") {
        "1.6" => Ok(OcppVersion::V16),
        "2.0.1" => Ok(OcppVersion::V201),
        _ => Err(format!(
            "unsupported OCPP version {s:?} (supported: 1.6, 2.0.1)"
        )),
    }
}

/// The outcome of one charger.
struct Outcome {
    id: String,
    stats: Stats,
    error: Option<anyhow::Error>,
}

/// Runs all chargers and prints the JSON summary line. Returns whether every charger succeeded.
pub async fn run(args: Args) -> Result<bool> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 1..=args.count {
        let args = args.clone();
        tasks.spawn(async move { run_one(&args, i).await });
    }
    let mut total = Stats::default();
    let (mut ok, mut failed) = (0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        let outcome = match joined {
            Ok(outcome) => outcome,
            Err(e) => Outcome {
                id: "?".into(),
                stats: Stats::default(),
                error: Some(anyhow::anyhow!("charger task panicked: {e}")),
            },
        };
        total.calls += outcome.stats.calls;
        total.errors += outcome.stats.errors;
        total.answered += outcome.stats.answered;
        total.reconnects += outcome.stats.reconnects;
        total.transaction_calls += outcome.stats.transaction_calls;
        total.max_wait_ms = total.max_wait_ms.max(outcome.stats.max_wait_ms);
        total.local_transaction_ids += outcome.stats.local_transaction_ids;
        match outcome.error {
            None => ok += 1,
            Some(e) => {
                failed += 1;
                tracing::error!(charger = %outcome.id, "failed: {e:#}");
            }
        }
    }
    let summary = json!({
        "chargers": args.count,
        "ok": ok,
        "failed": failed,
        "calls": total.calls,
        "errors": total.errors,
        "answered": total.answered,
        "reconnects": total.reconnects,
        "transaction_calls": total.transaction_calls,
        "max_wait_ms": total.max_wait_ms,
        "local_transaction_ids": total.local_transaction_ids,
        "elapsed_ms": started.elapsed().as_millis() as u64,
    });
    println!("{summary}");
    Ok(failed == 0)
}

async fn run_one(args: &Args, index: u32) -> Outcome {
    let id = format!("{}{index}", args.id_prefix);
    let url = format!("{}/{id}", args.url.trim_end_matches('/'));
    let timeout = Duration::from_secs(args.timeout);
    // With --reconnect-for the first connection is retried too: in a docker topology the
    // chargers may start before the node listens.
    let give_up = Instant::now() + Duration::from_secs(args.reconnect_for);
    let mut session = loop {
        match Session::connect(&url, &id, args.version, args.password.as_deref(), timeout).await {
            Ok(session) => break session,
            Err(_) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => {
                return Outcome {
                    id,
                    stats: Stats::default(),
                    error: Some(error),
                };
            }
        }
    };
    session.set_resilience(Resilience {
        pace: Duration::from_millis(args.pace_ms),
        reconnect_for: Duration::from_secs(args.reconnect_for),
    });
    let mut result = match args.version {
        OcppVersion::V16 => script_v16(&mut session, args, &id).await,
        _ => script_v201(&mut session, args, &id).await,
    };
    if result.is_ok() && args.hold > 0 {
        result = session.serve_for(Duration::from_secs(args.hold)).await;
    }
    let stats = session.stats;
    session.close().await;
    tracing::debug!(charger = %id, ?stats, "done");
    Outcome {
        id,
        stats,
        error: result.err(),
    }
}

/// `.field` of an answer as a string, for status checks.
fn field<'a>(answer: &'a Value, pointer: &str) -> &'a str {
    answer
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The version-specific payloads of the opening every script shares.
struct Opening {
    boot: Value,
    status: Value,
    authorize: Value,
    /// Where the Authorize answer keeps its status.
    auth_status: &'static str,
}

/// Boot (must be Accepted), heartbeats, StatusNotification and Authorize (must be Accepted), as a
/// real charger opens its session.
async fn greet(s: &mut Session, args: &Args, opening: Opening) -> Result<()> {
    let boot = s.call("BootNotification", &opening.boot).await?;
    if field(&boot, "/status") != "Accepted" {
        bail!("BootNotification not accepted: {boot}");
    }
    for _ in 0..args.heartbeats {
        s.call("Heartbeat", &json!({})).await?;
    }
    s.call("StatusNotification", &opening.status).await?;
    let auth = s.call("Authorize", &opening.authorize).await?;
    if field(&auth, opening.auth_status) != "Accepted" {
        bail!("id tag {} not accepted: {auth}", args.id_tag);
    }
    Ok(())
}

async fn script_v16(s: &mut Session, args: &Args, id: &str) -> Result<()> {
    let opening = Opening {
        boot: v16::boot_notification(id),
        status: v16::status_notification(1, "Available"),
        authorize: v16::authorize(&args.id_tag),
        auth_status: "/idTagInfo/status",
    };
    greet(s, args, opening).await?;
    let mut meter: i64 = 0;
    for _ in 0..args.transactions {
        let start = s
            .call(
                "StartTransaction",
                &v16::start_transaction(1, &args.id_tag, meter),
            )
            .await?;
        let Some(transaction_id) = start.get("transactionId").and_then(Value::as_i64) else {
            bail!("StartTransaction answer has no integer transactionId: {start}");
        };
        if transaction_id < 0 {
            s.stats.local_transaction_ids += 1;
        }
        for _ in 0..args.meter_values {
            meter += 1000;
            s.call("MeterValues", &v16::meter_values(1, transaction_id, meter))
                .await?;
        }
        meter += 500;
        s.call(
            "StopTransaction",
            &v16::stop_transaction(transaction_id, &args.id_tag, meter),
        )
        .await?;
    }
    Ok(())
}

async fn script_v201(s: &mut Session, args: &Args, id: &str) -> Result<()> {
    let opening = Opening {
        boot: v201::boot_notification(id),
        status: v201::status_notification(1, 1, "Available"),
        authorize: v201::authorize(&args.id_tag),
        auth_status: "/idTokenInfo/status",
    };
    greet(s, args, opening).await?;
    let mut meter: i64 = 0;
    for _ in 0..args.transactions {
        let transaction_id = uuid::Uuid::new_v4().to_string();
        // seqNo counts the events of one transaction from 0.
        let mut seq_no = 0;
        let mut event = |kind: &'static str, meter: i64| {
            let payload =
                v201::transaction_event(kind, &transaction_id, seq_no, &args.id_tag, meter);
            seq_no += 1;
            payload
        };
        s.call("TransactionEvent", &event("Started", meter)).await?;
        for _ in 0..args.meter_values {
            meter += 1000;
            s.call("TransactionEvent", &event("Updated", meter)).await?;
        }
        meter += 500;
        s.call("TransactionEvent", &event("Ended", meter)).await?;
    }
    Ok(())
}
