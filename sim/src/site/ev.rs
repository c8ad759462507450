//! One site charger with an EV plugged in: it boots, authorizes, starts one transaction and
//! keeps it running until the process ends, reporting its draw every meter interval and obeying
//! the charging profiles the CSMS sets.
//!
//! Unlike `crate::session` (scripted chargers with stateless answers), a site charger's answers
//! change its state (SetChargingProfile moves its limit), and it lives forever: a lost
//! connection is opened again every second and the session resumes where it was: no second
//! boot, the same transaction. Any CSMS CALL is served while one of its own is outstanding.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::SinkExt as _;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use wire::text::{Body, Frame, decode_plain};
use wire::{ErrorCode, Limits, OcppVersion};

use super::limit::{Clear, Profile};
use super::samples;
use super::state::Site;
use crate::payloads::{self, Reply, v16, v201};

/// How long a CALL waits for its answer before the connection counts as lost.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between connection attempts.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// The heartbeat interval when the boot answer has no usable one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(60);
const MAX_FRAME: usize = 64 * 1024;

/// What one charger is told at start.
#[derive(Debug, Clone)]
pub struct EvConfig {
    pub index: usize,
    pub id: String,
    pub url: String,
    pub version: OcppVersion,
    pub id_tag: String,
    pub meter_interval: Duration,
    /// When to first connect.
    pub start_at: Instant,
}

enum Transaction {
    V16(i64),
    V201 { id: String, seq_no: u32 },
}

/// What survives a lost connection.
#[derive(Default)]
struct Progress {
    heartbeat: Option<Duration>,
    transaction: Option<Transaction>,
}

/// Runs the charger until the process ends.
pub async fn run(site: Arc<Site>, cfg: EvConfig) {
    sleep_until(cfg.start_at).await;
    let mut progress = Progress::default();
    loop {
        match Link::open(&cfg).await {
            Ok(mut link) => {
                site.set_connected(cfg.index, true);
                let Err(e) = session(&site, &cfg, &mut link, &mut progress).await;
                site.set_connected(cfg.index, false);
                tracing::warn!(charger = %cfg.id, "connection lost: {e:#}");
            }
            Err(e) => tracing::debug!(charger = %cfg.id, "cannot connect: {e:#}"),
        }
        sleep(RECONNECT_PAUSE).await;
    }
}

/// Boot (once), status, authorize and start (once), then meter values and heartbeats forever.
/// Returns only when the connection fails.
async fn session(
    site: &Site,
    cfg: &EvConfig,
    link: &mut Link,
    progress: &mut Progress,
) -> Result<std::convert::Infallible> {
    let v16 = cfg.version == OcppVersion::V16;
    let ctx = Ctx { site, cfg };
    let heartbeat = match progress.heartbeat {
        Some(interval) => interval,
        None => {
            let interval = boot(&ctx, link).await?;
            progress.heartbeat = Some(interval);
            interval
        }
    };
    let status = match (v16, progress.transaction.is_some()) {
        (true, false) => v16::status_notification(1, "Preparing"),
        (true, true) => v16::status_notification(1, "Charging"),
        (false, _) => v201::status_notification(1, 1, "Occupied"),
    };
    link.call(&ctx, "StatusNotification", &status).await?;
    if progress.transaction.is_none() {
        progress.transaction = Some(start(&ctx, link).await?);
        site.set_charging(cfg.index, true);
        if v16 {
            let charging = v16::status_notification(1, "Charging");
            link.call(&ctx, "StatusNotification", &charging).await?;
        }
    }
    let mut next_meter = Instant::now() + cfg.meter_interval;
    let mut next_heartbeat = Instant::now() + heartbeat;
    loop {
        link.serve_until(&ctx, next_meter.min(next_heartbeat))
            .await?;
        let now = Instant::now();
        if now >= next_meter {
            next_meter = now + cfg.meter_interval;
            let (draw_a, wh) = site.ev_meter(cfg.index);
            let phases = site.physics().phases;
            let (action, payload) = match &mut progress.transaction {
                Some(Transaction::V16(id)) => (
                    "MeterValues",
                    samples::v16_meter_values(*id, phases, draw_a, wh),
                ),
                Some(Transaction::V201 { id, seq_no }) => {
                    *seq_no += 1;
                    (
                        "TransactionEvent",
                        samples::v201_updated(id, *seq_no, phases, draw_a, wh),
                    )
                }
                None => bail!("no transaction to report on"),
            };
            link.call(&ctx, action, &payload).await?;
        }
        if now >= next_heartbeat {
            next_heartbeat = now + heartbeat;
            link.call(&ctx, "Heartbeat", &json!({})).await?;
        }
    }
}

/// BootNotification until Accepted (waiting the answered interval after Pending or Rejected);
/// returns the heartbeat interval.
async fn boot(ctx: &Ctx<'_>, link: &mut Link) -> Result<Duration> {
    let payload = match ctx.cfg.version {
        OcppVersion::V16 => v16::boot_notification(&ctx.cfg.id),
        _ => v201::boot_notification(&ctx.cfg.id),
    };
    loop {
        let answer = link.call(ctx, "BootNotification", &payload).await?;
        let interval = answer
            .as_ref()
            .and_then(|a| a.get("interval"))
            .and_then(Value::as_u64)
            .filter(|&s| s > 0)
            .map_or(DEFAULT_HEARTBEAT, Duration::from_secs);
        let status = answer.as_ref().and_then(|a| a.get("status")?.as_str());
        if status == Some("Accepted") {
            return Ok(interval);
        }
        tracing::info!(charger = %ctx.cfg.id, ?status, "boot not accepted; trying again");
        link.serve_until(ctx, Instant::now() + interval.min(DEFAULT_HEARTBEAT))
            .await?;
    }
}

/// Authorize, then start the one transaction. A rejected id tag is logged, not fatal: the site
/// simulation is about load, not authorization.
async fn start(ctx: &Ctx<'_>, link: &mut Link) -> Result<Transaction> {
    let tag = &ctx.cfg.id_tag;
    let (_, wh) = ctx.site.ev_meter(ctx.cfg.index);
    match ctx.cfg.version {
        OcppVersion::V16 => {
            let auth = link.call(ctx, "Authorize", &v16::authorize(tag)).await?;
            log_auth(ctx, auth.as_ref(), "/idTagInfo/status");
            let payload = v16::start_transaction(1, tag, wh.round() as i64);
            let answer = link.call(ctx, "StartTransaction", &payload).await?;
            let id = answer
                .as_ref()
                .and_then(|a| a.get("transactionId")?.as_i64())
                .ok_or_else(|| anyhow!("StartTransaction answer has no transactionId"))?;
            Ok(Transaction::V16(id))
        }
        _ => {
            let auth = link.call(ctx, "Authorize", &v201::authorize(tag)).await?;
            log_auth(ctx, auth.as_ref(), "/idTokenInfo/status");
            let id = uuid::Uuid::new_v4().to_string();
            let payload = v201::transaction_event("Started", &id, 0, tag, wh.round() as i64);
            link.call(ctx, "TransactionEvent", &payload).await?;
            Ok(Transaction::V201 { id, seq_no: 0 })
        }
    }
}

fn log_auth(ctx: &Ctx<'_>, answer: Option<&Value>, pointer: &str) {
    let status = answer.and_then(|a| a.pointer(pointer)?.as_str());
    if status != Some("Accepted") {
        tracing::warn!(charger = %ctx.cfg.id, ?status, "id tag not accepted; charging anyway");
    }
}

/// What answering a CSMS CALL needs.
struct Ctx<'a> {
    site: &'a Site,
    cfg: &'a EvConfig,
}

impl Ctx<'_> {
    /// The charger's answer to a CSMS CALL: profiles change its limit; the rest get the
    /// simulator's minimal answers, and what those do not know is NotSupported.
    fn answer(&self, action: &str, request: &Value) -> Reply {
        let (i, version) = (self.cfg.index, self.cfg.version);
        let v16 = version == OcppVersion::V16;
        let status = |s: &str| Reply::Result(json!({ "status": s }));
        match action {
            "SetChargingProfile" => {
                let phases = self.site.physics().phases;
                let profile = if v16 {
                    Profile::from_v16(request, phases)
                } else {
                    Profile::from_v201(request, phases)
                };
                match profile {
                    Some(p) => {
                        tracing::info!(charger = %self.cfg.id, ?p, "charging profile set");
                        self.site.set_profile(i, p);
                        status("Accepted")
                    }
                    None => status("Rejected"),
                }
            }
            "ClearChargingProfile" => {
                let clear = if v16 {
                    Clear::from_v16(request)
                } else {
                    Clear::from_v201(request)
                };
                if self.site.clear_profiles(i, &clear) {
                    status("Accepted")
                } else {
                    status("Unknown")
                }
            }
            _ => match payloads::answer(version, action, request) {
                Reply::Error(..) => Reply::Error(
                    ErrorCode::NotSupported,
                    "the site simulator does not support this action",
                ),
                reply => reply,
            },
        }
    }
}

/// One WebSocket connection and its CALL numbering.
struct Link {
    ws: WebSocketStream<TcpStream>,
    version: OcppVersion,
    next_id: u64,
    limits: Limits,
}

impl Link {
    async fn open(cfg: &EvConfig) -> Result<Link> {
        let url = format!("{}/{}", cfg.url.trim_end_matches('/'), cfg.id);
        let subprotocol = cfg.version.subprotocol();
        let (ws, agreed) = crate::ws::connect(
            &url,
            Some(subprotocol),
            crate::ws::config(MAX_FRAME),
            CALL_TIMEOUT,
        )
        .await?;
        if agreed.as_deref() != Some(subprotocol) {
            bail!("{url} did not accept subprotocol {subprotocol} (answered {agreed:?})");
        }
        Ok(Link {
            ws,
            version: cfg.version,
            next_id: 1,
            limits: Limits::default(),
        })
    }

    /// Sends a CALL and waits for its answer: `Some(payload)` for a CALLRESULT, `None` for a
    /// CALLERROR (logged). No answer in time counts as a lost connection.
    async fn call(
        &mut self,
        ctx: &Ctx<'_>,
        action: &str,
        payload: &Value,
    ) -> Result<Option<Value>> {
        let id = self.next_id.to_string();
        self.next_id += 1;
        let raw = serde_json::value::to_raw_value(payload)?;
        self.send(Frame::call(id.as_str(), action, &raw).to_plain_string())
            .await?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let text = self
                .next_text(deadline)
                .await?
                .ok_or_else(|| anyhow!("no answer to {action} within {CALL_TIMEOUT:?}"))?;
            if let Some(answer) = self.handle(ctx, &text, Some(&id)).await? {
                if answer.is_none() {
                    tracing::warn!(charger = %ctx.cfg.id, %action, "got a CALLERROR");
                }
                return Ok(answer);
            }
        }
    }

    /// Answers CSMS CALLs until `deadline`.
    async fn serve_until(&mut self, ctx: &Ctx<'_>, deadline: Instant) -> Result<()> {
        while let Some(text) = self.next_text(deadline).await? {
            self.handle(ctx, &text, None).await?;
        }
        Ok(())
    }

    /// Handles one frame: answers a CALL; returns the answer to `waiting_for` when this is it.
    async fn handle(
        &mut self,
        ctx: &Ctx<'_>,
        text: &str,
        waiting_for: Option<&str>,
    ) -> Result<Option<Option<Value>>> {
        let frame = match decode_plain(text, &self.limits) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(error = %e, frame = text, "undecodable frame from the server");
                let code = e.error_code().spelling(self.version);
                self.send(Frame::error(e.reply_id(), code, e.to_string()).to_plain_string())
                    .await?;
                return Ok(None);
            }
        };
        let ours = waiting_for == Some(frame.id.as_ref());
        match &frame.body {
            Body::Call { action, payload } => {
                let request: Value = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
                let reply = match ctx.answer(action, &request) {
                    Reply::Result(value) => {
                        let raw = serde_json::value::to_raw_value(&value)?;
                        Frame::result(frame.id.as_ref(), &raw).to_plain_string()
                    }
                    Reply::Error(code, description) => {
                        let code = code.spelling(self.version);
                        Frame::error(frame.id.as_ref(), code, description).to_plain_string()
                    }
                };
                self.send(reply).await?;
                Ok(None)
            }
            Body::CallResult { payload } if ours => {
                let value = serde_json::from_str(payload.get())
                    .context("CALLRESULT payload is not valid JSON")?;
                Ok(Some(Some(value)))
            }
            Body::CallError(_) if ours => Ok(Some(None)),
            _ => Ok(None),
        }
    }

    async fn next_text(&mut self, deadline: Instant) -> Result<Option<String>> {
        crate::ws::next_text(&mut self.ws, deadline).await
    }

    async fn send(&mut self, text: String) -> Result<()> {
        self.ws
            .send(Message::text(text))
            .await
            .context("sending a frame")
    }
}
