//! Charger listeners: accept TCP, upgrade, run a session per charger.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::ListenerConfig;
use crate::state::{ListenerInfo, Node};

/// Binds the listener now (so a bad address fails startup) and returns what it serves and the
/// accept loop to spawn.
pub async fn bind(
    node: Arc<Node>,
    cfg: ListenerConfig,
) -> anyhow::Result<(ListenerInfo, impl Future<Output = ()> + Send + 'static)> {
    let socket = TcpListener::bind(cfg.bind)
        .await
        .map_err(|e| anyhow::anyhow!("listener {:?} cannot bind {}: {e}", cfg.name, cfg.bind))?;
    let local = socket.local_addr()?;
    let info = ListenerInfo {
        name: cfg.name.clone(),
        url: format!(
            "ws://{local}{}",
            if cfg.path == "/" { "" } else { &cfg.path }
        ),
        security_profile: cfg.security_profile,
    };
    let cfg = Arc::new(cfg);
    let serve = async move {
        loop {
            let (stream, peer) = match socket.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(listener = %cfg.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (node, cfg) = (node.clone(), cfg.clone());
            tokio::spawn(async move {
                if let Some(up) = crate::handshake::accept(&node, &cfg, stream, peer).await {
                    crate::session::run(node, cfg.name.clone(), cfg.max_frame_bytes, up, peer)
                        .await;
                }
            });
        }
    };
    Ok((info, serve))
}
