//! Binary overlay frames (ARCHITECTURE §3.3) with real processes and real WebSockets:
//!
//! (a) a binary SEND crosses hub → edge → edge to a node peer and back, meta and body
//!     byte-identical, the path naming every hop; a binary CALL is answered by a binary
//!     CALLRESULT under the same id;
//! (b) a bulk stream (16 KiB binary chunks, 1 MiB transfers, one after another) on the same
//!     hub → edge link that carries the CSMS's Heartbeat answers does not delay a charger's
//!     Heartbeat by more than 50 ms at p99, and every chunk arrives intact.
//!
//! The test process plays two overlay node peers, `tester-1` on the hub and `tester-2` on the
//! last edge; each announces itself with `NotifyNetworkTopology`.

mod common;
use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Ws;
use common::topology::{
    Charger, Csms, Node, NodeConfig, Timers, Uplink, diagnostics, overlay_connect, wait_for,
    wait_uplink_up,
};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wire::binary::{self, BinaryFrame};
use wire::{Json, Limits, MessageType, Route};

const T1: &str = "tester-1";
const T2: &str = "tester-2";

/// Explicit overlay timers for both tests (request timeout 10 s, connect timeout 2 s, backoff
/// 200 ms to 1 s); every wait below is at least twice the timer it waits for.
const TIMERS: Timers = Timers::DEFAULT;
/// Uplinks come up within a few reconnect attempts (connect timeout 2 s, backoff ≤ 1 s).
const UP: Duration = Duration::from_secs(15);
/// A route announced by a peer reaches the hub within one announcement round per hop.
const ROUTES: Duration = Duration::from_secs(15);
/// A forwarded frame arrives well within twice the request timeout.
const ARRIVE: Duration = Duration::from_secs(2 * TIMERS.request_timeout_s);

/// A decoded binary frame, owned.
#[derive(Debug)]
struct Got {
    message_type: MessageType,
    dest: Vec<String>,
    path: Vec<String>,
    id: String,
    action: Option<String>,
    meta: String,
    body: Vec<u8>,
}

fn decode(bytes: &[u8]) -> Got {
    let f = binary::decode(bytes, &Limits::default())
        .unwrap_or_else(|e| panic!("a binary frame from the node does not decode: {e}"));
    Got {
        message_type: f.message_type,
        dest: f.dest.ids().iter().map(|s| s.to_string()).collect(),
        path: f.path.ids().iter().map(|s| s.to_string()).collect(),
        id: f.id.into_owned(),
        action: f.action.map(Cow::into_owned),
        meta: f.meta.get().to_owned(),
        body: f.body.to_vec(),
    }
}

/// One binary frame, `dest` and `path` one id each.
fn encode(
    message_type: MessageType,
    dest: &str,
    path: &str,
    id: &str,
    action: Option<&str>,
    meta: &str,
    body: &[u8],
) -> Vec<u8> {
    let raw = RawValue::from_string(meta.to_owned()).expect("meta is JSON");
    BinaryFrame {
        message_type,
        dest: Route::single(dest),
        path: Route::single(path),
        id: id.into(),
        action: action.map(Cow::Borrowed),
        meta: Json::new(&raw),
        body,
    }
    .encode(&Limits::default())
    .expect("encode binary frame")
}

/// `len` bytes of a pattern that differs with `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i.wrapping_mul(31) ^ seed.wrapping_mul(0x9e37)) % 251) as u8)
        .collect()
}

/// `[6, [to], [me], id, "NotifyNetworkTopology", {…}]`: `me` is reachable through this link.
async fn announce(ws: &mut Ws, to: &str, me: &str) {
    let frame = json!([6, [to], [me], format!("ann-{me}"), "NotifyNetworkTopology", {
        "networkTopologyInformation": {
            "routingNode": me,
            "routes": [{"destinationId": me, "priority": 0}],
            "full": true,
            "ttl": 300,
        }
    }]);
    ws.send(Message::text(frame.to_string()))
        .await
        .expect("send the announcement");
}

async fn peer(url: &str, id: &str, nodes: &[&Node]) -> Ws {
    overlay_connect(url, id, None, None)
        .await
        .unwrap_or_else(|status| {
            panic!(
                "overlay upgrade of {id} refused: HTTP {status}{}",
                diagnostics(nodes)
            )
        })
}

/// The destinations in `node`'s routing table.
fn route_dests(node: &Node) -> Vec<String> {
    node.status()["routes"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["destination"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every node of `want` has a route to each of its ids.
async fn wait_routes(want: &[(&Node, &[&str])], nodes: &[&Node]) {
    let ok = wait_for(ROUTES, || {
        want.iter()
            .all(|(n, ids)| {
                let have = route_dests(n);
                ids.iter().all(|id| have.iter().any(|h| h == id))
            })
            .then_some(())
    })
    .await;
    if ok.is_none() {
        let tables: Vec<String> = want
            .iter()
            .map(|(n, _)| format!("{}: {:?}", n.id, route_dests(n)))
            .collect();
        panic!(
            "routes not installed within {ROUTES:?}: {tables:?}{}",
            diagnostics(nodes)
        );
    }
}

/// The next binary frame on `ws` within `timeout`, skipping text frames. Panics if the link
/// closes.
async fn next_binary(ws: &mut Ws, timeout: Duration) -> Option<Got> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
        match msg {
            Some(Ok(Message::Binary(b))) => return Some(decode(&b)),
            Some(Ok(Message::Close(c))) => panic!("overlay link closed by the node: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("overlay link error: {e}"),
            None => panic!("overlay link closed by the node"),
        }
    }
}

/// The next binary frame on `ws` within [`ARRIVE`]; panics with the nodes' diagnostics if
/// none comes.
async fn expect_binary(ws: &mut Ws, what: &str, nodes: &[&Node]) -> Got {
    next_binary(ws, ARRIVE).await.unwrap_or_else(|| {
        panic!(
            "{what} did not arrive within {ARRIVE:?}{}",
            diagnostics(nodes)
        )
    })
}

/// `from` sends a binary SEND to `to`; it must arrive byte-identical, addressed to
/// `to`, with `path` naming the originator and every hop in order.
async fn send_arrives(
    (from_ws, from): (&mut Ws, &str),
    (to_ws, to): (&mut Ws, &str),
    id: &str,
    meta: &str,
    body: &[u8],
    path: &[&str],
    nodes: &[&Node],
) {
    let frame = encode(
        MessageType::Send,
        to,
        from,
        id,
        Some("TestChunk"),
        meta,
        body,
    );
    send_binary(from_ws, frame).await;
    let got = expect_binary(to_ws, &format!("{from} → {to} SEND {id}"), nodes).await;
    assert_eq!(got.message_type, MessageType::Send);
    assert_eq!(got.action.as_deref(), Some("TestChunk"));
    assert_eq!(got.id, id);
    assert_eq!(got.meta, meta, "meta byte-identical");
    assert!(
        got.body == body,
        "body byte-identical ({} bytes received)",
        got.body.len()
    );
    assert_eq!(got.dest.first().map(String::as_str), Some(to), "{got:?}");
    assert_eq!(
        got.path, path,
        "the path starts with the originator and names every hop in order"
    );
    eprintln!("{from} → {to}: dest {:?}, path {:?}", got.dest, got.path);
}

async fn send_binary(ws: &mut Ws, bytes: Vec<u8>) {
    ws.send(Message::binary(bytes))
        .await
        .expect("send a binary frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_cross_three_nodes_both_ways() {
    let csms = Csms::start();
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = NodeConfig::hub(hub_dir.path(), "hub-b", &csms.url, "127.0.0.1:0")
        .timers(TIMERS)
        .node_peer("edge-b1", &["*"], None)
        .node_peer(T1, &["*"], None)
        .start(hub_dir);
    let e1_dir = tempfile::tempdir().unwrap();
    let edge1 = NodeConfig::edge(e1_dir.path(), "edge-b1")
        .timers(TIMERS)
        .uplink(Uplink::new("hub", hub.url("nodes"), 0))
        .node_peer("edge-b2", &["*"], None)
        .start(e1_dir);
    let e2_dir = tempfile::tempdir().unwrap();
    let edge2 = NodeConfig::edge(e2_dir.path(), "edge-b2")
        .timers(TIMERS)
        .uplink(Uplink::new("edge-1", edge1.url("chargers"), 0))
        .node_peer(T2, &["*"], None)
        .start(e2_dir);
    let nodes = [&hub, &edge1, &edge2];
    wait_uplink_up(&edge1, "hub", UP, &[&hub, &edge2]).await;
    wait_uplink_up(&edge2, "edge-1", UP, &[&hub, &edge1]).await;

    let mut t1 = peer(hub.url("nodes"), T1, &nodes).await;
    let mut t2 = peer(edge2.url("chargers"), T2, &nodes).await;
    announce(&mut t1, "hub-b", T1).await;
    announce(&mut t2, "edge-b2", T2).await;
    wait_routes(
        &[(&hub, &[T1, T2]), (&edge1, &[T2]), (&edge2, &[T2])],
        &nodes,
    )
    .await;

    // T1 → T2: a SEND of 200 KiB. The meta keeps its odd spacing: forwarders never re-serialize.
    send_arrives(
        (&mut t1, T1),
        (&mut t2, T2),
        "bin-1",
        r#"{"seq": 1,  "name":"a b"}"#,
        &pattern(200 * 1024, 1),
        &[T1, "hub-b", "edge-b1", "edge-b2"],
        &nodes,
    )
    .await;
    // T2 → T1: edge-b2 and edge-b1 do not know T1 and send it up their default route.
    send_arrives(
        (&mut t2, T2),
        (&mut t1, T1),
        "bin-2",
        r#"{"seq":2,"back":true}"#,
        &pattern(200 * 1024 + 17, 2),
        &[T2, "edge-b2", "edge-b1", "hub-b"],
        &nodes,
    )
    .await;

    // A binary CALL from T1, answered by T2 with a binary CALLRESULT.
    let meta = r#"{"fileName":"x.bin","offset":0}"#;
    let frame = encode(
        MessageType::Call,
        T2,
        T1,
        "call-1",
        Some("TestGetChunk"),
        meta,
        b"",
    );
    send_binary(&mut t1, frame).await;
    let call = expect_binary(&mut t2, "T2's binary CALL", &nodes).await;
    assert_eq!(call.message_type, MessageType::Call, "{call:?}");
    assert_eq!(call.action.as_deref(), Some("TestGetChunk"));
    assert_eq!(call.id, "call-1");
    assert_eq!(call.meta, meta);
    assert!(call.body.is_empty());
    assert_eq!(call.path.first().map(String::as_str), Some(T1));

    let result_meta = r#"{"status":"Accepted","offset":0}"#;
    let result_body = pattern(64 * 1024, 3);
    let frame = encode(
        MessageType::CallResult,
        &call.path[0],
        T2,
        &call.id,
        None,
        result_meta,
        &result_body,
    );
    send_binary(&mut t2, frame).await;
    let result = expect_binary(&mut t1, "T1's binary CALLRESULT", &nodes).await;
    assert_eq!(result.message_type, MessageType::CallResult, "{result:?}");
    assert_eq!(result.action, None);
    assert_eq!(result.id, "call-1", "the CALLRESULT keeps the CALL's id");
    assert_eq!(result.meta, result_meta);
    assert!(result.body == result_body, "CALLRESULT body byte-identical");
    assert_eq!(result.dest.first().map(String::as_str), Some(T1));
    assert_eq!(result.path, [T2, "edge-b2", "edge-b1", "hub-b"]);
}

/// One bulk chunk: 16 KiB.
const CHUNK: usize = 16 * 1024;
/// Chunks per transfer: 1 MiB.
const CHUNKS_PER_TRANSFER: u64 = 64;
/// Chunks T1 keeps unanswered, as a file transfer does (a CALL per chunk): 256 KiB, well
/// inside what a link queues before it drops bulk frames.
const WINDOW: usize = 16;
/// The bulk stream stops after this many transfers (1 GiB) even if heartbeats remain.
const MAX_TRANSFERS: u64 = 1024;
const HEARTBEATS: usize = 200;
/// How often the stream's readers look whether every chunk is in.
const POLL: Duration = Duration::from_millis(100);
/// Bound of the p99 (loaded RTT) − median (unloaded RTT).
const DELAY_BOUND: Duration = Duration::from_millis(50);

/// Chunk `seq`'s body: a window into `base` that shifts with `seq`, so that a misplaced or
/// corrupted chunk does not compare equal.
fn chunk_body(base: &[u8], seq: u64) -> &[u8] {
    let off = (seq % 251) as usize;
    &base[off..off + CHUNK]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn heartbeat_rtt(charger: &mut Charger, nodes: &[&Node]) -> Duration {
    let timeout = Duration::from_secs(2 * TIMERS.request_timeout_s);
    let start = Instant::now();
    let (id, reply) = charger.heartbeat(timeout).await;
    let rtt = start.elapsed();
    let reply = reply.unwrap_or_else(|| {
        panic!(
            "Heartbeat {id} not answered within {timeout:?}{}",
            diagnostics(nodes)
        )
    });
    assert!(
        reply[0] == 3 && reply[1] == id.as_str(),
        "Heartbeat {id} answered {reply}{}",
        diagnostics(nodes)
    );
    rtt
}

/// What T2 received of the bulk stream.
#[derive(Debug, Default)]
struct BulkSeen {
    chunks: u64,
    bytes: u64,
    problems: Vec<String>,
}

/// The bulk stream: T1 on the hub sends 1 MiB transfers to T2 on the edge, one after another,
/// as binary CALLs of 16 KiB that T2 answers with binary CALLRESULTs (the shape of a chunked
/// file transfer), while a charger on the edge sends Heartbeats whose answers share the hub →
/// edge link with the chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_stream_does_not_delay_a_heartbeat() {
    let csms = Csms::start();
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = NodeConfig::hub(hub_dir.path(), "hub-q", &csms.url, "127.0.0.1:0")
        .timers(TIMERS)
        .node_peer("edge-q", &["*"], None)
        .node_peer(T1, &["*"], None)
        .start(hub_dir);
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = NodeConfig::edge(edge_dir.path(), "edge-q")
        .timers(TIMERS)
        .uplink(Uplink::new("hub", hub.url("nodes"), 0))
        .node_peer(T2, &["*"], None)
        .start(edge_dir);
    let nodes = [&hub, &edge];
    wait_uplink_up(&edge, "hub", UP, &[&hub]).await;

    let mut charger = Charger::connect(edge.url("chargers"), "CP-Q1").await;
    let (_, boot) = charger
        .boot(Duration::from_secs(2 * TIMERS.request_timeout_s))
        .await;
    assert!(
        boot.as_ref().is_some_and(|b| b[0] == 3),
        "boot: {boot:?}{}",
        diagnostics(&nodes)
    );
    assert!(
        csms.wait_connected(
            "CP-Q1",
            1,
            Duration::from_secs(2 * TIMERS.request_timeout_s)
        )
        .await,
        "no CSMS connection for CP-Q1{}",
        diagnostics(&nodes)
    );

    let mut t1 = peer(hub.url("nodes"), T1, &nodes).await;
    let mut t2 = peer(edge.url("chargers"), T2, &nodes).await;
    announce(&mut t1, "hub-q", T1).await;
    announce(&mut t2, "edge-q", T2).await;
    wait_routes(&[(&hub, &[T1, T2, "CP-Q1"]), (&edge, &[T2])], &nodes).await;

    // Unloaded.
    for _ in 0..10 {
        heartbeat_rtt(&mut charger, &nodes).await;
    }
    let mut unloaded = Vec::with_capacity(HEARTBEATS);
    for _ in 0..HEARTBEATS {
        unloaded.push(heartbeat_rtt(&mut charger, &nodes).await);
    }

    let base = Arc::new(pattern(CHUNK + 256, 7));
    let stop = Arc::new(AtomicBool::new(false));
    let streaming = Arc::new(AtomicBool::new(true));
    // Chunks T2 has checked, and chunks whose answer T1 has.
    let received = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    // How many chunks T1 sent, once it has stopped.
    let sent_total = Arc::new(AtomicU64::new(u64::MAX));
    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    // Bounded: every wait for a frame is at most twice the request timeout.
    let idle = Duration::from_secs(2 * TIMERS.request_timeout_s);

    let (mut t1_sink, mut t1_stream) = t1.split();

    // T2 checks each chunk in order and answers it.
    let receiver = {
        let (base, received, sent_total) = (base.clone(), received.clone(), sent_total.clone());
        tokio::spawn(async move {
            let mut seen = BulkSeen::default();
            let mut expect_seq = 0u64;
            let mut last = Instant::now();
            while received.load(Ordering::SeqCst) < sent_total.load(Ordering::SeqCst) {
                let msg = match tokio::time::timeout(POLL, t2.next()).await {
                    Ok(Some(Ok(m))) => m,
                    Ok(other) => {
                        seen.problems.push(format!("T2's link ended: {other:?}"));
                        break;
                    }
                    Err(_) if last.elapsed() < idle => continue,
                    Err(_) => {
                        seen.problems
                            .push(format!("no chunk for {idle:?} after chunk {expect_seq}"));
                        break;
                    }
                };
                let Message::Binary(bytes) = msg else {
                    continue;
                };
                last = Instant::now();
                let got = decode(&bytes);
                let meta: Value = serde_json::from_str(&got.meta).expect("meta JSON");
                let seq = meta["seq"].as_u64().unwrap_or(u64::MAX);
                if seq != expect_seq
                    || got.message_type != MessageType::Call
                    || got.action.as_deref() != Some("TestChunk")
                    || got.id != format!("q-{seq}")
                    || got.body != chunk_body(&base, seq)
                {
                    seen.problems.push(format!(
                        "chunk {expect_seq}: got {:?} seq {seq}, id {}, {} body bytes, meta {}",
                        got.message_type,
                        got.id,
                        got.body.len(),
                        got.meta
                    ));
                    if seen.problems.len() > 5 {
                        break;
                    }
                }
                expect_seq = seq.wrapping_add(1);
                seen.chunks += 1;
                seen.bytes += got.body.len() as u64;
                received.fetch_add(1, Ordering::SeqCst);
                let answer = encode(
                    MessageType::CallResult,
                    &got.path[0],
                    T2,
                    &got.id,
                    None,
                    r#"{"status":"Accepted"}"#,
                    b"",
                );
                if let Err(e) = t2.send(Message::binary(answer)).await {
                    seen.problems.push(format!("T2 cannot answer: {e}"));
                    break;
                }
            }
            (seen, t2)
        })
    };

    // T1 counts the answers; each frees a place in the window. Anything but a CALLRESULT for a
    // chunk (a CALLERROR from a congested link, say) is a problem.
    let answers = {
        let (answered, window, sent_total) = (answered.clone(), window.clone(), sent_total.clone());
        tokio::spawn(async move {
            let mut problems = Vec::new();
            let mut last = Instant::now();
            while answered.load(Ordering::SeqCst) < sent_total.load(Ordering::SeqCst) {
                let msg = match tokio::time::timeout(POLL, t1_stream.next()).await {
                    Ok(Some(Ok(m))) => m,
                    Ok(other) => {
                        problems.push(format!("T1's link ended: {other:?}"));
                        break;
                    }
                    Err(_) if last.elapsed() < idle => continue,
                    Err(_) => {
                        problems.push(format!("no answer for {idle:?}"));
                        break;
                    }
                };
                match msg {
                    Message::Binary(bytes) => {
                        last = Instant::now();
                        let got = decode(&bytes);
                        if got.message_type != MessageType::CallResult || !got.id.starts_with("q-")
                        {
                            problems.push(format!("T1 got {got:?}"));
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                        window.add_permits(1);
                    }
                    Message::Text(text) => problems.push(format!("T1 got {text}")),
                    _ => {}
                }
                if problems.len() > 5 {
                    break;
                }
            }
            problems
        })
    };

    let streamer = {
        let (base, stop, streaming, window, sent_total) = (
            base.clone(),
            stop.clone(),
            streaming.clone(),
            window.clone(),
            sent_total.clone(),
        );
        tokio::spawn(async move {
            let mut seq = 0u64;
            let mut error = None;
            'transfers: for transfer in 0..MAX_TRANSFERS {
                for i in 0..CHUNKS_PER_TRANSFER {
                    if stop.load(Ordering::SeqCst) {
                        break 'transfers;
                    }
                    match tokio::time::timeout(idle, window.acquire()).await {
                        Ok(Ok(permit)) => permit.forget(),
                        _ => {
                            error = Some(format!("chunk {seq}: no answer frees the window"));
                            break 'transfers;
                        }
                    }
                    let meta = format!(
                        r#"{{"transfer":{transfer},"seq":{seq},"offset":{}}}"#,
                        i * CHUNK as u64
                    );
                    let frame = encode(
                        MessageType::Call,
                        T2,
                        T1,
                        &format!("q-{seq}"),
                        Some("TestChunk"),
                        &meta,
                        chunk_body(&base, seq),
                    );
                    match tokio::time::timeout(idle, t1_sink.send(Message::binary(frame))).await {
                        Ok(Ok(())) => seq += 1,
                        Ok(Err(e)) => {
                            error = Some(format!("send failed: {e}"));
                            break 'transfers;
                        }
                        Err(_) => {
                            error = Some(format!("chunk {seq} not written within {idle:?}"));
                            break 'transfers;
                        }
                    }
                }
            }
            streaming.store(false, Ordering::SeqCst);
            sent_total.store(seq, Ordering::SeqCst);
            (seq, error, t1_sink)
        })
    };

    // Load is on once T2 has its first chunk.
    let flowing = wait_for(idle, || (received.load(Ordering::SeqCst) > 0).then_some(())).await;
    assert!(
        flowing.is_some(),
        "no bulk chunk reached T2 within {idle:?}{}",
        diagnostics(&nodes)
    );

    let load_start = Instant::now();
    let first_chunk = received.load(Ordering::SeqCst);
    let mut loaded = Vec::with_capacity(HEARTBEATS);
    for _ in 0..HEARTBEATS {
        if !streaming.load(Ordering::SeqCst) {
            break;
        }
        loaded.push(heartbeat_rtt(&mut charger, &nodes).await);
    }
    let load_time = load_start.elapsed();
    let chunks_during = received.load(Ordering::SeqCst) - first_chunk;
    stop.store(true, Ordering::SeqCst);

    let (sent, stream_error, t1_sink) = tokio::time::timeout(2 * idle, streamer)
        .await
        .expect("the streamer ends")
        .expect("streamer task");
    // Both readers end once every chunk sent is in (or after `idle` without one).
    let (seen, t2) = tokio::time::timeout(2 * idle, receiver)
        .await
        .expect("T2's reader ends")
        .expect("receiver task");
    let answer_problems = tokio::time::timeout(2 * idle, answers)
        .await
        .expect("T1's reader ends")
        .expect("answers task");
    drop((t1_sink, t2));

    unloaded.sort();
    loaded.sort();
    let median = percentile(&unloaded, 0.5);
    let (lp50, lp99, lmax) = if loaded.is_empty() {
        (Duration::ZERO, Duration::ZERO, Duration::ZERO)
    } else {
        (
            percentile(&loaded, 0.5),
            percentile(&loaded, 0.99),
            loaded[loaded.len() - 1],
        )
    };
    eprintln!(
        "heartbeat RTT unloaded: median {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
        ms(median),
        ms(percentile(&unloaded, 0.99)),
        ms(unloaded[unloaded.len() - 1]),
        unloaded.len()
    );
    eprintln!(
        "heartbeat RTT loaded: median {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples); p99 - \
         unloaded median = {:.2} ms (bound {} ms)",
        ms(lp50),
        ms(lp99),
        ms(lmax),
        loaded.len(),
        ms(lp99.saturating_sub(median)),
        DELAY_BOUND.as_millis()
    );
    let mib = |chunks: u64| chunks as f64 * CHUNK as f64 / (1024.0 * 1024.0);
    eprintln!(
        "bulk: {sent} chunks sent, {} received ({:.1} MiB); {chunks_during} ({:.1} MiB) during \
         {:.2} s of heartbeats ({:.1} MiB/s)",
        seen.chunks,
        mib(seen.chunks),
        mib(chunks_during),
        load_time.as_secs_f64(),
        mib(chunks_during) / load_time.as_secs_f64()
    );

    assert!(
        stream_error.is_none(),
        "T1's stream failed: {stream_error:?}{}",
        diagnostics(&nodes)
    );
    assert!(
        seen.problems.is_empty() && answer_problems.is_empty(),
        "T2's chunks: {:?}; T1's answers: {answer_problems:?}{}",
        seen.problems,
        diagnostics(&nodes)
    );
    assert_eq!(
        answered.load(Ordering::SeqCst),
        sent,
        "every chunk T1 sent was answered"
    );
    assert_eq!(seen.chunks, sent, "T2 received every chunk T1 sent");
    assert_eq!(seen.bytes, sent * CHUNK as u64);
    assert_eq!(
        loaded.len(),
        HEARTBEATS,
        "the stream ended before the heartbeats did"
    );
    assert!(
        chunks_during >= CHUNKS_PER_TRANSFER,
        "only {chunks_during} chunks moved while the heartbeats ran: less than one 1 MiB transfer"
    );
    assert!(
        lp99.saturating_sub(median) < DELAY_BOUND,
        "p99 of the loaded Heartbeat RTT ({:.2} ms) exceeds the unloaded median ({:.2} ms) by \
         {:.2} ms (bound {} ms){}",
        ms(lp99),
        ms(median),
        ms(lp99.saturating_sub(median)),
        DELAY_BOUND.as_millis(),
        diagnostics(&nodes)
    );
}
