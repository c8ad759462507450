//! Hub: one charger's plain OCPP-J socket to the unmodified CSMS (ARCHITECTURE §3.4, §6.2).
//!
//! It is opened when the charger becomes reachable and closed when it goes, so the CSMS sees the
//! charger connect and disconnect as if it were attached directly, with the charger's own
//! subprotocol and, from the secrets file, the charger's credentials. A refusal (HTTP status, or
//! no subprotocol accepted) is final and goes back to the edge; a dropped socket is redialled with
//! backoff, as the charger itself would.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use routing::LinkId;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use wire::OcppVersion;

use crate::dial::{self, DialError, Target};
use crate::router::{Event, ToPeer};
use crate::state::Node;

pub async fn run(
    node: Arc<Node>,
    link: LinkId,
    charger: String,
    version: OcppVersion,
    mut rx: mpsc::Receiver<ToPeer>,
    mut stop: oneshot::Receiver<()>,
) {
    let Some(router) = node.router.clone() else {
        return;
    };
    let Some(hub) = node.config.hub.clone() else {
        return;
    };
    let tls = if hub.csms_url.starts_with("wss://") {
        match crate::tls::client_config(
            hub.tls_ca_file.as_deref(),
            hub.tls_cert_file.as_deref(),
            hub.tls_key_file.as_deref(),
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "CSMS TLS setup failed");
                return;
            }
        }
    } else {
        None
    };
    let url = dial::url_for(&hub.csms_url, &charger);
    let password = node.secrets.charger_password(&charger);
    let o = &node.config.overlay;
    let (initial, max) = (
        Duration::from_millis(o.reconnect_initial_ms),
        Duration::from_millis(o.reconnect_max_ms),
    );
    let mut backoff = initial;
    loop {
        let target = Target {
            url: &url,
            subprotocol: Some(version.subprotocol()),
            basic: password.map(|p| (charger.as_str(), p)),
            overlay: false,
            tls: tls.clone(),
            timeout: Duration::from_secs(o.connect_timeout_s),
            ws_config: crate::handshake::csms_ws_config(&node),
        };
        let dialling = dial::dial(&target);
        tokio::pin!(dialling);
        let mut stopped = false;
        let dialled = tokio::select! {
            r = &mut dialling => r,
            _ = &mut stop => {
                // The charger left while its socket was being opened. What it sent before it
                // left (a CALL right before hanging up is ordinary) still goes to the CSMS if this
                // dial completes; with nothing queued there is nothing to wait for.
                if rx.is_empty() {
                    return;
                }
                stopped = true;
                match tokio::time::timeout(target.timeout, &mut dialling).await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
        };
        let mut ws = match dialled {
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
                let event = Event::CsmsRefused {
                    link,
                    http_status,
                    reason: e.to_string(),
                };
                let _ = router.send(event).await;
                // Wait to be stopped: the router keeps the refusal on the status page until
                // the charger is gone.
                let _ = stop.await;
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
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => return,
                }
                backoff = (backoff * 2).min(max);
                continue;
            }
        };
        backoff = initial;
        tracing::info!(charger = %charger, version = %version, "CSMS socket open");
        if stopped {
            flush_and_close(&mut ws, &mut rx).await;
            tracing::info!(charger = %charger, "CSMS socket closed: the charger is gone");
            return;
        }
        if router.send(Event::CsmsOpen { link }).await.is_err() {
            return;
        }
        let why = loop {
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        let event = Event::FromCsms { link, text };
                        if router.send(event).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break "closed by the CSMS".to_owned(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("connection error: {e}"),
                },
                out = rx.recv() => match out {
                    Some(ToPeer::Text(text)) => {
                        if let Err(e) = ws.send(Message::text(text)).await {
                            break format!("write failed: {e}");
                        }
                    }
                    Some(ToPeer::Close(_)) | None => {
                        let _ = ws.close(None).await;
                        return;
                    }
                },
                _ = &mut stop => {
                    flush_and_close(&mut ws, &mut rx).await;
                    tracing::info!(charger = %charger, "CSMS socket closed: the charger is gone");
                    return;
                }
            }
        };
        tracing::warn!(charger = %charger, "CSMS socket lost: {why}; redialling");
        if router.send(Event::CsmsClosed { link }).await.is_err() {
            return;
        }
    }
}

/// What the charger sent before it left still goes to the CSMS: a StopTransaction followed by a
/// disconnect is ordinary, and must not be lost. Bounded in time, then the socket is closed.
async fn flush_and_close<S>(ws: &mut WebSocketStream<S>, rx: &mut mpsc::Receiver<ToPeer>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let flush = async {
        while let Ok(ToPeer::Text(text)) = rx.try_recv() {
            ws.feed(Message::text(text)).await?;
        }
        ws.flush().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}
