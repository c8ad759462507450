//! Message counters of the simulated CSMS.
//!
//! Each connection owns its counters and is their only writer, so counting a frame is an
//! uncontended relaxed increment: no lock and no shared cache line on the per-frame path. The
//! registry lock is taken only when a connection opens or closes and when a summary is printed,
//! which adds up the live connections and the totals folded in by closed ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::answers::{ACTIONS, COUNT};

/// One connection's counters.
pub struct Counters {
    /// CALLs answered with a result, by index in [`ACTIONS`].
    actions: [AtomicU64; COUNT],
    /// CALLs of actions the simulator does not know (answered NotImplemented).
    not_implemented: AtomicU64,
    /// SEND frames (2.1), which get no answer.
    sends: AtomicU64,
    /// Frames that could not be decoded or were not allowed in the version.
    bad_frames: AtomicU64,
    /// CSMS-initiated CALLs sent (`--on-boot`), and how they were answered.
    csms_sent: AtomicU64,
    csms_answered: AtomicU64,
    csms_errors: AtomicU64,
}

/// Which counter to increment.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    Action(usize),
    NotImplemented,
    Send,
    BadFrame,
    CsmsSent,
    CsmsAnswered,
    CsmsError,
}

impl Default for Counters {
    // Hand-written: `Default` is derived for arrays of at most 32 elements.
    fn default() -> Self {
        Counters {
            actions: std::array::from_fn(|_| AtomicU64::new(0)),
            not_implemented: AtomicU64::new(0),
            sends: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            csms_sent: AtomicU64::new(0),
            csms_answered: AtomicU64::new(0),
            csms_errors: AtomicU64::new(0),
        }
    }
}

impl Counters {
    pub fn count(&self, event: Event) {
        let counter = match event {
            Event::Action(index) => &self.actions[index],
            Event::NotImplemented => &self.not_implemented,
            Event::Send => &self.sends,
            Event::BadFrame => &self.bad_frames,
            Event::CsmsSent => &self.csms_sent,
            Event::CsmsAnswered => &self.csms_answered,
            Event::CsmsError => &self.csms_errors,
        };
        // Relaxed: the counters are independent tallies, read only for reports.
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Plain sums of [`Counters`], for reports and for connections that have closed.
#[derive(Clone)]
struct Totals {
    actions: [u64; COUNT],
    not_implemented: u64,
    sends: u64,
    bad_frames: u64,
    csms_sent: u64,
    csms_answered: u64,
    csms_errors: u64,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            actions: [0; COUNT],
            not_implemented: 0,
            sends: 0,
            bad_frames: 0,
            csms_sent: 0,
            csms_answered: 0,
            csms_errors: 0,
        }
    }
}

impl Totals {
    fn add(&mut self, c: &Counters) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (sum, counter) in self.actions.iter_mut().zip(&c.actions) {
            *sum += get(counter);
        }
        self.not_implemented += get(&c.not_implemented);
        self.sends += get(&c.sends);
        self.bad_frames += get(&c.bad_frames);
        self.csms_sent += get(&c.csms_sent);
        self.csms_answered += get(&c.csms_answered);
        self.csms_errors += get(&c.csms_errors);
    }

    fn calls(&self) -> u64 {
        self.actions.iter().sum::<u64>() + self.not_implemented
    }
}

/// A live connection as the registry sees it.
pub struct Conn {
    pub charger: String,
    pub counters: Counters,
}

#[derive(Default)]
struct Registry {
    live: HashMap<u64, Arc<Conn>>,
    closed: Totals,
    /// CALLs per charger id from closed connections (only with `--by-charger`).
    closed_by_charger: HashMap<String, u64>,
}

pub struct Stats {
    started: Instant,
    by_charger: bool,
    next_key: AtomicU64,
    /// WebSocket upgrades accepted so far.
    connections: AtomicU64,
    /// Upgrades refused (unknown charger path, refused id, no acceptable subprotocol).
    refused: AtomicU64,
    registry: Mutex<Registry>,
    /// Transaction messages seen, by (charger, action, payload): the same content twice is a
    /// duplicate a relay let through (docker topology tests check for none).
    transaction_messages: Mutex<HashMap<String, u64>>,
}

/// Actions whose every message must reach the CSMS exactly once.
pub const TRANSACTION_ACTIONS: [&str; 4] = [
    "StartTransaction",
    "StopTransaction",
    "MeterValues",
    "TransactionEvent",
];

impl Stats {
    pub fn new(by_charger: bool) -> Self {
        Stats {
            started: Instant::now(),
            by_charger,
            next_key: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            registry: Mutex::default(),
            transaction_messages: Mutex::default(),
        }
    }

    /// Records a transaction message; counts are in the summary's `transaction_messages`.
    pub fn transaction_message(&self, charger: &str, action: &str, payload: &str) {
        let key = format!("{charger}\0{action}\0{payload}");
        let mut seen = self
            .transaction_messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *seen.entry(key).or_default() += 1;
    }

    /// A poisoned lock only means a report panicked half-way; the counts are still usable.
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // Upgrades are counted when decided, before the answer goes out, so a client that has
    // its answer can rely on a later summary including it.
    pub fn accepted(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers a new connection; dropping the registration folds its counts into the totals.
    pub fn register(self: &Arc<Self>, charger: String) -> Registration {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            charger,
            counters: Counters::default(),
        });
        self.lock().live.insert(key, Arc::clone(&conn));
        Registration {
            stats: Arc::clone(self),
            key,
            conn,
        }
    }

    /// The summary line: `{"connections":..,"calls":..,"by_action":{...},...}`.
    pub fn summary(&self) -> Value {
        let registry = self.lock();
        let mut totals = registry.closed.clone();
        for conn in registry.live.values() {
            totals.add(&conn.counters);
        }
        let by_action: Map<String, Value> = ACTIONS
            .iter()
            .zip(totals.actions)
            .filter(|(_, n)| *n > 0)
            .map(|(action, n)| (action.name.to_owned(), json!(n)))
            .collect();
        let mut summary = json!({
            "connections": self.connections.load(Ordering::Relaxed),
            "active": registry.live.len(),
            "refused": self.refused.load(Ordering::Relaxed),
            "calls": totals.calls(),
            "by_action": by_action,
            "not_implemented": totals.not_implemented,
            "sends": totals.sends,
            "bad_frames": totals.bad_frames,
            "csms_calls_sent": totals.csms_sent,
            "csms_calls_answered": totals.csms_answered,
            "csms_calls_errors": totals.csms_errors,
            "elapsed_ms": self.started.elapsed().as_millis() as u64,
        });
        {
            let seen = self
                .transaction_messages
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let total: u64 = seen.values().sum();
            summary["transaction_messages"] = json!({
                "total": total,
                "distinct": seen.len(),
                "duplicated": total - seen.len() as u64,
            });
        }
        if self.by_charger {
            let mut per_charger = registry.closed_by_charger.clone();
            for conn in registry.live.values() {
                let mut one = Totals::default();
                one.add(&conn.counters);
                *per_charger.entry(conn.charger.clone()).or_default() += one.calls();
            }
            summary["by_charger"] = json!(per_charger);
        }
        summary
    }
}

/// A registered connection; unregisters on drop, also when its task panics or is cancelled.
pub struct Registration {
    stats: Arc<Stats>,
    key: u64,
    pub conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = self.stats.lock();
        registry.live.remove(&self.key);
        registry.closed.add(&self.conn.counters);
        if self.stats.by_charger {
            let mut one = Totals::default();
            one.add(&self.conn.counters);
            *registry
                .closed_by_charger
                .entry(self.conn.charger.clone())
                .or_default() += one.calls();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_closed_connections_add_up() {
        let stats = Arc::new(Stats::new(true));
        for _ in 0..3 {
            stats.accepted();
        }
        let a = stats.register("A".into());
        let b = stats.register("B".into());
        a.conn.counters.count(Event::Action(0));
        a.conn.counters.count(Event::NotImplemented);
        b.conn.counters.count(Event::Action(0));
        drop(a);
        let again = stats.register("A".into());
        again.conn.counters.count(Event::Action(1));
        let s = stats.summary();
        assert_eq!(s["connections"], 3);
        assert_eq!(s["active"], 2);
        assert_eq!(s["calls"], 4);
        assert_eq!(s["not_implemented"], 1);
        assert_eq!(s["by_action"][ACTIONS[0].name], 2);
        assert_eq!(s["by_action"][ACTIONS[1].name], 1);
        assert_eq!(s["by_charger"]["A"], 3);
        assert_eq!(s["by_charger"]["B"], 1);
    }
}
