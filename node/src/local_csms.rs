//! The node acting as a minimal central system for its chargers (standalone local controller).
//!
//! Payloads arrive already validated against their OCA schema, so required fields are present
//! and typed; the handlers only read them. Each answer is the smallest valid response of the
//! action's version. Transaction-bearing messages are answered only after the store has them on
//! disk.

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use wire::OcppVersion;

use crate::config::AuthStatus;
use crate::state::Node;
use crate::store::StoreError;
use crate::transactions::{self, Start16};

/// The charger a message came from, as authenticated at the upgrade.
pub struct Charger<'a> {
    pub id: &'a str,
    pub version: OcppVersion,
}

pub enum Outcome {
    Reply(Value),
    /// A valid action of this version that a local controller does not serve (→ NotSupported).
    NotHandled,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Routine notifications that only need their (empty) confirmation.
const NOTIFICATIONS_16: &[&str] = &[
    "StatusNotification",
    "SecurityEventNotification",
    "FirmwareStatusNotification",
    "DiagnosticsStatusNotification",
    "SignedFirmwareStatusNotification",
    "LogStatusNotification",
];
const NOTIFICATIONS_2X: &[&str] = &[
    "StatusNotification",
    "SecurityEventNotification",
    "FirmwareStatusNotification",
    "LogStatusNotification",
    "NotifyEvent",
    "NotifyReport",
    "NotifyChargingLimit",
    "ReportChargingProfiles",
    "NotifyMonitoringReport",
    "ClearedChargingLimit",
];

/// One validated CALL from a charger.
pub struct Request<'a> {
    pub action: &'a str,
    /// Taken by value: transaction messages move it into the store job instead of copying it.
    pub payload: Value,
    /// The payload exactly as received, kept where bytes matter (signed meter values).
    pub raw: &'a str,
}

/// Answers one validated request.
pub async fn handle(
    node: &Node,
    cs: &Charger<'_>,
    request: Request<'_>,
) -> Result<Outcome, StoreError> {
    let action = request.action;
    let v16 = cs.version == OcppVersion::V16;
    let notifications = if v16 {
        NOTIFICATIONS_16
    } else {
        NOTIFICATIONS_2X
    };
    let reply = match action {
        "BootNotification" => {
            json!({"status": "Accepted", "currentTime": now(), "interval": interval(node)})
        }
        "Heartbeat" => json!({"currentTime": now()}),
        "DataTransfer" => json!({"status": "UnknownVendorId"}),
        a if notifications.contains(&a) => json!({}),
        _ if v16 => return handle_16(node, cs, request).await,
        _ => return handle_2x(node, cs, request).await,
    };
    Ok(Outcome::Reply(reply))
}

fn auth_status(node: &Node, id_tag: &str) -> AuthStatus {
    let auth = &node.config.auth;
    auth.local_list
        .get(id_tag)
        .copied()
        .unwrap_or(auth.unknown_id_tag)
}

fn interval(node: &Node) -> u32 {
    node.config.local_csms.heartbeat_interval_s
}

fn str_field(req: &Value, key: &str) -> String {
    req[key].as_str().unwrap_or_default().to_owned()
}

async fn handle_16(
    node: &Node,
    cs: &Charger<'_>,
    request: Request<'_>,
) -> Result<Outcome, StoreError> {
    let Request {
        action,
        payload: req,
        raw,
    } = request;
    let id_tag_info = |tag: &str| json!({"status": auth_status(node, tag).as_str()});
    let reply = match action {
        "Authorize" => json!({"idTagInfo": id_tag_info(req["idTag"].as_str().unwrap_or_default())}),
        "StartTransaction" => {
            let (charger, id_tag, timestamp) = (
                cs.id.to_owned(),
                str_field(&req, "idTag"),
                str_field(&req, "timestamp"),
            );
            let (connector_id, meter_start) = (
                req["connectorId"].as_i64().unwrap_or(0),
                req["meterStart"].as_i64().unwrap_or(0),
            );
            let info = id_tag_info(&id_tag);
            let id = node
                .store
                .write(move |w| {
                    let start = Start16 {
                        charger: &charger,
                        connector_id,
                        id_tag: &id_tag,
                        timestamp: &timestamp,
                        meter_start,
                    };
                    transactions::start_16(w, &start)
                })
                .await?;
            node.metrics.transactions_started.inc();
            json!({"transactionId": id, "idTagInfo": info})
        }
        "StopTransaction" => {
            let (charger, timestamp) = (cs.id.to_owned(), str_field(&req, "timestamp"));
            let tx = req["transactionId"].as_i64().unwrap_or(0);
            let meter_stop = req["meterStop"].as_i64().unwrap_or(0);
            let samples = req["transactionData"]
                .as_array()
                .map_or(0, |a| a.len() as u64);
            node.store
                .write(move |w| {
                    transactions::stop_16(w, &charger, tx, &timestamp, meter_stop, samples)
                })
                .await?;
            node.metrics.transactions_ended.inc();
            match req["idTag"].as_str() {
                Some(tag) => json!({"idTagInfo": id_tag_info(tag)}),
                None => json!({}),
            }
        }
        "MeterValues" => {
            let tx = req["transactionId"].as_i64().map(|t| t.to_string());
            let connector = req["connectorId"].as_i64().unwrap_or(0);
            store_meter_values(node, cs, connector, tx, req, raw).await?;
            json!({})
        }
        _ => return Ok(Outcome::NotHandled),
    };
    Ok(Outcome::Reply(reply))
}

async fn handle_2x(
    node: &Node,
    cs: &Charger<'_>,
    request: Request<'_>,
) -> Result<Outcome, StoreError> {
    let Request {
        action,
        payload: req,
        raw,
    } = request;
    let token_info = |token: &Value| json!({"status": auth_status(node, token["idToken"].as_str().unwrap_or_default()).as_str()});
    let reply = match action {
        "Authorize" => json!({"idTokenInfo": token_info(&req["idToken"])}),
        "TransactionEvent" => {
            let reply = match req.get("idToken") {
                Some(token) => json!({"idTokenInfo": token_info(token)}),
                None => json!({}),
            };
            let counter = match req["eventType"].as_str() {
                Some("Started") => Some(&node.metrics.transactions_started),
                Some("Ended") => Some(&node.metrics.transactions_ended),
                _ => None,
            };
            let (charger, version) = (cs.id.to_owned(), cs.version.subprotocol());
            node.store
                .write(move |w| transactions::transaction_event(w, &charger, version, &req))
                .await?;
            if let Some(counter) = counter {
                counter.inc();
            }
            reply
        }
        "MeterValues" => {
            let evse = req["evseId"].as_i64().unwrap_or(0);
            store_meter_values(node, cs, evse, None, req, raw).await?;
            json!({})
        }
        "NotifyEVChargingNeeds" => json!({"status": "Accepted"}),
        _ => return Ok(Outcome::NotHandled),
    };
    Ok(Outcome::Reply(reply))
}

async fn store_meter_values(
    node: &Node,
    cs: &Charger<'_>,
    connector: i64,
    tx: Option<String>,
    payload: Value,
    raw: &str,
) -> Result<(), StoreError> {
    let (charger, version, raw) = (cs.id.to_owned(), cs.version.subprotocol(), raw.to_owned());
    node.store
        .write(move |w| {
            let tx = tx.as_deref();
            transactions::meter_values(w, &charger, version, connector, tx, &payload, &raw)
        })
        .await
}
