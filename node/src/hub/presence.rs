//! The hub's CSMS side (ARCHITECTURE §3.4, §6.2): one plain OCPP-J socket to the unmodified
//! CSMS per reachable charger, opened when the charger's route appears and closed when it goes,
//! so the CSMS sees connects and disconnects as if the charger were attached directly.
//!
//! A sub-state machine of the engine: the engine tells it of routes appearing and going, of
//! frames for `"CSMS"` and from the CSMS, and of time; it answers with what to write and which
//! sockets to open or close ([`Effect`]). After an overlay link is lost the sockets of its
//! chargers are kept for a grace period, so that the edge's replays find them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use routing::LinkId;
use routing::correlation::{Correlation, Key, Pending};
use serde_json::{Value, json};
use wire::text::{Frame, OverlayFrame, decode_plain};
use wire::{Limits, MessageType, OcppVersion, Route};

use super::response_cache::{ResponseCache, Verdict};
use crate::edge::classes::{self, Class};

/// Most CSMS CALLs toward chargers waiting for their answer.
const MAX_CALLS: usize = 100_000;

/// Sockets to open and close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Open {
        link: LinkId,
        charger: String,
        version: OcppVersion,
    },
    Close {
        link: LinkId,
    },
}

/// What to do with a frame delivered to `"CSMS"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Write this plain text on the charger's CSMS socket.
    ToCsms {
        link: LinkId,
        text: String,
    },
    /// A replay the CSMS already answered: route this overlay reply (from the CSMS socket).
    FromCache {
        link: LinkId,
        overlay: String,
    },
    /// The charger has no CSMS socket here.
    NotAnnounced,
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
    Refused,
}

struct Socket {
    link: LinkId,
    version: OcppVersion,
    state: State,
    /// The overlay path last seen from the charger (for the status page).
    path: Option<Vec<String>>,
}

/// A CSMS CALL waiting for the charger's answer, answered on timeout by the hub.
struct Waiting {
    link: LinkId,
}

pub struct Presence {
    conn_ids: Arc<AtomicU64>,
    grace_period: Duration,
    request_timeout: Duration,
    limits: Limits,
    sockets: HashMap<String, Socket>,
    by_link: HashMap<LinkId, String>,
    /// Chargers whose edge link was lost, and when their CSMS socket closes.
    grace: HashMap<String, Instant>,
    calls: Correlation<Waiting>,
    responses: ResponseCache,
    effects: Vec<Effect>,
}

impl Presence {
    pub fn new(
        conn_ids: Arc<AtomicU64>,
        grace_period: Duration,
        request_timeout: Duration,
        limits: Limits,
    ) -> Presence {
        Presence {
            conn_ids,
            grace_period,
            request_timeout,
            limits,
            sockets: HashMap::new(),
            by_link: HashMap::new(),
            grace: HashMap::new(),
            calls: Correlation::new(MAX_CALLS),
            // Answers are kept for twice the longer of grace and request timeout, so that a
            // replay after a reconnect finds them.
            responses: ResponseCache::new(
                (grace_period.max(request_timeout) * 2).max(Duration::from_secs(60)),
                request_timeout,
            ),
            effects: Vec::new(),
        }
    }

    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn charger_of(&self, link: LinkId) -> Option<(String, OcppVersion)> {
        let charger = self.by_link.get(&link)?;
        let version = self
            .sockets
            .get(charger)
            .map_or(OcppVersion::V16, |s| s.version);
        Some((charger.clone(), version))
    }

    /// The charger is reachable: its socket opens, unless it is open (or was refused) on the
    /// same version.
    pub fn reachable(&mut self, charger: &str, version: Option<OcppVersion>) {
        self.grace.remove(charger);
        let Some(version) = version else {
            tracing::warn!(
                charger,
                "no OCPP version known for the charger; no CSMS socket"
            );
            return;
        };
        if let Some(existing) = self.sockets.get(charger) {
            if existing.version == version {
                return;
            }
            self.gone(charger);
        }
        let link = LinkId(self.conn_ids.fetch_add(1, Ordering::Relaxed));
        self.sockets.insert(
            charger.to_owned(),
            Socket {
                link,
                version,
                state: State::Connecting,
                path: None,
            },
        );
        self.by_link.insert(link, charger.to_owned());
        self.effects.push(Effect::Open {
            link,
            charger: charger.to_owned(),
            version,
        });
    }

    /// The charger is gone: its socket closes.
    pub fn gone(&mut self, charger: &str) {
        self.grace.remove(charger);
        // What its socket had on the way is lost with it.
        self.responses.csms_closed(charger);
        if let Some(socket) = self.sockets.remove(charger) {
            self.by_link.remove(&socket.link);
            self.effects.push(Effect::Close { link: socket.link });
            tracing::info!(charger, "charger gone: its CSMS socket closes");
        }
    }

    /// The overlay link toward the charger was lost: its socket stays for the grace period.
    pub fn link_lost(&mut self, charger: &str, now: Instant) {
        if self.sockets.contains_key(charger) {
            self.grace
                .insert(charger.to_owned(), now + self.grace_period);
        }
    }

    /// Grace periods that ended without the charger coming back; old cached answers.
    pub fn housekeeping(&mut self, now: Instant, present: impl Fn(&str) -> bool) {
        self.responses.expire(now);
        let due: Vec<String> = self
            .grace
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.grace.remove(&id);
            if !present(&id) {
                self.gone(&id);
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.calls.next_deadline()
    }

    /// CSMS CALLs the charger did not answer in time: the CALLERRORs to write to the CSMS.
    pub fn expire_calls(&mut self, now: Instant) -> Vec<(LinkId, String)> {
        self.calls
            .expire(now)
            .into_iter()
            .map(|(key, pending)| {
                tracing::info!(charger = %key.source, "CSMS CALL to the charger timed out");
                let error = Frame::error(pending.original_id, "GenericError", "timeout");
                (pending.data.link, error.to_plain_string())
            })
            .collect()
    }

    pub fn opened(&mut self, link: LinkId) {
        self.set_state(link, State::Open);
    }

    pub fn closed(&mut self, link: LinkId) {
        if let Some(charger) = self.by_link.get(&link) {
            self.responses.csms_closed(charger);
        }
        self.set_state(link, State::Connecting);
    }

    /// The CSMS refused the charger; the refusal stays on the status page until it is gone.
    pub fn refused(&mut self, link: LinkId) -> Option<String> {
        self.set_state(link, State::Refused);
        self.by_link.get(&link).cloned()
    }

    fn set_state(&mut self, link: LinkId, state: State) {
        if let Some(s) = self
            .by_link
            .get(&link)
            .and_then(|c| self.sockets.get_mut(c))
        {
            s.state = state;
        }
    }

    /// A frame from a charger for the CSMS.
    pub fn deliver(&mut self, frame: &OverlayFrame<'_>, now: Instant) -> Delivery {
        let charger = frame.path.first();
        let Some(socket) = self.sockets.get_mut(charger) else {
            return Delivery::NotAnnounced;
        };
        let ids = frame.path.ids();
        if socket.path.as_ref().is_none_or(|p| {
            p.iter()
                .map(String::as_str)
                .ne(ids.iter().map(|c| c.as_ref()))
        }) {
            socket.path = Some(ids.iter().map(|c| c.to_string()).collect());
        }
        let (link, version) = (socket.link, socket.version);
        match frame.frame.message_type() {
            MessageType::Call => {
                let journaled = frame
                    .frame
                    .action()
                    .is_some_and(|a| classes::class(version, a) == Class::Journal);
                if journaled {
                    match self.responses.on_call(charger, &frame.frame.id, now) {
                        Verdict::Forward => {}
                        Verdict::InFlight => {
                            tracing::debug!(charger, id = %frame.frame.id, "replay of a message the CSMS is answering; dropped");
                            return Delivery::Dropped;
                        }
                        Verdict::Answered(reply) => {
                            tracing::debug!(charger, id = %frame.frame.id, "replay answered from the response cache");
                            let Ok(plain) = decode_plain(&reply, &self.limits) else {
                                return Delivery::Dropped;
                            };
                            let overlay = OverlayFrame {
                                dest: Route::single(charger.to_owned()),
                                path: Route::single(routing::CSMS),
                                frame: plain,
                            };
                            return Delivery::FromCache {
                                link,
                                overlay: overlay.to_text(),
                            };
                        }
                    }
                }
                Delivery::ToCsms {
                    link,
                    text: frame.frame.to_plain_string(),
                }
            }
            MessageType::Send => Delivery::ToCsms {
                link,
                text: frame.frame.to_plain_string(),
            },
            _ => match self.calls.take(charger, &frame.frame.id) {
                Some(pending) => Delivery::ToCsms {
                    link: pending.data.link,
                    text: frame.frame.to_plain_string(),
                },
                None => {
                    tracing::debug!(charger, "late reply to a CSMS CALL dropped");
                    Delivery::Dropped
                }
            },
        }
    }

    /// A frame from the CSMS for `charger`: its answers to transaction messages are kept.
    pub fn on_csms_text(&mut self, charger: &str, frame: &Frame<'_>, text: &str, now: Instant) {
        if self.responses.is_empty() {
            return;
        }
        match frame.message_type() {
            MessageType::CallResult => self.responses.on_reply(charger, &frame.id, text, now),
            MessageType::CallError | MessageType::CallResultError => {
                self.responses.on_error(charger, &frame.id)
            }
            _ => {}
        }
    }

    /// A CSMS CALL toward `charger` went on its way; the hub answers it if the charger does not.
    pub fn track_call(&mut self, charger: String, id: String, link: LinkId, now: Instant) {
        let pending = Pending {
            original_id: id.clone(),
            reply_to: routing::CSMS.to_owned(),
            deadline: now + self.request_timeout,
            data: Waiting { link },
        };
        if let Err(e) = self.calls.insert(Key::new(charger, id), pending) {
            tracing::warn!(error = %e, "CSMS CALL not tracked");
        }
    }

    /// A CALL the CSMS socket could not take: not in flight after all.
    pub fn returned(&mut self, charger: &str, id: &str) {
        self.responses.on_error(charger, id);
    }

    pub fn status(&self) -> Value {
        let mut sockets: Vec<Value> = self
            .sockets
            .iter()
            .map(|(charger, s)| {
                json!({
                    "charger": charger,
                    "ocppVersion": s.version.subprotocol(),
                    "state": match s.state {
                        State::Connecting => "connecting",
                        State::Open => "open",
                        State::Refused => "refused",
                    },
                    "path": s.path,
                })
            })
            .collect();
        sockets.sort_by(|a, b| a["charger"].as_str().cmp(&b["charger"].as_str()));
        Value::Array(sockets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presence() -> Presence {
        Presence::new(
            Arc::new(AtomicU64::new(100)),
            Duration::from_secs(30),
            Duration::from_secs(10),
            Limits::default(),
        )
    }

    #[test]
    fn a_socket_per_reachable_charger_kept_through_the_grace_period() {
        let t0 = Instant::now();
        let mut p = presence();
        p.reachable("CP-1", Some(OcppVersion::V16));
        p.reachable("CP-1", Some(OcppVersion::V16));
        let opened = p.take_effects();
        assert_eq!(opened.len(), 1, "one socket however often it is announced");
        let Effect::Open { link, .. } = opened[0].clone() else {
            panic!("{opened:?}")
        };
        p.link_lost("CP-1", t0);
        p.housekeeping(t0 + Duration::from_secs(29), |_| false);
        assert!(p.take_effects().is_empty(), "kept during the grace period");
        p.housekeeping(t0 + Duration::from_secs(30), |_| true);
        assert!(p.take_effects().is_empty(), "back in time: kept");
        p.link_lost("CP-1", t0);
        p.housekeeping(t0 + Duration::from_secs(31), |_| false);
        assert_eq!(p.take_effects(), vec![Effect::Close { link }]);
        // A new version means a new socket.
        p.reachable("CP-2", Some(OcppVersion::V16));
        p.reachable("CP-2", Some(OcppVersion::V201));
        let e = p.take_effects();
        assert!(
            matches!(
                e.as_slice(),
                [
                    Effect::Open { .. },
                    Effect::Close { .. },
                    Effect::Open {
                        version: OcppVersion::V201,
                        ..
                    }
                ]
            ),
            "{e:?}"
        );
    }

    #[test]
    fn csms_calls_are_answered_on_timeout_and_replays_from_the_cache() {
        let t0 = Instant::now();
        let mut p = presence();
        p.reachable("CP-1", Some(OcppVersion::V16));
        let Some(Effect::Open { link, .. }) = p.take_effects().pop() else {
            panic!()
        };
        p.track_call("CP-1".into(), "c1".into(), link, t0);
        assert!(p.expire_calls(t0 + Duration::from_secs(9)).is_empty());
        let expired = p.expire_calls(t0 + Duration::from_secs(10));
        assert_eq!(
            expired,
            vec![(link, r#"[4,"c1","GenericError","timeout",{}]"#.to_owned())]
        );

        let text =
            r#"[2,"CSMS",["CP-1","edge"],"u1","MeterValues",{"connectorId":1,"meterValue":[]}]"#;
        let frame = wire::text::decode_overlay(text, &Limits::default()).unwrap();
        assert!(matches!(p.deliver(&frame, t0), Delivery::ToCsms { .. }));
        assert_eq!(
            p.deliver(&frame, t0),
            Delivery::Dropped,
            "in flight: not twice"
        );
        let reply = r#"[3,"u1",{}]"#;
        let plain = decode_plain(reply, &Limits::default()).unwrap();
        p.on_csms_text("CP-1", &plain, reply, t0);
        match p.deliver(&frame, t0) {
            Delivery::FromCache { overlay, .. } => {
                assert_eq!(overlay, r#"[3,"CP-1","CSMS","u1",{}]"#)
            }
            other => panic!("{other:?}"),
        }
        let unknown = wire::text::decode_overlay(
            r#"[2,"CSMS","CP-9","u2","Heartbeat",{}]"#,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(p.deliver(&unknown, t0), Delivery::NotAnnounced);
    }
}
