//! The edge's promise that no transaction message is lost or duplicated (ARCHITECTURE §6.3),
//! as pure logic: which messages are journaled, the content keys that recognise a re-send, the
//! answers given while the uplink is down, the 1.6 transaction id rewrite, and the per-charger
//! queues with their send state. The router drives it; the store half is `journal`.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use routing::LinkId;
use serde_json::{Value, json};
use wire::OcppVersion;

use crate::journal::Entry;

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

/// What a local answer needs to know besides the request.
pub struct LocalContext<'a> {
    pub now: String,
    pub offline_interval_s: u64,
    /// The CSMS's last answer to this charger's boot.
    pub boot_status: Option<&'a str>,
    /// The 1.6 transaction id handed out for a StartTransaction.
    pub local_tx: Option<i64>,
    /// The authorization status of an idTag.
    pub auth: &'a dyn Fn(&str) -> String,
}

/// The edge's own answer to a request it journaled or serves while the uplink is down: the
/// smallest valid response of the action's version.
pub fn local_answer(version: OcppVersion, action: &str, p: &Value, cx: &LocalContext<'_>) -> Value {
    let v16 = version.is_v16();
    let id_tag_info = |tag: &Value| json!({"status": (cx.auth)(tag.as_str().unwrap_or_default())});
    match action {
        "BootNotification" => {
            // An offline "Accepted" never overrides a Rejected or Pending the CSMS gave.
            let status = cx
                .boot_status
                .filter(|s| matches!(*s, "Rejected" | "Pending"))
                .unwrap_or("Accepted");
            json!({"status": status, "currentTime": cx.now, "interval": cx.offline_interval_s})
        }
        "Heartbeat" => json!({"currentTime": cx.now}),
        "Authorize" if v16 => json!({"idTagInfo": id_tag_info(&p["idTag"])}),
        "Authorize" => json!({"idTokenInfo": id_tag_info(&p["idToken"]["idToken"])}),
        "StartTransaction" => json!({
            "transactionId": cx.local_tx.unwrap_or(-1),
            "idTagInfo": id_tag_info(&p["idTag"]),
        }),
        "StopTransaction" if p.get("idTag").is_some() => {
            json!({"idTagInfo": id_tag_info(&p["idTag"])})
        }
        "TransactionEvent" if p.get("idToken").is_some() => {
            json!({"idTokenInfo": id_tag_info(&p["idToken"]["idToken"])})
        }
        _ => json!({}),
    }
}

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

/// The charger's CALL that waits for a queued message's answer.
#[derive(Debug, Clone)]
pub struct Waiter {
    pub link: LinkId,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendState {
    Idle,
    InFlight {
        deadline: Instant,
    },
    /// The answer is being committed; nothing more is sent for it.
    Settling,
}

/// How a queued message is leaving the queue (kept until the store has committed it).
#[derive(Debug, Clone)]
pub enum Settling {
    /// The CSMS's CALLRESULT payload.
    Answered(String),
    /// The CSMS's CALLERROR, as the plain frame to relay to the waiting charger.
    Refused(String),
    /// Given up; why.
    Dead(String),
}

#[derive(Debug)]
pub struct Queued {
    pub entry: Entry,
    pub state: SendState,
    pub waiter: Option<Waiter>,
    /// CALLERRORs the CSMS gave this message.
    pub attempts: u64,
    pub retry_at: Option<Instant>,
    /// The charger was answered by the edge for this message (it may hold a local 1.6 id).
    pub answered_locally: bool,
    /// Set while the store commits the message's end.
    pub settling: Option<Settling>,
}

/// Every charger's queued messages, in send order (a boot first), in memory; the store has
/// the same entries on disk.
#[derive(Debug, Default)]
pub struct Queues {
    by_charger: HashMap<String, VecDeque<Queued>>,
    len: usize,
}

impl Queues {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a journaled message behind the others of its priority, but never ahead of one that
    /// is already on its way.
    pub fn push(&mut self, entry: Entry) {
        let queue = self.by_charger.entry(entry.charger.clone()).or_default();
        let at = queue
            .iter()
            .position(|q| q.state == SendState::Idle && q.entry.priority > entry.priority)
            .unwrap_or(queue.len());
        queue.insert(
            at,
            Queued {
                entry,
                state: SendState::Idle,
                waiter: None,
                attempts: 0,
                retry_at: None,
                answered_locally: false,
                settling: None,
            },
        );
        self.len += 1;
    }

    /// Drops a message that a newer one coalesced away, unless it is already on its way.
    pub fn remove_idle(&mut self, charger: &str, seq: u64) {
        if let Some(queue) = self.by_charger.get_mut(charger)
            && let Some(at) = queue
                .iter()
                .position(|q| q.entry.seq == seq && q.state == SendState::Idle)
        {
            queue.remove(at);
            self.len -= 1;
        }
    }

    pub fn head(&self, charger: &str) -> Option<&Queued> {
        self.by_charger.get(charger)?.front()
    }

    pub fn head_mut(&mut self, charger: &str) -> Option<&mut Queued> {
        self.by_charger.get_mut(charger)?.front_mut()
    }

    pub fn get(&self, charger: &str, seq: u64) -> Option<&Queued> {
        self.by_charger
            .get(charger)?
            .iter()
            .find(|q| q.entry.seq == seq)
    }

    pub fn get_mut(&mut self, charger: &str, seq: u64) -> Option<&mut Queued> {
        self.by_charger
            .get_mut(charger)?
            .iter_mut()
            .find(|q| q.entry.seq == seq)
    }

    /// Removes the head once its settling is durable.
    pub fn pop(&mut self, charger: &str, seq: u64) -> Option<Queued> {
        let queue = self.by_charger.get_mut(charger)?;
        if queue.front().is_none_or(|q| q.entry.seq != seq) {
            return None;
        }
        let done = queue.pop_front();
        if queue.is_empty() {
            self.by_charger.remove(charger);
        }
        self.len -= 1;
        done
    }

    pub fn chargers(&self) -> impl Iterator<Item = &String> {
        self.by_charger.keys()
    }

    /// The heads of all queues (mutable), for timers and link loss.
    pub fn heads_mut(&mut self) -> impl Iterator<Item = &mut Queued> {
        self.by_charger.values_mut().filter_map(|q| q.front_mut())
    }

    /// The charger's connection is gone: nobody waits on it any more.
    pub fn forget_waiters(&mut self, link: LinkId) {
        for queue in self.by_charger.values_mut() {
            for q in queue.iter_mut() {
                if q.waiter.as_ref().is_some_and(|w| w.link == link) {
                    q.waiter = None;
                }
            }
        }
    }
}

/// The status of a BootNotification answer.
pub fn boot_status(response: &str) -> Option<String> {
    let v: Value = serde_json::from_str(response).ok()?;
    v["status"].as_str().map(str::to_owned)
}

/// The transactionId and idTag status of a 1.6 StartTransaction answer.
pub fn start_answer(response: &str) -> (Option<i64>, Option<String>) {
    let Ok(v) = serde_json::from_str::<Value>(response) else {
        return (None, None);
    };
    (
        v["transactionId"].as_i64(),
        v["idTagInfo"]["status"].as_str().map(str::to_owned),
    )
}

/// The status an Authorize answer (1.6 idTagInfo, 2.x idTokenInfo) gave.
pub fn authorize_status(response: &str) -> Option<String> {
    let v: Value = serde_json::from_str(response).ok()?;
    v["idTagInfo"]["status"]
        .as_str()
        .or_else(|| v["idTokenInfo"]["status"].as_str())
        .map(str::to_owned)
}

/// The idTag of an Authorize request, in either version (1.6 `idTag`, 2.x `idToken.idToken`).
/// Read with a typed view that skips the other fields: this runs for every Authorize relayed.
pub fn authorize_tag(payload: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Token {
        #[serde(rename = "idToken")]
        id_token: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Request {
        #[serde(rename = "idTag")]
        id_tag: Option<String>,
        #[serde(rename = "idToken")]
        id_token: Option<Token>,
    }
    let r: Request = serde_json::from_str(payload).ok()?;
    r.id_tag.or(r.id_token.and_then(|t| t.id_token))
}

/// Most idTags remembered from the CSMS's answers for offline Authorize.
const AUTH_CACHE: usize = 10_000;

/// The CSMS's recent authorizations, consulted while the uplink is down.
#[derive(Debug, Default)]
pub struct AuthCache(HashMap<String, String>);

impl AuthCache {
    pub fn insert(&mut self, tag: String, status: String) {
        if self.0.len() >= AUTH_CACHE && !self.0.contains_key(&tag) {
            // Bounded without bookkeeping per lookup: start over, the list refills online.
            self.0.clear();
        }
        self.0.insert(tag, status);
    }

    pub fn get(&self, tag: &str) -> Option<&str> {
        self.0.get(tag).map(String::as_str)
    }
}

/// Everything an edge keeps in memory for its durable queue.
#[derive(Debug, Default)]
pub struct Edge {
    pub queues: Queues,
    pub tx_ids: TxIds,
    /// The status of the CSMS's last answer to each charger's boot.
    pub boot: HashMap<String, String>,
    pub auth: AuthCache,
}

impl Edge {
    /// Takes over what the store kept across a restart (entries arrive in send order).
    pub fn load(&mut self, loaded: crate::journal::Loaded) {
        for entry in loaded.entries {
            self.queues.push(entry);
        }
        for (charger, local, csms) in loaded.tx_map {
            self.tx_ids.insert(&charger, local, csms);
        }
        self.boot.extend(loaded.boot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, priority: u8) -> Entry {
        Entry {
            seq,
            local_tx: None,
            message: crate::journal::Message {
                charger: "CP".into(),
                version: "ocpp1.6".into(),
                action: "MeterValues".into(),
                upstream_id: format!("u{seq}"),
                payload: "{}".into(),
                dedup: None,
                coalesce: None,
                priority,
            },
        }
    }

    #[test]
    fn authorize_tags_of_both_versions() {
        assert_eq!(authorize_tag(r#"{"idTag":"A"}"#).as_deref(), Some("A"));
        let v2 = r#"{"idToken":{"idToken":"B","type":"ISO14443"},"x":[1]}"#;
        assert_eq!(authorize_tag(v2).as_deref(), Some("B"));
        assert_eq!(authorize_tag("{}"), None);
    }

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

    #[test]
    fn offline_boot_never_overrides_rejected_or_pending() {
        let auth = |_: &str| "Accepted".to_owned();
        let mut cx = LocalContext {
            now: "t".into(),
            offline_interval_s: 60,
            boot_status: Some("Pending"),
            local_tx: None,
            auth: &auth,
        };
        let p = json!({});
        let a = local_answer(OcppVersion::V16, "BootNotification", &p, &cx);
        assert_eq!(a["status"], "Pending");
        cx.boot_status = Some("Accepted");
        let a = local_answer(OcppVersion::V201, "BootNotification", &p, &cx);
        assert_eq!(
            (a["status"].as_str(), a["interval"].as_u64()),
            (Some("Accepted"), Some(60))
        );
        cx.local_tx = Some(-4);
        let start = json!({"idTag": "T"});
        let a = local_answer(OcppVersion::V16, "StartTransaction", &start, &cx);
        assert_eq!(
            a,
            json!({"transactionId": -4, "idTagInfo": {"status": "Accepted"}})
        );
    }

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

    #[test]
    fn a_boot_goes_first_but_never_ahead_of_a_message_on_its_way() {
        let mut q = Queues::default();
        q.push(entry(1, 1));
        q.push(entry(2, 1));
        q.head_mut("CP").unwrap().state = SendState::InFlight {
            deadline: Instant::now(),
        };
        q.push(entry(3, 0));
        let order: Vec<u64> = q.by_charger["CP"].iter().map(|e| e.entry.seq).collect();
        assert_eq!(order, [1, 3, 2]);
        assert!(q.pop("CP", 3).is_none(), "only the head pops");
        assert!(q.pop("CP", 1).is_some());
        q.remove_idle("CP", 3);
        assert_eq!(q.len(), 1);
        assert_eq!(q.head("CP").unwrap().entry.seq, 2);
    }
}
