use serde_json::value::RawValue;
use wire::text::{Body, DecodeErrorKind, Frame, OverlayFrame, decode_overlay, decode_plain};
use wire::{ErrorCode, Limits, MessageType, OcppVersion, Route};

fn limits() -> Limits {
    Limits::default()
}

#[test]
fn decodes_plain_call_with_payload_bytes_untouched() {
    let text = r#"[2, "abc", "BootNotification", {"b": 1.50, "a": "x\u00e9"}]"#;
    let f = decode_plain(text, &limits()).unwrap();
    assert_eq!(f.id, "abc");
    assert_eq!(f.action(), Some("BootNotification"));
    // The payload is the exact slice received: number formatting and escapes survive.
    assert_eq!(f.payload().unwrap().get(), r#"{"b": 1.50, "a": "x\u00e9"}"#);
}

#[test]
fn every_plain_type_roundtrips() {
    let p: &RawValue = serde_json::from_str(r#"{"k":[1,2]}"#).unwrap();
    let frames = [
        Frame::call("1", "Heartbeat", p),
        Frame::result("2", p),
        Frame::error("3", "GenericError", "oops \"quoted\"\n"),
        Frame {
            id: "4".into(),
            body: Body::Send {
                action: "NotifyX".into(),
                payload: p.into(),
            },
        },
    ];
    for f in frames {
        let s = f.to_plain_string();
        assert_eq!(decode_plain(&s, &limits()).unwrap(), f, "{s}");
    }
}

#[test]
fn overlay_roundtrips_with_string_and_array_routes() {
    let p: &RawValue = serde_json::from_str("{}").unwrap();
    let mut path = Route::single("CP1");
    path.push("edge-1");
    let f = OverlayFrame {
        dest: Route::single("CSMS"),
        path,
        frame: Frame::call("u1", "Heartbeat", p),
    };
    let s = f.to_text();
    assert_eq!(s, r#"[2,"CSMS",["CP1","edge-1"],"u1","Heartbeat",{}]"#);
    assert_eq!(decode_overlay(&s, &limits()).unwrap(), f);
}

#[test]
fn unreadable_frames_answer_under_minus_one() {
    for text in [
        "not json",
        "{\"a\":1}",
        "[]",
        "[2]",
        "[2, 5, \"A\", {}]",
        "[2, \"\", \"A\", {}]",
    ] {
        let e = decode_plain(text, &limits()).unwrap_err();
        assert_eq!(e.reply_id(), "-1", "{text}");
        assert_eq!(e.error_code(), ErrorCode::RpcFrameworkError, "{text}");
    }
}

#[test]
fn wrong_length_keeps_the_id() {
    let e = decode_plain(r#"[2,"id7","Heartbeat"]"#, &limits()).unwrap_err();
    assert_eq!(e.reply_id(), "id7");
    assert!(matches!(
        e.kind,
        DecodeErrorKind::WrongLength {
            expected: 4,
            got: 3,
            ..
        }
    ));
    // A plain peer sending an overlay-shaped frame is a wrong length too.
    let e = decode_plain(r#"[2,"CSMS","CP1","id8","Heartbeat",{}]"#, &limits()).unwrap_err();
    assert!(matches!(
        e.kind,
        DecodeErrorKind::WrongLength { got: 6, .. }
    ));
}

#[test]
fn unknown_type_keeps_the_id_and_maps_to_message_type_not_supported() {
    let e = decode_plain(r#"[9,"id9",{}]"#, &limits()).unwrap_err();
    assert_eq!(e.reply_id(), "id9");
    assert_eq!(e.error_code(), ErrorCode::MessageTypeNotSupported);
    assert_eq!(
        e.error_code().spelling(OcppVersion::V16),
        "FormationViolation"
    );
}

#[test]
fn limits_apply() {
    let l = Limits {
        max_frame_bytes: 32,
        ..Limits::default()
    };
    let big = format!(r#"[2,"1","A",{{"x":"{}"}}]"#, "y".repeat(40));
    assert!(matches!(
        decode_plain(&big, &l).unwrap_err().kind,
        DecodeErrorKind::TooLarge { .. }
    ));

    let long_id = format!(r#"[2,"{}","A",{{}}]"#, "i".repeat(65));
    assert_eq!(
        decode_plain(&long_id, &limits()).unwrap_err().reply_id(),
        "-1"
    );

    let hops: Vec<String> = (0..17).map(|i| format!("\"n{i}\"")).collect();
    let deep = format!(r#"[2,"CSMS",[{}],"1","A",{{}}]"#, hops.join(","));
    let e = decode_overlay(&deep, &limits()).unwrap_err();
    assert_eq!(e.reply_id(), "1");
    assert!(matches!(
        e.kind,
        DecodeErrorKind::BadField { field: "path", .. }
    ));
}

#[test]
fn huge_arrays_are_counted_not_kept() {
    let many = format!("[2,\"1\",\"A\",{{}}{}]", ",0".repeat(100_000));
    let e = decode_plain(
        &many,
        &Limits {
            max_frame_bytes: 1 << 20,
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(matches!(
        e.kind,
        DecodeErrorKind::WrongLength { got: 100_004, .. }
    ));
}

#[test]
fn types_5_and_6_need_ocpp_2_1() {
    assert!(!MessageType::Send.allowed_in(OcppVersion::V16));
    assert!(!MessageType::CallResultError.allowed_in(OcppVersion::V201));
    assert!(MessageType::Send.allowed_in(OcppVersion::V21));
    assert!(MessageType::Call.allowed_in(OcppVersion::V16));
}

#[test]
fn escaped_ids_decode_and_reencode() {
    let f = decode_plain(r#"[3,"a\"b\u0001",{}]"#, &limits()).unwrap();
    assert_eq!(f.id, "a\"b\u{1}");
    let text = f.to_plain_string();
    let again = decode_plain(&text, &limits()).unwrap();
    assert_eq!(again, f);
}
