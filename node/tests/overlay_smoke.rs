//! The relay smoke load: 20 plain chargers → edge → hub → in-test CSMS, closed loop (each charger
//! sends a Heartbeat and waits for its answer) for about 3 s. Every request is answered, none is
//! lost or duplicated, and the CSMS counted exactly what was sent. No timing assertions.

mod common;
use std::time::{Duration, Instant};

use common::topology::{
    Charger, Csms, NodeConfig, Timers, Uplink, diagnostics, overlay_links, wait_uplink_up,
};

const CHARGERS: usize = 20;
const RUN: Duration = Duration::from_secs(3);
const REPLY: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_chargers_closed_loop_through_edge_and_hub() {
    let timers = Timers {
        request_timeout_s: 15,
        ..Timers::default()
    };
    let csms = Csms::start();
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = NodeConfig::hub(hub_dir.path(), "hub-s", &csms.url, "127.0.0.1:0")
        .timers(timers)
        .node_peer("edge-s", &["CP-*"], None)
        .start(hub_dir);
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = NodeConfig::edge(edge_dir.path(), "edge-s")
        .timers(timers)
        .uplink(Uplink::new("hub", hub.url("nodes"), 0))
        .start(edge_dir);
    wait_uplink_up(&edge, "hub", Duration::from_secs(15), &[&hub]).await;

    let ids: Vec<String> = (1..=CHARGERS).map(|i| format!("CP-S{i:02}")).collect();
    let mut chargers = Vec::new();
    for id in &ids {
        chargers.push(Charger::connect(edge.url("chargers"), id).await);
    }
    for id in &ids {
        assert!(
            csms.wait_connected(id, 1, Duration::from_secs(15)).await,
            "no CSMS connection for {id}{}",
            diagnostics(&[&edge, &hub])
        );
    }

    // Closed loop: each charger has one Heartbeat outstanding at a time.
    let stop = Instant::now() + RUN;
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in chargers {
        tasks.spawn(async move {
            let (mut sent, mut answered, mut problems) = (0u64, 0u64, Vec::new());
            while Instant::now() < stop {
                sent += 1;
                let (id, reply) = c.heartbeat(REPLY).await;
                match reply {
                    Some(r) if r[0] == 3 && r[1] == id.as_str() => answered += 1,
                    Some(r) => problems.push(format!("{}: {id} answered {r}", c.id)),
                    None => problems.push(format!("{}: {id} not answered in {REPLY:?}", c.id)),
                }
            }
            (c.id.clone(), sent, answered, problems)
        });
    }
    let (mut total_sent, mut total_answered, mut problems) = (0u64, 0u64, Vec::new());
    let mut per_charger = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (id, sent, answered, p) = done.expect("charger task");
        total_sent += sent;
        total_answered += answered;
        problems.extend(p);
        per_charger.push((id, sent));
    }
    assert!(
        problems.is_empty(),
        "{} of {total_sent} requests failed, e.g. {:?}{}",
        problems.len(),
        &problems[..problems.len().min(5)],
        diagnostics(&[&edge, &hub])
    );
    assert_eq!(total_answered, total_sent);
    assert!(total_sent >= CHARGERS as u64);
    for (id, sent) in &per_charger {
        assert_eq!(
            csms.calls(Some(id), "Heartbeat") as u64,
            *sent,
            "the CSMS counted {id}'s Heartbeats exactly"
        );
    }
    assert_eq!(csms.calls(None, "Heartbeat") as u64, total_sent);
    assert!(csms.with_log(|l| l.other_frames.is_empty()));
    // The upstream ids are unique: no request was duplicated on the way.
    let mut upstream: Vec<String> =
        csms.with_log(|l| l.calls.iter().map(|c| c.id.clone()).collect());
    let n = upstream.len();
    upstream.sort();
    upstream.dedup();
    assert_eq!(upstream.len(), n, "every upstream id is unique");
    for id in &upstream {
        let uuid = uuid::Uuid::parse_str(id)
            .unwrap_or_else(|e| panic!("upstream id {id:?} is not a UUID: {e}"));
        assert_eq!(
            (id.len(), uuid.get_version_num()),
            (36, 4),
            "the edge gives every CALL a UUID v4 upstream id: {id}"
        );
    }

    // One edge→hub socket carried all of it.
    let status = edge.status();
    assert_eq!(overlay_links(&status).len(), 1, "{status}");
    eprintln!("smoke: {CHARGERS} chargers, {total_sent} Heartbeats answered in ~{RUN:?}");
}
