//! A charger that sends a CALL and hangs up at once (a StopTransaction followed by a
//! disconnect is ordinary): the CALL still reaches the CSMS, before the hub closes that
//! charger's CSMS socket. Both with the charger on an edge (edge → hub) and directly on the hub.

mod common;
use std::time::Duration;

use common::topology::{
    Charger, Csms, NodeConfig, Timers, Uplink, diagnostics, wait_for, wait_uplink_up,
};
use futures_util::SinkExt as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

fn timers() -> Timers {
    Timers {
        request_timeout_s: 10,
        ..Timers::default()
    }
}

/// Sends `[2,…,"Heartbeat",{}]` and closes the socket without waiting for the answer.
async fn call_and_hang_up(mut charger: Charger) {
    let id = charger.next_id();
    let frame = json!([2, id, "Heartbeat", {}]).to_string();
    charger.ws.send(Message::text(frame)).await.expect("send");
    charger.ws.close(None).await.expect("close");
}

#[tokio::test]
async fn a_call_sent_just_before_hanging_up_reaches_the_csms() {
    let csms = Csms::start();
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = NodeConfig::hub(hub_dir.path(), "hub-p", &csms.url, "127.0.0.1:0")
        .timers(timers())
        .node_peer("edge-p", &["CP-*"], None)
        .start(hub_dir);
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = NodeConfig::edge(edge_dir.path(), "edge-p")
        .timers(timers())
        .uplink(Uplink::new("hub", hub.url("nodes"), 0))
        .start(edge_dir);
    wait_uplink_up(&edge, "hub", WAIT, &[&hub]).await;

    // Through the edge, and straight to the hub's own listener (one hop).
    for (url, id) in [(edge.url("chargers"), "CP-P1"), (hub.url("nodes"), "CP-P2")] {
        for round in 1..=5 {
            let charger = Charger::connect(url, id).await;
            assert!(
                csms.wait_connected(id, round, WAIT).await,
                "{id}: no CSMS connection in round {round}{}",
                diagnostics(&[&edge, &hub])
            );
            call_and_hang_up(charger).await;
            let arrived = wait_for(WAIT, || {
                (csms.calls(Some(id), "Heartbeat") == round).then_some(())
            })
            .await;
            assert!(
                arrived.is_some(),
                "{id}: round {round}: the CSMS got {} Heartbeats{}",
                csms.calls(Some(id), "Heartbeat"),
                diagnostics(&[&edge, &hub])
            );
            // Presence is mirrored: the charger left, so its CSMS socket closes too.
            let closed = wait_for(WAIT, || (csms.open_connections(id) == 0).then_some(())).await;
            assert!(
                closed.is_some(),
                "{id}: CSMS socket still open after the charger left"
            );
        }
    }
}
