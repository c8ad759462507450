//! The durable outbound queue in the store (ARCHITECTURE §6.3): what an edge has promised to
//! deliver to the CSMS, the content keys that recognise a charger's re-send, the local → CSMS
//! 1.6 transaction id mapping, the CSMS's last boot status per charger, and the dead letters.
//!
//! Every function here runs inside one store write or read transaction; the caller decides
//! which of them commit together (a settle removes the message, remembers the answer and
//! records the id mapping atomically, so a crash can never keep one without the others).

use redb::{
    ReadTransaction, ReadableTable as _, ReadableTableMetadata as _, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::core::store::StoreError;

/// `<charger>\0<priority digit><seq, 20 digits>` → [`Entry`] as JSON: a prefix scan per charger
/// yields its messages in send order, a queued boot first.
const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");
/// `<charger>\0<content key>` → [`Seen`] as JSON.
const DEDUP: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox_dedup");
/// `<charger>\0<coalesce key>` → the outbox key of the one queued message it names.
const COALESCE: TableDefinition<&str, &str> = TableDefinition::new("outbox_coalesce");
/// `<charger>\0<local 1.6 transaction id>` → [`Mapping`] as JSON.
const TX_MAP: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox_tx_map");
/// charger → the status of the CSMS's last BootNotification answer.
const BOOT: TableDefinition<&str, &str> = TableDefinition::new("outbox_boot_status");
/// `<charger>\0<seq>` → [`DeadLetter`] as JSON.
const DEAD: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox_dead_letters");
const COUNTERS: TableDefinition<&str, i64> = TableDefinition::new("outbox_counters");

/// A message as the session hands it to the queue, exactly as it will be sent (apart from the
/// 1.6 id rewrite).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub charger: String,
    /// The subprotocol the charger spoke when it sent the message.
    pub version: String,
    pub action: String,
    /// The id the CSMS sees, fixed at journal time so that a replay after a crash carries the
    /// same id and the hub's response cache recognises it.
    pub upstream_id: String,
    /// The payload as the charger sent it.
    pub payload: String,
    /// The content key (§6.3) that recognises a re-send under a new message id.
    pub dedup: Option<String>,
    /// Messages where only the latest matters (an offline boot, a connector's status): a newer
    /// one replaces the queued one.
    pub coalesce: Option<String>,
    /// 0 for a BootNotification (replayed first), 1 otherwise.
    pub priority: u8,
}

/// One queued message: the message and what the queue gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub seq: u64,
    /// 1.6 StartTransaction: the negative id answered if the charger is answered locally.
    pub local_tx: Option<i64>,
    #[serde(flatten)]
    pub message: Message,
}

impl std::ops::Deref for Entry {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

impl Entry {
    fn key(&self) -> String {
        format!("{}\0{}{:020}", self.charger, self.priority, self.seq)
    }
}

/// What the content key of a message was last seen as.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Seen {
    Queued {
        seq: u64,
    },
    /// Delivered: the CSMS's answer payload, and when (unix seconds), for pruning.
    Done {
        response: String,
        at: i64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Mapping {
    csms: i64,
    at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub entry: Entry,
    pub error: String,
    pub at: i64,
}

/// A message to journal, before it has a sequence number.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub message: Message,
    /// Give the message a local 1.6 transaction id.
    pub wants_local_tx: bool,
}

/// The outcome of [`append`].
#[derive(Debug, Clone)]
pub enum Appended {
    /// Journaled now; `replaced` is the queued message it coalesced away.
    New { entry: Entry, replaced: Option<u64> },
    /// A re-send of a message still queued.
    Queued(Entry),
    /// A re-send of a message already delivered: the CSMS's answer.
    Done(String),
    /// The queue is at its size limit.
    Full,
}

fn charger_prefix(charger: &str) -> (String, String) {
    (format!("{charger}\0"), format!("{charger}\u{1}"))
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn counter(wtx: &WriteTransaction, name: &str) -> Result<i64, StoreError> {
    Ok(wtx
        .open_table(COUNTERS)?
        .get(name)?
        .map_or(0, |v| v.value()))
}

/// Journals one message unless its content key is already known, and unless the queue holds
/// `max` messages.
pub fn append(wtx: &WriteTransaction, m: NewMessage, max: u64) -> Result<Appended, StoreError> {
    let dedup_key = m
        .message
        .dedup
        .as_ref()
        .map(|k| format!("{}\0{k}", m.message.charger));
    if let Some(key) = &dedup_key {
        let dedup = wtx.open_table(DEDUP)?;
        let seen = dedup.get(key.as_str())?.map(|v| v.value().to_vec());
        drop(dedup);
        if let Some(bytes) = seen {
            match from_json::<Seen>(&bytes)? {
                Seen::Done { response, .. } => return Ok(Appended::Done(response)),
                Seen::Queued { seq } => {
                    if let Some(entry) = find(wtx, &m.message.charger, seq)? {
                        return Ok(Appended::Queued(entry));
                    }
                    // The queued message was settled by a path that kept no answer (a CALLERROR
                    // relayed to the charger): journal the re-send as new.
                }
            }
        }
    }
    let queued = wtx.open_table(OUTBOX)?.len()?;
    if queued >= max {
        return Ok(Appended::Full);
    }
    let seq = (counter(wtx, "seq")? + 1) as u64;
    let mut counters = wtx.open_table(COUNTERS)?;
    counters.insert("seq", seq as i64)?;
    let local_tx = if m.wants_local_tx {
        let id = counters.get("local_tx")?.map_or(0, |v| v.value()) - 1;
        counters.insert("local_tx", id)?;
        Some(id)
    } else {
        None
    };
    drop(counters);
    let entry = Entry {
        seq,
        local_tx,
        message: m.message,
    };
    let mut replaced = None;
    if let Some(c) = &entry.coalesce {
        let ckey = format!("{}\0{c}", entry.charger);
        let mut coalesce = wtx.open_table(COALESCE)?;
        let old = coalesce.get(ckey.as_str())?.map(|v| v.value().to_owned());
        coalesce.insert(ckey.as_str(), entry.key().as_str())?;
        drop(coalesce);
        if let Some(old) = old {
            let mut outbox = wtx.open_table(OUTBOX)?;
            let removed = outbox.remove(old.as_str())?.map(|v| v.value().to_vec());
            if let Some(bytes) = removed {
                replaced = Some(from_json::<Entry>(&bytes)?.seq);
            }
        }
    }
    wtx.open_table(OUTBOX)?
        .insert(entry.key().as_str(), to_json(&entry)?.as_slice())?;
    if let Some(key) = &dedup_key {
        wtx.open_table(DEDUP)?
            .insert(key.as_str(), to_json(&Seen::Queued { seq })?.as_slice())?;
    }
    Ok(Appended::New { entry, replaced })
}

fn find(wtx: &WriteTransaction, charger: &str, seq: u64) -> Result<Option<Entry>, StoreError> {
    let outbox = wtx.open_table(OUTBOX)?;
    for priority in [0u8, 1] {
        let key = format!("{charger}\0{priority}{seq:020}");
        if let Some(v) = outbox.get(key.as_str())? {
            return Ok(Some(from_json(v.value())?));
        }
    }
    Ok(None)
}

/// How a queued message left the queue.
pub enum Settle<'a> {
    /// The CSMS answered with this CALLRESULT payload; a re-send gets it from now on.
    Answered {
        response: &'a str,
        csms_tx: Option<i64>,
    },
    /// The CSMS's CALLERROR was relayed to the charger, which keeps the message and retries:
    /// forget it, so that the re-send is journaled anew.
    Refused,
    /// Given up after the configured attempts: kept as a dead letter.
    Dead { error: &'a str },
}

/// Removes a message from the queue, and records what its settling means.
pub fn settle(
    wtx: &WriteTransaction,
    entry: &Entry,
    how: Settle<'_>,
    now: i64,
) -> Result<(), StoreError> {
    let removed = wtx
        .open_table(OUTBOX)?
        .remove(entry.key().as_str())?
        .is_some();
    if let Some(c) = &entry.coalesce {
        let ckey = format!("{}\0{c}", entry.charger);
        let mut coalesce = wtx.open_table(COALESCE)?;
        let names_this = coalesce
            .get(ckey.as_str())?
            .is_some_and(|v| v.value() == entry.key());
        if names_this {
            coalesce.remove(ckey.as_str())?;
        }
    }
    let dedup_key = entry
        .dedup
        .as_ref()
        .map(|k| format!("{}\0{k}", entry.charger));
    match how {
        Settle::Answered { response, csms_tx } => {
            if let Some(key) = &dedup_key {
                let seen = Seen::Done {
                    response: response.to_owned(),
                    at: now,
                };
                wtx.open_table(DEDUP)?
                    .insert(key.as_str(), to_json(&seen)?.as_slice())?;
            }
            if let (Some(local), Some(csms)) = (entry.local_tx, csms_tx) {
                let key = format!("{}\0{local}", entry.charger);
                wtx.open_table(TX_MAP)?.insert(
                    key.as_str(),
                    to_json(&Mapping { csms, at: now })?.as_slice(),
                )?;
            }
        }
        Settle::Refused => {
            if let Some(key) = &dedup_key {
                wtx.open_table(DEDUP)?.remove(key.as_str())?;
            }
        }
        Settle::Dead { error } => {
            if removed {
                let dead = DeadLetter {
                    entry: entry.clone(),
                    error: error.to_owned(),
                    at: now,
                };
                let key = format!("{}\0{:020}", entry.charger, entry.seq);
                wtx.open_table(DEAD)?
                    .insert(key.as_str(), to_json(&dead)?.as_slice())?;
            }
            if let Some(key) = &dedup_key {
                wtx.open_table(DEDUP)?.remove(key.as_str())?;
            }
        }
    }
    Ok(())
}

/// Remembers the status of the CSMS's answer to a charger's BootNotification.
pub fn set_boot_status(
    wtx: &WriteTransaction,
    charger: &str,
    status: &str,
) -> Result<(), StoreError> {
    wtx.open_table(BOOT)?.insert(charger, status)?;
    Ok(())
}

/// Forgets delivered content keys and id mappings older than `before` (unix seconds).
pub fn prune(wtx: &WriteTransaction, before: i64) -> Result<usize, StoreError> {
    let mut dedup = wtx.open_table(DEDUP)?;
    let old = dedup.extract_if(
        |_, v| matches!(from_json::<Seen>(v), Ok(Seen::Done { at, .. }) if at < before),
    )?;
    let mut n = old.count();
    drop(dedup);
    let mut map = wtx.open_table(TX_MAP)?;
    n += map
        .extract_if(|_, v| matches!(from_json::<Mapping>(v), Ok(m) if m.at < before))?
        .count();
    Ok(n)
}

/// Everything the router needs at startup.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Queued messages, per charger in send order (charger order is the store's).
    pub entries: Vec<Entry>,
    /// (charger, local id, CSMS id).
    pub tx_map: Vec<(String, i64, i64)>,
    /// (charger, status).
    pub boot: Vec<(String, String)>,
    pub dead_letters: u64,
}

fn split(key: &str) -> Option<(&str, &str)> {
    key.split_once('\0')
}

pub fn load(rtx: &ReadTransaction) -> Result<Loaded, StoreError> {
    let mut out = Loaded::default();
    macro_rules! open {
        ($t:expr) => {
            match rtx.open_table($t) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            }
        };
    }
    if let Some(t) = open!(OUTBOX) {
        for row in t.iter()? {
            out.entries.push(from_json(row?.1.value())?);
        }
    }
    if let Some(t) = open!(TX_MAP) {
        for row in t.iter()? {
            let (k, v) = row?;
            let m: Mapping = from_json(v.value())?;
            if let Some((charger, local)) = split(k.value())
                && let Ok(local) = local.parse()
            {
                out.tx_map.push((charger.to_owned(), local, m.csms));
            }
        }
    }
    if let Some(t) = open!(BOOT) {
        for row in t.iter()? {
            let (k, v) = row?;
            out.boot.push((k.value().to_owned(), v.value().to_owned()));
        }
    }
    if let Some(t) = open!(DEAD) {
        out.dead_letters = t.len()?;
    }
    Ok(out)
}

/// Every dead letter, for the admin API and the CLI.
pub fn dead_letters(rtx: &ReadTransaction) -> Result<Vec<DeadLetter>, StoreError> {
    let Ok(t) = rtx.open_table(DEAD) else {
        return Ok(Vec::new());
    };
    t.iter()?.map(|row| from_json(row?.1.value())).collect()
}

/// The queued messages of one charger, in send order (for tests and the CLI).
pub fn queued(rtx: &ReadTransaction, charger: &str) -> Result<Vec<Entry>, StoreError> {
    let Ok(t) = rtx.open_table(OUTBOX) else {
        return Ok(Vec::new());
    };
    let (from, to) = charger_prefix(charger);
    t.range(from.as_str()..to.as_str())?
        .map(|row| from_json(row?.1.value()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::store::Store;

    fn msg(charger: &str, action: &str, dedup: Option<&str>, coalesce: Option<&str>) -> NewMessage {
        NewMessage {
            message: Message {
                charger: charger.into(),
                version: "ocpp1.6".into(),
                action: action.into(),
                upstream_id: uuid::Uuid::new_v4().to_string(),
                payload: "{}".into(),
                dedup: dedup.map(str::to_owned),
                coalesce: coalesce.map(str::to_owned),
                priority: u8::from(action != "BootNotification"),
            },
            wants_local_tx: action == "StartTransaction",
        }
    }

    #[tokio::test]
    async fn resend_is_recognised_queued_then_done_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let store = Store::open(&path).unwrap();
        let first = store
            .write(|w| append(w, msg("CP", "StartTransaction", Some("k1"), None), 10))
            .await
            .unwrap();
        let Appended::New { entry, .. } = first else {
            panic!("{first:?}")
        };
        assert_eq!(entry.local_tx, Some(-1));
        let again = store
            .write(|w| append(w, msg("CP", "StartTransaction", Some("k1"), None), 10))
            .await
            .unwrap();
        assert!(
            matches!(&again, Appended::Queued(e) if e == &entry),
            "{again:?}"
        );
        let settled = entry.clone();
        store
            .write(move |w| {
                let how = Settle::Answered {
                    response: r#"{"transactionId":77}"#,
                    csms_tx: Some(77),
                };
                settle(w, &settled, how, 1)
            })
            .await
            .unwrap();
        store.close();
        let store = Store::open(&path).unwrap();
        let again = store
            .write(|w| append(w, msg("CP", "StartTransaction", Some("k1"), None), 10))
            .await
            .unwrap();
        assert!(
            matches!(&again, Appended::Done(r) if r.contains("77")),
            "{again:?}"
        );
        let loaded = store.read(load).await.unwrap();
        assert!(loaded.entries.is_empty());
        assert_eq!(loaded.tx_map, [("CP".to_owned(), -1, 77)]);
        // Pruning forgets answers older than the retention.
        let pruned = store.write(|w| prune(w, 2)).await.unwrap();
        assert_eq!(pruned, 2);
        let again = store
            .write(|w| append(w, msg("CP", "StartTransaction", Some("k1"), None), 10))
            .await
            .unwrap();
        assert!(matches!(again, Appended::New { .. }));
    }

    #[tokio::test]
    async fn order_boot_first_coalescing_limit_and_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("j.redb")).unwrap();
        let mut seqs = Vec::new();
        for m in [
            msg("CP", "StatusNotification", None, Some("status:1")),
            msg("CP", "MeterValues", Some("mv1"), None),
            msg("CP", "BootNotification", None, Some("boot")),
            msg("CP", "StatusNotification", None, Some("status:1")),
            msg("OTHER", "MeterValues", None, None),
        ] {
            let a = store.write(move |w| append(w, m, 100)).await.unwrap();
            let Appended::New { entry, replaced } = a else {
                panic!("{a:?}")
            };
            seqs.push((entry.seq, replaced));
        }
        // The second status replaced the first.
        assert_eq!(seqs[3].1, Some(seqs[0].0));
        let q = store.read(|r| queued(r, "CP")).await.unwrap();
        let actions: Vec<&str> = q.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            ["BootNotification", "MeterValues", "StatusNotification"]
        );
        let full = store
            .write(|w| append(w, msg("CP", "MeterValues", None, None), 4))
            .await
            .unwrap();
        assert!(matches!(full, Appended::Full));
        let dead = q[1].clone();
        store
            .write(move |w| settle(w, &dead, Settle::Dead { error: "bad" }, 5))
            .await
            .unwrap();
        let letters = store.read(dead_letters).await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].entry.action, "MeterValues");
        assert_eq!(store.read(load).await.unwrap().entries.len(), 3);
    }
}
