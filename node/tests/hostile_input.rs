//! Hostile input against one real node process (role hub with a charger listener, in front of
//! the in-test CSMS). Hostile traffic comes from 127.0.0.2 and the good charger from 127.0.0.3,
//! so the per-IP limits are really exercised. After every case the good charger still gets its
//! Heartbeat answered by the CSMS, and at the end the node's peak RSS (VmHWM) is under
//! `PEAK_RSS_LIMIT_KIB`.
//!
//! The limits are set explicitly in the listener config below; every wait in this test is at
//! least twice the timer it waits for.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use common::topology::{Csms, metric_sum};

const HOSTILE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const GOOD: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const PASSWORD: &str = "correct horse";
/// Peak resident memory the node may reach over the whole test. Idle it is about 15 MiB. By
/// design up to 4 argon2 verifications run at once, each holding its 19 MiB memory cost on its
/// own thread (node/src/auth.rs): 76 MiB; measured peak about 99 MiB. One buffered 100 MiB frame
/// would exceed this.
const PEAK_RSS_LIMIT_KIB: u64 = 128 * 1024;

const MAX_PENDING: usize = 4;
const UPGRADE_TIMEOUT_S: u64 = 2;
const WRITE_TIMEOUT_S: u64 = 2;
const REQUEST_TIMEOUT_S: u64 = 3;
const AUTH_FAILURES: u32 = 5;

type Ws = WebSocketStream<TcpStream>;

struct Site {
    node: std::process::Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    admin: String,
    _csms: Csms,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.node.kill();
        let _ = self.node.wait();
    }
}

impl Site {
    fn start() -> Site {
        let csms = Csms::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let hash = common::hash_password(PASSWORD);
        let chargers: String = ["GOOD-1", "BIG-1", "FLOOD-1", "MUTE-1", "DEAF-1"]
            .iter()
            .map(|id| format!("[chargers.\"{id}\"]\npassword_hash = \"{hash}\"\n"))
            .collect();
        let config = format!(
            r#"
[node]
id = "hub-hostile"
role = "hub"
data_dir = "{data}"

[[listener]]
name = "chargers"
bind = "127.0.0.1:0"
security_profile = 1
max_frame_bytes = 65536
upgrade_timeout_s = {UPGRADE_TIMEOUT_S}
max_pending_calls = {MAX_PENDING}
write_timeout_s = {WRITE_TIMEOUT_S}
ping_interval_s = 0
ip_connect_rate = 50
ip_connect_burst = 300
auth_failures_per_ip = {AUTH_FAILURES}
auth_block_s = 60
auth_block_max_s = 120

[admin]
bind = "127.0.0.1:0"

[overlay]
request_timeout_s = {REQUEST_TIMEOUT_S}

[hub]
csms_url = "{csms}"

{chargers}
"#,
            data = dir.path().join("data").display(),
            csms = csms.url,
        );
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config).expect("config");
        let (node, urls) = common::spawn_node(&path, dir.path());
        let port: u16 = urls["chargers"]
            .trim_start_matches("ws://")
            .split(['/', ':'])
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("listener port");
        Site {
            node,
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            admin: urls["admin"].clone(),
            dir,
            _csms: csms,
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.node.try_wait(), Ok(None))
    }

    fn peak_rss_kib(&self) -> u64 {
        common::peak_rss_kib(self.node.id())
    }

    fn metrics(&self) -> String {
        common::http_get_text(&self.admin, "/metrics")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The good charger, from its own address: connect, boot, and a Heartbeat answered by the
    /// CSMS. Panics with the node's log tail when that fails.
    async fn good_charger_is_served(&mut self, after: &str) {
        assert!(self.alive(), "the node died during {after}");
        eprintln!(
            "after {after}: node peak RSS (VmHWM) {} KiB",
            self.peak_rss_kib()
        );
        let mut ws = open(self.addr, GOOD, "GOOD-1", Some(PASSWORD), None)
            .await
            .unwrap_or_else(|s| panic!("good charger refused after {after}: HTTP {s}"));
        for (i, action, payload) in [
            (
                1,
                "BootNotification",
                json!({"chargePointVendor": "V", "chargePointModel": "M"}),
            ),
            (2, "Heartbeat", json!({})),
        ] {
            let id = format!("good-{i}");
            let frame = json!([2, id, action, payload]).to_string();
            ws.send(Message::text(frame)).await.expect("send");
            let reply = next_text(&mut ws, Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("good charger: no answer to {action} after {after}"));
            assert_eq!(reply[0], 3, "good charger after {after}: {reply}");
            assert_eq!(reply[1], id.as_str());
        }
        let _ = ws.close(None).await;
    }
}

/// A TCP connection to the node from `from`.
async fn tcp_from(
    to: SocketAddr,
    from: IpAddr,
    recv_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.connect(to).await
}

/// A charger WebSocket from `from`; `Err` is the HTTP status, 0 when closed without one.
async fn open(
    to: SocketAddr,
    from: IpAddr,
    id: &str,
    password: Option<&str>,
    recv_buffer: Option<u32>,
) -> Result<Ws, u16> {
    let stream = tcp_from(to, from, recv_buffer).await.map_err(|_| 0u16)?;
    let basic = password.map(|pw| (id, pw));
    let req = common::upgrade_request(&format!("ws://{to}/ocpp"), id, Some("ocpp1.6"), basic, &[]);
    let handshake = tokio_tungstenite::client_async(req, stream);
    match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => Err(resp.status().as_u16()),
        _ => Err(0),
    }
}

async fn next_text(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                return None;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(8192);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_survives_hostile_peers_and_keeps_serving() {
    raise_open_file_limit();
    let mut site = Site::start();
    site.good_charger_is_served("start").await;

    // 1. 200 slowloris upgrades: a partial request head, then silence. Each must be closed
    //    after upgrade_timeout_s, while the good charger is served meanwhile.
    let mut slow = Vec::new();
    for i in 0..200 {
        let mut s = tcp_from(site.addr, HOSTILE, None)
            .await
            .expect("slowloris connect");
        let head = format!("GET /ocpp/SLOW-{i} HTTP/1.1\r\nHost: x\r\n");
        s.write_all(head.as_bytes()).await.expect("partial head");
        slow.push(s);
    }
    site.good_charger_is_served("200 slowloris upgrades opened")
        .await;
    let wait = Duration::from_secs(UPGRADE_TIMEOUT_S * 2 + 10);
    let mut closed = 0;
    for s in &mut slow {
        let mut buf = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(wait, s.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 200,
        "every slowloris connection is closed by the node"
    );
    drop(slow);
    site.good_charger_is_served("slowloris").await;

    // 2. A 100 MiB frame: the header announces it and the payload follows. The node must answer
    //    with close 1009 after the header instead of buffering the payload; what follows it is
    //    read and discarded for a bounded time (so the close frame is not lost to a reset).
    let mut big = open(site.addr, HOSTILE, "BIG-1", Some(PASSWORD), None)
        .await
        .expect("BIG-1 connects");
    let len: u64 = 100 * 1024 * 1024;
    let mut header = vec![0x81u8, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]); // mask key: clients must mask
    let raw = big.get_mut();
    raw.write_all(&header).await.expect("frame header");
    let chunk = vec![b'x'; 1024 * 1024];
    let mut written = 0u64;
    while written < len {
        match tokio::time::timeout(Duration::from_secs(10), raw.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len() as u64,
            _ => break, // the node closed the connection (reset) or stopped reading
        }
    }
    let mut answer = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), raw.read_exact(&mut answer))
        .await
        .expect("the node answers the oversize frame")
        .expect("a close frame before the connection ends");
    assert_eq!(answer[0], 0x88, "a close frame: {answer:?}");
    assert_eq!(
        u16::from_be_bytes([answer[2], answer[3]]),
        1009,
        "close code 1009 (message too big)"
    );
    drop(big);
    assert!(
        site.log().contains("frame over the size limit"),
        "the node logs the oversize frame"
    );
    site.good_charger_is_served("a 100 MiB frame").await;

    // 3. 10,000 CALLs without waiting for answers. At most MAX_PENDING wait at the CSMS at once;
    //    the rest are answered "busy" at once. Every CALL gets exactly one answer.
    let flood = open(site.addr, HOSTILE, "FLOOD-1", Some(PASSWORD), None)
        .await
        .expect("FLOOD-1 connects");
    let (mut tx, mut rx) = flood.split();
    const CALLS: usize = 10_000;
    let writer = tokio::spawn(async move {
        for i in 0..CALLS {
            let frame = format!("[2,\"f{i}\",\"Heartbeat\",{{}}]");
            if tx.feed(Message::text(frame)).await.is_err() {
                return false;
            }
        }
        tx.flush().await.is_ok()
    });
    let (mut results, mut busy, mut other) = (0usize, 0usize, Vec::new());
    let mut seen = std::collections::HashSet::new();
    while results + busy + other.len() < CALLS {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(30), rx.next()).await
        else {
            break;
        };
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
        assert!(
            seen.insert(v[1].as_str().unwrap_or_default().to_owned()),
            "one answer per CALL: {v}"
        );
        match (v[0].as_u64(), v[3].as_str()) {
            (Some(3), _) => results += 1,
            (Some(4), Some("busy")) => busy += 1,
            _ => other.push(v),
        }
    }
    assert!(
        writer.await.expect("writer"),
        "the node read all 10,000 CALLs"
    );
    assert_eq!(
        results + busy,
        CALLS,
        "every CALL answered (results {results}, busy {busy}, other {other:?})"
    );
    assert!(busy > 0, "CALLs beyond max_pending_calls are answered busy");
    assert!(results > 0, "CALLs within the limit reach the CSMS");
    drop(rx);
    site.good_charger_is_served("10,000 CALLs without waiting")
        .await;

    // 4. A CSMS that never answers (the in-test CSMS stays silent for MUTE-*): MAX_PENDING CALLs
    //    wait and then time out; the rest are busy. Nothing grows without bound.
    let mut mute = open(site.addr, HOSTILE, "MUTE-1", Some(PASSWORD), None)
        .await
        .expect("MUTE-1 connects");
    for i in 0..20 {
        let frame = format!("[2,\"m{i}\",\"Heartbeat\",{{}}]");
        mute.send(Message::text(frame)).await.expect("send");
    }
    let (mut timeouts, mut busy) = (0, 0);
    while timeouts + busy < 20 {
        let Some(v) = next_text(&mut mute, Duration::from_secs(REQUEST_TIMEOUT_S * 2 + 10)).await
        else {
            break;
        };
        match v[3].as_str() {
            Some("timeout") => timeouts += 1,
            Some("busy") => busy += 1,
            _ => panic!("unexpected answer while the CSMS is mute: {v}"),
        }
    }
    assert_eq!(timeouts, MAX_PENDING, "the CALLs admitted time out");
    assert_eq!(busy, 20 - MAX_PENDING, "the others are answered busy");
    drop(mute);
    site.good_charger_is_served("a CSMS that never answers")
        .await;

    // 5. A peer that never reads: it pipelines CALLs and never reads the answers. The node must
    //    disconnect it (write_timeout_s, or its queue overflowing), not buffer for ever.
    let deaf = open(site.addr, HOSTILE, "DEAF-1", Some(PASSWORD), Some(4096))
        .await
        .expect("DEAF-1 connects");
    let (mut tx, mut rx) = deaf.split();
    let writer = tokio::spawn(async move {
        let mut i = 0u64;
        loop {
            i += 1;
            let frame = format!("[2,\"d{i}\",\"Heartbeat\",{{}}]");
            let sent = tokio::time::timeout(Duration::from_secs(30), tx.send(Message::text(frame)));
            if !matches!(sent.await, Ok(Ok(()))) || i > 2_000_000 {
                return i;
            }
        }
    });
    // Not reading for a while: the node's queue and the socket buffers fill up.
    tokio::time::sleep(Duration::from_secs(WRITE_TIMEOUT_S * 2 + 4)).await;
    site.good_charger_is_served("a peer that never reads (while it is connected)")
        .await;
    // Now drain: the stream must end (the node closed it) rather than go on for ever.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(_)) = rx.next().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the node never disconnected a peer that does not read"
    );
    writer.abort();
    assert!(
        site.log().contains("does not read its frames") || site.log().contains("does not keep up"),
        "the node says why it disconnected the peer"
    );
    site.good_charger_is_served("a peer that never reads").await;

    // 6. 1,000 connections with wrong passwords. After AUTH_FAILURES the address is blocked and
    //    closed at accept, before any password is hashed.
    let mut statuses = std::collections::BTreeMap::new();
    for chunk in 0..20 {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50 {
            let addr = site.addr;
            let id = format!("GOOD-{}", chunk * 50 + i);
            tasks.spawn(async move { open(addr, HOSTILE, &id, Some("wrong"), None).await });
        }
        while let Some(r) = tasks.join_next().await {
            let status = match r.expect("task") {
                Ok(_) => 101,
                Err(s) => s,
            };
            *statuses.entry(status).or_insert(0usize) += 1;
        }
    }
    assert_eq!(
        statuses.get(&101),
        None,
        "no wrong password is accepted: {statuses:?}"
    );
    let unauthorized = statuses.get(&401).copied().unwrap_or(0);
    assert!(
        unauthorized <= AUTH_FAILURES as usize + 50,
        "after {AUTH_FAILURES} failures the address is blocked before hashing: {statuses:?}"
    );
    let metrics = site.metrics();
    let blocked = metric_sum(
        &metrics,
        "ocpp_handshakes_refused_total{reason=\"ip_blocked\"}",
    )
    .unwrap_or(0.0);
    assert!(
        blocked >= 900.0,
        "blocked connections are counted: {blocked}"
    );
    assert!(
        common::topology::has_security_event(&site.log(), "ip_blocked"),
        "blocking an address is a security event"
    );
    site.good_charger_is_served("1,000 wrong passwords").await;

    let peak = site.peak_rss_kib();
    eprintln!("hostile input: node peak RSS (VmHWM) {peak} KiB");
    assert!(
        peak < PEAK_RSS_LIMIT_KIB,
        "peak RSS {peak} KiB exceeds {PEAK_RSS_LIMIT_KIB} KiB"
    );
}
