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
    /// CALLs whose payload names a `signatures` member (end-to-end signatures that reached the
    /// CSMS; a node strips them by default).
    signed: AtomicU64,
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
    Signed,
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
            signed: AtomicU64::new(0),
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
            Event::Signed => &self.signed,
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
    signed: u64,
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
            signed: 0,
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
        self.signed += get(&c.signed);
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
    transaction_messages: Mutex<TransactionMessages>,
}

/// What [`Stats::transaction_message`] keeps.
#[derive(Default)]
struct TransactionMessages {
    /// How often each content key arrived.
    counts: HashMap<String, u64>,
    /// Messages that carried a local (negative) 1.6 transaction id.
    local_ids: u64,
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
    ///
    /// The key is the content a relay must not change or repeat. A 1.6 StopTransaction's or
    /// MeterValues' `transactionId` is left out of it: an edge that answered a StartTransaction
    /// offline rewrites its local id to the CSMS's on replay, and a copy that escaped with the
    /// local id must still count as the same message (a duplicate), not as a new one. Such a
    /// local (negative) id reaching the CSMS is counted apart, as `local_ids`.
    pub fn transaction_message(&self, charger: &str, action: &str, payload: &str) {
        let mut content: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        let mut local_id = false;
        if matches!(action, "StopTransaction" | "MeterValues") {
            if let Some(id) = content
                .as_object_mut()
                .and_then(|o| o.remove("transactionId"))
            {
                local_id = id.as_i64().is_some_and(|id| id < 0);
            }
        }
        // serde_json's map is ordered by key, so the same content always prints the same.
        let key = format!("{charger}\0{action}\0{content}");
        let mut seen = self
            .transaction_messages
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *seen.counts.entry(key).or_default() += 1;
        seen.local_ids += u64::from(local_id);
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
            "signed_calls": totals.signed,
            "elapsed_ms": self.started.elapsed().as_millis() as u64,
        });
        {
            let seen = self
                .transaction_messages
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let total: u64 = seen.counts.values().sum();
            summary["transaction_messages"] = json!({
                "total": total,
                "distinct": seen.counts.len(),
                "duplicated": total - seen.counts.len() as u64,
                "local_ids": seen.local_ids,
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

    #[test]
    fn a_replay_with_a_rewritten_transaction_id_is_a_duplicate() {
        let stats = Stats::new(false);
        let stop = |id: i64| format!(r#"{{"transactionId":{id},"meterStop":9,"timestamp":"t"}}"#);
        stats.transaction_message("A", "StopTransaction", &stop(-1));
        stats.transaction_message("A", "StopTransaction", &stop(17));
        // The same content from another charger, and a start, are distinct messages.
        stats.transaction_message("B", "StopTransaction", &stop(17));
        stats.transaction_message("A", "StartTransaction", r#"{"meterStart":9}"#);
        let tx = &stats.summary()["transaction_messages"];
        assert_eq!(tx["total"], 4);
        assert_eq!(tx["distinct"], 3);
        assert_eq!(tx["duplicated"], 1);
        assert_eq!(tx["local_ids"], 1);
    }

    #[test]
    fn transaction_events_differ_by_seq_no() {
        let stats = Stats::new(false);
        let event =
            |seq: u32| format!(r#"{{"seqNo":{seq},"transactionInfo":{{"transactionId":"x"}}}}"#);
        stats.transaction_message("A", "TransactionEvent", &event(0));
        stats.transaction_message("A", "TransactionEvent", &event(1));
        stats.transaction_message("A", "TransactionEvent", &event(1));
        let tx = &stats.summary()["transaction_messages"];
        assert_eq!(
            (tx["distinct"].as_u64(), tx["duplicated"].as_u64()),
            (Some(2), Some(1))
        );
    }
}
