//! The durable outbound queue with real processes: charger → edge → relay → hub → in-test CSMS.
//!
//! While the relay is cut the edge answers the charger itself (a negative 1.6 transaction id
//! for a StartTransaction, an Accepted boot) and keeps every transaction message on disk; it is
//! SIGKILLed and restarted in the middle; when the line comes back the CSMS receives the boot
//! first, then every message exactly once, in order, with the local transaction id replaced by
//! the CSMS's own. A re-send under a new message id is recognised by its content.

mod common;
use common::audit::{alter_record, audit, show, stdout};
use std::time::Duration;

use common::topology::{
    Charger, Csms, Node, NodeConfig, Relay, Timers, Uplink, diagnostics, metric_sum, wait_for,
    wait_uplink_up,
};
use serde_json::{Value, json};

const REPLY: Duration = Duration::from_secs(10);
const UP: Duration = Duration::from_secs(20);

fn timers() -> Timers {
    Timers {
        request_timeout_s: 5,
        announce_ttl_s: 300,
        ping_interval_s: 2,
        connect_timeout_s: 2,
        reconnect_initial_ms: 100,
        reconnect_max_ms: 500,
        csms_grace_s: 60,
    }
}

const OUTBOX: &str = "[outbox]\nretry_interval_s = 1\nmessage_attempts = 3\n\n[auth]\nunknown_id_tag = \"Accepted\"\n";

fn meter_values(tx: i64, ts: &str, wh: u32) -> Value {
    json!({"connectorId": 1, "transactionId": tx, "meterValue": [
        {"timestamp": ts, "sampledValue": [{"value": wh.to_string()}]}]})
}

async fn answered(c: &mut Charger, action: &str, payload: Value, nodes: &[&Node]) -> Value {
    let (id, reply) = c.call(action, payload, REPLY).await;
    let reply = reply.unwrap_or_else(|| {
        panic!(
            "{}: no answer to {action} {id} within {REPLY:?}{}",
            c.id,
            diagnostics(nodes)
        )
    });
    assert_eq!(reply[0], 3, "{action}: {reply}{}", diagnostics(nodes));
    reply[2].clone()
}

fn uplink_down(edge: &Node) -> bool {
    edge.uplink_state("hub").as_deref() != Some("up")
}

/// charger → edge → relay (the line the tests cut) → hub → in-test CSMS, uplink up.
struct Site {
    csms: Csms,
    hub: Node,
    relay: Relay,
    edge: Node,
}

impl Site {
    /// `allow`: the charger ids the hub accepts from the edge.
    async fn start(allow: &[&str]) -> Site {
        let csms = Csms::start();
        let hub_dir = tempfile::tempdir().unwrap();
        let hub = NodeConfig::hub(hub_dir.path(), "hub", &csms.url, "127.0.0.1:0")
            .timers(timers())
            .node_peer("edge", allow, None)
            .start(hub_dir);
        let relay = Relay::start(Some(hub.addr("nodes")));
        let edge_dir = tempfile::tempdir().unwrap();
        let edge = NodeConfig::edge(edge_dir.path(), "edge")
            .timers(timers())
            .uplink(Uplink::new("hub", &relay.url("/ocpp"), 0))
            .extra(OUTBOX)
            .start(edge_dir);
        wait_uplink_up(&edge, "hub", UP, &[&hub]).await;
        Site {
            csms,
            hub,
            relay,
            edge,
        }
    }
}

/// Waits until the edge's queue is empty.
async fn wait_drained(edge: &Node, hub: &Node) {
    let drained = wait_for(Duration::from_secs(30), || {
        (metric_sum(&edge.metrics(), "ocpp_outbox_queued") == Some(0.0)).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "the queue did not drain{}",
        diagnostics(&[edge, hub])
    );
}

#[tokio::test]
async fn an_outage_and_a_crash_lose_and_duplicate_nothing() {
    let Site {
        csms,
        hub,
        relay,
        mut edge,
    } = Site::start(&["CP-*"]).await;

    let mut cp = Charger::connect(edge.url("chargers"), "CP-1").await;
    assert!(csms.wait_connected("CP-1", 1, REPLY).await);
    let boot = answered(
        &mut cp,
        "BootNotification",
        json!({"chargePointVendor": "V", "chargePointModel": "M"}),
        &[&edge, &hub],
    )
    .await;
    assert_eq!(
        boot["interval"], 300,
        "online, the CSMS answers the boot: {boot}"
    );

    // Online: the charger gets the CSMS's own transaction id.
    let start = json!({"connectorId": 1, "idTag": "TAG", "meterStart": 0, "timestamp": "2026-01-01T10:00:00Z"});
    let a = answered(&mut cp, "StartTransaction", start, &[&edge, &hub]).await;
    let tx_a = a["transactionId"].as_i64().expect("transactionId");
    assert!(tx_a >= 1000, "the CSMS's id: {a}");

    // The line goes down.
    relay.cut();
    assert!(
        wait_for(UP, || uplink_down(&edge).then_some(()))
            .await
            .is_some(),
        "the edge did not notice the cut{}",
        diagnostics(&[&edge])
    );
    answered(
        &mut cp,
        "MeterValues",
        meter_values(tx_a, "2026-01-01T10:05:00Z", 100),
        &[&edge],
    )
    .await;
    let stop_a =
        json!({"transactionId": tx_a, "meterStop": 200, "timestamp": "2026-01-01T10:10:00Z"});
    answered(&mut cp, "StopTransaction", stop_a.clone(), &[&edge]).await;
    let start_b = json!({"connectorId": 1, "idTag": "TAG", "meterStart": 200, "timestamp": "2026-01-01T11:00:00Z"});
    let b = answered(&mut cp, "StartTransaction", start_b.clone(), &[&edge]).await;
    let local_b = b["transactionId"].as_i64().expect("transactionId");
    assert!(local_b < 0, "offline, a local (negative) id: {b}");
    assert_eq!(b["idTagInfo"]["status"], "Accepted");
    // A re-send under a new message id gets the same answer and is queued once.
    let again = answered(&mut cp, "StartTransaction", start_b, &[&edge]).await;
    assert_eq!(again["transactionId"].as_i64(), Some(local_b), "{again}");
    answered(
        &mut cp,
        "MeterValues",
        meter_values(local_b, "2026-01-01T11:05:00Z", 300),
        &[&edge],
    )
    .await;
    let hb = answered(&mut cp, "Heartbeat", json!({}), &[&edge]).await;
    assert!(hb["currentTime"].is_string(), "answered locally: {hb}");
    let queued = metric_sum(&edge.metrics(), "ocpp_outbox_queued");
    assert_eq!(
        queued,
        Some(4.0),
        "MeterValues, Stop, Start, MeterValues are queued{}",
        diagnostics(&[&edge])
    );

    // The edge crashes; the charger comes back to it while the line is still down and boots.
    edge.kill();
    edge.restart();
    let mut cp = Charger::connect(edge.url("chargers"), "CP-1").await;
    let boot = answered(
        &mut cp,
        "BootNotification",
        json!({"chargePointVendor": "V", "chargePointModel": "M"}),
        &[&edge],
    )
    .await;
    assert_eq!(
        (boot["status"].as_str(), boot["interval"].as_u64()),
        (Some("Accepted"), Some(60)),
        "offline boot: {boot}"
    );
    let stop_b =
        json!({"transactionId": local_b, "meterStop": 400, "timestamp": "2026-01-01T11:10:00Z"});
    answered(&mut cp, "StopTransaction", stop_b, &[&edge]).await;
    // The charger never got the answer to its first Stop (say) and sends it again.
    answered(&mut cp, "StopTransaction", stop_a, &[&edge]).await;
    assert_eq!(
        csms.calls(Some("CP-1"), "StopTransaction"),
        0,
        "nothing reached the CSMS yet"
    );

    // The line comes back: the queue drains.
    relay.set_target(hub.addr("nodes"));
    wait_drained(&edge, &hub).await;

    let calls: Vec<(String, Value)> = csms
        .calls_of("CP-1")
        .into_iter()
        .filter(|c| c.action != "Heartbeat")
        .map(|c| (c.action, c.payload))
        .collect();
    let actions: Vec<&str> = calls.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "BootNotification",
            "StartTransaction",
            "BootNotification",
            "MeterValues",
            "StopTransaction",
            "StartTransaction",
            "MeterValues",
            "StopTransaction",
        ],
        "the offline boot first, then every message once, in order: {calls:#?}"
    );
    assert_eq!(calls[3].1["transactionId"], tx_a);
    assert_eq!(calls[4].1["transactionId"], tx_a);
    let tx_b = calls[6].1["transactionId"].as_i64().expect("an id");
    assert!(
        tx_b >= 1000 && tx_b != tx_a,
        "the CSMS's id replaces the local one: {calls:#?}"
    );
    assert_eq!(calls[7].1["transactionId"], tx_b);

    // A transaction message after the replay goes up at once, with the mapped id.
    answered(
        &mut cp,
        "MeterValues",
        meter_values(local_b, "2026-01-01T11:20:00Z", 500),
        &[&edge, &hub],
    )
    .await;
    let last = csms.calls_of("CP-1").pop().expect("a call");
    assert_eq!(
        (last.action.as_str(), last.payload["transactionId"].as_i64()),
        ("MeterValues", Some(tx_b))
    );
    drop(relay);

    // The security event log of the crashed and restarted edge: intact, and a copy with one
    // record altered is refused, naming that record.
    edge.kill();
    let store = edge.dir.path().join("data").join("node.redb");
    let out = audit(&["verify"], &store);
    assert!(
        out.status.success(),
        "audit verify on the edge's log: {}",
        stdout(&out)
    );
    let starts: Vec<u64> = show(&store)
        .iter()
        .filter(|r| r["kind"] == "node_started")
        .map(|r| r["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(starts.len(), 2, "one node_started per start: {starts:?}");
    let altered = starts[1];
    let copy = edge.dir.path().join("copy.redb");
    alter_record(&store, &copy, altered, "node_started", "node_startee");
    let out = audit(&["verify"], &copy);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.starts_with(&format!("broken at record {altered}: ")),
        "expected record {altered} named: {text}"
    );
}

/// A message the CSMS refuses: online the charger sees the CSMS's CALLERROR; replayed, it is
/// tried `message_attempts` times, then kept as a dead letter with a security event, and the
/// queue goes on.
#[tokio::test]
async fn a_message_the_csms_keeps_refusing_becomes_a_dead_letter() {
    let Site {
        csms,
        hub,
        relay,
        edge,
    } = Site::start(&["*"]).await;
    let mut cp = Charger::connect(edge.url("chargers"), "REFUSE-1").await;
    assert!(csms.wait_connected("REFUSE-1", 1, REPLY).await);

    let (id, reply) = cp
        .call(
            "MeterValues",
            meter_values(1, "2026-01-01T10:00:00Z", 1),
            REPLY,
        )
        .await;
    let reply = reply.expect("an answer");
    assert_eq!(reply[0], 4, "online, the CSMS's CALLERROR: {reply}");
    assert_eq!(
        (reply[1].as_str(), reply[2].as_str()),
        (Some(id.as_str()), Some("InternalError"))
    );

    relay.cut();
    assert!(
        wait_for(UP, || uplink_down(&edge).then_some(()))
            .await
            .is_some()
    );
    answered(
        &mut cp,
        "MeterValues",
        meter_values(1, "2026-01-01T10:05:00Z", 2),
        &[&edge],
    )
    .await;
    answered(
        &mut cp,
        "StatusNotification",
        json!({"connectorId": 1, "errorCode": "NoError", "status": "Charging"}),
        &[&edge],
    )
    .await;
    relay.set_target(hub.addr("nodes"));
    wait_drained(&edge, &hub).await;
    assert_eq!(
        metric_sum(&edge.metrics(), "ocpp_outbox_dead_letters"),
        Some(1.0)
    );
    let tries = csms
        .calls_of("REFUSE-1")
        .iter()
        .filter(|c| {
            c.action == "MeterValues"
                && c.payload["meterValue"][0]["timestamp"] == "2026-01-01T10:05:00Z"
        })
        .count();
    assert_eq!(tries, 3, "message_attempts = 3");
    assert_eq!(
        csms.calls(Some("REFUSE-1"), "StatusNotification"),
        1,
        "the queue went on"
    );
    assert!(
        common::topology::has_security_event(&edge.stderr_log(), "dead_letter"),
        "{}",
        edge.stderr_tail(30)
    );
}

/// A charger that leaves while its messages are queued does not hold them back: the edge
/// announces it for the replay, the hub opens its CSMS socket, and closes it once the queue is out.
#[tokio::test]
async fn messages_of_a_charger_that_left_are_replayed_without_it() {
    let Site {
        csms,
        hub,
        relay,
        edge,
    } = Site::start(&["*"]).await;
    let mut cp = Charger::connect(edge.url("chargers"), "CP-GONE").await;
    assert!(csms.wait_connected("CP-GONE", 1, REPLY).await);
    relay.cut();
    assert!(
        wait_for(UP, || uplink_down(&edge).then_some(()))
            .await
            .is_some()
    );
    for (i, ts) in ["2026-01-01T10:00:00Z", "2026-01-01T10:01:00Z"]
        .iter()
        .enumerate()
    {
        answered(
            &mut cp,
            "MeterValues",
            meter_values(7, ts, i as u32),
            &[&edge],
        )
        .await;
    }
    drop(cp);
    relay.set_target(hub.addr("nodes"));
    let delivered = wait_for(Duration::from_secs(30), || {
        (csms.calls(Some("CP-GONE"), "MeterValues") == 2).then_some(())
    })
    .await;
    assert!(
        delivered.is_some(),
        "the replay waited for the charger{}",
        diagnostics(&[&edge, &hub])
    );
    // The CSMS counts a message before its answer is back at the edge and committed there.
    let drained = wait_for(Duration::from_secs(10), || {
        (metric_sum(&edge.metrics(), "ocpp_outbox_queued") == Some(0.0)).then_some(())
    })
    .await;
    assert!(
        drained.is_some(),
        "the queue stays non-empty after the replay{}",
        diagnostics(&[&edge, &hub])
    );
    let closed = wait_for(Duration::from_secs(30), || {
        (csms.open_connections("CP-GONE") == 0).then_some(())
    })
    .await;
    assert!(
        closed.is_some(),
        "the CSMS socket of the departed charger stays open{}",
        diagnostics(&[&edge, &hub])
    );
}
