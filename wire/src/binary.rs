//! The binary overlay frame (ARCHITECTURE §3.3), used for file chunks between nodes.
//!
//! ```text
//! u8  type; u8 dest_count, dest_count × (u16 len, id); u8 path_count, path_count × (u16 len, id)
//! u16 id_len, id; u16 action_len, action (CALL and SEND only)
//! u32 meta_len, meta (UTF-8 JSON object); u64 body_len, body
//! ```
//! All integers are big-endian. Every length is checked against the bytes that remain and against
//! [`Limits`] before it is used, so a lying length can never make the decoder allocate or read out
//! of bounds.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::{Json, Limits, MessageType, Route};

/// A decoded binary frame. Strings and body borrow from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryFrame<'a> {
    pub message_type: MessageType,
    pub dest: Route<'a>,
    pub path: Route<'a>,
    pub id: Cow<'a, str>,
    /// Present exactly for CALL and SEND.
    pub action: Option<Cow<'a, str>>,
    /// The JSON part of the message; error frames carry code and description here.
    pub meta: Json<'a>,
    pub body: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
    #[error("frame ends inside {0}")]
    Truncated(&'static str),
    #[error("unknown message type {0}")]
    UnknownMessageType(u8),
    #[error("{field} has {count} elements; allowed 1 to {max}")]
    RouteLength {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{field} is empty, longer than {max} bytes, or not UTF-8")]
    BadString { field: &'static str, max: usize },
    #[error("action is required for CALL and SEND and forbidden otherwise")]
    Action,
    #[error("meta is not a JSON object")]
    Meta,
    #[error("{0} trailing bytes after the body")]
    TrailingBytes(usize),
}

/// Cursor over the input that refuses to read past its end.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BinaryError> {
        if n > self.buf.len() {
            return Err(BinaryError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn uint<const N: usize>(&mut self, what: &'static str) -> Result<u64, BinaryError> {
        let bytes = self.take(N, what)?;
        Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn string(&mut self, field: &'static str, max: usize) -> Result<&'a str, BinaryError> {
        let len = self.uint::<2>(field)? as usize;
        if len == 0 || len > max {
            return Err(BinaryError::BadString { field, max });
        }
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| BinaryError::BadString { field, max })
    }

    fn route(&mut self, field: &'static str, limits: &Limits) -> Result<Route<'a>, BinaryError> {
        let count = self.uint::<1>(field)? as usize;
        if count == 0 || count > limits.max_path_len {
            return Err(BinaryError::RouteLength {
                field,
                count,
                max: limits.max_path_len,
            });
        }
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            ids.push(Cow::Borrowed(self.string(field, limits.max_node_id_bytes)?));
        }
        Route::from_ids(ids).ok_or(BinaryError::RouteLength {
            field,
            count,
            max: limits.max_path_len,
        })
    }
}

/// Decodes one binary frame; the whole of `buf` must be the frame.
pub fn decode<'a>(buf: &'a [u8], limits: &Limits) -> Result<BinaryFrame<'a>, BinaryError> {
    if buf.len() > limits.max_frame_bytes {
        return Err(BinaryError::TooLarge {
            len: buf.len() as u64,
            max: limits.max_frame_bytes,
        });
    }
    let mut r = Reader { buf };
    let type_byte = r.uint::<1>("type")? as u8;
    let message_type = MessageType::from_number(u64::from(type_byte))
        .ok_or(BinaryError::UnknownMessageType(type_byte))?;
    let dest = r.route("dest", limits)?;
    let path = r.route("path", limits)?;
    let id = Cow::Borrowed(r.string("id", limits.max_id_bytes)?);
    let action = match message_type {
        MessageType::Call | MessageType::Send => {
            Some(Cow::Borrowed(r.string("action", limits.max_action_bytes)?))
        }
        _ => None,
    };
    let meta_len = r.uint::<4>("meta length")?;
    let meta_len = usize::try_from(meta_len).map_err(|_| BinaryError::Truncated("meta"))?;
    let meta_bytes = r.take(meta_len, "meta")?;
    let meta_text = std::str::from_utf8(meta_bytes).map_err(|_| BinaryError::Meta)?;
    let meta: &RawValue = serde_json::from_str(meta_text).map_err(|_| BinaryError::Meta)?;
    if !meta.get().starts_with('{') {
        return Err(BinaryError::Meta);
    }
    let body_len = r.uint::<8>("body length")?;
    let remaining = r.buf.len() as u64;
    if body_len > remaining {
        return Err(BinaryError::Truncated("body"));
    }
    if body_len < remaining {
        return Err(BinaryError::TrailingBytes((remaining - body_len) as usize));
    }
    let body = r.buf;
    Ok(BinaryFrame {
        message_type,
        dest,
        path,
        id,
        action,
        meta: Json::new(meta),
        body,
    })
}

impl BinaryFrame<'_> {
    /// Encodes the frame, checking the same limits the decoder applies so that whatever this
    /// node sends, its peer can read.
    pub fn encode(&self, limits: &Limits) -> Result<Vec<u8>, BinaryError> {
        let has_action = matches!(self.message_type, MessageType::Call | MessageType::Send);
        if has_action != self.action.is_some() {
            return Err(BinaryError::Action);
        }
        if !self.meta.get().starts_with('{') {
            return Err(BinaryError::Meta);
        }
        let mut out = Vec::with_capacity(64 + self.meta.get().len() + self.body.len());
        out.push(self.message_type.number());
        write_route(&mut out, "dest", &self.dest, limits)?;
        write_route(&mut out, "path", &self.path, limits)?;
        write_string(&mut out, "id", &self.id, limits.max_id_bytes)?;
        if let Some(action) = &self.action {
            write_string(&mut out, "action", action, limits.max_action_bytes)?;
        }
        let meta = self.meta.get().as_bytes();
        out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        out.extend_from_slice(meta);
        out.extend_from_slice(&(self.body.len() as u64).to_be_bytes());
        out.extend_from_slice(self.body);
        if out.len() > limits.max_frame_bytes {
            return Err(BinaryError::TooLarge {
                len: out.len() as u64,
                max: limits.max_frame_bytes,
            });
        }
        Ok(out)
    }
}

fn write_string(
    out: &mut Vec<u8>,
    field: &'static str,
    s: &str,
    max: usize,
) -> Result<(), BinaryError> {
    if s.is_empty() || s.len() > max || s.len() > usize::from(u16::MAX) {
        return Err(BinaryError::BadString { field, max });
    }
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn write_route(
    out: &mut Vec<u8>,
    field: &'static str,
    route: &Route<'_>,
    limits: &Limits,
) -> Result<(), BinaryError> {
    let count = route.len();
    let max = limits.max_path_len.min(usize::from(u8::MAX));
    if count == 0 || count > max {
        return Err(BinaryError::RouteLength { field, count, max });
    }
    out.push(count as u8);
    for id in route.ids() {
        write_string(out, field, id, limits.max_node_id_bytes)?;
    }
    Ok(())
}
