//! One charger's WebSocket connection: registered as the charger's session (a newer connection
//! of the same charger replaces it), announced to the engine, then run by the link loop. Every
//! decision about its frames is the engine's.

use std::sync::Arc;
use std::time::Duration;

use dashmap::Entry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use wire::OcppVersion;

use super::link::{self, Settings};
use crate::core::bus::Event;
use crate::core::node::{LastMessage, Node, SessionInfo};
use crate::engine::{Input, Peer};
use routing::LinkId;

/// Frames the engine may queue toward one charger before it counts as a slow consumer. Larger
/// than the most `max_pending_calls` allows (32), so the answers to a charger's own CALLs can
/// never fill it by themselves; only a charger that stops reading does.
const QUEUE: usize = 64;

/// A charger that completed its upgrade.
pub struct Charger {
    pub conn_id: u64,
    pub id: String,
    pub version: OcppVersion,
    pub listener: String,
    pub security_profile: u8,
    pub max_frame_bytes: usize,
    pub remote: std::net::SocketAddr,
    pub max_pending_calls: usize,
    /// Zero: never ping.
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub write_timeout: Duration,
}

pub async fn run<S>(node: Arc<Node>, up: Charger, ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let link = LinkId(up.conn_id);
    let (handle, mut channels) = link::channels(QUEUE, false, true);
    let last_message = Arc::new(LastMessage::default());
    let info = SessionInfo {
        conn_id: up.conn_id,
        version: up.version,
        remote: up.remote,
        listener: up.listener.clone(),
        connected_at: chrono::Utc::now(),
        security_profile: up.security_profile,
        last_message: last_message.clone(),
        replaced: handle.kill.clone(),
    };
    match node.sessions.entry(up.id.clone()) {
        // A newer connection of this charger registered first: this one is stale already.
        Entry::Occupied(e) if e.get().conn_id > up.conn_id => handle.kill.notify_one(),
        Entry::Occupied(mut e) => {
            tracing::info!(charger = %up.id, "a newer connection replaces the open one");
            e.insert(info).replaced.notify_one();
        }
        Entry::Vacant(e) => {
            e.insert(info);
            node.metrics.chargers_connected.inc();
        }
    }
    tracing::info!(charger = %up.id, version = %up.version, remote = %up.remote, "charger connected");
    let peer = Peer::Charger {
        id: up.id.clone(),
        version: up.version,
        max_pending: up.max_pending_calls,
    };
    if node
        .events
        .send(Event::Up { link, peer, handle })
        .await
        .is_ok()
    {
        let settings = Settings {
            ping_interval: (!up.ping_interval.is_zero()).then_some(up.ping_interval),
            silence: up.ping_interval + up.pong_timeout,
            write_timeout: up.write_timeout,
            binary: false,
            charger: true,
            name: up.id.clone(),
            last_message: Some(last_message),
        };
        let ended = link::run(
            ws,
            link,
            &settings,
            &node.events,
            &mut channels,
            &node.metrics,
            Vec::new(),
        )
        .await;
        tracing::debug!(charger = %up.id, "connection ended: {}", ended.why());
        let _ = node.events.send(Event::Input(Input::Down { link })).await;
    }
    if node
        .sessions
        .remove_if(&up.id, |_, s| s.conn_id == up.conn_id)
        .is_some()
    {
        node.metrics.chargers_connected.dec();
    }
    tracing::info!(charger = %up.id, "charger disconnected");
}
