//! The hub's memory of transaction messages it relayed to the CSMS, keyed (charger, upstream
//! id) (ARCHITECTURE §6.3). An edge replays a journaled message under the id it was first sent
//! with, so a replay of a message the CSMS already answered is answered from here, and one the
//! CSMS is still working on is not sent twice.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Most answers, and most messages in flight, kept; beyond it the oldest answers go first and
/// new messages are not tracked.
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

/// Maps keyed by charger, then by upstream id, so that a lookup borrows its key: the CSMS's
/// replies are checked here one by one, and most are not for a tracked message.
type ByCharger<T> = HashMap<String, HashMap<String, T>>;

pub struct ResponseCache {
    retention: Duration,
    in_flight_window: Duration,
    in_flight: ByCharger<Instant>,
    in_flight_len: usize,
    answered: ByCharger<String>,
    answered_len: usize,
    /// Answers in the order they were kept, for expiry.
    order: VecDeque<(Instant, String, String)>,
}

fn get<'a, T>(map: &'a ByCharger<T>, charger: &str, id: &str) -> Option<&'a T> {
    map.get(charger)?.get(id)
}

fn remove<T>(map: &mut ByCharger<T>, charger: &str, id: &str) -> Option<T> {
    let ids = map.get_mut(charger)?;
    let removed = ids.remove(id);
    if ids.is_empty() {
        map.remove(charger);
    }
    removed
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
            in_flight_len: 0,
            answered: HashMap::new(),
            answered_len: 0,
            order: VecDeque::new(),
        }
    }

    /// A transaction message from an edge toward the CSMS.
    pub fn on_call(&mut self, charger: &str, id: &str, now: Instant) -> Verdict {
        if let Some(reply) = get(&self.answered, charger, id) {
            return Verdict::Answered(reply.clone());
        }
        match get(&self.in_flight, charger, id) {
            Some(since) if now.duration_since(*since) < self.in_flight_window => {
                return Verdict::InFlight;
            }
            Some(_) => {}
            None if self.in_flight_len >= MAX_ENTRIES => return Verdict::Forward,
            None => self.in_flight_len += 1,
        }
        self.in_flight
            .entry(charger.to_owned())
            .or_default()
            .insert(id.to_owned(), now);
        Verdict::Forward
    }

    /// The CSMS's answer to a charger's CALL; kept only if it answers a tracked message.
    pub fn on_reply(&mut self, charger: &str, id: &str, reply: &str, now: Instant) {
        if remove(&mut self.in_flight, charger, id).is_none() {
            return;
        }
        self.in_flight_len -= 1;
        while self.answered_len >= MAX_ENTRIES {
            match self.order.pop_front() {
                Some((_, c, i)) => self.forget_answer(&c, &i),
                None => break,
            }
        }
        let previous = self
            .answered
            .entry(charger.to_owned())
            .or_default()
            .insert(id.to_owned(), reply.to_owned());
        if previous.is_none() {
            self.answered_len += 1;
        }
        self.order
            .push_back((now, charger.to_owned(), id.to_owned()));
    }

    fn forget_answer(&mut self, charger: &str, id: &str) {
        if remove(&mut self.answered, charger, id).is_some() {
            self.answered_len -= 1;
        }
    }

    /// The CSMS refused a message: not kept, so that a retry reaches the CSMS again (a refusal
    /// may be transient, and each one counts toward the edge's attempts).
    pub fn on_error(&mut self, charger: &str, id: &str) {
        if remove(&mut self.in_flight, charger, id).is_some() {
            self.in_flight_len -= 1;
        }
    }

    /// The charger's CSMS socket closed: what it had in flight will never be answered there.
    pub fn csms_closed(&mut self, charger: &str) {
        if let Some(ids) = self.in_flight.remove(charger) {
            self.in_flight_len -= ids.len();
        }
    }

    pub fn expire(&mut self, now: Instant) {
        while let Some((at, _, _)) = self.order.front() {
            if now.duration_since(*at) < self.retention {
                break;
            }
            if let Some((_, charger, id)) = self.order.pop_front() {
                self.forget_answer(&charger, &id);
            }
        }
        // Kept as long as answers: a late answer is still worth keeping for a replay.
        let retention = self.retention;
        for ids in self.in_flight.values_mut() {
            ids.retain(|_, since| now.duration_since(*since) < retention);
        }
        self.in_flight.retain(|_, ids| !ids.is_empty());
        self.in_flight_len = self.in_flight.values().map(HashMap::len).sum();
    }

    pub fn len(&self) -> usize {
        self.answered_len + self.in_flight_len
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
