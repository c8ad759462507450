//! `ocpp-sim forward`: the bare forwarder that relay benchmarks compare `ocpp-node` against.
//!
//! For every WebSocket accepted at `/<anything>/<id>`, it echoes the first offered subprotocol,
//! opens ONE upstream WebSocket to `<upstream>/<id>` offering that same subprotocol, and copies
//! text (and binary) frames both ways unchanged: no decoding, no validation, no routing. One task
//! per pair selects on both sockets and writes each frame straight to the other side, so the
//! per-frame cost is one read and one write with no channel, lock or copy. The tungstenite
//! settings are those `ocpp-node` uses for chargers (4 KiB read buffer, no write buffering).
//!
//! Prints `listening forward ws://HOST:PORT/ocpp` when ready (any path works under it) and runs
//! until SIGTERM or SIGINT. A failed upstream dial closes the charger's socket with 1011.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::csms::HANDSHAKE_TIMEOUT;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on; port 0 picks a free one (the `listening` line tells which).
    #[arg(long)]
    listen: SocketAddr,
    /// Base `ws://` URL of the upstream; the charger at `/<anything>/<id>` is relayed to
    /// `<upstream>/<id>`.
    #[arg(long)]
    upstream: String,
}

/// How long the upstream dial of one charger may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// How long closing a pair's sockets may take once one side has gone.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

struct Shared {
    upstream: String,
    ws_config: WebSocketConfig,
}

type Ws = WebSocketStream<TcpStream>;

pub async fn run(args: Args) -> Result<bool> {
    if !args.upstream.starts_with("ws://") {
        bail!("--upstream must be a ws:// URL, got {}", args.upstream);
    }
    let shared = Arc::new(Shared {
        upstream: args.upstream.trim_end_matches('/').to_owned(),
        ws_config: crate::ws::config(wire::Limits::default().max_frame_bytes),
    });
    let listener = crate::ws::listen(args.listen)?;
    let local = listener.local_addr()?;
    let shutdown = crate::csms::shutdown_signal(None)?;
    tokio::pin!(shutdown);
    println!("listening forward ws://{local}/ocpp");
    std::io::stdout().flush()?;
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(true),
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(pair(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Upgrades the charger's connection, dials its upstream, then relays until either side ends.
// The callback's large `Err` is tungstenite's `ErrorResponse`; its signature is not ours to choose.
#[allow(clippy::result_large_err)]
async fn pair(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let mut chosen: Option<(String, Option<String>)> = None;
    let callback = |request: &Request, mut response: Response| {
        let id = crate::ws::last_segment(request.uri().path());
        if id.is_empty() {
            let mut refusal = ErrorResponse::new(Some("no charger id in the path".to_owned()));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        let protocol = crate::ws::offered_subprotocols(request.headers())
            .first()
            .map(|p| (*p).to_owned());
        if let Some(p) = &protocol {
            // The token came from a header value, so it is a valid one.
            if let Ok(value) = HeaderValue::from_str(p) {
                response
                    .headers_mut()
                    .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
            }
        }
        chosen = Some((id.to_owned(), protocol));
        Ok(response)
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(shared.ws_config));
    let mut down = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "WebSocket handshake failed or refused");
            return;
        }
        Err(_) => {
            tracing::debug!("WebSocket handshake timed out");
            return;
        }
    };
    let Some((id, protocol)) = chosen else {
        return;
    };
    let url = format!("{}/{id}", shared.upstream);
    let up = crate::ws::connect(
        &url,
        protocol.as_deref(),
        shared.ws_config,
        UPSTREAM_TIMEOUT,
    );
    let mut up = match up.await {
        Ok((up, _agreed)) => up,
        Err(e) => {
            tracing::warn!(charger = %id, "upstream unavailable: {e:#}");
            let frame = CloseFrame {
                code: CloseCode::Error,
                reason: Utf8Bytes::from_static("upstream unavailable"),
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, down.close(Some(frame))).await;
            return;
        }
    };
    loop {
        let more = tokio::select! {
            message = down.next() => relay(message, &mut up).await,
            message = up.next() => relay(message, &mut down).await,
        };
        if !more {
            break;
        }
    }
    // Whichever side is still open gets its close handshake; errors no longer matter.
    let _ = tokio::join!(
        tokio::time::timeout(CLOSE_TIMEOUT, down.close(None)),
        tokio::time::timeout(CLOSE_TIMEOUT, up.close(None)),
    );
    tracing::debug!(charger = %id, "pair closed");
}

/// Writes one message read from one side to the other. Returns false when the pair is over.
async fn relay(message: Option<Result<Message, WsError>>, to: &mut Ws) -> bool {
    match message {
        Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
            to.send(message).await.is_ok()
        }
        Some(Ok(Message::Close(frame))) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, to.close(frame)).await;
            false
        }
        // Pings are answered by tungstenite on each side; pongs and raw frames are not relayed.
        Some(Ok(_)) => true,
        None | Some(Err(_)) => false,
    }
}
