//! The admin HTTP API: `/api/status`, `/api/transactions`, `/api/audit` and `/metrics`.
//!
//! It listens on loopback by default. It is read-only; nothing here can change the node.

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

pub fn router(node: Arc<Node>) -> axum::Router {
    axum::Router::new()
        .route("/api/status", get(status))
        .route("/api/transactions", get(list_transactions))
        .route("/api/audit", get(audit))
        .route("/metrics", get(metrics))
        .with_state(node)
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
                "connectedSince": s.connected_at.to_rfc3339(),
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
        .into_response()
}
