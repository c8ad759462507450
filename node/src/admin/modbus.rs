//! `POST /api/modbus`: a Modbus read sent from this node through the overlay to the node that
//! owns the device (typically from the hub, next to the CSMS, to a site's edge), so an operator
//! reads a site meter without a VPN. The request becomes a `ModbusTransfer` CALL through the
//! node's own CALL API; the answer is the remote node's, plus the registers decoded.
//!
//! A write is a raw `pdu` (function code 5, 6, 15 or 16) with `signatures`: the signature
//! objects made over the `ModbusTransfer` payload `{"target", "unitId", "pdu"}` (message type
//! 2, action `ModbusTransfer`, destination the owning node's id), e.g. with `ocpp-node sign`.
//! They are passed into the payload as they are; this node neither adds nor checks them, the
//! owning node does.
//!
//! The body must be JSON (`Content-Type: application/json`), which a cross-site form cannot
//! send, so the cookie a browser holds cannot be abused to make reads.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine as _;
use modbus_tunnel::pdu::{ReadKind, ReadRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::core::bus::Event;
use crate::core::node::Node;
use crate::engine::{CallOutcome, NodeCall, Target};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModbusRead {
    /// The node that owns the device.
    pub node: String,
    /// Its `[[meter]]` name.
    pub target: String,
    pub unit_id: u8,
    /// `coils`, `discrete`, `holding` or `input`; or give `pdu` instead.
    pub function: Option<String>,
    pub address: Option<u16>,
    pub count: Option<u16>,
    /// A raw request PDU (base64), sent as it is.
    pub pdu: Option<String>,
    /// Signature objects for the payload, passed through (a write needs one).
    pub signatures: Option<Vec<Value>>,
    pub timeout_ms: Option<u64>,
}

pub async fn read(
    State(node): State<Arc<Node>>,
    Json(r): Json<ModbusRead>,
) -> (StatusCode, Json<Value>) {
    let bad = |m: String| (StatusCode::BAD_REQUEST, Json(json!({ "error": m })));
    let b64 = base64::engine::general_purpose::STANDARD;
    let (pdu, read) = match (&r.pdu, &r.function) {
        (Some(p), None) => (p.clone(), None),
        (None, Some(f)) => {
            let kind = match f.as_str() {
                "coils" => ReadKind::Coils,
                "discrete" => ReadKind::DiscreteInputs,
                "holding" => ReadKind::HoldingRegisters,
                "input" => ReadKind::InputRegisters,
                other => {
                    return bad(format!(
                        "function {other:?}: use coils, discrete, holding or input"
                    ));
                }
            };
            let req = ReadRequest {
                kind,
                address: r.address.unwrap_or(0),
                count: r.count.unwrap_or(1),
            };
            (
                b64.encode(modbus_tunnel::pdu::encode_request(&req)),
                Some(req),
            )
        }
        _ => return bad("give either function (+ address, count) or pdu".into()),
    };
    let timeout = Duration::from_millis(r.timeout_ms.unwrap_or(10_000).clamp(100, 60_000));
    let mut payload = json!({"target": r.target, "unitId": r.unit_id, "pdu": pdu});
    if let Some(signatures) = r.signatures {
        payload["signatures"] = Value::Array(signatures);
    }
    let call = NodeCall {
        target: Target::Id(r.node.clone()),
        on_behalf: None,
        id: None,
        action: "ModbusTransfer".to_owned(),
        payload: payload.to_string(),
        timeout: Some(timeout),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if node
        .events
        .send(Event::Call { call, reply: tx })
        .await
        .is_err()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "the engine is not running"})),
        );
    }
    let outcome = match rx.await {
        Ok(o) => o,
        Err(_) => CallOutcome::LinkLost,
    };
    match outcome {
        CallOutcome::Result(text) => {
            let mut v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if let (Some(req), Some(p)) = (read, v["pdu"].as_str()) {
                if let Ok(bytes) = b64.decode(p) {
                    match modbus_tunnel::pdu::parse_response(&req, &bytes) {
                        Ok(Ok(modbus_tunnel::pdu::ReadData::Words(w))) => v["registers"] = json!(w),
                        Ok(Ok(modbus_tunnel::pdu::ReadData::Bits(b))) => v["bits"] = json!(b),
                        Ok(Err(code)) => v["exceptionCode"] = json!(code),
                        Err(e) => v["decodeError"] = json!(e.to_string()),
                    }
                }
            }
            (StatusCode::OK, Json(v))
        }
        CallOutcome::Error {
            code,
            description,
            from,
            ..
        } => (
            StatusCode::BAD_GATEWAY,
            Json(
                json!({"status": "CallError", "code": code, "description": description, "from": from}),
            ),
        ),
        CallOutcome::NotSent(why) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"status": "NotSent", "reason": why})),
        ),
        CallOutcome::LinkLost => (StatusCode::BAD_GATEWAY, Json(json!({"status": "LinkLost"}))),
        CallOutcome::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(json!({"status": "Timeout", "reason": "the node did not answer in time"})),
        ),
    }
}

/// `GET /api/dlm`: load management's last decisions.
pub async fn dlm(State(node): State<Arc<Node>>) -> (StatusCode, Json<Value>) {
    match node.dlm.get() {
        Some(s) => (StatusCode::OK, Json(s.get())),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "load management is not configured ([dlm])"})),
        ),
    }
}
