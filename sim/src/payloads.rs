//! Request payloads a simulated charger sends, and its answers to CSMS-initiated CALLs.
//!
//! Every payload is valid against the OCA JSON schemas of its version (the node validates them
//! where a plain peer's frame enters the overlay, so an invalid one would fail the simulation,
//! not test the node).

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use wire::{ErrorCode, OcppVersion};

/// RFC 3339 UTC with milliseconds, the form both versions' `date-time` fields expect.
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

const VENDOR: &str = "ocpp-overlay";
const MODEL: &str = "ocpp-sim";
const ENERGY: &str = "Energy.Active.Import.Register";

pub mod v16 {
    use super::*;

    pub fn boot_notification(serial: &str) -> Value {
        json!({
            "chargePointVendor": VENDOR,
            "chargePointModel": MODEL,
            "chargePointSerialNumber": truncate(serial, 25),
            "firmwareVersion": env!("CARGO_PKG_VERSION"),
        })
    }

    pub fn status_notification(connector_id: u32, status: &str) -> Value {
        json!({
            "connectorId": connector_id,
            "errorCode": "NoError",
            "status": status,
            "timestamp": now(),
        })
    }

    pub fn authorize(id_tag: &str) -> Value {
        json!({ "idTag": id_tag })
    }

    pub fn start_transaction(connector_id: u32, id_tag: &str, meter_start: i64) -> Value {
        json!({
            "connectorId": connector_id,
            "idTag": id_tag,
            "meterStart": meter_start,
            "timestamp": now(),
        })
    }

    pub fn meter_values(connector_id: u32, transaction_id: i64, wh: i64) -> Value {
        json!({
            "connectorId": connector_id,
            "transactionId": transaction_id,
            "meterValue": [{
                "timestamp": now(),
                "sampledValue": [{
                    // 1.6 carries sampled values as strings.
                    "value": wh.to_string(),
                    "context": "Sample.Periodic",
                    "measurand": ENERGY,
                    "unit": "Wh",
                }],
            }],
        })
    }

    pub fn stop_transaction(transaction_id: i64, id_tag: &str, meter_stop: i64) -> Value {
        json!({
            "transactionId": transaction_id,
            "idTag": id_tag,
            "meterStop": meter_stop,
            "timestamp": now(),
            "reason": "Local",
        })
    }
}

pub mod v201 {
    use super::*;

    pub fn boot_notification(serial: &str) -> Value {
        json!({
            "reason": "PowerUp",
            "chargingStation": {
                "model": MODEL,
                "vendorName": VENDOR,
                "serialNumber": truncate(serial, 25),
                "firmwareVersion": env!("CARGO_PKG_VERSION"),
            },
        })
    }

    pub fn status_notification(evse_id: u32, connector_id: u32, status: &str) -> Value {
        json!({
            "timestamp": now(),
            "connectorStatus": status,
            "evseId": evse_id,
            "connectorId": connector_id,
        })
    }

    pub fn id_token(id_tag: &str) -> Value {
        json!({ "idToken": id_tag, "type": "ISO14443" })
    }

    pub fn authorize(id_tag: &str) -> Value {
        json!({ "idToken": id_token(id_tag) })
    }

    /// One TransactionEvent. `event` is Started, Updated or Ended; the trigger reason, charging
    /// state and stop reason follow from it.
    pub fn transaction_event(
        event: &str,
        transaction_id: &str,
        seq_no: u32,
        id_tag: &str,
        wh: i64,
    ) -> Value {
        let (trigger, context) = match event {
            "Started" => ("Authorized", "Transaction.Begin"),
            "Ended" => ("StopAuthorized", "Transaction.End"),
            _ => ("MeterValuePeriodic", "Sample.Periodic"),
        };
        let mut info = json!({ "transactionId": transaction_id });
        if event == "Ended" {
            info["stoppedReason"] = json!("Local");
            info["chargingState"] = json!("EVConnected");
        } else {
            info["chargingState"] = json!("Charging");
        }
        let mut payload = json!({
            "eventType": event,
            "timestamp": now(),
            "triggerReason": trigger,
            "seqNo": seq_no,
            "transactionInfo": info,
            "evse": { "id": 1, "connectorId": 1 },
            "meterValue": [{
                "timestamp": now(),
                "sampledValue": [{
                    "value": wh,
                    "context": context,
                    "measurand": ENERGY,
                    "unitOfMeasure": { "unit": "Wh" },
                }],
            }],
        });
        if event != "Updated" {
            payload["idToken"] = id_token(id_tag);
        }
        payload
    }
}

/// The simulator's answer to a CSMS-initiated CALL.
pub enum Reply {
    Result(Value),
    Error(ErrorCode, &'static str),
}

/// Answers the CSMS calls a minimal charger understands; everything else is NotImplemented.
/// `request` is whatever the CSMS sent and is read defensively.
pub fn answer(version: OcppVersion, action: &str, request: &Value) -> Reply {
    let accepted = || Reply::Result(json!({ "status": "Accepted" }));
    match (version, action) {
        (
            OcppVersion::V16,
            "Reset"
            | "ChangeConfiguration"
            | "RemoteStartTransaction"
            | "RemoteStopTransaction"
            | "ChangeAvailability"
            | "ClearCache",
        ) => accepted(),
        (OcppVersion::V16, "GetConfiguration") => {
            // No configuration keys are modelled: every requested key is unknown.
            let mut reply = json!({ "configurationKey": [] });
            if let Some(keys) = request.get("key").and_then(Value::as_array) {
                reply["unknownKey"] = Value::Array(keys.clone());
            }
            Reply::Result(reply)
        }
        (OcppVersion::V16, "TriggerMessage") => Reply::Result(json!({ "status": "Rejected" })),
        (OcppVersion::V16, "UnlockConnector") => Reply::Result(json!({ "status": "NotSupported" })),
        (OcppVersion::V16, "GetLocalListVersion") => Reply::Result(json!({ "listVersion": 0 })),
        (_, "DataTransfer") => Reply::Result(json!({ "status": "UnknownVendorId" })),
        (
            OcppVersion::V201 | OcppVersion::V21,
            "Reset"
            | "RequestStartTransaction"
            | "RequestStopTransaction"
            | "ChangeAvailability"
            | "ClearCache",
        ) => accepted(),
        (OcppVersion::V201 | OcppVersion::V21, "TriggerMessage") => {
            Reply::Result(json!({ "status": "Rejected" }))
        }
        (OcppVersion::V201 | OcppVersion::V21, "GetBaseReport") => {
            Reply::Result(json!({ "status": "NotSupported" }))
        }
        (OcppVersion::V201 | OcppVersion::V21, "GetLocalListVersion") => {
            Reply::Result(json!({ "versionNumber": 0 }))
        }
        (OcppVersion::V201 | OcppVersion::V21, "GetVariables") => {
            let results = variable_items(request, "getVariableData")
                .map(|(component, variable)| {
                    json!({
                        "attributeStatus": "UnknownVariable",
                        "component": component,
                        "variable": variable,
                    })
                })
                .collect::<Vec<_>>();
            Reply::Result(json!({ "getVariableResult": results }))
        }
        (OcppVersion::V201 | OcppVersion::V21, "SetVariables") => {
            let results = variable_items(request, "setVariableData")
                .map(|(component, variable)| {
                    json!({
                        "attributeStatus": "Accepted",
                        "component": component,
                        "variable": variable,
                    })
                })
                .collect::<Vec<_>>();
            Reply::Result(json!({ "setVariableResult": results }))
        }
        _ => Reply::Error(
            ErrorCode::NotImplemented,
            "the simulator does not implement this action",
        ),
    }
}

/// The (component, variable) pairs of a Get/SetVariables request, with a named placeholder for
/// any that are missing so the answer stays schema-valid.
fn variable_items<'a>(
    request: &'a Value,
    field: &str,
) -> impl Iterator<Item = (Value, Value)> + 'a {
    let unnamed = || json!({ "name": "Unknown" });
    request
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(move |item| {
            let component = item.get("component").cloned().unwrap_or_else(unnamed);
            let variable = item.get("variable").cloned().unwrap_or_else(unnamed);
            (component, variable)
        })
}

/// `s` cut to at most `max` characters (the schemas bound string lengths in characters).
fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
