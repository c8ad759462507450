//! The stage chain: the named seam where capabilities see and shape frames (the linkerd way,
//! one behaviour per layer), without a match arm in the engine.
//!
//! A stage sees, in chain order:
//! * [`Stage::on_plain`]: every frame a plain charger sends, decoded once, before it is
//!   translated into the overlay. It may let it pass, mark a CALL (to hear of its answer),
//!   answer it itself, take it over (the durable queue), or drop it.
//! * [`Stage::on_link`]: every frame an overlay link brings, before routing.
//! * [`Stage::screen`]: every CALL and SEND routing has decided to forward or deliver, from
//!   wherever it came, after the allow-list and loop checks: signature policies refuse or sign
//!   here, and may replace the payload (the only place a forwarded payload is rewritten).
//! * [`Stage::egress_plain`]: every frame written to a plain charger, after translation: the last
//!   chance to rewrite a payload (the 1.6 transaction-id rewrite).
//!
//! It is also told of chargers and the uplink coming and going, of the store jobs and
//! node-originated CALLs it started, and ticked once a second. It acts only through its
//! [`Cx`], which queues actions and defers routing to after the stage returns.

use std::cell::OnceCell;
use std::time::Instant;

use routing::LinkId;
use serde_json::Value;
use wire::OcppVersion;
use wire::text::{Frame, OverlayFrame};

use super::calls::{CallOutcome, Caller, NodeCall};
use super::io::{Action, IfFull, Persisted, StoreJob, Token};
use super::{Core, Deferred, Owner};
use crate::core::metrics::Metrics;

/// What a stage decides for a frame from a plain charger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// On to the next stage, then into the overlay.
    Continue,
    /// Like `Continue`, and tell this stage of the CALL's answer or timeout with this mark
    /// ([`Stage::answered`]). CALLs only.
    Mark(u64),
    /// Answered here with this plain frame; nothing goes further.
    Reply(String),
    /// The stage keeps the frame; a CALL counts as waiting until the stage answers it
    /// ([`Cx::answer`]) or lets it go ([`Cx::release`]).
    Consumed,
    Drop,
}

/// A frame from a plain charger, as the stages see it.
pub struct FromPlain<'f, 'a> {
    pub link: LinkId,
    pub charger: &'f str,
    pub version: OcppVersion,
    /// Its CALLs waiting for an answer now, and how many it may have.
    pub outstanding: usize,
    pub max_pending: usize,
    pub frame: &'f Frame<'a>,
    pub(super) parsed: OnceCell<Result<Value, String>>,
}

impl FromPlain<'_, '_> {
    /// The payload as a JSON tree, parsed once for all the stages that ask.
    pub fn payload(&self) -> Result<&Value, &str> {
        let raw = self.frame.payload().map_or("null", |p| p.get());
        self.parsed
            .get_or_init(|| serde_json::from_str(raw).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(String::as_str)
    }

    pub fn action(&self) -> &str {
        self.frame.action().unwrap_or_default()
    }
}

/// A frame about to be written to a plain charger.
pub struct ToPlain<'f, 'a> {
    pub link: LinkId,
    pub charger: &'f str,
    pub version: OcppVersion,
    pub frame: &'f Frame<'a>,
}

/// Where a CALL or SEND being routed came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Translated by this node from a plain peer (a charger, or the CSMS at a hub).
    Plain,
    /// From an overlay neighbour.
    Node,
    /// Originated by this node.
    Local,
}

/// A CALL or SEND that routing will forward or deliver.
pub struct Passing<'f, 'a> {
    pub origin: Origin,
    /// It leaves this node toward a plain peer (a charger, or the CSMS socket at a hub).
    pub to_plain: bool,
    pub frame: &'f OverlayFrame<'a>,
}

impl Passing<'_, '_> {
    pub fn action(&self) -> &str {
        self.frame.frame.action().unwrap_or_default()
    }

    pub fn payload(&self) -> &str {
        self.frame.frame.payload().map_or("null", |p| p.get())
    }
}

/// What a stage decides for a frame being routed.
#[derive(Debug)]
pub enum Screen {
    Pass,
    /// Go on with this payload instead (signed, or its signatures removed).
    Payload(Box<serde_json::value::RawValue>),
    /// Refused: a CALL is answered with CALLERROR SecurityError and this description.
    Refuse(String),
    Drop,
}

/// The answer to a marked CALL.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// The CALLRESULT payload.
    Result(&'a str),
    Error,
    /// No answer in time. A stage may return the charger's answer instead of the timeout
    /// error (the edge answers a Heartbeat itself).
    Timeout,
}

pub trait Stage: Send {
    fn name(&self) -> &'static str;

    fn on_plain(&mut self, _frame: &FromPlain<'_, '_>, _cx: &mut Cx<'_>) -> Verdict {
        Verdict::Continue
    }

    /// A frame from an overlay link; `Drop` (or any verdict but `Continue`) stops it.
    fn on_link(&mut self, _link: LinkId, _frame: &OverlayFrame<'_>, _cx: &mut Cx<'_>) -> Verdict {
        Verdict::Continue
    }

    /// A CALL or SEND about to be forwarded or delivered; anything but `Pass` ends the chain.
    fn screen(&mut self, _frame: &Passing<'_, '_>, _cx: &mut Cx<'_>) -> Screen {
        Screen::Pass
    }

    /// `Some`: write this plain text instead.
    fn egress_plain(&mut self, _frame: &ToPlain<'_, '_>, _cx: &mut Cx<'_>) -> Option<String> {
        None
    }

    /// The answer to a CALL this stage marked (`id` is the charger's own message id); `Some`
    /// replaces what the charger is sent.
    fn answered(
        &mut self,
        _charger: &str,
        _id: &str,
        _mark: u64,
        _answer: Answer<'_>,
        _cx: &mut Cx<'_>,
    ) -> Option<String> {
        None
    }

    fn charger_up(&mut self, _link: LinkId, _charger: &str, _cx: &mut Cx<'_>) {}
    fn charger_down(&mut self, _link: LinkId, _charger: &str, _cx: &mut Cx<'_>) {}
    fn uplink(&mut self, _up: bool, _cx: &mut Cx<'_>) {}
    fn persisted(&mut self, _token: u64, _result: Persisted, _cx: &mut Cx<'_>) {}
    fn call_done(&mut self, _token: u64, _outcome: CallOutcome, _cx: &mut Cx<'_>) {}
    /// Once a second.
    fn tick(&mut self, _cx: &mut Cx<'_>) {}
    /// A section for the admin API's status, under this key.
    fn status(&self, _now: Instant) -> Option<(&'static str, Value)> {
        None
    }
}

/// What a stage may do: everything it asks for is queued, and routing waits until the stage
/// has returned.
pub struct Cx<'e> {
    core: &'e mut Core,
    stage: usize,
    now: Instant,
}

impl<'e> Cx<'e> {
    pub(super) fn new(core: &'e mut Core, stage: usize, now: Instant) -> Self {
        Cx { core, stage, now }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn own_id(&self) -> &str {
        &self.core.settings.own_id
    }

    pub fn metrics(&self) -> &Metrics {
        &self.core.metrics
    }

    /// Whether an uplink is up (the default route exists).
    pub fn uplink_up(&self) -> bool {
        self.core.uplink.is_some()
    }

    /// The link of a charger connected here.
    pub fn charger_link(&self, charger: &str) -> Option<LinkId> {
        self.core.chargers.get(charger).copied()
    }

    /// A fresh UUID v4 (§6.1).
    pub fn new_id(&self) -> String {
        self.core.ids.next()
    }

    /// Writes a plain frame to a charger (one that does not keep up is closed).
    pub fn send_plain(&mut self, link: LinkId, text: String) {
        self.core.send_plain(link, text, IfFull::Disconnect);
    }

    /// Answers a CALL this stage took over: it no longer counts as waiting.
    pub fn answer(&mut self, link: LinkId, text: String) {
        self.core.release(link);
        self.send_plain(link, text);
    }

    /// Lets go of a CALL this stage took over, without answering it.
    pub fn release(&mut self, link: LinkId) {
        self.core.release(link);
    }

    pub fn close(&mut self, link: LinkId, reason: &str) {
        self.core.close(link, reason);
    }

    pub fn security_event(&mut self, kind: &'static str, detail: impl std::fmt::Display) {
        self.core.security_event(kind, detail);
    }

    /// Runs a store job; its result comes back to [`Stage::persisted`] under the returned
    /// token. Jobs of one lane finish in order.
    pub fn persist(&mut self, lane: &str, job: StoreJob) -> u64 {
        let token = self.core.token(Owner::Stage(self.stage));
        self.core.actions.push_back(Action::Persist {
            token: Token(token),
            lane: lane.to_owned(),
            job,
        });
        token
    }

    /// Originates a CALL; its outcome comes back to [`Stage::call_done`] with `token`.
    pub fn call(&mut self, token: u64, call: NodeCall) {
        self.core
            .deferred
            .push(Deferred::Call(Caller::Stage(self.stage, token), call));
    }

    /// Stops waiting for the answers to this stage's CALL under `token`.
    pub fn cancel_call(&mut self, token: u64) {
        self.core.calls.cancel(Caller::Stage(self.stage, token));
    }

    /// Announces `id` as reachable through this node (a charger that is away but has
    /// messages queued): the least preferred route of that id.
    pub fn announce_here(&mut self, id: &str, version: Option<OcppVersion>) {
        self.core.announce_here(id, version);
    }

    pub fn withdraw_here(&mut self, id: &str) {
        self.core.withdraw_here(id, self.now);
    }
}
