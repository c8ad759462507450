//! The load-management controller: a state machine fed the site's events (chargers, their
//! transactions and draw, the CSMS's limits), meter readings and time, that returns the
//! profiles to send. It does no I/O, so the fail-safe rules are tested without a meter.
//!
//! The rules it keeps:
//! * a charger that connects is put on the safe limit first, before anything allows more
//!   (after a restart the node knows nothing of what it allowed before);
//! * while the meter is stale, every charger is held at the safe limit;
//! * otherwise chargers in a transaction share the grid through the [`Allocator`], and idle
//!   ones hold the safe limit (what a starting car may draw before the next cycle);
//! * the CSMS's limit is combined by taking the minimum, never raised;
//! * one profile in flight per charger; a refused or lost one is retried after a pause.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use routing::Glob;
use serde_json::{Value, json};

use super::allocate::{Allocator, Phases, SessionInput, Settings, Site};
use crate::config::DlmConfig;

/// Cycles to wait before a refused or unanswered profile is sent again.
const RETRY_CYCLES: u32 = 10;

/// How long a car may take to follow a new limit (IEC 61851-1 gives it 5 s to follow a PWM
/// change). A charger's MeterValues from before then show the old draw, mid-ramp: taken as
/// its draw, they would make the building look heavier (or lighter) than it is and pause a
/// charger for a cycle while room is free. Until then its limit stands for its draw.
const SETTLE: Duration = Duration::from_secs(5);

/// What the site tells the controller, from the frames the chargers and the CSMS exchange.
#[derive(Debug, Clone, PartialEq)]
pub enum SiteEvent {
    Connected(String),
    Disconnected(String),
    Transaction {
        id: String,
        active: bool,
    },
    /// Current per phase from the charger's MeterValues.
    Draw {
        id: String,
        amps: Phases,
    },
    /// The CSMS's limit now (`None`: it has none); `resend` when the charger may have dropped
    /// the node's own profile (a clear-all).
    CsmsLimit {
        id: String,
        limit: Option<f64>,
        resend: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: String,
    pub limit_a: f64,
}

#[derive(Debug, Clone, PartialEq)]
struct Params {
    phases: [bool; 3],
    min_a: f64,
    max_a: f64,
    priority: u32,
}

#[derive(Debug, Clone)]
struct Charger {
    params: Params,
    in_tx: bool,
    draw: Option<Phases>,
    /// A draw came in since the last cycle: `draw_at` is stamped by the next one.
    draw_new: bool,
    /// When the draw was last reported (to the cycle).
    draw_at: Option<Instant>,
    csms: Option<f64>,
    /// The limit the charger accepted last, and when.
    in_force: Option<f64>,
    in_force_at: Option<Instant>,
    /// What this cycle decided.
    target: Option<f64>,
    paused: bool,
    pending: Option<f64>,
    retry_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No reading yet since start.
    Starting,
    Allocating,
    /// The meter is stale: everyone on the safe limit.
    FailSafe,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Starting => "starting",
            Mode::Allocating => "allocating",
            Mode::FailSafe => "fail-safe",
        }
    }
}

pub struct Controller {
    grid: Phases,
    stale: Duration,
    safe_a: f64,
    cycle: Duration,
    defaults: Params,
    rules: Vec<(Glob, DlmRule)>,
    alloc: Allocator,
    chargers: BTreeMap<String, Charger>,
    reading: Option<(Instant, Phases)>,
    mode: Mode,
    last: Option<super::allocate::Outcome>,
    pub sent: u64,
    pub failed: u64,
}

#[derive(Debug, Clone)]
struct DlmRule {
    priority: u32,
    min_a: Option<f64>,
    max_a: Option<f64>,
    phases: Option<u8>,
}

fn phases(n: u8) -> [bool; 3] {
    [true, n >= 2, n >= 3]
}

impl Controller {
    pub fn new(c: &DlmConfig) -> Self {
        let rules = c
            .charger
            .iter()
            .filter_map(|r| {
                let glob = Glob::new(r.pattern.clone()).ok()?;
                Some((
                    glob,
                    DlmRule {
                        priority: r.priority,
                        min_a: r.min_a,
                        max_a: r.max_a,
                        phases: r.phases,
                    },
                ))
            })
            .collect();
        Controller {
            grid: c.grid_limit_a,
            stale: Duration::from_secs(c.stale_s),
            safe_a: c.safe_limit_a,
            cycle: Duration::from_millis(c.cycle_ms),
            defaults: Params {
                phases: phases(c.phases),
                min_a: c.min_a,
                max_a: c.max_a,
                priority: 1,
            },
            rules,
            alloc: Allocator::new(Settings {
                deadband_a: c.deadband_a,
                min_change_interval: Duration::from_secs(c.min_change_interval_s),
                rotation: Duration::from_secs(c.rotation_s),
                margin_a: c.margin_a,
            }),
            chargers: BTreeMap::new(),
            reading: None,
            mode: Mode::Starting,
            last: None,
            sent: 0,
            failed: 0,
        }
    }

    fn params(&self, id: &str) -> Params {
        let d = &self.defaults;
        match self.rules.iter().find(|(g, _)| g.matches(id)) {
            Some((_, r)) => Params {
                phases: r.phases.map_or(d.phases, phases),
                min_a: r.min_a.unwrap_or(d.min_a),
                max_a: r.max_a.unwrap_or(d.max_a),
                priority: r.priority,
            },
            None => d.clone(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn event(&mut self, event: SiteEvent) {
        match event {
            SiteEvent::Connected(id) => {
                let params = self.params(&id);
                self.alloc.forget(&id);
                self.chargers.insert(
                    id,
                    Charger {
                        params,
                        in_tx: false,
                        draw: None,
                        draw_new: false,
                        draw_at: None,
                        csms: None,
                        in_force: None,
                        in_force_at: None,
                        target: None,
                        paused: false,
                        pending: None,
                        retry_at: None,
                    },
                );
            }
            SiteEvent::Disconnected(id) => {
                self.alloc.forget(&id);
                self.chargers.remove(&id);
            }
            SiteEvent::Transaction { id, active } => {
                if let Some(c) = self.chargers.get_mut(&id) {
                    if c.in_tx && !active {
                        self.alloc.forget(&id);
                        c.draw = None;
                    }
                    c.in_tx = active;
                }
            }
            SiteEvent::Draw { id, amps } => {
                if let Some(c) = self.chargers.get_mut(&id) {
                    c.draw = Some(amps);
                    c.draw_new = true;
                }
            }
            SiteEvent::CsmsLimit { id, limit, resend } => {
                if let Some(c) = self.chargers.get_mut(&id) {
                    c.csms = limit;
                    if resend {
                        c.in_force = None;
                    }
                }
            }
        }
    }

    /// The grid meter's current per phase, read at `at`.
    pub fn reading(&mut self, at: Instant, amps: Phases) {
        self.reading = Some((at, amps));
    }

    /// One cycle: decides every charger's limit and returns the profiles to send now.
    pub fn cycle(&mut self, now: Instant) -> Vec<Command> {
        for c in self.chargers.values_mut().filter(|c| c.draw_new) {
            c.draw_new = false;
            c.draw_at = Some(now);
        }
        let fresh = self
            .reading
            .filter(|(at, _)| now.saturating_duration_since(*at) <= self.stale);
        match fresh {
            Some((_, meter)) => {
                self.mode = Mode::Allocating;
                self.allocate(now, meter);
            }
            None => {
                if self.mode == Mode::Allocating {
                    tracing::warn!(
                        stale_s = self.stale.as_secs(),
                        "grid meter reading is stale: every charger falls to the safe limit"
                    );
                    // Blind, the node cannot share: the safe limit is per charger, so enough
                    // chargers on it can exceed the grid. Said loudly, since only the site's
                    // design (safe_limit_a × chargers + base load ≤ grid) can prevent it.
                    let total = self.safe_a * self.chargers.len() as f64;
                    let grid = self.grid.iter().copied().fold(f64::INFINITY, f64::min);
                    if total > grid {
                        tracing::warn!(
                            chargers = self.chargers.len(),
                            safe_limit_a = self.safe_a,
                            grid_limit_a = grid,
                            "fail-safe: the chargers' safe limits add up to more than the grid limit"
                        );
                    }
                    // What the allocator believed in force no longer is.
                    let ids: Vec<String> = self.chargers.keys().cloned().collect();
                    for id in ids {
                        self.alloc.forget(&id);
                    }
                }
                if self.mode != Mode::Starting || self.reading.is_some() {
                    self.mode = Mode::FailSafe;
                }
                for c in self.chargers.values_mut() {
                    c.target = Some(c.csms.map_or(self.safe_a, |l| l.min(self.safe_a)));
                    c.paused = false;
                }
            }
        }
        let mut out = Vec::new();
        for (id, c) in &mut self.chargers {
            let Some(target) = c.target else { continue };
            if c.pending.is_some() || c.retry_at.is_some_and(|t| now < t) {
                continue;
            }
            if c.in_force.is_none_or(|f| (f - target).abs() > 0.05) {
                c.pending = Some(target);
                out.push(Command {
                    id: id.clone(),
                    limit_a: target,
                });
            }
        }
        out
    }

    fn allocate(&mut self, now: Instant, meter: Phases) {
        let sessions: Vec<SessionInput> = self
            .chargers
            .iter()
            .filter(|(_, c)| c.in_tx)
            .map(|(id, c)| {
                let held = c.in_force.unwrap_or(self.safe_a);
                // A charger cannot draw more than the limit it holds, whatever its last
                // MeterValues said: the smaller figure overestimates the building, never
                // the room left. A report from before the car could follow its limit says
                // nothing of its draw now.
                let on = c.params.phases;
                let settled = match (c.draw_at, c.in_force_at) {
                    (Some(d), Some(f)) => d >= f + SETTLE,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                let measured = c.draw.filter(|_| settled);
                let draw: Phases = std::array::from_fn(|i| match (on[i], measured) {
                    (false, _) => 0.0,
                    (true, Some(d)) => d[i].min(held),
                    (true, None) => held,
                });
                SessionInput {
                    id: id.clone(),
                    phases: c.params.phases,
                    min_a: c.params.min_a,
                    max_a: c.params.max_a,
                    priority: c.params.priority,
                    csms_limit_a: c.csms,
                    draw_a: Some(draw),
                }
            })
            .collect();
        let site = Site {
            grid_limit_a: self.grid,
            meter_a: meter,
        };
        let outcome = self.alloc.allocate(now, &site, &sessions);
        for c in self.chargers.values_mut().filter(|c| !c.in_tx) {
            c.target = Some(c.csms.map_or(self.safe_a, |l| l.min(self.safe_a)));
            c.paused = false;
        }
        for d in &outcome.decisions {
            if let Some(c) = self.chargers.get_mut(&d.id) {
                c.target = Some(d.limit_a);
                c.paused = d.paused;
            }
        }
        self.last = Some(outcome);
    }

    /// The answer to a profile sent for `id`.
    pub fn done(&mut self, now: Instant, id: &str, limit_a: f64, accepted: bool) {
        let Some(c) = self.chargers.get_mut(id) else {
            return;
        };
        c.pending = None;
        if accepted {
            self.sent += 1;
            if c.in_force != Some(limit_a) {
                c.in_force_at = Some(now);
            }
            c.in_force = Some(limit_a);
            c.retry_at = None;
        } else {
            self.failed += 1;
            c.retry_at = Some(now + self.cycle * RETRY_CYCLES);
        }
    }

    /// What `/api/dlm` shows.
    pub fn status(&self, now: Instant) -> Value {
        let r = |v: f64| (v * 10.0).round() / 10.0;
        let ph = |p: &Phases| json!([r(p[0]), r(p[1]), r(p[2])]);
        let chargers: Vec<Value> = self
            .chargers
            .iter()
            .map(|(id, c)| {
                json!({
                    "id": id,
                    "inTransaction": c.in_tx,
                    "limitA": c.in_force.map(r),
                    "targetA": c.target.map(r),
                    "paused": c.paused,
                    "csmsLimitA": c.csms.map(r),
                    "drawA": c.draw.as_ref().map(ph),
                    "priority": c.params.priority,
                    "pending": c.pending.is_some(),
                })
            })
            .collect();
        let last = self.last.as_ref();
        json!({
            "mode": self.mode.as_str(),
            "gridLimitA": ph(&self.grid),
            "safeLimitA": self.safe_a,
            "meter": self.reading.map(|(at, a)| json!({
                "currentA": ph(&a),
                "ageMs": u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX),
            })),
            "buildingA": last.map(|o| ph(&o.building_a)),
            "availableA": last.map(|o| ph(&o.available_a)),
            "allocatedA": last.map(|o| ph(&o.allocated_a)),
            "profilesSent": self.sent,
            "profileFailures": self.failed,
            "chargers": chargers,
        })
    }

    /// The last allocation's per-phase figures, for metrics.
    pub fn last(&self) -> Option<&super::allocate::Outcome> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DlmConfig {
        DlmConfig {
            grid_limit_a: [32.0; 3],
            stale_s: 3,
            safe_limit_a: 6.0,
            min_change_interval_s: 0,
            deadband_a: 0.0,
            ..DlmConfig::default()
        }
    }

    /// Chargers that connect and start a transaction.
    fn charging(c: &mut Controller, ids: &[&str]) {
        for id in ids {
            c.event(SiteEvent::Connected((*id).into()));
            c.event(SiteEvent::Transaction {
                id: (*id).into(),
                active: true,
            });
        }
    }

    fn accept_all(c: &mut Controller, now: Instant, cmds: &[Command]) {
        for cmd in cmds {
            c.done(now, &cmd.id, cmd.limit_a, true);
        }
    }

    #[test]
    fn a_new_charger_gets_the_safe_limit_before_anything_else() {
        let mut c = Controller::new(&config());
        let t0 = Instant::now();
        charging(&mut c, &["A"]);
        // No reading yet: safe limit.
        let cmds = c.cycle(t0);
        assert_eq!(
            cmds,
            vec![Command {
                id: "A".into(),
                limit_a: 6.0
            }]
        );
        // One in flight at a time, even when a reading would allow more.
        c.reading(t0, [0.0; 3]);
        assert!(c.cycle(t0).is_empty());
        accept_all(&mut c, t0, &cmds);
        let cmds = c.cycle(t0);
        assert_eq!(cmds.len(), 1);
        assert!(cmds[0].limit_a > 6.0, "{cmds:?}");
    }

    #[test]
    fn a_stale_meter_puts_everyone_on_the_safe_limit() {
        let mut c = Controller::new(&config());
        let t0 = Instant::now();
        charging(&mut c, &["A", "B"]);
        c.reading(t0, [0.0; 3]);
        let cmds = c.cycle(t0);
        accept_all(&mut c, t0, &cmds);
        let cmds = c.cycle(t0);
        assert!(cmds.iter().all(|c| c.limit_a > 6.0), "{cmds:?}");
        accept_all(&mut c, t0, &cmds);
        let later = t0 + Duration::from_secs(4);
        let cmds = c.cycle(later);
        assert_eq!(c.mode(), Mode::FailSafe);
        assert_eq!(cmds.len(), 2);
        assert!(cmds.iter().all(|c| (c.limit_a - 6.0).abs() < 1e-9));
    }

    #[test]
    fn the_csms_limit_is_never_raised() {
        let mut c = Controller::new(&config());
        let t0 = Instant::now();
        charging(&mut c, &["A"]);
        c.event(SiteEvent::CsmsLimit {
            id: "A".into(),
            limit: Some(10.0),
            resend: false,
        });
        c.reading(t0, [0.0; 3]);
        for _ in 0..3 {
            let cmds = c.cycle(t0);
            assert!(cmds.iter().all(|c| c.limit_a <= 10.0), "{cmds:?}");
            accept_all(&mut c, t0, &cmds);
        }
        assert_eq!(c.chargers["A"].in_force, Some(10.0));
        // One above the share does not raise it past what the grid allows.
        c.event(SiteEvent::CsmsLimit {
            id: "A".into(),
            limit: Some(100.0),
            resend: false,
        });
        let cmds = c.cycle(t0);
        assert!(cmds.iter().all(|c| c.limit_a <= 32.0), "{cmds:?}");
    }
}
