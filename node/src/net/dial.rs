//! Outbound WebSocket connections: the overlay uplink and, on a hub, each charger's CSMS
//! socket. One function does TCP, optional TLS and the upgrade under one deadline, and sorts
//! the ways it can fail into those the caller reacts to differently.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::core::secrets::Secret;

/// The header that asks for (and, echoed, grants) overlay mode (§3.1).
pub const NETWORKING_MODE: &str = "X-OCPP-NetworkingMode";
pub const OVERLAY_NETWORK: &str = "OverlayNetwork";

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Plain TCP or TLS; boxed, because a dynamic call per read is nothing next to a syscall.
pub type Stream = Box<dyn Io>;

pub struct Target<'a> {
    /// The full URL, id included.
    pub url: &'a str,
    pub subprotocol: Option<&'static str>,
    /// Basic-auth user and password.
    pub basic: Option<(&'a str, &'a Secret)>,
    pub overlay: bool,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
    pub ws_config: WebSocketConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The far end answered the upgrade with an HTTP status: it refuses us.
    #[error("refused with HTTP {status}")]
    Refused { status: u16 },
    #[error("the server accepted none of the offered subprotocols")]
    NoSubprotocol,
    /// We asked for overlay mode and the server did not echo it: it would treat us as one charger.
    #[error(
        "the server did not grant overlay mode (no {NETWORKING_MODE} echo); is this a node listener with us as a node peer?"
    )]
    NoOverlayEcho,
    /// The server's TLS certificate did not verify against our trust anchors.
    #[error("TLS: the server's certificate is invalid: {0}")]
    Certificate(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

pub async fn dial(t: &Target<'_>) -> Result<(WebSocketStream<Stream>, SocketAddr), DialError> {
    match tokio::time::timeout(t.timeout, connect(t)).await {
        Ok(result) => result,
        Err(_) => Err(DialError::Timeout(t.timeout)),
    }
}

async fn connect(t: &Target<'_>) -> Result<(WebSocketStream<Stream>, SocketAddr), DialError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| DialError::Failed(format!("{what}: {e}"));
    let uri: Uri = t.url.parse().map_err(|e| failed("bad URL", &e))?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let tls = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| failed("connect", &e))?;
    let _ = tcp.set_nodelay(true);
    let remote = tcp.peer_addr().map_err(|e| failed("connect", &e))?;
    let stream: Stream = match (&t.tls, tls) {
        (Some(config), true) => {
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| failed("server name", &e))?;
            let tls = TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| match crate::net::tls::rustls_error(&e) {
                    Some(why @ rustls::Error::InvalidCertificate(_)) => {
                        DialError::Certificate(why.to_string())
                    }
                    _ => failed("TLS", &e),
                })?;
            Box::new(tls)
        }
        (None, true) => return Err(DialError::Failed("wss:// needs a TLS config".into())),
        _ => Box::new(tcp),
    };

    let mut request = t
        .url
        .into_client_request()
        .map_err(|e| failed("request", &e))?;
    let headers = request.headers_mut();
    let header = |v: &str| HeaderValue::from_str(v).map_err(|e| failed("header", &e));
    if let Some(p) = t.subprotocol {
        headers.insert("Sec-WebSocket-Protocol", header(p)?);
    }
    if let Some((user, password)) = t.basic {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{user}:{}", password.expose()));
        let mut value = header(&format!("Basic {token}"))?;
        value.set_sensitive(true);
        headers.insert("Authorization", value);
    }
    if t.overlay {
        headers.insert(NETWORKING_MODE, header(OVERLAY_NETWORK)?);
    }
    let (ws, response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(t.ws_config))
            .await
            .map_err(|e| match e {
                WsError::Http(r) => DialError::Refused {
                    status: r.status().as_u16(),
                },
                WsError::Protocol(ProtocolError::SecWebSocketSubProtocolError(_)) => {
                    DialError::NoSubprotocol
                }
                other => failed("upgrade", &other),
            })?;
    if t.subprotocol.is_some() && response.headers().get("Sec-WebSocket-Protocol").is_none() {
        return Err(DialError::NoSubprotocol);
    }
    if t.overlay {
        let echoed = response
            .headers()
            .get(NETWORKING_MODE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(OVERLAY_NETWORK));
        if !echoed {
            return Err(DialError::NoOverlayEcho);
        }
    }
    Ok((ws, remote))
}

/// `<base>/<id>` with the id percent-encoded (§6.2).
pub fn url_for(base: &str, id: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!("{base}/{}", percent_encoding::utf8_percent_encode(id, SET))
}
