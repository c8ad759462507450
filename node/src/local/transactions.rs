//! Transactions and meter values as the local controller records them, in the store.
//!
//! Every write is idempotent under the content keys of ARCHITECTURE §6.3, because a charger that
//! lost its answer re-sends with a new message id: a re-sent StartTransaction gets the same
//! transaction id back, and re-sent meter values or transaction events are counted once.

use redb::{ReadTransaction, ReadableTable as _, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::core::store::StoreError;

/// `<charger>\0<transaction id>` → [`TransactionRecord`] as JSON.
const TRANSACTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("transactions");
/// 1.6 StartTransaction content key → the transaction id handed out for it.
const START_KEYS: TableDefinition<&str, i64> = TableDefinition::new("tx16_start_keys");
/// Meter-values dedup key → the MeterValues payload, byte for byte as the charger sent it: signed
/// meter data (OCMF, signedMeterValue) is only verifiable in its original bytes.
const METER_VALUES: TableDefinition<&str, &str> = TableDefinition::new("meter_values");
/// 2.x `<charger>\0<transactionId>\0<seqNo>` of every TransactionEvent applied.
const TX_EVENTS: TableDefinition<&str, u8> = TableDefinition::new("tx_events");
const COUNTERS: TableDefinition<&str, i64> = TableDefinition::new("counters");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxStatus {
    Active,
    Ended,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionRecord {
    pub charger_id: String,
    pub ocpp_version: String,
    pub transaction_id: String,
    pub id_tag: Option<String>,
    /// 1.6 connector id; for 2.x the EVSE id when the charger gave one.
    pub connector_id: Option<i64>,
    pub meter_start: Option<f64>,
    pub meter_stop: Option<f64>,
    pub start_time: Option<String>,
    pub stop_time: Option<String>,
    pub status: TxStatus,
    pub meter_value_count: u64,
}

impl TransactionRecord {
    fn new(charger: &str, version: &str, transaction_id: String) -> Self {
        TransactionRecord {
            charger_id: charger.to_owned(),
            ocpp_version: version.to_owned(),
            transaction_id,
            id_tag: None,
            connector_id: None,
            meter_start: None,
            meter_stop: None,
            start_time: None,
            stop_time: None,
            status: TxStatus::Active,
            meter_value_count: 0,
        }
    }
}

fn tx_key(charger: &str, transaction_id: &str) -> String {
    format!("{charger}\0{transaction_id}")
}

fn load(wtx: &WriteTransaction, key: &str) -> Result<Option<TransactionRecord>, StoreError> {
    let table = wtx.open_table(TRANSACTIONS)?;
    let found = table.get(key)?;
    found
        .map(|v| serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

fn save(wtx: &WriteTransaction, rec: &TransactionRecord) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(rec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    wtx.open_table(TRANSACTIONS)?.insert(
        tx_key(&rec.charger_id, &rec.transaction_id).as_str(),
        bytes.as_slice(),
    )?;
    Ok(())
}

/// The fields of a 1.6 StartTransaction that identify it across re-sends (§6.3).
pub struct Start16<'a> {
    pub charger: &'a str,
    pub connector_id: i64,
    pub id_tag: &'a str,
    pub timestamp: &'a str,
    pub meter_start: i64,
}

/// Records a 1.6 StartTransaction; returns its transaction id (the same one for a re-send).
pub fn start_16(wtx: &WriteTransaction, s: &Start16<'_>) -> Result<i64, StoreError> {
    let content_key = format!(
        "{}\0{}\0{}\0{}\0{}",
        s.charger, s.connector_id, s.id_tag, s.timestamp, s.meter_start
    );
    let mut keys = wtx.open_table(START_KEYS)?;
    if let Some(id) = keys.get(content_key.as_str())? {
        return Ok(id.value());
    }
    let mut counters = wtx.open_table(COUNTERS)?;
    let id = counters.get("tx16")?.map_or(0, |v| v.value()) + 1;
    counters.insert("tx16", id)?;
    keys.insert(content_key.as_str(), id)?;
    drop((keys, counters));
    let mut rec = TransactionRecord::new(s.charger, "ocpp1.6", id.to_string());
    rec.id_tag = Some(s.id_tag.to_owned());
    rec.connector_id = Some(s.connector_id);
    rec.meter_start = Some(s.meter_start as f64);
    rec.start_time = Some(s.timestamp.to_owned());
    save(wtx, &rec)?;
    Ok(id)
}

/// Records a 1.6 StopTransaction. A stop for a transaction this node never saw start is kept
/// too: the energy is billable either way.
pub fn stop_16(
    wtx: &WriteTransaction,
    charger: &str,
    transaction_id: i64,
    timestamp: &str,
    meter_stop: i64,
    samples: u64,
) -> Result<(), StoreError> {
    let key = tx_key(charger, &transaction_id.to_string());
    let mut rec = load(wtx, &key)?
        .unwrap_or_else(|| TransactionRecord::new(charger, "ocpp1.6", transaction_id.to_string()));
    if rec.status == TxStatus::Ended {
        return Ok(()); // a re-sent stop
    }
    rec.status = TxStatus::Ended;
    rec.stop_time = Some(timestamp.to_owned());
    rec.meter_stop = Some(meter_stop as f64);
    rec.meter_value_count += samples;
    save(wtx, &rec)
}

/// Records a MeterValues message once per (charger, connector, transaction, first timestamp).
pub fn meter_values(
    wtx: &WriteTransaction,
    charger: &str,
    version: &str,
    connector_id: i64,
    transaction_id: Option<&str>,
    payload: &Value,
    raw: &str,
) -> Result<(), StoreError> {
    let samples = payload.get("meterValue").and_then(Value::as_array);
    let first_ts = samples
        .and_then(|s| s.first())
        .and_then(|m| m.get("timestamp"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let key = format!(
        "{charger}\0{connector_id}\0{}\0{first_ts}",
        transaction_id.unwrap_or("-")
    );
    let mut table = wtx.open_table(METER_VALUES)?;
    if table.get(key.as_str())?.is_some() {
        return Ok(());
    }
    table.insert(key.as_str(), raw)?;
    drop(table);
    if let Some(tx) = transaction_id {
        let tkey = tx_key(charger, tx);
        let mut rec = load(wtx, &tkey)?
            .unwrap_or_else(|| TransactionRecord::new(charger, version, tx.to_owned()));
        rec.meter_value_count += samples.map_or(0, |s| s.len() as u64);
        save(wtx, &rec)?;
    }
    Ok(())
}

/// Records a 2.x TransactionEvent once per (transactionId, seqNo).
pub fn transaction_event(
    wtx: &WriteTransaction,
    charger: &str,
    version: &str,
    ev: &Value,
) -> Result<(), StoreError> {
    let info = &ev["transactionInfo"];
    let tx = info["transactionId"].as_str().unwrap_or_default();
    let seq = ev["seqNo"].as_i64().unwrap_or(-1);
    let seen_key = format!("{charger}\0{tx}\0{seq}");
    let mut seen = wtx.open_table(TX_EVENTS)?;
    if seen.get(seen_key.as_str())?.is_some() {
        return Ok(());
    }
    seen.insert(seen_key.as_str(), 1)?;
    drop(seen);

    let key = tx_key(charger, tx);
    let mut rec =
        load(wtx, &key)?.unwrap_or_else(|| TransactionRecord::new(charger, version, tx.to_owned()));
    let timestamp = ev["timestamp"].as_str().map(str::to_owned);
    let samples = ev.get("meterValue").and_then(Value::as_array);
    let energy = samples.and_then(|s| energy_register(s));
    if let Some(id) = ev.pointer("/idToken/idToken").and_then(Value::as_str) {
        rec.id_tag = Some(id.to_owned());
    }
    if let Some(evse) = ev.pointer("/evse/id").and_then(Value::as_i64) {
        rec.connector_id = Some(evse);
    }
    rec.meter_value_count += samples.map_or(0, |s| s.len() as u64);
    match ev["eventType"].as_str() {
        Some("Started") => {
            rec.start_time = rec.start_time.or(timestamp);
            rec.meter_start = rec.meter_start.or(energy);
        }
        Some("Ended") => {
            rec.status = TxStatus::Ended;
            rec.stop_time = timestamp;
            rec.meter_stop = energy.or(rec.meter_stop);
        }
        _ => {}
    }
    save(wtx, &rec)
}

/// The last `Energy.Active.Import.Register` reading among meter values (the default measurand).
fn energy_register(samples: &[Value]) -> Option<f64> {
    samples
        .iter()
        .flat_map(|m| m["sampledValue"].as_array().into_iter().flatten())
        .filter(|s| {
            s.get("measurand")
                .and_then(Value::as_str)
                .is_none_or(|m| m == "Energy.Active.Import.Register")
        })
        .filter_map(|s| {
            s["value"]
                .as_f64()
                .or_else(|| s["value"].as_str().and_then(|v| v.parse().ok()))
        })
        .next_back()
}

/// Every recorded transaction, ordered by charger and id.
pub fn list(rtx: &ReadTransaction) -> Result<Vec<TransactionRecord>, StoreError> {
    let table = match rtx.open_table(TRANSACTIONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (_, v) = row?;
        out.push(
            serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::store::Store;

    #[tokio::test]
    async fn start_is_idempotent_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.redb");
        let store = Store::open(&path).unwrap();
        let start = |ts: &'static str| {
            move |w: &WriteTransaction| {
                start_16(
                    w,
                    &Start16 {
                        charger: "CP1",
                        connector_id: 1,
                        id_tag: "T",
                        timestamp: ts,
                        meter_start: 5,
                    },
                )
            }
        };
        let a = store.write(start("2024-01-01T00:00:00Z")).await.unwrap();
        let again = store.write(start("2024-01-01T00:00:00Z")).await.unwrap();
        let b = store.write(start("2024-01-01T00:01:00Z")).await.unwrap();
        assert_eq!(a, again);
        assert_ne!(a, b);
        store
            .write(move |w| stop_16(w, "CP1", a, "2024-01-01T01:00:00Z", 900, 2))
            .await
            .unwrap();
        store
            .write(move |w| stop_16(w, "CP1", a, "2024-01-01T01:00:00Z", 900, 2))
            .await
            .unwrap();
        store.close();

        let store = Store::open(&path).unwrap();
        let all = store.read(list).await.unwrap();
        assert_eq!(all.len(), 2);
        let ended = all
            .iter()
            .find(|r| r.transaction_id == a.to_string())
            .unwrap();
        assert_eq!(ended.status, TxStatus::Ended);
        assert_eq!(ended.meter_value_count, 2, "a re-sent stop counts once");
        assert_eq!(ended.meter_stop, Some(900.0));
    }

    #[tokio::test]
    async fn transaction_events_apply_once_per_seq_no() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("n.redb")).unwrap();
        let mv = |v: f64| serde_json::json!([{"timestamp": "t", "sampledValue": [{"value": v}]}]);
        let events = [
            serde_json::json!({"eventType": "Started", "seqNo": 0, "timestamp": "t0",
                "transactionInfo": {"transactionId": "X"}, "meterValue": mv(10.0), "idToken": {"idToken": "A"}}),
            serde_json::json!({"eventType": "Updated", "seqNo": 1, "timestamp": "t1",
                "transactionInfo": {"transactionId": "X"}, "meterValue": mv(20.0)}),
            serde_json::json!({"eventType": "Updated", "seqNo": 1, "timestamp": "t1",
                "transactionInfo": {"transactionId": "X"}, "meterValue": mv(20.0)}),
            serde_json::json!({"eventType": "Ended", "seqNo": 2, "timestamp": "t2",
                "transactionInfo": {"transactionId": "X"}, "meterValue": mv(30.0)}),
        ];
        for ev in events {
            store
                .write(move |w| transaction_event(w, "CP2", "ocpp2.0.1", &ev))
                .await
                .unwrap();
        }
        let all = store.read(list).await.unwrap();
        assert_eq!(all.len(), 1);
        let r = &all[0];
        assert_eq!((r.meter_start, r.meter_stop), (Some(10.0), Some(30.0)));
        assert_eq!(r.meter_value_count, 3);
        assert_eq!(r.status, TxStatus::Ended);
        assert_eq!(r.id_tag.as_deref(), Some("A"));
    }

    #[tokio::test]
    async fn meter_values_are_stored_as_received() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("mv.redb")).unwrap();
        // Spacing, number formatting and escapes that a re-serialization would change.
        let raw = r#"{ "connectorId": 1, "meterValue": [ {"timestamp": "t0", "sampledValue": [{"value": "1.50E+2", "format": "SignedData", "x": "\u00e9"}]} ] }"#;
        let parsed: Value = serde_json::from_str(raw).unwrap();
        let text = raw.to_owned();
        store
            .write(move |w| meter_values(w, "CP1", "ocpp1.6", 1, Some("7"), &parsed, &text))
            .await
            .unwrap();
        let kept = store
            .read(|r| {
                let table = r.open_table(METER_VALUES)?;
                let mut rows = Vec::new();
                for row in table.iter()? {
                    rows.push(row?.1.value().to_owned());
                }
                Ok(rows)
            })
            .await
            .unwrap();
        assert_eq!(kept, [raw.to_owned()]);
    }
}
