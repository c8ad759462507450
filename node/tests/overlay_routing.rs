//! Overlay routing refusals with real processes (ARCHITECTURE §3.4, §6.2):
//!
//! (a) loop: two edges that are each other's uplink; a charger's CALL goes round once, is dropped
//!     as a loop (security event), the charger gets the timeout CALLERROR, nothing circulates;
//! (b) unreachable: a CALL from an overlay peer to an unknown destination gets CALLERROR
//!     GenericError "unreachable" from the hub;
//! (c) allow-list: a frame whose path[0] is outside the peer's allow-list is dropped without an
//!     answer, never reaches the CSMS, and is logged as `path_not_allowed`.

mod common;
use std::time::Duration;

use common::Ws;
use common::topology::{
    Charger, Csms, Node, NodeConfig, Relay, Timers, Uplink, diagnostics, has_security_event, ids,
    metric_sum, overlay_connect, overlay_next, wait_for, wait_uplink_up,
};
use futures_util::SinkExt as _;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const UP: Duration = Duration::from_secs(15);
const FORWARDED: &str = "ocpp_frames_forwarded_total";

#[tokio::test]
async fn a_frame_that_comes_back_is_dropped_as_a_loop() {
    let timers = Timers {
        request_timeout_s: 3,
        ..Timers::default()
    };
    // A dials B through a relay that holds its port from the start, so both configs can name
    // each other's address without a fixed port.
    let relay = Relay::start(None);
    let a_dir = tempfile::tempdir().unwrap();
    let a = NodeConfig::edge(a_dir.path(), "edge-la")
        .timers(timers)
        .uplink(Uplink::new("to-b", &relay.url("/ocpp"), 0))
        .node_peer("edge-lb", &["*"], None)
        .start(a_dir);
    let b_dir = tempfile::tempdir().unwrap();
    let b = NodeConfig::edge(b_dir.path(), "edge-lb")
        .timers(timers)
        .uplink(Uplink::new("to-a", a.url("chargers"), 0))
        .node_peer("edge-la", &["*"], None)
        .start(b_dir);
    relay.set_target(b.addr("chargers"));
    wait_uplink_up(&a, "to-b", UP, &[&b]).await;
    wait_uplink_up(&b, "to-a", UP, &[&a]).await;

    let mut charger = Charger::connect(a.url("chargers"), "CP-L1").await;
    // Not a Heartbeat: an edge answers that itself when the CSMS's answer does not come.
    let payload = serde_json::json!({"vendorId": "loop-test"});
    let (id, reply) = charger
        .call("DataTransfer", payload, Duration::from_secs(10))
        .await;
    let reply = reply.unwrap_or_else(|| {
        panic!(
            "no CALLERROR within 10 s (request_timeout_s = 3){}",
            diagnostics(&[&a, &b])
        )
    });
    assert_eq!(reply[0], 4, "{reply}{}", diagnostics(&[&a, &b]));
    assert_eq!(reply[1], id.as_str(), "{reply}");
    assert_eq!(reply[2], "GenericError", "{reply}");
    assert_eq!(reply[3], "timeout", "{reply}");

    let logged = wait_for(Duration::from_secs(5), || {
        (has_security_event(&a.stderr_log(), "loop") || has_security_event(&b.stderr_log(), "loop"))
            .then_some(())
    })
    .await;
    assert!(
        logged.is_some(),
        "neither edge logged security_event=loop{}",
        diagnostics(&[&a, &b])
    );

    // Nothing circulates: the forwarded-frame counters stay small, now and a few seconds later.
    let forwarded = |n: &Node| metric_sum(&n.metrics(), FORWARDED);
    let first = (forwarded(&a), forwarded(&b));
    assert!(
        first.0.is_some() || first.1.is_some(),
        "{FORWARDED} is missing from both nodes' /metrics"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = (forwarded(&a), forwarded(&b));
    eprintln!("{FORWARDED} (edge-la, edge-lb): {first:?}, 3 s later {later:?}");
    for (node, count) in [
        ("edge-la", first.0),
        ("edge-lb", first.1),
        ("edge-la (3 s later)", later.0),
        ("edge-lb (3 s later)", later.1),
    ] {
        let count = count.unwrap_or(0.0);
        assert!(
            count <= 4.0,
            "{node}: {FORWARDED} = {count}: the frame circulates (first {first:?}, later \
             {later:?}){}",
            diagnostics(&[&a, &b])
        );
    }
}

/// A hub with the in-test CSMS and one configured overlay peer `peer-r` that may speak for
/// `CP-R*` (and itself).
fn hub_with_peer(csms: &Csms) -> Node {
    let dir = tempfile::tempdir().unwrap();
    NodeConfig::hub(dir.path(), "hub-r", &csms.url, "127.0.0.1:0")
        .timers(Timers {
            request_timeout_s: 5,
            ..Timers::default()
        })
        .node_peer("peer-r", &["CP-R*"], None)
        .start(dir)
}

async fn peer_link(hub: &Node) -> Ws {
    // No subprotocol, as the node's own uplink dials.
    overlay_connect(hub.url("nodes"), "peer-r", None, None)
        .await
        .unwrap_or_else(|status| {
            panic!(
                "overlay upgrade of peer-r refused: HTTP {status}{}",
                diagnostics(&[hub])
            )
        })
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send on the overlay link");
}

/// `[4, dest, path, id, "GenericError", "unreachable", {}]` addressed to `to`, from `hub`.
fn assert_unreachable(reply: &Value, to: &str, hub: &str, id: &str) {
    let frame = reply.as_array().expect("array");
    assert_eq!(frame.len(), 7, "{reply}");
    assert_eq!(reply[0], 4, "{reply}");
    assert_eq!(ids(&reply[1]), [to], "dest is the CALL's path[0]: {reply}");
    assert_eq!(ids(&reply[2]), [hub], "path is the hub's id: {reply}");
    assert_eq!(reply[3], id, "{reply}");
    assert_eq!(reply[4], "GenericError", "{reply}");
    assert_eq!(reply[5], "unreachable", "{reply}");
    assert!(reply[6].is_object(), "{reply}");
}

#[tokio::test]
async fn a_call_to_an_unknown_destination_gets_unreachable() {
    let csms = Csms::start();
    let hub = hub_with_peer(&csms);
    let mut ws = peer_link(&hub).await;
    send(
        &mut ws,
        serde_json::json!([2, "NOWHERE", "peer-r", "u1", "Heartbeat", {}]),
    )
    .await;
    let reply = overlay_next(&mut ws, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| {
            panic!(
                "no answer within 10 s (request_timeout_s = 5){}",
                diagnostics(&[&hub])
            )
        });
    assert_unreachable(&reply, "peer-r", "hub-r", "u1");
    assert!(csms.with_log(|l| l.calls.is_empty() && l.connections.is_empty()));
}

#[tokio::test]
async fn a_path_outside_the_allow_list_is_dropped_and_logged() {
    let csms = Csms::start();
    let hub = hub_with_peer(&csms);
    let mut ws = peer_link(&hub).await;

    // CP-OTHER is not in peer-r's allow-list ["CP-R*"]: to the CSMS or to an unknown node, the
    // frame is dropped at ingress and never answered.
    send(
        &mut ws,
        serde_json::json!([2, "CSMS", "CP-OTHER", "u2", "Heartbeat", {}]),
    )
    .await;
    send(
        &mut ws,
        serde_json::json!([2, "NOWHERE", "CP-OTHER", "u3", "Heartbeat", {}]),
    )
    .await;
    let answer = overlay_next(&mut ws, Duration::from_secs(7)).await;
    assert!(
        answer.is_none(),
        "a refused frame got an answer: {answer:?}{}",
        diagnostics(&[&hub])
    );
    let logged = wait_for(Duration::from_secs(5), || {
        has_security_event(&hub.stderr_log(), "path_not_allowed").then_some(())
    })
    .await;
    assert!(
        logged.is_some(),
        "no security_event=path_not_allowed{}",
        diagnostics(&[&hub])
    );
    assert!(
        csms.connections("CP-OTHER").is_empty() && csms.calls_of("CP-OTHER").is_empty(),
        "nothing of CP-OTHER reaches the CSMS"
    );
    assert!(
        csms.with_log(|l| l.calls.is_empty()),
        "the CSMS got no CALL"
    );

    // The link is still up and an allowed originator is routed: the same CALL from CP-R1 gets
    // the unreachable answer, addressed to CP-R1.
    send(
        &mut ws,
        serde_json::json!([2, "NOWHERE", "CP-R1", "u4", "Heartbeat", {}]),
    )
    .await;
    let reply = overlay_next(&mut ws, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no answer for CP-R1{}", diagnostics(&[&hub])));
    assert_unreachable(&reply, "CP-R1", "hub-r", "u4");
}
