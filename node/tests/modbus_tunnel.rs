//! The Modbus tunnel end to end, with real processes: an operator at the hub reads a site's
//! Modbus device through `POST /api/modbus`, which travels as a `ModbusTransfer` CALL to the
//! edge that owns the device, over the one overlay link between them. The hub must be able to
//! address the edge by its own id (not only the chargers it announces), so this is also the
//! test that a directly linked node peer is routable. The device is a tokio-modbus TCP server
//! in this process with fixed, distinct holding and input images, so a read can be compared
//! register for register, and it counts writes, so a refused write is proven never to reach it.

mod common;

use std::borrow::Cow;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::http_post_json;
use common::topology::{Csms, Node, NodeConfig, Timers, Uplink, diagnostics, wait_for};
use serde_json::{Value, json};
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

const HUB: &str = "hub-m";
const EDGE: &str = "edge-m";
const UP: Duration = Duration::from_secs(15);
/// The timeoutMs of every tunnel request; a dead device must be answered well inside it.
const REQUEST_MS: u64 = 3000;
/// The edge's own per-request device timeout (`[[meter]] timeout_ms`), shorter than the CALL's
/// so that the edge, not the hub's CALL timer, says what went wrong.
const DEVICE_MS: u64 = 500;
const IMAGE: u16 = 20;

fn holding(addr: u16) -> u16 {
    0x4000 + 3 * addr
}

fn input(addr: u16) -> u16 {
    11 + 7 * addr
}

/// Registers 0..IMAGE of both kinds; anything else is an illegal-address exception, and every
/// write is counted and refused as an illegal function.
struct Device {
    writes: Arc<AtomicUsize>,
}

impl Device {
    fn read(f: fn(u16) -> u16, addr: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        match addr.checked_add(count) {
            Some(end) if end <= IMAGE => Ok((addr..end).map(f).collect()),
            _ => Err(ExceptionCode::IllegalDataAddress),
        }
    }
}

impl tokio_modbus::server::Service for Device {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        ready(match req.request {
            Request::ReadHoldingRegisters(a, n) => {
                Self::read(holding, a, n).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(a, n) => {
                Self::read(input, a, n).map(Response::ReadInputRegisters)
            }
            _ => {
                self.writes.fetch_add(1, Ordering::SeqCst);
                Err(ExceptionCode::IllegalFunction)
            }
        })
    }
}

/// Serves the device on an ephemeral loopback port from its own thread and runtime, so the
/// test's blocking HTTP calls never stall it. Lives as long as the test process.
fn start_device(writes: Arc<AtomicUsize>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("device runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the device");
            tx.send(listener.local_addr().expect("device address"))
                .expect("report the device address");
            let on_connected = move |stream, peer| {
                let writes = Arc::clone(&writes);
                async move {
                    accept_tcp_connection(stream, peer, move |_| {
                        Ok(Some(Device {
                            writes: Arc::clone(&writes),
                        }))
                    })
                }
            };
            let _ = Server::new(listener).serve(&on_connected, |_| {}).await;
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the device did not start")
}

fn meter(name: &str, addr: SocketAddr) -> String {
    format!(
        "\n[[meter]]\nname = \"{name}\"\ntransport = \"tcp\"\naddress = \"{addr}\"\nunit_id = 1\n\
         map = \"generic\"\ntimeout_ms = {DEVICE_MS}\n"
    )
}

fn allow(peer: &str, target: &str, ranges: &[&str]) -> String {
    let ranges: Vec<String> = ranges.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "\n[[modbus.allow]]\npeer = \"{peer}\"\ntarget = \"{target}\"\nunits = [1]\n\
         ranges = [{}]\n",
        ranges.join(", ")
    )
}

/// `POST /api/modbus` on `from`; the answer and how long it took.
fn tunnel(from: &Node, body: Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, answer) = http_post_json(from.admin_url(), "/api/modbus", &body);
    (status, answer, started.elapsed())
}

fn read(node: &str, target: &str, function: &str, address: u16, count: u16) -> Value {
    json!({"node": node, "target": target, "unitId": 1, "function": function,
           "address": address, "count": count, "timeoutMs": REQUEST_MS})
}

fn raw(node: &str, target: &str, pdu: &[u8]) -> Value {
    let pdu = base64::engine::general_purpose::STANDARD.encode(pdu);
    json!({"node": node, "target": target, "unitId": 1, "pdu": pdu, "timeoutMs": REQUEST_MS})
}

fn reason(answer: &Value) -> Cow<'_, str> {
    answer["reason"]
        .as_str()
        .map_or_else(|| Cow::Owned(answer.to_string()), Cow::Borrowed)
}

#[tokio::test]
async fn the_hub_reads_an_edge_device_through_the_overlay_and_nothing_else() {
    let writes = Arc::new(AtomicUsize::new(0));
    let device = start_device(writes.clone());
    // Closed: bound for its port, then released. Silent: accepts (in the backlog) and never
    // answers.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");

    let timers = Timers {
        request_timeout_s: 5,
        ..Timers::default()
    };
    let csms = Csms::start();
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = NodeConfig::hub(hub_dir.path(), HUB, &csms.url, "127.0.0.1:0")
        .timers(timers)
        .node_peer(EDGE, &["CP-*"], None)
        // A device at the hub too, to check the other direction.
        .extra(&meter("hub-grid", device))
        .extra(&allow(EDGE, "hub-grid", &["holding:0-9"]))
        .start(hub_dir);
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = NodeConfig::edge(edge_dir.path(), EDGE)
        .timers(timers)
        .uplink(Uplink::new("hub", hub.url("nodes"), 0))
        .extra(&meter("grid", device))
        .extra(&meter("gone", closed))
        .extra(&meter("mute", silent_addr))
        .extra(&allow(HUB, "grid", &["holding:0-9", "input:0-9"]))
        .extra(&allow(HUB, "gone", &["holding:0-9"]))
        .extra(&allow(HUB, "mute", &["holding:0-9"]))
        .start(edge_dir);
    let nodes = [&hub, &edge];

    // The hub learns the edge's id from the link's authentication, as a connect route.
    let routed = wait_for(UP, || {
        let routes = hub.status()["routes"].clone();
        routes
            .as_array()?
            .iter()
            .any(|r| r["destination"] == EDGE && r["source"] == "connect")
            .then_some(())
    })
    .await;
    assert!(
        routed.is_some(),
        "no connect route to {EDGE} at the hub: {}{}",
        hub.status(),
        diagnostics(&nodes)
    );

    // 1. Reads return exactly what the device holds, per register kind.
    for (function, f, address, count) in [
        ("holding", holding as fn(u16) -> u16, 0, 10),
        ("holding", holding, 3, 4),
        ("input", input, 0, 10),
        ("input", input, 9, 1),
    ] {
        let (status, answer, _) = tunnel(&hub, read(EDGE, "grid", function, address, count));
        let want: Vec<u16> = (address..address + count).map(f).collect();
        assert_eq!(
            (status, &answer["status"]),
            (200, &json!("Ok")),
            "{function} {address}+{count}: {answer}{}",
            diagnostics(&nodes)
        );
        assert_eq!(
            answer["registers"],
            json!(want),
            "{function} {address}+{count}: {answer}"
        );
    }

    // 2. Writes are refused at the edge, whatever their form, and never reach the device.
    let writes_pdus: [(&str, &[u8]); 2] = [
        ("write single register (6)", &[0x06, 0x00, 0x01, 0x00, 0x2A]),
        (
            "write multiple registers (16)",
            &[0x10, 0x00, 0x00, 0x00, 0x02, 0x04, 0x00, 0x01, 0x00, 0x02],
        ),
    ];
    for (what, pdu) in writes_pdus {
        let (status, answer, _) = tunnel(&hub, raw(EDGE, "grid", pdu));
        assert_eq!(status, 200, "{what}: {answer}");
        assert_eq!(answer["status"], "Refused", "{what}: {answer}");
        assert!(reason(&answer).contains("writes"), "{what}: {answer}");
    }
    assert_eq!(
        writes.load(Ordering::SeqCst),
        0,
        "a write reached the device"
    );

    // 3. Outside the allow-list: past the range, straddling its end, another unit.
    for (what, body, needle) in [
        (
            "holding 10",
            read(EDGE, "grid", "holding", 10, 1),
            "outside the allowed ranges",
        ),
        (
            "holding 8+3",
            read(EDGE, "grid", "holding", 8, 3),
            "outside the allowed ranges",
        ),
        (
            "unit 2",
            {
                let mut b = read(EDGE, "grid", "holding", 0, 1);
                b["unitId"] = json!(2);
                b
            },
            "unit 2 is not allowed",
        ),
    ] {
        let (status, answer, _) = tunnel(&hub, body);
        assert_eq!(status, 200, "{what}: {answer}");
        assert_eq!(answer["status"], "Refused", "{what}: {answer}");
        assert!(reason(&answer).contains(needle), "{what}: {answer}");
    }

    // 4. Dead devices are reported by the edge, inside the request's timeout (2x margin).
    let limit = Duration::from_millis(2 * REQUEST_MS);
    for (target, want) in [("gone", "Unreachable"), ("mute", "Timeout")] {
        let (status, answer, took) = tunnel(&hub, read(EDGE, target, "holding", 0, 1));
        eprintln!("{target}: HTTP {status} in {took:?}: {answer}");
        assert_eq!(status, 200, "{target}: {answer}");
        assert_eq!(answer["status"], want, "{target}: {answer}");
        assert!(answer["reason"].is_string(), "{target}: {answer}");
        assert!(took < limit, "{target}: answered after {took:?}");
    }
    // The device answers again after the dead ones: one bad device does not block the tunnel.
    let (_, answer, _) = tunnel(&hub, read(EDGE, "grid", "input", 0, 2));
    assert_eq!(answer["registers"], json!([input(0), input(1)]), "{answer}");

    // The other direction: the edge reaches the hub by its id (through its default route).
    let (status, answer, _) = tunnel(&edge, read(HUB, "hub-grid", "holding", 0, 2));
    assert_eq!(status, 200, "{answer}{}", diagnostics(&nodes));
    assert_eq!(
        answer["registers"],
        json!([holding(0), holding(1)]),
        "{answer}"
    );

    // A node nobody links to is still refused at once.
    let (status, answer, _) = tunnel(&hub, read("edge-nowhere", "grid", "holding", 0, 1));
    assert_eq!(status, 502, "{answer}");
    assert_eq!(
        answer,
        json!({"status": "NotSent", "reason": "unreachable"}),
        "{answer}"
    );
    drop(silent);
}
