//! The allocator: how much current each charging session may draw, per cycle, from what the
//! grid connection leaves after the building's own load.
//!
//! It is pure (no I/O, no clock: `now` comes in) so that the rules that protect the fuse can
//! be checked by property tests instead of by a meter on a test bench. The rules:
//! * safety first: a phase's limits never add up to more than that phase has available, and a
//!   decrease is sent at once, whatever the hysteresis says;
//! * a session either gets at least its minimum or is paused (a car below its minimum stops
//!   charging anyway, and keeping it at a useless limit would take room from others);
//! * when not every minimum fits, sessions take turns: the one paused longest is admitted
//!   first and an admitted one gives up its slot after `rotation`, so nobody starves however
//!   the priorities are set;
//! * the room left is shared by weighted max-min fairness (water-filling per phase), so a
//!   session held back by one phase leaves the others' room to the sessions that can use it;
//! * increases wait for a deadband and a minimum interval, since every change costs a
//!   SetChargingProfile and many cars ramp slowly anyway.
//!
//! Inputs are taken as they come from configuration and meters: values that are not finite
//! or negative are read in the way that allows less current, never more.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Amps per phase: L1, L2, L3.
pub type Phases = [f64; 3];

/// Tolerance for comparing sums of currents computed in floating point.
const EPS: f64 = 1e-9;

#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// What the grid connection (its fuse, less any contract) allows per phase.
    pub grid_limit_a: Phases,
    /// Total current through the grid connection per phase now, chargers included.
    pub meter_a: Phases,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionInput {
    pub id: String,
    /// The phases the charger draws on; none at all is read as all three.
    pub phases: [bool; 3],
    /// The current below which the car stops charging (6 A in IEC 61851).
    pub min_a: f64,
    /// What the charger and its cable allow.
    pub max_a: f64,
    /// Weight in the sharing, at least 1 (0 is read as 1).
    pub priority: u32,
    /// The CSMS's own limit: combined by taking the minimum, never raised.
    pub csms_limit_a: Option<f64>,
    /// Measured current per phase from the charger's MeterValues, if known.
    pub draw_a: Option<Phases>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// An increase smaller than this is not worth a new profile.
    pub deadband_a: f64,
    /// How long after a session's last change an increase may follow.
    pub min_change_interval: Duration,
    /// How long an admitted session keeps its slot while others wait.
    pub rotation: Duration,
    /// Kept free on every phase, for what the meter cannot see between two readings.
    pub margin_a: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub id: String,
    /// The limit now in force; 0.0 when paused.
    pub limit_a: f64,
    pub paused: bool,
    /// The limit differs from the one in force before: a new profile must be sent.
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// One per session given, in the order given (a repeated id is decided once).
    pub decisions: Vec<Decision>,
    /// The building's own load per phase, as estimated from the meter.
    pub building_a: Phases,
    /// What the chargers may share per phase.
    pub available_a: Phases,
    /// The sum of the decided limits of the sessions on each phase.
    pub allocated_a: Phases,
}

/// What the allocator remembers of a session between two calls.
#[derive(Debug, Clone)]
struct State {
    /// The limit in force (last decided); 0 when paused.
    limit: f64,
    paused: bool,
    /// When `limit` last changed: increases wait `min_change_interval` from here.
    changed_at: Instant,
    /// When the session was last admitted (while admitted) or paused (while paused): the
    /// rotation's clock.
    since: Instant,
}

#[derive(Debug, Clone)]
pub struct Allocator {
    settings: Settings,
    state: HashMap<String, State>,
}

/// A session as the allocation sees it: effective bounds on the 0.1 A grid.
struct Cand<'a> {
    id: &'a str,
    index: usize,
    on: [bool; 3],
    min: f64,
    max: f64,
    weight: f64,
    priority: u32,
}

/// Admission groups, in the order they are considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    /// Admitted, and its slot has not run out.
    Holding,
    /// Paused or new: waiting for a slot.
    Waiting,
    /// Admitted for `rotation` or longer: keeps charging only if everyone waiting fits.
    Expired,
}

impl Allocator {
    pub fn new(settings: Settings) -> Self {
        Allocator {
            settings,
            state: HashMap::new(),
        }
    }

    /// The session ended or its charger went away: the next decision for that id starts
    /// afresh (and is sent, since nothing is known to be in force).
    pub fn forget(&mut self, id: &str) {
        self.state.remove(id);
    }

    /// The limit in force for `id` (the last decided; 0.0 while paused).
    pub fn current(&self, id: &str) -> Option<f64> {
        self.state.get(id).map(|s| s.limit)
    }

    pub fn allocate(&mut self, now: Instant, site: &Site, sessions: &[SessionInput]) -> Outcome {
        let margin = non_negative(self.settings.margin_a);
        let deadband = non_negative(self.settings.deadband_a);

        // A repeated id would share one state; the first one given is the one decided.
        let mut seen = std::collections::HashSet::with_capacity(sessions.len());
        let unique: Vec<usize> = (0..sessions.len())
            .filter(|&i| seen.insert(sessions[i].id.as_str()))
            .collect();

        // The building is what the meter sees less the chargers. A charger whose draw is not
        // known is taken to draw its whole limit in force, which can only overstate the
        // building's load and so understate the room left.
        let mut chargers = [0.0; 3];
        for &i in &unique {
            let s = &sessions[i];
            let on = phases_of(s);
            let held = self.state.get(&s.id).map_or(0.0, |st| st.limit);
            let draw = s.draw_a.filter(|d| d.iter().all(|x| x.is_finite()));
            for p in 0..3 {
                chargers[p] += match draw {
                    Some(d) => d[p].max(0.0),
                    None if on[p] => held,
                    None => 0.0,
                };
            }
        }
        let mut building = [0.0; 3];
        let mut available = [0.0; 3];
        for p in 0..3 {
            let b = site.meter_a[p] - chargers[p];
            // A meter or limit that is not a number leaves nothing available on that phase.
            if b.is_finite() {
                building[p] = b.max(0.0);
                let a = site.grid_limit_a[p] - building[p] - margin;
                available[p] = if a.is_finite() { a.max(0.0) } else { 0.0 };
            }
        }

        let cands: Vec<Cand<'_>> = unique
            .iter()
            .map(|&i| {
                let s = &sessions[i];
                let max = s.csms_limit_a.map_or(s.max_a, |c| at_most(s.max_a, c));
                let max = floor_tenth(at_least_zero(max));
                let min = ceil_tenth(at_least_zero(s.min_a)).min(max);
                Cand {
                    id: &s.id,
                    index: i,
                    on: phases_of(s),
                    min,
                    max,
                    weight: f64::from(s.priority.max(1)),
                    priority: s.priority.max(1),
                }
            })
            .collect();

        let admitted = self.admit(now, &cands, available);
        let targets = share(&cands, &admitted, available);

        let mut decisions = Vec::with_capacity(cands.len());
        let mut allocated = [0.0; 3];
        for (k, c) in cands.iter().enumerate() {
            let interval = self.settings.min_change_interval;
            let prev = self.state.get(c.id).cloned();
            let (limit, paused) = match (&prev, admitted[k]) {
                (_, false) => (0.0, true),
                // New, or resuming from a pause: applied at once.
                (None, true) => (targets[k], false),
                (Some(st), true) if st.paused => (targets[k], false),
                (Some(st), true) => {
                    let t = targets[k];
                    let old = st.limit;
                    let due = now.saturating_duration_since(st.changed_at) >= interval;
                    let keep = t > old && old + EPS >= c.min && (t - old + EPS < deadband || !due);
                    (if keep { old } else { t }, false)
                }
            };
            let changed = prev
                .as_ref()
                .is_none_or(|st| st.paused != paused || (st.limit - limit).abs() > EPS);
            let since = match &prev {
                Some(st) if st.paused == paused => st.since,
                _ => now,
            };
            let changed_at = match &prev {
                Some(st) if !changed => st.changed_at,
                _ => now,
            };
            let next = State {
                limit,
                paused,
                changed_at,
                since,
            };
            // In place when known: no new key (a String) per session per cycle.
            match self.state.get_mut(c.id) {
                Some(st) => *st = next,
                None => {
                    self.state.insert(c.id.to_owned(), next);
                }
            }
            add_on(&mut allocated, c.on, limit);
            decisions.push(Decision {
                id: sessions[c.index].id.clone(),
                limit_a: limit,
                paused,
                changed,
            });
        }

        Outcome {
            decisions,
            building_a: building,
            available_a: available,
            allocated_a: allocated,
        }
    }

    /// Which sessions charge this cycle: while the minimums fit on every phase, in rotation
    /// order. A waiting session that does not fit reserves its minimum against the waiting
    /// sessions behind it, so that those (on fewer phases, or with smaller minimums) cannot
    /// keep it out for ever; one that could not fit even on an empty site reserves nothing,
    /// since it would only block the others. Sessions whose turn is over are not held back by
    /// a reservation: stopping them would not let the waiting one in before the slots still
    /// running end, and once they have, it comes first.
    fn admit(&self, now: Instant, cands: &[Cand<'_>], available: Phases) -> Vec<bool> {
        let rotation = self.settings.rotation;
        let keyed: Vec<(Group, Instant)> = cands
            .iter()
            .map(|c| match self.state.get(c.id) {
                None => (Group::Waiting, now),
                Some(st) if st.paused => (Group::Waiting, st.since),
                Some(st) if now.saturating_duration_since(st.since) < rotation => {
                    (Group::Holding, st.since)
                }
                Some(st) => (Group::Expired, st.since),
            })
            .collect();
        let mut order: Vec<usize> = (0..cands.len()).collect();
        order.sort_by(|&a, &b| {
            let (ga, ta) = keyed[a];
            let (gb, tb) = keyed[b];
            let by_time = match ga {
                // Waiting: the longest paused first.
                Group::Waiting => ta.cmp(&tb),
                // Admitted: the one admitted last keeps its slot first; the one that has had
                // the longest turn is the first to give way.
                Group::Holding | Group::Expired => tb.cmp(&ta),
            };
            ga.cmp(&gb)
                .then(by_time)
                .then(cands[b].priority.cmp(&cands[a].priority))
                .then(cands[a].id.cmp(cands[b].id))
        });

        let mut used = [0.0; 3];
        let mut reserved = [0.0; 3];
        let mut admitted = vec![false; cands.len()];
        for k in order {
            let c = &cands[k];
            let waiting = keyed[k].0 == Group::Waiting;
            let fits = (0..3).all(|p| {
                let ahead = if waiting { reserved[p] } else { 0.0 };
                !c.on[p] || used[p] + ahead + c.min <= available[p] + EPS
            });
            if fits {
                admitted[k] = true;
                add_on(&mut used, c.on, c.min);
            } else if waiting && (0..3).all(|p| !c.on[p] || c.min <= available[p] + EPS) {
                add_on(&mut reserved, c.on, c.min);
            }
        }
        admitted
    }
}

/// Weighted max-min fair shares of the admitted sessions, by progressive filling: a common
/// level rises, each session at `weight × level` held between its minimum and maximum, until
/// a phase is full; the sessions on that phase stop there and the others rise on. Each round
/// fills at least one phase, so there are at most three.
fn share(cands: &[Cand<'_>], admitted: &[bool], available: Phases) -> Vec<f64> {
    let value = |c: &Cand<'_>, level: f64| (c.weight * level).clamp(c.min, c.max);
    let mut out = vec![0.0; cands.len()];
    let mut active: Vec<usize> = (0..cands.len()).filter(|&k| admitted[k]).collect();
    let mut frozen = [0.0; 3];
    let mut events: Vec<(f64, f64, i32)> = Vec::with_capacity(2 * cands.len());
    while !active.is_empty() {
        let mut level = f64::INFINITY;
        let mut full = [false; 3];
        let mut fill = [f64::INFINITY; 3];
        for (p, fill) in fill.iter_mut().enumerate() {
            events.clear();
            let mut base = frozen[p];
            let mut any = false;
            for &k in &active {
                let c = &cands[k];
                if !c.on[p] {
                    continue;
                }
                any = true;
                base += c.min;
                if c.max > c.min {
                    events.push((c.min / c.weight, c.weight, 1));
                    events.push((c.max / c.weight, -c.weight, -1));
                }
            }
            if any {
                *fill = fill_level(base, available[p], &mut events);
            }
        }
        for f in fill {
            level = level.min(f);
        }
        if level.is_infinite() {
            for &k in &active {
                out[k] = cands[k].max;
            }
            break;
        }
        for p in 0..3 {
            full[p] = fill[p] <= level;
        }
        active.retain(|&k| {
            let c = &cands[k];
            if (0..3).any(|p| c.on[p] && full[p]) {
                let v = value(c, level);
                out[k] = v;
                add_on(&mut frozen, c.on, v);
                false
            } else {
                true
            }
        });
    }
    for (k, v) in out.iter_mut().enumerate() {
        // The minimum is on the grid already, so rounding down never goes below it.
        *v = floor_tenth(*v).max(cands[k].min).min(cands[k].max);
    }
    out
}

/// The lowest level at which a phase's sum reaches `cap`: `base` at level 0, then rising by the
/// weight of every session between its minimum's and its maximum's level (`events`: level,
/// change of slope, change of the count of rising sessions).
fn fill_level(base: f64, cap: f64, events: &mut [(f64, f64, i32)]) -> f64 {
    if base >= cap {
        return 0.0;
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut at, mut sum, mut slope, mut rising) = (0.0, base, 0.0, 0i32);
    for &(level, d_slope, d_rising) in events.iter() {
        if level.is_infinite() {
            break;
        }
        if rising > 0 {
            let next = sum + slope * (level - at);
            if next >= cap {
                return at + (cap - sum) / slope;
            }
            sum = next;
        }
        at = level;
        slope += d_slope;
        rising += d_rising;
        if rising == 0 {
            slope = 0.0;
        }
    }
    if rising > 0 && slope > 0.0 {
        at + (cap - sum) / slope
    } else {
        f64::INFINITY
    }
}

/// Adds `v` to the phases `on`.
fn add_on(acc: &mut Phases, on: [bool; 3], v: f64) {
    for (a, _) in acc.iter_mut().zip(on).filter(|(_, on)| *on) {
        *a += v;
    }
}

fn phases_of(s: &SessionInput) -> [bool; 3] {
    if s.phases.iter().any(|&on| on) {
        s.phases
    } else {
        [true; 3]
    }
}

/// NaN and negatives are 0; `+inf` stays (a maximum of "no limit").
fn at_least_zero(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.max(0.0) }
}

/// The smaller of two limits, a NaN counting as 0.
fn at_most(a: f64, b: f64) -> f64 {
    at_least_zero(a).min(at_least_zero(b))
}

fn non_negative(x: f64) -> f64 {
    if x.is_finite() { x.max(0.0) } else { 0.0 }
}

/// Down to 0.1 A; the small allowance keeps a value already on the grid (6.1 as computed in
/// floating point) where it is.
fn floor_tenth(x: f64) -> f64 {
    if x.is_finite() {
        ((x * 10.0 + 1e-9).floor() / 10.0).max(0.0)
    } else {
        x
    }
}

fn ceil_tenth(x: f64) -> f64 {
    if x.is_finite() {
        (x * 10.0 - 1e-9).ceil() / 10.0
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [bool; 3] = [true; 3];

    fn settings(deadband_a: f64, interval_s: u64, rotation_s: u64, margin_a: f64) -> Settings {
        Settings {
            deadband_a,
            min_change_interval: Duration::from_secs(interval_s),
            rotation: Duration::from_secs(rotation_s),
            margin_a,
        }
    }

    fn session(id: &str, phases: [bool; 3], max_a: f64, priority: u32) -> SessionInput {
        SessionInput {
            id: id.to_owned(),
            phases,
            min_a: 6.0,
            max_a,
            priority,
            csms_limit_a: None,
            draw_a: None,
        }
    }

    fn site(grid: f64, meter: f64) -> Site {
        Site {
            grid_limit_a: [grid; 3],
            meter_a: [meter; 3],
        }
    }

    fn limits(o: &Outcome) -> Vec<(String, f64, bool)> {
        o.decisions
            .iter()
            .map(|d| (d.id.clone(), d.limit_a, d.paused))
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn three_sessions_share_what_the_building_leaves() {
        // 32 A grid, 10 A building (new sessions draw nothing yet): 22 A for three, 7.33 A
        // each, rounded down.
        let mut a = Allocator::new(settings(1.0, 5, 300, 0.0));
        let s: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| session(id, ALL, 16.0, 1))
            .collect();
        let o = a.allocate(Instant::now(), &site(32.0, 10.0), &s);
        assert_eq!(o.building_a, [10.0; 3]);
        assert_eq!(o.available_a, [22.0; 3]);
        for d in &o.decisions {
            assert!(close(d.limit_a, 7.3) && !d.paused && d.changed, "{d:?}");
        }
        assert!(o.allocated_a.iter().all(|&x| close(x, 21.9)));
        assert_eq!(a.current("b"), Some(7.3));
    }

    #[test]
    fn measured_draw_and_margin_decide_the_room() {
        // Meter 25 A of which 8 A is charger a's own: building 17 A; 32 − 17 − 1 margin = 14 A
        // for two sessions.
        let mut a = Allocator::new(settings(1.0, 5, 300, 1.0));
        let mut first = session("a", ALL, 16.0, 1);
        first.draw_a = Some([8.0; 3]);
        let s = vec![first, session("b", ALL, 16.0, 1)];
        let o = a.allocate(Instant::now(), &site(32.0, 25.0), &s);
        assert_eq!(o.building_a, [17.0; 3]);
        assert_eq!(o.available_a, [14.0; 3]);
        assert_eq!(
            limits(&o),
            vec![("a".into(), 7.0, false), ("b".into(), 7.0, false)]
        );
    }

    #[test]
    fn unknown_draw_counts_as_the_limit_in_force() {
        let mut a = Allocator::new(settings(0.0, 0, 300, 0.0));
        let s = vec![session("a", ALL, 16.0, 1)];
        let t = Instant::now();
        assert_eq!(limits(&a.allocate(t, &site(32.0, 10.0), &s))[0].1, 16.0);
        // The meter now includes a's 16 A: the building is still 10 A.
        let o = a.allocate(t + Duration::from_secs(1), &site(32.0, 26.0), &s);
        assert_eq!(o.building_a, [10.0; 3]);
        assert_eq!(o.decisions[0].limit_a, 16.0);
        assert!(!o.decisions[0].changed);
    }

    #[test]
    fn weights_share_in_proportion() {
        let mut a = Allocator::new(settings(1.0, 5, 300, 0.0));
        let s = vec![session("lo", ALL, 32.0, 1), session("hi", ALL, 32.0, 2)];
        let o = a.allocate(Instant::now(), &site(30.0, 0.0), &s);
        assert_eq!(
            limits(&o),
            vec![("lo".into(), 10.0, false), ("hi".into(), 20.0, false)]
        );
    }

    #[test]
    fn a_capped_session_leaves_its_room_to_others() {
        let mut a = Allocator::new(settings(1.0, 5, 300, 0.0));
        let s = vec![session("small", ALL, 8.0, 1), session("big", ALL, 32.0, 1)];
        let o = a.allocate(Instant::now(), &site(30.0, 0.0), &s);
        assert_eq!(
            limits(&o),
            vec![("small".into(), 8.0, false), ("big".into(), 22.0, false)]
        );
    }

    #[test]
    fn one_full_phase_does_not_hold_back_the_others() {
        // L1 has 20 A for l1 and the three-phase car: 10 A each. L2 has 40 A, of which the
        // three-phase car takes its 10 A: l2 gets the remaining 30 A.
        let mut a = Allocator::new(settings(1.0, 5, 300, 0.0));
        let s = vec![
            session("l1", [true, false, false], 32.0, 1),
            session("three", ALL, 32.0, 1),
            session("l2", [false, true, false], 32.0, 1),
        ];
        let o = a.allocate(
            Instant::now(),
            &Site {
                grid_limit_a: [20.0, 40.0, 40.0],
                meter_a: [0.0; 3],
            },
            &s,
        );
        assert_eq!(
            limits(&o),
            vec![
                ("l1".into(), 10.0, false),
                ("three".into(), 10.0, false),
                ("l2".into(), 30.0, false)
            ]
        );
        assert_eq!(o.allocated_a, [20.0, 40.0, 10.0]);
    }

    #[test]
    fn minimums_that_do_not_fit_take_turns() {
        // 16 A holds two 6 A minimums out of three.
        let mut a = Allocator::new(settings(1.0, 5, 300, 0.0));
        let s: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| session(id, ALL, 16.0, 1))
            .collect();
        let t0 = Instant::now();
        let rot = Duration::from_secs(300);
        let o = a.allocate(t0, &site(16.0, 0.0), &s);
        assert_eq!(
            limits(&o),
            vec![
                ("a".into(), 8.0, false),
                ("b".into(), 8.0, false),
                ("c".into(), 0.0, true)
            ]
        );
        // Within the slot nothing moves.
        let o = a.allocate(t0 + rot / 2, &site(16.0, 16.0), &s);
        assert!(o.decisions.iter().all(|d| !d.changed));
        // c has waited longest; of a and b, a keeps going (tie broken by id).
        let o = a.allocate(t0 + rot, &site(16.0, 16.0), &s);
        assert_eq!(
            limits(&o),
            vec![
                ("a".into(), 8.0, false),
                ("b".into(), 0.0, true),
                ("c".into(), 8.0, false)
            ]
        );
        assert!(o.decisions[1].changed && o.decisions[2].changed && !o.decisions[0].changed);
        // b has waited longest; a has had the longest turn.
        let o = a.allocate(t0 + rot * 2, &site(16.0, 16.0), &s);
        assert_eq!(
            limits(&o),
            vec![
                ("a".into(), 0.0, true),
                ("b".into(), 8.0, false),
                ("c".into(), 8.0, false)
            ]
        );
    }

    #[test]
    fn priority_breaks_ties_between_new_sessions() {
        let mut a = Allocator::new(settings(1.0, 5, 300, 0.0));
        let s = vec![session("a", ALL, 16.0, 1), session("b", ALL, 16.0, 3)];
        let o = a.allocate(Instant::now(), &site(10.0, 0.0), &s);
        assert_eq!(
            limits(&o),
            vec![("a".into(), 0.0, true), ("b".into(), 10.0, false)]
        );
    }

    #[test]
    fn a_waiting_three_phase_session_is_not_overtaken_for_ever() {
        // The three-phase car waits for L1, which a single-phase car holds. A newcomer on L2
        // could fit, but L2 is reserved for the car that has waited longer.
        let mut a = Allocator::new(settings(0.0, 0, 300, 0.0));
        let t0 = Instant::now();
        let grid = site(10.0, 0.0);
        let holder = vec![session("l1", [true, false, false], 16.0, 1)];
        a.allocate(t0, &grid, &holder);
        let mut s = holder.clone();
        s.push(session("three", ALL, 16.0, 1));
        a.allocate(t0 + Duration::from_secs(1), &grid, &s);
        s.push(session("l2", [false, true, false], 16.0, 5));
        let o = a.allocate(t0 + Duration::from_secs(2), &grid, &s);
        assert_eq!(
            limits(&o),
            vec![
                ("l1".into(), 10.0, false),
                ("three".into(), 0.0, true),
                ("l2".into(), 0.0, true)
            ]
        );
        // Once l1's slot is over, the three-phase car comes first.
        let o = a.allocate(t0 + Duration::from_secs(300), &grid, &s);
        assert_eq!(
            limits(&o),
            vec![
                ("l1".into(), 0.0, true),
                ("three".into(), 10.0, false),
                ("l2".into(), 0.0, true)
            ]
        );
    }

    #[test]
    fn increases_wait_for_deadband_and_interval_decreases_do_not() {
        let mut a = Allocator::new(settings(1.0, 10, 300, 0.0));
        let mut s = session("a", ALL, 32.0, 1);
        s.draw_a = Some([0.0; 3]);
        let s = vec![s];
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let step = |a: &mut Allocator, secs, building| {
            let d = a.allocate(at(secs), &site(20.0, building), &s).decisions;
            (d[0].limit_a, d[0].changed)
        };
        assert_eq!(step(&mut a, 0, 10.0), (10.0, true));
        // 0.5 A more: within the deadband.
        assert_eq!(step(&mut a, 11, 9.5), (10.0, false));
        // 2 A more but the interval since the last change has not passed.
        a.allocate(at(12), &site(20.0, 12.0), &s);
        assert_eq!(a.current("a"), Some(8.0));
        assert_eq!(step(&mut a, 13, 8.0), (8.0, false));
        assert_eq!(step(&mut a, 22, 8.0), (12.0, true));
        // A decrease follows at once.
        assert_eq!(step(&mut a, 23, 12.5), (7.5, true));
        assert_eq!(a.current("a"), Some(7.5));
    }

    #[test]
    fn pause_and_resume_are_applied_at_once() {
        let mut a = Allocator::new(settings(5.0, 60, 300, 0.0));
        let mut s = session("a", ALL, 16.0, 1);
        s.draw_a = Some([0.0; 3]);
        let s = vec![s];
        let t0 = Instant::now();
        a.allocate(t0, &site(20.0, 10.0), &s);
        let d = &a
            .allocate(t0 + Duration::from_secs(1), &site(20.0, 16.0), &s)
            .decisions[0];
        assert!(d.paused && d.changed && d.limit_a == 0.0);
        let d = &a
            .allocate(t0 + Duration::from_secs(2), &site(20.0, 10.0), &s)
            .decisions[0];
        assert!(!d.paused && d.changed && d.limit_a == 10.0);
        let d = &a
            .allocate(t0 + Duration::from_secs(3), &site(20.0, 10.0), &s)
            .decisions[0];
        assert!(!d.changed);
    }

    #[test]
    fn csms_limit_lowers_never_raises() {
        let mut a = Allocator::new(settings(1.0, 5, 300, 0.0));
        let mut low = session("low", ALL, 16.0, 1);
        low.csms_limit_a = Some(10.0);
        let mut high = session("high", ALL, 16.0, 1);
        high.csms_limit_a = Some(40.0);
        let mut tiny = session("tiny", ALL, 16.0, 1);
        tiny.csms_limit_a = Some(4.0);
        let o = a.allocate(Instant::now(), &site(100.0, 0.0), &[low, high, tiny]);
        assert_eq!(
            limits(&o),
            vec![
                ("low".into(), 10.0, false),
                ("high".into(), 16.0, false),
                ("tiny".into(), 4.0, false)
            ]
        );
    }

    #[test]
    fn forget_starts_afresh() {
        let mut a = Allocator::new(settings(1.0, 5, 300, 0.0));
        let s = vec![session("a", ALL, 16.0, 1)];
        let t = Instant::now();
        a.allocate(t, &site(32.0, 0.0), &s);
        assert!(!a.allocate(t, &site(32.0, 16.0), &s).decisions[0].changed);
        a.forget("a");
        assert_eq!(a.current("a"), None);
        assert!(a.allocate(t, &site(32.0, 0.0), &s).decisions[0].changed);
    }

    #[test]
    fn unreadable_or_odd_inputs_allow_less_not_more() {
        let mut a = Allocator::new(settings(f64::NAN, 5, 300, f64::NAN));
        let mut nan_max = session("nan", [true, false, false], f64::NAN, 0);
        nan_max.min_a = f64::NAN;
        let s = vec![
            session("l1", [true, false, false], 16.0, 0),
            session("three", ALL, 16.0, 1),
            session("none", [false; 3], f64::INFINITY, 1),
            nan_max,
            session("l1", ALL, 16.0, 1),
        ];
        let o = a.allocate(
            Instant::now(),
            &Site {
                grid_limit_a: [32.0, 32.0, f64::INFINITY],
                meter_a: [0.0, f64::NAN, 0.0],
            },
            &s,
        );
        assert_eq!(o.available_a, [32.0, 0.0, 0.0]);
        assert_eq!(
            limits(&o),
            vec![
                ("l1".into(), 16.0, false),
                ("three".into(), 0.0, true),
                ("none".into(), 0.0, true),
                ("nan".into(), 0.0, false)
            ]
        );
    }

    // ---- properties ----

    /// Amps on the 0.1 A grid, as configuration and profiles carry them.
    fn amps(max_deci: u32) -> impl Strategy<Value = f64> {
        (0..=max_deci).prop_map(|d| f64::from(d) / 10.0)
    }

    fn any_session() -> impl Strategy<Value = SessionInput> {
        (
            1u8..8,
            amps(100),
            amps(400),
            0u32..6,
            proptest::option::of(amps(400)),
            proptest::option::of([amps(300), amps(300), amps(300)]),
        )
            .prop_map(|(mask, min_a, max_a, priority, csms_limit_a, draw_a)| {
                let phases = [mask & 1 != 0, mask & 2 != 0, mask & 4 != 0];
                SessionInput {
                    id: String::new(),
                    phases,
                    min_a,
                    max_a,
                    priority,
                    csms_limit_a,
                    draw_a: draw_a
                        .map(|d| std::array::from_fn(|p| if phases[p] { d[p] } else { 0.0 })),
                }
            })
    }

    fn sessions(max: usize) -> impl Strategy<Value = Vec<SessionInput>> {
        proptest::collection::vec(any_session(), 0..max).prop_map(|mut v| {
            for (i, s) in v.iter_mut().enumerate() {
                s.id = format!("s{i}");
            }
            v
        })
    }

    fn any_site() -> impl Strategy<Value = Site> {
        (
            [amps(1500), amps(1500), amps(1500)],
            [amps(2000), amps(2000), amps(2000)],
        )
            .prop_map(|(grid_limit_a, meter_a)| Site {
                grid_limit_a,
                meter_a,
            })
    }

    fn any_settings() -> impl Strategy<Value = Settings> {
        (amps(50), 0u64..20, 1u64..600, amps(30)).prop_map(|(d, i, r, m)| settings(d, i, r, m))
    }

    fn effective(s: &SessionInput) -> (f64, f64) {
        let max = s.csms_limit_a.map_or(s.max_a, |c| c.min(s.max_a));
        (s.min_a.min(max), max)
    }

    /// The room per phase as the rules define it, computed apart from the allocator.
    fn room(a: &Allocator, settings: &Settings, site: &Site, s: &[SessionInput]) -> Phases {
        std::array::from_fn(|p| {
            let own: f64 = s
                .iter()
                .map(|x| match x.draw_a {
                    Some(d) => d[p],
                    None if x.phases[p] => a.current(&x.id).unwrap_or(0.0),
                    None => 0.0,
                })
                .sum();
            let building = (site.meter_a[p] - own).max(0.0);
            (site.grid_limit_a[p] - building - settings.margin_a).max(0.0)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Properties 1, 2 and 5 over a few cycles with hysteresis: phases never overloaded,
        /// limits within the effective bounds, never above the CSMS's.
        #[test]
        fn limits_stay_within_room_and_bounds(
            set in any_settings(),
            s in sessions(12),
            steps in proptest::collection::vec(
                (any_site(), 0u64..30, proptest::collection::vec(any::<bool>(), 12)),
                1..5,
            ),
        ) {
            let mut a = Allocator::new(set.clone());
            let mut now = Instant::now();
            for (site, dt, present) in steps {
                now += Duration::from_secs(dt);
                let here: Vec<SessionInput> = s
                    .iter()
                    .zip(&present)
                    .filter(|(_, p)| **p)
                    .map(|(x, _)| x.clone())
                    .collect();
                let room = room(&a, &set, &site, &here);
                let o = a.allocate(now, &site, &here);
                prop_assert_eq!(o.decisions.len(), here.len());
                for (p, &room_p) in room.iter().enumerate() {
                    let sum: f64 = here
                        .iter()
                        .zip(&o.decisions)
                        .filter(|(x, _)| x.phases[p])
                        .map(|(_, d)| d.limit_a)
                        .sum();
                    prop_assert!(sum <= room_p + 1e-6, "phase {} sum {} room {}", p, sum, room_p);
                    prop_assert!(close(o.available_a[p], room_p));
                }
                for (x, d) in here.iter().zip(&o.decisions) {
                    prop_assert_eq!(&x.id, &d.id);
                    let (min, max) = effective(x);
                    if d.paused {
                        prop_assert_eq!(d.limit_a, 0.0);
                    } else {
                        prop_assert!(
                            d.limit_a >= min - 1e-9 && d.limit_a <= max + 1e-9,
                            "{:?} {:?}",
                            x,
                            d
                        );
                    }
                    if let Some(c) = x.csms_limit_a {
                        prop_assert!(d.limit_a <= c + 1e-9);
                    }
                    prop_assert_eq!(a.current(&x.id), Some(d.limit_a));
                }
            }
        }

        /// Property 3: of two sessions alike but for priority, the higher never gets less.
        #[test]
        fn higher_priority_never_gets_less(
            others in sessions(8),
            twin in any_session(),
            lo in 1u32..5,
            extra in 1u32..5,
            site in any_site(),
            margin in amps(30),
        ) {
            let mut s = others;
            let mut low = twin.clone();
            low.id = "low".into();
            low.priority = lo;
            let mut high = twin;
            high.id = "high".into();
            high.priority = lo + extra;
            s.push(low);
            s.push(high);
            let mut a = Allocator::new(settings(0.0, 0, 300, margin));
            let o = a.allocate(Instant::now(), &site, &s);
            let n = o.decisions.len();
            prop_assert!(o.decisions[n - 1].limit_a >= o.decisions[n - 2].limit_a - 1e-9);
        }

        /// Property 4: with room for k minimums and n > k sessions alike (but for priority),
        /// everyone charges within ceil(n/k) + 1 rotations.
        #[test]
        fn rotation_serves_everyone(
            n in 2usize..12,
            k_pick in 0usize..12,
            min in (10u32..=100).prop_map(|d| f64::from(d) / 10.0),
            slack in 0.0f64..0.99,
            rotation_s in 1u64..600,
            priorities in proptest::collection::vec(0u32..6, 12),
        ) {
            let k = 1 + k_pick % (n - 1);
            let s: Vec<SessionInput> = (0..n)
                .map(|i| SessionInput {
                    id: format!("s{i}"),
                    phases: ALL,
                    min_a: min,
                    max_a: 32.0,
                    priority: priorities[i],
                    csms_limit_a: None,
                    draw_a: None,
                })
                .collect();
            let grid = k as f64 * min + slack * min;
            let rotation = Duration::from_secs(rotation_s);
            let mut a = Allocator::new(settings(1.0, 5, rotation_s, 0.0));
            let mut served = vec![false; n];
            let t0 = Instant::now();
            for step in 0..(n.div_ceil(k) + 1) as u32 {
                let o = a.allocate(t0 + rotation * step, &site(grid, 0.0), &s);
                prop_assert_eq!(o.decisions.iter().filter(|d| !d.paused).count(), k);
                for (i, d) in o.decisions.iter().enumerate() {
                    served[i] |= !d.paused;
                }
            }
            prop_assert!(served.iter().all(|&x| x), "{:?}", served);
        }
    }
}
