//! One overlay WebSocket between two nodes, in either direction (ARCHITECTURE §3.1): announced
//! to the engine as a node peer, then run by the link loop with text and binary frames. A ping
//! every `overlay.ping_interval_s`, and two silent intervals close the link, so that a dead peer
//! behind a NAT or a pulled cable is noticed and the uplink fails over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use routing::{AllowList, LinkId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

use super::link::{self, Settings};
use crate::core::bus::Event;
use crate::core::node::Node;
use crate::engine::{Input, Peer};

/// Frames queued toward one overlay link. It carries every charger behind it, so it is deeper
/// than a charger's queue; when it is full the driver waits (backpressure), it does not drop.
const QUEUE: usize = 1024;

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
    let link = spec.link;
    let (handle, mut channels) = link::channels(QUEUE, true, false);
    let peer = Peer::Node {
        peer: spec.peer.clone(),
        allow: spec.allow,
        uplink: spec.uplink,
        remote: spec.remote,
    };
    if node
        .events
        .send(Event::Up { link, peer, handle })
        .await
        .is_err()
    {
        return "the engine stopped".into();
    }
    let interval = Duration::from_secs(node.config.overlay.ping_interval_s);
    let settings = Settings {
        ping_interval: Some(interval),
        silence: 2 * interval,
        write_timeout: 2 * interval,
        binary: true,
        charger: false,
        name: spec.peer.clone(),
        last_message: None,
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
    let _ = node.events.send(Event::Input(Input::Down { link })).await;
    tracing::info!(%link, peer = %spec.peer, "overlay link closed: {}", ended.why());
    ended.why().to_owned()
}
