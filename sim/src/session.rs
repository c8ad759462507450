//! One OCPP-J WebSocket connection seen from the charger side: send a CALL and wait for its
//! answer, while answering whatever the CSMS asks in between.
//!
//! A real charger must keep serving CSMS-initiated CALLs while one of its own is outstanding
//! (OCPP-J allows one outstanding CALL per direction), so every wait goes through the same loop
//! that answers incoming CALLs.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use futures_util::SinkExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wire::text::{Body, Frame, decode_plain};
use wire::{ErrorCode, Limits, OcppVersion};

use crate::payloads::{self, Reply};

/// Counters a session keeps; the charger summary adds them up.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// CALLs this side sent that got a CALLRESULT.
    pub calls: u64,
    /// CALLERRORs received, and frames from the peer that could not be decoded.
    pub errors: u64,
    /// CSMS-initiated CALLs answered (with a result or a CALLERROR).
    pub answered: u64,
    /// Connections opened again after one was lost (`--reconnect-for`).
    pub reconnects: u64,
    /// Transaction messages (start, stop, meter values, events) that got a CALLRESULT.
    pub transaction_calls: u64,
    /// The longest a CALL waited for its answer, reconnects included, in milliseconds.
    pub max_wait_ms: u64,
    /// 1.6 StartTransactions answered with a negative (local) transaction id: an edge answered
    /// them while its uplink was down.
    pub local_transaction_ids: u64,
}

/// Actions whose messages must reach the CSMS exactly once (counted apart in the summary).
const TRANSACTION_ACTIONS: [&str; 4] = [
    "StartTransaction",
    "StopTransaction",
    "MeterValues",
    "TransactionEvent",
];

/// How a session keeps going: the pause before each CALL, and how long it tries to connect
/// again after losing its connection (0: a lost connection fails the charger).
#[derive(Debug, Clone, Copy, Default)]
pub struct Resilience {
    pub pace: Duration,
    pub reconnect_for: Duration,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What came back for a CALL on a live connection.
enum Exchange {
    Answer(Answer),
    Timeout,
}

pub struct Session {
    ws: Ws,
    url: String,
    identity: String,
    password: Option<String>,
    resilience: Resilience,
    version: OcppVersion,
    /// Per-connection counter: every charger numbers its messages from 1, as real ones do, which
    /// is what makes a node's correlation table key on (source, id).
    next_id: u64,
    timeout: Duration,
    limits: Limits,
    pub stats: Stats,
}

impl Session {
    /// Opens `url` offering exactly one subprotocol, with Basic auth when `password` is given.
    pub async fn connect(
        url: &str,
        identity: &str,
        version: OcppVersion,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Self> {
        let ws = open(url, identity, version, password, timeout).await?;
        Ok(Session {
            ws,
            url: url.to_owned(),
            identity: identity.to_owned(),
            password: password.map(str::to_owned),
            resilience: Resilience::default(),
            version,
            next_id: 1,
            timeout,
            limits: Limits::default(),
            stats: Stats::default(),
        })
    }

    pub fn set_resilience(&mut self, resilience: Resilience) {
        self.resilience = resilience;
    }

    /// Sends a CALL and returns the CALLRESULT payload. A CALLERROR is an error. With
    /// `reconnect_for`, a lost connection is opened again and the same frame (same id, same
    /// payload) sent again, as a charger retries a message it has no answer for.
    pub async fn call(&mut self, action: &str, payload: &Value) -> Result<Value> {
        if !self.resilience.pace.is_zero() {
            tokio::time::sleep(self.resilience.pace).await;
        }
        let id = self.next_id.to_string();
        self.next_id += 1;
        let raw = serde_json::value::to_raw_value(payload)?;
        let text = Frame::call(id.as_str(), action, &raw).to_plain_string();
        let started = Instant::now();
        loop {
            let outcome = match self.exchange(&text, &id).await {
                Err(lost) if !self.resilience.reconnect_for.is_zero() => {
                    tracing::info!(charger = %self.identity, error = %lost, "connection lost; connecting again");
                    self.reconnect(lost).await?;
                    continue;
                }
                other => other?,
            };
            let waited = started.elapsed().as_millis() as u64;
            self.stats.max_wait_ms = self.stats.max_wait_ms.max(waited);
            match outcome {
                Exchange::Answer(Answer::Result(value)) => {
                    self.stats.calls += 1;
                    if TRANSACTION_ACTIONS.contains(&action) {
                        self.stats.transaction_calls += 1;
                    }
                    return Ok(value);
                }
                Exchange::Answer(Answer::Error(code, description)) => {
                    self.stats.errors += 1;
                    bail!("{action} (id {id}) got CALLERROR {code}: {description}");
                }
                Exchange::Timeout => {
                    bail!("no answer to {action} (id {id}) within {:?}", self.timeout)
                }
            }
        }
    }

    /// Sends `text` and waits for the answer to `id`; `Err` only when the connection failed.
    async fn exchange(&mut self, text: &str, id: &str) -> Result<Exchange> {
        self.send_text(text.to_owned()).await?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let Some(text) = self.next_text(deadline).await? else {
                return Ok(Exchange::Timeout);
            };
            if let Some(answer) = self.handle_incoming(&text, Some(id)).await? {
                return Ok(Exchange::Answer(answer));
            }
        }
    }

    /// Opens the connection again, trying every half second for `reconnect_for`.
    async fn reconnect(&mut self, lost: anyhow::Error) -> Result<()> {
        let deadline = Instant::now() + self.resilience.reconnect_for;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            match open(
                &self.url,
                &self.identity,
                self.version,
                self.password.as_deref(),
                self.timeout,
            )
            .await
            {
                Ok(ws) => {
                    self.ws = ws;
                    self.stats.reconnects += 1;
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(lost.context(format!(
                        "still not connected after {:?}: {e:#}",
                        self.resilience.reconnect_for
                    )));
                }
                Err(_) => {}
            }
        }
    }

    /// Keeps answering CSMS-initiated CALLs for `duration`.
    pub async fn serve_for(&mut self, duration: Duration) -> Result<()> {
        let deadline = Instant::now() + duration;
        while let Some(text) = self.next_text(deadline).await? {
            self.handle_incoming(&text, None).await?;
        }
        Ok(())
    }

    /// Closes the connection politely; failures do not matter any more at this point.
    pub async fn close(mut self) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::from_static("simulation done"),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(Some(frame))).await;
    }

    async fn next_text(&mut self, deadline: Instant) -> Result<Option<String>> {
        crate::ws::next_text(&mut self.ws, deadline).await
    }

    /// Handles one frame from the server. A CALLRESULT or CALLERROR for `waiting_for` is
    /// returned; CALLs are answered; anything else is logged.
    async fn handle_incoming(
        &mut self,
        text: &str,
        waiting_for: Option<&str>,
    ) -> Result<Option<Answer>> {
        let frame = match decode_plain(text, &self.limits) {
            Ok(frame) => frame,
            Err(e) => {
                // Answer as a conformant charger would (ARCHITECTURE §6.5), then carry on.
                self.stats.errors += 1;
                tracing::warn!(error = %e, frame = text, "undecodable frame from the server");
                let code = e.error_code().spelling(self.version);
                let reply = Frame::error(e.reply_id(), code, e.to_string()).to_plain_string();
                self.send_text(reply).await?;
                return Ok(None);
            }
        };
        if !frame.message_type().allowed_in(self.version) {
            self.stats.errors += 1;
            let code = ErrorCode::MessageTypeNotSupported.spelling(self.version);
            let description = format!(
                "message type {} is not part of {}",
                frame.message_type().number(),
                self.version
            );
            let reply = Frame::error(frame.id.as_ref(), code, description).to_plain_string();
            self.send_text(reply).await?;
            return Ok(None);
        }
        let ours = waiting_for == Some(frame.id.as_ref());
        match &frame.body {
            Body::Call { action, payload } => {
                let request: Value = serde_json::from_str(payload.get()).unwrap_or(Value::Null);
                let reply = payloads::answer(self.version, action, &request);
                tracing::debug!(%action, "answering a CSMS call");
                let text = match &reply {
                    Reply::Result(value) => {
                        let raw = serde_json::value::to_raw_value(value)?;
                        Frame::result(frame.id.as_ref(), &raw).to_plain_string()
                    }
                    Reply::Error(code, description) => {
                        let code = code.spelling(self.version);
                        Frame::error(frame.id.as_ref(), code, *description).to_plain_string()
                    }
                };
                self.stats.answered += 1;
                self.send_text(text).await?;
                Ok(None)
            }
            Body::CallResult { payload } if ours => {
                let value = serde_json::from_str(payload.get())
                    .context("CALLRESULT payload is not valid JSON")?;
                Ok(Some(Answer::Result(value)))
            }
            Body::CallError(e) if ours => Ok(Some(Answer::Error(
                e.code.to_string(),
                e.description.to_string(),
            ))),
            Body::CallResult { .. } | Body::CallError(_) => {
                tracing::warn!(id = %frame.id, "answer to no outstanding call");
                Ok(None)
            }
            // Types 5 and 6 were refused above for 1.6 and 2.0.1.
            Body::CallResultError(_) | Body::Send { .. } => Ok(None),
        }
    }

    async fn send_text(&mut self, text: String) -> Result<()> {
        self.ws
            .send(Message::text(text))
            .await
            .context("sending a frame")
    }
}

/// Opens `url` offering exactly one subprotocol, with Basic auth when `password` is given.
async fn open(
    url: &str,
    identity: &str,
    version: OcppVersion,
    password: Option<&str>,
    timeout: Duration,
) -> Result<Ws> {
    let mut request = url
        .into_client_request()
        .with_context(|| format!("invalid URL {url}"))?;
    let headers = request.headers_mut();
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(version.subprotocol()),
    );
    if let Some(password) = password {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{identity}:{password}"));
        let value = HeaderValue::from_str(&format!("Basic {token}"))
            .context("identity or password cannot be sent in an HTTP header")?;
        headers.insert("Authorization", value);
    }
    let (ws, response) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| anyhow!("connecting to {url} timed out after {timeout:?}"))?
        .with_context(|| format!("connecting to {url}"))?;
    // tungstenite already fails a handshake whose subprotocol differs from the one offered,
    // but a server that omits the header is accepted; a charger must not guess the version.
    let agreed = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok());
    if agreed != Some(version.subprotocol()) {
        bail!(
            "{url} did not accept subprotocol {} (answered {agreed:?})",
            version.subprotocol()
        );
    }
    Ok(ws)
}

enum Answer {
    Result(Value),
    Error(String, String),
}
