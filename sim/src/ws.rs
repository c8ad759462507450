//! WebSocket plumbing shared by the servers (`csms`, `backend`, `forward`) and the load
//! generator: the listening socket, the connection settings, and a plain `ws://` dialer.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Benchmarks open thousands of connections at once; the default backlog would drop some.
const LISTEN_BACKLOG: u32 = 4096;

/// OCPP frames are small and one CALL is in flight per direction, so small buffers keep the
/// memory per connection low without costing throughput (the settings `ocpp-node` uses for
/// chargers). Writes go straight to the socket (`write_buffer_size` 0). The message limit is the
/// decoder's, so nothing bigger is ever buffered.
pub fn config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * max_frame_bytes)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// A listening TCP socket with a deep backlog. Port 0 picks a free port.
pub fn listen(addr: SocketAddr) -> Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("creating the listening socket")?;
    // Lets a benchmark restart the simulator on the same port right away.
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.listen(LISTEN_BACKLOG)?)
}

/// The last segment of a URL path: the charger id of `/<anything>/<id>` (still percent-encoded).
pub fn last_segment(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// The subprotocols a client offered in its upgrade request, in order.
pub fn offered_subprotocols(
    headers: &tokio_tungstenite::tungstenite::http::HeaderMap,
) -> Vec<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// Opens a plain `ws://` WebSocket to `url`, offering `subprotocol` when given. Returns the
/// stream and the subprotocol the server agreed to. Nagle is off: every frame is a small
/// request or answer that someone waits for.
pub async fn connect(
    url: &str,
    subprotocol: Option<&str>,
    config: WebSocketConfig,
    timeout: Duration,
) -> Result<(WebSocketStream<TcpStream>, Option<String>)> {
    let dial = async {
        let mut request = url
            .into_client_request()
            .with_context(|| format!("invalid URL {url}"))?;
        let uri = request.uri();
        if uri.scheme_str() != Some("ws") {
            bail!("{url}: only ws:// URLs are supported");
        }
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("{url} has no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        if let Some(protocol) = subprotocol {
            let value = HeaderValue::from_str(protocol).context("subprotocol")?;
            request
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .with_context(|| format!("connecting to {url}"))?;
        tcp.set_nodelay(true)?;
        let (ws, response) =
            tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
                .await
                .with_context(|| format!("WebSocket upgrade at {url}"))?;
        let agreed = response
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((ws, agreed))
    };
    tokio::time::timeout(timeout, dial)
        .await
        .map_err(|_| anyhow!("connecting to {url} timed out after {timeout:?}"))?
}

/// Parses a number of seconds, fractions allowed (`1`, `0.5`).
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is not a valid duration"))
}

/// The next text message on a charger's socket, or `None` at the deadline. Pings are answered
/// by tungstenite itself; binary frames belong to overlay links, which a charger never is on.
pub async fn next_text<S>(ws: &mut S, deadline: tokio::time::Instant) -> Result<Option<String>>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => bail!("connection closed by the server"),
            Ok(Some(message)) => message.context("WebSocket error")?,
        };
        match message {
            Message::Text(text) => return Ok(Some(text.as_str().to_owned())),
            Message::Close(frame) => bail!("connection closed by the server: {frame:?}"),
            Message::Binary(bytes) => {
                tracing::warn!(len = bytes.len(), "ignoring a binary message");
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_segment_is_the_charger_id() {
        assert_eq!(last_segment("/ocpp/CP-1"), "CP-1");
        assert_eq!(last_segment("/a/b/CP%202"), "CP%202");
        assert_eq!(last_segment("/CP"), "CP");
        assert_eq!(last_segment("/ocpp/"), "");
    }

    #[test]
    fn seconds_parse_with_fractions() {
        assert_eq!(parse_secs("1"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_secs("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
    }
}
