//! Upgrade rules of ARCHITECTURE §6.2: subprotocols, charger ids, overlay refusal, duplicates.

mod common;
use common::{NodeProc, call, connect, connect_with};
use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn subprotocol_negotiation() {
    let node = NodeProc::start("", "");
    let url = &node.charger_url;
    assert_eq!(
        connect(url, "CP-A", Some("ocpp9.9"), None).await.err(),
        Some(400),
        "unknown subprotocol"
    );
    // Several offered: the highest wins.
    let mut ws = connect(url, "CP-B", Some("ocpp1.6, ocpp2.0.1"), None)
        .await
        .unwrap();
    let boot = call(&mut ws, r#"[2,"b","BootNotification",{"reason":"PowerUp","chargingStation":{"model":"m","vendorName":"v"}}]"#).await;
    assert_eq!(boot[2]["status"], "Accepted", "answered as 2.0.1: {boot}");
    // None offered: treated as 1.6.
    let mut ws = connect(url, "CP-C", None, None).await.unwrap();
    let boot = call(
        &mut ws,
        r#"[2,"b","BootNotification",{"chargePointVendor":"v","chargePointModel":"m"}]"#,
    )
    .await;
    assert_eq!(boot[2]["status"], "Accepted", "answered as 1.6: {boot}");
    let status = node.get_json("/api/status");
    let versions: Vec<(String, String)> = status["chargers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["ocppVersion"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            ("CP-B".into(), "ocpp2.0.1".into()),
            ("CP-C".into(), "ocpp1.6".into())
        ]
    );
}

#[tokio::test]
async fn missing_subprotocol_can_be_refused() {
    let node = NodeProc::start("missing_subprotocol = \"refuse\"", "");
    assert_eq!(
        connect(&node.charger_url, "CP-A", None, None).await.err(),
        Some(400)
    );
}

#[tokio::test]
async fn charger_id_rules() {
    let node = NodeProc::start("", "");
    let url = &node.charger_url;
    for bad in [
        "CP%3A1",
        "CSMS",
        "*",
        "lc-test",
        &"x".repeat(49),
        "CP%0A1",
        "CP%1B%5B31m",
        "CP%00",
    ] {
        assert_eq!(
            connect(url, bad, Some("ocpp1.6"), None).await.err(),
            Some(400),
            "{bad}"
        );
    }
    // Percent-decoded: "CP%20A" is the charger "CP A".
    let _ws = connect(url, "CP%20A", Some("ocpp1.6"), None).await.unwrap();
    let status = node.get_json("/api/status");
    assert_eq!(status["chargers"][0]["id"], "CP A");
    // Not under the listener's path.
    let wrong_path = node.charger_url.replace("/ocpp", "/elsewhere");
    assert_eq!(
        connect(&wrong_path, "CP-1", Some("ocpp1.6"), None)
            .await
            .err(),
        Some(404)
    );
}

#[tokio::test]
async fn a_charger_asking_for_overlay_mode_is_refused() {
    let node = NodeProc::start("", "");
    let refused = connect_with(
        &node.charger_url,
        "CP-OVL",
        Some("ocpp1.6"),
        None,
        &[("X-OCPP-NetworkingMode", "OverlayNetwork")],
    )
    .await;
    assert_eq!(refused.err(), Some(403));
    assert!(
        node.stderr_log()
            .contains("overlay mode is granted only to configured node identities")
    );
}

#[tokio::test]
async fn a_duplicate_identity_replaces_the_older_connection() {
    let node = NodeProc::start("", "");
    let mut old = connect(&node.charger_url, "CP-DUP", Some("ocpp1.6"), None)
        .await
        .unwrap();
    let mut new = connect(&node.charger_url, "CP-DUP", Some("ocpp1.6"), None)
        .await
        .unwrap();
    let closed = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), old.next())
            .await
            .expect("old closed in time")
        {
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break true,
            Some(Ok(_)) => continue,
        }
    };
    assert!(closed);
    assert_eq!(call(&mut new, r#"[2,"h","Heartbeat",{}]"#).await[0], 3);
    let status = node.get_json("/api/status");
    assert_eq!(status["chargers"].as_array().unwrap().len(), 1, "{status}");
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_at_once() {
    let node = NodeProc::start("max_connections = 2", "");
    let mut first = connect(&node.charger_url, "CP-1", Some("ocpp1.6"), None)
        .await
        .unwrap();
    let _second = connect(&node.charger_url, "CP-2", Some("ocpp1.6"), None)
        .await
        .unwrap();
    // The third gets no upgrade answer: the socket is closed before the request is read.
    let addr = node
        .charger_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut third, &mut buf),
    )
    .await
    .expect("closed promptly");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "no HTTP answer for a connection over the cap"
    );
    assert_eq!(
        call(&mut first, r#"[2,"h","Heartbeat",{}]"#).await[0],
        3,
        "open sessions keep working"
    );
    let metrics = common::http_get_text(&node.admin_url, "/metrics");
    assert!(
        metrics.contains(r#"ocpp_handshakes_refused_total{reason="capacity"} 1"#),
        "{metrics}"
    );
    // A slot frees when a connection ends.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(ws) = connect(&node.charger_url, "CP-3", Some("ocpp1.6"), None).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "a freed slot is reused");
}
