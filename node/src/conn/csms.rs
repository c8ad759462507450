//! Hub: one charger's plain OCPP-J socket to the unmodified CSMS (ARCHITECTURE §3.4, §6.2).
//!
//! The engine opens it when the charger becomes reachable and closes it when it goes, so the
//! CSMS sees the charger connect and disconnect as if it were attached directly, with the
//! charger's own subprotocol and, from the secrets file, the charger's credentials. A refusal
//! (HTTP status, or no subprotocol accepted) is final and goes back to the edge; a dropped socket
//! is redialled with backoff, as the charger itself would.

use std::sync::Arc;
use std::time::Duration;

use routing::LinkId;
use wire::OcppVersion;

use super::link::{self, Channels, Ended, Settings};
use crate::core::bus::Event;
use crate::core::node::Node;
use crate::engine::Input;
use crate::net::backoff::Backoff;
use crate::net::dial::{self, DialError, Target};

pub async fn run(
    node: Arc<Node>,
    link: LinkId,
    charger: String,
    version: OcppVersion,
    mut channels: Channels,
) {
    let Some(hub) = node.config.hub.clone() else {
        return;
    };
    let send = |input: Input| node.events.send(Event::Input(input));
    let url = dial::url_for(&hub.csms_url, &charger);
    let password = node.secrets().charger_password(&charger);
    let o = &node.config.overlay;
    let mut backoff = Backoff::new(
        Duration::from_millis(o.reconnect_initial_ms),
        Duration::from_millis(o.reconnect_max_ms),
    );
    let settings = Settings {
        // The CSMS side is a plain peer like a charger: no pings of ours, but a CSMS that
        // stops reading is not waited for forever.
        ping_interval: None,
        silence: Duration::MAX,
        write_timeout: Duration::from_secs(2 * o.ping_interval_s),
        binary: false,
        charger: false,
        name: charger.clone(),
        last_message: None,
    };
    loop {
        let target = Target {
            url: &url,
            subprotocol: Some(version.subprotocol()),
            basic: password.map(|p| (charger.as_str(), p)),
            overlay: false,
            tls: node.files.hub_tls.clone(),
            timeout: Duration::from_secs(o.connect_timeout_s),
            ws_config: crate::net::handshake::csms_ws_config(&node),
        };
        let dialling = dial::dial(&target);
        tokio::pin!(dialling);
        let dialled = tokio::select! {
            r = &mut dialling => r,
            _ = channels.stop.notified() => {
                // The charger left while its socket was being opened. What it sent before it
                // left (a CALL right before hanging up is ordinary) still goes to the CSMS if this
                // dial completes; with nothing queued there is nothing to wait for.
                if channels.control.is_empty() {
                    return;
                }
                match tokio::time::timeout(target.timeout, &mut dialling).await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
        };
        let ws = match dialled {
            Ok((ws, _)) => ws,
            Err(e @ (DialError::Refused { .. } | DialError::NoSubprotocol)) => {
                let http_status = match e {
                    DialError::Refused { status } => Some(status),
                    _ => None,
                };
                // The hub's credentials for this charger refused by the CSMS.
                if let Some(status @ (401 | 403)) = http_status {
                    node.security_event(
                        "csms_auth_failed",
                        format_args!("the CSMS ({url}) refused the credentials for charger {charger:?} with HTTP {status}"),
                    );
                }
                let refused = Input::CsmsRefused {
                    link,
                    http_status,
                    reason: e.to_string(),
                };
                let _ = send(refused).await;
                // Wait to be stopped: the refusal stays on the status page until the charger is
                // gone.
                while let Some(out) = channels.control.recv().await {
                    if matches!(out, crate::core::bus::ToConn::Close(_)) {
                        return;
                    }
                }
                return;
            }
            Err(e) => {
                if let DialError::Certificate(cert) = &e {
                    node.security_event(
                        "csms_certificate_invalid",
                        format_args!("the CSMS ({url}), dialled for charger {charger:?}: {cert}"),
                    );
                }
                tracing::warn!(charger = %charger, url = %url, "CSMS dial failed: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.failed()) => {}
                    _ = channels.stop.notified() => return,
                }
                continue;
            }
        };
        backoff.succeeded();
        tracing::info!(charger = %charger, version = %version, "CSMS socket open");
        if send(Input::CsmsOpen { link }).await.is_err() {
            return;
        }
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
        match ended {
            Ended::Closed(_) => {
                tracing::info!(charger = %charger, "CSMS socket closed: the charger is gone");
                return;
            }
            Ended::Gone(why) | Ended::Refused(why) => {
                tracing::warn!(charger = %charger, "CSMS socket lost: {why}; redialling");
                if send(Input::CsmsClosed { link }).await.is_err() {
                    return;
                }
            }
        }
    }
}
