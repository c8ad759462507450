//! The validation stage (ARCHITECTURE §6.5): a charger's CALL or SEND is checked against the
//! OCA JSON schema of its action and version once, where it enters the overlay, and refused with
//! the CALLERROR its version spells. Nodes further on pass the payload bytes through unchecked.

pub mod schema;

use std::sync::Arc;

use wire::text::Frame;
use wire::{ErrorCode, MessageType};

use crate::engine::stages::FromPlain;
use crate::engine::{Cx, Stage, Verdict};
use schema::{Direction, SchemaRegistry};

pub struct Validate {
    schemas: Arc<SchemaRegistry>,
}

impl Validate {
    pub fn new(schemas: Arc<SchemaRegistry>) -> Self {
        Validate { schemas }
    }
}

impl Stage for Validate {
    fn name(&self) -> &'static str {
        "validate"
    }

    fn on_plain(&mut self, f: &FromPlain<'_, '_>, cx: &mut Cx<'_>) -> Verdict {
        let message_type = f.frame.message_type();
        if !matches!(message_type, MessageType::Call | MessageType::Send) {
            return Verdict::Continue;
        }
        let action = f.action();
        let error = |code: ErrorCode, why: &str| {
            cx.metrics().frame_errors.inc();
            Frame::error(f.frame.id.as_ref(), code.spelling(f.version), why).to_plain_string()
        };
        if message_type == MessageType::Call && !self.schemas.knows(f.version, action) {
            let why = format!("unknown action {action:?} in {}", f.version);
            return Verdict::Reply(error(ErrorCode::NotImplemented, &why));
        }
        let checked = match f.payload() {
            Err(why) => Err((ErrorCode::FormatViolation, why.to_owned())),
            Ok(value) => self
                .schemas
                .validate(f.version, Direction::Request, action, value)
                .map_err(|v| (v.code, v.message)),
        };
        match (checked, message_type) {
            (Ok(()), _) => Verdict::Continue,
            (Err((code, why)), MessageType::Call) => Verdict::Reply(error(code, &why)),
            (Err((_, why)), _) => {
                tracing::info!(charger = %f.charger, action, "invalid SEND dropped: {why}");
                Verdict::Drop
            }
        }
    }
}

/// The limit on a charger's CALLs waiting for an answer: beyond it a CALL is answered "busy" at
/// once, so a charger that fires CALLs without waiting cannot grow the correlation tables or the
/// queue of frames toward it.
pub struct Busy;

impl Stage for Busy {
    fn name(&self) -> &'static str {
        "busy"
    }

    fn on_plain(&mut self, f: &FromPlain<'_, '_>, cx: &mut Cx<'_>) -> Verdict {
        if f.frame.message_type() != MessageType::Call || f.outstanding < f.max_pending {
            return Verdict::Continue;
        }
        cx.metrics().frames_dropped.busy.inc();
        tracing::debug!(charger = %f.charger, max = f.max_pending, "too many CALLs waiting for an answer; answered busy");
        Verdict::Reply(Frame::error(f.frame.id.as_ref(), "GenericError", "busy").to_plain_string())
    }
}
