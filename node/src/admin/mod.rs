//! The admin HTTP API: the status page at `/`, `/api/status`, `/api/transactions`, `/api/events`,
//! `/api/outbox`, `/api/audit`, `/api/dlm`, `POST /api/modbus` and `/metrics`.
//!
//! It listens on loopback by default and needs the admin token on every request ([`auth`]). It
//! is read-only; nothing here can change the node (the Modbus tunnel only reads).

pub mod auth;
pub mod modbus;
pub mod page;

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::core::bus::Event;
use crate::core::node::Node;
use crate::local::transactions;

/// Security events `/api/events` returns, newest last.
const RECENT_EVENTS: usize = 50;

/// Every route behind [`auth::require`]; serve it with `into_make_service_with_connect_info`,
/// which the per-IP failure count needs.
pub fn router(node: Arc<Node>, auth: Arc<auth::AdminAuth>) -> axum::Router {
    let login = axum::Router::new()
        .route("/login", get(auth::login))
        .with_state((node.clone(), auth.clone()));
    axum::Router::new()
        .route("/", get(page::page))
        .route("/api/status", get(status))
        .route("/api/transactions", get(list_transactions))
        .route("/api/events", get(events))
        .route("/api/outbox", get(outbox))
        .route("/api/audit", get(audit))
        .route("/api/dlm", get(modbus::dlm))
        .route("/api/modbus", axum::routing::post(modbus::read))
        .route("/metrics", get(metrics))
        .with_state(node.clone())
        .merge(login)
        .layer(axum::middleware::from_fn_with_state(
            (node, auth),
            auth::require,
        ))
}

/// The status document; `ocpp-node status` renders the same JSON for humans.
pub async fn status_json(node: &Node) -> Value {
    let mut chargers: Vec<Value> = node
        .sessions
        .iter()
        .map(|s| {
            json!({
                "id": s.key(),
                "ocppVersion": s.version.subprotocol(),
                "remoteAddr": s.remote.to_string(),
                "listener": s.listener,
                "securityProfile": s.security_profile,
                "connectedSince": s.connected_at.to_rfc3339(),
                "lastMessageAt": s.last_message.get().map(|t| t.to_rfc3339()),
                "path": [s.key()],
            })
        })
        .collect();
    chargers.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let uplinks = node
        .uplinks
        .lock()
        .map(|u| u.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    // The routing state belongs to the engine; ask its driver rather than share it behind a
    // lock.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let asked = node.events.send(Event::Status(tx)).await.is_ok();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await;
    let routing = match (asked, answer) {
        (true, Ok(Ok(v))) => v,
        _ => json!({"error": "the engine did not answer"}),
    };
    json!({
        "node": {
            "id": node.config.node.id,
            "role": role_name(node.config.node.role),
            "version": env!("CARGO_PKG_VERSION"),
        },
        "uptimeSeconds": node.started.elapsed().as_secs(),
        "listeners": node.listeners.get().cloned().unwrap_or_default(),
        "chargers": chargers,
        "uplinks": uplinks,
        "overlayLinks": routing["overlayLinks"],
        "routes": routing["routes"],
        "csmsConnections": routing["csmsConnections"],
        "outbox": routing["outbox"],
        "signing": routing["signing"],
        "dlm": node.dlm.get().map(|s| s.get()),
    })
}

fn role_name(role: crate::config::Role) -> &'static str {
    use crate::config::Role;
    match role {
        Role::Edge => "edge",
        Role::LocalController => "local-controller",
        Role::Hub => "hub",
    }
}

async fn status(State(node): State<Arc<Node>>) -> Json<Value> {
    Json(status_json(&node).await)
}

async fn list_transactions(State(node): State<Arc<Node>>) -> Response {
    match node.store.read(transactions::list).await {
        Ok(list) => Json(json!({ "transactions": list })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Gauges that are state rather than counts, set from the status when scraped: the uplinks'
/// states live in the dialer and the queue's age in the engine, neither of which should update
/// a metric on every change.
async fn refresh_gauges(node: &Node) {
    let uplinks = node
        .uplinks
        .lock()
        .map(|u| u.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    for u in &uplinks {
        node.metrics
            .uplink_up
            .with_label_values(&[u.name.as_str()])
            .set(i64::from(u.state == "up"));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    if node.events.send(Event::Status(tx)).await.is_ok()
        && let Ok(Ok(routing)) = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await
    {
        let age = routing["outbox"]["oldestAgeS"].as_i64().unwrap_or(0);
        node.metrics.outbox_oldest_age.set(age);
    }
}

/// The newest security events, each the audit record as stored (kind, time, detail, index).
pub async fn recent_events(node: &Node) -> Result<Vec<Value>, String> {
    let raw = node
        .store
        .read(|rtx| crate::audit::recent(rtx, RECENT_EVENTS))
        .await
        .map_err(|e| e.to_string())?;
    Ok(raw
        .iter()
        .filter_map(|bytes| serde_json::from_slice(bytes).ok())
        .collect())
}

async fn events(State(node): State<Arc<Node>>) -> Response {
    match recent_events(&node).await {
        Ok(list) => Json(json!({ "events": list })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

/// Dead letters `/api/outbox` lists, oldest first.
const DEAD_LETTERS_LISTED: usize = 100;

/// The durable queue's state (from the engine) and its dead letters (from the store).
async fn outbox(State(node): State<Arc<Node>>) -> Response {
    let status = status_json(&node).await;
    let dead = node.store.read(crate::edge::journal::dead_letters).await;
    match dead {
        Ok(mut list) => {
            let total = list.len();
            list.truncate(DEAD_LETTERS_LISTED);
            Json(json!({
                "outbox": status["outbox"],
                "deadLetterCount": total,
                "deadLetters": list,
            }))
            .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The security event log's head, signed now with the node's key. Collected elsewhere, it pins
/// every record up to `index`: `ocpp-node audit verify` then catches any later rewrite.
async fn audit(State(node): State<Arc<Node>>) -> Json<Value> {
    let head = node.audit.head();
    let signed = node.audit.signed_head();
    Json(json!({
        "nodeId": node.config.node.id,
        "records": head.records,
        "index": head.last_index(),
        "head": crate::audit::hex(&head.hash),
        "signature": signed.as_ref().map(|s| s.signature.clone()),
        "signedMessage": signed.as_ref().map(|s| crate::audit::head_message(&s.node_id, s.index, &s.head)),
        "publicKey": node.audit.public_hex(),
        "signedAt": signed.as_ref().map(|s| s.signed_at.clone()),
        "dropped": node.metrics.audit_dropped.get(),
    }))
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    refresh_gauges(&node).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
        .into_response()
}
