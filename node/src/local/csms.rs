//! The node acting as a minimal central system for its chargers (a standalone local
//! controller): the local handler for everything addressed to `"CSMS"` when no uplink is
//! configured.
//!
//! Payloads arrive already validated against their OCA schema, so required fields are present
//! and typed; the handler only reads them. Each answer is the smallest valid response of the
//! action's version (`answers`). Transaction-bearing messages are answered only after the store
//! has them on disk.

use std::sync::Arc;

use serde_json::{Value, json};
use wire::{ErrorCode, OcppVersion};

use super::answers::{self, LocalContext};
use super::authorize::Authorizer;
use super::transactions::{self, Start16};
use crate::core::metrics::Metrics;
use crate::core::store::{Store, StoreError};
use crate::engine::handlers::Reply;
use crate::engine::{LocalHandler, LocalReply, LocalRequest};
use crate::validate::schema::{Direction, SchemaRegistry};

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

pub struct LocalCsms {
    store: Store,
    metrics: Arc<Metrics>,
    schemas: Arc<SchemaRegistry>,
    auth: Authorizer,
    heartbeat_interval_s: u64,
}

enum Outcome {
    Reply(Value),
    /// A valid action of this version that a local controller does not serve (→ NotSupported).
    NotHandled,
}

struct Cs<'a> {
    id: &'a str,
    version: OcppVersion,
}

impl LocalCsms {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        schemas: Arc<SchemaRegistry>,
        auth: Authorizer,
        heartbeat_interval_s: u64,
    ) -> Self {
        LocalCsms {
            store,
            metrics,
            schemas,
            auth,
            heartbeat_interval_s,
        }
    }

    fn answer(&self, cs: &Cs<'_>, action: &str, payload: &Value, local_tx: Option<i64>) -> Value {
        let cx = LocalContext {
            now: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            interval_s: self.heartbeat_interval_s,
            boot_status: None,
            local_tx,
            auth: &self.auth,
        };
        answers::local_answer(cs.version, action, payload, &cx)
    }

    async fn handle_request(
        &self,
        cs: &Cs<'_>,
        action: &str,
        req: Value,
        raw: &str,
    ) -> Result<Outcome, StoreError> {
        let notifications = if cs.version.is_v16() {
            NOTIFICATIONS_16
        } else {
            NOTIFICATIONS_2X
        };
        let reply = match action {
            "BootNotification" | "Heartbeat" | "Authorize" => self.answer(cs, action, &req, None),
            "DataTransfer" => json!({"status": "UnknownVendorId"}),
            a if notifications.contains(&a) => json!({}),
            _ if cs.version.is_v16() => return self.handle_16(cs, action, req, raw).await,
            _ => return self.handle_2x(cs, action, req, raw).await,
        };
        Ok(Outcome::Reply(reply))
    }

    async fn handle_16(
        &self,
        cs: &Cs<'_>,
        action: &str,
        req: Value,
        raw: &str,
    ) -> Result<Outcome, StoreError> {
        let reply = match action {
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
                let id = self
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
                self.metrics.transactions_started.inc();
                self.answer(cs, action, &req, Some(id))
            }
            "StopTransaction" => {
                let (charger, timestamp) = (cs.id.to_owned(), str_field(&req, "timestamp"));
                let tx = req["transactionId"].as_i64().unwrap_or(0);
                let meter_stop = req["meterStop"].as_i64().unwrap_or(0);
                let samples = req["transactionData"]
                    .as_array()
                    .map_or(0, |a| a.len() as u64);
                self.store
                    .write(move |w| {
                        transactions::stop_16(w, &charger, tx, &timestamp, meter_stop, samples)
                    })
                    .await?;
                self.metrics.transactions_ended.inc();
                self.answer(cs, action, &req, None)
            }
            "MeterValues" => {
                let tx = req["transactionId"].as_i64().map(|t| t.to_string());
                let connector = req["connectorId"].as_i64().unwrap_or(0);
                self.store_meter_values(cs, connector, tx, req, raw).await?;
                json!({})
            }
            _ => return Ok(Outcome::NotHandled),
        };
        Ok(Outcome::Reply(reply))
    }

    async fn handle_2x(
        &self,
        cs: &Cs<'_>,
        action: &str,
        req: Value,
        raw: &str,
    ) -> Result<Outcome, StoreError> {
        let reply = match action {
            "TransactionEvent" => {
                let reply = self.answer(cs, action, &req, None);
                let counter = match req["eventType"].as_str() {
                    Some("Started") => Some(&self.metrics.transactions_started),
                    Some("Ended") => Some(&self.metrics.transactions_ended),
                    _ => None,
                };
                let (charger, version) = (cs.id.to_owned(), cs.version.subprotocol());
                self.store
                    .write(move |w| transactions::transaction_event(w, &charger, version, &req))
                    .await?;
                if let Some(counter) = counter {
                    counter.inc();
                }
                reply
            }
            "MeterValues" => {
                let evse = req["evseId"].as_i64().unwrap_or(0);
                self.store_meter_values(cs, evse, None, req, raw).await?;
                json!({})
            }
            "NotifyEVChargingNeeds" => json!({"status": "Accepted"}),
            _ => return Ok(Outcome::NotHandled),
        };
        Ok(Outcome::Reply(reply))
    }

    async fn store_meter_values(
        &self,
        cs: &Cs<'_>,
        connector: i64,
        tx: Option<String>,
        payload: Value,
        raw: &str,
    ) -> Result<(), StoreError> {
        let (charger, version, raw) = (cs.id.to_owned(), cs.version.subprotocol(), raw.to_owned());
        self.store
            .write(move |w| {
                let tx = tx.as_deref();
                transactions::meter_values(w, &charger, version, connector, tx, &payload, &raw)
            })
            .await
    }
}

fn str_field(req: &Value, key: &str) -> String {
    req[key].as_str().unwrap_or_default().to_owned()
}

impl LocalHandler for Arc<LocalCsms> {
    fn name(&self) -> &'static str {
        "local-csms"
    }

    fn handle(&self, request: LocalRequest) -> Reply {
        let this = self.clone();
        Box::pin(async move {
            let version = request.version.unwrap_or(OcppVersion::V16);
            let cs = Cs {
                id: &request.from,
                version,
            };
            let action = request.action.as_str();
            let Ok(payload) = serde_json::from_str::<Value>(&request.payload) else {
                return LocalReply::Error {
                    code: ErrorCode::FormatViolation,
                    description: "payload is not JSON".into(),
                };
            };
            match this
                .handle_request(&cs, action, payload, &request.payload)
                .await
            {
                Ok(Outcome::Reply(response)) => {
                    debug_assert_eq!(
                        this.schemas
                            .validate(version, Direction::Response, action, &response),
                        Ok(()),
                        "{action} response must match its schema"
                    );
                    LocalReply::Result(response.to_string())
                }
                Ok(Outcome::NotHandled) => LocalReply::Error {
                    code: ErrorCode::NotSupported,
                    description: format!("{action} is not supported by this node"),
                },
                Err(e) => {
                    tracing::error!(charger = %request.from, action, error = %e, "could not record the message");
                    LocalReply::Error {
                        code: ErrorCode::InternalError,
                        description: "the node could not record this message; retry".into(),
                    }
                }
            }
        })
    }
}
