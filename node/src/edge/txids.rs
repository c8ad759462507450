//! The 1.6 transaction ids the edge hands out while offline, and their CSMS ids (ARCHITECTURE
//! §6.3): local ids are negative, so they never collide with the CSMS's; once the CSMS has
//! answered the replayed StartTransaction, later messages up and CSMS CALLs down are rewritten.
//! This is the one named exception to "payloads pass through untouched".

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

/// 1.6: the top-level `transactionId` of messages that carry one toward the CSMS.
fn up_pointer(action: &str) -> Option<&'static str> {
    match action {
        "StopTransaction" | "MeterValues" => Some("/transactionId"),
        _ => None,
    }
}

/// 1.6: where a CSMS → charger CALL names a transaction.
fn down_pointer(action: &str) -> Option<&'static str> {
    match action {
        "RemoteStopTransaction" => Some("/transactionId"),
        "SetChargingProfile" => Some("/csChargingProfiles/transactionId"),
        _ => None,
    }
}

/// A charger's message toward the CSMS after the 1.6 id rewrite.
#[derive(Debug, PartialEq, Eq)]
pub enum UpRewrite {
    /// No local id in it: sent as received.
    Unchanged,
    /// The local id replaced by the CSMS's.
    Rewritten(String),
    /// A local id the CSMS never gave an id for (its Start was not delivered).
    Unmapped(i64),
}

/// The transaction id at `pointer`, and a setter that re-serializes the payload with another.
/// Re-serializing is the one exception to "payloads pass through" (§6.3), and happens only when
/// an id really maps.
fn id_at(payload: &str, pointer: &str) -> Option<(Value, i64)> {
    let value: Value = serde_json::from_str(payload).ok()?;
    let id = value.pointer(pointer)?.as_i64()?;
    Some((value, id))
}

fn with_id(mut value: Value, pointer: &str, id: i64) -> String {
    if let Some(slot) = value.pointer_mut(pointer) {
        *slot = Value::from(id);
    }
    value.to_string()
}

/// Most local ↔ CSMS pairs kept per charger: one per transaction the charger may still name,
/// and a charger has only a few open at once.
const IDS_PER_CHARGER: usize = 64;

/// The local ↔ CSMS 1.6 transaction ids of the transactions a charger was answered locally.
#[derive(Debug, Default)]
pub struct TxIds(HashMap<String, VecDeque<(i64, i64)>>);

impl TxIds {
    /// Records a pair; the oldest of the charger's pairs goes beyond [`IDS_PER_CHARGER`].
    pub fn insert(&mut self, charger: &str, local: i64, csms: i64) {
        let pairs = self.0.entry(charger.to_owned()).or_default();
        pairs.retain(|&(l, _)| l != local);
        if pairs.len() >= IDS_PER_CHARGER {
            pairs.pop_front();
        }
        pairs.push_back((local, csms));
    }

    fn csms_of(&self, charger: &str, local: i64) -> Option<i64> {
        let pairs = self.0.get(charger)?;
        pairs.iter().find(|&&(l, _)| l == local).map(|&(_, c)| c)
    }

    /// A charger's message toward the CSMS, with its local transaction id replaced.
    pub fn rewrite_up(&self, charger: &str, action: &str, payload: &str) -> UpRewrite {
        let Some(pointer) = up_pointer(action) else {
            return UpRewrite::Unchanged;
        };
        match id_at(payload, pointer) {
            Some((value, local)) if local < 0 => match self.csms_of(charger, local) {
                Some(csms) => UpRewrite::Rewritten(with_id(value, pointer, csms)),
                None => UpRewrite::Unmapped(local),
            },
            _ => UpRewrite::Unchanged,
        }
    }

    /// A CSMS CALL toward a charger that knows the transaction under its local id.
    pub fn rewrite_down(&self, charger: &str, action: &str, payload: &str) -> Option<String> {
        let pairs = self.0.get(charger)?;
        let pointer = down_pointer(action)?;
        let (value, csms) = id_at(payload, pointer)?;
        let &(local, _) = pairs.iter().find(|&&(_, c)| c == csms)?;
        Some(with_id(value, pointer, local))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ids_are_rewritten_both_ways_only_where_mapped() {
        let mut ids = TxIds::default();
        ids.insert("CP", -3, 1234);
        let stop = r#"{"transactionId":-3,"meterStop":9,"timestamp":"t"}"#;
        let UpRewrite::Rewritten(up) = ids.rewrite_up("CP", "StopTransaction", stop) else {
            panic!("not rewritten")
        };
        assert_eq!(
            serde_json::from_str::<Value>(&up).unwrap()["transactionId"],
            1234
        );
        assert_eq!(
            ids.rewrite_up("CP", "StopTransaction", r#"{"transactionId":-9}"#),
            UpRewrite::Unmapped(-9)
        );
        assert_eq!(
            ids.rewrite_up("CP", "StopTransaction", r#"{"transactionId":1234}"#),
            UpRewrite::Unchanged
        );
        assert_eq!(
            ids.rewrite_up("OTHER", "StopTransaction", stop),
            UpRewrite::Unmapped(-3)
        );
        for local in 0..IDS_PER_CHARGER as i64 {
            ids.insert("CP", -100 - local, 5000 + local);
        }
        assert_eq!(ids.0["CP"].len(), IDS_PER_CHARGER, "bounded per charger");
        assert_eq!(
            ids.rewrite_up("CP", "StopTransaction", stop),
            UpRewrite::Unmapped(-3),
            "the oldest pair went"
        );
        ids.insert("CP", -3, 1234);
        let down = ids
            .rewrite_down(
                "CP",
                "SetChargingProfile",
                r#"{"connectorId":1,"csChargingProfiles":{"transactionId":1234}}"#,
            )
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&down).unwrap()["csChargingProfiles"]["transactionId"],
            -3
        );
        assert_eq!(ids.rewrite_down("CP", "Reset", r#"{"type":"Hard"}"#), None);
    }
}
