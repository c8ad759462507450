//! One overlay WebSocket between two nodes, in either direction (ARCHITECTURE §3.1).
//!
//! The task only moves text: what it reads goes to the router, what the router queues for this
//! link is written out. It also keeps the link honest: a WebSocket ping every interval, and a
//! link that has been silent for two intervals is closed, so that a dead peer behind a NAT or a
//! pulled cable is noticed and the uplink fails over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use routing::{AllowList, LinkId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError};

use crate::router::{Event, ToPeer};
use crate::state::Node;

/// Frames queued toward one overlay link. It carries every charger behind it, so it is deeper
/// than a charger's queue; when it is full the router waits (backpressure), it does not drop.
const QUEUE: usize = 1024;
/// Most frames written per flush.
const WRITE_BATCH: usize = 64;

pub struct LinkSpec {
    pub link: LinkId,
    /// The peer's node id (inbound) or the uplink's name (outbound).
    pub peer: String,
    pub allow: AllowList,
    pub uplink: Option<String>,
    pub remote: SocketAddr,
}

/// Runs the link until it closes. Returns why it ended, for the uplink's log.
pub async fn run<S>(node: Arc<Node>, spec: LinkSpec, ws: WebSocketStream<S>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(router) = node.router.clone() else {
        return "no router".into();
    };
    let link = spec.link;
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let up = Event::LinkUp {
        link,
        peer: spec.peer.clone(),
        allow: spec.allow,
        uplink: spec.uplink,
        remote: spec.remote,
        tx,
    };
    if router.send(up).await.is_err() {
        return "router stopped".into();
    }
    let interval = Duration::from_secs(node.config.overlay.ping_interval_s);
    let started = Instant::now();
    let last_heard = AtomicU64::new(0);
    let heard = || last_heard.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    let (mut sink, mut stream) = ws.split();

    // Reading and writing are two futures, not one loop: the reader may wait for room in the
    // router's queue while the router waits for room in this link's queue, and the writer must
    // keep draining meanwhile, or the two would wait on each other forever.
    let reader = async {
        loop {
            let msg = stream.next().await;
            heard();
            match msg {
                Some(Ok(Message::Text(text))) => {
                    let event = Event::FromLink { link, text };
                    if router.send(event).await.is_err() {
                        return "router stopped".to_owned();
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    // Binary frames (file transfer) are not routed yet; say so rather than guess.
                    node.metrics.frames_dropped.inc();
                    tracing::warn!(%link, bytes = b.len(), "binary overlay frame dropped: not supported yet");
                }
                Some(Ok(Message::Close(_))) | None => return "closed by the peer".to_owned(),
                Some(Ok(_)) => {} // ping, pong: tungstenite answers pings itself
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                    node.metrics.oversize_frames.inc();
                    return format!("frame of {size} bytes over the limit of {max_size}");
                }
                Some(Err(e)) => return format!("connection error: {e}"),
            }
        }
    };
    let writer = async {
        let mut ticker = tokio::time::interval_at(started + interval, interval);
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(ToPeer::Text(text)) => {
                        // Everything already queued goes out in one write: under load this
                        // link carries many chargers' frames, and a system call per frame
                        // would dominate the cost of relaying them.
                        let mut batch = vec![text];
                        let mut closing = None;
                        while batch.len() < WRITE_BATCH {
                            match rx.try_recv() {
                                Ok(ToPeer::Text(t)) => batch.push(t),
                                Ok(ToPeer::Close(reason)) => {
                                    closing = Some(reason);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        let write = async {
                            for text in batch {
                                sink.feed(Message::text(text)).await?;
                            }
                            sink.flush().await
                        };
                        match tokio::time::timeout(2 * interval, write).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => return format!("write failed: {e}"),
                            Err(_) => return "peer stopped reading".to_owned(),
                        }
                        if let Some(reason) = closing {
                            return reason;
                        }
                    }
                    Some(ToPeer::Close(reason)) => return reason,
                    None => return "router dropped the link".to_owned(),
                },
                _ = ticker.tick() => {
                    let silent = started.elapsed()
                        .saturating_sub(Duration::from_millis(last_heard.load(Ordering::Relaxed)));
                    if silent >= 2 * interval {
                        return format!("nothing heard for {silent:?}");
                    }
                    let ping = tokio::time::timeout(interval, sink.send(Message::Ping(Bytes::new())));
                    if !matches!(ping.await, Ok(Ok(()))) {
                        return "ping could not be sent".to_owned();
                    }
                }
            }
        }
    };
    let why = tokio::select! {
        why = reader => why,
        why = writer => why,
    };
    let _ = router.send(Event::LinkDown { link }).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    tracing::info!(%link, peer = %spec.peer, "overlay link closed: {why}");
    why
}
