//! Uplink loss and failover with real processes: chargers → edge → hub(s) → in-test CSMS.
//!
//! (a) The only hub is SIGKILLed: the chargers stay connected to the edge, which answers their
//!     Heartbeats itself and refuses a DataTransfer with CALLERROR GenericError "uplink
//!     unavailable"; the hub comes back on the same port, the edge
//!     reconnects and traffic reaches the CSMS again.
//! (b) Two hubs with priorities 0 and 1: exactly one overlay link (to the preferred hub) while it
//!     lives, the standby hub is never dialled; killing the preferred one moves the edge to the
//!     standby within 5 s, and a Heartbeat reaches the CSMS through it.

mod common;
use std::time::{Duration, Instant};

use common::topology::{
    Charger, Csms, Node, NodeConfig, Relay, Timers, Uplink, diagnostics, overlay_links,
    reserve_port, wait_for, wait_uplink_up,
};

/// Timers for both tests. Loss of a killed hub is seen at once (the kernel closes its sockets);
/// reconnecting takes at most reconnect_max_ms plus a connect, far below the 5 s budget.
fn timers() -> Timers {
    Timers {
        request_timeout_s: 10,
        announce_ttl_s: 300,
        ping_interval_s: 5,
        connect_timeout_s: 1,
        reconnect_initial_ms: 200,
        reconnect_max_ms: 1000,
        csms_grace_s: 10,
    }
}

const REPLY: Duration = Duration::from_secs(10);
const UP: Duration = Duration::from_secs(15);

/// The charger's Heartbeat is answered by the CSMS: a CALLRESULT with its own id and the
/// CSMS's currentTime.
async fn heartbeat_reaches_csms(charger: &mut Charger, csms: &Csms, nodes: &[&Node]) {
    let before = csms.calls(Some(&charger.id), "Heartbeat");
    let (id, reply) = charger.heartbeat(REPLY).await;
    let reply = reply.unwrap_or_else(|| {
        panic!(
            "{}: no answer to Heartbeat {id} within {REPLY:?}{}",
            charger.id,
            diagnostics(nodes)
        )
    });
    assert_eq!(reply[0], 3, "{}: {reply}{}", charger.id, diagnostics(nodes));
    assert_eq!(reply[1], id.as_str(), "the charger's own id is restored");
    assert_eq!(reply[2]["currentTime"], "2026-01-01T00:00:00Z", "{reply}");
    assert_eq!(
        csms.calls(Some(&charger.id), "Heartbeat"),
        before + 1,
        "the CSMS saw exactly this Heartbeat of {}",
        charger.id
    );
}

#[tokio::test]
async fn chargers_stay_connected_while_the_hub_restarts() {
    let csms = Csms::start();
    let port = reserve_port();
    let hub_dir = tempfile::tempdir().unwrap();
    let mut hub = NodeConfig::hub(
        hub_dir.path(),
        "hub-a",
        &csms.url,
        &format!("127.0.0.1:{port}"),
    )
    .timers(timers())
    .node_peer("edge-a", &["CP-*"], None)
    .start(hub_dir);
    let hub_url = hub.url("nodes").to_owned();

    let edge_dir = tempfile::tempdir().unwrap();
    let edge = NodeConfig::edge(edge_dir.path(), "edge-a")
        .timers(timers())
        .uplink(Uplink::new("hub", &hub_url, 0))
        .start(edge_dir);
    wait_uplink_up(&edge, "hub", UP, &[&hub]).await;

    let ids = ["CP-A1", "CP-A2", "CP-A3"];
    let mut chargers = Vec::new();
    for id in ids {
        let mut c = Charger::connect(edge.url("chargers"), id).await;
        assert!(
            csms.wait_connected(id, 1, REPLY).await,
            "the hub opened no CSMS connection for {id}{}",
            diagnostics(&[&edge, &hub])
        );
        let (_, boot) = c.boot(REPLY).await;
        let boot = boot.expect("boot answered");
        assert_eq!(boot[2]["status"], "Accepted", "{boot}");
        assert_eq!(csms.calls(Some(id), "BootNotification"), 1);
        heartbeat_reaches_csms(&mut c, &csms, &[&edge, &hub]).await;
        chargers.push(c);
    }
    assert_eq!(
        csms.with_log(|l| l.connections[0].protocol.clone())
            .as_deref(),
        Some("ocpp1.6"),
        "the hub opens the CSMS socket with the charger's subprotocol"
    );

    // SIGKILL the hub: the edge sees the loss, the chargers keep their sockets.
    hub.kill();
    let down = wait_for(Duration::from_secs(5), || {
        (edge.uplink_state("hub").as_deref() != Some("up")).then_some(())
    })
    .await;
    assert!(
        down.is_some(),
        "the edge still reports the uplink up 5 s after the hub was killed: {}{}",
        edge.status(),
        diagnostics(&[&edge])
    );
    for c in &mut chargers {
        let (id, reply) = c.heartbeat(REPLY).await;
        let reply = reply.unwrap_or_else(|| {
            panic!(
                "{}: no answer to Heartbeat {id} while the uplink is down{}",
                c.id,
                diagnostics(&[&edge])
            )
        });
        assert_eq!(reply[0], 3, "the edge answers a Heartbeat itself: {reply}");
        assert_ne!(
            reply[2]["currentTime"], "2026-01-01T00:00:00Z",
            "not the CSMS's answer: {reply}"
        );
        let payload = serde_json::json!({"vendorId": "test"});
        let (id, reply) = c.call("DataTransfer", payload, REPLY).await;
        let reply = reply.unwrap_or_else(|| {
            panic!(
                "{}: no answer to DataTransfer {id} while the uplink is down{}",
                c.id,
                diagnostics(&[&edge])
            )
        });
        assert_eq!(reply[0], 4, "{}: {reply}", c.id);
        assert_eq!(reply[1], id.as_str(), "{reply}");
        assert_eq!(reply[2], "GenericError", "{reply}");
        assert_eq!(reply[3], "uplink unavailable", "{reply}");
    }
    let status = edge.status();
    let connected: Vec<&str> = status["chargers"]
        .as_array()
        .expect("chargers in status")
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    for id in ids {
        assert!(
            connected.contains(&id),
            "{id} is still connected to the edge: {status}"
        );
    }

    // The hub comes back on the same port: the edge reconnects, announces, and the hub reopens
    // every charger's CSMS socket.
    hub.restart();
    assert_eq!(hub.url("nodes"), hub_url, "same port after the restart");
    wait_uplink_up(&edge, "hub", UP, &[&hub]).await;
    for c in &mut chargers {
        assert!(
            csms.wait_connected(&c.id, 2, REPLY).await,
            "the restarted hub opened no CSMS connection for {}{}",
            c.id,
            diagnostics(&[&edge, &hub])
        );
        heartbeat_reaches_csms(c, &csms, &[&edge, &hub]).await;
        assert_eq!(csms.calls(Some(&c.id), "Heartbeat"), 2, "{}", c.id);
    }
    let status = edge.status();
    assert_eq!(status["uplinks"][0]["state"], "up", "{status}");
    assert_eq!(overlay_links(&status).len(), 1, "{status}");
}

#[tokio::test]
async fn standby_hub_takes_over_within_five_seconds() {
    let csms = Csms::start();
    let start_hub = |id: &str| {
        let dir = tempfile::tempdir().unwrap();
        NodeConfig::hub(dir.path(), id, &csms.url, "127.0.0.1:0")
            .timers(timers())
            .node_peer("edge-b", &["CP-*"], None)
            .start(dir)
    };
    let mut h1 = start_hub("hub-1");
    let h2 = start_hub("hub-2");
    // The edge reaches H2 through a relay that counts connections: "never dialled" is exact.
    let relay = Relay::start(Some(h2.addr("nodes")));
    let h2_path = h2
        .url("nodes")
        .split_once("//")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
        .unwrap_or_default();

    let edge_dir = tempfile::tempdir().unwrap();
    let edge = NodeConfig::edge(edge_dir.path(), "edge-b")
        .timers(timers())
        .uplink(Uplink::new("h1", h1.url("nodes"), 0))
        .uplink(Uplink::new("h2", &relay.url(&h2_path), 1))
        .start(edge_dir);
    wait_uplink_up(&edge, "h1", UP, &[&h1, &h2]).await;

    let mut charger = Charger::connect(edge.url("chargers"), "CP-B1").await;
    assert!(
        csms.wait_connected("CP-B1", 1, REPLY).await,
        "no CSMS connection for CP-B1{}",
        diagnostics(&[&edge, &h1])
    );
    heartbeat_reaches_csms(&mut charger, &csms, &[&edge, &h1, &h2]).await;

    // Stable state, with time for a wrong second dial to show: one overlay link, to H1.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = edge.status();
    let links = overlay_links(&status);
    assert_eq!(links.len(), 1, "exactly one overlay link: {status}");
    assert_eq!(links[0]["peer"], "h1", "{status}");
    assert_eq!(links[0]["direction"], "uplink", "{status}");
    assert_eq!(
        common::topology::uplink_state(&status, "h2").as_deref(),
        Some("standby"),
        "{status}"
    );
    let h1_status = h1.status();
    let h1_links = overlay_links(&h1_status);
    assert_eq!(h1_links.len(), 1, "{h1_status}");
    assert_eq!(h1_links[0]["peer"], "edge-b", "{h1_status}");
    assert_eq!(h1_links[0]["direction"], "inbound", "{h1_status}");
    let h2_status = h2.status();
    assert!(overlay_links(&h2_status).is_empty(), "{h2_status}");
    assert_eq!(
        relay.accepted(),
        0,
        "the standby hub is dialled only when the active uplink is lost"
    );

    // Kill H1: within 5 s the uplink to H2 is up and a Heartbeat reaches the CSMS through H2.
    h1.kill();
    let killed = Instant::now();
    let took_over = wait_for(Duration::from_secs(5), || {
        (edge.uplink_state("h2").as_deref() == Some("up")).then_some(())
    })
    .await;
    assert!(
        took_over.is_some(),
        "uplink h2 not up within 5 s of the kill: {}{}",
        edge.status(),
        diagnostics(&[&edge, &h2])
    );
    let up_after = killed.elapsed();
    let left = Duration::from_secs(5).saturating_sub(killed.elapsed());
    assert!(
        csms.wait_connected("CP-B1", 2, left).await,
        "H2 opened no CSMS connection for CP-B1 within 5 s of the kill (uplink up after \
         {up_after:?}){}",
        diagnostics(&[&edge, &h2])
    );
    heartbeat_reaches_csms(&mut charger, &csms, &[&edge, &h2]).await;
    let served = killed.elapsed();
    assert!(
        served <= Duration::from_secs(5),
        "a Heartbeat reached the CSMS via H2 only {served:?} after the kill (uplink up after \
         {up_after:?})"
    );
    eprintln!(
        "failover: uplink h2 up {up_after:?} after the kill, Heartbeat served after {served:?}"
    );
    let h2_status = h2.status();
    let csms_conns = h2_status["csmsConnections"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        csms_conns
            .iter()
            .any(|c| c["charger"] == "CP-B1" && c["state"] == "open"),
        "H2 owns CP-B1's CSMS connection now: {h2_status}"
    );

    // At most one overlay connection at the end: the one to H2.
    let status = edge.status();
    let links = overlay_links(&status);
    assert_eq!(links.len(), 1, "{status}");
    assert_eq!(links[0]["peer"], "h2", "{status}");
    assert_ne!(
        common::topology::uplink_state(&status, "h1").as_deref(),
        Some("up"),
        "{status}"
    );
    assert_eq!(overlay_links(&h2_status).len(), 1, "{h2_status}");
    assert_eq!(relay.accepted(), 1, "one dial to H2");
    assert_eq!(relay.open(), 1, "one open connection to H2");
}
