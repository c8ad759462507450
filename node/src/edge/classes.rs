//! Which charger CALLs the edge journals, answers itself or forwards, and the content keys that
//! recognise a re-send (ARCHITECTURE §6.3). Data tables read by one key builder, so a new action
//! is a row, not a match arm.

use serde_json::Value;
use wire::OcppVersion;

/// What the edge does with a charger's CALL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Journaled before it goes up, online or not.
    Journal,
    /// Journaled (keeping only the latest) while the uplink is down; forwarded otherwise.
    OfflineJournal,
    /// Answered by the edge while the uplink is down; forwarded otherwise.
    OfflineLocal,
    /// Forwarded; refused with a CALLERROR while the uplink is down.
    Forward,
}

/// Which versions a row of the tables below applies to.
#[derive(Debug, Clone, Copy)]
enum Versions {
    V16,
    V2x,
    All,
}

impl Versions {
    fn include(self, v: OcppVersion) -> bool {
        match self {
            Versions::V16 => v.is_v16(),
            Versions::V2x => !v.is_v16(),
            Versions::All => true,
        }
    }
}

/// Every CALL the edge treats specially; any other is [`Class::Forward`].
const CLASSES: &[(&str, Versions, Class)] = &[
    ("StartTransaction", Versions::V16, Class::Journal),
    ("StopTransaction", Versions::V16, Class::Journal),
    (
        "DiagnosticsStatusNotification",
        Versions::V16,
        Class::Journal,
    ),
    (
        "SignedFirmwareStatusNotification",
        Versions::V16,
        Class::Journal,
    ),
    ("TransactionEvent", Versions::V2x, Class::Journal),
    ("MeterValues", Versions::All, Class::Journal),
    ("SecurityEventNotification", Versions::All, Class::Journal),
    ("FirmwareStatusNotification", Versions::All, Class::Journal),
    ("LogStatusNotification", Versions::All, Class::Journal),
    ("BootNotification", Versions::All, Class::OfflineJournal),
    ("StatusNotification", Versions::All, Class::OfflineJournal),
    ("Heartbeat", Versions::All, Class::OfflineLocal),
    ("Authorize", Versions::All, Class::OfflineLocal),
];

pub fn class(version: OcppVersion, action: &str) -> Class {
    CLASSES
        .iter()
        .find(|(a, versions, _)| *a == action && versions.include(version))
        .map_or(Class::Forward, |(_, _, class)| *class)
}

/// A key made of a prefix and the values at some JSON pointers of the payload.
type KeyRule = (
    &'static str,
    Versions,
    &'static str,
    &'static [&'static str],
);

/// The content keys of §6.3: a charger that re-sends after an edge crash uses a new message id,
/// so a re-send is recognised by what it says. (action, versions, prefix, fields)
const CONTENT_KEYS: &[KeyRule] = &[
    (
        "StartTransaction",
        Versions::V16,
        "start",
        &["/connectorId", "/idTag", "/timestamp", "/meterStart"],
    ),
    (
        "StopTransaction",
        Versions::V16,
        "stop",
        &["/transactionId", "/timestamp", "/meterStop"],
    ),
    (
        "MeterValues",
        Versions::V16,
        "mv",
        &["/connectorId", "/transactionId", "/meterValue/0/timestamp"],
    ),
    (
        "MeterValues",
        Versions::V2x,
        "mv",
        &["/evseId", "/transactionId", "/meterValue/0/timestamp"],
    ),
    (
        "TransactionEvent",
        Versions::V2x,
        "tev",
        &["/transactionInfo/transactionId", "/seqNo"],
    ),
    (
        "SecurityEventNotification",
        Versions::All,
        "sec",
        &["/type", "/timestamp"],
    ),
];

/// Messages of which only the latest is worth replaying, per what they are about.
const COALESCE_KEYS: &[KeyRule] = &[
    ("BootNotification", Versions::All, "boot", &[]),
    (
        "StatusNotification",
        Versions::V16,
        "status",
        &["/connectorId"],
    ),
    (
        "StatusNotification",
        Versions::V2x,
        "status",
        &["/evseId", "/connectorId"],
    ),
];

fn key(rules: &[KeyRule], version: OcppVersion, action: &str, p: &Value) -> Option<String> {
    let (_, _, prefix, fields) = rules
        .iter()
        .find(|(a, versions, ..)| *a == action && versions.include(version))?;
    let mut key = (*prefix).to_owned();
    for field in *fields {
        key.push('\0');
        match p.pointer(field) {
            Some(Value::String(s)) => key.push_str(s),
            None | Some(Value::Null) => {}
            Some(other) => key.push_str(&other.to_string()),
        }
    }
    Some(key)
}

/// The content key of a message (§6.3); `None`: the message has no such identity.
pub fn dedup_key(version: OcppVersion, action: &str, p: &Value) -> Option<String> {
    key(CONTENT_KEYS, version, action, p)
}

/// The key under which a newer message replaces a queued one.
pub fn coalesce_key(version: OcppVersion, action: &str, p: &Value) -> Option<String> {
    key(COALESCE_KEYS, version, action, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_contract() {
        use OcppVersion::*;
        assert_eq!(class(V16, "StartTransaction"), Class::Journal);
        assert_eq!(class(V201, "StartTransaction"), Class::Forward);
        assert_eq!(class(V201, "TransactionEvent"), Class::Journal);
        assert_eq!(class(V16, "TransactionEvent"), Class::Forward);
        assert_eq!(class(V21, "SecurityEventNotification"), Class::Journal);
        assert_eq!(class(V16, "BootNotification"), Class::OfflineJournal);
        assert_eq!(class(V16, "Heartbeat"), Class::OfflineLocal);
        assert_eq!(class(V16, "DataTransfer"), Class::Forward);
    }

    #[test]
    fn content_keys_ignore_message_ids_and_separate_content() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        let a = v(r#"{"connectorId":1,"idTag":"T","timestamp":"t0","meterStart":5}"#);
        let b = v(r#"{"meterStart":5,"timestamp":"t0","idTag":"T","connectorId":1}"#);
        let c = v(r#"{"connectorId":1,"idTag":"T","timestamp":"t1","meterStart":5}"#);
        let key = |p| dedup_key(OcppVersion::V16, "StartTransaction", p);
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        let ev = v(r#"{"seqNo":3,"transactionInfo":{"transactionId":"X"}}"#);
        assert_eq!(
            dedup_key(OcppVersion::V201, "TransactionEvent", &ev).as_deref(),
            Some("tev\0X\x003")
        );
        assert_eq!(dedup_key(OcppVersion::V16, "StatusNotification", &a), None);
    }
}
