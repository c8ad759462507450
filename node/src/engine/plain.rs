//! The plain charger side of the engine (ARCHITECTURE §3.2, §6.1): a charger's frames are
//! decoded once here, shown to the stages, and translated into the overlay; frames toward a
//! charger are translated back, shown to the stages, and queued one CALL at a time.

use std::cell::OnceCell;
use std::collections::VecDeque;
use std::time::Instant;

use routing::correlation;
use routing::{Ingress, LinkId};
use serde_json::Value;
use wire::text::{Body, Frame, OverlayFrame, decode_overlay, decode_plain};
use wire::{ErrorCode, MessageType, OcppVersion, Route};

use super::stages::{Answer, FromPlain, ToPlain, Verdict};
use super::{
    CHARGER_CALL_QUEUE, CHARGER_CONNECTION_STATUS, ChargerLink, Core, Deferred, DownCall, Engine,
    IfFull, Link, UpCall,
};

impl Engine {
    pub(super) fn charger_up(
        &mut self,
        link: LinkId,
        id: String,
        version: OcppVersion,
        max_pending: usize,
        now: Instant,
    ) {
        let core = &mut self.core;
        // A newer connection of the same charger replaces the older one (§4): route to it at
        // once, not only when the older session has finished closing.
        if let Some(old) = core.chargers.get(&id).copied()
            && old != link
        {
            core.table.remove_link(old, now);
        }
        let route = routing::RouteEntry {
            dest: id.clone(),
            link,
            priority: 0,
            source: routing::Source::Connect,
            expires: None,
            version: Some(version),
        };
        if let Err(e) = core.table.insert(route) {
            tracing::error!(charger = %id, error = %e, "cannot route to the charger");
        }
        core.announce.changed(&id);
        core.chargers.insert(id.clone(), link);
        core.links.insert(
            link,
            Link::Charger(ChargerLink {
                id: id.clone(),
                version,
                max_pending,
                outstanding: 0,
                busy: None,
                queue: VecDeque::new(),
            }),
        );
        if let Some(hub) = &mut core.hub {
            hub.reachable(&id, Some(version));
        }
        core.flush_hub();
        self.each_stage(now, |stage, cx| stage.charger_up(link, &id, cx));
    }

    /// A charger's frame: a CALL goes up under a fresh UUID (§6.1), a reply answers a CALL
    /// toward it, and a bad frame gets the CALLERROR of §6.5.
    pub(super) fn on_charger_text(&mut self, link: LinkId, text: &str, now: Instant) {
        let Some(c) = self.core.charger(link) else {
            return;
        };
        let (charger, version) = (c.id.clone(), c.version);
        let (outstanding, max_pending) = (c.outstanding, c.max_pending);
        let limits = self.core.settings.limits;
        let frame = match decode_plain(text, &limits) {
            Ok(f) => f,
            Err(e) => {
                if decode_overlay(text, &limits).is_ok() {
                    self.core.security_event(
                        "overlay_frame_from_charger",
                        format_args!(
                            "charger {charger:?} sent an overlay frame on a plain connection; refused"
                        ),
                    );
                } else {
                    tracing::info!(charger = %charger, error = %e, "malformed frame");
                }
                let reply = self
                    .core
                    .error(version, e.reply_id(), e.error_code(), &e.to_string());
                return self.core.send_plain(link, reply, IfFull::Disconnect);
            }
        };
        let message_type = frame.message_type();
        if !message_type.allowed_in(version) {
            let why = format!(
                "message type {} does not exist in {version}",
                message_type.number()
            );
            let reply =
                self.core
                    .error(version, &frame.id, ErrorCode::MessageTypeNotSupported, &why);
            return self.core.send_plain(link, reply, IfFull::Disconnect);
        }
        let view = FromPlain {
            link,
            charger: &charger,
            version,
            outstanding,
            max_pending,
            frame: &frame,
            parsed: OnceCell::new(),
        };
        let mut mark = None;
        for i in 0..self.stages.len() {
            let (stages, mut cx) = self.split(i, now);
            match stages[i].on_plain(&view, &mut cx) {
                Verdict::Continue => {}
                Verdict::Mark(m) => mark = Some((i, m)),
                Verdict::Reply(text) => {
                    return self.core.send_plain(link, text, IfFull::Disconnect);
                }
                Verdict::Consumed => {
                    if message_type == MessageType::Call
                        && let Some(c) = self.core.charger_mut(link)
                    {
                        c.outstanding += 1;
                    }
                    return;
                }
                Verdict::Drop => return,
            }
        }
        drop(view);
        let overlay = match message_type {
            MessageType::Call => {
                let upstream = self.core.ids.next();
                let deadline = now + self.core.settings.request_timeout;
                match correlation::plain_call_to_overlay(
                    &mut self.core.up,
                    &charger,
                    frame,
                    upstream,
                    deadline,
                    UpCall { link, mark },
                ) {
                    Ok(f) => {
                        if let Some(c) = self.core.charger_mut(link) {
                            c.outstanding += 1;
                        }
                        f
                    }
                    Err(e) => {
                        tracing::warn!(charger = %charger, error = %e, "CALL not forwarded");
                        let reply = Frame::error(e_id(text), "GenericError", "busy");
                        return self.core.send_plain(
                            link,
                            reply.to_plain_string(),
                            IfFull::Disconnect,
                        );
                    }
                }
            }
            MessageType::Send => OverlayFrame {
                dest: Route::single(routing::CSMS),
                path: Route::single(charger.clone()),
                frame,
            },
            _ => match correlation::plain_reply_to_overlay(&mut self.core.down, &charger, frame) {
                Ok((f, _)) => {
                    self.core.charger_answered(link);
                    f
                }
                Err(e) => {
                    return tracing::debug!(charger = %charger, error = %e, "unsolicited reply dropped");
                }
            },
        };
        self.route(Ingress::Plain { link }, overlay, now);
    }

    /// An overlay frame for the charger on `link`: translated to plain OCPP-J.
    pub(super) fn deliver_to_charger(
        &mut self,
        link: LinkId,
        frame: OverlayFrame<'_>,
        now: Instant,
    ) {
        let Some(c) = self.core.charger(link) else {
            return;
        };
        let (charger, version) = (c.id.clone(), c.version);
        match frame.frame.message_type() {
            MessageType::Call => {
                let deadline = now + self.core.settings.request_timeout;
                let reply_to = frame.path.first().to_owned();
                let id = frame.frame.id.clone().into_owned();
                match correlation::overlay_call_to_plain(
                    &mut self.core.down,
                    frame,
                    deadline,
                    DownCall { link },
                ) {
                    Ok(plain) => {
                        let text = self.egress(link, &charger, version, &plain, now);
                        self.core.call_charger(link, id, text, &reply_to);
                    }
                    Err(e) => {
                        tracing::warn!(%link, error = %e, "CALL toward a charger not delivered")
                    }
                }
            }
            MessageType::Send => {
                if frame.frame.action() == Some(CHARGER_CONNECTION_STATUS) {
                    return self.core.connection_status(link, &frame);
                }
                if version == OcppVersion::V21 {
                    let text = self.egress(link, &charger, version, &frame.frame, now);
                    self.core.send_plain(link, text, IfFull::Disconnect);
                }
            }
            _ => match correlation::overlay_reply_to_plain(&mut self.core.up, frame) {
                Ok((plain, pending)) => {
                    let to = pending.data.link;
                    self.core.release(to);
                    // The CALL's send time is its deadline less the timeout it was given.
                    if let Some(sent) = pending
                        .deadline
                        .checked_sub(self.core.settings.request_timeout)
                    {
                        let took = now.saturating_duration_since(sent);
                        self.core.metrics.relay_latency.observe(took.as_secs_f64());
                    }
                    let mut text = None;
                    if let Some((i, m)) = pending.data.mark {
                        let answer = match &plain.body {
                            Body::CallResult { payload } => Answer::Result(payload.get()),
                            _ => Answer::Error,
                        };
                        let (stages, mut cx) = self.split(i, now);
                        text = stages[i].answered(&charger, &plain.id, m, answer, &mut cx);
                    }
                    if !plain.message_type().allowed_in(version) {
                        return;
                    }
                    let text =
                        text.unwrap_or_else(|| self.egress(to, &charger, version, &plain, now));
                    self.core.send_plain(to, text, IfFull::Disconnect);
                }
                Err(e) => tracing::debug!(%link, error = %e, "reply for a charger dropped"),
            },
        }
    }

    /// The plain text of a frame toward a charger, after the stages had their say.
    fn egress(
        &mut self,
        link: LinkId,
        charger: &str,
        version: OcppVersion,
        frame: &Frame<'_>,
        now: Instant,
    ) -> String {
        let view = ToPlain {
            link,
            charger,
            version,
            frame,
        };
        let mut rewritten = None;
        for i in 0..self.stages.len() {
            let (stages, mut cx) = self.split(i, now);
            if let Some(text) = stages[i].egress_plain(&view, &mut cx) {
                rewritten = Some(text);
                break;
            }
        }
        rewritten.unwrap_or_else(|| frame.to_plain_string())
    }

    /// Charger CALLs nobody answered in time: the charger is told under its own id, unless the
    /// stage that marked the CALL answers it instead (a silently dead uplink, a blackhole, is
    /// not known to be down until its pings fail).
    pub(super) fn expire_up(&mut self, now: Instant) {
        for (key, pending) in self.core.up.expire(now) {
            let link = pending.data.link;
            self.core.release(link);
            tracing::info!(charger = %key.source, "CALL to the CSMS timed out");
            let mut text = None;
            if let Some((i, m)) = pending.data.mark {
                let (stages, mut cx) = self.split(i, now);
                text = stages[i].answered(
                    &key.source,
                    &pending.original_id,
                    m,
                    Answer::Timeout,
                    &mut cx,
                );
            }
            let text = text.unwrap_or_else(|| {
                Frame::error(pending.original_id.as_str(), "GenericError", "timeout")
                    .to_plain_string()
            });
            self.core.send_plain(link, text, IfFull::Disconnect);
        }
    }

    /// CALLs toward chargers nobody answered in time: the caller's side answers on its own
    /// timer (the hub toward the CSMS); here only the charger's queue moves on.
    pub(super) fn expire_down(&mut self, now: Instant) {
        for (key, pending) in self.core.down.expire(now) {
            tracing::info!(charger = %key.source, id = %key.id, "charger did not answer a CALL in time");
            let link = pending.data.link;
            let busy = self
                .core
                .charger(link)
                .is_some_and(|c| c.busy.as_deref() == Some(key.id.as_str()));
            if busy {
                self.core.charger_answered(link);
            }
            self.core.node_call_timed_out(&pending.reply_to, &key.id);
        }
    }
}

/// The id of a frame that failed translation; only CALLs reach that point, whose id decodes.
fn e_id(text: &str) -> String {
    decode_plain(text, &wire::Limits::default())
        .map(|f| f.id.into_owned())
        .unwrap_or_else(|_| "-1".to_owned())
}

impl Core {
    /// A CALLERROR in the spelling of the charger's version (§6.5).
    pub(super) fn error(
        &self,
        version: OcppVersion,
        id: &str,
        code: ErrorCode,
        description: &str,
    ) -> String {
        self.metrics.frame_errors.inc();
        Frame::error(id, code.spelling(version), description).to_plain_string()
    }

    /// One CALL at a time toward a charger; later ones wait in a bounded queue (§6.1).
    pub(super) fn call_charger(&mut self, link: LinkId, id: String, text: String, reply_to: &str) {
        let Some(c) = self.charger_mut(link) else {
            return;
        };
        if c.busy.is_none() {
            c.busy = Some(id);
            return self.send_plain(link, text, IfFull::Disconnect);
        }
        if c.queue.len() < CHARGER_CALL_QUEUE {
            c.queue.push_back((id, text));
            return;
        }
        let charger = c.id.clone();
        let _ = self.down.take(&charger, &id);
        let error = OverlayFrame {
            dest: Route::single(reply_to.to_owned()),
            path: Route::single(charger.clone()),
            frame: Frame::error(id, "GenericError", "busy"),
        };
        tracing::warn!(charger = %charger, "CALL queue toward the charger is full; answered busy");
        self.deferred.push(Deferred::Plain(link, error.to_text()));
    }

    /// The charger answered (or timed out on) its outstanding CALL: send the next one.
    pub(super) fn charger_answered(&mut self, link: LinkId) {
        let Some(c) = self.charger_mut(link) else {
            return;
        };
        c.busy = None;
        if let Some((id, text)) = c.queue.pop_front() {
            c.busy = Some(id);
            self.send_plain(link, text, IfFull::Disconnect);
        }
    }

    /// Edge: the hub says the CSMS refused this charger; close it so it retries later (§6.2).
    fn connection_status(&mut self, link: LinkId, frame: &OverlayFrame<'_>) {
        let payload: Value = frame
            .frame
            .payload()
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or(Value::Null);
        if payload["status"] != "Refused" {
            return;
        }
        let Some(c) = self.charger(link) else {
            return;
        };
        tracing::warn!(
            charger = %c.id,
            http_status = %payload["httpStatus"],
            "the CSMS refused this charger; closing its connection"
        );
        self.close(link, "the CSMS refused this charger");
    }

    /// A node-originated CALL toward a charger here got no answer in time.
    fn node_call_timed_out(&mut self, origin: &str, id: &str) {
        if !self.calls.is_empty() && self.calls.contains(origin, id) {
            let error = OverlayFrame {
                dest: Route::single(origin.to_owned()),
                path: Route::single(self.settings.own_id.clone()),
                frame: Frame::error(id, "GenericError", "timeout"),
            };
            self.deferred.push(Deferred::Local(error.to_text()));
        }
    }
}
