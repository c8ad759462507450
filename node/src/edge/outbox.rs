//! The edge's promise that no transaction message is lost or duplicated (ARCHITECTURE §6.3), as
//! a stage of the engine.
//!
//! A charger's transaction message is journaled (a store job) before anything else happens to
//! it; the stage then replays each charger's queue in order, one message at a time, through the
//! node's CALL API under the upstream id fixed at journal time, and a message leaves the queue
//! only in the commit that stores its answer. While the uplink is down the stage answers on the
//! CSMS's behalf (`crate::local::answers`), and it learns what it needs for that from the answers
//! it relays (boot status, authorizations). Its egress side rewrites the 1.6 transaction ids it
//! handed out offline in the CSMS's CALLs down to the charger.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use routing::LinkId;
use serde_json::{Value, json};
use wire::text::{Body, Frame};
use wire::{MessageType, OcppVersion};

use super::classes::{self, Class};
use super::journal::{self, Appended, Entry, NewMessage};
use super::queue::{Queues, SendState, Settling, Waiter};
use super::txids::{TxIds, UpRewrite};
use crate::config::OutboxConfig;
use crate::core::metrics::Metrics;
use crate::engine::stages::{Answer, FromPlain, ToPlain};
use crate::engine::{CallOutcome, Cx, NodeCall, Persisted, Stage, Target, Verdict};
use crate::local::answers::{self, LocalContext};
use crate::local::authorize::Authorizer;

/// How often delivered-message keys past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Marks of the relayed CALLs the outbox learns from; Authorize marks count up from here.
const MARK_BOOT: u64 = 0;
const MARK_HEARTBEAT: u64 = 1;
const FIRST_AUTHORIZE_MARK: u64 = 2;
/// Most Authorize tags remembered for their answer; one per relayed Authorize in flight.
const MAX_TAGS: usize = 100_000;

/// What a store job of the outbox was for.
enum Job {
    /// A charger's CALL being journaled: answer it (`id`) on `link` when it is in.
    Append {
        link: LinkId,
        id: String,
        charger: String,
        action: String,
    },
    Settle {
        charger: String,
        seq: u64,
    },
    Other,
}

pub struct Outbox {
    config: OutboxConfig,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
    queues: Queues,
    tx_ids: TxIds,
    /// The status of the CSMS's last answer to each charger's boot.
    boot: HashMap<String, String>,
    auth: Authorizer,
    jobs: HashMap<u64, Job>,
    /// Replays on their way: call token → (charger, seq).
    calls: HashMap<u64, (String, u64)>,
    next_call: u64,
    /// Relayed Authorize CALLs: mark → idTag and the charger's version.
    tags: HashMap<u64, (String, OcppVersion)>,
    next_mark: u64,
    next_prune: Option<Instant>,
}

impl Outbox {
    pub fn new(
        config: OutboxConfig,
        auth: Authorizer,
        request_timeout: Duration,
        metrics: Arc<Metrics>,
        loaded: journal::Loaded,
    ) -> Outbox {
        let mut outbox = Outbox {
            config,
            request_timeout,
            queues: Queues::default(),
            tx_ids: TxIds::default(),
            boot: HashMap::new(),
            auth,
            jobs: HashMap::new(),
            calls: HashMap::new(),
            next_call: 1,
            tags: HashMap::new(),
            next_mark: FIRST_AUTHORIZE_MARK,
            next_prune: None,
            metrics,
        };
        if !loaded.entries.is_empty() {
            tracing::info!(
                messages = loaded.entries.len(),
                "transaction messages from before the restart are queued for the CSMS"
            );
        }
        outbox
            .metrics
            .outbox_dead_letters
            .set(loaded.dead_letters as i64);
        for entry in loaded.entries {
            outbox.queues.push(entry, None);
        }
        for (charger, local, csms) in loaded.tx_map {
            outbox.tx_ids.insert(&charger, local, csms);
        }
        outbox.boot.extend(loaded.boot);
        outbox.gauge();
        outbox
    }

    fn gauge(&self) {
        self.metrics.outbox_queued.set(self.queues.len() as i64);
    }

    fn local_answer(
        &self,
        charger: &str,
        version: OcppVersion,
        action: &str,
        payload: &Value,
        local_tx: Option<i64>,
    ) -> Value {
        let cx = LocalContext {
            now: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            interval_s: self.config.offline_interval_s,
            boot_status: self.boot.get(charger).map(String::as_str),
            local_tx,
            auth: &self.auth,
        };
        answers::local_answer(version, action, payload, &cx)
    }

    /// The result frame of a local answer, counted.
    fn answer_text(&self, id: &str, answer: &Value) -> Option<String> {
        self.metrics.outbox_local_answers.inc();
        let raw = serde_json::value::to_raw_value(answer).ok()?;
        Some(Frame::result(id, &raw).to_plain_string())
    }

    /// Journals a charger's CALL before anything else happens to it.
    fn journal(&mut self, f: &FromPlain<'_, '_>, parsed: &Value, cx: &mut Cx<'_>) {
        let action = f.action();
        let message = NewMessage {
            message: journal::Message {
                charger: f.charger.to_owned(),
                version: f.version.subprotocol().to_owned(),
                action: action.to_owned(),
                upstream_id: cx.new_id(),
                payload: f.frame.payload().map_or("{}", |p| p.get()).to_owned(),
                dedup: classes::dedup_key(f.version, action, parsed),
                coalesce: classes::coalesce_key(f.version, action, parsed),
                priority: u8::from(action != "BootNotification"),
            },
            wants_local_tx: f.version.is_v16() && action == "StartTransaction",
        };
        let max = self.config.max_messages;
        let token = cx.persist(
            f.charger,
            Box::new(move |w| Ok(Box::new(journal::append(w, message, max)?))),
        );
        self.jobs.insert(
            token,
            Job::Append {
                link: f.link,
                id: f.frame.id.to_string(),
                charger: f.charger.to_owned(),
                action: action.to_owned(),
            },
        );
    }

    /// A journaled CALL is in the store: send it now if it is next and the uplink is up (the
    /// charger then gets the CSMS's own answer), else answer it here.
    fn journaled(&mut self, waiter: Waiter, appended: Appended, cx: &mut Cx<'_>) {
        let (charger, seq, stored) = match appended {
            Appended::New { entry, replaced } => {
                if let Some(old) = replaced {
                    self.queues.remove_idle(&entry.charger, old);
                }
                let key = (entry.charger.clone(), entry.seq);
                self.queues.push(entry, Some(cx.now()));
                self.gauge();
                (key.0, key.1, None)
            }
            Appended::Queued(entry) => (entry.charger.clone(), entry.seq, Some(entry)),
            Appended::Done(_) | Appended::Full => return,
        };
        let uplink = cx.uplink_up();
        let now = cx.now();
        match self.queues.head_mut(&charger) {
            Some(q) if q.entry.seq == seq => match q.state {
                SendState::Idle if uplink && q.retry_at.is_none_or(|t| t <= now) => {
                    q.waiter = Some(waiter);
                    self.pump(&charger, cx);
                }
                SendState::InFlight { .. } | SendState::Settling => {
                    // A re-send of the message on its way: the charger gets the CSMS's answer.
                    if let Some(old) = q.waiter.replace(waiter) {
                        cx.release(old.link);
                    }
                }
                SendState::Idle => self.answer_locally(&waiter, &charger, seq, stored.as_ref(), cx),
            },
            _ => self.answer_locally(&waiter, &charger, seq, stored.as_ref(), cx),
        }
    }

    /// Answers a charger's CALL for a queued message on the edge's own authority: the message
    /// is on disk, so the charger may forget it. `fallback` is the stored entry, for a re-send
    /// of a message the memory no longer holds.
    fn answer_locally(
        &mut self,
        waiter: &Waiter,
        charger: &str,
        seq: u64,
        fallback: Option<&Entry>,
        cx: &mut Cx<'_>,
    ) {
        let queued = self.queues.get(charger, seq).map(|q| &q.entry);
        let Some(entry) = queued.or(fallback) else {
            cx.release(waiter.link);
            return;
        };
        let version = entry.version.parse().unwrap_or(OcppVersion::V16);
        let payload: Value = serde_json::from_str(&entry.payload).unwrap_or(Value::Null);
        let answer = self.local_answer(charger, version, &entry.action, &payload, entry.local_tx);
        if let Some(q) = self.queues.get_mut(charger, seq) {
            q.answered_locally = true;
        }
        match self.answer_text(&waiter.id, &answer) {
            Some(text) => cx.answer(waiter.link, text),
            None => cx.release(waiter.link),
        }
    }

    /// Sends the charger's next queued message, if it may go now.
    fn pump(&mut self, charger: &str, cx: &mut Cx<'_>) {
        if !cx.uplink_up() {
            return;
        }
        let now = cx.now();
        let Some(q) = self.queues.head_mut(charger) else {
            return;
        };
        if q.state != SendState::Idle || q.retry_at.is_some_and(|t| t > now) {
            return;
        }
        if cx.charger_link(charger).is_none() {
            // The hub keeps a charger's CSMS socket only while the charger is announced: one
            // that left with messages queued is announced by this node until they are out, so
            // that nothing waits for the charger's return.
            let version = q.entry.version.parse().ok();
            cx.announce_here(charger, version);
        }
        q.retry_at = None;
        q.state = SendState::InFlight {
            deadline: now + self.request_timeout,
        };
        let entry = &q.entry;
        let payload = if entry.version == OcppVersion::V16.subprotocol() {
            match self
                .tx_ids
                .rewrite_up(charger, &entry.action, &entry.payload)
            {
                UpRewrite::Rewritten(payload) => payload,
                UpRewrite::Unchanged => entry.payload.clone(),
                UpRewrite::Unmapped(local) => {
                    tracing::warn!(charger, action = %entry.action, local, "a local transaction id has no CSMS id (its Start was not delivered); sent as it is");
                    entry.payload.clone()
                }
            }
        } else {
            entry.payload.clone()
        };
        let call = NodeCall {
            target: Target::Csms,
            on_behalf: Some(charger.to_owned()),
            id: Some(entry.upstream_id.clone()),
            action: entry.action.clone(),
            payload,
            // The outbox keeps its own deadline: an answer that comes late still settles.
            timeout: None,
        };
        let token = self.next_call;
        self.next_call += 1;
        self.calls.insert(token, (charger.to_owned(), entry.seq));
        cx.call(token, call);
    }

    fn pump_all(&mut self, cx: &mut Cx<'_>) {
        let chargers: Vec<String> = self.queues.chargers().cloned().collect();
        for charger in chargers {
            self.pump(&charger, cx);
        }
    }

    /// Not delivered on this try (a node on the way could not, or the link went): not the
    /// CSMS's verdict, so no attempt is counted; the waiting charger is answered from disk.
    fn not_delivered(&mut self, charger: &str, retry_now: bool, cx: &mut Cx<'_>) {
        let retry_at = (!retry_now).then(|| cx.now() + self.retry());
        let Some(q) = self.queues.head_mut(charger) else {
            return;
        };
        q.state = SendState::Idle;
        q.retry_at = retry_at;
        let (waiter, seq) = (q.waiter.take(), q.entry.seq);
        if let Some(w) = waiter {
            self.answer_locally(&w, charger, seq, None, cx);
        }
    }

    fn retry(&self) -> Duration {
        Duration::from_secs(self.config.retry_interval_s)
    }

    /// Commits a queued message's end in the store; `settled` finishes it.
    fn settle(&mut self, charger: &str, how: Settling, cx: &mut Cx<'_>) {
        let Some(q) = self.queues.head_mut(charger) else {
            return;
        };
        q.state = SendState::Settling;
        let entry = q.entry.clone();
        // The mapping is needed only where the charger may know the transaction by its local
        // id: it was answered here, or nobody waits for the CSMS's answer.
        let maps_ids = q.answered_locally || q.waiter.is_none();
        q.settling = Some(how.clone());
        let now_unix = chrono::Utc::now().timestamp();
        let seq = entry.seq;
        let token = cx.persist(
            charger,
            Box::new(move |w| {
                let settle = match &how {
                    Settling::Answered(response) => {
                        let csms_tx = if maps_ids && entry.local_tx.is_some() {
                            answers::start_answer(response).0
                        } else {
                            None
                        };
                        journal::Settle::Answered { response, csms_tx }
                    }
                    Settling::Refused(_) => journal::Settle::Refused,
                    Settling::Dead(error) => journal::Settle::Dead { error },
                };
                journal::settle(w, &entry, settle, now_unix)?;
                Ok(Box::new(()))
            }),
        );
        self.jobs.insert(
            token,
            Job::Settle {
                charger: charger.to_owned(),
                seq,
            },
        );
    }

    fn settled(&mut self, charger: &str, seq: u64, committed: bool, cx: &mut Cx<'_>) {
        if !committed {
            tracing::error!(
                charger,
                "could not commit a queued message's answer; it will be sent again"
            );
            let retry_at = cx.now() + self.retry();
            if let Some(q) = self.queues.get_mut(charger, seq) {
                q.state = SendState::Idle;
                q.settling = None;
                q.retry_at = Some(retry_at);
            }
            return;
        }
        let Some(done) = self.queues.pop(charger, seq) else {
            return;
        };
        self.gauge();
        if self.queues.head(charger).is_none() {
            cx.withdraw_here(charger);
        }
        let entry = &done.entry;
        match done.settling {
            Some(Settling::Answered(response)) => {
                if entry.action == "StartTransaction" {
                    let (csms, status) = answers::start_answer(&response);
                    if let (Some(local), Some(csms)) = (entry.local_tx, csms)
                        && (done.answered_locally || done.waiter.is_none())
                    {
                        self.tx_ids.insert(charger, local, csms);
                    }
                    if let (Some(status), Ok(p)) =
                        (status, serde_json::from_str::<Value>(&entry.payload))
                        && let Some(tag) = p["idTag"].as_str()
                    {
                        self.auth.learn(tag.to_owned(), status);
                    }
                }
                let mut rejected = false;
                if entry.action == "BootNotification"
                    && let Some(status) = answers::boot_status(&response)
                {
                    rejected = status == "Rejected";
                    self.remember_boot(charger, status, cx);
                }
                match &done.waiter {
                    Some(w) => match serde_json::value::RawValue::from_string(response) {
                        Ok(raw) => {
                            cx.answer(w.link, Frame::result(w.id.as_str(), &raw).to_plain_string())
                        }
                        Err(_) => cx.release(w.link),
                    },
                    None if rejected => {
                        if let Some(link) = cx.charger_link(charger) {
                            tracing::warn!(
                                charger,
                                "the CSMS rejected the boot replayed from the outage; closing the charger"
                            );
                            cx.close(link, "the CSMS rejected this charger's boot");
                        }
                    }
                    None => {}
                }
            }
            Some(Settling::Refused(error)) => {
                if let Some(w) = &done.waiter {
                    cx.answer(w.link, error);
                }
            }
            Some(Settling::Dead(why)) => {
                self.metrics.outbox_dead_letters.inc();
                cx.security_event(
                    "dead_letter",
                    format_args!(
                        "charger {charger:?}: {} (queued #{}) refused by the CSMS {} times, last {why}; moved to the dead letters",
                        entry.action, entry.seq, done.attempts
                    ),
                );
                if let Some(w) = &done.waiter {
                    cx.release(w.link);
                }
            }
            None => {}
        }
        self.pump(charger, cx);
    }

    fn remember_boot(&mut self, charger: &str, status: String, cx: &mut Cx<'_>) {
        if self.boot.get(charger) == Some(&status) {
            return;
        }
        self.boot.insert(charger.to_owned(), status.clone());
        let c = charger.to_owned();
        let token = cx.persist(
            charger,
            Box::new(move |w| {
                journal::set_boot_status(w, &c, &status)?;
                Ok(Box::new(()))
            }),
        );
        self.jobs.insert(token, Job::Other);
    }

    /// The answer to a replayed message (late ones included: a timed-out message that is
    /// answered after all needs no resend).
    fn replay_answered(&mut self, charger: &str, outcome: CallOutcome, cx: &mut Cx<'_>) {
        let attempts_max = self.config.message_attempts;
        let retry_at = cx.now() + self.retry();
        let Some(q) = self.queues.head_mut(charger) else {
            return;
        };
        let how = match outcome {
            CallOutcome::Result(payload) => Settling::Answered(payload),
            CallOutcome::Error {
                code,
                description,
                details,
                from,
            } if from == routing::CSMS => {
                if let Some(w) = &q.waiter {
                    // Online, the charger sees what the CSMS said and keeps its own retries.
                    let details = serde_json::value::RawValue::from_string(details)
                        .unwrap_or_else(|_| wire::text::empty_details().to_owned());
                    let error = Frame {
                        id: w.id.as_str().into(),
                        body: Body::CallError(wire::text::ErrorBody {
                            code: code.as_str().into(),
                            description: description.as_str().into(),
                            details: wire::Json::new(&details),
                        }),
                    };
                    Settling::Refused(error.to_plain_string())
                } else {
                    q.attempts += 1;
                    let why = format!("{code}: {description}");
                    if q.attempts >= attempts_max {
                        Settling::Dead(why)
                    } else {
                        tracing::info!(charger, action = %q.entry.action, attempt = q.attempts, error = %why, "the CSMS refused a replayed message; retrying");
                        q.state = SendState::Idle;
                        q.retry_at = Some(retry_at);
                        return;
                    }
                }
            }
            CallOutcome::LinkLost => return self.not_delivered(charger, true, cx),
            _ => {
                tracing::info!(
                    charger,
                    "queued message not delivered on this try; it is sent again"
                );
                return self.not_delivered(charger, false, cx);
            }
        };
        self.settle(charger, how, cx);
    }
}

impl Stage for Outbox {
    fn name(&self) -> &'static str {
        "outbox"
    }

    fn on_plain(&mut self, f: &FromPlain<'_, '_>, cx: &mut Cx<'_>) -> Verdict {
        if f.frame.message_type() != MessageType::Call {
            return Verdict::Continue;
        }
        let action = f.action();
        let class = classes::class(f.version, action);
        let uplink = cx.uplink_up();
        let journaled = match class {
            Class::Journal => true,
            Class::OfflineJournal => !uplink,
            Class::OfflineLocal | Class::Forward => false,
        };
        if journaled && let Ok(parsed) = f.payload() {
            let parsed = parsed.clone();
            self.journal(f, &parsed, cx);
            return Verdict::Consumed;
        }
        if !uplink {
            let reply = if class == Class::OfflineLocal {
                let payload = f.payload().cloned().unwrap_or(Value::Null);
                let answer = self.local_answer(f.charger, f.version, action, &payload, None);
                self.answer_text(&f.frame.id, &answer)
            } else {
                None
            };
            return Verdict::Reply(reply.unwrap_or_else(|| {
                Frame::error(f.frame.id.as_ref(), "GenericError", "uplink unavailable")
                    .to_plain_string()
            }));
        }
        match action {
            "BootNotification" => Verdict::Mark(MARK_BOOT),
            "Heartbeat" => Verdict::Mark(MARK_HEARTBEAT),
            "Authorize" if self.tags.len() < MAX_TAGS => {
                match f
                    .frame
                    .payload()
                    .and_then(|p| answers::authorize_tag(p.get()))
                {
                    Some(tag) => {
                        let mark = self.next_mark;
                        self.next_mark += 1;
                        self.tags.insert(mark, (tag, f.version));
                        Verdict::Mark(mark)
                    }
                    None => Verdict::Continue,
                }
            }
            _ => Verdict::Continue,
        }
    }

    fn egress_plain(&mut self, f: &ToPlain<'_, '_>, _cx: &mut Cx<'_>) -> Option<String> {
        if !f.version.is_v16() {
            return None;
        }
        let Body::Call { action, payload } = &f.frame.body else {
            return None;
        };
        let rewritten = self.tx_ids.rewrite_down(f.charger, action, payload.get())?;
        let raw = serde_json::value::RawValue::from_string(rewritten).ok()?;
        Some(Frame::call(f.frame.id.as_ref(), action.as_ref(), &raw).to_plain_string())
    }

    fn answered(
        &mut self,
        charger: &str,
        id: &str,
        mark: u64,
        answer: Answer<'_>,
        cx: &mut Cx<'_>,
    ) -> Option<String> {
        let tag = (mark >= FIRST_AUTHORIZE_MARK)
            .then(|| self.tags.remove(&mark))
            .flatten();
        match answer {
            Answer::Result(payload) => {
                if mark == MARK_BOOT {
                    if let Some(status) = answers::boot_status(payload) {
                        self.remember_boot(charger, status, cx);
                    }
                } else if let (Some((tag, _)), Some(status)) =
                    (tag, answers::authorize_status(payload))
                {
                    self.auth.learn(tag, status);
                }
                None
            }
            Answer::Error => None,
            // Answered as if offline: a silently dead uplink is not known to be down until its
            // pings fail.
            Answer::Timeout => {
                let (version, action, payload) = match tag {
                    Some((tag, v)) if v.is_v16() => (v, "Authorize", json!({"idTag": tag})),
                    Some((tag, v)) => (v, "Authorize", json!({"idToken": {"idToken": tag}})),
                    None if mark == MARK_HEARTBEAT => (OcppVersion::V16, "Heartbeat", json!({})),
                    None => return None,
                };
                let answer = self.local_answer(charger, version, action, &payload, None);
                self.answer_text(id, &answer)
            }
        }
    }

    fn charger_up(&mut self, _link: LinkId, charger: &str, cx: &mut Cx<'_>) {
        cx.withdraw_here(charger);
        self.pump(charger, cx);
    }

    fn charger_down(&mut self, link: LinkId, charger: &str, cx: &mut Cx<'_>) {
        self.queues.forget_waiters(link);
        if self.queues.head(charger).is_some() {
            self.pump(charger, cx);
        }
    }

    fn uplink(&mut self, up: bool, cx: &mut Cx<'_>) {
        if up {
            self.pump_all(cx);
        }
    }

    fn persisted(&mut self, token: u64, result: Persisted, cx: &mut Cx<'_>) {
        match self.jobs.remove(&token) {
            Some(Job::Append {
                link,
                id,
                charger,
                action,
            }) => {
                let appended = result.and_then(|b| {
                    b.downcast::<Appended>()
                        .map(|a| *a)
                        .map_err(|_| "unexpected store result".to_owned())
                });
                match appended {
                    Ok(Appended::Done(response)) => {
                        tracing::info!(charger = %charger, action, "re-sent message already delivered; answered with the CSMS's answer");
                        let text = match serde_json::value::RawValue::from_string(response) {
                            Ok(raw) => Frame::result(id.as_str(), &raw).to_plain_string(),
                            Err(e) => Frame::error(id.as_str(), "InternalError", e.to_string())
                                .to_plain_string(),
                        };
                        cx.answer(link, text);
                    }
                    Ok(Appended::Full) => {
                        let max = self.config.max_messages;
                        cx.security_event(
                            "outbox_full",
                            format_args!(
                                "the durable queue holds its limit of {max} messages; {action} from {charger:?} refused (the charger keeps it)"
                            ),
                        );
                        self.metrics.frame_errors.inc();
                        let text = Frame::error(
                            id.as_str(),
                            "GenericError",
                            "the node's message queue is full; retry later",
                        );
                        cx.answer(link, text.to_plain_string());
                    }
                    Ok(appended) => self.journaled(Waiter { link, id }, appended, cx),
                    Err(e) => {
                        cx.security_event(
                            "outbox_write_failed",
                            format_args!(
                                "{action} from {charger:?} could not be written to the store ({e}); refused, the charger keeps it"
                            ),
                        );
                        self.metrics.frame_errors.inc();
                        let text = Frame::error(
                            id.as_str(),
                            "InternalError",
                            "the node could not record this message; retry",
                        );
                        cx.answer(link, text.to_plain_string());
                    }
                }
            }
            Some(Job::Settle { charger, seq }) => {
                self.settled(&charger, seq, result.is_ok(), cx);
            }
            Some(Job::Other) | None => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "an outbox store job failed");
                }
            }
        }
    }

    fn call_done(&mut self, token: u64, outcome: CallOutcome, cx: &mut Cx<'_>) {
        let Some((charger, seq)) = self.calls.remove(&token) else {
            return;
        };
        let current = self
            .queues
            .head(&charger)
            .is_some_and(|q| q.entry.seq == seq && q.state != SendState::Settling);
        if current {
            self.replay_answered(&charger, outcome, cx);
        }
    }

    /// Unanswered messages are answered here and resent; due retries go; old dedup keys go.
    fn tick(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now();
        let retry = self.retry();
        let mut waiting = Vec::new();
        let mut due = Vec::new();
        for q in self.queues.heads_mut() {
            match q.state {
                SendState::InFlight { deadline } if deadline <= now => {
                    q.state = SendState::Idle;
                    q.retry_at = Some(now + retry);
                    if let Some(w) = q.waiter.take() {
                        waiting.push((w, q.entry.charger.clone(), q.entry.seq));
                    }
                }
                SendState::Idle if q.retry_at.is_none_or(|t| t <= now) => {
                    due.push(q.entry.charger.clone());
                }
                _ => {}
            }
        }
        for (w, charger, seq) in waiting {
            tracing::info!(charger = %charger, "no answer from the CSMS in time; answered here, sent again later");
            self.answer_locally(&w, &charger, seq, None, cx);
        }
        for charger in due {
            self.pump(&charger, cx);
        }
        if self.next_prune.is_none_or(|t| now >= t) {
            self.next_prune = Some(now + PRUNE_EVERY);
            let before = chrono::Utc::now().timestamp() - self.config.dedup_retention_s as i64;
            let token = cx.persist(
                "",
                Box::new(move |w| {
                    let n = journal::prune(w, before)?;
                    if n > 0 {
                        tracing::info!(forgotten = n, "old delivered-message keys pruned");
                    }
                    Ok(Box::new(n))
                }),
            );
            self.jobs.insert(token, Job::Other);
        }
    }

    fn status(&self, now: Instant) -> Option<(&'static str, Value)> {
        let in_flight = self
            .queues
            .heads()
            .filter(|q| q.state != SendState::Idle)
            .count();
        // A charger's head is its oldest message (a boot may go ahead, but it is queued first
        // anyway), so the heads alone give the age without walking every queue.
        let oldest = self
            .queues
            .heads()
            .filter_map(|q| q.queued_at)
            .map(|t| now.saturating_duration_since(t))
            .max();
        let from_before_start = self.queues.heads().any(|q| q.queued_at.is_none());
        Some((
            "outbox",
            json!({
                "queued": self.queues.len(),
                "chargers": self.queues.chargers().count(),
                "inFlight": in_flight,
                "oldestAgeS": oldest.map(|d| d.as_secs()),
                "queuedBeforeStart": from_before_start,
                "deadLetters": self.metrics.outbox_dead_letters.get(),
            }),
        ))
    }
}
