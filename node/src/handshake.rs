//! The HTTP → WebSocket upgrade for chargers (ARCHITECTURE §6.2, §6.4).
//!
//! The request head is read and answered here rather than inside tungstenite's callback, so that
//! password verification can run asynchronously and every refusal gets a proper status and log
//! line. The head is bounded in size and in time (slowloris), and nothing the client sends is
//! trusted for identity except what authentication proves.

use std::net::SocketAddr;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use wire::OcppVersion;

use crate::config::{ListenerConfig, MissingSubprotocol, valid_charger_id};
use crate::state::Node;
use crate::tls::PeerIdentity;

/// Largest request head accepted; real chargers send well under 1 KiB.
const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

pub struct Upgraded<S> {
    /// Numbered when the 101 is written: a larger number is a newer connection, whatever order
    /// the sessions register in afterwards.
    pub conn_id: u64,
    pub charger_id: String,
    pub version: OcppVersion,
    pub ws: WebSocketStream<S>,
}

/// Why an upgrade was refused: the HTTP answer, the log text and a fixed metric label.
#[derive(Debug)]
struct Refusal {
    status: u16,
    reason: String,
    label: &'static str,
    ask_for_credentials: bool,
}

impl Refusal {
    fn new(status: u16, label: &'static str, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
            label,
            ask_for_credentials: false,
        }
    }
}

/// What the upgrade request asked for, borrowed out of the parsed head.
struct Request {
    method: String,
    path: String,
    upgrade_websocket: bool,
    key: Option<String>,
    version_13: bool,
    protocols: Vec<String>,
    authorization: Option<String>,
    networking_mode: Option<String>,
}

/// Performs the upgrade or refuses it (answering and logging); `None` means the socket is done.
/// `stream` is TCP or, for profiles 2 and 3, TLS already established; `tls_peer` holds the
/// verified client certificate's names (profile 3).
pub async fn accept<S>(
    node: &Node,
    cfg: &ListenerConfig,
    mut stream: S,
    peer: SocketAddr,
    tls_peer: Option<PeerIdentity>,
) -> Option<Upgraded<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limit = Duration::from_secs(cfg.upgrade_timeout_s);
    let (req, leftover) = match tokio::time::timeout(limit, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(refusal)) => {
            refuse(node, &mut stream, peer, refusal).await;
            return None;
        }
        Err(_) => {
            node.metrics.refused("timeout");
            tracing::warn!(%peer, listener = %cfg.name, "upgrade request not complete within {limit:?}; closing");
            return None;
        }
    };
    let (charger_id, version) = match decide(node, cfg, &req, tls_peer.as_ref()).await {
        Ok(ok) => ok,
        Err(refusal) => {
            refuse(node, &mut stream, peer, refusal).await;
            return None;
        }
    };
    let key = req.key.as_deref()?;
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    // Echo a subprotocol only when one was offered: a client that offered none must not get one.
    if !req.protocols.is_empty() {
        response.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            version.subprotocol()
        ));
    }
    response.push_str("\r\n");
    let conn_id = node.next_conn_id();
    if let Err(e) = stream.write_all(response.as_bytes()).await {
        tracing::debug!(%peer, error = %e, "client left during the upgrade");
        return None;
    }
    let ws =
        WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(ws_config(cfg)))
            .await;
    Some(Upgraded {
        conn_id,
        charger_id,
        version,
        ws,
    })
}

/// Buffers are kept small because most chargers are idle most of the time; the frame limit is
/// enforced by tungstenite on the frame header, before any payload is buffered.
pub fn ws_config(cfg: &ListenerConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * cfg.max_frame_bytes)
        .max_message_size(Some(cfg.max_frame_bytes))
        .max_frame_size(Some(cfg.max_frame_bytes))
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Request, Vec<u8>), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| Refusal::new(400, "io", format!("reading the request: {e}")))?;
        if n == 0 {
            return Err(Refusal::new(
                400,
                "incomplete",
                "connection closed before the request was complete",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let req = Request::from_parsed(&parsed);
                return Ok((req, buf[len..].to_vec()));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => {}
            Ok(httparse::Status::Partial) => {
                return Err(Refusal::new(
                    431,
                    "head_too_large",
                    format!("request head exceeds {MAX_HEAD_BYTES} bytes"),
                ));
            }
            Err(e) => {
                return Err(Refusal::new(
                    400,
                    "bad_request",
                    format!("malformed HTTP request: {e}"),
                ));
            }
        }
    }
}

impl Request {
    fn from_parsed(parsed: &httparse::Request<'_, '_>) -> Request {
        fn header<'h>(
            headers: &'h [httparse::Header<'_>],
            name: &'h str,
        ) -> impl Iterator<Item = &'h str> {
            headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .filter_map(|h| std::str::from_utf8(h.value).ok())
        }
        let headers: &[httparse::Header<'_>] = parsed.headers;
        let header = |name| header(headers, name);
        let has_token = |name, token: &str| {
            header(name)
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        Request {
            method: parsed.method.unwrap_or_default().to_owned(),
            path: parsed.path.unwrap_or_default().to_owned(),
            upgrade_websocket: has_token("upgrade", "websocket")
                && has_token("connection", "upgrade"),
            key: header("sec-websocket-key")
                .next()
                .map(|k| k.trim().to_owned()),
            version_13: header("sec-websocket-version").any(|v| v.trim() == "13"),
            protocols: header("sec-websocket-protocol")
                .flat_map(|v| v.split(','))
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            authorization: header("authorization").next().map(str::to_owned),
            networking_mode: header("x-ocpp-networkingmode")
                .next()
                .map(|v| v.trim().to_owned()),
        }
    }
}

/// Checks the request against the listener's rules; on success, who is connecting with which version.
async fn decide(
    node: &Node,
    cfg: &ListenerConfig,
    req: &Request,
    tls_peer: Option<&PeerIdentity>,
) -> Result<(String, OcppVersion), Refusal> {
    if req.method != "GET" {
        return Err(Refusal::new(
            405,
            "method",
            format!("method {} is not GET", req.method),
        ));
    }
    if !req.upgrade_websocket || req.key.is_none() || !req.version_13 {
        return Err(Refusal::new(
            400,
            "not_websocket",
            "not a WebSocket (version 13) upgrade request",
        ));
    }
    let charger_id = charger_id_from_path(&req.path, &cfg.path, &node.config.node.id)?;
    if let Some(mode) = &req.networking_mode {
        // Overlay mode is for configured node identities only; this listener serves chargers.
        return Err(Refusal::new(
            403,
            "overlay_refused",
            format!(
                "{charger_id:?} asked for networking mode {mode:?}; overlay mode is granted only to configured node identities"
            ),
        ));
    }
    let version = negotiate(cfg, &req.protocols, &charger_id)?;
    match cfg.security_profile {
        0 => {}
        1 | 2 => authenticate(node, &charger_id, req.authorization.as_deref()).await?,
        _ => check_certificate(cfg, &charger_id, tls_peer)?,
    }
    Ok((charger_id, version))
}

fn charger_id_from_path(path: &str, prefix: &str, node_id: &str) -> Result<String, Refusal> {
    let path = path.split('?').next().unwrap_or_default();
    let rest = if prefix == "/" {
        path.strip_prefix('/')
    } else {
        path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
    };
    let encoded = rest
        .filter(|r| !r.is_empty() && !r.contains('/'))
        .ok_or_else(|| {
            Refusal::new(
                404,
                "path",
                format!("path {path:?} is not {prefix}/<chargerId>"),
            )
        })?;
    let id = percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| {
            Refusal::new(
                400,
                "charger_id",
                format!("charger id {encoded:?} is not UTF-8 once percent-decoded"),
            )
        })?
        .into_owned();
    valid_charger_id(&id, node_id)
        .map_err(|why| Refusal::new(400, "charger_id", format!("charger id {id:?}: {why}")))?;
    Ok(id)
}

/// Picks the highest offered version this listener accepts (§6.2).
fn negotiate(
    cfg: &ListenerConfig,
    offered: &[String],
    charger_id: &str,
) -> Result<OcppVersion, Refusal> {
    let accepted = |v: &OcppVersion| cfg.subprotocols.contains(v);
    if offered.is_empty() {
        return match cfg.missing_subprotocol {
            MissingSubprotocol::AssumeOcpp16 if accepted(&OcppVersion::V16) => {
                tracing::warn!(
                    charger = charger_id,
                    "no subprotocol offered; assuming ocpp1.6"
                );
                Ok(OcppVersion::V16)
            }
            _ => Err(Refusal::new(
                400,
                "subprotocol",
                "no OCPP subprotocol offered, and this listener requires one",
            )),
        };
    }
    offered
        .iter()
        .filter_map(|p| p.parse::<OcppVersion>().ok())
        .filter(accepted)
        .max()
        .ok_or_else(|| {
            let ours: Vec<&str> = cfg.subprotocols.iter().map(|v| v.subprotocol()).collect();
            Refusal::new(
                400,
                "subprotocol",
                format!(
                    "unsupported subprotocol(s) {offered:?}; this listener accepts {}",
                    ours.join(", ")
                ),
            )
        })
}

async fn authenticate(node: &Node, charger_id: &str, header: Option<&str>) -> Result<(), Refusal> {
    let unauthorized = |why: String| Refusal {
        ask_for_credentials: true,
        ..Refusal::new(401, "auth", why)
    };
    let (user, password) = header
        .and_then(crate::auth::parse_basic)
        .ok_or_else(|| unauthorized(format!("{charger_id:?} sent no Basic credentials")))?;
    if user != charger_id {
        return Err(unauthorized(format!(
            "Basic-auth user {user:?} is not the charger id {charger_id:?}"
        )));
    }
    let hash = node
        .config
        .chargers
        .get(charger_id)
        .and_then(|c| c.password_hash.clone())
        .ok_or_else(|| unauthorized(format!("{charger_id:?} has no password configured")))?;
    if node.verifier.verify(password, hash).await {
        Ok(())
    } else {
        // Never log the password itself.
        Err(unauthorized(format!("wrong password for {charger_id:?}")))
    }
}

/// Profile 3: the certificate (already verified against the CA by rustls) must name this charger.
fn check_certificate(
    cfg: &ListenerConfig,
    charger_id: &str,
    tls_peer: Option<&PeerIdentity>,
) -> Result<(), Refusal> {
    let forbidden = |why: String| Refusal::new(403, "certificate", why);
    let id = tls_peer.ok_or_else(|| forbidden("no client certificate".into()))?;
    if id.common_name.as_deref() != Some(charger_id) {
        return Err(forbidden(format!(
            "client certificate CN {:?} is not the charger id {charger_id:?}",
            id.common_name.as_deref().unwrap_or("")
        )));
    }
    if let Some(cpo) = &cfg.cpo_name {
        if id.organization.as_deref() != Some(cpo.as_str()) {
            return Err(forbidden(format!(
                "client certificate O {:?} is not the CPO {cpo:?}",
                id.organization.as_deref().unwrap_or("")
            )));
        }
    }
    Ok(())
}

async fn refuse<S: AsyncWrite + Unpin>(
    node: &Node,
    stream: &mut S,
    peer: SocketAddr,
    refusal: Refusal,
) {
    node.metrics.refused(refusal.label);
    tracing::warn!(%peer, status = refusal.status, "upgrade refused: {}", refusal.reason);
    let text = match refusal.status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let body = format!("{}\n", refusal.reason);
    let challenge = if refusal.ask_for_credentials {
        "WWW-Authenticate: Basic realm=\"ocpp\"\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 {} {text}\r\n{challenge}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        refusal.status,
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
