//! Charger listeners: accept TCP, establish TLS for profiles 2 and 3, upgrade, run a session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerConfig;
use crate::conn::charger::Charger;
use crate::conn::overlay::LinkSpec;
use crate::core::node::{ListenerInfo, Node};
use crate::net::handshake::Peer;
use crate::net::ip_guard::{self, IpGuard, Refusal, failed_login};
use crate::net::tls::{self, PeerIdentity};

/// Binds the listener now (so a bad address or certificate fails startup) and returns what it
/// serves and the accept loop to spawn.
pub async fn bind(
    node: Arc<Node>,
    index: usize,
) -> anyhow::Result<(ListenerInfo, impl Future<Output = ()> + Send + 'static)> {
    let cfg = node
        .config
        .listener
        .get(index)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no listener {index}"))?;
    let tls = match cfg.security_profile {
        2 | 3 => match node.files.listener_tls.get(index).cloned().flatten() {
            Some(config) => Some(TlsAcceptor::from(config)),
            None => anyhow::bail!("listener {:?}: no TLS configuration loaded", cfg.name),
        },
        _ => None,
    };
    let socket = TcpListener::bind(cfg.bind)
        .await
        .map_err(|e| anyhow::anyhow!("listener {:?} cannot bind {}: {e}", cfg.name, cfg.bind))?;
    let local = socket.local_addr()?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let info = ListenerInfo {
        name: cfg.name.clone(),
        url: format!(
            "{scheme}://{local}{}",
            if cfg.path == "/" { "" } else { &cfg.path }
        ),
        security_profile: cfg.security_profile,
    };
    let guard = Arc::new(IpGuard::new(ip_guard::Limits {
        rate: f64::from(cfg.ip_connect_rate),
        burst: f64::from(cfg.ip_connect_burst),
        failures: cfg.auth_failures_per_ip,
        block: Duration::from_secs(cfg.auth_block_s),
        block_max: Duration::from_secs(cfg.auth_block_max_s),
    }));
    let cfg = Arc::new(cfg);
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let serve = async move {
        loop {
            let (stream, peer) = match socket.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(listener = %cfg.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Per-IP limits first: a flood from one address is closed before it costs a task,
            // a TLS handshake or a password hash.
            match guard.admit(peer.ip(), std::time::Instant::now()) {
                Ok(()) => {}
                Err(Refusal::Rate) => {
                    node.metrics.refused("ip_rate");
                    tracing::debug!(%peer, listener = %cfg.name, "connection rate from this address exceeded; closing");
                    continue;
                }
                Err(Refusal::Blocked(left)) => {
                    node.metrics.refused("ip_blocked");
                    tracing::debug!(%peer, listener = %cfg.name, left_s = left.as_secs(), "address blocked after failed authentication; closing");
                    continue;
                }
            }
            // Every connection, finished upgrade or not, holds a slot until it ends: the number of
            // tasks and buffers a flood can create is bounded by max_connections.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                node.metrics.refused("capacity");
                tracing::debug!(%peer, listener = %cfg.name, "max_connections reached; closing");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (node, cfg, tls, guard) = (node.clone(), cfg.clone(), tls.clone(), guard.clone());
            tokio::spawn(async move {
                connection(node, cfg, tls, stream, peer, &guard).await;
                drop(slot);
            });
        }
    };
    Ok((info, serve))
}

async fn connection(
    node: Arc<Node>,
    cfg: Arc<ListenerConfig>,
    tls: Option<TlsAcceptor>,
    tcp: TcpStream,
    peer: SocketAddr,
    guard: &IpGuard,
) {
    let Some(acceptor) = tls else {
        return upgrade(node, cfg, tcp, peer, None, guard).await;
    };
    // The TLS handshake counts against the same budget as the HTTP upgrade (slowloris).
    let limit = Duration::from_secs(cfg.upgrade_timeout_s);
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(tls::peer_identity);
            upgrade(node, cfg, stream, peer, identity, guard).await;
        }
        Ok(Err(e)) => {
            node.metrics.refused("tls");
            // A client certificate that does not verify, or none on profile 3, is a failed login;
            // other handshake failures (scanners, clients that give up) are only logged.
            match tls::rustls_error(&e) {
                Some(why @ rustls::Error::InvalidCertificate(_)) => {
                    node.security_event(
                        "certificate_invalid",
                        format_args!(
                            "TLS handshake failed: {peer} on listener {:?}: client certificate refused: {why}",
                            cfg.name
                        ),
                    );
                    failed_login(&node, guard, peer);
                }
                Some(rustls::Error::NoCertificatesPresented) => {
                    node.security_event(
                        "auth_failed",
                        format_args!(
                            "TLS handshake failed: {peer} on listener {:?}: no client certificate",
                            cfg.name
                        ),
                    );
                    failed_login(&node, guard, peer);
                }
                _ => tracing::warn!(%peer, listener = %cfg.name, "TLS handshake failed: {e}"),
            }
        }
        Err(_) => {
            node.metrics.refused("timeout");
            tracing::warn!(%peer, listener = %cfg.name, "TLS handshake not complete within {limit:?}");
        }
    }
}

async fn upgrade<S>(
    node: Arc<Node>,
    cfg: Arc<ListenerConfig>,
    stream: S,
    peer: SocketAddr,
    identity: Option<PeerIdentity>,
    guard: &IpGuard,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(up) = crate::net::handshake::accept(&node, &cfg, stream, peer, identity, guard).await
    else {
        return;
    };
    match up.peer {
        Peer::Charger(version) => {
            let charger = Charger {
                conn_id: up.conn_id,
                id: up.id,
                version,
                listener: cfg.name.clone(),
                security_profile: cfg.security_profile,
                max_frame_bytes: cfg.max_frame_bytes,
                remote: peer,
                max_pending_calls: cfg.max_pending_calls,
                ping_interval: Duration::from_secs(cfg.ping_interval_s),
                pong_timeout: Duration::from_secs(cfg.pong_timeout_s),
                write_timeout: Duration::from_secs(cfg.write_timeout_s),
            };
            crate::conn::charger::run(node, charger, up.ws).await;
        }
        Peer::Node(allow) => {
            let spec = LinkSpec {
                link: routing::LinkId(up.conn_id),
                peer: up.id,
                allow,
                uplink: None,
                remote: peer,
            };
            crate::conn::overlay::run(node, spec, up.ws).await;
        }
    }
}
