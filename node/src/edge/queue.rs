//! The edge's per-charger queues of journaled messages, in memory, with each head's send state;
//! the store holds the same entries on disk (`journal`).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use routing::LinkId;

use super::journal::Entry;

/// The charger's CALL that waits for a queued message's answer.
#[derive(Debug, Clone)]
pub struct Waiter {
    pub link: LinkId,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendState {
    Idle,
    InFlight {
        deadline: Instant,
    },
    /// The answer is being committed; nothing more is sent for it.
    Settling,
}

/// How a queued message is leaving the queue (kept until the store has committed it).
#[derive(Debug, Clone)]
pub enum Settling {
    /// The CSMS's CALLRESULT payload.
    Answered(String),
    /// The CSMS's CALLERROR, as the plain frame to relay to the waiting charger.
    Refused(String),
    /// Given up; why.
    Dead(String),
}

#[derive(Debug)]
pub struct Queued {
    pub entry: Entry,
    pub state: SendState,
    pub waiter: Option<Waiter>,
    /// CALLERRORs the CSMS gave this message.
    pub attempts: u64,
    pub retry_at: Option<Instant>,
    /// The charger was answered by the edge for this message (it may hold a local 1.6 id).
    pub answered_locally: bool,
    /// Set while the store commits the message's end.
    pub settling: Option<Settling>,
    /// When this run of the node queued it; `None` for a message loaded from the store at start.
    pub queued_at: Option<Instant>,
}

/// Every charger's queued messages, in send order (a boot first), in memory; the store has
/// the same entries on disk.
#[derive(Debug, Default)]
pub struct Queues {
    by_charger: HashMap<String, VecDeque<Queued>>,
    len: usize,
}

impl Queues {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a journaled message behind the others of its priority, but never ahead of one that
    /// is already on its way.
    pub fn push(&mut self, entry: Entry, queued_at: Option<Instant>) {
        let queue = self.by_charger.entry(entry.charger.clone()).or_default();
        let at = queue
            .iter()
            .position(|q| q.state == SendState::Idle && q.entry.priority > entry.priority)
            .unwrap_or(queue.len());
        queue.insert(
            at,
            Queued {
                entry,
                state: SendState::Idle,
                waiter: None,
                attempts: 0,
                retry_at: None,
                answered_locally: false,
                settling: None,
                queued_at,
            },
        );
        self.len += 1;
    }

    /// Drops a message that a newer one coalesced away, unless it is already on its way.
    pub fn remove_idle(&mut self, charger: &str, seq: u64) {
        if let Some(queue) = self.by_charger.get_mut(charger)
            && let Some(at) = queue
                .iter()
                .position(|q| q.entry.seq == seq && q.state == SendState::Idle)
        {
            queue.remove(at);
            self.len -= 1;
        }
    }

    pub fn head(&self, charger: &str) -> Option<&Queued> {
        self.by_charger.get(charger)?.front()
    }

    pub fn head_mut(&mut self, charger: &str) -> Option<&mut Queued> {
        self.by_charger.get_mut(charger)?.front_mut()
    }

    pub fn get(&self, charger: &str, seq: u64) -> Option<&Queued> {
        self.by_charger
            .get(charger)?
            .iter()
            .find(|q| q.entry.seq == seq)
    }

    pub fn get_mut(&mut self, charger: &str, seq: u64) -> Option<&mut Queued> {
        self.by_charger
            .get_mut(charger)?
            .iter_mut()
            .find(|q| q.entry.seq == seq)
    }

    /// Removes the head once its settling is durable.
    pub fn pop(&mut self, charger: &str, seq: u64) -> Option<Queued> {
        let queue = self.by_charger.get_mut(charger)?;
        if queue.front().is_none_or(|q| q.entry.seq != seq) {
            return None;
        }
        let done = queue.pop_front();
        if queue.is_empty() {
            self.by_charger.remove(charger);
        }
        self.len -= 1;
        done
    }

    pub fn chargers(&self) -> impl Iterator<Item = &String> {
        self.by_charger.keys()
    }

    pub fn heads(&self) -> impl Iterator<Item = &Queued> {
        self.by_charger.values().filter_map(|q| q.front())
    }

    /// The heads of all queues (mutable), for timers and link loss.
    pub fn heads_mut(&mut self) -> impl Iterator<Item = &mut Queued> {
        self.by_charger.values_mut().filter_map(|q| q.front_mut())
    }

    /// The charger's connection is gone: nobody waits on it any more.
    pub fn forget_waiters(&mut self, link: LinkId) {
        for queue in self.by_charger.values_mut() {
            for q in queue.iter_mut() {
                if q.waiter.as_ref().is_some_and(|w| w.link == link) {
                    q.waiter = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, priority: u8) -> Entry {
        Entry {
            seq,
            local_tx: None,
            message: crate::edge::journal::Message {
                charger: "CP".into(),
                version: "ocpp1.6".into(),
                action: "MeterValues".into(),
                upstream_id: format!("u{seq}"),
                payload: "{}".into(),
                dedup: None,
                coalesce: None,
                priority,
            },
        }
    }

    #[test]
    fn a_boot_goes_first_but_never_ahead_of_a_message_on_its_way() {
        let mut q = Queues::default();
        q.push(entry(1, 1), None);
        q.push(entry(2, 1), None);
        q.head_mut("CP").unwrap().state = SendState::InFlight {
            deadline: Instant::now(),
        };
        q.push(entry(3, 0), None);
        let order: Vec<u64> = q.by_charger["CP"].iter().map(|e| e.entry.seq).collect();
        assert_eq!(order, [1, 3, 2]);
        assert!(q.pop("CP", 3).is_none(), "only the head pops");
        assert!(q.pop("CP", 1).is_some());
        q.remove_idle("CP", 3);
        assert_eq!(q.len(), 1);
        assert_eq!(q.head("CP").unwrap().entry.seq, 2);
    }
}
