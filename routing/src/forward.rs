//! The forwarding decision for one overlay frame (ARCHITECTURE §3.1, §3.4, §6.1, §6.2).
//!
//! [`Forwarder::decide`] is a pure function of the frame, where it came from, the table and
//! `now`. It never touches the payload: the frame it hands back borrows the very bytes it was
//! given, so end-to-end signatures survive every hop (§3.5).

use std::borrow::Cow;
use std::time::Instant;

use wire::text::{Frame, OverlayFrame};
use wire::{ErrorCode, MessageType, OcppVersion, Route};

use crate::glob::AllowList;
use crate::table::{Learned, Table};
use crate::{BROADCAST, CSMS, LinkId};

/// Where a frame entered this node. It decides which checks apply.
#[derive(Debug, Clone, Copy)]
pub enum Ingress<'l> {
    /// From an overlay neighbour on `link`, which may speak only for the ids in `allow`
    /// (§6.2). Checked: allow-list, loops; auto-learned from.
    Node { link: LinkId, allow: &'l AllowList },
    /// Translated by this node from a plain peer on `link`. The path was built from the
    /// authenticated identity (§3.2), so there is no allow-list check.
    Plain { link: LinkId },
    /// Originated by this node itself (DLM, own CALLs, errors it generated). Its path may
    /// already start with this node's id, so the loop check does not apply.
    Local,
}

impl Ingress<'_> {
    pub fn link(&self) -> Option<LinkId> {
        match *self {
            Ingress::Node { link, .. } | Ingress::Plain { link } => Some(link),
            Ingress::Local => None,
        }
    }
}

/// Why a frame is not forwarded. Each is worth a counter; `Loop` is also a security event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// This node's id is already in the path.
    Loop,
    /// The path is as long as the hop limit.
    HopLimit,
    /// No route to the destination (or the only one leads back where the frame came from).
    Unreachable,
    /// A source-route `dest` whose first element is not this node, or that names this node or
    /// `"*"` as a later hop.
    BadSourceRoute,
    /// `"*"` is for SEND only.
    BroadcastNotSend,
}

impl Refusal {
    /// The CALLERROR description sent to the originator of a refused CALL.
    pub fn description(self) -> &'static str {
        match self {
            Refusal::Loop => "loop",
            Refusal::HopLimit => "hop limit exceeded",
            Refusal::Unreachable => "unreachable",
            Refusal::BadSourceRoute => "invalid source route",
            Refusal::BroadcastNotSend => "broadcast is for SEND only",
        }
    }
}

/// A frame refused at ingress: a security event, never answered by the router (the caller
/// decides whether to close the link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// `path[0]` is not in the allow-list of the link the frame came from.
    PathNotAllowed { originator: String },
}

/// What to do with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// For this node: `dest` is its own id, or `"CSMS"` while it owns the CSMS side. The frame
    /// is unchanged.
    Deliver(OverlayFrame<'a>),
    /// Send `frame` (path already extended) on `link`. When `link` is a plain peer the caller
    /// strips dest/path and restores the id (see [`crate::correlation`]).
    Forward {
        link: LinkId,
        frame: OverlayFrame<'a>,
    },
    /// A SEND to `"*"`: handle it locally AND send `frame` (path already extended) on every
    /// overlay link except `except`, the one it came from (split horizon).
    Broadcast {
        except: Option<LinkId>,
        frame: OverlayFrame<'a>,
    },
    /// A refused CALL: send this CALLERROR back on `link`, the way the CALL came (`None`: the
    /// CALL was this node's own; answer it internally). It is addressed to the CALL's `path[0]`
    /// with `path = [own id]`.
    Reply {
        link: Option<LinkId>,
        frame: OverlayFrame<'static>,
        reason: Refusal,
    },
    /// Not forwarded, nobody to answer (SEND, results and errors, loops).
    Drop(Refusal),
    /// Refused at ingress; log a security event.
    Reject(Rejection),
}

/// A decision plus what was auto-learned on the way in (see [`Forwarder::receive`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received<'a> {
    pub decision: Decision<'a>,
    pub learned: Learned,
}

/// This node's forwarding parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarder {
    own_id: String,
    hop_limit: usize,
    owns_csms: bool,
}

impl Forwarder {
    /// Matches [`wire::Limits::max_path_len`], so a forwarded path always decodes downstream.
    pub const DEFAULT_HOP_LIMIT: usize = 16;

    pub fn new(own_id: impl Into<String>) -> Self {
        Forwarder {
            own_id: own_id.into(),
            hop_limit: Self::DEFAULT_HOP_LIMIT,
            owns_csms: false,
        }
    }

    /// A hop limit of 0 is taken as 1: the originator alone is always a valid path.
    pub fn with_hop_limit(mut self, hop_limit: usize) -> Self {
        self.hop_limit = hop_limit.max(1);
        self
    }

    /// Set on the hub (or any node that serves as the CSMS): `"CSMS"` is then delivered here.
    pub fn with_csms_owner(mut self, owns_csms: bool) -> Self {
        self.owns_csms = owns_csms;
        self
    }

    pub fn own_id(&self) -> &str {
        &self.own_id
    }

    pub fn hop_limit(&self) -> usize {
        self.hop_limit
    }

    pub fn owns_csms(&self) -> bool {
        self.owns_csms
    }

    /// Ingress checks, auto-learn from neighbours, then [`Forwarder::decide`]. Nothing is
    /// learned from a frame that fails the allow-list or loop check, so a spoofed or looping
    /// frame cannot poison the table.
    pub fn receive<'a>(
        &self,
        table: &mut Table,
        ingress: Ingress<'_>,
        frame: OverlayFrame<'a>,
        now: Instant,
    ) -> Received<'a> {
        if let Some(decision) = self.check(&ingress, &frame) {
            return Received {
                decision,
                learned: Learned::default(),
            };
        }
        let learned = match ingress {
            Ingress::Node { link, .. } => table.auto_learn(&frame.path, link, now),
            _ => Learned::default(),
        };
        Received {
            decision: self.route(table, ingress, frame, now),
            learned,
        }
    }

    /// The decision for `frame` entering through `ingress`, without changing the table.
    pub fn decide<'a>(
        &self,
        table: &Table,
        ingress: Ingress<'_>,
        frame: OverlayFrame<'a>,
        now: Instant,
    ) -> Decision<'a> {
        match self.check(&ingress, &frame) {
            Some(decision) => decision,
            None => self.route(table, ingress, frame, now),
        }
    }

    /// The checks that make a frame untrustworthy as a whole, before any routing: `Some` is the
    /// refusal.
    fn check(&self, ingress: &Ingress<'_>, frame: &OverlayFrame<'_>) -> Option<Decision<'static>> {
        if let Ingress::Node { allow, .. } = ingress
            && !allow.allows(frame.path.first())
        {
            return Some(Decision::Reject(Rejection::PathNotAllowed {
                originator: frame.path.first().to_owned(),
            }));
        }
        if !matches!(ingress, Ingress::Local) && frame.path.contains(&self.own_id) {
            return Some(Decision::Drop(Refusal::Loop));
        }
        None
    }

    fn route<'a>(
        &self,
        table: &Table,
        ingress: Ingress<'_>,
        mut frame: OverlayFrame<'a>,
        now: Instant,
    ) -> Decision<'a> {
        let from = ingress.link();

        if frame.dest.len() > 1 {
            match self.source_route_next(&ingress, &frame.dest) {
                Ok(Some(rest)) => frame.dest = rest,
                Ok(None) => {}
                Err(reason) => return self.refuse(&ingress, frame, reason),
            }
        }

        if frame.dest.len() == 1 {
            let dest = frame.dest.first();
            if dest == self.own_id || (dest == CSMS && self.owns_csms) {
                return Decision::Deliver(frame);
            }
            if dest == BROADCAST {
                if frame.frame.message_type() != MessageType::Send {
                    return self.refuse(&ingress, frame, Refusal::BroadcastNotSend);
                }
                return match self.extend_path(&ingress, &mut frame) {
                    Ok(()) => Decision::Broadcast {
                        except: from,
                        frame,
                    },
                    Err(reason) => self.refuse(&ingress, frame, reason),
                };
            }
        }

        // Single destination, or the next hop of a source route.
        let next = frame.dest.first();
        let link = match table.lookup(next, now) {
            // Sending a neighbour's frame straight back would only bounce it into their loop
            // check; tell the originator now instead.
            Some(hop) if matches!(ingress, Ingress::Node { .. }) && Some(hop.link) == from => None,
            Some(hop) => Some(hop.link),
            None => None,
        };
        let Some(link) = link else {
            return self.refuse(&ingress, frame, Refusal::Unreachable);
        };
        match self.extend_path(&ingress, &mut frame) {
            Ok(()) => Decision::Forward { link, frame },
            Err(reason) => self.refuse(&ingress, frame, reason),
        }
    }

    /// For a multi-element `dest`: `Ok(Some(rest))` when this node was the named hop and
    /// is stripped, `Ok(None)` when this node originates the route and keeps it whole.
    fn source_route_next<'a>(
        &self,
        ingress: &Ingress<'_>,
        dest: &Route<'a>,
    ) -> Result<Option<Route<'a>>, Refusal> {
        let ids = dest.ids();
        let rest = if ids[0] == self.own_id {
            let rest = ids[1..].to_vec();
            Some(Route::from_ids(rest).ok_or(Refusal::BadSourceRoute)?)
        } else if matches!(ingress, Ingress::Node { .. }) {
            // A neighbour sent us a route that names someone else as this hop.
            return Err(Refusal::BadSourceRoute);
        } else {
            None
        };
        let remaining = rest.as_ref().unwrap_or(dest).ids();
        // `*` is meaningless as a hop, and our own id again would mean a loop through us.
        let bad = |id: &Cow<'_, str>| id == BROADCAST || *id == self.own_id;
        if remaining.len() > 1 && remaining.iter().any(bad) {
            return Err(Refusal::BadSourceRoute);
        }
        Ok(rest)
    }

    /// Appends this node's id to the path, unless the frame is this node's own and already
    /// ends with it.
    fn extend_path(
        &self,
        ingress: &Ingress<'_>,
        frame: &mut OverlayFrame<'_>,
    ) -> Result<(), Refusal> {
        let already = matches!(ingress, Ingress::Local) && frame.path.last() == self.own_id;
        if already {
            return Ok(());
        }
        if frame.path.len() >= self.hop_limit {
            return Err(Refusal::HopLimit);
        }
        frame.path.push(self.own_id.clone());
        Ok(())
    }

    /// A CALL is answered with CALLERROR GenericError toward its originator; anything else is
    /// dropped (results, errors and SENDs have nobody waiting for an answer).
    fn refuse<'a>(
        &self,
        ingress: &Ingress<'_>,
        frame: OverlayFrame<'a>,
        reason: Refusal,
    ) -> Decision<'a> {
        if frame.frame.message_type() != MessageType::Call {
            return Decision::Drop(reason);
        }
        Decision::Reply {
            link: ingress.link(),
            frame: self.error_to_originator(&frame, reason.description()),
            reason,
        }
    }

    /// CALLERROR `GenericError` for `call`, addressed to its originator (`dest = path[0]`,
    /// `path = [own id]`), under the CALL's id. `GenericError` is spelled alike in every
    /// version, so the originator's version does not matter here.
    pub fn error_to_originator(
        &self,
        call: &OverlayFrame<'_>,
        description: &str,
    ) -> OverlayFrame<'static> {
        OverlayFrame {
            dest: Route::single(call.path.first().to_owned()),
            path: Route::single(self.own_id.clone()),
            frame: Frame::error(
                call.frame.id.clone().into_owned(),
                ErrorCode::GenericError.spelling(OcppVersion::V21),
                description.to_owned(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{NewRoute, Source};
    use wire::Limits;
    use wire::text::{Body, decode_overlay};

    const IN: LinkId = LinkId(1);
    const OUT: LinkId = LinkId(2);
    const UP: LinkId = LinkId(3);

    fn decode(text: &str) -> OverlayFrame<'_> {
        decode_overlay(text, &Limits::default()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn table() -> Table {
        let mut t = Table::default();
        for (dest, link) in [("CP-1", OUT), ("edge-2", OUT), ("edge-1", IN)] {
            let r = t.insert(NewRoute {
                dest: dest.to_owned(),
                link,
                priority: 0,
                source: Source::Connect,
                expires: None,
                version: None,
            });
            assert!(r.is_ok());
        }
        t.set_default(Some(UP));
        t
    }

    fn any() -> AllowList {
        AllowList::any()
    }

    fn node(allow: &AllowList) -> Ingress<'_> {
        Ingress::Node { link: IN, allow }
    }

    fn hub() -> Forwarder {
        Forwarder::new("hub")
    }

    fn expect_forward<'a>(d: Decision<'a>) -> (LinkId, OverlayFrame<'a>) {
        match d {
            Decision::Forward { link, frame } => (link, frame),
            other => panic!("expected Forward, got {other:?}"),
        }
    }

    fn expect_reply(d: Decision<'_>) -> (Option<LinkId>, OverlayFrame<'static>, Refusal) {
        match d {
            Decision::Reply {
                link,
                frame,
                reason,
            } => (link, frame, reason),
            other => panic!("expected Reply, got {other:?}"),
        }
    }

    #[test]
    fn forwards_by_dest_and_appends_own_id() {
        let now = Instant::now();
        let text = r#"[2,"CP-1",["CSMS","up"],"m1","Reset",{"type":"Soft"}]"#;
        let allow = any();
        let (link, frame) = expect_forward(hub().decide(&table(), node(&allow), decode(text), now));
        assert_eq!(link, OUT);
        assert_eq!(
            frame.to_text(),
            r#"[2,"CP-1",["CSMS","up","hub"],"m1","Reset",{"type":"Soft"}]"#
        );
    }

    #[test]
    fn payload_bytes_pass_through_untouched() {
        let now = Instant::now();
        let payload = "{ \"b\" :1.50E+2,\n\t\"a\":[ 1 ,2 ], \"s\":\"\\u00e9\\/\" , \"n\": -0.0 }";
        let text = format!(r#"[2,"CP-1","edge-1","m1","DataTransfer",{payload}]"#);
        let allow = any();
        let (_, frame) = expect_forward(hub().decide(&table(), node(&allow), decode(&text), now));
        assert_eq!(frame.frame.payload().map(|p| p.get()), Some(payload));
        let out = frame.to_text();
        assert!(out.ends_with(&format!(",{payload}]")), "{out}");
        // The same holds for results and error details.
        let text = format!(r#"[4,"CP-1","edge-1","m1","GenericError","x",{payload}]"#);
        let (_, frame) = expect_forward(hub().decide(&table(), node(&allow), decode(&text), now));
        assert!(frame.to_text().ends_with(&format!(",{payload}]")));
    }

    #[test]
    fn results_and_errors_are_forwarded_like_calls() {
        let now = Instant::now();
        let allow = any();
        for text in [
            r#"[3,"CP-1","edge-1","m1",{}]"#,
            r#"[4,"CP-1","edge-1","m1","GenericError","boom",{}]"#,
            r#"[5,"CP-1","edge-1","m1","InternalError","boom",{}]"#,
            r#"[6,"CP-1","edge-1","m1","Notify",{}]"#,
        ] {
            let (link, frame) =
                expect_forward(hub().decide(&table(), node(&allow), decode(text), now));
            assert_eq!(link, OUT, "{text}");
            assert_eq!(frame.path.ids(), ["edge-1", "hub"]);
        }
    }

    #[test]
    fn own_id_and_csms_are_delivered() {
        let now = Instant::now();
        let allow = any();
        let text = r#"[2,"hub","edge-1","m1","Heartbeat",{}]"#;
        assert_eq!(
            hub().decide(&table(), node(&allow), decode(text), now),
            Decision::Deliver(decode(text))
        );
        let text = r#"[2,"CSMS",["CP-1","edge-1"],"m1","Heartbeat",{}]"#;
        let owner = hub().with_csms_owner(true);
        assert!(owner.owns_csms());
        assert_eq!(
            owner.decide(&table(), node(&allow), decode(text), now),
            Decision::Deliver(decode(text))
        );
        // Not the owner: "CSMS" follows the default route up.
        let (link, _) = expect_forward(hub().decide(&table(), node(&allow), decode(text), now));
        assert_eq!(link, UP);
    }

    #[test]
    fn a_path_with_own_id_is_a_loop() {
        let now = Instant::now();
        let allow = any();
        let mut t = table();
        for text in [
            r#"[2,"CP-1",["edge-1","hub","x"],"m1","Reset",{}]"#,
            r#"[2,"hub",["hub"],"m1","Reset",{}]"#,
            r#"[3,"CP-1",["x","hub"],"m1",{}]"#,
        ] {
            let got = hub().receive(&mut t, node(&allow), decode(text), now);
            assert_eq!(got.decision, Decision::Drop(Refusal::Loop), "{text}");
            assert!(got.learned.learned.is_empty());
        }
        assert_eq!(t.len(), 3);
        let plain = Ingress::Plain { link: IN };
        let text = r#"[2,"CSMS","hub","m1","Heartbeat",{}]"#;
        assert_eq!(
            hub().decide(&table(), plain, decode(text), now),
            Decision::Drop(Refusal::Loop)
        );
    }

    #[test]
    fn ingress_path_must_be_allowed() {
        let now = Instant::now();
        let allow = AllowList::parse(["ACME-*", "edge-1"]).unwrap_or_else(|e| panic!("{e}"));
        let mut t = table();
        let text = r#"[2,"CSMS",["EVIL-1","edge-1"],"m1","Heartbeat",{}]"#;
        let got = hub().receive(&mut t, node(&allow), decode(text), now);
        assert_eq!(
            got.decision,
            Decision::Reject(Rejection::PathNotAllowed {
                originator: "EVIL-1".to_owned()
            })
        );
        assert!(t.entries("EVIL-1").is_empty());
        let text = r#"[2,"CSMS",["ACME-1","edge-1"],"m1","Heartbeat",{}]"#;
        let got = hub().receive(&mut t, node(&allow), decode(text), now);
        assert!(matches!(got.decision, Decision::Forward { link: UP, .. }));
        assert_eq!(
            got.learned.learned,
            vec!["edge-1".to_owned(), "ACME-1".to_owned()]
        );
        // Plain and local ingress were authenticated by this node: no allow-list.
        let text = r#"[2,"CSMS","EVIL-1","m1","Heartbeat",{}]"#;
        let d = hub().decide(&t, Ingress::Plain { link: IN }, decode(text), now);
        assert!(matches!(d, Decision::Forward { link: UP, .. }));
    }

    #[test]
    fn unreachable_call_gets_callerror_to_originator() {
        let now = Instant::now();
        let mut t = table();
        t.set_default(None);
        let allow = any();
        let text = r#"[2,"CP-404",["CSMS","up"],"m7","Reset",{"type":"Hard"}]"#;
        let (link, reply, reason) = expect_reply(hub().decide(&t, node(&allow), decode(text), now));
        assert_eq!(link, Some(IN));
        assert_eq!(reason, Refusal::Unreachable);
        assert_eq!(
            reply.to_text(),
            r#"[4,"CSMS","hub","m7","GenericError","unreachable",{}]"#
        );
        // Nobody waits for a SEND or a result: dropped and counted by the caller.
        for text in [
            r#"[6,"CP-404","up","m7","Notify",{}]"#,
            r#"[3,"CP-404","up","m7",{}]"#,
            r#"[4,"CP-404","up","m7","GenericError","",{}]"#,
            r#"[5,"CP-404","up","m7","GenericError","",{}]"#,
        ] {
            assert_eq!(
                hub().decide(&t, node(&allow), decode(text), now),
                Decision::Drop(Refusal::Unreachable),
                "{text}"
            );
        }
    }

    #[test]
    fn never_sent_back_where_it_came_from() {
        let now = Instant::now();
        let mut t = table();
        t.set_default(Some(IN));
        let allow = any();
        let text = r#"[2,"CP-404","edge-1","m7","Reset",{}]"#;
        let (link, reply, reason) = expect_reply(hub().decide(&t, node(&allow), decode(text), now));
        assert_eq!((link, reason), (Some(IN), Refusal::Unreachable));
        assert_eq!(reply.dest.ids(), ["edge-1"]);
    }

    #[test]
    fn hop_limit() {
        let now = Instant::now();
        let allow = any();
        let path: Vec<String> = (0..16).map(|i| format!("\"n{i}\"")).collect();
        let path = path.join(",");
        let call = format!(r#"[2,"CP-1",[{path}],"m1","Reset",{{}}]"#);
        let (link, reply, reason) =
            expect_reply(hub().decide(&table(), node(&allow), decode(&call), now));
        assert_eq!((link, reason), (Some(IN), Refusal::HopLimit));
        assert_eq!(
            reply.to_text(),
            r#"[4,"n0","hub","m1","GenericError","hop limit exceeded",{}]"#
        );
        let send = format!(r#"[6,"CP-1",[{path}],"m1","Notify",{{}}]"#);
        assert_eq!(
            hub().decide(&table(), node(&allow), decode(&send), now),
            Decision::Drop(Refusal::HopLimit)
        );
        // Delivery does not add a hop, so the frame is still for us.
        let mine = format!(r#"[2,"hub",[{path}],"m1","Reset",{{}}]"#);
        assert!(matches!(
            hub().decide(&table(), node(&allow), decode(&mine), now),
            Decision::Deliver(_)
        ));
        // One below the limit still goes, and leaves with exactly the limit.
        let short: Vec<String> = (0..15).map(|i| format!("\"n{i}\"")).collect();
        let call = format!(r#"[2,"CP-1",[{}],"m1","Reset",{{}}]"#, short.join(","));
        let (_, frame) = expect_forward(hub().decide(&table(), node(&allow), decode(&call), now));
        assert_eq!(frame.path.len(), 16);
        // A configured lower limit.
        let f = hub().with_hop_limit(2);
        assert_eq!(f.hop_limit(), 2);
        let text = r#"[6,"CP-1",["a","b"],"m1","Notify",{}]"#;
        assert_eq!(
            f.decide(&table(), node(&allow), decode(text), now),
            Decision::Drop(Refusal::HopLimit)
        );
        assert_eq!(hub().with_hop_limit(0).hop_limit(), 1);
    }

    #[test]
    fn broadcast_is_split_horizon_and_send_only() {
        let now = Instant::now();
        let allow = any();
        let text = r#"[6,"*","edge-1","m1","Notify",{"x":1}]"#;
        match hub().decide(&table(), node(&allow), decode(text), now) {
            Decision::Broadcast { except, frame } => {
                assert_eq!(except, Some(IN));
                assert_eq!(
                    frame.to_text(),
                    r#"[6,"*",["edge-1","hub"],"m1","Notify",{"x":1}]"#
                );
            }
            other => panic!("{other:?}"),
        }
        let text = r#"[2,"*","edge-1","m1","Reset",{}]"#;
        let (_, reply, reason) =
            expect_reply(hub().decide(&table(), node(&allow), decode(text), now));
        assert_eq!(reason, Refusal::BroadcastNotSend);
        assert_eq!(reply.dest.ids(), ["edge-1"]);
        let text = r#"[3,"*","edge-1","m1",{}]"#;
        assert_eq!(
            hub().decide(&table(), node(&allow), decode(text), now),
            Decision::Drop(Refusal::BroadcastNotSend)
        );
        // Originated here: no link to exclude.
        let text = r#"[6,"*","hub","m1","Notify",{}]"#;
        assert!(matches!(
            hub().decide(&table(), Ingress::Local, decode(text), now),
            Decision::Broadcast { except: None, .. }
        ));
    }

    #[test]
    fn source_routes_lose_their_first_element_per_hop() {
        let now = Instant::now();
        let allow = any();
        let text = r#"[2,["hub","edge-2","CP-9"],"CSMS","m1","Reset",{}]"#;
        let (link, frame) = expect_forward(hub().decide(&table(), node(&allow), decode(text), now));
        assert_eq!(link, OUT);
        assert_eq!(frame.dest.ids(), ["edge-2", "CP-9"]);
        assert_eq!(frame.path.ids(), ["CSMS", "hub"]);
        // Down to one element: ordinary routing by dest.
        let text = r#"[2,["hub","CP-1"],"CSMS","m1","Reset",{}]"#;
        let (link, frame) = expect_forward(hub().decide(&table(), node(&allow), decode(text), now));
        assert_eq!(link, OUT);
        assert_eq!(
            frame.to_text(),
            r#"[2,"CP-1",["CSMS","hub"],"m1","Reset",{}]"#
        );
        let text = r#"[2,["hub","hub"],"CSMS","m1","Reset",{}]"#;
        assert!(matches!(
            hub().decide(&table(), node(&allow), decode(text), now),
            Decision::Deliver(_)
        ));
        // The originator keeps the whole route and sends it to its first element.
        let text = r#"[2,["edge-2","CP-9"],"hub","m1","Reset",{}]"#;
        let (link, frame) =
            expect_forward(hub().decide(&table(), Ingress::Local, decode(text), now));
        assert_eq!(link, OUT);
        assert_eq!(frame.dest.ids(), ["edge-2", "CP-9"]);
        assert_eq!(frame.path.ids(), ["hub"]);
    }

    #[test]
    fn bad_source_routes() {
        let now = Instant::now();
        let allow = any();
        for text in [
            // We are not the named hop.
            r#"[2,["other","CP-1"],"CSMS","m1","Reset",{}]"#,
            // Broadcast or ourselves as a later hop.
            r#"[2,["hub","*","CP-1"],"CSMS","m1","Reset",{}]"#,
            r#"[2,["hub","edge-2","hub"],"CSMS","m1","Reset",{}]"#,
        ] {
            let (_, _, reason) =
                expect_reply(hub().decide(&table(), node(&allow), decode(text), now));
            assert_eq!(reason, Refusal::BadSourceRoute, "{text}");
        }
        let text = r#"[3,["other","CP-1"],"CSMS","m1",{}]"#;
        assert_eq!(
            hub().decide(&table(), node(&allow), decode(text), now),
            Decision::Drop(Refusal::BadSourceRoute)
        );
    }

    #[test]
    fn local_and_plain_origins() {
        let now = Instant::now();
        // Translated for charger CP-7: path [CP-7] gains our id.
        let text = r#"[2,"CSMS","CP-7","u-1","Heartbeat",{}]"#;
        let (link, frame) =
            expect_forward(hub().decide(&table(), Ingress::Plain { link: IN }, decode(text), now));
        assert_eq!(link, UP);
        assert_eq!(frame.path.ids(), ["CP-7", "hub"]);
        // Our own CALL already starts with our id: not a loop, not doubled.
        let text = r#"[2,"CSMS","hub","u-2","Heartbeat",{}]"#;
        let (_, frame) = expect_forward(hub().decide(&table(), Ingress::Local, decode(text), now));
        assert_eq!(frame.path.ids(), ["hub"]);
        // Our own CALL to nowhere: answered internally.
        let mut t = table();
        t.set_default(None);
        let text = r#"[2,"CP-404","hub","u-3","Reset",{}]"#;
        let (link, reply, _) = expect_reply(hub().decide(&t, Ingress::Local, decode(text), now));
        assert_eq!(link, None);
        assert_eq!(reply.dest.ids(), ["hub"]);
        assert!(matches!(reply.frame.body, Body::CallError(_)));
        // A plain peer's CALL to nowhere: answered on its link.
        let text = r#"[2,"CP-404","CP-7","u-4","Reset",{}]"#;
        let (link, _, _) =
            expect_reply(hub().decide(&t, Ingress::Plain { link: IN }, decode(text), now));
        assert_eq!(link, Some(IN));
    }

    #[test]
    fn receive_learns_only_from_neighbours() {
        let now = Instant::now();
        let mut t = Table::default();
        let allow = any();
        let text = r#"[6,"CSMS",["CP-1","edge-1"],"m1","Notify",{}]"#;
        let got = hub().receive(&mut t, node(&allow), decode(text), now);
        assert_eq!(got.decision, Decision::Drop(Refusal::Unreachable));
        assert_eq!(t.lookup("CP-1", now).map(|h| h.link), Some(IN));
        let mut t = Table::default();
        let got = hub().receive(&mut t, Ingress::Plain { link: IN }, decode(text), now);
        assert!(got.learned.learned.is_empty());
        assert!(t.is_empty());
        assert_eq!(hub().own_id(), "hub");
        assert_eq!(Refusal::Loop.description(), "loop");
    }
}
