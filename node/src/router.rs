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
            node,
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
            Event::CsmsClosed { link } => self.set_csms_state(link, CsmsState::Connecting),
            Event::CsmsRefused {
                link,
                http_status,
                reason,
            } => self.csms_refused(link, http_status, &reason, now).await,
            Event::FromCsms { link, text } => self.on_csms_frame(link, &text, now).await,
            Event::Snapshot(reply) => {
                let _ = reply.send(self.snapshot(now));
            }
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
                if self.uplink.is_none() && !self.forwarder.owns_csms() {
                    self.call_settled(link);
                    let error = Frame::error(frame.id, "GenericError", "uplink unavailable");
                    self.send_plain(link, error.to_plain_string());
                    return;
                }
                let upstream = self.ids.next();
                let deadline = now + self.request_timeout;
                match correlation::plain_call_to_overlay(
                    &mut self.up,
                    &charger,
                    frame,
                    upstream,
                    deadline,
                    UpCall { link },
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
        match frame.frame.message_type() {
            MessageType::Call => {
                if !self.send_plain(link, frame.frame.to_plain_string()) {
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
                        match correlation::overlay_call_to_plain(
                            &mut self.down,
                            frame,
                            deadline,
                            DownCall { link },
                        ) {
                            Ok(plain) => {
                                self.call_charger(link, id, plain.to_plain_string(), &reply_to)
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
            // The charger asked and nobody answered in time: tell it, under its own id.
            self.call_settled(pending.data.link);
            let error = Frame::error(pending.original_id, "GenericError", "timeout");
            tracing::info!(charger = %key.source, "CALL to the CSMS timed out");
            self.send_plain(pending.data.link, error.to_plain_string());
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
