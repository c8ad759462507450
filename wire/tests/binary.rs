//! The binary frame codec (ARCHITECTURE §3.3) against valid, truncated and lying input.

use std::borrow::Cow;

use serde_json::value::RawValue;
use wire::binary::{BinaryError, BinaryFrame, decode};
use wire::{Json, Limits, MessageType, Route};

fn limits() -> Limits {
    Limits::default()
}

fn raw(s: &str) -> &RawValue {
    serde_json::from_str(s).expect("test JSON is valid")
}

fn frame<'a>(message_type: MessageType, meta: &'a RawValue, body: &'a [u8]) -> BinaryFrame<'a> {
    let has_action = matches!(message_type, MessageType::Call | MessageType::Send);
    let mut path = Route::single("CP1");
    path.push("edge-1");
    BinaryFrame {
        message_type,
        dest: Route::single("CSMS"),
        path,
        id: Cow::Borrowed("msg-1"),
        action: has_action.then_some(Cow::Borrowed("SendFile")),
        meta: Json::new(meta),
        body,
    }
}

/// A valid CALL, encoded, used as the base for the malformed variants below.
fn sample() -> Vec<u8> {
    let meta = raw(r#"{"fileName":"fw.bin","offset":0}"#);
    frame(MessageType::Call, meta, b"\x00\x01chunk\xff")
        .encode(&limits())
        .expect("sample encodes")
}

/// Hand-built frame bytes, so that lengths can lie.
#[derive(Default)]
struct Builder(Vec<u8>);

impl Builder {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str16(self, s: &str) -> Self {
        self.u16(s.len() as u16).bytes(s.as_bytes())
    }
    fn route(mut self, ids: &[&str]) -> Self {
        self = self.u8(ids.len() as u8);
        for id in ids {
            self = self.str16(id);
        }
        self
    }
    /// Type, dest "CSMS", path "CP1", id "1" and (for CALL/SEND) action "A".
    fn head(message_type: u8) -> Self {
        let b = Builder::default()
            .u8(message_type)
            .route(&["CSMS"])
            .route(&["CP1"])
            .str16("1");
        if matches!(message_type, 2 | 6) {
            b.str16("A")
        } else {
            b
        }
    }
    fn meta(self, m: &str) -> Self {
        self.u32(m.len() as u32).bytes(m.as_bytes())
    }
    fn body(self, b: &[u8]) -> Self {
        self.u64(b.len() as u64).bytes(b)
    }
}

#[test]
fn every_type_roundtrips() {
    let meta = raw(r#"{"code":"GenericError","description":"x"}"#);
    for t in [
        MessageType::Call,
        MessageType::CallResult,
        MessageType::CallError,
        MessageType::CallResultError,
        MessageType::Send,
    ] {
        for body in [&b""[..], b"abc", &[0u8; 300]] {
            let f = frame(t, meta, body);
            let bytes = f.encode(&limits()).unwrap();
            assert_eq!(bytes[0], t.number());
            assert_eq!(decode(&bytes, &limits()).unwrap(), f, "{t:?}");
        }
    }
}

#[test]
fn unicode_and_escapes_in_strings_roundtrip() {
    let meta = raw(r#"{"n":"\u00e9\"q\"","s":[1,2.50]}"#);
    let f = BinaryFrame {
        message_type: MessageType::Send,
        dest: Route::single("*"),
        path: Route::from_ids(vec!["Ünï \"cödé\"".into(), "\u{1}\n".into()]).unwrap(),
        id: "🔌-\u{0}".into(),
        action: Some("NotifyNetworkTopology".into()),
        meta: Json::new(meta),
        body: b"",
    };
    let bytes = f.encode(&limits()).unwrap();
    let back = decode(&bytes, &limits()).unwrap();
    assert_eq!(back, f);
    // Meta bytes are carried verbatim, as a signer needs.
    assert_eq!(back.meta.get(), r#"{"n":"\u00e9\"q\"","s":[1,2.50]}"#);
}

#[test]
fn hand_built_frame_decodes() {
    let bytes = Builder::head(2).meta("{}").body(b"xyz").0;
    let f = decode(&bytes, &limits()).unwrap();
    assert_eq!(f.message_type, MessageType::Call);
    assert_eq!(f.dest.first(), "CSMS");
    assert_eq!(f.path.first(), "CP1");
    assert_eq!(f.id, "1");
    assert_eq!(f.action.as_deref(), Some("A"));
    assert_eq!(f.meta.get(), "{}");
    assert_eq!(f.body, b"xyz");
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample();
    assert!(decode(&bytes, &limits()).is_ok());
    for cut in 0..bytes.len() {
        let e = decode(&bytes[..cut], &limits()).unwrap_err();
        // Every field is length-prefixed, so any cut is a short read, never a parse of a prefix.
        assert!(
            matches!(e, BinaryError::Truncated(_)),
            "cut at {cut}: {e:?}"
        );
    }
}

#[test]
fn truncation_inside_each_field_is_named() {
    let bytes = Builder::head(2).meta("{}").body(b"").0;
    assert_eq!(
        decode(&[], &limits()).unwrap_err(),
        BinaryError::Truncated("type")
    );
    assert_eq!(
        decode(&bytes[..1], &limits()).unwrap_err(),
        BinaryError::Truncated("dest")
    );
    // type(1) dest(1+2+4) path count(1) → cut inside the path id.
    assert_eq!(
        decode(&bytes[..10], &limits()).unwrap_err(),
        BinaryError::Truncated("path")
    );
    assert_eq!(
        decode(&bytes[..bytes.len() - 1], &limits()).unwrap_err(),
        BinaryError::Truncated("body length")
    );
}

#[test]
fn lying_body_length_is_refused_without_allocating() {
    let bytes = Builder::head(3).meta("{}").u64(u64::MAX).bytes(b"ab").0;
    assert_eq!(
        decode(&bytes, &limits()).unwrap_err(),
        BinaryError::Truncated("body")
    );
    let bytes = Builder::head(3).meta("{}").u64(3).bytes(b"ab").0;
    assert_eq!(
        decode(&bytes, &limits()).unwrap_err(),
        BinaryError::Truncated("body")
    );
}

#[test]
fn lying_meta_length_is_refused() {
    let bytes = Builder::head(3).u32(u32::MAX).bytes(b"{}").body(b"").0;
    assert_eq!(
        decode(&bytes, &limits()).unwrap_err(),
        BinaryError::Truncated("meta")
    );
}

#[test]
fn lying_string_lengths_are_refused() {
    // The id claims 60 000 bytes: over the limit, refused before reading.
    let bytes = Builder::default()
        .u8(3)
        .route(&["CSMS"])
        .route(&["CP1"])
        .u16(60_000)
        .bytes(b"1")
        .0;
    assert!(matches!(
        decode(&bytes, &limits()).unwrap_err(),
        BinaryError::BadString { field: "id", .. }
    ));
    // Within the limit but past the end of the input.
    let bytes = Builder::default()
        .u8(3)
        .route(&["CSMS"])
        .route(&["CP1"])
        .u16(40)
        .bytes(b"1")
        .0;
    assert_eq!(
        decode(&bytes, &limits()).unwrap_err(),
        BinaryError::Truncated("id")
    );
    // A zero-length id is not an id.
    let bytes = Builder::default()
        .u8(3)
        .route(&["CSMS"])
        .route(&["CP1"])
        .u16(0)
        .meta("{}")
        .body(b"")
        .0;
    assert!(matches!(
        decode(&bytes, &limits()).unwrap_err(),
        BinaryError::BadString { field: "id", .. }
    ));
}

#[test]
fn route_counts_are_bounded() {
    let l = limits();
    for (count, field_first) in [
        (0u8, true),
        (17, true),
        (255, true),
        (0, false),
        (17, false),
    ] {
        let b = Builder::default().u8(2);
        let b = if field_first {
            b.u8(count)
        } else {
            b.route(&["CSMS"]).u8(count)
        };
        let bytes = b.bytes(&[0; 64]).0;
        let e = decode(&bytes, &l).unwrap_err();
        let field = if field_first { "dest" } else { "path" };
        assert_eq!(
            e,
            BinaryError::RouteLength {
                field,
                count: usize::from(count),
                max: l.max_path_len
            }
        );
    }
    // Exactly the hop limit is fine.
    let hops: Vec<String> = (0..l.max_path_len).map(|i| format!("n{i}")).collect();
    let hops: Vec<&str> = hops.iter().map(String::as_str).collect();
    let bytes = Builder::default()
        .u8(3)
        .route(&["CSMS"])
        .route(&hops)
        .str16("1")
        .meta("{}")
        .body(b"")
        .0;
    assert_eq!(
        decode(&bytes, &l).unwrap().path.len(),
        l.max_path_len,
        "max_path_len hops are allowed"
    );
}

#[test]
fn node_id_length_is_bounded() {
    let l = limits();
    let long = "x".repeat(l.max_node_id_bytes + 1);
    let bytes = Builder::default()
        .u8(3)
        .route(&[&long])
        .route(&["CP1"])
        .str16("1")
        .meta("{}")
        .body(b"")
        .0;
    assert!(matches!(
        decode(&bytes, &l).unwrap_err(),
        BinaryError::BadString { field: "dest", .. }
    ));
}

#[test]
fn invalid_utf8_is_refused() {
    let bad = b"\xff\xfe";
    let bytes = Builder::default()
        .u8(3)
        .u8(1)
        .u16(2)
        .bytes(bad)
        .route(&["CP1"])
        .str16("1")
        .meta("{}")
        .body(b"")
        .0;
    assert!(matches!(
        decode(&bytes, &limits()).unwrap_err(),
        BinaryError::BadString { field: "dest", .. }
    ));
    let bytes = Builder::default()
        .u8(3)
        .route(&["CSMS"])
        .route(&["CP1"])
        .u16(2)
        .bytes(b"\xc3\x28")
        .meta("{}")
        .body(b"")
        .0;
    assert!(matches!(
        decode(&bytes, &limits()).unwrap_err(),
        BinaryError::BadString { field: "id", .. }
    ));
    let bytes = Builder::head(3).u32(4).bytes(b"{\"\xff\"").body(b"").0;
    assert_eq!(decode(&bytes, &limits()).unwrap_err(), BinaryError::Meta);
    // The body is raw bytes: anything goes.
    let bytes = Builder::head(3).meta("{}").body(bad).0;
    assert_eq!(decode(&bytes, &limits()).unwrap().body, bad);
}

#[test]
fn meta_must_be_a_json_object() {
    for meta in [
        "", "[]", "1", "\"s\"", "null", "{", "{}x", "{}{}", "{\"a\":}", "[{}]",
    ] {
        let bytes = Builder::head(3).meta(meta).body(b"").0;
        assert_eq!(
            decode(&bytes, &limits()).unwrap_err(),
            BinaryError::Meta,
            "{meta:?}"
        );
    }
    let bytes = Builder::head(3).meta(r#"{"a":[1,{"b":null}]}"#).body(b"").0;
    assert!(decode(&bytes, &limits()).is_ok());
}

#[test]
fn encode_refuses_what_decode_would_refuse() {
    let l = limits();
    let arr = raw("[1]");
    assert_eq!(
        frame(MessageType::CallResult, arr, b"").encode(&l),
        Err(BinaryError::Meta)
    );
    let meta = raw("{}");
    let mut f = frame(MessageType::Call, meta, b"");
    f.id = "".into();
    assert!(matches!(
        f.encode(&l),
        Err(BinaryError::BadString { field: "id", .. })
    ));
    let mut f = frame(MessageType::Call, meta, b"");
    f.path = Route::from_ids((0..=l.max_path_len).map(|i| i.to_string().into()).collect()).unwrap();
    assert!(matches!(
        f.encode(&l),
        Err(BinaryError::RouteLength { field: "path", .. })
    ));
    let big = vec![0u8; 200];
    let small = Limits {
        max_frame_bytes: 100,
        ..l
    };
    assert!(matches!(
        frame(MessageType::Call, meta, &big).encode(&small),
        Err(BinaryError::TooLarge { .. })
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = sample();
    bytes.extend_from_slice(b"zz");
    // The body length is read as written, so the extra bytes are trailing.
    assert_eq!(
        decode(&bytes, &limits()).unwrap_err(),
        BinaryError::TrailingBytes(2)
    );
    let bytes = Builder::head(4).meta("{}").u64(0).bytes(b"\0").0;
    assert_eq!(
        decode(&bytes, &limits()).unwrap_err(),
        BinaryError::TrailingBytes(1)
    );
}

#[test]
fn action_rules() {
    let meta = raw("{}");
    // CALL and SEND need an action; the others must not have one.
    for t in [MessageType::Call, MessageType::Send] {
        let mut f = frame(t, meta, b"");
        f.action = None;
        assert_eq!(f.encode(&limits()), Err(BinaryError::Action));
    }
    for t in [
        MessageType::CallResult,
        MessageType::CallError,
        MessageType::CallResultError,
    ] {
        let mut f = frame(t, meta, b"");
        f.action = Some("X".into());
        assert_eq!(f.encode(&limits()), Err(BinaryError::Action));
    }
    // On the wire a CALL without an action reads the meta length as the action length.
    let bytes = Builder::default()
        .u8(2)
        .route(&["CSMS"])
        .route(&["CP1"])
        .str16("1")
        .meta("{}")
        .body(b"")
        .0;
    assert!(decode(&bytes, &limits()).is_err());
    // An empty action is refused.
    let bytes = Builder::default()
        .u8(6)
        .route(&["*"])
        .route(&["CP1"])
        .str16("1")
        .u16(0)
        .meta("{}")
        .body(b"")
        .0;
    assert!(matches!(
        decode(&bytes, &limits()).unwrap_err(),
        BinaryError::BadString {
            field: "action",
            ..
        }
    ));
    // A CALLRESULT written with an action has its action bytes read as the meta length.
    let bytes = Builder::default()
        .u8(3)
        .route(&["CSMS"])
        .route(&["CP1"])
        .str16("1")
        .str16("A")
        .meta("{}")
        .body(b"")
        .0;
    assert!(decode(&bytes, &limits()).is_err());
}

#[test]
fn unknown_types_are_refused() {
    for t in [0u8, 1, 7, 255] {
        let bytes = Builder::head(t).meta("{}").body(b"").0;
        assert_eq!(
            decode(&bytes, &limits()).unwrap_err(),
            BinaryError::UnknownMessageType(t)
        );
    }
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let small = Limits {
        max_frame_bytes: 16,
        ..limits()
    };
    // Not even a valid type byte: the size check comes first.
    let junk = [0xffu8; 17];
    assert_eq!(
        decode(&junk, &small).unwrap_err(),
        BinaryError::TooLarge { len: 17, max: 16 }
    );
    let body = vec![7u8; 64];
    let bytes = Builder::head(3).meta("{}").body(&body).0;
    assert!(matches!(
        decode(&bytes, &small).unwrap_err(),
        BinaryError::TooLarge { .. }
    ));
}
