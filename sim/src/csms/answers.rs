//! What the simulated CSMS answers to each charger-initiated action: the smallest response that
//! is valid against the OCA schema of the negotiated version.
//!
//! The action table is also the index of the per-action counters, so counting a CALL is an array
//! increment rather than a map lookup under a lock.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::value::RawValue;
use wire::OcppVersion;

/// Versions an action exists in, charger → CSMS.
const V16: u8 = 1;
const V201: u8 = 2;
const V21: u8 = 4;
const V2X: u8 = V201 | V21;
const ALL: u8 = V16 | V201 | V21;

fn bit(version: OcppVersion) -> u8 {
    match version {
        OcppVersion::V16 => V16,
        OcppVersion::V201 => V201,
        OcppVersion::V21 => V21,
    }
}

/// How an action is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A fixed payload.
    Fixed(&'static str),
    /// Accepted, with the current time and the configured heartbeat interval.
    Boot,
    /// The current time.
    Heartbeat,
    /// idTagInfo (1.6) or idTokenInfo (2.x) Accepted, whatever the tag.
    Authorize,
    /// A fresh, increasing integer transactionId (1.6).
    StartTransaction,
    /// `{}`, or idTokenInfo Accepted when the event carries an idToken (2.x).
    TransactionEvent,
}

pub struct Action {
    pub name: &'static str,
    versions: u8,
    pub kind: Kind,
}

const fn action(name: &'static str, versions: u8, kind: Kind) -> Action {
    Action {
        name,
        versions,
        kind,
    }
}

const EMPTY: Kind = Kind::Fixed("{}");
const ACCEPTED: Kind = Kind::Fixed(r#"{"status":"Accepted"}"#);

/// Every charger-initiated action the simulator answers, sorted by name (binary search).
pub const ACTIONS: &[Action] = &[
    action("Authorize", ALL, Kind::Authorize),
    action("BatterySwap", V21, EMPTY),
    action("BootNotification", ALL, Kind::Boot),
    action("ClearedChargingLimit", V2X, EMPTY),
    action("ClosePeriodicEventStream", V21, EMPTY),
    action("DataTransfer", ALL, ACCEPTED),
    action("DiagnosticsStatusNotification", V16, EMPTY),
    action("FirmwareStatusNotification", ALL, EMPTY),
    // No certificate service: say so, in the form each schema requires.
    action(
        "Get15118EVCertificate",
        V2X,
        Kind::Fixed(r#"{"status":"Failed","exiResponse":""}"#),
    ),
    action(
        "GetCertificateStatus",
        V2X,
        Kind::Fixed(r#"{"status":"Failed"}"#),
    ),
    action("Heartbeat", ALL, Kind::Heartbeat),
    action("LogStatusNotification", ALL, EMPTY),
    action("MeterValues", ALL, EMPTY),
    action("NotifyChargingLimit", V2X, EMPTY),
    action("NotifyCustomerInformation", V2X, EMPTY),
    action("NotifyDERAlarm", V21, EMPTY),
    action("NotifyDERStartStop", V21, EMPTY),
    action("NotifyDisplayMessages", V2X, EMPTY),
    action("NotifyEVChargingNeeds", V2X, ACCEPTED),
    action("NotifyEVChargingSchedule", V2X, ACCEPTED),
    action("NotifyEvent", V2X, EMPTY),
    action("NotifyMonitoringReport", V2X, EMPTY),
    action("NotifyPriorityCharging", V21, EMPTY),
    action("NotifyReport", V2X, EMPTY),
    action("NotifySettlement", V21, EMPTY),
    action("OpenPeriodicEventStream", V21, ACCEPTED),
    action("PublishFirmwareStatusNotification", V2X, EMPTY),
    action("PullDynamicScheduleUpdate", V21, ACCEPTED),
    action("ReportChargingProfiles", V2X, EMPTY),
    action("ReportDERControl", V21, EMPTY),
    action("ReservationStatusUpdate", V2X, EMPTY),
    action("SecurityEventNotification", ALL, EMPTY),
    action("SignCertificate", ALL, ACCEPTED),
    action("SignedFirmwareStatusNotification", V16, EMPTY),
    action("StartTransaction", V16, Kind::StartTransaction),
    action("StatusNotification", ALL, EMPTY),
    action("StopTransaction", V16, EMPTY),
    action("TransactionEvent", V2X, Kind::TransactionEvent),
];

/// The number of counted actions (the length of a per-action counter array).
pub const COUNT: usize = ACTIONS.len();

/// The index of `action` in [`ACTIONS`] if the simulator answers it in `version`.
pub fn lookup(version: OcppVersion, action: &str) -> Option<usize> {
    let index = ACTIONS.binary_search_by(|a| a.name.cmp(action)).ok()?;
    (ACTIONS[index].versions & bit(version) != 0).then_some(index)
}

/// An answer payload: most are shared constants, the rest are built per call.
pub enum Payload {
    Static(&'static RawValue),
    Owned(Box<RawValue>),
}

impl Payload {
    pub fn raw(&self) -> &RawValue {
        match self {
            Payload::Static(raw) => raw,
            Payload::Owned(raw) => raw,
        }
    }
}

/// Parses each fixed payload once; they are compile-time literals, so parsing cannot fail.
static FIXED: LazyLock<HashMap<&'static str, &'static RawValue>> = LazyLock::new(|| {
    let mut map = HashMap::new();
    let literals = ACTIONS
        .iter()
        .filter_map(|a| match a.kind {
            Kind::Fixed(text) => Some(text),
            _ => None,
        })
        .chain([
            r#"{"idTagInfo":{"status":"Accepted"}}"#,
            r#"{"idTokenInfo":{"status":"Accepted"}}"#,
        ]);
    for text in literals {
        match serde_json::from_str::<&'static RawValue>(text) {
            Ok(raw) => {
                map.insert(text, raw);
            }
            Err(e) => unreachable!("fixed answer {text} is not JSON: {e}"),
        }
    }
    map
});

fn fixed(text: &'static str) -> Payload {
    match FIXED.get(text) {
        Some(raw) => Payload::Static(raw),
        None => unreachable!("{text} is not registered as a fixed answer"),
    }
}

/// Builds a payload from JSON text the simulator formatted itself.
fn owned(text: String) -> Payload {
    match RawValue::from_string(text) {
        Ok(raw) => Payload::Owned(raw),
        Err(e) => unreachable!("the simulator built invalid JSON: {e}"),
    }
}

/// 1.6 transaction ids, shared by all connections so that every transaction gets its own.
static NEXT_TRANSACTION_ID: AtomicI64 = AtomicI64::new(1);

/// The answer to a CALL of action `ACTIONS[index]`. `request` is the raw payload as received;
/// only a TransactionEvent's is looked at.
pub fn answer(
    index: usize,
    version: OcppVersion,
    request: &str,
    heartbeat_interval: u32,
) -> Payload {
    match ACTIONS[index].kind {
        Kind::Fixed(text) => fixed(text),
        Kind::Boot => owned(format!(
            r#"{{"status":"Accepted","currentTime":"{}","interval":{heartbeat_interval}}}"#,
            crate::payloads::now()
        )),
        Kind::Heartbeat => owned(format!(r#"{{"currentTime":"{}"}}"#, crate::payloads::now())),
        Kind::Authorize if version.is_v16() => fixed(r#"{"idTagInfo":{"status":"Accepted"}}"#),
        Kind::Authorize => fixed(r#"{"idTokenInfo":{"status":"Accepted"}}"#),
        Kind::StartTransaction => owned(format!(
            r#"{{"transactionId":{},"idTagInfo":{{"status":"Accepted"}}}}"#,
            NEXT_TRANSACTION_ID.fetch_add(1, Ordering::Relaxed)
        )),
        Kind::TransactionEvent if has_id_token(request) => {
            fixed(r#"{"idTokenInfo":{"status":"Accepted"}}"#)
        }
        Kind::TransactionEvent => fixed("{}"),
    }
}

/// Whether a TransactionEvent payload has a top-level `idToken`. Only the top-level keys are
/// materialised; nested values stay raw slices, so this costs one scan of the payload.
fn has_id_token(request: &str) -> bool {
    serde_json::from_str::<HashMap<String, &RawValue>>(request)
        .map(|map| map.contains_key("idToken"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn table_is_sorted() {
        for pair in ACTIONS.windows(2) {
            assert!(pair[0].name < pair[1].name, "{} out of order", pair[1].name);
        }
    }

    #[test]
    fn lookup_respects_versions() {
        assert!(lookup(OcppVersion::V16, "StartTransaction").is_some());
        assert!(lookup(OcppVersion::V201, "StartTransaction").is_none());
        assert!(lookup(OcppVersion::V16, "TransactionEvent").is_none());
        assert!(lookup(OcppVersion::V201, "TransactionEvent").is_some());
        assert!(lookup(OcppVersion::V201, "BatterySwap").is_none());
        assert!(lookup(OcppVersion::V21, "BatterySwap").is_some());
        assert!(lookup(OcppVersion::V21, "Bogus").is_none());
    }

    fn answer_json(version: OcppVersion, action: &str, request: &Value) -> Value {
        let index = lookup(version, action).unwrap();
        let payload = answer(index, version, &request.to_string(), 60);
        serde_json::from_str(payload.raw().get()).unwrap()
    }

    #[test]
    fn transaction_ids_increase() {
        let a = answer_json(OcppVersion::V16, "StartTransaction", &json!({}));
        let b = answer_json(OcppVersion::V16, "StartTransaction", &json!({}));
        assert!(b["transactionId"].as_i64() > a["transactionId"].as_i64());
    }

    #[test]
    fn transaction_event_answers_id_tokens_only() {
        let with = json!({"eventType": "Started", "idToken": {"idToken": "T", "type": "ISO14443"}});
        let without = json!({"eventType": "Updated", "transactionInfo": {"idToken": "nested"}});
        let v = OcppVersion::V201;
        assert_eq!(
            answer_json(v, "TransactionEvent", &with)["idTokenInfo"]["status"],
            "Accepted"
        );
        assert_eq!(answer_json(v, "TransactionEvent", &without), json!({}));
    }

    /// Every answer validates against the vendored OCA response schema of its version, and every
    /// action the table claims for a version has a request schema there.
    #[test]
    fn answers_match_the_oca_schemas() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/schemas");
        let request = json!({"idToken": {"idToken": "T", "type": "ISO14443"}});
        let mut checked = 0;
        for version in OcppVersion::ALL {
            let (dir, request_suffix, draft) = match version {
                OcppVersion::V16 => ("v16", "", jsonschema::Draft::Draft4),
                OcppVersion::V201 => ("v201", "Request", jsonschema::Draft::Draft6),
                OcppVersion::V21 => ("v21", "Request", jsonschema::Draft::Draft6),
            };
            for action in ACTIONS.iter().filter(|a| a.versions & bit(version) != 0) {
                let name = action.name;
                let request_schema = root.join(dir).join(format!("{name}{request_suffix}.json"));
                assert!(
                    request_schema.exists(),
                    "{version} has no {name} request schema"
                );
                let schema_path = root.join(dir).join(format!("{name}Response.json"));
                let schema: Value =
                    serde_json::from_str(&std::fs::read_to_string(&schema_path).unwrap()).unwrap();
                let validator = jsonschema::options()
                    .with_draft(draft)
                    .build(&schema)
                    .unwrap();
                let answer = answer_json(version, name, &request);
                let errors: Vec<String> = validator
                    .iter_errors(&answer)
                    .map(|e| e.to_string())
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{version} {name} answer {answer} is invalid: {errors:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 60, "only {checked} answers checked");
    }
}
