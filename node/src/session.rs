//! One charger's WebSocket session on a local controller.
//!
//! Frames are handled in order, one at a time, which is what OCPP-J expects (one outstanding CALL
//! per direction). A bad frame is answered with the CALLERROR of ARCHITECTURE §6.5 and the
//! connection stays up; only a frame over the size limit ends it, with close code 1009.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::Entry;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use wire::text::{Body, Frame, decode_plain};
use wire::{ErrorCode, Limits, OcppVersion};

use crate::journal::{self, Appended};
use crate::local_csms::{self, Outcome, Request};
use crate::outbox::{self, Class};
use crate::router::{Event, RouterTx, ToPeer};
use crate::schema::Direction;
use crate::state::{Node, SessionInfo};
use routing::LinkId;
use tokio::sync::mpsc;

/// How long a closing connection is drained before the socket is dropped. Draining (and
/// discarding) lets the peer read our close frame instead of meeting a TCP reset.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

pub struct Session {
    node: Arc<Node>,
    charger_id: String,
    version: OcppVersion,
    limits: Limits,
    /// The router when this node runs the overlay: CALLs go up instead of being answered here.
    router: Option<(RouterTx, LinkId)>,
    write_timeout: Duration,
    /// CALLs handed to the router and not yet answered; the router counts them out.
    pending: Arc<AtomicUsize>,
    max_pending_calls: usize,
}

/// A charger that completed its upgrade.
pub struct Charger {
    pub conn_id: u64,
    pub id: String,
    pub version: OcppVersion,
    pub listener: String,
    pub max_frame_bytes: usize,
    pub remote: std::net::SocketAddr,
    pub max_pending_calls: usize,
    /// Zero: never ping.
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub write_timeout: Duration,
}

/// Frames the router may queue toward one charger before it counts as a slow consumer. Larger
/// than the most `max_pending_calls` allows (32), so the answers to a charger's own CALLs can
/// never fill it by themselves; only a charger that stops reading does.
const ROUTER_QUEUE: usize = 64;

/// What journaling did with a CALL.
enum Journal {
    /// Not a message the queue keeps (now): it goes to the router as it is.
    No,
    /// Answered without the router: a re-send of a delivered message, or a refusal.
    Answered(String),
    /// In the queue; the router answers it.
    Handed,
}

enum Next {
    Continue,
    Close(CloseCode, String),
    Gone,
}

pub async fn run<S>(node: Arc<Node>, up: Charger, mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Charger {
        conn_id,
        id: charger_id,
        version,
        listener,
        max_frame_bytes,
        remote,
        max_pending_calls,
        ping_interval,
        pong_timeout,
        write_timeout,
    } = up;
    let replaced = Arc::new(Notify::new());
    let info = SessionInfo {
        conn_id,
        version,
        remote,
        listener,
        connected_at: chrono::Utc::now(),
        replaced: replaced.clone(),
    };
    match node.sessions.entry(charger_id.clone()) {
        // A newer connection of this charger registered first: this one is stale already.
        Entry::Occupied(e) if e.get().conn_id > conn_id => replaced.notify_one(),
        Entry::Occupied(mut e) => {
            tracing::info!(charger = %charger_id, "a newer connection replaces the open one");
            e.insert(info).replaced.notify_one();
        }
        Entry::Vacant(e) => {
            e.insert(info);
            node.metrics.chargers_connected.inc();
        }
    }
    tracing::info!(charger = %charger_id, %version, %remote, "charger connected");

    let link = LinkId(conn_id);
    let pending = Arc::new(AtomicUsize::new(0));
    let (tx, mut from_router) = mpsc::channel(ROUTER_QUEUE);
    let router = match &node.router {
        Some(router) => {
            let up = Event::ChargerUp {
                link,
                charger: charger_id.clone(),
                version,
                tx,
                kill: replaced.clone(),
                pending: pending.clone(),
            };
            if router.send(up).await.is_err() {
                return;
            }
            Some((router.clone(), link))
        }
        None => None,
    };
    let session = Session {
        node: node.clone(),
        charger_id: charger_id.clone(),
        version,
        limits: Limits {
            max_frame_bytes,
            ..Limits::default()
        },
        router,
        write_timeout,
        pending,
        max_pending_calls,
    };
    // Liveness: any frame from the charger (a pong included) counts; silence for a ping interval
    // plus the pong timeout ends the session, so a dead peer does not hold its slot for ever.
    // A frame only sets `heard`; the clock is read at the ping ticks, not per frame, so silence
    // is measured to the nearest tick.
    let pinging = !ping_interval.is_zero();
    let mut ping = tokio::time::interval(if pinging {
        ping_interval
    } else {
        Duration::from_secs(3600)
    });
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    let mut last_heard = tokio::time::Instant::now();
    let mut heard = false;
    let outcome = loop {
        let next = tokio::select! {
            msg = ws.next() => {
                heard = true;
                session.on_message(&mut ws, msg).await
            }
            Some(out) = from_router.recv() => match out {
                ToPeer::Text(text) => {
                    node.metrics.frames_out.inc();
                    session.write(&mut ws, Message::text(text)).await
                }
                ToPeer::Close(reason) => Next::Close(CloseCode::Policy, reason),
            },
            _ = replaced.notified() => Next::Close(CloseCode::Policy, "closed by the node (replaced by a newer connection, or too slow)".into()),
            now = ping.tick(), if pinging => {
                if std::mem::take(&mut heard) {
                    last_heard = now;
                }
                if now.duration_since(last_heard) >= ping_interval + pong_timeout {
                    tracing::info!(charger = %charger_id, "no frame and no pong within the ping interval and pong timeout; closing");
                    Next::Gone
                } else {
                    session.write(&mut ws, Message::Ping(Default::default())).await
                }
            }
        };
        match next {
            Next::Continue => {}
            other => break other,
        }
    };
    if let Next::Close(code, reason) = outcome {
        close(ws, code, reason).await;
    }
    if let Some((router, link)) = &session.router {
        let _ = router.send(Event::ChargerDown { link: *link }).await;
    }
    if node
        .sessions
        .remove_if(&charger_id, |_, s| s.conn_id == conn_id)
        .is_some()
    {
        node.metrics.chargers_connected.dec();
    }
    tracing::info!(charger = %charger_id, "charger disconnected");
}

impl Session {
    async fn on_message<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        ws: &mut WebSocketStream<S>,
        msg: Option<Result<Message, WsError>>,
    ) -> Next {
        match msg {
            Some(Ok(Message::Text(text))) => {
                self.node.metrics.frames_in.inc();
                let Some(reply) = self.on_text(&text).await else {
                    return Next::Continue;
                };
                self.node.metrics.frames_out.inc();
                self.write(ws, Message::text(reply)).await
            }
            Some(Ok(Message::Binary(_))) => {
                tracing::warn!(charger = %self.charger_id, "binary frame from a plain charger; closing");
                Next::Close(
                    CloseCode::Unsupported,
                    "binary frames are not part of OCPP-J".into(),
                )
            }
            Some(Ok(Message::Close(_))) | None => Next::Gone,
            Some(Ok(_)) => Next::Continue, // ping/pong: tungstenite answers pings itself
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                self.node.metrics.oversize_frames.inc();
                tracing::warn!(charger = %self.charger_id, size, max_size, "frame over the size limit; closing with 1009");
                Next::Close(CloseCode::Size, "frame exceeds the size limit".into())
            }
            Some(Err(e)) => {
                tracing::info!(charger = %self.charger_id, error = %e, "connection error");
                Next::Gone
            }
        }
    }

    /// Writes one frame, bounded in time: a charger that stops reading is disconnected instead
    /// of holding this task, its queue and its buffers.
    async fn write<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        ws: &mut WebSocketStream<S>,
        msg: Message,
    ) -> Next {
        match tokio::time::timeout(self.write_timeout, ws.send(msg)).await {
            Ok(Ok(())) => Next::Continue,
            Ok(Err(_)) => Next::Gone,
            Err(_) => {
                tracing::warn!(charger = %self.charger_id, timeout_s = self.write_timeout.as_secs(), "charger does not read its frames; disconnecting");
                Next::Gone
            }
        }
    }

    /// Answers one text frame; `None` when it needs no answer (results, SEND).
    async fn on_text(&self, bytes: &Utf8Bytes) -> Option<String> {
        let text = bytes.as_str();
        let frame = match decode_plain(text, &self.limits) {
            Ok(frame) => frame,
            Err(e) => {
                if wire::text::decode_overlay(text, &self.limits).is_ok() {
                    self.node.security_event(
                        "overlay_frame_from_charger",
                        format_args!(
                            "charger {:?} sent an overlay frame on a plain connection; refused",
                            self.charger_id
                        ),
                    );
                } else {
                    tracing::info!(charger = %self.charger_id, error = %e, "malformed frame");
                }
                return Some(self.error(e.reply_id(), e.error_code(), &e.to_string()));
            }
        };
        let message_type = frame.message_type();
        if !message_type.allowed_in(self.version) {
            let why = format!(
                "message type {} does not exist in {}",
                message_type.number(),
                self.version
            );
            return Some(self.error(&frame.id, ErrorCode::MessageTypeNotSupported, &why));
        }
        match &frame.body {
            Body::Call { action, payload } => {
                self.on_call(&frame.id, action, payload.get(), bytes).await
            }
            Body::Send { action, payload } => {
                match self.check_payload(action, payload.get()) {
                    Ok(_) => self.to_router(bytes).await,
                    Err(code_why) => {
                        tracing::info!(charger = %self.charger_id, action = %action, "invalid SEND dropped: {}", code_why.1)
                    }
                }
                None
            }
            // Replies answer the CSMS's CALLs, which only the router sends.
            _ if self.router.is_some() => {
                self.to_router(bytes).await;
                None
            }
            _ => {
                tracing::debug!(charger = %self.charger_id, id = %frame.id, "unsolicited response ignored");
                None
            }
        }
    }

    /// Validates a CALL (§6.5: once, where it enters the overlay), then answers it here or
    /// hands it to the router. `None`: the answer comes later, from the router.
    async fn on_call(
        &self,
        id: &str,
        action: &str,
        payload: &str,
        bytes: &Utf8Bytes,
    ) -> Option<String> {
        if !self.node.schemas.knows(self.version, action) {
            return Some(self.error(
                id,
                ErrorCode::NotImplemented,
                &format!("unknown action {action:?} in {}", self.version),
            ));
        }
        let parsed = match self.check_payload(action, payload) {
            Ok(v) => v,
            Err((code, why)) => return Some(self.error(id, code, &why)),
        };
        if self.router.is_some() {
            // Answered here, at the charger's own pace: a charger that fires CALLs without
            // waiting gets "busy" written back by this task instead of growing the router's
            // correlation table or the queue of frames toward this charger.
            if self.pending.load(Ordering::Acquire) >= self.max_pending_calls {
                self.node.metrics.frames_dropped.inc();
                tracing::debug!(charger = %self.charger_id, max = self.max_pending_calls, "too many CALLs waiting for an answer; answered busy");
                return Some(Frame::error(id, "GenericError", "busy").to_plain_string());
            }
            if self.node.keeps_outbox() {
                match self.journal(id, action, payload, &parsed).await {
                    Journal::No => {}
                    Journal::Answered(reply) => return Some(reply),
                    Journal::Handed => return None,
                }
            }
            self.pending.fetch_add(1, Ordering::AcqRel);
            self.to_router(bytes).await;
            return None;
        }
        Some(self.answer_locally(id, action, payload, parsed).await)
    }

    /// Edge: writes a transaction message (or, while the uplink is down, a boot or a status) to
    /// the durable queue before anything else happens to it (§6.3), so that whatever answer
    /// the charger gets, the message is on disk.
    async fn journal(&self, id: &str, action: &str, payload: &str, parsed: &Value) -> Journal {
        let class = outbox::class(self.version, action);
        let journaled = match class {
            Class::Journal => true,
            Class::OfflineJournal => !self.node.uplink_up.load(Ordering::Acquire),
            Class::OfflineLocal | Class::Forward => false,
        };
        let Some((router, link)) = self.router.as_ref().filter(|_| journaled) else {
            return Journal::No;
        };
        let message = journal::NewMessage {
            message: journal::Message {
                charger: self.charger_id.clone(),
                version: self.version.subprotocol().to_owned(),
                action: action.to_owned(),
                upstream_id: uuid::Uuid::new_v4().hyphenated().to_string(),
                payload: payload.to_owned(),
                dedup: outbox::dedup_key(self.version, action, parsed),
                coalesce: outbox::coalesce_key(self.version, action, parsed),
                priority: u8::from(action != "BootNotification"),
            },
            wants_local_tx: self.version.is_v16() && action == "StartTransaction",
        };
        let max = self.node.config.outbox.max_messages;
        match self
            .node
            .store
            .write(move |w| journal::append(w, message, max))
            .await
        {
            Ok(Appended::Done(response)) => {
                tracing::info!(charger = %self.charger_id, action, "re-sent message already delivered; answered with the CSMS's answer");
                match serde_json::value::RawValue::from_string(response) {
                    Ok(raw) => Journal::Answered(Frame::result(id, &raw).to_plain_string()),
                    Err(e) => {
                        Journal::Answered(self.error(id, ErrorCode::InternalError, &e.to_string()))
                    }
                }
            }
            Ok(Appended::Full) => {
                self.node.security_event(
                    "outbox_full",
                    format_args!(
                        "the durable queue holds its limit of {max} messages; {action} from {:?} refused (the charger keeps it)",
                        self.charger_id
                    ),
                );
                Journal::Answered(self.error(
                    id,
                    ErrorCode::GenericError,
                    "the node's message queue is full; retry later",
                ))
            }
            Ok(appended) => {
                self.pending.fetch_add(1, Ordering::AcqRel);
                let event = Event::Journaled {
                    link: *link,
                    id: id.to_owned(),
                    appended,
                };
                let _ = router.send(event).await;
                Journal::Handed
            }
            Err(e) => {
                self.node.security_event(
                    "outbox_write_failed",
                    format_args!(
                        "{action} from {:?} could not be written to the store ({e}); refused, the charger keeps it",
                        self.charger_id
                    ),
                );
                Journal::Answered(self.error(
                    id,
                    ErrorCode::InternalError,
                    "the node could not record this message; retry",
                ))
            }
        }
    }

    /// Hands the frame to the router without copying it: `Utf8Bytes` shares the read buffer.
    async fn to_router(&self, bytes: &Utf8Bytes) {
        if let Some((router, link)) = &self.router {
            let event = Event::FromCharger {
                link: *link,
                text: bytes.clone(),
            };
            let _ = router.send(event).await;
        }
    }

    async fn answer_locally(&self, id: &str, action: &str, payload: &str, parsed: Value) -> String {
        let cs = local_csms::Charger {
            id: &self.charger_id,
            version: self.version,
        };
        let request = Request {
            action,
            payload: parsed,
            raw: payload,
        };
        match local_csms::handle(&self.node, &cs, request).await {
            Ok(Outcome::Reply(response)) => {
                debug_assert_eq!(
                    self.node.schemas.validate(
                        self.version,
                        Direction::Response,
                        action,
                        &response
                    ),
                    Ok(()),
                    "{action} response must match its schema"
                );
                match serde_json::value::to_raw_value(&response) {
                    Ok(raw) => Frame::result(id, &raw).to_plain_string(),
                    Err(e) => self.error(id, ErrorCode::InternalError, &e.to_string()),
                }
            }
            Ok(Outcome::NotHandled) => self.error(
                id,
                ErrorCode::NotSupported,
                &format!("{action} is not supported by this node"),
            ),
            Err(e) => {
                tracing::error!(charger = %self.charger_id, action, error = %e, "could not record the message");
                self.error(
                    id,
                    ErrorCode::InternalError,
                    "the node could not record this message; retry",
                )
            }
        }
    }

    fn check_payload(&self, action: &str, payload: &str) -> Result<Value, (ErrorCode, String)> {
        let value: Value = serde_json::from_str(payload)
            .map_err(|e| (ErrorCode::FormatViolation, e.to_string()))?;
        self.node
            .schemas
            .validate(self.version, Direction::Request, action, &value)
            .map_err(|v| (v.code, v.message))?;
        Ok(value)
    }

    fn error(&self, id: &str, code: ErrorCode, description: &str) -> String {
        self.node.metrics.frame_errors.inc();
        Frame::error(id, code.spelling(self.version), description).to_plain_string()
    }
}

/// Sends a close frame, then reads and discards whatever the peer still sends for a short,
/// bounded time, so that the close frame is delivered rather than lost to a TCP reset.
async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    code: CloseCode,
    reason: String,
) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_DRAIN, ws.send(Message::Close(Some(frame)))).await;
    let stream = ws.get_mut();
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}
