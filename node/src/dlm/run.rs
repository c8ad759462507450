//! The DLM loop: the async driver of the [`Controller`]. Every cycle it reads the grid meter,
//! takes in what the observing stage learnt, lets the controller decide, and sends the
//! profiles through the node's own CALL API, one in flight per charger. It decides nothing
//! itself; a failed meter read simply leaves the last reading to age until the controller
//! calls it stale.

use std::sync::Arc;
use std::time::{Duration, Instant};

use modbus_tunnel::gateway::Device;
use modbus_tunnel::map::{Map, Plausibility};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::{mpsc, oneshot};

use super::control::{Command, Controller, Mode, SiteEvent};
use super::profile::{self, ProfileSpec};
use crate::config::DlmConfig;
use crate::core::bus::Event;
use crate::core::node::Node;
use crate::core::published::Published;
use crate::engine::{CallOutcome, NodeCall, Target};

/// How long a charger has to answer a SetChargingProfile.
const PROFILE_TIMEOUT: Duration = Duration::from_secs(10);
/// Site events the stage may queue between two cycles.
pub const EVENT_QUEUE: usize = 8192;

pub struct DlmMetrics {
    meter_a: IntGaugeVec,
    allocated_a: IntGaugeVec,
    available_a: IntGaugeVec,
    failsafe: IntGauge,
    profiles: IntCounterVec,
    meter_errors: IntCounterVec,
    pub events_dropped: IntCounter,
}

impl DlmMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let phase_gauge = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["phase"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let meter_a = phase_gauge(
            "ocpp_dlm_meter_deciamps",
            "Grid meter current per phase, in 0.1 A",
        )?;
        let allocated_a = phase_gauge(
            "ocpp_dlm_allocated_deciamps",
            "Current allocated to chargers per phase, in 0.1 A",
        )?;
        let available_a = phase_gauge(
            "ocpp_dlm_available_deciamps",
            "Grid capacity left for chargers per phase, in 0.1 A",
        )?;
        let failsafe = IntGauge::new(
            "ocpp_dlm_failsafe",
            "1 while the grid meter is stale and every charger is on the safe limit",
        )?;
        registry.register(Box::new(failsafe.clone()))?;
        let profiles = IntCounterVec::new(
            Opts::new(
                "ocpp_dlm_profiles_total",
                "Charging profiles load management sent, by result",
            ),
            &["result"],
        )?;
        registry.register(Box::new(profiles.clone()))?;
        let meter_errors = IntCounterVec::new(
            Opts::new(
                "ocpp_dlm_meter_errors_total",
                "Grid meter reads that failed or were implausible, by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(meter_errors.clone()))?;
        let events_dropped = IntCounter::new(
            "ocpp_dlm_events_dropped_total",
            "Site events the DLM loop had no room for",
        )?;
        registry.register(Box::new(events_dropped.clone()))?;
        Ok(DlmMetrics {
            meter_a,
            allocated_a,
            available_a,
            failsafe,
            profiles,
            meter_errors,
            events_dropped,
        })
    }

    fn phases(g: &IntGaugeVec, a: &[f64; 3]) {
        for (name, v) in ["L1", "L2", "L3"].iter().zip(a) {
            g.with_label_values(&[*name]).set((v * 10.0).round() as i64);
        }
    }
}

/// The grid meter as the loop reads it.
pub struct GridMeter {
    pub device: Arc<Device>,
    pub unit: u8,
    pub map: Map,
}

pub async fn run(
    node: Arc<Node>,
    config: DlmConfig,
    meter: GridMeter,
    mut events: mpsc::Receiver<SiteEvent>,
    status: Arc<Published>,
    metrics: Arc<DlmMetrics>,
) {
    let mut ctl = Controller::new(&config);
    let spec = ProfileSpec {
        purpose_v16: &config.profile_v16,
        purpose_v2: &config.profile_v2,
        stack_level: config.stack_level,
    };
    let (done_tx, mut done) = mpsc::unbounded_channel::<(String, f64, bool)>();
    let mut plausible = Plausibility::new();
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(config.cycle_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match read(&meter, &mut plausible).await {
            Ok(amps) => {
                ctl.reading(Instant::now(), amps);
                DlmMetrics::phases(&metrics.meter_a, &amps);
                if last_error.take().is_some() {
                    tracing::info!("grid meter readings are good again");
                }
            }
            Err((kind, message)) => {
                metrics.meter_errors.with_label_values(&[kind]).inc();
                // Once per distinct problem, not once a second.
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(kind, "grid meter: {message}; reading not used");
                    last_error = Some(message);
                }
            }
        }
        while let Ok(e) = events.try_recv() {
            ctl.event(e);
        }
        let now = Instant::now();
        while let Ok((id, limit, ok)) = done.try_recv() {
            metrics
                .profiles
                .with_label_values(&[if ok { "accepted" } else { "failed" }])
                .inc();
            ctl.done(now, &id, limit, ok);
        }
        let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for Command { id, limit_a } in ctl.cycle(now) {
            let Some(version) = node.sessions.get(&id).map(|s| s.version) else {
                ctl.done(now, &id, limit_a, false);
                continue;
            };
            let call = NodeCall {
                target: Target::Id(id.clone()),
                on_behalf: None,
                id: None,
                action: "SetChargingProfile".to_owned(),
                payload: profile::set_profile(version, &spec, limit_a, &stamp),
                timeout: Some(PROFILE_TIMEOUT),
            };
            let events = node.events.clone();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let (reply, answer) = oneshot::channel();
                let ok = match events.send(Event::Call { call, reply }).await {
                    Ok(()) => {
                        matches!(answer.await, Ok(CallOutcome::Result(p)) if profile::accepted(&p))
                    }
                    Err(_) => false,
                };
                if !ok {
                    tracing::info!(charger = %id, limit_a, "charging profile not accepted");
                }
                let _ = done_tx.send((id, limit_a, ok));
            });
        }
        metrics
            .failsafe
            .set(i64::from(ctl.mode() == Mode::FailSafe));
        if let Some(o) = ctl.last() {
            DlmMetrics::phases(&metrics.allocated_a, &o.allocated_a);
            DlmMetrics::phases(&metrics.available_a, &o.available_a);
        }
        status.set(ctl.status(Instant::now()));
    }
}

async fn read(
    meter: &GridMeter,
    plausible: &mut Plausibility,
) -> Result<[f64; 3], (&'static str, String)> {
    let reading = modbus_tunnel::gateway::read_meter(&meter.device, meter.unit, &meter.map)
        .await
        .map_err(|e| ("read", e.to_string()))?;
    plausible
        .check_next(&reading)
        .map_err(|e| ("implausible", e.to_string()))?;
    Ok(reading.current_a)
}
