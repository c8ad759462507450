//! ARCHITECTURE §6.5: every row of the bad-input table, for 1.6 and for 2.0.1, against the real
//! node; the connection must stay up after each.

mod common;
use common::{NodeProc, call, connect};
use serde_json::Value;

/// (frame, expected id, expected 1.6 code, expected 2.0.1 code)
fn rows(v16: bool) -> Vec<(String, &'static str, &'static str)> {
    let (boot_missing, boot_type, reset) = if v16 {
        (
            r#"{"chargePointVendor":"v"}"#,
            r#"{"chargePointVendor":5,"chargePointModel":"m"}"#,
            r#"{"type":"Hard"}"#,
        )
    } else {
        (
            r#"{"reason":"PowerUp"}"#,
            r#"{"reason":"Bogus","chargingStation":{"model":"m","vendorName":"v"}}"#,
            r#"{"type":"Immediate"}"#,
        )
    };
    let (framing, unknown_type, missing, format) = if v16 {
        (
            "FormationViolation",
            "FormationViolation",
            "ProtocolError",
            "FormationViolation",
        )
    } else {
        (
            "RpcFrameworkError",
            "MessageTypeNotSupported",
            "OccurrenceConstraintViolation",
            "FormatViolation",
        )
    };
    vec![
        // not JSON, not an array, id unreadable → "-1"
        ("this is not json".into(), "-1", framing),
        (r#"{"not":"an array"}"#.into(), "-1", framing),
        (r#"[2, 17, "Heartbeat", {}]"#.into(), "-1", framing),
        // wrong array length, id readable
        (r#"[2, "len-1", "Heartbeat"]"#.into(), "len-1", framing),
        // unknown message type number
        (
            r#"[9, "type-1", "Heartbeat", {}]"#.into(),
            "type-1",
            unknown_type,
        ),
        // SEND exists only from 2.1 on
        (
            r#"[6, "send-1", "Heartbeat", {}]"#.into(),
            "send-1",
            unknown_type,
        ),
        // unknown action / known but not handled
        (
            r#"[2, "act-1", "NoSuchAction", {}]"#.into(),
            "act-1",
            "NotImplemented",
        ),
        (
            format!(r#"[2, "act-2", "Reset", {reset}]"#),
            "act-2",
            "NotSupported",
        ),
        // payload: missing required field, wrong type or enum, unknown property
        (
            format!(r#"[2, "pl-1", "BootNotification", {boot_missing}]"#),
            "pl-1",
            missing,
        ),
        (
            format!(r#"[2, "pl-2", "BootNotification", {boot_type}]"#),
            "pl-2",
            "TypeConstraintViolation",
        ),
        (
            r#"[2, "pl-3", "Heartbeat", {"surprise": 1}]"#.into(),
            "pl-3",
            format,
        ),
    ]
}

async fn run_table(version: &str) {
    let node = NodeProc::start("", "");
    let mut ws = connect(&node.charger_url, "CP-BAD", Some(version), None)
        .await
        .expect("upgrade");
    for (frame, id, code) in rows(version == "ocpp1.6") {
        let reply = call(&mut ws, &frame).await;
        let arr = reply
            .as_array()
            .unwrap_or_else(|| panic!("{version}: reply to {frame} is not an array: {reply}"));
        assert_eq!(arr.len(), 5, "{version}: CALLERROR has 5 elements: {reply}");
        assert_eq!(arr[0], 4, "{version}: {frame} → {reply}");
        assert_eq!(arr[1], id, "{version}: {frame} → {reply}");
        assert_eq!(arr[2], code, "{version}: {frame} → {reply}");
        assert!(arr[3].is_string() && arr[4].is_object(), "{reply}");
        // Still up: a valid call right after is answered normally.
        let ok = call(&mut ws, r#"[2, "hb", "Heartbeat", {}]"#).await;
        assert_eq!(
            ok[0], 3,
            "{version}: connection unusable after {frame}: {ok}"
        );
        assert_eq!(ok[1], "hb");
        assert!(ok[2]["currentTime"].is_string());
    }
}

#[tokio::test]
async fn bad_frames_v16() {
    run_table("ocpp1.6").await;
}

#[tokio::test]
async fn bad_frames_v201() {
    run_table("ocpp2.0.1").await;
}

#[tokio::test]
async fn results_and_errors_from_a_charger_get_no_reply() {
    let node = NodeProc::start("", "");
    let mut ws = connect(&node.charger_url, "CP-RES", Some("ocpp2.0.1"), None)
        .await
        .expect("upgrade");
    // Unsolicited CALLRESULT / CALLERROR: nothing to answer; the next reply is the heartbeat's.
    for f in [r#"[3, "x1", {}]"#, r#"[4, "x2", "GenericError", "", {}]"#] {
        futures_util::SinkExt::send(&mut ws, tokio_tungstenite::tungstenite::Message::text(f))
            .await
            .unwrap();
    }
    let reply: Value = call(&mut ws, r#"[2, "hb", "Heartbeat", {}]"#).await;
    assert_eq!(
        (reply[0].clone(), reply[1].clone()),
        (3.into(), "hb".into()),
        "{reply}"
    );
}
