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

pub fn class(version: OcppVersion, action: &str) -> Class {
    match action {
        "StartTransaction"
        | "StopTransaction"
        | "DiagnosticsStatusNotification"
        | "SignedFirmwareStatusNotification"
            if version.is_v16() =>
        {
            Class::Journal
        }
        "TransactionEvent" if !version.is_v16() => Class::Journal,
        "MeterValues"
        | "SecurityEventNotification"
        | "FirmwareStatusNotification"
        | "LogStatusNotification" => Class::Journal,
        "BootNotification" | "StatusNotification" => Class::OfflineJournal,
        "Heartbeat" | "Authorize" => Class::OfflineLocal,
        _ => Class::Forward,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The content key of §6.3: a charger that re-sends after an edge crash uses a new message id,
/// so a re-send is recognised by what it says. `None`: the message has no such identity.
pub fn dedup_key(version: OcppVersion, action: &str, p: &Value) -> Option<String> {
    let first_ts = |samples: &Value| text(&samples[0]["timestamp"]);
    Some(match action {
        "StartTransaction" if version.is_v16() => format!(
            "start\0{}\0{}\0{}\0{}",
            text(&p["connectorId"]),
            text(&p["idTag"]),
            text(&p["timestamp"]),
            text(&p["meterStart"])
        ),
        "StopTransaction" if version.is_v16() => format!(
            "stop\0{}\0{}\0{}",
            text(&p["transactionId"]),
            text(&p["timestamp"]),
            text(&p["meterStop"])
        ),
        "MeterValues" if version.is_v16() => format!(
            "mv\0{}\0{}\0{}",
            text(&p["connectorId"]),
            text(&p["transactionId"]),
            first_ts(&p["meterValue"])
        ),
        "MeterValues" => format!(
            "mv\0{}\0\0{}",
            text(&p["evseId"]),
            first_ts(&p["meterValue"])
        ),
        "TransactionEvent" => format!(
            "tev\0{}\0{}",
            text(&p["transactionInfo"]["transactionId"]),
            text(&p["seqNo"])
        ),
        "SecurityEventNotification" => {
            format!("sec\0{}\0{}", text(&p["type"]), text(&p["timestamp"]))
        }
        _ => return None,
    })
}

/// Messages of which only the latest is worth replaying.
pub fn coalesce_key(version: OcppVersion, action: &str, p: &Value) -> Option<String> {
    match action {
        "BootNotification" => Some("boot".into()),
        "StatusNotification" if version.is_v16() => {
            Some(format!("status\0{}", text(&p["connectorId"])))
        }
        "StatusNotification" => Some(format!(
            "status\0{}\0{}",
            text(&p["evseId"]),
            text(&p["connectorId"])
        )),
        _ => None,
    }
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

/// Rewrites the transaction id at `pointer` through `map`; `None` when nothing changes. This is
/// the one place a forwarded payload is re-serialized (§6.3), and only when an id really maps.
fn rewrite(payload: &str, pointer: &str, map: impl Fn(i64) -> Option<i64>) -> Option<String> {
    let mut value: Value = serde_json::from_str(payload).ok()?;
    let slot = value.pointer_mut(pointer)?;
    let to = map(slot.as_i64()?)?;
    *slot = Value::from(to);
    Some(value.to_string())
}

/// The local ↔ CSMS 1.6 transaction ids of the transactions a charger was answered locally.
#[derive(Debug, Default)]
pub struct TxIds {
    up: HashMap<String, HashMap<i64, i64>>,
    down: HashMap<String, HashMap<i64, i64>>,
}

impl TxIds {
    pub fn insert(&mut self, charger: &str, local: i64, csms: i64) {
        self.up
            .entry(charger.to_owned())
            .or_default()
            .insert(local, csms);
        self.down
            .entry(charger.to_owned())
            .or_default()
            .insert(csms, local);
    }

    pub fn csms_id(&self, charger: &str, local: i64) -> Option<i64> {
        self.up.get(charger)?.get(&local).copied()
    }

    /// A charger's message toward the CSMS, with its local transaction id replaced.
    pub fn rewrite_up(&self, charger: &str, action: &str, payload: &str) -> Option<String> {
        let ids = self.up.get(charger)?;
        rewrite(payload, up_pointer(action)?, |id| {
            (id < 0).then(|| ids.get(&id).copied()).flatten()
        })
    }

    /// A CSMS CALL toward a charger that knows the transaction under its local id.
    pub fn rewrite_down(&self, charger: &str, action: &str, payload: &str) -> Option<String> {
        let ids = self.down.get(charger)?;
        rewrite(payload, down_pointer(action)?, |id| ids.get(&id).copied())
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

/// The idTag of an Authorize request, in either version.
pub fn authorize_tag(payload: &Value) -> Option<String> {
    payload["idTag"]
        .as_str()
        .or_else(|| payload["idToken"]["idToken"].as_str())
        .map(str::to_owned)
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
            charger: "CP".into(),
            version: "ocpp1.6".into(),
            action: "MeterValues".into(),
            upstream_id: format!("u{seq}"),
            payload: "{}".into(),
            dedup: None,
            coalesce: None,
            local_tx: None,
            priority,
        }
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
        let up = ids.rewrite_up("CP", "StopTransaction", stop).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&up).unwrap()["transactionId"],
            1234
        );
        assert_eq!(
            ids.rewrite_up("CP", "StopTransaction", r#"{"transactionId":-9}"#),
            None
        );
        assert_eq!(
            ids.rewrite_up("CP", "StopTransaction", r#"{"transactionId":1234}"#),
            None
        );
        assert_eq!(ids.rewrite_up("OTHER", "StopTransaction", stop), None);
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
