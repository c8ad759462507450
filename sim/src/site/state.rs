//! The one simulated site every part reads: the base-load script, each charger's profiles,
//! limit and draw, and the energy the meter has counted.
//!
//! The physics advance lazily: whoever looks (a meter request, the 200 ms report, a charger's
//! MeterValues, a profile change) first moves every draw along its ramp to "now" and integrates
//! energy over the elapsed time. So a meter reading is always computed live, and nothing needs a
//! simulation clock of its own. One short-held std mutex guards it all; nothing awaits under it.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::limit::{Clear, Profile, ProfileStore, VOLTS, ramp, target_a};

/// The base load script: from each time (s since start) on, this current per phase (A).
#[derive(Debug, Clone, PartialEq)]
pub struct BaseScript(Vec<(f64, f64)>);

impl BaseScript {
    /// Parses `"0:10,20:25,40:5"`; steps may come in any order. Before the first step: 0 A.
    pub fn parse(s: &str) -> Result<BaseScript, String> {
        let mut steps = Vec::new();
        for step in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (t, a) = step
                .split_once(':')
                .ok_or_else(|| format!("base step {step:?} is not SECONDS:AMPS"))?;
            let t: f64 = t
                .trim()
                .parse()
                .map_err(|_| format!("bad time in {step:?}"))?;
            let a: f64 = a
                .trim()
                .parse()
                .map_err(|_| format!("bad current in {step:?}"))?;
            if !(t.is_finite() && t >= 0.0 && a.is_finite() && a >= 0.0) {
                return Err(format!("base step {step:?} must be non-negative"));
            }
            steps.push((t, a));
        }
        steps.sort_by(|x, y| x.0.total_cmp(&y.0));
        Ok(BaseScript(steps))
    }

    /// The base current per phase at `t` seconds.
    pub fn at(&self, t: f64) -> f64 {
        self.0
            .iter()
            .take_while(|(from, _)| *from <= t)
            .last()
            .map_or(0.0, |(_, a)| *a)
    }
}

/// How every simulated EV behaves.
#[derive(Debug, Clone, Copy)]
pub struct Physics {
    pub phases: u32,
    pub max_a: f64,
    pub ramp_a_per_s: f64,
}

/// What the meter measures at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub t: f64,
    pub base_a: f64,
    /// Per phase L1..L3: base plus the chargers' draw.
    pub currents: [f64; 3],
    pub energy_kwh: f64,
}

/// One charger's part of the site.
#[derive(Debug)]
struct Ev {
    id: String,
    profiles: ProfileStore,
    limit_a: f64,
    draw_a: f64,
    charging: bool,
    connected: bool,
    profile_changes: u64,
    connections: u64,
    energy_wh: f64,
}

#[derive(Debug)]
struct Inner {
    last_t: f64,
    energy_kwh: f64,
    meter_requests: u64,
    evs: Vec<Ev>,
}

pub struct Site {
    started: Instant,
    base: BaseScript,
    physics: Physics,
    inner: Mutex<Inner>,
}

impl Site {
    pub fn new(started: Instant, base: BaseScript, physics: Physics, ids: Vec<String>) -> Site {
        let evs = ids
            .into_iter()
            .map(|id| Ev {
                id,
                profiles: ProfileStore::default(),
                limit_a: physics.max_a,
                draw_a: 0.0,
                charging: false,
                connected: false,
                profile_changes: 0,
                connections: 0,
                energy_wh: 0.0,
            })
            .collect();
        Site {
            started,
            base,
            physics,
            inner: Mutex::new(Inner {
                last_t: 0.0,
                energy_kwh: 0.0,
                meter_requests: 0,
                evs,
            }),
        }
    }

    pub fn physics(&self) -> Physics {
        self.physics
    }

    /// Locks the state advanced to now, with the current time in seconds since start.
    fn now(&self) -> (MutexGuard<'_, Inner>, f64) {
        // A panic elsewhere cannot leave the numbers half-updated in a way that matters here.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let t = self.started.elapsed().as_secs_f64();
        inner.advance(t, &self.base, self.physics);
        (inner, t)
    }

    fn reading(&self, inner: &Inner, t: f64) -> Reading {
        let base_a = self.base.at(t);
        Reading {
            t,
            base_a,
            currents: inner.currents(base_a, self.physics.phases),
            energy_kwh: inner.energy_kwh,
        }
    }

    /// What the meter reads now; counts a meter request.
    pub fn meter_reading(&self) -> Reading {
        let (mut inner, t) = self.now();
        inner.meter_requests += 1;
        self.reading(&inner, t)
    }

    /// Charger `i`'s draw (A per phase) and energy (Wh) now.
    pub fn ev_meter(&self, i: usize) -> (f64, f64) {
        let (inner, _) = self.now();
        inner
            .evs
            .get(i)
            .map_or((0.0, 0.0), |ev| (ev.draw_a, ev.energy_wh))
    }

    pub fn set_charging(&self, i: usize, charging: bool) {
        self.with_ev(i, |ev| ev.charging = charging);
    }

    pub fn set_connected(&self, i: usize, connected: bool) {
        self.with_ev(i, |ev| {
            if connected && !ev.connected {
                ev.connections += 1;
            }
            ev.connected = connected;
        });
    }

    /// Stores a profile on charger `i` and updates its limit.
    pub fn set_profile(&self, i: usize, p: Profile) {
        self.with_ev(i, |ev| ev.profiles.set(p));
        self.update_limit(i);
    }

    /// Clears matching profiles on charger `i`; whether any was cleared.
    pub fn clear_profiles(&self, i: usize, c: &Clear) -> bool {
        let mut cleared = false;
        self.with_ev(i, |ev| cleared = ev.profiles.clear(c));
        self.update_limit(i);
        cleared
    }

    fn update_limit(&self, i: usize) {
        let max_a = self.physics.max_a;
        self.with_ev(i, |ev| {
            let limit = ev.profiles.limit_a(max_a);
            if (limit - ev.limit_a).abs() > 1e-9 {
                ev.limit_a = limit;
                ev.profile_changes += 1;
            }
        });
    }

    fn with_ev(&self, i: usize, f: impl FnOnce(&mut Ev)) {
        let (mut inner, _) = self.now();
        if let Some(ev) = inner.evs.get_mut(i) {
            f(ev);
        }
    }

    /// The 200 ms report line.
    pub fn report(&self) -> Value {
        let (inner, t) = self.now();
        let r = self.reading(&inner, t);
        json!({
            "t": round(t),
            "base_a": round(r.base_a),
            "total_a": r.currents.map(round),
            "chargers": inner.chargers(false),
        })
    }

    /// The final summary line.
    pub fn summary(&self, meter_up: bool) -> Value {
        let (inner, t) = self.now();
        let r = self.reading(&inner, t);
        json!({ "summary": {
            "t": round(t),
            "base_a": round(r.base_a),
            "total_a": r.currents.map(round),
            "energy_kwh": round(r.energy_kwh),
            "meter_requests": inner.meter_requests,
            "meter_up": meter_up,
            "chargers": inner.chargers(true),
        }})
    }
}

impl Inner {
    /// Moves every draw along its ramp to `t` and integrates energy (trapezoids per charger,
    /// the site meter from the currents at `t`).
    fn advance(&mut self, t: f64, base: &BaseScript, physics: Physics) {
        let dt = t - self.last_t;
        if dt <= 0.0 {
            return;
        }
        let phases = f64::from(physics.phases);
        for ev in &mut self.evs {
            let old = ev.draw_a;
            ev.draw_a = if ev.charging {
                ramp(old, target_a(ev.limit_a), physics.ramp_a_per_s, dt)
            } else {
                0.0
            };
            ev.energy_wh += (old + ev.draw_a) / 2.0 * VOLTS * phases * dt / 3600.0;
        }
        let watts: f64 = self
            .currents(base.at(t), physics.phases)
            .iter()
            .sum::<f64>()
            * VOLTS;
        self.energy_kwh += watts * dt / 3_600_000.0;
        self.last_t = t;
    }

    fn currents(&self, base_a: f64, phases: u32) -> [f64; 3] {
        let draw: f64 = self.evs.iter().map(|ev| ev.draw_a).sum();
        let mut currents = [base_a; 3];
        for current in currents.iter_mut().take(phases as usize) {
            *current += draw;
        }
        currents
    }

    fn chargers(&self, summary: bool) -> Value {
        let mut map = Map::new();
        for ev in &self.evs {
            let mut entry = json!({
                "limit_a": round(ev.limit_a),
                "draw_a": round(ev.draw_a),
                "profiles": ev.profiles.len(),
                "profile_changes": ev.profile_changes,
            });
            if summary {
                entry["charging"] = json!(ev.charging);
                entry["connected"] = json!(ev.connected);
                entry["reconnects"] = json!(ev.connections.saturating_sub(1));
                entry["energy_wh"] = json!(round(ev.energy_wh));
            }
            map.insert(ev.id.clone(), entry);
        }
        Value::Object(map)
    }
}

/// Three decimals are plenty for amps, seconds and kWh in a report.
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_script_steps() {
        let s = BaseScript::parse("20:25, 0:10,40:5").unwrap();
        assert_eq!(s.at(0.0), 10.0);
        assert_eq!(s.at(19.9), 10.0);
        assert_eq!(s.at(20.0), 25.0);
        assert_eq!(s.at(100.0), 5.0);
        assert_eq!(BaseScript::parse("5:3").unwrap().at(1.0), 0.0);
        assert!(BaseScript::parse("0=10").is_err());
        assert!(BaseScript::parse("0:-1").is_err());
        assert!(BaseScript::parse("x:1").is_err());
    }
}
