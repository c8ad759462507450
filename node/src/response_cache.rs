//! The hub's memory of transaction messages it relayed to the CSMS, keyed (charger, upstream
//! id) (ARCHITECTURE §6.3). An edge replays a journaled message under the id it was first sent
//! with, so a replay of a message the CSMS already answered is answered from here, and one the
//! CSMS is still working on is not sent twice.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

type Key = (String, String);

/// Most answers kept; beyond it the oldest go first.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New: send it to the CSMS.
    Forward,
    /// The CSMS has it and has not answered yet: drop the copy, the answer will come.
    InFlight,
    /// Already answered: this is the CSMS's reply frame (plain OCPP-J text).
    Answered(String),
}

pub struct ResponseCache {
    retention: Duration,
    in_flight_window: Duration,
    in_flight: HashMap<Key, Instant>,
    answered: HashMap<Key, String>,
    /// Answers in the order they were kept, for expiry.
    order: VecDeque<(Instant, Key)>,
}

impl ResponseCache {
    /// `retention`: how long answers are kept (at least the grace period). `in_flight_window`:
    /// how long an unanswered message counts as on its way (the request timeout): after it the
    /// message is presumed lost with its socket, and a replay goes to the CSMS again.
    pub fn new(retention: Duration, in_flight_window: Duration) -> Self {
        ResponseCache {
            retention,
            in_flight_window,
            in_flight: HashMap::new(),
            answered: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// A transaction message from an edge toward the CSMS.
    pub fn on_call(&mut self, charger: &str, id: &str, now: Instant) -> Verdict {
        let key = (charger.to_owned(), id.to_owned());
        if let Some(reply) = self.answered.get(&key) {
            return Verdict::Answered(reply.clone());
        }
        if let Some(since) = self.in_flight.get(&key)
            && now.duration_since(*since) < self.in_flight_window
        {
            return Verdict::InFlight;
        }
        if self.in_flight.len() < MAX_ENTRIES || self.in_flight.contains_key(&key) {
            self.in_flight.insert(key, now);
        }
        Verdict::Forward
    }

    /// The CSMS's answer to a charger's CALL; kept only if it answers a tracked message.
    pub fn on_reply(&mut self, charger: &str, id: &str, reply: &str, now: Instant) {
        if self.in_flight.is_empty() {
            return;
        }
        let key = (charger.to_owned(), id.to_owned());
        if self.in_flight.remove(&key).is_none() {
            return;
        }
        while self.answered.len() >= MAX_ENTRIES {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.answered.remove(&old);
                }
                None => break,
            }
        }
        self.answered.insert(key.clone(), reply.to_owned());
        self.order.push_back((now, key));
    }

    /// The CSMS refused a message: not kept, so that a retry reaches the CSMS again (a refusal
    /// may be transient, and each one counts toward the edge's attempts).
    pub fn on_error(&mut self, charger: &str, id: &str) {
        if !self.in_flight.is_empty() {
            self.in_flight.remove(&(charger.to_owned(), id.to_owned()));
        }
    }

    /// The charger's CSMS socket closed: what it had in flight will never be answered there.
    pub fn csms_closed(&mut self, charger: &str) {
        self.in_flight.retain(|(c, _), _| c != charger);
    }

    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.retention {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.answered.remove(&key);
            }
        }
        // Kept as long as answers: a late answer is still worth keeping for a replay.
        let retention = self.retention;
        self.in_flight
            .retain(|_, since| now.duration_since(*since) < retention);
    }

    pub fn len(&self) -> usize {
        self.answered.len() + self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_is_answered_from_the_cache_then_forgotten() {
        let t0 = Instant::now();
        let mut c = ResponseCache::new(Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(c.on_call("CP", "u1", t0), Verdict::Forward);
        assert_eq!(c.on_call("CP", "u1", t0), Verdict::InFlight);
        c.on_reply("CP", "other", "[3,\"other\",{}]", t0);
        c.on_reply("CP", "u1", "[3,\"u1\",{}]", t0);
        assert_eq!(c.on_call("CP", "u2", t0), Verdict::Forward);
        c.on_error("CP", "u2");
        assert_eq!(
            c.on_call("CP", "u2", t0),
            Verdict::Forward,
            "a refusal is not kept"
        );
        assert_eq!(
            c.on_call("CP", "u1", t0),
            Verdict::Answered("[3,\"u1\",{}]".into())
        );
        assert_eq!(c.on_call("CP2", "u1", t0), Verdict::Forward, "per charger");
        c.csms_closed("CP2");
        assert_eq!(c.on_call("CP2", "u1", t0), Verdict::Forward);
        assert_eq!(c.on_call("CP", "u3", t0), Verdict::Forward);
        assert_eq!(
            c.on_call("CP", "u3", t0 + Duration::from_secs(6)),
            Verdict::Forward,
            "unanswered past the window: presumed lost, sent again"
        );
        c.expire(t0 + Duration::from_secs(17));
        assert!(c.is_empty());
        assert_eq!(c.on_call("CP", "u1", t0), Verdict::Forward);
    }
}
