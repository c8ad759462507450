//! The overlay uplink dialer (ARCHITECTURE §3.4): at most ONE uplink is up at a time, so a site
//! holds exactly one upstream connection however many chargers it has.
//!
//! Uplinks are tried in priority order. When the active one drops, a new round starts from the
//! most preferred after a short jittered pause; a round in which every uplink fails doubles the
//! pause, up to the maximum. There is no fail-back while an uplink is healthy: switching back
//! would cut a working link to trade it for one that just failed.

use std::sync::Arc;
use std::time::Duration;

use routing::{AllowList, LinkId};

use super::overlay::{self, LinkSpec};
use crate::config::UplinkConfig;
use crate::core::node::Node;
use crate::net::backoff::Backoff;
use crate::net::dial::{self, Target};

pub async fn run(node: Arc<Node>) {
    // Config order is the order of the loaded TLS configs; dialling order is by priority.
    let mut uplinks: Vec<(UplinkConfig, Option<Arc<rustls::ClientConfig>>)> = node
        .config
        .uplink
        .iter()
        .cloned()
        .zip(
            node.files
                .uplink_tls
                .iter()
                .cloned()
                .chain(std::iter::repeat(None)),
        )
        .collect();
    uplinks.sort_by_key(|(u, _)| u.priority);
    let o = &node.config.overlay;
    let mut backoff = Backoff::new(
        Duration::from_millis(o.reconnect_initial_ms),
        Duration::from_millis(o.reconnect_max_ms),
    );
    loop {
        let mut connected = false;
        for (u, tls) in &uplinks {
            if try_uplink(&node, u, tls.clone()).await {
                connected = true;
                break;
            }
        }
        let pause = if connected {
            backoff.succeeded()
        } else {
            backoff.failed()
        };
        for (u, _) in &uplinks {
            node.set_uplink(&u.name, |s| {
                if s.state != "up" {
                    s.state = "backoff";
                }
            });
        }
        tokio::time::sleep(pause).await;
    }
}

/// Dials one uplink and, if it comes up, runs it until it drops. True if it came up.
async fn try_uplink(
    node: &Arc<Node>,
    u: &UplinkConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> bool {
    let own = node.config.node.id.clone();
    let url = dial::url_for(&u.url, &own);
    let password = node.secrets().uplink_password(&u.name);
    let target = Target {
        url: &url,
        subprotocol: None,
        basic: password.map(|p| (own.as_str(), p)),
        overlay: true,
        tls,
        timeout: Duration::from_secs(node.config.overlay.connect_timeout_s),
        ws_config: crate::net::handshake::overlay_ws_config(node),
    };
    node.set_uplink(&u.name, |s| s.state = "connecting");
    let (ws, remote) = match dial::dial(&target).await {
        Ok(ok) => ok,
        Err(e) => {
            let why = e.to_string();
            // This node's own credentials or its hub's certificate refused: security events (the
            // §8 FailedToAuthenticateAtCentralSystem / InvalidCentralSystemCertificate).
            match &e {
                dial::DialError::Refused {
                    status: status @ (401 | 403),
                } => node.security_event(
                    "uplink_auth_failed",
                    format_args!(
                        "uplink {:?} ({url}) refused this node with HTTP {status}",
                        u.name
                    ),
                ),
                dial::DialError::Certificate(cert) => node.security_event(
                    "uplink_certificate_invalid",
                    format_args!("uplink {:?} ({url}): {cert}", u.name),
                ),
                _ => {}
            }
            if matches!(e, dial::DialError::NoOverlayEcho) {
                tracing::error!(uplink = %u.name, url = %url, "{why}");
            } else {
                tracing::warn!(uplink = %u.name, url = %url, "uplink dial failed: {why}");
            }
            node.set_uplink(&u.name, |s| {
                s.state = "standby";
                s.last_error = Some(why);
            });
            return false;
        }
    };
    let link = LinkId(node.next_conn_id());
    node.metrics.uplink_connects.inc();
    tracing::info!("uplink up name={} url={url} remote={remote} {link}", u.name);
    node.set_uplink(&u.name, |s| {
        s.state = "up";
        s.link = Some(link.0);
        s.remote_addr = Some(remote.to_string());
        s.last_error = None;
    });
    let spec = LinkSpec {
        link,
        peer: u.name.clone(),
        // Frames from upstream start with "CSMS" or any node id: the uplink speaks for anyone.
        allow: AllowList::any(),
        uplink: Some(u.name.clone()),
        remote,
    };
    let why = overlay::run(node.clone(), spec, ws).await;
    tracing::warn!("uplink down name={} url={url}: {why}", u.name);
    node.set_uplink(&u.name, |s| {
        s.state = "standby";
        s.link = None;
        s.remote_addr = None;
        s.last_error = Some(why);
    });
    true
}
