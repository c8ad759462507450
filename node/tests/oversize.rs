//! A 10 MiB frame closes that connection with 1009 and is never buffered past the 1 MiB limit;
//! the node and the other chargers carry on.

mod common;
use common::{NodeProc, call, connect};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn ten_mib_frame_closes_with_1009_and_others_are_unaffected() {
    let node = NodeProc::start("max_frame_bytes = 1048576", "");
    let mut good = Vec::new();
    for i in 0..3 {
        let mut ws = connect(
            &node.charger_url,
            &format!("CP-GOOD-{i}"),
            Some("ocpp1.6"),
            None,
        )
        .await
        .unwrap();
        let r = call(&mut ws, r#"[2,"b","Heartbeat",{}]"#).await;
        assert_eq!(r[0], 3);
        good.push(ws);
    }
    let before_kib = node.peak_rss_kib();

    let mut hostile = connect(&node.charger_url, "CP-HUGE", Some("ocpp1.6"), None)
        .await
        .unwrap();
    let huge = format!(
        r#"[2,"big","DataTransfer",{{"vendorId":"v","data":"{}"}}]"#,
        "x".repeat(10 * 1024 * 1024)
    );
    // The node may close before the whole frame is written; that is the point.
    let _ = hostile.send(Message::text(huge)).await;
    let close_code = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(20), hostile.next())
            .await
            .expect("close within 20 s")
        {
            Some(Ok(Message::Close(Some(frame)))) => break Some(frame.code),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => break None,
            Some(Ok(_)) => continue,
        }
    };
    assert_eq!(
        close_code,
        Some(CloseCode::Size),
        "the node closes with 1009"
    );

    for (i, ws) in good.iter_mut().enumerate() {
        let r = call(ws, &format!(r#"[2,"after-{i}","Heartbeat",{{}}]"#)).await;
        assert_eq!(r[0], 3, "charger {i} still served: {r}");
    }
    let grown_kib = node.peak_rss_kib().saturating_sub(before_kib);
    // Buffering the frame would add at least 10 MiB of peak RSS; refusing it at the header adds
    // nothing of that order.
    assert!(
        grown_kib < 4 * 1024,
        "peak RSS grew by {grown_kib} KiB while refusing a 10 MiB frame"
    );
    let metrics = common::http_get_text(&node.admin_url, "/metrics");
    assert!(
        metrics.contains("ocpp_oversize_frames_total 1"),
        "{metrics}"
    );
}
