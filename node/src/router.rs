//! The overlay router: one task that owns the routing table, the correlation tables and the
//! announcer, and drives the pure `routing` crate with the node's connections.
//!
//! Every connection (plain charger session, overlay link, hub CSMS socket) is a task of its own
//! that does socket I/O only; it hands the router the text it read and gets the text to write
//! back through a bounded channel. So the per-frame path takes no lock: the router's state
//! belongs to this one task, and the tasks talk by message passing (the quinn-proto / quinn
//! split, with `routing` as the proto half).
//!
//! Payload bytes are never re-serialized: frames are decoded into borrowed views whose payload
//! is the raw JSON text, and encoded again around those same bytes.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use routing::announce::{self, ApplyOptions, RouteRejection, Validity};
use routing::correlation::{self, Correlation};
use routing::{AllowList, Announcer, Decision, Forwarder, Ingress, LinkId, Table, TableConfig};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use wire::text::{Body, Frame, OverlayFrame, decode_overlay, decode_plain};
use wire::{Limits, MessageType, OcppVersion, Route};

use crate::journal::{self, Appended};
use crate::outbox::{self, Class, SendState, Settling, Waiter};
use crate::response_cache::{ResponseCache, Verdict};
use crate::state::Node;

/// Most CSMS CALLs queued toward one charger behind the one outstanding (§6.1).
const CHARGER_CALL_QUEUE: usize = 16;
/// Most outstanding CALLs per correlation table; beyond it new CALLs are refused.
const MAX_OUTSTANDING: usize = 100_000;
/// How often route expiry, grace periods and announcement refreshes are checked.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// The SEND by which a hub tells an edge that the CSMS refused a charger (§6.2).
pub const CHARGER_CONNECTION_STATUS: &str = "ChargerConnectionStatus";

/// What the router writes to a connection.
#[derive(Debug)]
pub enum ToPeer {
    Text(String),
    /// Close the connection, with this reason (policy close).
    Close(String),
}

/// What connection tasks tell the router.
pub enum Event {
    /// A plain charger finished its upgrade on this node.
    ChargerUp {
        link: LinkId,
        charger: String,
        version: OcppVersion,
        tx: mpsc::Sender<ToPeer>,
        /// Wakes the session to close when its channel is full (a slow consumer).
        kill: Arc<Notify>,
        /// The charger's CALLs waiting for an answer: the session counts them in (and answers
        /// "busy" beyond its limit), the router counts them out when each is settled.
        pending: Arc<AtomicUsize>,
    },
    ChargerDown {
        link: LinkId,
    },
    /// A frame from a plain charger: a CALL that passed schema validation, or a reply.
    FromCharger {
        link: LinkId,
        /// The bytes as read: shared with the socket's buffer, not copied.
        text: Utf8Bytes,
    },
    /// An overlay link came up; `uplink` names it when this node dialled it.
    LinkUp {
        link: LinkId,
        peer: String,
        allow: AllowList,
        uplink: Option<String>,
        remote: SocketAddr,
        tx: mpsc::Sender<ToPeer>,
    },
    LinkDown {
        link: LinkId,
    },
    FromLink {
        link: LinkId,
        text: Utf8Bytes,
    },
    /// Hub: a charger's CSMS socket opened.
    CsmsOpen {
        link: LinkId,
    },
    /// Hub: the CSMS refused the charger (HTTP status, or no acceptable subprotocol).
    CsmsRefused {
        link: LinkId,
        http_status: Option<u16>,
        reason: String,
    },
    /// Hub: the CSMS socket closed; the connector redials.
    CsmsClosed {
        link: LinkId,
    },
    FromCsms {
        link: LinkId,
        text: Utf8Bytes,
    },
    /// The admin API asks for the routing state.
    Snapshot(oneshot::Sender<Value>),
    /// Edge: a charger's CALL is in the durable queue (or was found there: a re-send).
    Journaled {
        link: LinkId,
        /// The charger's message id, for the answer.
        id: String,
        appended: Appended,
    },
    /// Edge: the store has committed (or failed to commit) a queued message's settling.
    OutboxSettled {
        charger: String,
        seq: u64,
        committed: bool,
    },
}

pub type RouterTx = mpsc::Sender<Event>;

/// A plain charger connected to this node.
struct ChargerLink {
    id: String,
    version: OcppVersion,
    kill: Arc<Notify>,
    /// The id of the CALL the charger has yet to answer (one per direction, §6.1).
    busy: Option<String>,
    queue: VecDeque<(String, String)>,
    /// The charger's CALLs still waiting for an answer (see `Event::ChargerUp`).
    pending: Arc<AtomicUsize>,
}

struct OverlayLink {
    peer: String,
    /// Shared, so that checking a frame against it clones a pointer, not the list.
    allow: Arc<AllowList>,
    uplink: Option<String>,
    remote: SocketAddr,
}

/// Hub: one charger's socket to the CSMS.
struct CsmsLink {
    charger: String,
    state: CsmsState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CsmsState {
    Connecting,
    Open,
    Refused,
}

impl CsmsState {
    fn as_str(self) -> &'static str {
        match self {
            CsmsState::Connecting => "connecting",
            CsmsState::Open => "open",
            CsmsState::Refused => "refused",
        }
    }
}

enum Kind {
    Charger(ChargerLink),
    Overlay(OverlayLink),
    Csms(CsmsLink),
}

struct Link {
    kind: Kind,
    tx: mpsc::Sender<ToPeer>,
}

/// Hub: what is kept per charger that has (or had) a CSMS socket.
struct CsmsEntry {
    link: LinkId,
    version: OcppVersion,
    /// The last overlay path seen from the charger (for the status page).
    path: Option<Vec<String>>,
    /// Stops the connector task when dropped.
    _stop: oneshot::Sender<()>,
}

/// An overlay frame (as text) to route after the current event.
enum Deferred {
    /// Originated by this node.
    Local(String),
    /// Translated from the plain peer on this link.
    Plain(LinkId, String),
}

/// A charger's CALL waiting for the CSMS's answer (edge side).
struct UpCall {
    link: LinkId,
    /// What the answer tells the edge for when the uplink is down.
    note: Note,
}

/// Answers the edge learns from (§6.3: offline Authorize, offline boot).
enum Note {
    None,
    Authorize(String),
    Boot,
    /// Answered by the edge if the CSMS's answer does not come in time.
    Heartbeat,
}

/// A CSMS CALL waiting for a charger's answer (edge side), or for the charger's edge (hub side).
struct DownCall {
    link: LinkId,
}

pub struct Router {
    node: Arc<Node>,
    forwarder: Forwarder,
    table: Table,
    announcer: Announcer,
    limits: Limits,
    request_timeout: Duration,
    /// Charger → CSMS CALLs, keyed (charger, upstream id).
    up: Correlation<UpCall>,
    /// CSMS → charger CALLs at the charger's node, keyed (charger, CSMS id).
    down: Correlation<DownCall>,
    /// Hub: CSMS → charger CALLs, keyed (charger, CSMS id); answered on timeout.
    hub_calls: Correlation<DownCall>,
    links: HashMap<LinkId, Link>,
    /// Hub: CSMS sockets by charger id.
    csms: HashMap<String, CsmsEntry>,
    /// Hub: chargers whose edge link was lost, and when their CSMS socket closes.
    grace: HashMap<String, Instant>,
    /// The active uplink.
    uplink: Option<LinkId>,
    /// Frames this node generated while handling another one (errors, "busy"), routed once
    /// that one is done. Routing them on the spot would make routing recursive.
    deferred: Vec<Deferred>,
    /// Routes changed since the last announcement.
    dirty: bool,
    /// The ids whose routes changed since then: an announcement looks only at them.
    changed: std::collections::HashSet<String>,
    next_housekeeping: Instant,
    ids: IdGen,
    next_refresh: Option<Instant>,
    /// Edge: the durable outbound queue's memory (None where the node owns the CSMS side).
    edge: Option<outbox::Edge>,
    /// Hub: answers to transaction messages, so that replays are not sent twice.
    responses: ResponseCache,
    /// Plain chargers on this node by id.
    charger_links: HashMap<String, LinkId>,
    /// Chargers whose queue may move now (their link or the uplink came up).
    to_pump: Vec<String>,
    pump_all: bool,
    next_prune: Instant,
}

impl Router {
    pub fn new(node: Arc<Node>) -> Router {
        let o = &node.config.overlay;
        let own = node.config.node.id.clone();
        let limits = Limits {
            max_frame_bytes: node
                .config
                .listener
                .iter()
                .map(|l| l.max_frame_bytes)
                .max()
                .unwrap_or(Limits::default().max_frame_bytes),
            ..Limits::default()
        };
        Router {
            forwarder: Forwarder::new(own.clone())
                .with_hop_limit(o.hop_limit)
                .with_csms_owner(node.config.hub.is_some()),
            table: Table::new(TableConfig::default()),
            announcer: Announcer::new(own),
            limits,
            request_timeout: Duration::from_secs(o.request_timeout_s),
            up: Correlation::new(MAX_OUTSTANDING),
            down: Correlation::new(MAX_OUTSTANDING),
            hub_calls: Correlation::new(MAX_OUTSTANDING),
            links: HashMap::new(),
            csms: HashMap::new(),
            grace: HashMap::new(),
            uplink: None,
            deferred: Vec::new(),
            dirty: false,
            changed: std::collections::HashSet::new(),
            next_housekeeping: Instant::now() + HOUSEKEEPING,
            ids: IdGen::new(),
            next_refresh: None,
            edge: (node.config.hub.is_none()).then(outbox::Edge::default),
            responses: ResponseCache::new(
                Duration::from_secs((o.csms_grace_s.max(o.request_timeout_s) * 2).max(60)),
                Duration::from_secs(o.request_timeout_s),
            ),
            charger_links: HashMap::new(),
            to_pump: Vec::new(),
            pump_all: false,
            next_prune: Instant::now(),
            node,
        }
    }

    /// Edge: takes over the queue the store kept across a restart.
    pub fn load_outbox(&mut self, loaded: journal::Loaded) {
        if let Some(edge) = &mut self.edge {
            if !loaded.entries.is_empty() {
                tracing::info!(
                    messages = loaded.entries.len(),
                    "transaction messages from before the restart are queued for the CSMS"
                );
            }
            self.node
                .metrics
                .outbox_dead_letters
                .set(loaded.dead_letters as i64);
            edge.load(loaded);
            self.node
                .metrics
                .outbox_queued
                .set(edge.queues.len() as i64);
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => {
                        self.handle(event).await;
                        self.route_deferred().await;
                    }
                    None => return,
                },
                _ = sleep_until(wake) => self.on_timer(Instant::now()).await,
            }
            // Coalesce announcements while a burst of events is queued; frames sent upward
            // flush them first anyway (see `send_overlay`).
            if self.dirty && rx.is_empty() {
                self.announce().await;
            }
        }
    }

    async fn route_deferred(&mut self) {
        while let Some(next) = self.deferred.pop() {
            let (ingress, text) = match &next {
                Deferred::Local(text) => (Ingress::Local, text),
                Deferred::Plain(link, text) => (Ingress::Plain { link: *link }, text),
            };
            match decode_overlay(text, &self.limits) {
                Ok(frame) => {
                    self.route(ingress, frame, Instant::now()).await;
                }
                Err(e) => tracing::error!(error = %e, "own frame does not decode"),
            }
        }
    }

    /// CALL deadlines are exact; route expiry, grace periods and announcement refreshes are
    /// second-grained and checked by one housekeeping tick, because finding the next of them
    /// means a scan of the table that must not run per frame.
    fn next_wake(&self) -> Option<Instant> {
        [
            self.up.next_deadline(),
            self.down.next_deadline(),
            self.hub_calls.next_deadline(),
            Some(self.next_housekeeping),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    async fn handle(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::ChargerUp {
                link,
                charger,
                version,
                tx,
                kill,
                pending,
            } => self.charger_up(link, charger, version, (tx, kill), pending, now),
            Event::ChargerDown { link } => self.link_down(link, now),
            Event::FromCharger { link, text } => self.on_charger_frame(link, &text, now).await,
            Event::LinkUp {
                link,
                peer,
                allow,
                uplink,
                remote,
                tx,
            } => self.link_up(link, peer, allow, uplink, remote, tx),
            Event::LinkDown { link } => self.link_down(link, now),
            Event::FromLink { link, text } => self.on_link_frame(link, &text, now).await,
            Event::CsmsOpen { link } => self.set_csms_state(link, CsmsState::Open),
            Event::CsmsClosed { link } => {
                if let Some(c) = self.csms_link(link) {
                    let charger = c.charger.clone();
                    self.responses.csms_closed(&charger);
                }
                self.set_csms_state(link, CsmsState::Connecting)
            }
            Event::CsmsRefused {
                link,
                http_status,
                reason,
            } => self.csms_refused(link, http_status, &reason, now).await,
            Event::FromCsms { link, text } => self.on_csms_frame(link, &text, now).await,
            Event::Snapshot(reply) => {
                let _ = reply.send(self.snapshot(now));
            }
            Event::Journaled { link, id, appended } => {
                self.outbox_journaled(link, id, appended, now)
            }
            Event::OutboxSettled {
                charger,
                seq,
                committed,
            } => self.outbox_settled(&charger, seq, committed, now),
        }
        if std::mem::take(&mut self.pump_all) {
            let chargers: Vec<String> = self
                .edge
                .as_ref()
                .map(|e| e.queues.chargers().cloned().collect())
                .unwrap_or_default();
            self.to_pump.extend(chargers);
        }
        while let Some(charger) = self.to_pump.pop() {
            self.outbox_pump(&charger, now).await;
        }
    }

    // -----------------------------------------------------------------------------------------
    // Connections coming and going
    // -----------------------------------------------------------------------------------------

    fn charger_up(
        &mut self,
        link: LinkId,
        charger: String,
        version: OcppVersion,
        (tx, kill): (mpsc::Sender<ToPeer>, Arc<Notify>),
        pending: Arc<AtomicUsize>,
        now: Instant,
    ) {
        // A newer connection of the same charger replaces the older one (§4): route to it at
        // once, not only when the older session has finished closing.
        let older: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| matches!(&l.kind, Kind::Charger(c) if c.id == charger))
            .map(|(l, _)| *l)
            .collect();
        for old in older {
            self.table.remove_link(old, now);
            self.changed.insert(charger.clone());
        }
        let route = routing::RouteEntry {
            dest: charger.clone(),
            link,
            priority: 0,
            source: routing::Source::Connect,
            expires: None,
            version: Some(version),
        };
        if let Err(e) = self.table.insert(route) {
            tracing::error!(charger = %charger, error = %e, "cannot route to the charger");
        }
        self.changed.insert(charger.clone());
        self.grace.remove(&charger);
        self.charger_links.insert(charger.clone(), link);
        self.withdraw_replay_route(&charger, now);
        self.to_pump.push(charger.clone());
        self.links.insert(
            link,
            Link {
                kind: Kind::Charger(ChargerLink {
                    id: charger.clone(),
                    version,
                    kill,
                    busy: None,
                    queue: VecDeque::new(),
                    pending,
                }),
                tx,
            },
        );
        if self.forwarder.owns_csms() {
            self.ensure_csms(&charger, now);
        }
        self.dirty = true;
    }

    fn link_up(
        &mut self,
        link: LinkId,
        peer: String,
        allow: AllowList,
        uplink: Option<String>,
        remote: SocketAddr,
        tx: mpsc::Sender<ToPeer>,
    ) {
        let direction = if uplink.is_some() {
            &self.node.metrics.uplink_links
        } else {
            &self.node.metrics.inbound_links
        };
        direction.inc();
        if uplink.is_some() {
            // At most one uplink is up (the dialer guarantees it); it is the default route.
            self.uplink = Some(link);
            self.table.set_default(Some(link));
            self.node
                .uplink_up
                .store(true, std::sync::atomic::Ordering::Release);
            self.pump_all = true;
            self.announcer.link_up(link);
            self.dirty = true;
            self.schedule_refresh(Instant::now());
        }
        tracing::info!(%link, peer = %peer, %remote, uplink = uplink.is_some(), "overlay link up");
        self.links.insert(
            link,
            Link {
                kind: Kind::Overlay(OverlayLink {
                    peer,
                    allow: Arc::new(allow),
                    uplink,
                    remote,
                }),
                tx,
            },
        );
    }

    fn link_down(&mut self, link: LinkId, now: Instant) {
        let Some(gone) = self.links.remove(&link) else {
            return;
        };
        let removed = self.table.remove_link(link, now);
        self.changed
            .extend(removed.entries.iter().map(|e| e.dest.clone()));
        match gone.kind {
            Kind::Overlay(o) => {
                if o.uplink.is_some() {
                    self.node.metrics.uplink_links.dec();
                } else {
                    self.node.metrics.inbound_links.dec();
                }
                if self.uplink == Some(link) {
                    self.uplink = None;
                    self.table.set_default(None);
                    self.next_refresh = None;
                    self.node
                        .uplink_up
                        .store(false, std::sync::atomic::Ordering::Release);
                    self.outbox_uplink_lost();
                }
                self.announcer.link_down(link);
                tracing::info!(%link, peer = %o.peer, "overlay link down");
                // Keep the CSMS sockets a while: the edge may be back before the charger
                // notices, and replays must still find their socket (§6.2).
                let until = now + Duration::from_secs(self.node.config.overlay.csms_grace_s);
                for id in removed.unreachable {
                    if self.csms.contains_key(&id) {
                        self.grace.insert(id, until);
                    }
                }
            }
            Kind::Charger(c) => {
                if self.charger_links.get(&c.id) == Some(&link) {
                    self.charger_links.remove(&c.id);
                }
                if let Some(edge) = &mut self.edge {
                    edge.queues.forget_waiters(link);
                    if edge.queues.head(&c.id).is_some() {
                        self.to_pump.push(c.id.clone());
                    }
                }
                if self.forwarder.owns_csms() {
                    for id in &removed.unreachable {
                        self.close_csms(id);
                    }
                }
                tracing::debug!(charger = %c.id, "charger left the routing table");
            }
            Kind::Csms(c) => {
                tracing::debug!(charger = %c.charger, "CSMS connector ended");
            }
        }
        self.dirty = true;
    }

    fn charger(&self, link: LinkId) -> Option<&ChargerLink> {
        match self.links.get(&link).map(|l| &l.kind) {
            Some(Kind::Charger(c)) => Some(c),
            _ => None,
        }
    }

    fn charger_mut(&mut self, link: LinkId) -> Option<&mut ChargerLink> {
        match self.links.get_mut(&link).map(|l| &mut l.kind) {
            Some(Kind::Charger(c)) => Some(c),
            _ => None,
        }
    }

    fn overlay(&self, link: LinkId) -> Option<&OverlayLink> {
        match self.links.get(&link).map(|l| &l.kind) {
            Some(Kind::Overlay(o)) => Some(o),
            _ => None,
        }
    }

    fn csms_link(&self, link: LinkId) -> Option<&CsmsLink> {
        match self.links.get(&link).map(|l| &l.kind) {
            Some(Kind::Csms(c)) => Some(c),
            _ => None,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Frames
    // -----------------------------------------------------------------------------------------

    /// A charger's frame: a CALL goes up under a fresh UUID (§6.1), a reply answers a CSMS CALL.
    async fn on_charger_frame(&mut self, link: LinkId, text: &str, now: Instant) {
        let Some(c) = self.charger(link) else {
            return;
        };
        let charger = c.id.clone();
        let frame = match decode_plain(text, &self.limits) {
            Ok(f) => f,
            // The session checked the frame already; this is a bug, not a peer's mistake.
            Err(e) => {
                return tracing::error!(charger = %charger, error = %e, "undecodable frame reached the router");
            }
        };
        let overlay = match frame.message_type() {
            MessageType::Call => {
                // Borrowed, not copied: this runs for every CALL.
                let action: &str = frame.action().unwrap_or_default();
                let payload: &str = frame.payload().map_or("{}", |p| p.get());
                if self.uplink.is_none() && !self.forwarder.owns_csms() {
                    self.call_settled(link);
                    let version = self.charger(link).map_or(OcppVersion::V16, |c| c.version);
                    let reply = if outbox::class(version, action) == Class::OfflineLocal {
                        self.node.metrics.outbox_local_answers.inc();
                        let payload: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
                        let answer = self.local_answer(&charger, version, action, &payload, None);
                        match serde_json::value::to_raw_value(&answer) {
                            Ok(raw) => Frame::result(frame.id.clone(), &raw).to_plain_string(),
                            Err(_) => return,
                        }
                    } else {
                        Frame::error(frame.id, "GenericError", "uplink unavailable")
                            .to_plain_string()
                    };
                    self.send_plain(link, reply);
                    return;
                }
                let note = match action {
                    "BootNotification" if self.edge.is_some() => Note::Boot,
                    "Heartbeat" if self.edge.is_some() => Note::Heartbeat,
                    "Authorize" if self.edge.is_some() => {
                        outbox::authorize_tag(payload).map_or(Note::None, Note::Authorize)
                    }
                    _ => Note::None,
                };
                let upstream = self.ids.next();
                let deadline = now + self.request_timeout;
                match correlation::plain_call_to_overlay(
                    &mut self.up,
                    &charger,
                    frame,
                    upstream,
                    deadline,
                    UpCall { link, note },
                ) {
                    Ok(f) => f,
                    Err(e) => {
                        self.call_settled(link);
                        tracing::warn!(charger = %charger, error = %e, "CALL not forwarded");
                        return;
                    }
                }
            }
            MessageType::Send => OverlayFrame {
                dest: Route::single(routing::CSMS),
                path: Route::single(charger.clone()),
                frame,
            },
            _ => match correlation::plain_reply_to_overlay(&mut self.down, &charger, frame) {
                Ok((f, _)) => {
                    self.charger_answered(link);
                    f
                }
                Err(e) => {
                    tracing::debug!(charger = %charger, error = %e, "unsolicited reply dropped");
                    return;
                }
            },
        };
        self.route(Ingress::Plain { link }, overlay, now).await;
    }

    async fn on_link_frame(&mut self, link: LinkId, text: &str, now: Instant) {
        let Some(o) = self.overlay(link) else {
            return;
        };
        let frame = match decode_overlay(text, &self.limits) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(%link, peer = %o.peer, error = %e, "malformed overlay frame dropped");
                self.node.metrics.frames_dropped.inc();
                return;
            }
        };
        // Announcements are for this hop only: installed here, never forwarded.
        if let Body::Send { action, payload } = &frame.frame.body
            && action == announce::ACTION
        {
            let (allow, peer) = (o.allow.clone(), o.peer.clone());
            if !allow.allows(frame.path.first()) {
                self.node.security_event(
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
        if self.is_outbox_reply(&frame) {
            return self.outbox_reply(frame, now);
        }
        let allow = o.allow.clone();
        self.route(
            Ingress::Node {
                link,
                allow: &allow,
            },
            frame,
            now,
        )
        .await;
    }

    /// Hub: a frame the CSMS sent on charger `c`'s socket.
    async fn on_csms_frame(&mut self, link: LinkId, text: &str, now: Instant) {
        let Some(c) = self.csms_link(link) else {
            return;
        };
        let charger = c.charger.clone();
        let version = self
            .csms
            .get(&charger)
            .map_or(OcppVersion::V16, |e| e.version);
        let frame = match decode_plain(text, &self.limits) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(charger = %charger, error = %e, "malformed frame from the CSMS");
                let error = Frame::error(
                    e.reply_id(),
                    e.error_code().spelling(version),
                    e.to_string(),
                );
                self.send_plain(link, error.to_plain_string());
                return;
            }
        };
        let is_call = frame.message_type() == MessageType::Call;
        let id = frame.id.clone().into_owned();
        if !self.responses.is_empty() {
            match frame.message_type() {
                MessageType::CallResult => self.responses.on_reply(&charger, &id, text, now),
                MessageType::CallError | MessageType::CallResultError => {
                    self.responses.on_error(&charger, &id)
                }
                _ => {}
            }
        }
        let overlay = OverlayFrame {
            dest: Route::single(charger.clone()),
            path: Route::single(routing::CSMS),
            frame,
        };
        let forwarded = self.route(Ingress::Plain { link }, overlay, now).await;
        if is_call && forwarded {
            let pending = correlation::Pending {
                original_id: id.clone(),
                reply_to: routing::CSMS.to_owned(),
                deadline: now + self.request_timeout,
                data: DownCall { link },
            };
            if let Err(e) = self
                .hub_calls
                .insert(correlation::Key::new(charger, id), pending)
            {
                tracing::warn!(error = %e, "CSMS CALL not tracked");
            }
        }
    }

    /// Routes one overlay frame and carries out the decision. True when it was forwarded.
    async fn route(&mut self, ingress: Ingress<'_>, frame: OverlayFrame<'_>, now: Instant) -> bool {
        let received = self.forwarder.receive(&mut self.table, ingress, frame, now);
        match received.decision {
            Decision::Forward { link, frame } => {
                self.node.metrics.frames_forwarded.inc();
                self.send(link, frame).await;
                true
            }
            Decision::Deliver(frame) => {
                self.deliver(frame);
                true
            }
            Decision::Broadcast { except, frame } => {
                let text = frame.to_text();
                let targets: Vec<LinkId> = self
                    .links
                    .iter()
                    .filter(|(l, k)| Some(**l) != except && matches!(k.kind, Kind::Overlay(_)))
                    .map(|(l, _)| *l)
                    .collect();
                for target in targets {
                    self.send_overlay(target, text.clone()).await;
                }
                true
            }
            Decision::Reply {
                link,
                frame,
                reason,
            } => {
                tracing::info!(dest = %frame.dest.first(), reason = reason.description(), "CALL refused");
                self.node.metrics.frames_dropped.inc();
                match link {
                    Some(link) => self.send(link, frame).await,
                    None => tracing::warn!("own CALL refused: {}", reason.description()),
                }
                false
            }
            Decision::Drop(reason) => {
                self.node.metrics.frames_dropped.inc();
                if reason == routing::Refusal::Loop {
                    self.node
                        .security_event("loop", "a frame came back to this node; dropped");
                } else {
                    tracing::info!(reason = reason.description(), "frame dropped");
                }
                false
            }
            Decision::Reject(routing::Rejection::PathNotAllowed { originator }) => {
                self.node.metrics.frames_dropped.inc();
                let link = ingress_peer(&ingress);
                let peer = link
                    .and_then(|l| self.links.get(&l))
                    .map(|l| match &l.kind {
                        Kind::Overlay(o) => o.peer.clone(),
                        _ => String::new(),
                    })
                    .unwrap_or_default();
                self.node.security_event(
                    "path_not_allowed",
                    format_args!("node {peer:?} sent a frame for {originator:?}, outside its allow-list; dropped"),
                );
                false
            }
        }
    }

    /// A frame addressed to this node (or to "CSMS" on the hub).
    fn deliver(&mut self, frame: OverlayFrame<'_>) {
        if !self.forwarder.owns_csms() {
            tracing::debug!(id = %frame.frame.id, "frame for this node ignored (no local handler)");
            return;
        }
        let charger = frame.path.first().to_owned();
        let Some(entry) = self.csms.get_mut(&charger) else {
            if frame.frame.message_type() == MessageType::Call {
                let error = self
                    .forwarder
                    .error_to_originator(&frame, "charger not announced to the hub");
                self.deferred.push(Deferred::Local(error.to_text()));
            }
            return;
        };
        let ids = frame.path.ids();
        if entry.path.as_ref().is_none_or(|p| {
            p.iter()
                .map(String::as_str)
                .ne(ids.iter().map(|c| c.as_ref()))
        }) {
            entry.path = Some(ids.iter().map(|c| c.to_string()).collect());
        }
        let link = entry.link;
        let version = entry.version;
        match frame.frame.message_type() {
            MessageType::Call => {
                if frame
                    .frame
                    .action()
                    .is_some_and(|a| outbox::class(version, a) == Class::Journal)
                {
                    match self
                        .responses
                        .on_call(&charger, &frame.frame.id, Instant::now())
                    {
                        Verdict::Forward => {}
                        Verdict::InFlight => {
                            tracing::debug!(charger = %charger, id = %frame.frame.id, "replay of a message the CSMS is answering; dropped");
                            return;
                        }
                        Verdict::Answered(reply) => {
                            tracing::debug!(charger = %charger, id = %frame.frame.id, "replay answered from the response cache");
                            if let Ok(plain) = decode_plain(&reply, &self.limits) {
                                let overlay = OverlayFrame {
                                    dest: Route::single(charger.clone()),
                                    path: Route::single(routing::CSMS),
                                    frame: plain,
                                };
                                self.deferred.push(Deferred::Plain(link, overlay.to_text()));
                            }
                            return;
                        }
                    }
                }
                if !self.send_plain(link, frame.frame.to_plain_string()) {
                    self.responses.on_error(&charger, &frame.frame.id);
                    let error = self
                        .forwarder
                        .error_to_originator(&frame, "the CSMS socket cannot take it now; retry");
                    self.deferred.push(Deferred::Local(error.to_text()));
                }
            }
            MessageType::Send => {
                self.send_plain(link, frame.frame.to_plain_string());
            }
            _ => match self.hub_calls.take(&charger, &frame.frame.id) {
                Some(pending) => {
                    self.send_plain(pending.data.link, frame.frame.to_plain_string());
                }
                None => tracing::debug!(charger = %charger, "late reply to a CSMS CALL dropped"),
            },
        }
    }

    /// Sends an overlay frame on `link`, translating for plain peers.
    async fn send(&mut self, link: LinkId, frame: OverlayFrame<'_>) {
        let Some(target) = self.links.get_mut(&link) else {
            return;
        };
        match &mut target.kind {
            Kind::Overlay(_) => {
                let text = frame.to_text();
                self.send_overlay(link, text).await;
            }
            Kind::Csms(_) => {
                self.send_plain(link, frame.frame.to_plain_string());
            }
            Kind::Charger(c) => {
                let version = c.version;
                match frame.frame.message_type() {
                    MessageType::Call => {
                        let deadline = Instant::now() + self.request_timeout;
                        let reply_to = frame.path.first().to_owned();
                        let id = frame.frame.id.clone().into_owned();
                        let charger = c.id.clone();
                        match correlation::overlay_call_to_plain(
                            &mut self.down,
                            frame,
                            deadline,
                            DownCall { link },
                        ) {
                            Ok(plain) => {
                                let text = self
                                    .rewrite_down(&charger, version, &plain)
                                    .unwrap_or_else(|| plain.to_plain_string());
                                self.call_charger(link, id, text, &reply_to)
                            }
                            Err(e) => {
                                tracing::warn!(%link, error = %e, "CALL toward a charger not delivered")
                            }
                        }
                    }
                    MessageType::Send => {
                        if frame.frame.action() == Some(CHARGER_CONNECTION_STATUS) {
                            return self.connection_status(link, &frame);
                        }
                        if version == OcppVersion::V21 {
                            self.send_plain(link, frame.frame.to_plain_string());
                        }
                    }
                    _ => match correlation::overlay_reply_to_plain(&mut self.up, frame) {
                        Ok((plain, pending)) => {
                            self.call_settled(pending.data.link);
                            // Only boots and authorizations teach the edge anything; the
                            // check keeps a copy of the charger id off every other reply.
                            if matches!(pending.data.note, Note::Authorize(_) | Note::Boot)
                                && let (Some(answer), Some(c)) =
                                    (plain.payload(), self.charger(pending.data.link))
                            {
                                let charger = c.id.clone();
                                self.learn(&charger, &pending.data.note, answer.get());
                            }
                            if !plain.message_type().allowed_in(version) {
                                return;
                            }
                            self.send_plain(pending.data.link, plain.to_plain_string());
                        }
                        Err(e) => tracing::debug!(%link, error = %e, "reply for a charger dropped"),
                    },
                }
            }
        }
    }

    /// A charger's CALL got its answer (or its timeout).
    fn call_settled(&self, link: LinkId) {
        if let Some(c) = self.charger(link) {
            // Never below zero, whatever order a reply and a timeout arrive in.
            let _ = c
                .pending
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// One CSMS CALL at a time toward a charger; later ones wait in a bounded queue (§6.1).
    fn call_charger(&mut self, link: LinkId, id: String, text: String, reply_to: &str) {
        let Some(c) = self.charger_mut(link) else {
            return;
        };
        if c.busy.is_none() {
            c.busy = Some(id);
            self.send_plain(link, text);
            return;
        }
        if c.queue.len() < CHARGER_CALL_QUEUE {
            c.queue.push_back((id, text));
            return;
        }
        let charger = c.id.clone();
        let _ = self.down.take(&charger, &id);
        let error = OverlayFrame {
            dest: Route::single(reply_to.to_owned()),
            path: Route::single(charger.clone()),
            frame: Frame::error(id, "GenericError", "busy"),
        };
        tracing::warn!(charger = %charger, "CALL queue toward the charger is full; answered busy");
        self.deferred.push(Deferred::Plain(link, error.to_text()));
    }

    /// The charger answered (or timed out on) its outstanding CALL: send the next one.
    fn charger_answered(&mut self, link: LinkId) {
        let Some(c) = self.charger_mut(link) else {
            return;
        };
        c.busy = None;
        if let Some((id, text)) = c.queue.pop_front() {
            c.busy = Some(id);
            self.send_plain(link, text);
        }
    }

    /// Edge: the hub says the CSMS refused this charger; close it so it retries later (§6.2).
    fn connection_status(&mut self, link: LinkId, frame: &OverlayFrame<'_>) {
        let payload: Value = frame
            .frame
            .payload()
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or(Value::Null);
        if payload["status"] != "Refused" {
            return;
        }
        let Some(c) = self.charger(link) else {
            return;
        };
        tracing::warn!(
            charger = %c.id,
            http_status = %payload["httpStatus"],
            "the CSMS refused this charger; closing its connection"
        );
        self.close_charger(link, "the CSMS refused this charger");
    }

    fn close_charger(&mut self, link: LinkId, reason: &str) {
        let Some(l) = self.links.get(&link) else {
            return;
        };
        if let Kind::Charger(c) = &l.kind
            && l.tx.try_send(ToPeer::Close(reason.to_owned())).is_err()
        {
            c.kill.notify_one();
        }
    }

    /// A plain text to a charger or CSMS socket. Never waits: a peer that does not keep up is
    /// disconnected rather than allowed to stall the router.
    ///
    /// False when the frame was not queued. A charger that does not keep up is closed; a CSMS
    /// socket that does not keep up keeps its connection, and the caller answers a CALL that
    /// could not be queued with a CALLERROR, so the charger keeps (and retries) its message
    /// rather than the node dropping it silently.
    fn send_plain(&mut self, link: LinkId, text: String) -> bool {
        let Some(l) = self.links.get(&link) else {
            return false;
        };
        match l.tx.try_send(ToPeer::Text(text)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.node.metrics.frames_dropped.inc();
                match &l.kind {
                    Kind::Charger(c) => {
                        tracing::warn!(%link, charger = %c.id, "charger does not keep up with its frames; closing it");
                        c.kill.notify_one();
                    }
                    _ => tracing::warn!(%link, "CSMS socket does not keep up; frame not queued"),
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Overlay links carry every charger's traffic, so they get backpressure instead: the
    /// router waits for room. A dead link is closed by its ping timer, which ends the wait.
    async fn send_overlay(&mut self, link: LinkId, text: String) {
        if self.dirty && Some(link) == self.uplink {
            self.announce().await;
        }
        self.write_overlay(link, text).await;
    }

    async fn write_overlay(&self, link: LinkId, text: String) {
        if let Some(l) = self.links.get(&link) {
            let _ = l.tx.send(ToPeer::Text(text)).await;
        }
    }

    // -----------------------------------------------------------------------------------------
    // Announcements and presence
    // -----------------------------------------------------------------------------------------

    /// Tells the uplink what is reachable through this node: full after link up, then deltas.
    async fn announce(&mut self) {
        self.dirty = false;
        let Some(uplink) = self.uplink else {
            // Nobody to tell, and the next uplink's first announcement is full: the changes need
            // not be kept (they would grow with every charger id ever seen on a hub).
            self.changed.clear();
            return;
        };
        let ann = self.next_announcement(uplink, Instant::now());
        if ann.is_empty_delta() {
            return;
        }
        self.send_announcement(uplink, &ann).await;
    }

    /// Full after the uplink came up, then deltas over the ids that changed since the last one.
    fn next_announcement(&mut self, uplink: LinkId, now: Instant) -> routing::Announcement {
        let validity = self.validity();
        let changed = std::mem::take(&mut self.changed);
        self.announcer.announce_changes(
            uplink,
            &self.table,
            changed.iter().map(String::as_str),
            &validity,
            now,
        )
    }

    async fn send_announcement(&self, uplink: LinkId, ann: &routing::Announcement) {
        let payload = ann.to_payload();
        let Ok(raw) = serde_json::value::RawValue::from_string(payload) else {
            return;
        };
        let own = self.forwarder.own_id().to_owned();
        let frame = self.send_frame(routing::CSMS.to_owned(), own, announce::ACTION, &raw);
        self.write_overlay(uplink, frame.to_text()).await;
    }

    /// A SEND this node originates, under a fresh id.
    fn send_frame<'r>(
        &self,
        dest: String,
        path: String,
        action: &'static str,
        payload: &'r serde_json::value::RawValue,
    ) -> OverlayFrame<'r> {
        OverlayFrame {
            dest: Route::single(dest),
            path: Route::single(path),
            frame: Frame {
                id: self.ids.next().into(),
                body: Body::Send {
                    action: action.into(),
                    payload: wire::Json::new(payload),
                },
            },
        }
    }

    fn validity(&self) -> Validity {
        Validity {
            ttl: Duration::from_secs(self.node.config.overlay.announce_ttl_s),
            not_before: None,
            not_after: None,
        }
    }

    fn schedule_refresh(&mut self, now: Instant) {
        let every = Duration::from_secs(self.node.config.overlay.announce_ttl_s / 3)
            .max(Duration::from_secs(1));
        self.next_refresh = Some(now + every);
    }

    fn apply_announcement(
        &mut self,
        link: LinkId,
        peer: &str,
        allow: &AllowList,
        payload: &str,
        now: Instant,
    ) {
        let ann = match routing::Announcement::from_payload(payload) {
            Ok(a) => a,
            Err(e) => return tracing::warn!(peer = %peer, error = %e, "announcement ignored"),
        };
        let options = ApplyOptions {
            allow_move: self.node.config.overlay.allow_move,
            ..ApplyOptions::default()
        };
        let applied = announce::apply(&mut self.table, link, allow, &ann, &options, now);
        for (id, why) in &applied.rejected {
            match why {
                RouteRejection::NotAllowed => self.node.security_event(
                    "route_not_allowed",
                    format_args!("node {peer:?} announced {id:?}, outside its allow-list; not installed"),
                ),
                RouteRejection::ClaimedElsewhere { link: other } => self.node.security_event(
                    "route_claimed_elsewhere",
                    format_args!("node {peer:?} announced {id:?}, already reachable via {other}; not installed"),
                ),
                other => tracing::warn!(peer = %peer, id = %id, "announced route refused: {other:?}"),
            }
        }
        for moved in &applied.moved {
            if moved.source == routing::Source::Connect {
                self.close_charger(moved.from_link, "the charger moved to another node");
            }
        }
        if self.forwarder.owns_csms() {
            for id in &applied.withdrawn.unreachable {
                self.close_csms(id);
            }
            for id in &applied.installed {
                self.grace.remove(id);
                self.ensure_csms(id, now);
            }
        }
        if !applied.installed.is_empty() || !applied.withdrawn.is_empty() {
            self.dirty = true;
        }
        self.changed.extend(applied.installed.iter().cloned());
        self.changed
            .extend(applied.withdrawn.entries.iter().map(|e| e.dest.clone()));
        self.changed
            .extend(applied.moved.iter().map(|m| m.id.clone()));
    }

    /// Hub: opens the CSMS socket of a reachable charger, unless it is open (or was refused) on
    /// the same version.
    fn ensure_csms(&mut self, charger: &str, now: Instant) {
        let Some(version) = self.table.best_exact(charger, now).and_then(|e| e.version) else {
            tracing::warn!(
                charger,
                "no OCPP version known for the charger; no CSMS socket"
            );
            return;
        };
        if let Some(existing) = self.csms.get(charger) {
            if existing.version == version {
                return;
            }
            self.close_csms(charger);
        }
        let link = LinkId(self.node.next_conn_id());
        let (tx, rx) = mpsc::channel(256);
        let (stop_tx, stop_rx) = oneshot::channel();
        self.links.insert(
            link,
            Link {
                kind: Kind::Csms(CsmsLink {
                    charger: charger.to_owned(),
                    state: CsmsState::Connecting,
                }),
                tx,
            },
        );
        self.csms.insert(
            charger.to_owned(),
            CsmsEntry {
                link,
                version,
                path: None,
                _stop: stop_tx,
            },
        );
        self.node.metrics.csms_connections.inc();
        tokio::spawn(crate::csms_connector::run(
            self.node.clone(),
            link,
            charger.to_owned(),
            version,
            rx,
            stop_rx,
        ));
    }

    fn close_csms(&mut self, charger: &str) {
        self.grace.remove(charger);
        // What its socket had on the way is lost with it.
        self.responses.csms_closed(charger);
        if let Some(entry) = self.csms.remove(charger) {
            self.links.remove(&entry.link);
            self.node.metrics.csms_connections.dec();
            tracing::info!(charger, "charger gone: its CSMS socket closes");
        }
    }

    fn set_csms_state(&mut self, link: LinkId, state: CsmsState) {
        if let Some(Link {
            kind: Kind::Csms(c),
            ..
        }) = self.links.get_mut(&link)
        {
            c.state = state;
        }
    }

    /// Hub: tells the charger's edge that the CSMS refused it (§6.2).
    async fn csms_refused(
        &mut self,
        link: LinkId,
        http_status: Option<u16>,
        reason: &str,
        now: Instant,
    ) {
        self.set_csms_state(link, CsmsState::Refused);
        let Some(c) = self.csms_link(link) else {
            return;
        };
        let charger = c.charger.clone();
        tracing::warn!(charger = %charger, reason, "the CSMS refused the charger");
        let payload = json!({"chargerId": charger, "status": "Refused", "httpStatus": http_status});
        let Ok(raw) = serde_json::value::to_raw_value(&payload) else {
            return;
        };
        let frame = self.send_frame(
            charger,
            routing::CSMS.to_owned(),
            CHARGER_CONNECTION_STATUS,
            &raw,
        );
        self.route(Ingress::Plain { link }, frame, now).await;
    }

    // -----------------------------------------------------------------------------------------
    // Timers
    // -----------------------------------------------------------------------------------------

    async fn on_timer(&mut self, now: Instant) {
        for (key, pending) in self.up.expire(now) {
            // The charger asked and nobody answered in time: tell it, under its own id. What
            // the edge answers while offline it answers here too: a silently dead uplink (a
            // blackhole) is not known to be down until its pings fail.
            let link = pending.data.link;
            self.call_settled(link);
            tracing::info!(charger = %key.source, "CALL to the CSMS timed out");
            let version = self.charger(link).map(|c| c.version);
            let local = match (&pending.data.note, version) {
                (Note::Heartbeat, Some(v)) => Some((v, "Heartbeat", json!({}))),
                (Note::Authorize(tag), Some(v)) => {
                    let payload = if v.is_v16() {
                        json!({"idTag": tag})
                    } else {
                        json!({"idToken": {"idToken": tag}})
                    };
                    Some((v, "Authorize", payload))
                }
                _ => None,
            };
            let text = match local {
                Some((version, action, payload)) => {
                    self.node.metrics.outbox_local_answers.inc();
                    let answer = self.local_answer(&key.source, version, action, &payload, None);
                    match serde_json::value::to_raw_value(&answer) {
                        Ok(raw) => Frame::result(pending.original_id, &raw).to_plain_string(),
                        Err(_) => continue,
                    }
                }
                None => {
                    Frame::error(pending.original_id, "GenericError", "timeout").to_plain_string()
                }
            };
            self.send_plain(link, text);
        }
        for (key, pending) in self.down.expire(now) {
            // The hub answers the CSMS on its own timer; here only the queue moves on.
            tracing::info!(charger = %key.source, id = %key.id, "charger did not answer a CSMS CALL in time");
            let busy = self
                .charger(pending.data.link)
                .is_some_and(|c| c.busy.as_deref() == Some(key.id.as_str()));
            if busy {
                self.charger_answered(pending.data.link);
            }
        }
        for (key, pending) in self.hub_calls.expire(now) {
            let error = Frame::error(pending.original_id, "GenericError", "timeout");
            tracing::info!(charger = %key.source, "CSMS CALL to the charger timed out");
            self.send_plain(pending.data.link, error.to_plain_string());
        }
        if now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = now + HOUSEKEEPING;
        self.responses.expire(now);
        self.outbox_tick(now).await;
        let expired = self.table.expire(now);
        self.changed
            .extend(expired.entries.iter().map(|e| e.dest.clone()));
        if !expired.is_empty() {
            self.dirty = true;
            if self.forwarder.owns_csms() {
                for id in &expired.unreachable {
                    self.close_csms(id);
                }
            }
        }
        let due: Vec<String> = self
            .grace
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.grace.remove(&id);
            if !self.table.is_present(&id, now) {
                self.close_csms(&id);
            }
        }
        if self.next_refresh.is_some_and(|t| t <= now) {
            self.schedule_refresh(now);
            if let Some(uplink) = self.uplink {
                // Even an empty delta refreshes the routes' ttl upstream.
                self.dirty = false;
                let ann = self.next_announcement(uplink, now);
                self.send_announcement(uplink, &ann).await;
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Status
    // -----------------------------------------------------------------------------------------

    fn snapshot(&self, now: Instant) -> Value {
        let peer_of = |link: LinkId| match self.links.get(&link).map(|l| &l.kind) {
            Some(Kind::Overlay(o)) => Value::String(o.peer.clone()),
            Some(Kind::Charger(c)) => Value::String(c.id.clone()),
            _ => Value::Null,
        };
        let mut routes: Vec<Value> = self
            .table
            .iter()
            .map(|e| {
                json!({
                    "destination": e.dest,
                    "link": e.link.0,
                    "peer": peer_of(e.link),
                    "source": match e.source {
                        routing::Source::Static => "static",
                        routing::Source::Connect => "connect",
                        routing::Source::Announce => "announce",
                        routing::Source::AutoLearn => "autolearn",
                    },
                    "priority": e.priority,
                    "ocppVersion": e.version.map(|v| v.subprotocol()),
                    "expiresInS": e.expires.map(|t| t.saturating_duration_since(now).as_secs()),
                })
            })
            .collect();
        routes.sort_by(|a, b| a["destination"].as_str().cmp(&b["destination"].as_str()));
        let mut links: Vec<Value> = self
            .links
            .iter()
            .filter_map(|(id, l)| match &l.kind {
                Kind::Overlay(o) => Some(json!({
                    "link": id.0,
                    "peer": o.peer,
                    "direction": if o.uplink.is_some() { "uplink" } else { "inbound" },
                    "remoteAddr": o.remote.to_string(),
                })),
                _ => None,
            })
            .collect();
        links.sort_by_key(|l| l["link"].as_u64());
        let mut csms: Vec<Value> = self
            .csms
            .iter()
            .map(|(charger, e)| {
                let state = match self.links.get(&e.link).map(|l| &l.kind) {
                    Some(Kind::Csms(c)) => c.state.as_str(),
                    _ => "closed",
                };
                json!({
                    "charger": charger,
                    "ocppVersion": e.version.subprotocol(),
                    "state": state,
                    "path": e.path,
                })
            })
            .collect();
        csms.sort_by(|a, b| a["charger"].as_str().cmp(&b["charger"].as_str()));
        json!({"routes": routes, "overlayLinks": links, "csmsConnections": csms})
    }
}

/// The edge's durable queue (ARCHITECTURE §6.3), driven by the router: the session journals a
/// message before the router sees it, the router sends one message per charger at a time,
/// and a message leaves the queue only once the store has committed its answer.
impl Router {
    /// The authorization status the edge answers for `tag` on its own: the local list first,
    /// then what the CSMS said recently, then the configured default.
    fn auth_status(&self, tag: &str) -> String {
        let auth = &self.node.config.auth;
        if let Some(status) = auth.local_list.get(tag) {
            return status.as_str().to_owned();
        }
        self.edge
            .as_ref()
            .and_then(|e| e.auth.get(tag))
            .map_or_else(|| auth.unknown_id_tag.as_str().to_owned(), str::to_owned)
    }

    fn local_answer(
        &self,
        charger: &str,
        version: OcppVersion,
        action: &str,
        payload: &Value,
        local_tx: Option<i64>,
    ) -> Value {
        let auth = |tag: &str| self.auth_status(tag);
        let cx = outbox::LocalContext {
            now: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            offline_interval_s: self.node.config.outbox.offline_interval_s,
            boot_status: self
                .edge
                .as_ref()
                .and_then(|e| e.boot.get(charger))
                .map(String::as_str),
            local_tx,
            auth: &auth,
        };
        outbox::local_answer(version, action, payload, &cx)
    }

    /// What a relayed answer teaches the edge for when the uplink is down.
    fn learn(&mut self, charger: &str, note: &Note, answer: &str) {
        let Some(edge) = &mut self.edge else {
            return;
        };
        match note {
            Note::None | Note::Heartbeat => {}
            Note::Authorize(tag) => {
                if let Some(status) = outbox::authorize_status(answer) {
                    edge.auth.insert(tag.clone(), status);
                }
            }
            Note::Boot => {
                if let Some(status) = outbox::boot_status(answer) {
                    self.remember_boot(charger, status);
                }
            }
        }
    }

    fn remember_boot(&mut self, charger: &str, status: String) {
        let Some(edge) = &mut self.edge else {
            return;
        };
        if edge.boot.get(charger) == Some(&status) {
            return;
        }
        edge.boot.insert(charger.to_owned(), status.clone());
        let (store, charger) = (self.node.store.clone(), charger.to_owned());
        tokio::spawn(async move {
            if let Err(e) = store
                .write(move |w| journal::set_boot_status(w, &charger, &status))
                .await
            {
                tracing::warn!(error = %e, "could not keep the CSMS's boot status");
            }
        });
    }

    /// A CSMS CALL for a 1.6 charger that knows the transaction under its local id.
    fn rewrite_down(
        &self,
        charger: &str,
        version: OcppVersion,
        plain: &Frame<'_>,
    ) -> Option<String> {
        if !version.is_v16() {
            return None;
        }
        let edge = self.edge.as_ref()?;
        let (action, payload) = (plain.action()?, plain.payload()?);
        let rewritten = edge.tx_ids.rewrite_down(charger, action, payload.get())?;
        let raw = serde_json::value::RawValue::from_string(rewritten).ok()?;
        let frame = Frame {
            id: plain.id.clone(),
            body: Body::Call {
                action: action.into(),
                payload: wire::Json::new(&raw),
            },
        };
        Some(frame.to_plain_string())
    }

    /// Answers a charger's CALL for a queued message on the edge's own authority: the message
    /// is on disk, so the charger may forget it.
    fn answer_locally(&mut self, waiter: &Waiter, charger: &str, seq: u64) {
        self.answer_locally_from(waiter, charger, seq, None);
    }

    /// Like [`Router::answer_locally`]; `fallback` is the stored entry, for a re-send of a
    /// message the memory no longer holds.
    fn answer_locally_from(
        &mut self,
        waiter: &Waiter,
        charger: &str,
        seq: u64,
        fallback: Option<&journal::Entry>,
    ) {
        let queued = self.edge.as_ref().and_then(|e| e.queues.get(charger, seq));
        let Some(entry) = queued.map(|q| &q.entry).or(fallback) else {
            return;
        };
        let version = entry.version.parse().unwrap_or(OcppVersion::V16);
        let payload: Value = serde_json::from_str(&entry.payload).unwrap_or(Value::Null);
        let answer = self.local_answer(charger, version, &entry.action, &payload, entry.local_tx);
        if let Some(q) = self
            .edge
            .as_mut()
            .and_then(|e| e.queues.get_mut(charger, seq))
        {
            q.answered_locally = true;
        }
        self.node.metrics.outbox_local_answers.inc();
        self.call_settled(waiter.link);
        if let Ok(raw) = serde_json::value::to_raw_value(&answer) {
            let text = Frame::result(waiter.id.as_str(), &raw).to_plain_string();
            self.send_plain(waiter.link, text);
        }
    }

    /// A charger's CALL is in the store: send it now if it is next and the uplink is up (the
    /// charger then gets the CSMS's own answer), else answer it here.
    fn outbox_journaled(&mut self, link: LinkId, id: String, appended: Appended, now: Instant) {
        let waiter = Waiter { link, id };
        let Some(edge) = &mut self.edge else {
            return;
        };
        let (charger, seq, stored) = match appended {
            Appended::New { entry, replaced } => {
                if let Some(old) = replaced {
                    edge.queues.remove_idle(&entry.charger, old);
                }
                let key = (entry.charger.clone(), entry.seq);
                edge.queues.push(entry);
                self.node
                    .metrics
                    .outbox_queued
                    .set(edge.queues.len() as i64);
                (key.0, key.1, None)
            }
            Appended::Queued(entry) => (entry.charger.clone(), entry.seq, Some(entry)),
            // The session answers these itself.
            Appended::Done(_) | Appended::Full => return,
        };
        let uplink = self.uplink.is_some();
        let head = edge.queues.head_mut(&charger);
        match head {
            Some(q) if q.entry.seq == seq => match q.state {
                SendState::Idle if uplink && q.retry_at.is_none_or(|t| t <= now) => {
                    q.waiter = Some(waiter);
                    self.to_pump.push(charger);
                }
                SendState::InFlight { .. } | SendState::Settling => {
                    // A re-send of the message on its way: the charger gets the CSMS's answer.
                    let old = q.waiter.replace(waiter);
                    if let Some(old) = old {
                        self.call_settled(old.link);
                    }
                }
                SendState::Idle => {
                    self.answer_locally_from(&waiter, &charger, seq, stored.as_ref())
                }
            },
            _ => self.answer_locally_from(&waiter, &charger, seq, stored.as_ref()),
        }
    }

    /// Sends the charger's next queued message, if it may go now.
    async fn outbox_pump(&mut self, charger: &str, now: Instant) {
        if self.uplink.is_none() {
            return;
        }
        let Some(q) = self.edge.as_ref().and_then(|e| e.queues.head(charger)) else {
            return;
        };
        if q.state != SendState::Idle || q.retry_at.is_some_and(|t| t > now) {
            return;
        }
        if !self.charger_links.contains_key(charger) {
            // The hub keeps a charger's CSMS socket only while the charger is announced: one
            // that left with messages queued is announced by the queue until they are out,
            // so that nothing waits for the charger's return.
            let version = q.entry.version.parse().ok();
            self.announce_for_replay(charger, version);
        }
        let Some(edge) = &mut self.edge else {
            return;
        };
        let Some(q) = edge.queues.head_mut(charger) else {
            return;
        };
        q.retry_at = None;
        let entry = q.entry.clone();
        let rewrite = if entry.version == OcppVersion::V16.subprotocol() {
            edge.tx_ids
                .rewrite_up(charger, &entry.action, &entry.payload)
        } else {
            outbox::UpRewrite::Unchanged
        };
        let payload = match rewrite {
            outbox::UpRewrite::Rewritten(payload) => payload,
            outbox::UpRewrite::Unchanged => entry.payload.clone(),
            outbox::UpRewrite::Unmapped(local) => {
                tracing::warn!(charger, action = %entry.action, local, "a local transaction id has no CSMS id (its Start was not delivered); sent as it is");
                entry.payload.clone()
            }
        };
        let Ok(raw) = serde_json::value::RawValue::from_string(payload) else {
            return;
        };
        let frame = OverlayFrame {
            dest: Route::single(routing::CSMS),
            path: Route::single(charger.to_owned()),
            frame: Frame {
                id: entry.upstream_id.as_str().into(),
                body: Body::Call {
                    action: entry.action.as_str().into(),
                    payload: wire::Json::new(&raw),
                },
            },
        };
        let sent = self.route(Ingress::Local, frame, now).await;
        let retry = Duration::from_secs(self.node.config.outbox.retry_interval_s);
        if let Some(q) = self
            .edge
            .as_mut()
            .and_then(|e| e.queues.head_mut(charger))
            .filter(|q| q.entry.seq == entry.seq)
        {
            if sent {
                q.state = SendState::InFlight {
                    deadline: now + self.request_timeout,
                };
            } else {
                q.retry_at = Some(now + retry);
                // Not going up now: the waiting charger is answered from the disk copy.
                if let Some(w) = q.waiter.take() {
                    self.answer_locally(&w, charger, entry.seq);
                }
            }
        }
    }

    /// Announces a charger that is not connected but has messages to replay, through a route
    /// of the queue's own (CSMS calls toward it find no connection and time out at the hub).
    fn announce_for_replay(&mut self, charger: &str, version: Option<OcppVersion>) {
        if self
            .table
            .entries(charger)
            .iter()
            .any(|e| e.link == REPLAY_LINK)
        {
            return;
        }
        let route = routing::RouteEntry {
            dest: charger.to_owned(),
            link: REPLAY_LINK,
            priority: REPLAY_PRIORITY,
            source: routing::Source::Static,
            expires: None,
            version,
        };
        if let Err(e) = self.table.insert(route) {
            return tracing::warn!(charger, error = %e, "cannot announce the charger for its replay");
        }
        tracing::info!(
            charger,
            "the charger is away; its queued messages are replayed without it"
        );
        self.changed.insert(charger.to_owned());
        self.dirty = true;
    }

    /// The charger is back, or its queue is empty: the queue's route goes.
    fn withdraw_replay_route(&mut self, charger: &str, now: Instant) {
        if self
            .table
            .remove(charger, REPLAY_LINK, routing::Source::Static, now)
            .is_some()
        {
            self.changed.insert(charger.to_owned());
            self.dirty = true;
        }
    }

    fn is_outbox_reply(&self, frame: &OverlayFrame<'_>) -> bool {
        let Some(edge) = &self.edge else {
            return false;
        };
        if edge.queues.is_empty()
            || frame.dest.len() != 1
            || !matches!(
                frame.frame.message_type(),
                MessageType::CallResult | MessageType::CallError | MessageType::CallResultError
            )
        {
            return false;
        }
        edge.queues.head(frame.dest.first()).is_some_and(|q| {
            q.entry.upstream_id == frame.frame.id && q.state != SendState::Settling
        })
    }

    /// The answer to a queued message (late ones included: a timed-out message that is
    /// answered after all needs no resend).
    fn outbox_reply(&mut self, frame: OverlayFrame<'_>, now: Instant) {
        let charger = frame.dest.first().to_owned();
        let from_csms = frame.path.first() == routing::CSMS;
        let attempts_max = self.node.config.outbox.message_attempts;
        let retry = Duration::from_secs(self.node.config.outbox.retry_interval_s);
        let Some(q) = self.edge.as_mut().and_then(|e| e.queues.head_mut(&charger)) else {
            return;
        };
        let how = match &frame.frame.body {
            Body::CallResult { payload } => Settling::Answered(payload.get().to_owned()),
            Body::CallError(e) | Body::CallResultError(e) if from_csms => {
                if let Some(w) = &q.waiter {
                    // Online, the charger sees what the CSMS said and keeps its own retries.
                    let error = Frame {
                        id: w.id.as_str().into(),
                        body: frame.frame.body.clone(),
                    };
                    Settling::Refused(error.to_plain_string())
                } else {
                    q.attempts += 1;
                    let why = format!("{}: {}", e.code, e.description);
                    if q.attempts >= attempts_max {
                        Settling::Dead(why)
                    } else {
                        tracing::info!(charger = %charger, action = %q.entry.action, attempt = q.attempts, error = %why, "the CSMS refused a replayed message; retrying");
                        q.state = SendState::Idle;
                        q.retry_at = Some(now + retry);
                        return;
                    }
                }
            }
            // A node on the way could not deliver it: not the CSMS's verdict, so no attempt is
            // counted. The charger, if waiting, is answered: the message is on disk.
            _ => {
                tracing::info!(charger = %charger, "queued message not delivered on this try; it is sent again");
                q.state = SendState::Idle;
                q.retry_at = Some(now + retry);
                let (waiter, seq) = (q.waiter.take(), q.entry.seq);
                if let Some(w) = waiter {
                    self.answer_locally(&w, &charger, seq);
                }
                return;
            }
        };
        self.outbox_settle(&charger, how);
    }

    /// Commits a queued message's end in the store; `outbox_settled` finishes it.
    fn outbox_settle(&mut self, charger: &str, how: Settling) {
        let Some(router) = self.node.router.clone() else {
            return;
        };
        let Some(q) = self.edge.as_mut().and_then(|e| e.queues.head_mut(charger)) else {
            return;
        };
        q.state = SendState::Settling;
        let entry = q.entry.clone();
        // The mapping is needed only where the charger may know the transaction by its local
        // id: it was answered here, or nobody waits for the CSMS's answer.
        let maps_ids = q.answered_locally || q.waiter.is_none();
        q.settling = Some(how.clone());
        let store = self.node.store.clone();
        let charger = charger.to_owned();
        let now_unix = chrono::Utc::now().timestamp();
        tokio::spawn(async move {
            let seq = entry.seq;
            let result = store
                .write(move |w| {
                    let settle = match &how {
                        Settling::Answered(response) => {
                            let csms_tx = if maps_ids && entry.local_tx.is_some() {
                                outbox::start_answer(response).0
                            } else {
                                None
                            };
                            journal::Settle::Answered { response, csms_tx }
                        }
                        Settling::Refused(_) => journal::Settle::Refused,
                        Settling::Dead(error) => journal::Settle::Dead { error },
                    };
                    journal::settle(w, &entry, settle, now_unix)
                })
                .await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "could not commit a queued message's answer; it will be sent again");
            }
            let event = Event::OutboxSettled {
                charger,
                seq,
                committed: result.is_ok(),
            };
            let _ = router.send(event).await;
        });
    }

    fn outbox_settled(&mut self, charger: &str, seq: u64, committed: bool, now: Instant) {
        let Some(edge) = &mut self.edge else {
            return;
        };
        if !committed {
            if let Some(q) = edge.queues.get_mut(charger, seq) {
                q.state = SendState::Idle;
                q.settling = None;
                q.retry_at =
                    Some(now + Duration::from_secs(self.node.config.outbox.retry_interval_s));
            }
            return;
        }
        let Some(done) = edge.queues.pop(charger, seq) else {
            return;
        };
        self.node
            .metrics
            .outbox_queued
            .set(edge.queues.len() as i64);
        if edge.queues.head(charger).is_none() {
            self.withdraw_replay_route(charger, now);
        }
        let Some(edge) = &mut self.edge else {
            return;
        };
        let entry = &done.entry;
        match done.settling {
            Some(Settling::Answered(response)) => {
                if entry.action == "StartTransaction" {
                    let (csms, status) = outbox::start_answer(&response);
                    if let (Some(local), Some(csms)) = (entry.local_tx, csms)
                        && (done.answered_locally || done.waiter.is_none())
                    {
                        edge.tx_ids.insert(charger, local, csms);
                    }
                    if let (Some(status), Ok(p)) =
                        (status, serde_json::from_str::<Value>(&entry.payload))
                        && let Some(tag) = p["idTag"].as_str()
                    {
                        edge.auth.insert(tag.to_owned(), status);
                    }
                }
                let mut rejected = false;
                if entry.action == "BootNotification"
                    && let Some(status) = outbox::boot_status(&response)
                {
                    rejected = status == "Rejected";
                    self.remember_boot(charger, status);
                }
                match &done.waiter {
                    Some(w) => {
                        self.call_settled(w.link);
                        if let Ok(raw) = serde_json::value::RawValue::from_string(response) {
                            self.send_plain(
                                w.link,
                                Frame::result(w.id.as_str(), &raw).to_plain_string(),
                            );
                        }
                    }
                    None if rejected => {
                        if let Some(&link) = self.charger_links.get(charger) {
                            tracing::warn!(
                                charger,
                                "the CSMS rejected the boot replayed from the outage; closing the charger"
                            );
                            self.close_charger(link, "the CSMS rejected this charger's boot");
                        }
                    }
                    None => {}
                }
            }
            Some(Settling::Refused(error)) => {
                if let Some(w) = &done.waiter {
                    self.call_settled(w.link);
                    self.send_plain(w.link, error);
                }
            }
            Some(Settling::Dead(why)) => {
                self.node.metrics.outbox_dead_letters.inc();
                self.node.security_event(
                    "dead_letter",
                    format_args!(
                        "charger {charger:?}: {} (queued #{}) refused by the CSMS {} times, last {why}; moved to the dead letters",
                        entry.action, entry.seq, done.attempts
                    ),
                );
            }
            None => {}
        }
        self.to_pump.push(charger.to_owned());
    }

    /// The uplink is gone: what was on its way is answered here and sent again later.
    fn outbox_uplink_lost(&mut self) {
        let Some(edge) = &mut self.edge else {
            return;
        };
        let mut waiting = Vec::new();
        for q in edge.queues.heads_mut() {
            if let SendState::InFlight { .. } = q.state {
                q.state = SendState::Idle;
                q.retry_at = None;
                if let Some(w) = q.waiter.take() {
                    waiting.push((w, q.entry.charger.clone(), q.entry.seq));
                }
            }
        }
        for (w, charger, seq) in waiting {
            self.answer_locally(&w, &charger, seq);
        }
    }

    /// Unanswered messages are answered here and resent; due retries go; old dedup keys go.
    async fn outbox_tick(&mut self, now: Instant) {
        let Some(edge) = &mut self.edge else {
            return;
        };
        let retry = Duration::from_secs(self.node.config.outbox.retry_interval_s);
        let mut waiting = Vec::new();
        let mut due = Vec::new();
        for q in edge.queues.heads_mut() {
            match q.state {
                SendState::InFlight { deadline } if deadline <= now => {
                    q.state = SendState::Idle;
                    q.retry_at = Some(now + retry);
                    if let Some(w) = q.waiter.take() {
                        waiting.push((w, q.entry.charger.clone(), q.entry.seq));
                    }
                }
                SendState::Idle if q.retry_at.is_none_or(|t| t <= now) => {
                    due.push(q.entry.charger.clone());
                }
                _ => {}
            }
        }
        for (w, charger, seq) in waiting {
            tracing::info!(charger = %charger, "no answer from the CSMS in time; answered here, sent again later");
            self.answer_locally(&w, &charger, seq);
        }
        for charger in due {
            self.outbox_pump(&charger, now).await;
        }
        if now >= self.next_prune {
            self.next_prune = now + PRUNE_EVERY;
            let before =
                chrono::Utc::now().timestamp() - self.node.config.outbox.dedup_retention_s as i64;
            let store = self.node.store.clone();
            tokio::spawn(async move {
                match store.write(move |w| journal::prune(w, before)).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(forgotten = n, "old delivered-message keys pruned"),
                    Err(e) => tracing::warn!(error = %e, "could not prune the outbox keys"),
                }
            });
        }
    }
}

/// The pseudo link of the routes by which an edge announces chargers that are away but have
/// messages to replay; no connection ever has this id (they count up from 1).
const REPLAY_LINK: LinkId = LinkId(u64::MAX);
/// Such a route is the least preferred one of its charger.
const REPLAY_PRIORITY: u32 = 1000;

/// How often delivered-message keys past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

fn ingress_peer(ingress: &Ingress<'_>) -> Option<LinkId> {
    ingress.link()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// UUID v4 message ids (§6.1) without a system call each: a SplitMix64 stream seeded once from
/// the OS. Ids need to be unique, not secret: 122 random bits from a fresh seed per process
/// start do that, across restarts too.
struct IdGen(std::sync::atomic::AtomicU64);

impl IdGen {
    fn new() -> IdGen {
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        IdGen(std::sync::atomic::AtomicU64::new(seed))
    }

    fn next_u64(&self) -> u64 {
        // Only the router task uses it; the atomic just keeps the router `Sync`-free of cells.
        let s = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next(&self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::IdGen;

    #[test]
    fn ids_are_distinct_uuid_v4() {
        let ids = IdGen::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = ids.next();
            let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 4, "{id}");
            assert_eq!(id.len(), 36);
            assert!(seen.insert(id), "duplicate id");
        }
    }
}
