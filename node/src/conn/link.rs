//! The one connection loop every WebSocket link runs (a charger, an overlay link in either
//! direction, a hub's CSMS socket): it moves frames and never decides.
//!
//! What it reads goes to the engine's driver; when the driver's queue is full the loop stops
//! reading (backpressure to the peer) but keeps writing, so a link and the engine can never wait
//! on each other. What it is given to write goes out in the writer's order (control before
//! bulk), a batch per flush, each flush bounded by the write timeout. It pings, ends a link
//! that stays silent, answers the peer's Close with its own (RFC 6455 §5.5.1), and refuses a
//! frame over the size limit with close 1009 after its header, never buffering it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use routing::LinkId;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};

use super::writer::Writer;
use crate::core::bus::{Credit, Event, EventTx, LinkHandle, ToConn};
use crate::core::metrics::Metrics;
use crate::core::node::LastMessage;
use crate::engine::{Input, Outbound};

/// How long a closing connection is drained before the socket is dropped. Draining (and
/// discarding) lets the peer read our close frame instead of meeting a TCP reset.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);
/// Most frames written per flush.
const WRITE_BATCH: usize = 64;
/// Bulk frames queued toward one link (beyond what its writer holds) before further ones are
/// dropped (`Input::BulkDropped`).
const BULK_QUEUE: usize = 16;

#[derive(Debug, Clone)]
pub struct Settings {
    /// `None`: never ping.
    pub ping_interval: Option<Duration>,
    /// A link silent this long (no frame, no pong) is given up; checked at the ping ticks, so
    /// silence is measured to the nearest tick.
    pub silence: Duration,
    pub write_timeout: Duration,
    /// Binary frames are accepted (overlay links); a plain peer sending one is closed (1003).
    pub binary: bool,
    /// Count the link's text frames as a charger's (`ocpp_frames_received_total` / `_sent_`).
    pub charger: bool,
    /// For logs: the charger's or peer's id.
    pub name: String,
    /// A charger's session: stamped at every text frame for the admin API.
    pub last_message: Option<Arc<LastMessage>>,
}

/// The connection's ends of its channels.
pub struct Channels {
    pub control: mpsc::Receiver<ToConn>,
    pub bulk: Option<mpsc::Receiver<Outbound>>,
    pub kill: Arc<Notify>,
    pub stop: Arc<Notify>,
    pub credit: Option<Arc<Credit>>,
    /// Depth of the control queue: reading pauses while half of it is taken, so the answers to
    /// what is read always fit.
    pub depth: usize,
}

/// A handle for the driver and the matching channels for the connection. `credit`: bound the
/// frames on their way to the engine (a charger; see [`Credit`]).
pub fn channels(control_depth: usize, bulk: bool, credit: bool) -> (LinkHandle, Channels) {
    let (control_tx, control) = mpsc::channel(control_depth);
    let (bulk_tx, bulk_rx) = if bulk {
        let (tx, rx) = mpsc::channel(BULK_QUEUE);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (kill, stop) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let credit = credit.then(|| Arc::new(Credit::default()));
    (
        LinkHandle {
            control: control_tx,
            bulk: bulk_tx,
            kill: kill.clone(),
            stop: stop.clone(),
            credit: credit.clone(),
        },
        Channels {
            control,
            bulk: bulk_rx,
            kill,
            stop,
            credit,
            depth: control_depth,
        },
    )
}

/// How a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The peer closed, or the connection failed.
    Gone(String),
    /// This node closed it because the peer broke the rules (a frame too large, binary).
    Refused(String),
    /// The node asked for the close.
    Closed(String),
}

impl Ended {
    pub fn why(&self) -> &str {
        match self {
            Ended::Gone(w) | Ended::Refused(w) | Ended::Closed(w) => w,
        }
    }
}

async fn bulk_recv(bulk: &mut Option<mpsc::Receiver<Outbound>>) -> Option<Outbound> {
    match bulk {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn credit_freed(credit: &Option<Arc<Credit>>) {
    match credit {
        Some(c) => c.freed.notified().await,
        None => std::future::pending().await,
    }
}

/// Runs the link until it ends. `initial` frames are written first.
pub async fn run<S>(
    mut ws: WebSocketStream<S>,
    link: LinkId,
    settings: &Settings,
    events: &EventTx,
    ch: &mut Channels,
    metrics: &Metrics,
    initial: Vec<Outbound>,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut writer = Writer::default();
    for out in initial {
        writer.push(out);
    }
    // A frame read but not yet taken by the driver (its queue was full).
    let mut inbound: Option<Event> = None;
    let pinging = settings.ping_interval.is_some();
    let mut ping =
        tokio::time::interval(settings.ping_interval.unwrap_or(Duration::from_secs(3600)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    let mut last_heard = tokio::time::Instant::now();
    let mut heard = false;
    loop {
        // A charger reads on only while the engine keeps up with it and its queue has room for
        // the answers (see `Credit`); every other link reads whenever the driver takes frames.
        let credit_ok = ch.credit.as_ref().is_none_or(|c| c.available());
        let room = ch.credit.is_none() || writer.control_len() + ch.control.len() < ch.depth / 2;
        tokio::select! {
            _ = ch.kill.notified() => {
                let why = "closed by the node (replaced by a newer connection, or too slow)";
                close(ws, CloseCode::Policy, why).await;
                return Ended::Closed(why.into());
            }
            out = ch.control.recv() => match out {
                Some(ToConn::Frame(out)) => {
                    writer.push(out);
                    while let Ok(more) = ch.control.try_recv() {
                        match more {
                            ToConn::Frame(out) => writer.push(out),
                            ToConn::Close(reason) => return finish(ws, &mut writer, ch, settings, metrics, reason).await,
                        }
                    }
                }
                Some(ToConn::Close(reason)) => {
                    return finish(ws, &mut writer, ch, settings, metrics, reason).await;
                }
                None => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    return Ended::Closed("the node let go of the link".into());
                }
            },
            Some(out) = bulk_recv(&mut ch.bulk), if writer.takes_bulk() => writer.push(out),
            _ = std::future::ready(()), if !writer.is_empty() => {
                if let Err(why) = write_batch(&mut ws, &mut writer, settings, metrics).await {
                    return Ended::Gone(why);
                }
            }
            permit = events.reserve(), if inbound.is_some() => match permit {
                Ok(permit) => {
                    if let Some(event) = inbound.take() {
                        permit.send(event);
                    }
                }
                Err(_) => return Ended::Gone("the engine stopped".into()),
            },
            _ = credit_freed(&ch.credit), if !credit_ok => {}
            msg = ws.next(), if inbound.is_none() && credit_ok && room => {
                heard = true;
                let input = match msg {
                    Some(Ok(Message::Text(text))) => {
                        if settings.charger {
                            metrics.frames_in.inc();
                        }
                        if let Some(last) = &settings.last_message {
                            last.touch();
                        }
                        Input::Text { link, text }
                    }
                    Some(Ok(Message::Binary(bytes))) if settings.binary => Input::Binary { link, bytes },
                    Some(Ok(Message::Binary(_))) => {
                        tracing::warn!(peer = %settings.name, "binary frame from a plain peer; closing");
                        let why = "binary frames are not part of OCPP-J";
                        close(ws, CloseCode::Unsupported, why).await;
                        return Ended::Refused(why.into());
                    }
                    Some(Ok(Message::Close(_))) => {
                        // tungstenite queued our Close reply (RFC 6455 §5.5.1) when it read the
                        // peer's; flushing sends it. `close()` here would fail (SendAfterClosing)
                        // before writing anything, and the peer would see 1006.
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
                        return Ended::Gone("closed by the peer".into());
                    }
                    None => return Ended::Gone("closed by the peer".into()),
                    // Pings are answered by tungstenite itself; pongs only count as heard.
                    Some(Ok(_)) => continue,
                    Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                        metrics.oversize_frames.inc();
                        tracing::warn!(peer = %settings.name, size, max_size, "frame over the size limit; closing with 1009");
                        close(ws, CloseCode::Size, "frame exceeds the size limit").await;
                        return Ended::Refused(format!("frame of {size} bytes over the limit of {max_size}"));
                    }
                    Some(Err(e)) => return Ended::Gone(format!("connection error: {e}")),
                };
                if let Some(c) = &ch.credit {
                    c.take();
                }
                match events.try_send(Event::Input(input)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(event)) => inbound = Some(event),
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ended::Gone("the engine stopped".into()),
                }
            }
            now = ping.tick(), if pinging => {
                if std::mem::take(&mut heard) {
                    last_heard = now;
                }
                let silent = now.duration_since(last_heard);
                if silent >= settings.silence {
                    tracing::info!(peer = %settings.name, ?silent, "nothing heard (no frame, no pong); closing");
                    return Ended::Gone(format!("nothing heard for {silent:?}"));
                }
                let sent = tokio::time::timeout(settings.write_timeout, ws.send(Message::Ping(Bytes::new()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return Ended::Gone("ping could not be sent".into());
                }
            }
        }
    }
}

/// Writes one batch: every queued control frame, then one bulk frame, in one flush.
async fn write_batch<S>(
    ws: &mut WebSocketStream<S>,
    writer: &mut Writer,
    settings: &Settings,
    metrics: &Metrics,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let batch = writer.batch(WRITE_BATCH);
    let count = batch.len() as u64;
    let write = async {
        for msg in batch {
            ws.feed(msg).await?;
        }
        ws.flush().await
    };
    match tokio::time::timeout(settings.write_timeout, write).await {
        Ok(Ok(())) => {
            if settings.charger {
                metrics.frames_out.inc_by(count);
            }
            Ok(())
        }
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => {
            tracing::warn!(peer = %settings.name, timeout_s = settings.write_timeout.as_secs(), "the peer does not read its frames; disconnecting");
            Err("the peer stopped reading".into())
        }
    }
}

/// A close asked for by the node: what is already queued is written first (a StopTransaction
/// followed by a disconnect must not be lost), bounded by the write timeout.
async fn finish<S>(
    mut ws: WebSocketStream<S>,
    writer: &mut Writer,
    ch: &mut Channels,
    settings: &Settings,
    metrics: &Metrics,
    reason: String,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Ok(ToConn::Frame(out)) = ch.control.try_recv() {
        writer.push(out);
    }
    while !writer.is_empty() {
        if write_batch(&mut ws, writer, settings, metrics)
            .await
            .is_err()
        {
            return Ended::Closed(reason);
        }
    }
    close(ws, CloseCode::Policy, &reason).await;
    Ended::Closed(reason)
}

/// Sends a close frame, then reads and discards whatever the peer still sends for a short,
/// bounded time, so that the close frame is delivered rather than lost to a TCP reset.
pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    code: CloseCode,
    reason: &str,
) {
    let frame = CloseFrame {
        code,
        reason: reason.to_owned().into(),
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
