//! The overlay uplink dialer (ARCHITECTURE §3.4): at most ONE uplink is up at a time, so a site
//! holds exactly one upstream connection however many chargers it has.
//!
//! Uplinks are tried in priority order. When the active one drops, a new round starts from the
//! most preferred after a short jittered pause; a round in which every uplink fails doubles the
//! pause, up to the maximum. There is no fail-back while an uplink is healthy: switching back
//! would cut a working link to trade it for one that just failed.

use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::Duration;

use routing::{AllowList, LinkId};

use crate::config::UplinkConfig;
use crate::dial::{self, Target};
use crate::overlay_link::{self, LinkSpec};
use crate::state::Node;

pub async fn run(node: Arc<Node>) {
    let mut uplinks = node.config.uplink.clone();
    uplinks.sort_by_key(|u| u.priority);
    let tls: Vec<Option<Arc<rustls::ClientConfig>>> = uplinks
        .iter()
        .map(|u| {
            if !u.url.starts_with("wss://") {
                return None;
            }
            crate::tls::client_config(
                u.tls_ca_file.as_deref(),
                u.tls_cert_file.as_deref(),
                u.tls_key_file.as_deref(),
            )
            .map_err(|e| tracing::error!(uplink = %u.name, error = %e, "uplink TLS setup failed"))
            .ok()
        })
        .collect();
    let o = &node.config.overlay;
    let initial = Duration::from_millis(o.reconnect_initial_ms);
    let max = Duration::from_millis(o.reconnect_max_ms);
    let mut backoff = initial;
    loop {
        let mut connected = false;
        for (u, tls) in uplinks.iter().zip(&tls) {
            if try_uplink(&node, u, tls.clone()).await {
                connected = true;
                break;
            }
        }
        let pause = if connected {
            backoff = initial;
            jitter(initial)
        } else {
            let pause = jitter(backoff);
            backoff = (backoff * 2).min(max);
            pause
        };
        for u in &uplinks {
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
    let password = node.secrets.uplink_password(&u.name);
    let target = Target {
        url: &url,
        subprotocol: None,
        basic: password.map(|p| (own.as_str(), p)),
        overlay: true,
        tls,
        timeout: Duration::from_secs(node.config.overlay.connect_timeout_s),
        ws_config: crate::handshake::overlay_ws_config(node),
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
    let why = overlay_link::run(node.clone(), spec, ws).await;
    tracing::warn!("uplink down name={} url={url}: {why}", u.name);
    node.set_uplink(&u.name, |s| {
        s.state = "standby";
        s.link = None;
        s.remote_addr = None;
        s.last_error = Some(why);
    });
    true
}

/// A pause between half and all of `d`, so that many edges restarting together do not dial
/// their hub in lockstep.
fn jitter(d: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    let fraction = 0.5 + (r % 1000) as f64 / 2000.0;
    d.mul_f64(fraction)
}
