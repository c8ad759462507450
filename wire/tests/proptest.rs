//! Property tests of the text and binary codecs: what is encoded decodes to the same frame, and no
//! input, however hostile, makes a decoder panic.
//!
//! The case count is kept low so the suite stays quick on small machines; set `PROPTEST_CASES`
//! for a longer soak.

use std::borrow::Cow;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;
use serde_json::value::RawValue;
use wire::binary::{self, BinaryError, BinaryFrame};
use wire::text::{
    Body, DecodeErrorKind, ErrorBody, Frame, OverlayFrame, decode_overlay, decode_plain,
};
use wire::{Json, Limits, MessageType, Route};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        // Regressions belong in a test case written by hand, not in files nobody reviews.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const TYPES: [MessageType; 5] = [
    MessageType::Call,
    MessageType::CallResult,
    MessageType::CallError,
    MessageType::CallResultError,
    MessageType::Send,
];

/// Characters that stress the JSON string writer: quotes, backslashes, control characters,
/// multi-byte UTF-8, and the JSON punctuation a naive splitter would trip on.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        2 => select(vec![
            '"', '\\', '/', '\n', '\r', '\t', '\u{0}', '\u{8}', '\u{c}', '\u{1f}', '\u{7f}',
            '\u{2028}', 'é', '€', '🔌', ' ', ',', '[', ']', '{', '}', ':',
        ]),
        1 => any::<char>(),
    ]
}

/// A string of `min..=max` characters; at most 4 bytes each, so `max` chars fit `4 * max` bytes.
fn text(min: usize, max: usize) -> impl Strategy<Value = String> {
    vec(tricky_char(), min..=max).prop_map(|v| v.into_iter().collect())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        text(0, 8).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text(0, 6), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object as text, compact or pretty-printed (whitespace must survive byte for byte).
fn json_object() -> impl Strategy<Value = Box<RawValue>> {
    (btree_map(text(0, 6), json_value(), 0..5), any::<bool>()).prop_map(|(m, pretty)| {
        let v = Value::Object(m.into_iter().collect());
        let s = if pretty {
            serde_json::to_string_pretty(&v)
        } else {
            serde_json::to_string(&v)
        }
        .expect("a Value serializes");
        RawValue::from_string(s).expect("serde_json output is valid JSON")
    })
}

/// Owned parts of a plain frame; [`PlainSpec::frame`] borrows them.
#[derive(Debug, Clone)]
struct PlainSpec {
    message_type: MessageType,
    id: String,
    action: String,
    payload: Box<RawValue>,
    code: String,
    description: String,
}

fn plain_spec() -> impl Strategy<Value = PlainSpec> {
    (
        select(TYPES.to_vec()),
        text(1, 16),
        text(1, 16),
        json_object(),
        text(0, 16),
        text(0, 40),
    )
        .prop_map(
            |(message_type, id, action, payload, code, description)| PlainSpec {
                message_type,
                id,
                action,
                payload,
                code,
                description,
            },
        )
}

impl PlainSpec {
    fn frame(&self) -> Frame<'_> {
        let payload = Json::new(&self.payload);
        let action = Cow::Borrowed(self.action.as_str());
        let error = || ErrorBody {
            code: Cow::Borrowed(&self.code),
            description: Cow::Borrowed(&self.description),
            details: payload,
        };
        let body = match self.message_type {
            MessageType::Call => Body::Call { action, payload },
            MessageType::Send => Body::Send { action, payload },
            MessageType::CallResult => Body::CallResult { payload },
            MessageType::CallError => Body::CallError(error()),
            MessageType::CallResultError => Body::CallResultError(error()),
        };
        Frame {
            id: Cow::Borrowed(&self.id),
            body,
        }
    }
}

/// 1 to 16 node ids (the default hop limit), each up to 128 bytes.
fn route_ids() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![vec(text(1, 32), 1..=1), vec(text(1, 32), 2..=16)]
}

fn route(ids: &[String]) -> Route<'_> {
    Route::from_ids(ids.iter().map(|s| Cow::Borrowed(s.as_str())).collect())
        .expect("strategies make non-empty routes")
}

#[derive(Debug, Clone)]
struct BinarySpec {
    message_type: MessageType,
    dest: Vec<String>,
    path: Vec<String>,
    id: String,
    action: String,
    meta: Box<RawValue>,
    body: Vec<u8>,
}

fn binary_spec() -> impl Strategy<Value = BinarySpec> {
    (
        select(TYPES.to_vec()),
        route_ids(),
        route_ids(),
        text(1, 16),
        text(1, 16),
        json_object(),
        vec(any::<u8>(), 0..300),
    )
        .prop_map(
            |(message_type, dest, path, id, action, meta, body)| BinarySpec {
                message_type,
                dest,
                path,
                id,
                action,
                meta,
                body,
            },
        )
}

impl BinarySpec {
    fn frame(&self) -> BinaryFrame<'_> {
        let has_action = matches!(self.message_type, MessageType::Call | MessageType::Send);
        BinaryFrame {
            message_type: self.message_type,
            dest: route(&self.dest),
            path: route(&self.path),
            id: Cow::Borrowed(&self.id),
            action: has_action.then_some(Cow::Borrowed(self.action.as_str())),
            meta: Json::new(&self.meta),
            body: &self.body,
        }
    }
}

/// Text that looks enough like OCPP-J to get past the first checks of the decoders.
fn jsonish() -> impl Strategy<Value = String> {
    let tokens = select(vec![
        "[",
        "]",
        ",",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "0",
        "-1",
        "2.0",
        "1e400",
        "18446744073709551616",
        "\"id\"",
        "\"\"",
        "\"CSMS\"",
        "\"A\"",
        "[\"a\",\"b\"]",
        "[]",
        "{}",
        "{\"a\":1}",
        "null",
        "true",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"\\\"\"",
        " ",
        "\"",
        "\\",
        "{",
        "}",
        ":",
    ]);
    vec(tokens, 0..24).prop_map(|t| t.concat())
}

/// Decodes `text` both ways; whatever decodes must re-encode to something that decodes the same.
fn check_text(text: &str, limits: &Limits) {
    if let Ok(f) = decode_plain(text, limits) {
        let again = f.to_plain_string();
        assert_eq!(decode_plain(&again, limits).as_ref(), Ok(&f), "{again}");
    }
    if let Ok(f) = decode_overlay(text, limits) {
        let again = f.to_text();
        assert_eq!(decode_overlay(&again, limits).as_ref(), Ok(&f), "{again}");
    }
}

fn check_binary(bytes: &[u8], limits: &Limits) {
    if let Ok(f) = binary::decode(bytes, limits) {
        let again = f.encode(limits).expect("a decoded frame re-encodes");
        assert_eq!(binary::decode(&again, limits).as_ref(), Ok(&f));
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn plain_roundtrip(spec in plain_spec()) {
        let f = spec.frame();
        let s = f.to_plain_string();
        let back = decode_plain(&s, &Limits::default());
        prop_assert_eq!(back.as_ref(), Ok(&f), "{}", s);
        // The payload is the exact text given, whitespace included.
        if let Some(p) = back.ok().and_then(|b| b.payload()) {
            prop_assert_eq!(p.get(), spec.payload.get());
        }
        // A plain frame is not an overlay frame.
        prop_assert!(decode_overlay(&s, &Limits::default()).is_err());
    }

    #[test]
    fn overlay_roundtrip(spec in plain_spec(), dest in route_ids(), path in route_ids()) {
        let f = OverlayFrame { dest: route(&dest), path: route(&path), frame: spec.frame() };
        let s = f.to_text();
        let back = decode_overlay(&s, &Limits::default());
        prop_assert_eq!(back.as_ref(), Ok(&f), "{}", s);
        // Senders write a one-element route as a string; receivers must read the array form
        // (and arrays written by another JSON writer) the same.
        let rewritten = format!(
            "[3,{},{},\"x\",{}]",
            serde_json::to_string(&dest).expect("strings serialize"),
            serde_json::to_string(&path).expect("strings serialize"),
            spec.payload.get(),
        );
        let expected = OverlayFrame {
            dest: route(&dest),
            path: route(&path),
            frame: Frame::result("x", &spec.payload),
        };
        prop_assert_eq!(decode_overlay(&rewritten, &Limits::default()), Ok(expected), "{}", rewritten);
    }

    #[test]
    fn binary_roundtrip(spec in binary_spec()) {
        let f = spec.frame();
        let bytes = f.encode(&Limits::default()).expect("within limits");
        let back = binary::decode(&bytes, &Limits::default());
        prop_assert_eq!(back.as_ref(), Ok(&f));
        if let Ok(back) = back {
            prop_assert_eq!(back.body, &spec.body[..]);
            prop_assert_eq!(back.meta.get(), spec.meta.get());
        }
    }

    #[test]
    fn text_decoders_never_panic_on_bytes(bytes in vec(any::<u8>(), 0..512)) {
        check_text(&String::from_utf8_lossy(&bytes), &Limits::default());
    }

    #[test]
    fn text_decoders_never_panic_on_strings(s in any::<String>()) {
        check_text(&s, &Limits::default());
    }

    #[test]
    fn text_decoders_never_panic_on_jsonish(s in jsonish()) {
        check_text(&s, &Limits::default());
        // Tight limits push the same inputs down the limit paths.
        let tight = Limits {
            max_frame_bytes: 64,
            max_id_bytes: 2,
            max_action_bytes: 1,
            max_path_len: 1,
            max_node_id_bytes: 4,
        };
        check_text(&s, &tight);
    }

    #[test]
    fn binary_decoder_never_panics_on_bytes(bytes in vec(any::<u8>(), 0..512)) {
        check_binary(&bytes, &Limits::default());
    }

    #[test]
    fn binary_decoder_never_panics_on_mutants(
        spec in binary_spec(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = spec.frame().encode(&Limits::default()).expect("within limits");
        for (at, byte, op) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => {}
            }
        }
        check_binary(&bytes, &Limits::default());
        check_binary(&bytes[..cut.index(bytes.len() + 1)], &Limits::default());
    }

    #[test]
    fn oversized_text_is_too_large(spec in plain_spec(), dest in route_ids(), path in route_ids(), shrink in 1usize..64) {
        let plain = spec.frame().to_plain_string();
        let overlay = OverlayFrame { dest: route(&dest), path: route(&path), frame: spec.frame() }.to_text();
        for (text, overlay_form) in [(&plain, false), (&overlay, true)] {
            // A valid frame one or more bytes over the limit is refused for its size alone.
            let limits = Limits { max_frame_bytes: text.len().saturating_sub(shrink), ..Limits::default() };
            let kind = if overlay_form {
                decode_overlay(text, &limits).map(|_| ()).map_err(|e| e.kind)
            } else {
                decode_plain(text, &limits).map(|_| ()).map_err(|e| e.kind)
            };
            prop_assert_eq!(kind, Err(DecodeErrorKind::TooLarge { len: text.len(), max: limits.max_frame_bytes }));
        }
    }

    #[test]
    fn oversized_garbage_is_too_large(bytes in vec(any::<u8>(), 1..256), max in 0usize..256) {
        let limits = Limits { max_frame_bytes: max, ..Limits::default() };
        let text = String::from_utf8_lossy(&bytes);
        if text.len() > max {
            let too_large = DecodeErrorKind::TooLarge { len: text.len(), max };
            prop_assert_eq!(decode_plain(&text, &limits).map_err(|e| e.kind), Err(too_large.clone()));
            prop_assert_eq!(decode_overlay(&text, &limits).map_err(|e| e.kind), Err(too_large));
        }
        if bytes.len() > max {
            prop_assert_eq!(
                binary::decode(&bytes, &limits),
                Err(BinaryError::TooLarge { len: bytes.len() as u64, max })
            );
        }
    }

    #[test]
    fn oversized_binary_is_too_large(spec in binary_spec(), shrink in 1usize..64) {
        let bytes = spec.frame().encode(&Limits::default()).expect("within limits");
        let limits = Limits { max_frame_bytes: bytes.len().saturating_sub(shrink), ..Limits::default() };
        prop_assert_eq!(
            binary::decode(&bytes, &limits),
            Err(BinaryError::TooLarge { len: bytes.len() as u64, max: limits.max_frame_bytes })
        );
        let refused = matches!(spec.frame().encode(&limits), Err(BinaryError::TooLarge { .. }));
        prop_assert!(refused, "encode must apply the same limit");
    }
}
