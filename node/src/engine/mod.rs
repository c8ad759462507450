//! The per-frame engine: the node's forwarding core as a state machine, the quinn-proto way.
//!
//! It is fed [`Input`]s and the time, and answers with [`Action`]s: frames to write, links to
//! close, CSMS sockets to open, store jobs and local handlers to run, security events to record.
//! It owns the routing table, the correlation tables and the announcer, and drives the pure
//! `routing` crate with them. It does no I/O and holds no channel, so it is tested directly
//! (see `tests.rs`), and the async driver (`crate::driver`) only moves inputs in and actions out.
//!
//! Capabilities plug in without touching this module, through three seams:
//! * **stages** ([`stages::Stage`]), an ordered chain that sees every frame a plain peer sends
//!   (after decoding, before translation), every frame an overlay link brings (before routing),
//!   and every frame written to a plain peer (the last chance to rewrite it); validation, the
//!   busy limit and the edge's durable queue are stages;
//! * **local handlers** ([`handlers::Registry`]) for frames addressed to this node, by action;
//! * **node-originated CALLs** ([`calls::NodeCall`]), queued per peer under the one-outstanding
//!   rule, with the answer delivered back to the caller.
//!
//! The hub's CSMS side (one socket per charger, presence and grace, the response cache) is the
//! [`crate::hub::Presence`] sub-state machine, driven from here at the points where routes
//! appear and disappear.
//!
//! Payload bytes are never re-serialized: frames are decoded into borrowed views whose payload
//! is the raw JSON text, and encoded again around those same bytes.

mod announce;
mod binary;
pub mod calls;
pub mod handlers;
pub mod io;
mod plain;
mod route;
pub mod stages;
mod status;
#[cfg(test)]
mod tests;
mod token;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use routing::correlation::Correlation;
use routing::{AllowList, Announcer, Forwarder, LinkId, Table, TableConfig};
use wire::{Limits, OcppVersion};

use crate::core::ids::IdGen;
use crate::core::metrics::Metrics;
use crate::hub::Presence;
pub use calls::{CallOutcome, NodeCall, Target};
pub use handlers::{LocalHandler, LocalReply, LocalRequest, Registry, Scope};
pub use io::{Action, IfFull, Input, Outbound, Peer, Persisted, StoreJob, Token};
pub use stages::{Cx, Stage, Verdict};

/// Most CSMS CALLs queued toward one charger behind the one outstanding (§6.1).
const CHARGER_CALL_QUEUE: usize = 16;
/// Most outstanding CALLs per correlation table; beyond it new CALLs are refused.
const MAX_OUTSTANDING: usize = 100_000;
/// Most local handler requests waiting for their reply.
const MAX_LOCAL_REQUESTS: usize = 10_000;
/// How often route expiry, grace periods, call deadlines and announcement refreshes are
/// checked, and stages ticked.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// The SEND by which a hub tells an edge that the CSMS refused a charger (§6.2).
pub const CHARGER_CONNECTION_STATUS: &str = "ChargerConnectionStatus";
/// The pseudo link of routes this node announces for ids it answers for itself (a charger
/// that is away while its queued messages are replayed); no connection has this id.
pub const HERE: LinkId = LinkId(u64::MAX);
/// Such a route is the least preferred of its id.
const HERE_PRIORITY: u32 = 1000;

/// What the engine needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub own_id: String,
    pub hop_limit: usize,
    /// `"CSMS"` is delivered here: a hub, or a standalone local controller.
    pub owns_csms: bool,
    pub request_timeout: Duration,
    pub announce_ttl: Duration,
    pub csms_grace: Duration,
    pub allow_move: bool,
    pub limits: Limits,
}

impl Settings {
    pub fn from_config(config: &crate::config::Config) -> Settings {
        let o = &config.overlay;
        Settings {
            own_id: config.node.id.clone(),
            hop_limit: o.hop_limit,
            owns_csms: config.hub.is_some() || config.uplink.is_empty(),
            request_timeout: Duration::from_secs(o.request_timeout_s),
            announce_ttl: Duration::from_secs(o.announce_ttl_s),
            csms_grace: Duration::from_secs(o.csms_grace_s),
            allow_move: o.allow_move,
            limits: Limits {
                max_frame_bytes: config
                    .listener
                    .iter()
                    .map(|l| l.max_frame_bytes)
                    .max()
                    .unwrap_or(Limits::default().max_frame_bytes),
                ..Limits::default()
            },
        }
    }
}

/// A plain charger connected to this node.
struct ChargerLink {
    id: String,
    version: OcppVersion,
    max_pending: usize,
    /// The charger's CALLs waiting for an answer (forwarded, or held by a stage).
    outstanding: usize,
    /// The id of the CALL toward the charger that it has yet to answer (§6.1).
    busy: Option<String>,
    /// CALLs toward the charger behind the busy one: (id, plain text).
    queue: VecDeque<(String, String)>,
}

struct NodeLink {
    peer: String,
    /// Shared, so that checking a frame against it clones a pointer, not the list.
    allow: Arc<AllowList>,
    uplink: Option<String>,
    remote: SocketAddr,
}

enum Link {
    Charger(ChargerLink),
    Node(NodeLink),
    /// Hub: the CSMS socket of this charger.
    Csms(String),
}

/// A charger's CALL waiting for the CSMS's answer.
struct UpCall {
    link: LinkId,
    /// The stage that marked it, and its mark: told of the answer (or the timeout).
    mark: Option<(usize, u64)>,
}

/// A CALL waiting for a charger's answer.
struct DownCall {
    link: LinkId,
}

/// What a token stands for.
enum Owner {
    /// A stage's store job.
    Stage(usize),
    /// A local handler's request, and where its answer goes.
    Local(LocalPending),
}

struct LocalPending {
    to: String,
    id: String,
    version: Option<OcppVersion>,
    wants_reply: bool,
}

/// Work left for after the current input: frames that the handling of one frame generated,
/// routed once that one is done (routing them on the spot would make routing recursive).
enum Deferred {
    /// An overlay frame this node originates, as text.
    Local(String),
    /// An overlay frame translated from the plain peer on this link.
    Plain(LinkId, String),
    /// A node-originated CALL.
    Call(calls::Caller, NodeCall),
}

/// Everything but the stages, so that a stage can be handed the rest as its context.
pub(crate) struct Core {
    settings: Settings,
    metrics: Arc<Metrics>,
    forwarder: Forwarder,
    table: Table,
    announcer: Announcer,
    announce: announce::State,
    links: HashMap<LinkId, Link>,
    /// Plain chargers on this node, by id.
    chargers: HashMap<String, LinkId>,
    /// The active uplink (the default route).
    uplink: Option<LinkId>,
    /// Charger → CSMS CALLs, keyed (charger, upstream id).
    up: Correlation<UpCall>,
    /// CALLs toward chargers on this node, keyed (charger, the caller's id).
    down: Correlation<DownCall>,
    calls: calls::Calls,
    hub: Option<Presence>,
    handlers: Registry,
    owners: HashMap<u64, Owner>,
    next_token: u64,
    actions: VecDeque<Action>,
    deferred: Vec<Deferred>,
    ids: IdGen,
    next_housekeeping: Instant,
}

pub struct Engine {
    core: Core,
    stages: Vec<Box<dyn Stage>>,
}

impl Engine {
    pub fn new(settings: Settings, metrics: Arc<Metrics>) -> Engine {
        let own = settings.own_id.clone();
        Engine {
            core: Core {
                forwarder: Forwarder::new(own.clone())
                    .with_hop_limit(settings.hop_limit)
                    .with_csms_owner(settings.owns_csms),
                table: Table::new(TableConfig::default()),
                announcer: Announcer::new(own),
                announce: announce::State::default(),
                links: HashMap::new(),
                chargers: HashMap::new(),
                uplink: None,
                up: Correlation::new(MAX_OUTSTANDING),
                down: Correlation::new(MAX_OUTSTANDING),
                calls: calls::Calls::default(),
                hub: None,
                handlers: Registry::default(),
                owners: HashMap::new(),
                next_token: 1,
                actions: VecDeque::new(),
                deferred: Vec::new(),
                ids: IdGen::new(),
                next_housekeeping: Instant::now() + HOUSEKEEPING,
                settings,
                metrics,
            },
            stages: Vec::new(),
        }
    }

    /// Hub: serve the CSMS side with one socket per charger.
    pub fn with_hub(mut self, presence: Presence) -> Engine {
        self.core.hub = Some(presence);
        self
    }

    /// Appends a stage to the chain; stages run in the order they were added.
    pub fn add_stage(&mut self, stage: Box<dyn Stage>) {
        self.stages.push(stage);
    }

    pub fn stage_names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    pub fn handlers_mut(&mut self) -> &mut Registry {
        &mut self.core.handlers
    }

    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Up { link, peer } => match peer {
                Peer::Charger {
                    id,
                    version,
                    max_pending,
                } => self.charger_up(link, id, version, max_pending, now),
                Peer::Node {
                    peer,
                    allow,
                    uplink,
                    remote,
                } => self.node_up(link, peer, allow, uplink, remote, now),
            },
            Input::Down { link } => self.link_down(link, now),
            Input::Text { link, text } => match self.core.links.get(&link) {
                Some(Link::Charger(_)) => self.on_charger_text(link, &text, now),
                Some(Link::Node(_)) => self.on_node_text(link, &text, now),
                Some(Link::Csms(_)) => self.on_csms_text(link, &text, now),
                None => {}
            },
            Input::Binary { link, bytes } => self.on_node_binary(link, &bytes, now),
            Input::CsmsOpen { link } => {
                if let Some(hub) = &mut self.core.hub {
                    hub.opened(link);
                }
            }
            Input::CsmsClosed { link } => {
                if let Some(hub) = &mut self.core.hub {
                    hub.closed(link);
                }
            }
            Input::CsmsRefused {
                link,
                http_status,
                reason,
            } => self.csms_refused(link, http_status, &reason, now),
            Input::Returned { link, text } => self.returned(link, &text, now),
            Input::BulkDropped { link, bytes } => self.bulk_dropped(link, &bytes),
            Input::Persisted { token, result } => match self.core.owners.remove(&token.0) {
                Some(Owner::Stage(i)) => {
                    let (stages, mut cx) = self.split(i, now);
                    stages[i].persisted(token.0, result, &mut cx);
                }
                _ => tracing::debug!(?token, "store result for nobody"),
            },
            Input::LocalReply { token, reply } => self.local_reply(token, reply, now),
            Input::Call { token, call } => {
                self.core
                    .deferred
                    .push(Deferred::Call(calls::Caller::External(token), call));
            }
        }
        self.run_deferred(now);
    }

    /// The next time [`Engine::tick`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.core.up.next_deadline(),
            self.core.down.next_deadline(),
            self.core.hub.as_ref().and_then(Presence::next_deadline),
            Some(self.core.next_housekeeping),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers: CALL deadlines are exact; route expiry, grace periods, node-originated CALL
    /// deadlines, announcement refreshes and stage ticks are second-grained, on one
    /// housekeeping tick, because finding the next of them means a scan that must not run per
    /// frame.
    pub fn tick(&mut self, now: Instant) {
        self.expire_up(now);
        self.expire_down(now);
        if let Some(hub) = &mut self.core.hub {
            for (link, text) in hub.expire_calls(now) {
                self.core.send_plain(link, text, IfFull::Return);
            }
        }
        if now >= self.core.next_housekeeping {
            self.core.next_housekeeping = now + HOUSEKEEPING;
            self.housekeeping(now);
        }
        self.run_deferred(now);
    }

    /// The driver has no more inputs queued: a pending announcement goes out now, so that a
    /// burst of connects is announced once.
    pub fn idle(&mut self, now: Instant) {
        if self.core.announce.dirty {
            self.core.announce(now);
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.core.actions.pop_front()
    }

    /// The routing state for the admin API.
    pub fn status(&self, now: Instant) -> serde_json::Value {
        let mut status = self.core.status(now);
        for stage in &self.stages {
            if let Some((key, value)) = stage.status(now) {
                status[key] = value;
            }
        }
        status
    }

    /// The stages, and a context over everything else for stage `i`.
    fn split(&mut self, i: usize, now: Instant) -> (&mut Vec<Box<dyn Stage>>, Cx<'_>) {
        (&mut self.stages, Cx::new(&mut self.core, i, now))
    }

    /// Tells every stage something, in order.
    fn each_stage(&mut self, now: Instant, mut f: impl FnMut(&mut dyn Stage, &mut Cx<'_>)) {
        for i in 0..self.stages.len() {
            let (stages, mut cx) = self.split(i, now);
            f(stages[i].as_mut(), &mut cx);
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        for caller in self.core.calls.expired(now) {
            self.call_done(caller, CallOutcome::Timeout, now);
        }
        let expired = self.core.table.expire(now);
        self.core
            .announce
            .changed_all(expired.entries.iter().map(|e| e.dest.as_str()));
        if !expired.is_empty()
            && let Some(hub) = &mut self.core.hub
        {
            for id in &expired.unreachable {
                hub.gone(id);
            }
        }
        if let Some(hub) = &mut self.core.hub {
            let table = &self.core.table;
            hub.housekeeping(now, |id| table.is_present(id, now));
        }
        self.core.flush_hub();
        self.core.refresh_announcement(now);
        self.each_stage(now, |stage, cx| stage.tick(cx));
    }

    /// Routes what the last input left behind, until nothing is left.
    fn run_deferred(&mut self, now: Instant) {
        while let Some(next) = self.core.deferred.pop() {
            match next {
                Deferred::Local(text) => self.route_text(routing::Ingress::Local, &text, now),
                Deferred::Plain(link, text) => {
                    self.route_text(routing::Ingress::Plain { link }, &text, now)
                }
                Deferred::Call(caller, call) => self.originate(caller, call, now),
            }
        }
    }

    fn route_text(&mut self, ingress: routing::Ingress<'_>, text: &str, now: Instant) {
        match wire::text::decode_overlay(text, &self.core.settings.limits) {
            Ok(frame) => {
                self.route(ingress, frame, now);
            }
            Err(e) => tracing::error!(error = %e, "own frame does not decode"),
        }
    }

    /// Delivers a node-originated CALL's outcome to whoever waits for it.
    fn call_done(&mut self, caller: calls::Caller, outcome: CallOutcome, now: Instant) {
        match caller {
            calls::Caller::Stage(i, token) => {
                if i < self.stages.len() {
                    let (stages, mut cx) = self.split(i, now);
                    stages[i].call_done(token, outcome, &mut cx);
                }
            }
            calls::Caller::External(token) => self
                .core
                .actions
                .push_back(Action::CallDone { token, outcome }),
        }
    }
}

impl Core {
    fn token(&mut self, owner: Owner) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        self.owners.insert(t, owner);
        t
    }

    fn charger(&self, link: LinkId) -> Option<&ChargerLink> {
        match self.links.get(&link) {
            Some(Link::Charger(c)) => Some(c),
            _ => None,
        }
    }

    fn charger_mut(&mut self, link: LinkId) -> Option<&mut ChargerLink> {
        match self.links.get_mut(&link) {
            Some(Link::Charger(c)) => Some(c),
            _ => None,
        }
    }

    fn node_link(&self, link: LinkId) -> Option<&NodeLink> {
        match self.links.get(&link) {
            Some(Link::Node(n)) => Some(n),
            _ => None,
        }
    }

    fn security_event(&mut self, kind: &'static str, detail: impl std::fmt::Display) {
        self.actions.push_back(Action::SecurityEvent {
            kind,
            detail: detail.to_string(),
        });
    }

    /// A plain text toward a charger or CSMS socket.
    fn send_plain(&mut self, link: LinkId, text: String, if_full: IfFull) {
        self.actions.push_back(Action::Send {
            link,
            out: Outbound::Text(text),
            if_full,
        });
    }

    /// A charger's CALL got its answer (or its timeout).
    fn release(&mut self, link: LinkId) {
        if let Some(c) = self.charger_mut(link) {
            c.outstanding = c.outstanding.saturating_sub(1);
        }
    }

    fn close(&mut self, link: LinkId, reason: &str) {
        self.actions.push_back(Action::Close {
            link,
            reason: reason.to_owned(),
        });
    }

    /// The OCPP version a charger id is known to speak: its connection here, or its route.
    fn version_of(&self, id: &str, now: Instant) -> Option<OcppVersion> {
        if let Some(c) = self.chargers.get(id).and_then(|l| self.charger(*l)) {
            return Some(c.version);
        }
        self.table.best_exact(id, now).and_then(|e| e.version)
    }

    /// Carries out what the hub's presence decided (sockets to open and close).
    fn flush_hub(&mut self) {
        let Some(hub) = &mut self.hub else {
            return;
        };
        for effect in hub.take_effects() {
            match effect {
                crate::hub::Effect::Open {
                    link,
                    charger,
                    version,
                } => {
                    self.links.insert(link, Link::Csms(charger.clone()));
                    self.metrics.csms_connections.inc();
                    self.actions.push_back(Action::OpenCsms {
                        link,
                        charger,
                        version,
                    });
                }
                crate::hub::Effect::Close { link } => {
                    if self.links.remove(&link).is_some() {
                        self.metrics.csms_connections.dec();
                    }
                    self.actions.push_back(Action::CloseCsms { link });
                }
            }
        }
    }

    /// Announces `id` as reachable through this node itself (see [`HERE`]).
    fn announce_here(&mut self, id: &str, version: Option<OcppVersion>) {
        if self.table.entries(id).iter().any(|e| e.link == HERE) {
            return;
        }
        let route = routing::RouteEntry {
            dest: id.to_owned(),
            link: HERE,
            priority: HERE_PRIORITY,
            source: routing::Source::Static,
            expires: None,
            version,
        };
        if let Err(e) = self.table.insert(route) {
            return tracing::warn!(id, error = %e, "cannot announce the id");
        }
        self.announce.changed(id);
    }

    fn withdraw_here(&mut self, id: &str, now: Instant) {
        if self
            .table
            .remove(id, HERE, routing::Source::Static, now)
            .is_some()
        {
            self.announce.changed(id);
        }
    }
}
