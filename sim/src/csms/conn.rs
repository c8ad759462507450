//! One charger connection on the simulated CSMS: answer every CALL at once, count it, and send
//! the `--on-boot` calls after each BootNotification.
//!
//! Replies are written in the order the frames arrive, by the task that reads them; OCPP-J
//! allows one outstanding CALL per direction, so there is nothing to pipeline and no need for a
//! separate writer task (which would cost a channel and a second task per connection).

use std::collections::VecDeque;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use wire::text::{Body, Frame, decode_plain};
use wire::{ErrorCode, OcppVersion};

use super::answers::{self, ACTIONS, Kind};
use super::stats::{Counters, Event};
use super::{Flavor, Shared};

struct Connection<'a> {
    ws: WebSocketStream<TcpStream>,
    charger: &'a str,
    version: OcppVersion,
    counters: &'a Counters,
    shared: &'a Shared,
    /// `--on-boot` calls still to send (indices), one at a time.
    queued: VecDeque<usize>,
    /// The id of the CSMS-initiated CALL awaiting its answer.
    outstanding: Option<String>,
}

/// Serves the connection until the charger closes it or it fails.
pub async fn serve(
    ws: WebSocketStream<TcpStream>,
    charger: &str,
    version: OcppVersion,
    counters: &Counters,
    shared: &Shared,
) {
    let mut conn = Connection {
        ws,
        charger,
        version,
        counters,
        shared,
        queued: VecDeque::new(),
        outstanding: None,
    };
    while let Some(message) = conn.ws.next().await {
        let result = match message {
            Ok(Message::Text(text)) => conn.handle(text.as_str()).await,
            Ok(Message::Binary(_)) => {
                // Plain OCPP-J is text only; binary frames belong to overlay links.
                conn.counters.count(Event::BadFrame);
                Ok(())
            }
            // A Close is answered by tungstenite on the next poll, which then ends the stream;
            // pings are answered the same way.
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::debug!(charger, error = %format!("{e:#}"), "connection ended");
            return;
        }
    }
    tracing::debug!(charger, "closed by the charger");
}

impl Connection<'_> {
    async fn handle(&mut self, text: &str) -> Result<()> {
        let frame = match decode_plain(text, &self.shared.config.limits) {
            Ok(frame) => frame,
            Err(e) => {
                // Answered as ARCHITECTURE §6.5 asks, under the frame's id or "-1".
                self.counters.count(Event::BadFrame);
                tracing::debug!(charger = self.charger, error = %e, "undecodable frame");
                let code = e.error_code().spelling(self.version);
                let reply = Frame::error(e.reply_id(), code, e.to_string());
                return self.send(reply.to_plain_string()).await;
            }
        };
        if !frame.message_type().allowed_in(self.version) {
            self.counters.count(Event::BadFrame);
            let code = ErrorCode::MessageTypeNotSupported.spelling(self.version);
            let description = format!(
                "message type {} is not part of {}",
                frame.message_type().number(),
                self.version
            );
            let reply = Frame::error(frame.id.as_ref(), code, description);
            return self.send(reply.to_plain_string()).await;
        }
        match &frame.body {
            Body::Call { action, payload } => {
                // A cheap look: a `signatures` member should never reach a plain CSMS.
                if payload.get().contains("\"signatures\"") {
                    self.counters.count(Event::Signed);
                }
                let Some(index) = answers::lookup(self.version, action) else {
                    self.counters.count(Event::NotImplemented);
                    if self.shared.config.flavor == Flavor::Backend {
                        // The benchmark backend answers everything: an empty result.
                        let reply = Frame::result(frame.id.as_ref(), wire::text::empty_details());
                        return self.send(reply.to_plain_string()).await;
                    }
                    let code = ErrorCode::NotImplemented.spelling(self.version);
                    let reply = Frame::error(
                        frame.id.as_ref(),
                        code,
                        "the simulated CSMS does not implement this action",
                    );
                    return self.send(reply.to_plain_string()).await;
                };
                let config = &self.shared.config;
                let answer = answers::answer(
                    index,
                    self.version,
                    payload.get(),
                    config.heartbeat_interval,
                );
                // Counted before the reply goes out: a charger that has its answer can rely on
                // the CALL showing in a summary printed afterwards.
                self.counters.count(Event::Action(index));
                if super::stats::TRANSACTION_ACTIONS.contains(&action.as_ref()) {
                    self.shared
                        .stats
                        .transaction_message(self.charger, action, payload.get());
                }
                let reply = Frame::result(frame.id.as_ref(), answer.raw()).to_plain_string();
                self.send(reply).await?;
                if ACTIONS[index].kind == Kind::Boot && !config.on_boot.is_empty() {
                    self.queued.extend(0..config.on_boot.len());
                    self.send_next_csms_call().await?;
                }
                Ok(())
            }
            Body::CallResult { payload } => {
                if self.take_outstanding(&frame.id) {
                    self.counters.count(Event::CsmsAnswered);
                    tracing::debug!(
                        charger = self.charger,
                        result = payload.get(),
                        "CSMS call answered"
                    );
                    self.send_next_csms_call().await?;
                } else {
                    tracing::debug!(charger = self.charger, id = %frame.id, "result for no outstanding call");
                }
                Ok(())
            }
            Body::CallError(e) | Body::CallResultError(e) => {
                if self.take_outstanding(&frame.id) {
                    self.counters.count(Event::CsmsError);
                    tracing::debug!(charger = self.charger, code = %e.code, description = %e.description, "CSMS call failed");
                    self.send_next_csms_call().await?;
                } else {
                    tracing::debug!(charger = self.charger, id = %frame.id, "error for no outstanding call");
                }
                Ok(())
            }
            Body::Send { .. } => {
                // SEND (2.1) is never answered.
                self.counters.count(Event::Send);
                Ok(())
            }
        }
    }

    fn take_outstanding(&mut self, id: &str) -> bool {
        if self.outstanding.as_deref() == Some(id) {
            self.outstanding = None;
            true
        } else {
            false
        }
    }

    /// Sends the next queued `--on-boot` call unless one is still outstanding (OCPP-J allows one
    /// outstanding CALL per direction).
    async fn send_next_csms_call(&mut self) -> Result<()> {
        if self.outstanding.is_some() {
            return Ok(());
        }
        let Some(index) = self.queued.pop_front() else {
            return Ok(());
        };
        let call = &self.shared.config.on_boot[index];
        // A UUID v4, as a CSMS-originated id must be unique per connection (§6.1).
        let id = uuid::Uuid::new_v4().to_string();
        let text = Frame::call(id.as_str(), call.action.as_str(), &call.payload).to_plain_string();
        self.outstanding = Some(id);
        self.counters.count(Event::CsmsSent);
        self.send(text).await
    }

    async fn send(&mut self, text: String) -> Result<()> {
        self.ws
            .send(Message::text(text))
            .await
            .context("sending a frame")
    }
}
