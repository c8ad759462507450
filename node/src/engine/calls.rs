//! CALLs the node originates itself (ARCHITECTURE §6.1): the one API by which any part of the
//! node (the outbox's replays, and later load management, firmware and its own security
//! events) sends a CALL toward a charger or upstream and gets the answer back.
//!
//! A CALL toward a charger on this node joins that charger's queue behind the CSMS's CALLs
//! (one outstanding per direction); one toward anyone else is routed like any frame. The answer
//! is recognised by (originator, message id) before routing, so it never reaches a plain peer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use routing::LinkId;

use super::token::Token;

/// Where a node-originated CALL goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Whatever serves as the CSMS (`dest = "CSMS"`), by the default route.
    Csms,
    /// A node or charger id, routed by the table (a charger on this node joins its queue).
    Id(String),
}

#[derive(Debug, Clone)]
pub struct NodeCall {
    pub target: Target,
    /// `path[0]`: this node (`None`), or a charger the node speaks for (the outbox replays a
    /// charger's message under the charger's own id).
    pub on_behalf: Option<String>,
    /// The message id; `None` gives a fresh UUID v4.
    pub id: Option<String>,
    pub action: String,
    /// The JSON payload, as it will be sent.
    pub payload: String,
    /// `None`: no deadline here, the caller keeps its own (a late answer is still delivered).
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The CALLRESULT payload.
    Result(String),
    /// A CALLERROR or CALLRESULTERROR; `from` is the error's `path[0]` (who generated it).
    Error {
        code: String,
        description: String,
        /// The error's details object, as JSON text.
        details: String,
        from: String,
    },
    /// Not sent: no route, hop limit, or the target's queue is full (the reason says which).
    NotSent(String),
    /// The link it went out on closed before an answer came.
    LinkLost,
    Timeout,
}

/// Who waits for a CALL's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A stage of the engine, by its index; the token is the stage's own.
    Stage(usize, u64),
    /// Outside the engine: the answer goes out as [`super::io::Action::CallDone`].
    External(Token),
}

#[derive(Debug)]
struct Pending {
    caller: Caller,
    deadline: Option<Instant>,
    /// The link the CALL left on; its loss fails the CALL.
    via: Option<LinkId>,
}

/// Node-originated CALLs in flight, keyed (originator, message id).
#[derive(Debug, Default)]
pub struct Calls {
    pending: HashMap<String, HashMap<String, Pending>>,
    len: usize,
}

/// Most node-originated CALLs in flight; beyond it new ones are not sent.
pub const MAX_CALLS: usize = 100_000;

/// The table is full: the CALL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooMany;

impl Calls {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Records a CALL. A CALL under a key already in flight (a resend) takes the key over.
    pub fn insert(
        &mut self,
        origin: &str,
        id: &str,
        caller: Caller,
        deadline: Option<Instant>,
    ) -> Result<Option<Caller>, TooMany> {
        if self.len >= MAX_CALLS && !self.contains(origin, id) {
            return Err(TooMany);
        }
        let by_id = self.pending.entry(origin.to_owned()).or_default();
        let old = by_id.insert(
            id.to_owned(),
            Pending {
                caller,
                deadline,
                via: None,
            },
        );
        if old.is_none() {
            self.len += 1;
        }
        Ok(old.map(|p| p.caller))
    }

    pub fn contains(&self, origin: &str, id: &str) -> bool {
        self.pending.get(origin).is_some_and(|m| m.contains_key(id))
    }

    pub fn sent_via(&mut self, origin: &str, id: &str, link: LinkId) {
        if let Some(p) = self.pending.get_mut(origin).and_then(|m| m.get_mut(id)) {
            p.via = Some(link);
        }
    }

    /// The caller waiting for (origin, id), removed.
    pub fn take(&mut self, origin: &str, id: &str) -> Option<Caller> {
        let by_id = self.pending.get_mut(origin)?;
        let p = by_id.remove(id)?;
        if by_id.is_empty() {
            self.pending.remove(origin);
        }
        self.len -= 1;
        Some(p.caller)
    }

    /// Forgets a CALL its caller no longer waits for.
    pub fn cancel(&mut self, caller: Caller) {
        let keys: Vec<(String, String)> = self
            .iter()
            .filter(|(_, _, p)| p.caller == caller)
            .map(|(o, i, _)| (o.to_owned(), i.to_owned()))
            .collect();
        for (o, i) in keys {
            self.take(&o, &i);
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &str, &Pending)> {
        self.pending
            .iter()
            .flat_map(|(o, m)| m.iter().map(move |(i, p)| (o.as_str(), i.as_str(), p)))
    }

    /// The CALLs that went out on `link`, removed.
    pub fn lost(&mut self, link: LinkId) -> Vec<Caller> {
        self.remove_where(|p| p.via == Some(link))
    }

    /// The CALLs past their deadline, removed. Checked on the engine's one-second housekeeping
    /// tick: finding the next deadline exactly would mean a scan per event.
    pub fn expired(&mut self, now: Instant) -> Vec<Caller> {
        self.remove_where(|p| p.deadline.is_some_and(|d| d <= now))
    }

    fn remove_where(&mut self, f: impl Fn(&Pending) -> bool) -> Vec<Caller> {
        if self.len == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        self.pending.retain(|_, by_id| {
            by_id.retain(|_, p| {
                if f(p) {
                    out.push(p.caller);
                    false
                } else {
                    true
                }
            });
            !by_id.is_empty()
        });
        self.len -= out.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resend_takes_the_key_over_and_loss_fails_only_its_link() {
        let mut c = Calls::default();
        let now = Instant::now();
        let a = Caller::Stage(0, 1);
        let b = Caller::Stage(0, 2);
        assert_eq!(c.insert("CP", "m1", a, None), Ok(None));
        assert_eq!(c.insert("CP", "m1", b, None), Ok(Some(a)));
        assert_eq!(c.len(), 1);
        c.insert("node", "m2", Caller::External(Token(7)), Some(now))
            .unwrap();
        c.sent_via("CP", "m1", LinkId(3));
        assert_eq!(c.lost(LinkId(4)), vec![]);
        assert_eq!(c.expired(now), vec![Caller::External(Token(7))]);
        assert_eq!(c.lost(LinkId(3)), vec![b]);
        assert!(c.is_empty());
    }
}
