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
use crate::core::node::Node;
use crate::net::dial::{NETWORKING_MODE, OVERLAY_NETWORK};
use crate::net::tls::PeerIdentity;

/// Largest request head accepted; real chargers send well under 1 KiB.
const MAX_HEAD_BYTES: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

pub struct Upgraded<S> {
    /// Numbered when the 101 is written: a larger number is a newer connection, whatever order
    /// the sessions register in afterwards.
    pub conn_id: u64,
    /// The authenticated identity: a charger id, or a node id for an overlay link.
    pub id: String,
    pub peer: Peer,
    pub ws: WebSocketStream<S>,
}

/// Who completed the upgrade.
pub enum Peer {
    /// A plain OCPP-J charger, with the negotiated version.
    Charger(OcppVersion),
    /// A configured node peer granted overlay mode, with the ids it may speak for.
    Node(routing::AllowList),
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
    guard: &crate::net::ip_guard::IpGuard,
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
    let (id, kind) = match decide(node, cfg, &req, peer, tls_peer.as_ref()).await {
        Ok(ok) => ok,
        Err(refusal) => {
            if matches!(refusal.label, "auth" | "certificate") {
                crate::net::ip_guard::failed_login(node, guard, peer);
            }
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
    match (&kind, req.protocols.first()) {
        (Peer::Charger(version), Some(_)) => response.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            version.subprotocol()
        )),
        (Peer::Node(_), Some(first)) => {
            response.push_str(&format!("Sec-WebSocket-Protocol: {first}\r\n"))
        }
        _ => {}
    }
    if matches!(kind, Peer::Node(_)) {
        response.push_str(&format!("{NETWORKING_MODE}: {OVERLAY_NETWORK}\r\n"));
    }
    response.push_str("\r\n");
    let conn_id = node.next_conn_id();
    if let Err(e) = stream.write_all(response.as_bytes()).await {
        tracing::debug!(%peer, error = %e, "client left during the upgrade");
        return None;
    }
    let config = match kind {
        Peer::Charger(_) => ws_config(cfg),
        Peer::Node(_) => overlay_ws_config(node),
    };
    let ws =
        WebSocketStream::from_partially_read(stream, leftover, Role::Server, Some(config)).await;
    Some(Upgraded {
        conn_id,
        id,
        peer: kind,
        ws,
    })
}

/// Overlay links carry many chargers' frames: a bigger read buffer, and a frame limit that
/// admits any frame a charger listener admits plus the overlay's dest and path.
pub fn overlay_ws_config(node: &Node) -> WebSocketConfig {
    let limit = overlay_frame_limit(node);
    // Frames are buffered and flushed per batch (see `conn::link`), not written one by one.
    WebSocketConfig::default()
        .read_buffer_size(64 * 1024)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(4 * limit)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

/// A hub's socket to the CSMS carries one charger, like a charger's own connection: the same
/// small buffers, since a hub holds one per charger.
pub fn csms_ws_config(node: &Node) -> WebSocketConfig {
    let limit = overlay_frame_limit(node);
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * limit)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

fn overlay_frame_limit(node: &Node) -> usize {
    let largest = node
        .config
        .listener
        .iter()
        .map(|l| l.max_frame_bytes)
        .max()
        .unwrap_or(1024 * 1024);
    largest + 64 * 1024
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

/// Checks the request against the listener's rules; on success, who is connecting and as what.
async fn decide(
    node: &Node,
    cfg: &ListenerConfig,
    req: &Request,
    peer: SocketAddr,
    tls_peer: Option<&PeerIdentity>,
) -> Result<(String, Peer), Refusal> {
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
    let id = charger_id_from_path(&req.path, &cfg.path, &node.config.node.id)?;
    let node_peer = node.config.node_peers.get(&id);
    if let Some(mode) = &req.networking_mode {
        return decide_node(node, cfg, req, tls_peer, id, mode).await;
    }
    if node_peer.is_some() {
        return Err(Refusal::new(
            403,
            "node_as_charger",
            format!("{id:?} is a configured node peer; nodes must ask for overlay mode"),
        ));
    }
    let version = negotiate(cfg, &req.protocols, &id)?;
    let hash = node
        .config
        .chargers
        .get(&id)
        .and_then(|c| c.password_hash.clone());
    let authenticated = match cfg.security_profile {
        0 => Ok(()),
        1 | 2 => authenticate(node, &id, hash, req.authorization.as_deref()).await,
        _ => check_certificate(cfg, &id, tls_peer),
    };
    if let Err(refusal) = authenticated {
        // The reason names the charger and what was wrong, never the password or the header.
        node.security_event(
            "auth_failed",
            format_args!(
                "charger {id:?} from {peer} on listener {:?}: {}",
                cfg.name, refusal.reason
            ),
        );
        return Err(refusal);
    }
    Ok((id, Peer::Charger(version)))
}

/// Overlay mode is granted only to configured node identities, never to chargers (§6.2), and
/// only after the same authentication the listener asks of chargers.
async fn decide_node(
    node: &Node,
    cfg: &ListenerConfig,
    req: &Request,
    tls_peer: Option<&PeerIdentity>,
    id: String,
    mode: &str,
) -> Result<(String, Peer), Refusal> {
    let refuse = |why: String| {
        node.security_event("overlay_refused", &why);
        Refusal::new(403, "overlay_refused", why)
    };
    if !mode.eq_ignore_ascii_case(OVERLAY_NETWORK) {
        return Err(refuse(format!(
            "{id:?} asked for unknown networking mode {mode:?}"
        )));
    }
    let Some(peer) = node.config.node_peers.get(&id) else {
        return Err(refuse(format!(
            "{id:?} asked for networking mode {mode:?}; overlay mode is granted only to configured node identities"
        )));
    };
    if !node.config.is_overlay() {
        return Err(refuse(format!(
            "{id:?} asked for overlay mode, but this node runs standalone (no uplink, no hub)"
        )));
    }
    let authenticated = match cfg.security_profile {
        0 => Ok(()),
        1 | 2 => {
            authenticate(
                node,
                &id,
                peer.password_hash.clone(),
                req.authorization.as_deref(),
            )
            .await
        }
        _ => check_certificate(cfg, &id, tls_peer),
    };
    if let Err(refusal) = authenticated {
        node.security_event(
            "overlay_refused",
            format_args!("node peer {id:?} failed authentication: {}", refusal.reason),
        );
        return Err(refusal);
    }
    // A node always speaks for itself: its own CALLs and errors start with its id.
    let allow =
        routing::AllowList::parse(peer.allow.iter().map(String::as_str).chain([id.as_str()]))
            .map_err(|e| Refusal::new(500, "config", format!("allow-list of {id:?}: {e}")))?;
    Ok((id, Peer::Node(allow)))
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

async fn authenticate(
    node: &Node,
    charger_id: &str,
    hash: Option<String>,
    header: Option<&str>,
) -> Result<(), Refusal> {
    let unauthorized = |why: String| Refusal {
        ask_for_credentials: true,
        ..Refusal::new(401, "auth", why)
    };
    let (user, password) = header
        .and_then(crate::net::password::parse_basic)
        .ok_or_else(|| unauthorized(format!("{charger_id:?} sent no Basic credentials")))?;
    if user != charger_id {
        return Err(unauthorized(format!(
            "Basic-auth user {user:?} is not the charger id {charger_id:?}"
        )));
    }
    let hash =
        hash.ok_or_else(|| unauthorized(format!("{charger_id:?} has no password configured")))?;
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
