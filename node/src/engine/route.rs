//! Overlay links, routing decisions and what is delivered to this node: the engine half that
//! drives `routing::Forwarder` and carries out its decisions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use routing::announce::{self, ApplyOptions, RouteRejection};
use routing::{AllowList, Decision, Ingress, LinkId};
use serde_json::json;
use wire::text::{Body, ErrorBody, Frame, OverlayFrame, decode_overlay, decode_plain};
use wire::{ErrorCode, MessageType, OcppVersion, Route};

use super::calls::{CallOutcome, Caller, NodeCall, Target};
use super::handlers::{LocalReply, LocalRequest, Scope};
use super::stages::{Origin, Passing, Screen, Verdict};
use super::{
    Action, CHARGER_CONNECTION_STATUS, Core, Deferred, Engine, HERE, IfFull, Link, LocalPending,
    MAX_LOCAL_REQUESTS, NodeLink, Outbound, Owner, Token,
};

/// What became of a routed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Routed {
    Forwarded(LinkId),
    Delivered,
    /// A CALL refused, with the reason its originator is told.
    Refused(&'static str),
    Dropped,
}

/// What the stages decided for a frame being routed.
enum Screened {
    Pass,
    Payload(Box<serde_json::value::RawValue>),
    Stop(Routed),
}

/// The frame with its CALL or SEND payload replaced.
fn with_payload<'a>(
    frame: OverlayFrame<'a>,
    raw: &'a serde_json::value::RawValue,
) -> OverlayFrame<'a> {
    let OverlayFrame { dest, path, frame } = frame;
    let body = match frame.body {
        Body::Call { action, .. } => Body::Call {
            action,
            payload: wire::Json::new(raw),
        },
        Body::Send { action, .. } => Body::Send {
            action,
            payload: wire::Json::new(raw),
        },
        other => other,
    };
    OverlayFrame {
        dest,
        path,
        frame: Frame { id: frame.id, body },
    }
}

impl Routed {
    fn went(&self) -> bool {
        matches!(self, Routed::Forwarded(_) | Routed::Delivered)
    }
}

impl Engine {
    pub(super) fn node_up(
        &mut self,
        link: LinkId,
        peer: String,
        allow: AllowList,
        uplink: Option<String>,
        remote: SocketAddr,
        now: Instant,
    ) {
        let core = &mut self.core;
        let is_uplink = uplink.is_some();
        if is_uplink {
            core.metrics.uplink_links.inc();
        } else {
            core.metrics.inbound_links.inc();
        }
        tracing::info!(%link, peer = %peer, %remote, uplink = is_uplink, "overlay link up");
        // Only an inbound peer's id was authenticated here; an uplink is known by its config
        // name, and its node is reached by the default route anyway.
        if !is_uplink {
            match core.table.neighbour_up(&peer, link, now) {
                // A replaced older link's entry was for this same id: one change covers both.
                Ok(_) => core.announce.changed(&peer),
                Err(e) => {
                    tracing::error!(peer = %peer, error = %e, "cannot route to the node peer")
                }
            }
        }
        core.links.insert(
            link,
            Link::Node(NodeLink {
                peer,
                allow: Arc::new(allow),
                uplink,
                remote,
            }),
        );
        if is_uplink {
            // At most one uplink is up (the dialer guarantees it); it is the default route.
            core.uplink = Some(link);
            core.table.set_default(Some(link));
            core.announcer.link_up(link);
            core.announce.dirty = true;
            core.schedule_refresh(now);
            self.each_stage(now, |stage, cx| stage.uplink(true, cx));
        }
    }

    pub(super) fn link_down(&mut self, link: LinkId, now: Instant) {
        let Some(gone) = self.core.links.remove(&link) else {
            return;
        };
        let removed = self.core.table.remove_link(link, now);
        self.core
            .announce
            .changed_all(removed.entries.iter().map(|e| e.dest.as_str()));
        self.core.announce.dirty = true;
        match gone {
            Link::Node(o) => {
                if o.uplink.is_some() {
                    self.core.metrics.uplink_links.dec();
                } else {
                    self.core.metrics.inbound_links.dec();
                }
                self.core.announcer.link_down(link);
                tracing::info!(%link, peer = %o.peer, "overlay link down");
                // Keep the CSMS sockets a while: the edge may be back before the charger
                // notices, and replays must still find their socket (§6.2).
                if let Some(hub) = &mut self.core.hub {
                    for id in &removed.unreachable {
                        hub.link_lost(id, now);
                    }
                }
                if self.core.uplink == Some(link) {
                    self.core.uplink = None;
                    self.core.table.set_default(None);
                    self.core.announce.next_refresh = None;
                    self.each_stage(now, |stage, cx| stage.uplink(false, cx));
                }
            }
            Link::Charger(c) => {
                if self.core.chargers.get(&c.id) == Some(&link) {
                    self.core.chargers.remove(&c.id);
                }
                if let Some(hub) = &mut self.core.hub {
                    for id in &removed.unreachable {
                        hub.gone(id);
                    }
                }
                self.core.flush_hub();
                tracing::debug!(charger = %c.id, "charger left the routing table");
                self.each_stage(now, |stage, cx| stage.charger_down(link, &c.id, cx));
            }
            Link::Csms(charger) => {
                tracing::debug!(charger = %charger, "CSMS connector ended");
            }
        }
        // After the uplink is gone: a caller that tries again must find it down.
        for caller in self.core.calls.lost(link) {
            self.call_done(caller, CallOutcome::LinkLost, now);
        }
    }

    /// A text frame from an overlay neighbour.
    pub(super) fn on_node_text(&mut self, link: LinkId, text: &str, now: Instant) {
        let Some(o) = self.core.node_link(link) else {
            return;
        };
        let (allow, peer) = (o.allow.clone(), o.peer.clone());
        let frame = match decode_overlay(text, &self.core.settings.limits) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(%link, peer = %peer, error = %e, "malformed overlay frame dropped");
                self.core.metrics.frames_dropped.malformed.inc();
                return;
            }
        };
        // Announcements are for this hop only: installed here, never forwarded.
        if let Body::Send { action, payload } = &frame.frame.body
            && action == announce::ACTION
        {
            if !allow.allows(frame.path.first()) {
                self.core.security_event(
                    "path_not_allowed",
                    format_args!(
                        "announcement from {peer:?} under path {:?} outside its allow-list",
                        frame.path.first()
                    ),
                );
                return;
            }
            return self.apply_announcement(link, &peer, &allow, payload.get(), now);
        }
        for i in 0..self.stages.len() {
            let (stages, mut cx) = self.split(i, now);
            if stages[i].on_link(link, &frame, &mut cx) != Verdict::Continue {
                return;
            }
        }
        self.route(
            Ingress::Node {
                link,
                allow: &allow,
            },
            frame,
            now,
        );
    }

    /// Routes one overlay frame and carries out the decision.
    pub(super) fn route(
        &mut self,
        ingress: Ingress<'_>,
        frame: OverlayFrame<'_>,
        now: Instant,
    ) -> Routed {
        if self.is_node_call_reply(&frame) {
            self.node_call_reply(frame, now);
            return Routed::Delivered;
        }
        let origin = match ingress {
            Ingress::Node { .. } => Origin::Node,
            Ingress::Plain { .. } => Origin::Plain,
            Ingress::Local => Origin::Local,
        };
        let core = &mut self.core;
        let received = core.forwarder.receive(&mut core.table, ingress, frame, now);
        match received.decision {
            Decision::Forward { link, frame } => {
                let to_plain = !matches!(self.core.links.get(&link), Some(Link::Node(_)));
                let stopped = self.screened(origin, to_plain, frame, now, |e, frame| {
                    e.core.metrics.frames_forwarded.inc();
                    e.send(link, frame, now);
                });
                stopped.unwrap_or(Routed::Forwarded(link))
            }
            Decision::Deliver(frame) => {
                let to_plain =
                    self.core.hub.is_some() && frame.dest.first() != self.core.settings.own_id;
                let stopped = self.screened(origin, to_plain, frame, now, |e, frame| {
                    e.deliver(frame, now)
                });
                stopped.unwrap_or(Routed::Delivered)
            }
            Decision::Broadcast { except, frame } => {
                let text = frame.to_text();
                let targets: Vec<LinkId> = core
                    .links
                    .iter()
                    .filter(|(l, k)| Some(**l) != except && matches!(k, Link::Node(_)))
                    .map(|(l, _)| *l)
                    .collect();
                for target in targets {
                    self.core
                        .send_overlay(target, Outbound::Text(text.clone()), now);
                }
                Routed::Forwarded(except.unwrap_or(HERE))
            }
            Decision::Reply {
                link,
                frame,
                reason,
            } => {
                tracing::info!(dest = %frame.dest.first(), reason = reason.description(), "CALL refused");
                core.metrics.frames_dropped.refusal(reason).inc();
                if let Some(link) = link {
                    self.send(link, frame, now);
                }
                Routed::Refused(reason.description())
            }
            Decision::Drop(reason) => {
                core.metrics.frames_dropped.refusal(reason).inc();
                if reason == routing::Refusal::Loop {
                    core.security_event("loop", "a frame came back to this node; dropped");
                } else {
                    tracing::info!(reason = reason.description(), "frame dropped");
                }
                Routed::Dropped
            }
            Decision::Reject(routing::Rejection::PathNotAllowed { originator }) => {
                core.metrics.frames_dropped.path_not_allowed.inc();
                let peer = ingress
                    .link()
                    .and_then(|l| core.node_link(l))
                    .map(|o| o.peer.clone())
                    .unwrap_or_default();
                core.security_event(
                    "path_not_allowed",
                    format_args!("node {peer:?} sent a frame for {originator:?}, outside its allow-list; dropped"),
                );
                Routed::Dropped
            }
        }
    }

    /// Screens `frame` and, unless a stage stopped it, hands it (its payload replaced where a
    /// stage asked) to `go`; `Some` is what became of a stopped frame.
    fn screened(
        &mut self,
        origin: Origin,
        to_plain: bool,
        frame: OverlayFrame<'_>,
        now: Instant,
        go: impl FnOnce(&mut Self, OverlayFrame<'_>),
    ) -> Option<Routed> {
        match self.screen(origin, to_plain, &frame, now) {
            Screened::Pass => go(self, frame),
            Screened::Payload(raw) => go(self, with_payload(frame, &raw)),
            Screened::Stop(routed) => return Some(routed),
        }
        None
    }

    /// The stages' say on a CALL or SEND routing will forward or deliver.
    fn screen(
        &mut self,
        origin: Origin,
        to_plain: bool,
        frame: &OverlayFrame<'_>,
        now: Instant,
    ) -> Screened {
        let message_type = frame.frame.message_type();
        if !matches!(message_type, MessageType::Call | MessageType::Send) {
            return Screened::Pass;
        }
        let view = Passing {
            origin,
            to_plain,
            frame,
        };
        for i in 0..self.stages.len() {
            let (stages, mut cx) = self.split(i, now);
            match stages[i].screen(&view, &mut cx) {
                Screen::Pass => {}
                Screen::Payload(raw) => return Screened::Payload(raw),
                Screen::Drop => {
                    self.core.metrics.frames_dropped.policy.inc();
                    return Screened::Stop(Routed::Dropped);
                }
                Screen::Refuse(why) => {
                    self.core.metrics.frames_dropped.policy.inc();
                    if message_type == MessageType::Call {
                        let error = self.core.security_error_to(frame, &why);
                        self.core.deferred.push(Deferred::Local(error));
                    }
                    return Screened::Stop(Routed::Refused("refused by the signature policy"));
                }
            }
        }
        Screened::Pass
    }

    /// Sends an overlay frame on `link`, translating for plain peers.
    fn send(&mut self, link: LinkId, frame: OverlayFrame<'_>, now: Instant) {
        match self.core.links.get(&link) {
            Some(Link::Node(_)) => {
                let text = frame.to_text();
                self.core.send_overlay(link, Outbound::Text(text), now);
            }
            Some(Link::Csms(_)) => {
                self.core
                    .send_plain(link, frame.frame.to_plain_string(), IfFull::Return);
            }
            Some(Link::Charger(_)) => self.deliver_to_charger(link, frame, now),
            None => {}
        }
    }

    /// A frame for this node, or for `"CSMS"` where this node serves as the CSMS.
    fn deliver(&mut self, frame: OverlayFrame<'_>, now: Instant) {
        let to_self = frame.dest.first() == self.core.settings.own_id;
        if !to_self && let Some(hub) = &mut self.core.hub {
            let out = hub.deliver(&frame, now);
            return self.core.carry_out(out, &frame);
        }
        let scope = if to_self { Scope::Node } else { Scope::Csms };
        match frame.frame.message_type() {
            MessageType::Call | MessageType::Send => self.dispatch(scope, &frame, now),
            _ => {
                tracing::debug!(id = %frame.frame.id, "reply for this node with nobody waiting; dropped")
            }
        }
    }

    /// Hands a CALL or SEND to the local handler of its action.
    fn dispatch(&mut self, scope: Scope, frame: &OverlayFrame<'_>, now: Instant) {
        let core = &mut self.core;
        let action = frame.frame.action().unwrap_or_default();
        let is_call = frame.frame.message_type() == MessageType::Call;
        let Some(handler) = core.handlers.find(scope, action) else {
            if is_call {
                let error = core.error_to(
                    frame,
                    ErrorCode::NotImplemented,
                    &format!("no handler for {action} on this node"),
                );
                core.deferred.push(Deferred::Local(error));
            }
            return;
        };
        if core.owners.len() >= MAX_LOCAL_REQUESTS {
            if is_call {
                let error = core.error_to(frame, ErrorCode::GenericError, "busy");
                core.deferred.push(Deferred::Local(error));
            }
            return;
        }
        let from = frame.path.first().to_owned();
        let version = core.version_of(&from, now);
        let token = core.token(Owner::Local(LocalPending {
            to: from.clone(),
            id: frame.frame.id.clone().into_owned(),
            version,
            wants_reply: is_call,
        }));
        let payload = frame.frame.payload().map_or("{}", |p| p.get()).to_owned();
        core.actions.push_back(Action::Dispatch {
            token: Token(token),
            lane: from.clone(),
            handler,
            request: LocalRequest {
                from,
                version,
                action: action.to_owned(),
                payload,
                wants_reply: is_call,
            },
        });
    }

    /// A local handler's answer goes back to whoever sent the request.
    pub(super) fn local_reply(&mut self, token: Token, reply: LocalReply, now: Instant) {
        let Some(Owner::Local(p)) = self.core.owners.remove(&token.0) else {
            return;
        };
        if !p.wants_reply {
            return;
        }
        let version = p.version.unwrap_or(OcppVersion::V21);
        let raw;
        let body = match &reply {
            LocalReply::Result(payload) => {
                match serde_json::value::RawValue::from_string(payload.clone()) {
                    Ok(r) => {
                        raw = r;
                        Body::CallResult {
                            payload: wire::Json::new(&raw),
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "a local handler answered with invalid JSON");
                        error_body(ErrorCode::InternalError, version, "invalid answer")
                    }
                }
            }
            LocalReply::Error { code, description } => error_body(*code, version, description),
        };
        let frame = OverlayFrame {
            dest: Route::single(p.to),
            path: Route::single(self.core.settings.own_id.clone()),
            frame: Frame {
                id: p.id.into(),
                body,
            },
        };
        self.route(Ingress::Local, frame, now);
    }

    /// Sends a node-originated CALL.
    pub(super) fn originate(&mut self, caller: Caller, call: NodeCall, now: Instant) {
        let origin = call
            .on_behalf
            .unwrap_or_else(|| self.core.settings.own_id.clone());
        let id = call.id.unwrap_or_else(|| self.core.ids.next());
        let deadline = call.timeout.map(|t| now + t);
        if self
            .core
            .calls
            .insert(&origin, &id, caller, deadline)
            .is_err()
        {
            return self.call_done(
                caller,
                CallOutcome::NotSent("too many CALLs in flight".into()),
                now,
            );
        }
        let raw = match serde_json::value::RawValue::from_string(call.payload) {
            Ok(raw) => raw,
            Err(e) => {
                self.core.calls.take(&origin, &id);
                return self.call_done(caller, CallOutcome::NotSent(format!("payload: {e}")), now);
            }
        };
        let dest = match call.target {
            Target::Csms => routing::CSMS.to_owned(),
            Target::Id(id) => id,
        };
        let frame = OverlayFrame {
            dest: Route::single(dest),
            path: Route::single(origin.clone()),
            frame: Frame::call(id.as_str(), call.action.as_str(), &raw),
        };
        match self.route(Ingress::Local, frame, now) {
            Routed::Forwarded(link) if link != HERE => {
                if let Some(Link::Node(_)) = self.core.links.get(&link) {
                    self.core.calls.sent_via(&origin, &id, link);
                }
            }
            Routed::Forwarded(_) => {
                self.core.calls.take(&origin, &id);
                self.call_done(caller, CallOutcome::NotSent("unreachable".into()), now);
            }
            Routed::Refused(why) => {
                if self.core.calls.take(&origin, &id).is_some() {
                    self.call_done(caller, CallOutcome::NotSent(why.into()), now);
                }
            }
            Routed::Delivered | Routed::Dropped => {}
        }
    }

    fn is_node_call_reply(&self, frame: &OverlayFrame<'_>) -> bool {
        !self.core.calls.is_empty()
            && matches!(
                frame.frame.message_type(),
                MessageType::CallResult | MessageType::CallError | MessageType::CallResultError
            )
            && frame.dest.len() == 1
            && self
                .core
                .calls
                .contains(frame.dest.first(), &frame.frame.id)
    }

    fn node_call_reply(&mut self, frame: OverlayFrame<'_>, now: Instant) {
        let Some(caller) = self.core.calls.take(frame.dest.first(), &frame.frame.id) else {
            return;
        };
        let outcome = match &frame.frame.body {
            Body::CallResult { payload } => CallOutcome::Result(payload.get().to_owned()),
            Body::CallError(e) | Body::CallResultError(e) => CallOutcome::Error {
                code: e.code.to_string(),
                description: e.description.to_string(),
                details: e.details.get().to_owned(),
                from: frame.path.first().to_owned(),
            },
            _ => return,
        };
        self.call_done(caller, outcome, now);
    }

    pub(super) fn apply_announcement(
        &mut self,
        link: LinkId,
        peer: &str,
        allow: &AllowList,
        payload: &str,
        now: Instant,
    ) {
        let core = &mut self.core;
        let ann = match routing::Announcement::from_payload(payload) {
            Ok(a) => a,
            Err(e) => return tracing::warn!(peer = %peer, error = %e, "announcement ignored"),
        };
        let options = ApplyOptions {
            allow_move: core.settings.allow_move,
            ..ApplyOptions::default()
        };
        let applied = announce::apply(&mut core.table, link, allow, &ann, &options, now);
        for (id, why) in &applied.rejected {
            match why {
                RouteRejection::NotAllowed => core.security_event(
                    "route_not_allowed",
                    format_args!("node {peer:?} announced {id:?}, outside its allow-list; not installed"),
                ),
                RouteRejection::ClaimedElsewhere { link: other } => core.security_event(
                    "route_claimed_elsewhere",
                    format_args!("node {peer:?} announced {id:?}, already reachable via {other}; not installed"),
                ),
                other => tracing::warn!(peer = %peer, id = %id, "announced route refused: {other:?}"),
            }
        }
        for moved in &applied.moved {
            if moved.source == routing::Source::Connect {
                core.close(moved.from_link, "the charger moved to another node");
            }
        }
        if let Some(hub) = &mut core.hub {
            for id in &applied.withdrawn.unreachable {
                hub.gone(id);
            }
            for id in &applied.installed {
                let version = core.table.best_exact(id, now).and_then(|e| e.version);
                hub.reachable(id, version);
            }
        }
        core.flush_hub();
        if !applied.installed.is_empty() || !applied.withdrawn.is_empty() {
            core.announce.dirty = true;
        }
        core.announce
            .changed_all(applied.installed.iter().map(String::as_str));
        core.announce
            .changed_all(applied.withdrawn.entries.iter().map(|e| e.dest.as_str()));
        core.announce
            .changed_all(applied.moved.iter().map(|m| m.id.as_str()));
    }

    /// Hub: a frame the CSMS sent on a charger's socket.
    pub(super) fn on_csms_text(&mut self, link: LinkId, text: &str, now: Instant) {
        let Some(hub) = &mut self.core.hub else {
            return;
        };
        let Some((charger, version)) = hub.charger_of(link) else {
            return;
        };
        let frame = match decode_plain(text, &self.core.settings.limits) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(charger = %charger, error = %e, "malformed frame from the CSMS");
                let error = Frame::error(
                    e.reply_id(),
                    e.error_code().spelling(version),
                    e.to_string(),
                );
                return self
                    .core
                    .send_plain(link, error.to_plain_string(), IfFull::Return);
            }
        };
        let is_call = frame.message_type() == MessageType::Call;
        let id = is_call.then(|| frame.id.clone().into_owned());
        hub.on_csms_text(&charger, &frame, text, now);
        let overlay = OverlayFrame {
            dest: Route::single(charger.clone()),
            path: Route::single(routing::CSMS),
            frame,
        };
        let routed = self.route(Ingress::Plain { link }, overlay, now);
        if let (Some(id), true) = (id, routed.went())
            && let Some(hub) = &mut self.core.hub
        {
            hub.track_call(charger, id, link, now);
        }
    }

    /// Hub: tells the charger's edge that the CSMS refused it (§6.2).
    pub(super) fn csms_refused(
        &mut self,
        link: LinkId,
        http_status: Option<u16>,
        reason: &str,
        now: Instant,
    ) {
        let Some(hub) = &mut self.core.hub else {
            return;
        };
        let Some(charger) = hub.refused(link) else {
            return;
        };
        tracing::warn!(charger = %charger, reason, "the CSMS refused the charger");
        let payload = json!({"chargerId": charger, "status": "Refused", "httpStatus": http_status});
        let Ok(raw) = serde_json::value::to_raw_value(&payload) else {
            return;
        };
        let frame = OverlayFrame {
            dest: Route::single(charger),
            path: Route::single(routing::CSMS),
            frame: Frame {
                id: self.core.ids.next().into(),
                body: Body::Send {
                    action: CHARGER_CONNECTION_STATUS.into(),
                    payload: wire::Json::new(&raw),
                },
            },
        };
        self.route(Ingress::Plain { link }, frame, now);
    }

    /// A frame a CSMS socket could not take: its CALL is answered toward the charger, which
    /// keeps its message and retries.
    pub(super) fn returned(&mut self, link: LinkId, text: &str, _now: Instant) {
        let Some(hub) = &mut self.core.hub else {
            return;
        };
        let Some((charger, _)) = hub.charger_of(link) else {
            return;
        };
        let Ok(frame) = decode_plain(text, &self.core.settings.limits) else {
            return;
        };
        self.core.metrics.frames_dropped.queue_full.inc();
        tracing::warn!(%link, charger = %charger, "CSMS socket does not keep up; frame not queued");
        if frame.message_type() != MessageType::Call {
            return;
        }
        hub.returned(&charger, &frame.id);
        let error = OverlayFrame {
            dest: Route::single(charger),
            path: Route::single(self.core.settings.own_id.clone()),
            frame: Frame::error(
                frame.id.clone(),
                "GenericError",
                "the CSMS socket cannot take it now; retry",
            ),
        };
        self.core.deferred.push(Deferred::Local(error.to_text()));
    }
}

fn error_body(code: ErrorCode, version: OcppVersion, description: &str) -> Body<'static> {
    Body::CallError(ErrorBody {
        code: code.spelling(version).into(),
        description: description.to_owned().into(),
        details: wire::Json::new(wire::text::empty_details()),
    })
}

impl Core {
    /// Overlay links carry every charger's traffic, so they get backpressure: the driver waits
    /// for room. A pending announcement goes first on the uplink, so that the hub knows a
    /// charger before its first frame.
    pub(super) fn send_overlay(&mut self, link: LinkId, out: Outbound, now: Instant) {
        if self.announce.dirty && Some(link) == self.uplink {
            self.announce(now);
        }
        self.actions.push_back(Action::Send {
            link,
            out,
            if_full: IfFull::Wait,
        });
    }

    /// A CALLERROR toward a frame's originator, from this node, as overlay text.
    fn error_to(&self, frame: &OverlayFrame<'_>, code: ErrorCode, description: &str) -> String {
        OverlayFrame {
            dest: Route::single(frame.path.first().to_owned()),
            path: Route::single(self.settings.own_id.clone()),
            frame: Frame::error(
                frame.frame.id.clone(),
                code.spelling(OcppVersion::V21),
                description.to_owned(),
            ),
        }
        .to_text()
    }

    /// CALLERROR SecurityError for a CALL a policy refused, to its originator. The path
    /// starts with the CALL's destination, for which this node answers: a hub finds the
    /// charger's CSMS socket by it, and it is an id the link toward the originator may
    /// speak for.
    fn security_error_to(&self, call: &OverlayFrame<'_>, description: &str) -> String {
        let own = self.settings.own_id.as_str();
        let dest = call.dest.last();
        let ids = if dest == own || dest == routing::CSMS && self.hub.is_none() {
            vec![own.into()]
        } else {
            vec![dest.into(), own.into()]
        };
        OverlayFrame {
            dest: Route::single(call.path.first().to_owned()),
            path: Route::from_ids(ids).unwrap_or_else(|| Route::single(own.to_owned())),
            frame: Frame::error(
                call.frame.id.clone(),
                ErrorCode::SecurityError.spelling(OcppVersion::V21),
                description.to_owned(),
            ),
        }
        .to_text()
    }

    /// What the hub decided for a frame delivered to `"CSMS"`.
    fn carry_out(&mut self, out: crate::hub::Delivery, frame: &OverlayFrame<'_>) {
        use crate::hub::Delivery;
        match out {
            Delivery::ToCsms { link, text } => self.send_plain(link, text, IfFull::Return),
            Delivery::FromCache { link, overlay } => {
                self.deferred.push(Deferred::Plain(link, overlay))
            }
            Delivery::NotAnnounced => {
                if frame.frame.message_type() == MessageType::Call {
                    let error = self
                        .forwarder
                        .error_to_originator(frame, "charger not announced to the hub");
                    self.deferred.push(Deferred::Local(error.to_text()));
                }
            }
            Delivery::Dropped => {}
        }
    }
}
