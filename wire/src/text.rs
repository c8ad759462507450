//! OCPP-J text frames, plain and overlay (ARCHITECTURE §3.1).
//!
//! Decoding reads the outer array element by element as raw JSON slices and never builds a value
//! tree: the payload is handed out as the exact bytes received. Element counts are bounded while
//! reading, so a hostile `[1,1,1,…]` frame costs no allocation beyond the first few elements.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::{ErrorCode, Json, Limits, MessageType, Route};

/// What follows the id in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    Call {
        action: Cow<'a, str>,
        payload: Json<'a>,
    },
    CallResult {
        payload: Json<'a>,
    },
    CallError(ErrorBody<'a>),
    CallResultError(ErrorBody<'a>),
    Send {
        action: Cow<'a, str>,
        payload: Json<'a>,
    },
}

/// The code, description and details of a CALLERROR or CALLRESULTERROR. The code is kept as
/// received: relayed errors keep the sender's spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody<'a> {
    pub code: Cow<'a, str>,
    pub description: Cow<'a, str>,
    pub details: Json<'a>,
}

/// A frame as a plain peer sees it: message type, id and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub id: Cow<'a, str>,
    pub body: Body<'a>,
}

/// A frame on an overlay link: the plain frame plus destination and network source path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayFrame<'a> {
    pub dest: Route<'a>,
    pub path: Route<'a>,
    pub frame: Frame<'a>,
}

/// `{}`: the details of an error that has none.
pub fn empty_details() -> &'static RawValue {
    // A literal that is valid JSON; parsing it cannot fail.
    match serde_json::from_str::<&'static RawValue>("{}") {
        Ok(raw) => raw,
        Err(_) => unreachable!("\"{{}}\" is valid JSON"),
    }
}

impl<'a> Frame<'a> {
    pub fn call(
        id: impl Into<Cow<'a, str>>,
        action: impl Into<Cow<'a, str>>,
        payload: &'a RawValue,
    ) -> Self {
        Frame {
            id: id.into(),
            body: Body::Call {
                action: action.into(),
                payload: Json::new(payload),
            },
        }
    }

    pub fn result(id: impl Into<Cow<'a, str>>, payload: &'a RawValue) -> Self {
        Frame {
            id: id.into(),
            body: Body::CallResult {
                payload: Json::new(payload),
            },
        }
    }

    /// A CALLERROR with empty details. `code` is already spelled for the peer's version.
    pub fn error(
        id: impl Into<Cow<'a, str>>,
        code: &'a str,
        description: impl Into<Cow<'a, str>>,
    ) -> Self {
        Frame {
            id: id.into(),
            body: Body::CallError(ErrorBody {
                code: Cow::Borrowed(code),
                description: description.into(),
                details: Json::new(empty_details()),
            }),
        }
    }

    pub fn message_type(&self) -> MessageType {
        match self.body {
            Body::Call { .. } => MessageType::Call,
            Body::CallResult { .. } => MessageType::CallResult,
            Body::CallError(_) => MessageType::CallError,
            Body::CallResultError(_) => MessageType::CallResultError,
            Body::Send { .. } => MessageType::Send,
        }
    }

    /// The action of a CALL or SEND.
    pub fn action(&self) -> Option<&str> {
        match &self.body {
            Body::Call { action, .. } | Body::Send { action, .. } => Some(action),
            _ => None,
        }
    }

    /// The payload of a CALL, CALLRESULT or SEND.
    pub fn payload(&self) -> Option<Json<'a>> {
        match self.body {
            Body::Call { payload, .. }
            | Body::CallResult { payload }
            | Body::Send { payload, .. } => Some(payload),
            _ => None,
        }
    }

    /// Appends the plain form, `[type,id,…]`, to `out`.
    pub fn encode_plain(&self, out: &mut String) {
        let _ = write!(out, "[{},", self.message_type().number());
        write_json_str(out, &self.id);
        self.write_body(out);
    }

    pub fn to_plain_string(&self) -> String {
        let mut out = String::with_capacity(self.encoded_len_hint());
        self.encode_plain(&mut out);
        out
    }

    fn write_body(&self, out: &mut String) {
        match &self.body {
            Body::Call { action, payload } | Body::Send { action, payload } => {
                out.push(',');
                write_json_str(out, action);
                out.push(',');
                out.push_str(payload.get());
            }
            Body::CallResult { payload } => {
                out.push(',');
                out.push_str(payload.get());
            }
            Body::CallError(e) | Body::CallResultError(e) => {
                out.push(',');
                write_json_str(out, &e.code);
                out.push(',');
                write_json_str(out, &e.description);
                out.push(',');
                out.push_str(e.details.get());
            }
        }
        out.push(']');
    }

    fn encoded_len_hint(&self) -> usize {
        let body = match &self.body {
            Body::Call { action, payload } | Body::Send { action, payload } => {
                action.len() + payload.get().len()
            }
            Body::CallResult { payload } => payload.get().len(),
            Body::CallError(e) | Body::CallResultError(e) => {
                e.code.len() + e.description.len() + e.details.get().len()
            }
        };
        self.id.len() + body + 16
    }
}

impl OverlayFrame<'_> {
    /// Appends the overlay form, `[type,dest,path,id,…]`, to `out`.
    pub fn encode(&self, out: &mut String) {
        let _ = write!(out, "[{},", self.frame.message_type().number());
        self.dest.write_json(out);
        out.push(',');
        self.path.write_json(out);
        out.push(',');
        write_json_str(out, &self.frame.id);
        self.frame.write_body(out);
    }

    pub fn to_text(&self) -> String {
        let hint = self.frame.encoded_len_hint() + 32 * (self.dest.len() + self.path.len());
        let mut out = String::with_capacity(hint);
        self.encode(&mut out);
        out
    }
}

/// Why a text frame could not be decoded. Carries the message id when it was readable, so the
/// error can be answered under that id (ARCHITECTURE §6.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct DecodeError {
    pub id: Option<String>,
    pub kind: DecodeErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame is not valid JSON")]
    NotJson,
    #[error("frame is not a JSON array")]
    NotArray,
    #[error("message id missing, not a string, or longer than {max} bytes")]
    IdUnreadable { max: usize },
    #[error("message type is not a number")]
    TypeNotNumber,
    #[error("unknown message type {0}")]
    UnknownMessageType(u64),
    #[error("message type {message_type} takes {expected} elements, got {got}")]
    WrongLength {
        message_type: u8,
        expected: usize,
        got: usize,
    },
    #[error("{field} {reason}")]
    BadField {
        field: &'static str,
        reason: &'static str,
    },
}

impl DecodeError {
    fn new(id: Option<String>, kind: DecodeErrorKind) -> Self {
        DecodeError { id, kind }
    }

    /// The id to answer under: the frame's own, or "-1" when it was unreadable.
    pub fn reply_id(&self) -> &str {
        self.id.as_deref().unwrap_or("-1")
    }

    /// The error code by meaning; spell it with [`ErrorCode::spelling`].
    pub fn error_code(&self) -> ErrorCode {
        match self.kind {
            DecodeErrorKind::UnknownMessageType(_) => ErrorCode::MessageTypeNotSupported,
            _ => ErrorCode::RpcFrameworkError,
        }
    }
}

/// Decodes a plain OCPP-J frame.
pub fn decode_plain<'a>(text: &'a str, limits: &Limits) -> Result<Frame<'a>, DecodeError> {
    let elements = outer_array(text, limits)?;
    decode_frame(&elements, 0, limits)
}

/// Decodes an overlay frame, `[type,dest,path,id,…]`.
pub fn decode_overlay<'a>(text: &'a str, limits: &Limits) -> Result<OverlayFrame<'a>, DecodeError> {
    let elements = outer_array(text, limits)?;
    // Read the id first so every later error can be answered under it.
    let id = elements
        .get(3)
        .and_then(|raw| read_id(raw, limits))
        .map(Cow::into_owned);
    let fail = |kind| DecodeError::new(id.clone(), kind);
    let dest_raw = elements.get(1).ok_or_else(|| {
        fail(DecodeErrorKind::BadField {
            field: "dest",
            reason: "is missing",
        })
    })?;
    let path_raw = elements.get(2).ok_or_else(|| {
        fail(DecodeErrorKind::BadField {
            field: "path",
            reason: "is missing",
        })
    })?;
    let dest = read_route(dest_raw, limits).map_err(|reason| {
        fail(DecodeErrorKind::BadField {
            field: "dest",
            reason,
        })
    })?;
    let path = read_route(path_raw, limits).map_err(|reason| {
        fail(DecodeErrorKind::BadField {
            field: "path",
            reason,
        })
    })?;
    let frame = decode_frame(&elements, 2, limits)?;
    Ok(OverlayFrame { dest, path, frame })
}

/// The elements of the outer array: at most [`MAX_ELEMENTS`] kept, the rest only counted.
struct Elements<'a> {
    kept: Vec<&'a RawValue>,
    total: usize,
}

impl<'a> Elements<'a> {
    fn get(&self, i: usize) -> Option<&'a RawValue> {
        self.kept.get(i).copied()
    }
}

/// An overlay CALLERROR has 7 elements; one more lets "too long" be told from "just right".
const MAX_ELEMENTS: usize = 8;

fn outer_array<'a>(text: &'a str, limits: &Limits) -> Result<Elements<'a>, DecodeError> {
    if text.len() > limits.max_frame_bytes {
        return Err(DecodeError::new(
            None,
            DecodeErrorKind::TooLarge {
                len: text.len(),
                max: limits.max_frame_bytes,
            },
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let (kept, total) = BoundedSeq { max: MAX_ELEMENTS }
        .deserialize(&mut de)
        .map_err(|e| {
            let kind = if e.is_data() {
                DecodeErrorKind::NotArray
            } else {
                DecodeErrorKind::NotJson
            };
            DecodeError::new(None, kind)
        })?;
    de.end()
        .map_err(|_| DecodeError::new(None, DecodeErrorKind::NotJson))?;
    Ok(Elements { kept, total })
}

/// Decodes `[type, <skip elements>, id, …]`; `skip` is 0 for plain and 2 (dest, path) for overlay.
fn decode_frame<'a>(
    el: &Elements<'a>,
    skip: usize,
    limits: &Limits,
) -> Result<Frame<'a>, DecodeError> {
    let id = el
        .get(1 + skip)
        .and_then(|raw| read_id(raw, limits))
        .ok_or_else(|| {
            DecodeError::new(
                None,
                DecodeErrorKind::IdUnreadable {
                    max: limits.max_id_bytes,
                },
            )
        })?;
    let fail = |kind| DecodeError::new(Some(id.clone().into_owned()), kind);

    let type_raw = el
        .get(0)
        .ok_or_else(|| fail(DecodeErrorKind::TypeNotNumber))?;
    let number: u64 =
        serde_json::from_str(type_raw.get()).map_err(|_| fail(DecodeErrorKind::TypeNotNumber))?;
    let message_type = MessageType::from_number(number)
        .ok_or_else(|| fail(DecodeErrorKind::UnknownMessageType(number)))?;

    let expected = skip
        + match message_type {
            MessageType::Call | MessageType::Send => 4,
            MessageType::CallResult => 3,
            MessageType::CallError | MessageType::CallResultError => 5,
        };
    if el.total != expected {
        return Err(fail(DecodeErrorKind::WrongLength {
            message_type: message_type.number(),
            expected,
            got: el.total,
        }));
    }
    // From here on every index below `expected` exists.
    let at = |i: usize| el.kept[skip + i];
    let body = match message_type {
        MessageType::Call | MessageType::Send => {
            let action = read_str(at(2), limits.max_action_bytes)
                .filter(|a| !a.is_empty())
                .ok_or_else(|| {
                    fail(DecodeErrorKind::BadField {
                        field: "action",
                        reason: "is not a non-empty string within the length limit",
                    })
                })?;
            let payload = Json::new(at(3));
            if message_type == MessageType::Call {
                Body::Call { action, payload }
            } else {
                Body::Send { action, payload }
            }
        }
        MessageType::CallResult => Body::CallResult {
            payload: Json::new(at(2)),
        },
        MessageType::CallError | MessageType::CallResultError => {
            let bad = |field| {
                fail(DecodeErrorKind::BadField {
                    field,
                    reason: "is not a string",
                })
            };
            let code = read_str(at(2), limits.max_action_bytes).ok_or_else(|| bad("error code"))?;
            // Descriptions are free text; the frame limit bounds them.
            let description =
                read_str(at(3), limits.max_frame_bytes).ok_or_else(|| bad("error description"))?;
            let body = ErrorBody {
                code,
                description,
                details: Json::new(at(4)),
            };
            if message_type == MessageType::CallError {
                Body::CallError(body)
            } else {
                Body::CallResultError(body)
            }
        }
    };
    Ok(Frame { id, body })
}

fn read_id<'a>(raw: &'a RawValue, limits: &Limits) -> Option<Cow<'a, str>> {
    read_str(raw, limits.max_id_bytes).filter(|id| !id.is_empty())
}

fn read_route<'a>(raw: &'a RawValue, limits: &Limits) -> Result<Route<'a>, &'static str> {
    let node_id = |raw: &'a RawValue| {
        read_str(raw, limits.max_node_id_bytes)
            .filter(|id| !id.is_empty())
            .ok_or("holds an element that is not a non-empty string within the length limit")
    };
    let text = raw.get();
    if text.starts_with('[') {
        let mut de = serde_json::Deserializer::from_str(text);
        let (kept, total) = BoundedSeq {
            max: limits.max_path_len,
        }
        .deserialize(&mut de)
        .map_err(|_| "is not a valid array")?;
        if total > limits.max_path_len {
            return Err("exceeds the hop limit");
        }
        let ids = kept
            .into_iter()
            .map(node_id)
            .collect::<Result<Vec<_>, _>>()?;
        Route::from_ids(ids).ok_or("is empty")
    } else {
        Ok(Route::single(node_id(raw)?))
    }
}

/// A JSON string element, borrowed when it has no escapes. `max` bounds the decoded length; the
/// raw length is checked first so an over-long string is never copied.
fn read_str(raw: &RawValue, max: usize) -> Option<Cow<'_, str>> {
    let text = raw.get();
    // Worst case an escape (`\uXXXX`) is six bytes for one; anything longer cannot fit.
    if !text.starts_with('"') || text.len() > max.saturating_mul(6).saturating_add(2) {
        return None;
    }
    let s = match serde_json::from_str::<&str>(text) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(serde_json::from_str::<String>(text).ok()?),
    };
    (s.len() <= max).then_some(s)
}

/// Reads a JSON array keeping at most `max` elements as raw slices; the rest are skipped without
/// allocation but counted.
struct BoundedSeq {
    max: usize,
}

impl<'de> DeserializeSeed<'de> for BoundedSeq {
    type Value = (Vec<&'de RawValue>, usize);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedSeq {
    type Value = (Vec<&'de RawValue>, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut kept = Vec::with_capacity(self.max.min(MAX_ELEMENTS));
        let mut total = 0usize;
        while total < self.max {
            match seq.next_element::<&'de RawValue>()? {
                Some(raw) => kept.push(raw),
                None => return Ok((kept, total)),
            }
            total += 1;
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {
            total += 1;
        }
        Ok((kept, total))
    }
}

/// Writes `s` as a JSON string literal.
pub(crate) fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push_str(escape);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}
