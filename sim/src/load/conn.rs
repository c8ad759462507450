//! One load-generating charger: connect, boot, wait for the plan, then run the closed, open or
//! idle loop until the plan's end.
//!
//! The per-CALL path formats the Heartbeat frame straight into its buffer, writes it, and reads
//! the answer with the `wire` decoder (outer array only, no JSON tree). It takes no lock, touches
//! no shared counter and arms no timer: one timer per charger fires at the plan's end or when
//! the outstanding CALL may have timed out, and is re-armed only then.

use std::fmt::Write as _;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::task::AtomicWaker;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use wire::ErrorCode;
use wire::OcppVersion;
use wire::text::{Body, Frame, decode_plain};

use super::{Ctx, Mode, Plan, Tally, offset};
use crate::payloads::{v16, v201};

/// How long the final close handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs charger `index` (0-based; its id ends in `index + 1`). Reports on `booted` whether it
/// connected and booted, then waits for the plan.
pub async fn run(
    ctx: Arc<Ctx>,
    index: u32,
    mut plan: watch::Receiver<Option<Plan>>,
    booted: mpsc::UnboundedSender<bool>,
) -> Tally {
    let id = format!("{}{}", ctx.prefix, index + 1);
    let mut tally = Tally::default();
    let opened = {
        // The semaphore is never closed; without a permit the charger still goes ahead.
        let _permit = ctx.connect_gate.acquire().await;
        Charger::open(&ctx, &id).await
    };
    let mut charger = match opened {
        Ok(charger) => charger,
        Err(e) => {
            tracing::warn!(charger = %id, "{e:#}");
            tally.failed = true;
            tally.errors += 1;
            let _ = booted.send(false);
            return tally;
        }
    };
    let _ = booted.send(true);
    drop(booted);
    let result = async {
        let plan = charger.wait_for_plan(&mut plan).await?;
        match ctx.mode {
            Mode::Closed => charger.closed_loop(plan, &mut tally).await,
            Mode::Open => charger.open_loop(plan, index, &mut tally).await,
            Mode::Idle => Ok(()),
        }
    }
    .await;
    match result {
        Ok(()) => charger.close().await,
        Err(e) => {
            tracing::warn!(charger = %id, "{e:#}");
            tally.failed = true;
            tally.errors += 1;
        }
    }
    tally
}

struct Charger<'a> {
    ws: WebSocketStream<TcpStream>,
    ctx: &'a Ctx,
    id: &'a str,
    /// Message ids are numbered per connection from 1 (the boot).
    next_id: u64,
}

/// What an incoming frame means to the waiting charger.
enum Incoming {
    /// A CALLRESULT to the CALL with this id.
    Result(u64),
    /// A CALLERROR to the CALL with this id.
    Error(u64),
    /// Anything else, already dealt with: a server CALL answered, a stray frame ignored.
    Other,
}

impl<'a> Charger<'a> {
    /// Connects and boots; fails unless the boot is Accepted within the timeout.
    async fn open(ctx: &'a Ctx, id: &'a str) -> Result<Self> {
        let url = format!("{}/{id}", ctx.base_url);
        let subprotocol = ctx.version.subprotocol();
        let (ws, agreed) =
            crate::ws::connect(&url, Some(subprotocol), ctx.ws_config, ctx.timeout).await?;
        if agreed.as_deref() != Some(subprotocol) {
            bail!("{url} did not accept subprotocol {subprotocol} (answered {agreed:?})");
        }
        let mut charger = Charger {
            ws,
            ctx,
            id,
            next_id: 1,
        };
        let payload = match ctx.version {
            OcppVersion::V16 => v16::boot_notification(id),
            _ => v201::boot_notification(id),
        };
        let raw = serde_json::value::to_raw_value(&payload)?;
        let boot_id = charger.take_id().to_string();
        let text = Frame::call(boot_id.as_str(), "BootNotification", &raw).to_plain_string();
        charger.send(text).await?;
        let deadline = Instant::now() + ctx.timeout;
        loop {
            let Ok(text) = timeout_at(deadline, charger.next_text()).await else {
                bail!("no answer to BootNotification within {:?}", ctx.timeout);
            };
            let text = text?;
            if let Ok(frame) = decode_plain(&text, &ctx.limits) {
                if frame.id == boot_id.as_str() {
                    match &frame.body {
                        Body::CallResult { payload } => {
                            let answer: Value = serde_json::from_str(payload.get())
                                .context("the BootNotification answer is not JSON")?;
                            if answer.get("status").and_then(Value::as_str) != Some("Accepted") {
                                bail!("BootNotification not accepted: {answer}");
                            }
                            return Ok(charger);
                        }
                        Body::CallError(e) => {
                            bail!(
                                "BootNotification got CALLERROR {}: {}",
                                e.code,
                                e.description
                            )
                        }
                        _ => {}
                    }
                }
            }
            charger.handle(&text).await?;
        }
    }

    /// Serves the connection (pings, server CALLs) until the plan comes.
    async fn wait_for_plan(&mut self, plan: &mut watch::Receiver<Option<Plan>>) -> Result<Plan> {
        loop {
            if let Some(plan) = *plan.borrow_and_update() {
                return Ok(plan);
            }
            tokio::select! {
                changed = plan.changed() => {
                    if changed.is_err() {
                        bail!("the run was abandoned");
                    }
                }
                text = self.next_text() => {
                    let text = text?;
                    self.handle(&text).await?;
                }
            }
        }
    }

    /// Closed loop: the next Heartbeat as soon as the previous one is answered (or timed out).
    async fn closed_loop(&mut self, plan: Plan, tally: &mut Tally) -> Result<()> {
        sleep_until(plan.start).await;
        let timeout = self.ctx.timeout;
        let mut timer = pin!(sleep_until(plan.end.min(Instant::now() + timeout)));
        loop {
            let sent_at = Instant::now();
            if sent_at >= plan.end {
                return Ok(());
            }
            let id = self.send_heartbeat().await?;
            let measured = sent_at >= plan.measure_from;
            tally.sent += u64::from(measured);
            loop {
                tokio::select! {
                    biased;
                    text = self.next_text() => {
                        let text = text?;
                        let incoming = self.handle(&text).await?;
                        let now = Instant::now();
                        match incoming {
                            Incoming::Result(got) | Incoming::Error(got) if got == id && now >= plan.end => {
                                // Answered after the window: it was in flight at the stop.
                                return Ok(());
                            }
                            Incoming::Result(got) if got == id => {
                                if measured {
                                    tally.answered += 1;
                                    tally.record(now - sent_at);
                                }
                                break;
                            }
                            Incoming::Error(got) if got == id => {
                                tally.errors += u64::from(measured);
                                break;
                            }
                            _ => {}
                        }
                    }
                    () = &mut timer => {
                        let now = Instant::now();
                        if now >= plan.end {
                            return Ok(());
                        }
                        let deadline = sent_at + timeout;
                        if now >= deadline {
                            tracing::debug!(charger = self.id, id, "no answer within the timeout");
                            tally.errors += u64::from(measured);
                            timer.as_mut().reset(plan.end.min(now + timeout));
                            break;
                        }
                        timer.as_mut().reset(plan.end.min(deadline));
                    }
                }
            }
        }
    }

    /// Open loop: this charger's share of the schedule (sends `index`, `index + N`, … of the
    /// whole run), one outstanding CALL at a time, later ones queued; latency from the schedule.
    async fn open_loop(&mut self, plan: Plan, index: u32, tally: &mut Tally) -> Result<()> {
        let ctx = self.ctx;
        let n = u64::from(ctx.chargers);
        let due_at = |j: u64| plan.start + offset(u64::from(index) + j * n, ctx.rate);
        let waker = &ctx.wakers[index as usize];
        let timeout = ctx.timeout;
        // Sends 0..due have fallen due; 0..next have been sent; `next_due` is `due_at(due)`.
        let (mut due, mut next) = (0u64, 0u64);
        let mut next_due = due_at(0);
        // The CALL awaiting its answer: its id, scheduled time and actual send time.
        let mut outstanding: Option<(u64, Instant, Instant)> = None;
        let mut timer = pin!(sleep_until(plan.end.min(Instant::now() + timeout)));
        // Whether the charger was idle until its pacer woke it, so that its next send's lag is
        // the generator's alone.
        let mut woken = false;
        loop {
            let now = Instant::now();
            if now >= plan.end {
                return Ok(());
            }
            while next_due <= now && next_due < plan.end {
                due += 1;
                next_due = due_at(due);
            }
            if outstanding.is_none() && next < due {
                let scheduled = due_at(next);
                next += 1;
                let id = self.send_heartbeat().await?;
                outstanding = Some((id, scheduled, now));
                if scheduled >= plan.measure_from {
                    tally.sent += 1;
                    if woken {
                        tally.lag.add(now - scheduled);
                    }
                }
                woken = false;
            }
            // Only an idle charger needs waking for its next send; a busy one sends on answer.
            let idle = outstanding.is_none() && next_due < plan.end;
            tokio::select! {
                biased;
                text = self.next_text() => {
                    let text = text?;
                    let incoming = self.handle(&text).await?;
                    let Some((id, scheduled, _)) = outstanding else { continue };
                    let now = Instant::now();
                    if now >= plan.end {
                        return Ok(());
                    }
                    let measured = scheduled >= plan.measure_from;
                    match incoming {
                        Incoming::Result(got) if got == id => {
                            if measured {
                                tally.answered += 1;
                                tally.record(now - scheduled);
                            }
                            outstanding = None;
                        }
                        Incoming::Error(got) if got == id => {
                            tally.errors += u64::from(measured);
                            outstanding = None;
                        }
                        _ => {}
                    }
                }
                () = wait_until(waker, next_due), if idle => woken = true,
                () = &mut timer => {
                    let now = Instant::now();
                    if now >= plan.end {
                        return Ok(());
                    }
                    let mut wake = now + timeout;
                    if let Some((id, scheduled, sent_at)) = outstanding {
                        if now >= sent_at + timeout {
                            tracing::debug!(charger = self.id, id, "no answer within the timeout");
                            tally.errors += u64::from(scheduled >= plan.measure_from);
                            outstanding = None;
                        } else {
                            wake = sent_at + timeout;
                        }
                    }
                    timer.as_mut().reset(plan.end.min(wake));
                }
            }
        }
    }

    /// Closes politely; failures no longer matter.
    async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::from_static("load done"),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.close(Some(frame))).await;
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `[2,"<id>","Heartbeat",{}]` (the same in 1.6 and 2.0.1); returns the id.
    async fn send_heartbeat(&mut self) -> Result<u64> {
        let id = self.take_id();
        let mut text = String::with_capacity(48);
        let _ = write!(text, r#"[2,"{id}","Heartbeat",{{}}]"#);
        self.send(text).await?;
        Ok(id)
    }

    async fn send(&mut self, text: String) -> Result<()> {
        self.ws
            .send(Message::text(text))
            .await
            .context("sending a frame")
    }

    /// The next text message. Pings are answered by tungstenite; binary frames are ignored; a
    /// close or an error ends the charger. Cancel-safe: a message is consumed only when returned.
    async fn next_text(&mut self) -> Result<Utf8Bytes> {
        loop {
            match self.ws.next().await {
                None => bail!("connection closed by the server"),
                Some(Err(e)) => return Err(e).context("WebSocket error"),
                Some(Ok(Message::Text(text))) => return Ok(text),
                Some(Ok(Message::Close(frame))) => {
                    bail!("connection closed by the server: {frame:?}")
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads one frame: answers carry their numeric id back; a server CALL is answered with
    /// NotImplemented (the load generator serves none); anything else is ignored.
    async fn handle(&mut self, text: &str) -> Result<Incoming> {
        let frame = match decode_plain(text, &self.ctx.limits) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(charger = self.id, error = %e, "undecodable frame");
                return Ok(Incoming::Other);
            }
        };
        match &frame.body {
            Body::CallResult { .. } => {
                Ok(frame.id.parse().map_or(Incoming::Other, Incoming::Result))
            }
            Body::CallError(e) => {
                tracing::debug!(charger = self.id, id = %frame.id, code = %e.code, description = %e.description, "CALLERROR");
                Ok(frame.id.parse().map_or(Incoming::Other, Incoming::Error))
            }
            Body::Call { action, .. } => {
                tracing::debug!(charger = self.id, %action, "answering a server CALL with NotImplemented");
                let code = ErrorCode::NotImplemented.spelling(self.ctx.version);
                let reply = Frame::error(
                    frame.id.as_ref(),
                    code,
                    "the load generator serves no CSMS calls",
                )
                .to_plain_string();
                self.send(reply).await?;
                Ok(Incoming::Other)
            }
            Body::CallResultError(_) | Body::Send { .. } => Ok(Incoming::Other),
        }
    }
}

/// Resolves once `at` has passed. The pacer thread wakes this charger through `waker` when one
/// of its sends falls due; registering before checking the time means no wake is missed.
fn wait_until(waker: &AtomicWaker, at: Instant) -> impl Future<Output = ()> + '_ {
    poll_fn(move |cx| {
        waker.register(cx.waker());
        if Instant::now() >= at {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}
