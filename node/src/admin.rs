//! The admin HTTP API: `/api/status`, `/api/transactions` and `/metrics`.
//!
//! It listens on loopback by default. It is read-only; nothing here can change the node.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::state::Node;
use crate::transactions;

pub fn router(node: Arc<Node>) -> axum::Router {
    axum::Router::new()
        .route("/api/status", get(status))
        .route("/api/transactions", get(list_transactions))
        .route("/metrics", get(metrics))
        .with_state(node)
}

/// The status document; `ocpp-node status` renders the same JSON for humans.
pub fn status_json(node: &Node) -> Value {
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
    json!({
        "node": {
            "id": node.config.node.id,
            "role": role_name(node.config.node.role),
            "version": env!("CARGO_PKG_VERSION"),
        },
        "uptimeSeconds": node.started.elapsed().as_secs(),
        "listeners": node.listeners.get().cloned().unwrap_or_default(),
        "chargers": chargers,
        // A standalone local controller has no uplink and routes nothing beyond its chargers.
        "uplinks": [],
        "routes": [],
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
    Json(status_json(&node))
}

async fn list_transactions(State(node): State<Arc<Node>>) -> Response {
    match node.store.read(transactions::list).await {
        Ok(list) => Json(json!({ "transactions": list })).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics.render(),
    )
        .into_response()
}
