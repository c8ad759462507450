//! The Modbus tunnel end to end, with real processes: an operator at the hub reads a site's
//! Modbus device through `POST /api/modbus`, which travels as a `ModbusTransfer` CALL to the
//! edge that owns the device, over the one overlay link between them. The hub must be able to
//! address the edge by its own id (not only the chargers it announces), so this is also the
//! test that a directly linked node peer is routable. The device is a tokio-modbus TCP server
//! in this process with fixed, distinct holding and input images, so a read can be compared
//! register for register, and it counts writes, so a refused write is proven never to reach it.
//! It accepts writes to holding registers 100..=110 and coils 0..=3 and records them, for the
//! signed writes of a role that grants `ModbusWrite`.

mod common;

use std::borrow::Cow;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::http_post_json;
use common::topology::{
    Csms, Node, NodeConfig, Timers, Uplink, diagnostics, has_security_event, wait_for,
};
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

/// Holding registers and coils that accept writes.
const WRITABLE_HOLDING: std::ops::RangeInclusive<u16> = 100..=110;
const WRITABLE_COILS: std::ops::RangeInclusive<u16> = 0..=3;

/// What the device was asked to do: every write that reached it, counted, and the accepted
/// ones recorded in order.
#[derive(Clone, Default)]
struct Writes {
    count: Arc<AtomicUsize>,
    accepted: Arc<Mutex<Vec<Request<'static>>>>,
}

impl Writes {
    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> Vec<Request<'static>> {
        self.accepted.lock().expect("writes lock").clone()
    }
}

/// Registers 0..IMAGE of both kinds; anything else is an illegal-address exception. Every write
/// is counted; writes inside the writable ranges are recorded and echoed, others are an
/// illegal-address exception.
struct Device {
    writes: Writes,
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
            ref w @ (Request::WriteSingleRegister(..)
            | Request::WriteMultipleRegisters(..)
            | Request::WriteSingleCoil(..)
            | Request::WriteMultipleCoils(..)) => {
                self.writes.count.fetch_add(1, Ordering::SeqCst);
                let inside = |range: &std::ops::RangeInclusive<u16>, a: u16, n: usize| {
                    let last = usize::from(a) + n.max(1) - 1;
                    range.contains(&a) && last <= usize::from(*range.end())
                };
                let response = match w {
                    Request::WriteSingleRegister(a, v) if inside(&WRITABLE_HOLDING, *a, 1) => {
                        Some(Response::WriteSingleRegister(*a, *v))
                    }
                    Request::WriteMultipleRegisters(a, v)
                        if inside(&WRITABLE_HOLDING, *a, v.len()) =>
                    {
                        Some(Response::WriteMultipleRegisters(*a, v.len() as u16))
                    }
                    Request::WriteSingleCoil(a, v) if inside(&WRITABLE_COILS, *a, 1) => {
                        Some(Response::WriteSingleCoil(*a, *v))
                    }
                    Request::WriteMultipleCoils(a, v) if inside(&WRITABLE_COILS, *a, v.len()) => {
                        Some(Response::WriteMultipleCoils(*a, v.len() as u16))
                    }
                    _ => None,
                };
                match response {
                    Some(r) => {
                        self.writes
                            .accepted
                            .lock()
                            .expect("writes lock")
                            .push(w.clone());
                        Ok(r)
                    }
                    None => Err(ExceptionCode::IllegalDataAddress),
                }
            }
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

/// Serves the device on an ephemeral loopback port from its own thread and runtime, so the
/// test's blocking HTTP calls never stall it. Lives as long as the test process.
fn start_device(writes: Writes) -> SocketAddr {
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
                let writes = writes.clone();
                async move {
                    accept_tcp_connection(stream, peer, move |_| {
                        Ok(Some(Device {
                            writes: writes.clone(),
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
    let writes = Writes::default();
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

    // 2. Unsigned writes are refused at the edge, whatever their form, and never reach the
    // device (this edge has no role that grants ModbusWrite, nor write_ranges).
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
        assert!(reason(&answer).contains("ModbusWrite"), "{what}: {answer}");
    }
    assert_eq!(writes.count(), 0, "a write reached the device");

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

fn allow_writes(peer: &str, target: &str, ranges: &[&str], write_ranges: &[&str]) -> String {
    let list = |r: &[&str]| {
        r.iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\n[[modbus.allow]]\npeer = \"{peer}\"\ntarget = \"{target}\"\nunits = [1]\n\
         ranges = [{}]\nwrite_ranges = [{}]\n",
        list(ranges),
        list(write_ranges)
    )
}

fn role(name: &str, key: &signing::PrivateKey, actions: &[&str]) -> String {
    let actions: Vec<String> = actions.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "\n[[signing.role]]\nname = \"{name}\"\nkeys = [\"{}\"]\nactions = [{}]\n",
        key.public().key_id(),
        actions.join(", ")
    )
}

/// The `ModbusTransfer` payload for `pdu`, signed by `key` for `destination` as the node that
/// owns the device checks it; `nonce` makes each signature distinct.
fn signed_payload(
    key: &signing::PrivateKey,
    destination: &str,
    target: &str,
    pdu: &[u8],
    nonce: &str,
) -> Value {
    let mut payload = json!({
        "target": target,
        "unitId": 1,
        "pdu": base64::engine::general_purpose::STANDARD.encode(pdu),
    });
    let message = signing::Message {
        message_type: 2,
        action: "ModbusTransfer",
        destination,
    };
    let options = signing::signature::SignOptions {
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        nonce: Some(nonce.to_owned()),
        name: None,
        description: None,
    };
    let object = signing::signature::sign(&message, &payload, key, options).expect("sign");
    signing::signature::attach(&mut payload, object).expect("attach");
    payload
}

/// `POST /api/modbus` with a raw `pdu` and the signatures of `signed` (made over `signed`'s
/// own pdu, which may differ from `pdu` to tamper).
fn signed_write(node: &str, target: &str, pdu: &[u8], signed: &Value) -> Value {
    let mut body = raw(node, target, pdu);
    body["signatures"] = signed["signatures"].clone();
    body
}

#[tokio::test]
async fn a_signed_write_by_a_granting_role_reaches_the_device_and_nothing_else_does() {
    let writes = Writes::default();
    let device = start_device(writes.clone());
    let writer = signing::PrivateKey::generate(signing::Algorithm::Ed25519).expect("key");
    let viewer = signing::PrivateKey::generate(signing::Algorithm::Secp256r1).expect("key");
    let stranger = signing::PrivateKey::generate(signing::Algorithm::Ed25519).expect("key");

    let timers = Timers {
        request_timeout_s: 5,
        ..Timers::default()
    };
    let csms = Csms::start();
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = NodeConfig::hub(hub_dir.path(), HUB, &csms.url, "127.0.0.1:0")
        .timers(timers)
        .node_peer(EDGE, &["CP-*"], None)
        .start(hub_dir);
    let edge_dir = tempfile::tempdir().unwrap();
    let edge = NodeConfig::edge(edge_dir.path(), EDGE)
        .timers(timers)
        .uplink(Uplink::new("hub", hub.url("nodes"), 0))
        .extra(&meter("io", device))
        .extra(&allow_writes(
            HUB,
            "io",
            &["holding:0-9", "holding:99-110"],
            &["holding:100-110", "coils:0-3"],
        ))
        .extra(&role(
            "operator",
            &writer,
            &["ModbusTransfer", "ModbusWrite"],
        ))
        .extra(&role("viewer", &viewer, &["ModbusTransfer"]))
        .start(edge_dir);
    let nodes = [&hub, &edge];
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
        "no route to {EDGE}{}",
        diagnostics(&nodes)
    );

    // 1. Signed by the operator: FC 6 reaches the device with the value, the reply is the echo.
    let fc6: &[u8] = &[0x06, 0x00, 100, 0x00, 0x2A];
    let good = signed_payload(&writer, EDGE, "io", fc6, "w-1");
    let (status, answer, _) = tunnel(&hub, signed_write(EDGE, "io", fc6, &good));
    assert_eq!(
        (status, &answer["status"]),
        (200, &json!("Ok")),
        "{answer}{}",
        diagnostics(&nodes)
    );
    assert_eq!(
        answer["pdu"],
        json!(base64::engine::general_purpose::STANDARD.encode(fc6)),
        "{answer}"
    );
    assert_eq!(
        writes.accepted(),
        vec![Request::WriteSingleRegister(100, 42)]
    );
    assert_eq!(writes.count(), 1);

    // FC 16 and FC 5 inside write_ranges, signed, are written too.
    let fc16: &[u8] = &[0x10, 0x00, 101, 0x00, 0x02, 0x04, 0x00, 0x07, 0x00, 0x08];
    let fc5: &[u8] = &[0x05, 0x00, 0x02, 0xFF, 0x00];
    for (i, pdu) in [fc16, fc5].into_iter().enumerate() {
        let signed = signed_payload(&writer, EDGE, "io", pdu, &format!("w-2-{i}"));
        let (status, answer, _) = tunnel(&hub, signed_write(EDGE, "io", pdu, &signed));
        assert_eq!((status, &answer["status"]), (200, &json!("Ok")), "{answer}");
    }
    assert_eq!(
        writes.accepted()[1..],
        [
            Request::WriteMultipleRegisters(101, vec![7, 8].into()),
            Request::WriteSingleCoil(2, true),
        ]
    );
    assert_eq!(writes.count(), 3);

    // 2. Refused, and the device never sees them: unsigned, signed by a role without
    // ModbusWrite, by an unknown key, tampered (signed over another value), replayed, signed
    // for another node, and signed but outside write_ranges (though readable).
    let other_value: &[u8] = &[0x06, 0x00, 100, 0x00, 0x2B];
    let outside: &[u8] = &[0x06, 0x00, 99, 0x00, 0x01];
    let refusals: Vec<(&str, Value, &str)> = vec![
        ("unsigned", raw(EDGE, "io", fc6), "ModbusWrite"),
        (
            "viewer",
            signed_write(
                EDGE,
                "io",
                fc6,
                &signed_payload(&viewer, EDGE, "io", fc6, "v-1"),
            ),
            "no role of its signers allows ModbusWrite",
        ),
        (
            "stranger",
            signed_write(
                EDGE,
                "io",
                fc6,
                &signed_payload(&stranger, EDGE, "io", fc6, "s-1"),
            ),
            "no known key",
        ),
        (
            "tampered",
            signed_write(
                EDGE,
                "io",
                other_value,
                &signed_payload(&writer, EDGE, "io", fc6, "t-1"),
            ),
            "does not verify",
        ),
        ("replayed", signed_write(EDGE, "io", fc6, &good), "replayed"),
        (
            "for the hub",
            signed_write(
                EDGE,
                "io",
                fc6,
                &signed_payload(&writer, HUB, "io", fc6, "h-1"),
            ),
            "does not verify",
        ),
        (
            "outside write_ranges",
            signed_write(
                EDGE,
                "io",
                outside,
                &signed_payload(&writer, EDGE, "io", outside, "o-1"),
            ),
            "outside the allowed write_ranges",
        ),
    ];
    for (what, body, needle) in refusals {
        let (status, answer, _) = tunnel(&hub, body);
        assert_eq!(status, 200, "{what}: {answer}");
        assert_eq!(answer["status"], "Refused", "{what}: {answer}");
        assert!(reason(&answer).contains(needle), "{what}: {answer}");
    }
    assert_eq!(writes.count(), 3, "a refused write reached the device");
    assert_eq!(writes.accepted().len(), 3);
    // Reads still work beside the writes, and the written register is not readable here
    // (the device's image is 0..20), so a read did not sneak through write_ranges either.
    let (_, answer, _) = tunnel(&hub, read(EDGE, "io", "holding", 0, 2));
    assert_eq!(
        answer["registers"],
        json!([holding(0), holding(1)]),
        "{answer}"
    );
    assert!(
        has_security_event(&edge.stderr_log(), "modbus_write_refused"),
        "no modbus_write_refused security event at the edge"
    );
}
