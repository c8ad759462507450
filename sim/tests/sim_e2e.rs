//! End-to-end tests with real processes: `ocpp-sim charger` against `ocpp-sim csms`, and against
//! the real `ocpp-node`. Every process listens on port 0 and announces itself with a
//! `listening <name> <url>` line, so these tests run in parallel with anything else.

mod common;
use common::{Proc, SIM, parse_json};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Starts `ocpp-sim charger` with `args`; collect it with [`finish_chargers`].
fn start_chargers(url: &str, version: &str, prefix: &str, count: u32) -> Child {
    Command::new(SIM)
        .args([
            "charger",
            "--url",
            url,
            "--version",
            version,
            "--id-prefix",
            prefix,
        ])
        .args(["--count", &count.to_string(), "--transactions", "2"])
        .args(["--timeout", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Waits for a charger run, checks that every charger succeeded, returns its summary.
fn finish_chargers(child: Child, count: u32) -> Value {
    let Output { status, stdout, .. } = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(stdout).unwrap();
    assert!(
        status.success(),
        "ocpp-sim charger failed: {status}, {stdout}"
    );
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["chargers"], count, "{summary}");
    assert_eq!(summary["ok"], count, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
    summary
}

/// What one charger of the default script sends with `--transactions 2` (one heartbeat, one
/// meter value per transaction).
const CALLS_PER_CHARGER: u64 = 10;

#[test]
fn chargers_and_csms_agree_on_every_count() {
    let mut csms = Proc::spawn(
        Path::new(SIM),
        &[
            "csms",
            "--listen",
            "127.0.0.1:0",
            "--by-charger",
            "--on-boot",
            "ClearCache:{}",
        ],
    );
    let url = csms.listening("csms");
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with("/ocpp"),
        "{url}"
    );

    let v16 = start_chargers(&url, "1.6", "A-", 20);
    let v201 = start_chargers(&url, "2.0.1", "B-", 20);
    let v16 = finish_chargers(v16, 20);
    let v201 = finish_chargers(v201, 20);
    for summary in [&v16, &v201] {
        assert_eq!(summary["calls"], 20 * CALLS_PER_CHARGER, "{summary}");
        // Each charger answered the one ClearCache sent after its boot.
        assert_eq!(summary["answered"], 20, "{summary}");
    }

    csms.sigterm();
    let summary = parse_json(&csms.line());
    assert!(csms.wait().success());

    assert_eq!(summary["connections"], 40, "{summary}");
    assert_eq!(summary["refused"], 0, "{summary}");
    assert_eq!(summary["calls"], 40 * CALLS_PER_CHARGER, "{summary}");
    assert_eq!(
        summary["calls"].as_u64().unwrap(),
        v16["calls"].as_u64().unwrap() + v201["calls"].as_u64().unwrap()
    );
    let expected = json!({
        "BootNotification": 40,
        "Heartbeat": 40,
        "StatusNotification": 40,
        "Authorize": 40,
        // 1.6: two transactions of start, one meter value, stop.
        "StartTransaction": 40,
        "MeterValues": 40,
        "StopTransaction": 40,
        // 2.0.1: two transactions of Started, Updated, Ended.
        "TransactionEvent": 120,
    });
    assert_eq!(summary["by_action"], expected, "{summary}");
    assert_eq!(summary["not_implemented"], 0, "{summary}");
    assert_eq!(summary["bad_frames"], 0, "{summary}");
    assert_eq!(summary["csms_calls_sent"], 40, "{summary}");
    assert_eq!(summary["csms_calls_answered"], 40, "{summary}");
    assert_eq!(summary["csms_calls_errors"], 0, "{summary}");

    let by_charger: BTreeMap<String, u64> =
        serde_json::from_value(summary["by_charger"].clone()).unwrap();
    assert_eq!(by_charger.len(), 40, "{summary}");
    for (prefix, n) in [("A-", 20), ("B-", 20)] {
        for i in 1..=n {
            assert_eq!(
                by_charger.get(&format!("{prefix}{i}")),
                Some(&CALLS_PER_CHARGER),
                "{summary}"
            );
        }
    }
}

/// Sends a WebSocket upgrade for `path` offering `protocols`; returns the status code and the
/// response head.
fn upgrade(addr: &str, path: &str, protocols: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let protocol_header = protocols
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         {protocol_header}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    (status, head)
}

fn negotiated(head: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-protocol")
            .then(|| value.trim().to_owned())
    })
}

#[test]
fn csms_negotiates_and_refuses_upgrades() {
    let mut csms = Proc::spawn(
        Path::new(SIM),
        &[
            "csms",
            "--listen",
            "127.0.0.1:0",
            "--path",
            "/central/",
            "--subprotocols",
            "ocpp1.6,ocpp2.0.1",
            "--refuse",
            "NOPE",
        ],
    );
    let url = csms.listening("csms");
    let addr = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.strip_suffix("/central"))
        .unwrap_or_else(|| panic!("unexpected URL {url}"))
        .to_owned();

    // The highest offered version that the CSMS accepts wins; 2.1 is not enabled here.
    let (status, head) = upgrade(&addr, "/central/CP1", Some("ocpp2.1, ocpp1.6,ocpp2.0.1"));
    assert_eq!(status, 101, "{head}");
    assert_eq!(negotiated(&head).as_deref(), Some("ocpp2.0.1"), "{head}");
    let (status, head) = upgrade(&addr, "/central/CP%202", Some("ocpp1.6"));
    assert_eq!(status, 101, "{head}");
    assert_eq!(negotiated(&head).as_deref(), Some("ocpp1.6"), "{head}");
    // Nothing offered: taken as 1.6, and no subprotocol header is invented.
    let (status, head) = upgrade(&addr, "/central/CP3", None);
    assert_eq!(status, 101, "{head}");
    assert_eq!(negotiated(&head), None, "{head}");

    assert_eq!(upgrade(&addr, "/central/CP4", Some("ocpp9")).0, 400);
    assert_eq!(upgrade(&addr, "/central/CP4", Some("ocpp2.1")).0, 400);
    assert_eq!(upgrade(&addr, "/central/NOPE", Some("ocpp1.6")).0, 404);
    assert_eq!(upgrade(&addr, "/elsewhere/CP5", Some("ocpp1.6")).0, 404);
    assert_eq!(upgrade(&addr, "/central/", Some("ocpp1.6")).0, 404);

    csms.sigterm();
    let summary = parse_json(&csms.line());
    assert!(csms.wait().success());
    assert_eq!(summary["connections"], 3, "{summary}");
    assert_eq!(summary["refused"], 5, "{summary}");
}

/// Opens a WebSocket to the simulated CSMS offering `version`.
async fn connect(url: &str, version: &str) -> Ws {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(version).unwrap(),
    );
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

/// Sends one text frame and returns the parsed answer.
async fn exchange(ws: &mut Ws, text: &str) -> Value {
    ws.send(Message::text(text.to_owned())).await.unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no answer in time")
            .expect("connection closed")
            .unwrap();
        if let Message::Text(text) = message {
            return parse_json(text.as_str());
        }
    }
}

#[tokio::test]
async fn csms_answers_per_version_and_counts_what_it_cannot() {
    let mut csms = Proc::spawn(
        Path::new(SIM),
        &[
            "csms",
            "--listen",
            "127.0.0.1:0",
            "--on-boot",
            r#"Reset:{"type":"Soft"}"#,
        ],
    );
    let url = csms.listening("csms");

    let mut v16 = connect(&format!("{url}/OLD"), "ocpp1.6").await;
    let answer = exchange(&mut v16, r#"[2,"1","Bogus",{}]"#).await;
    assert_eq!(answer[0], 4);
    assert_eq!(answer[1], "1");
    assert_eq!(answer[2], "NotImplemented");
    // SEND exists only from 2.1 on; 1.6 spells the error its own way.
    let answer = exchange(&mut v16, r#"[6,"2","NotifyPeriodicEventStream",{}]"#).await;
    assert_eq!(
        answer.as_array().unwrap()[..3],
        [json!(4), json!("2"), json!("FormationViolation")]
    );
    let answer = exchange(&mut v16, "not json").await;
    assert_eq!(
        answer.as_array().unwrap()[..3],
        [json!(4), json!("-1"), json!("FormationViolation")]
    );
    let first = exchange(&mut v16, r#"[2,"3","StartTransaction",{}]"#).await;
    let second = exchange(&mut v16, r#"[2,"4","StartTransaction",{}]"#).await;
    assert!(second[2]["transactionId"].as_i64() > first[2]["transactionId"].as_i64());
    assert_eq!(first[2]["idTagInfo"]["status"], "Accepted");

    // After the boot answer comes the --on-boot call; answer it with an error.
    let boot = exchange(&mut v16, r#"[2,"5","BootNotification",{}]"#).await;
    assert_eq!(boot[2]["status"], "Accepted");
    assert!(boot[2]["interval"].is_u64(), "{boot}");
    let reset = tokio::time::timeout(Duration::from_secs(10), v16.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reset = parse_json(reset.to_text().unwrap());
    assert_eq!(reset[0], 2);
    assert_eq!(reset[2], "Reset");
    assert_eq!(reset[3], json!({"type": "Soft"}));
    assert_eq!(reset[1].as_str().unwrap().len(), 36, "a UUID: {reset}");
    let error = format!(r#"[4,{},"NotSupported","no",{{}}]"#, reset[1]);
    v16.send(Message::text(error)).await.unwrap();

    let mut v201 = connect(&format!("{url}/NEW"), "ocpp2.0.1").await;
    let answer = exchange(&mut v201, r#"[2,"1","StartTransaction",{}]"#).await;
    assert_eq!(answer[2], "NotImplemented");
    let answer = exchange(&mut v201, "[1,2").await;
    assert_eq!(
        answer.as_array().unwrap()[..3],
        [json!(4), json!("-1"), json!("RpcFrameworkError")]
    );
    let answer = exchange(&mut v201, r#"[7,"9"]"#).await;
    assert_eq!(
        answer.as_array().unwrap()[..3],
        [json!(4), json!("9"), json!("MessageTypeNotSupported")]
    );
    let started = r#"[2,"2","TransactionEvent",{"eventType":"Started","idToken":{"idToken":"T","type":"ISO14443"}}]"#;
    assert_eq!(
        exchange(&mut v201, started).await[2]["idTokenInfo"]["status"],
        "Accepted"
    );
    let updated = r#"[2,"3","TransactionEvent",{"eventType":"Updated"}]"#;
    assert_eq!(exchange(&mut v201, updated).await[2], json!({}));
    let heartbeat = exchange(&mut v201, r#"[2,"4","Heartbeat",{}]"#).await;
    assert!(heartbeat[2]["currentTime"].is_string(), "{heartbeat}");

    let mut v21 = connect(&format!("{url}/NEWEST"), "ocpp2.1").await;
    v21.send(Message::text(r#"[6,"1","NotifyPeriodicEventStream",{}]"#))
        .await
        .unwrap();
    // SEND gets no answer; the Heartbeat after it does, so the SEND was read first.
    let heartbeat = exchange(&mut v21, r#"[2,"2","Heartbeat",{}]"#).await;
    assert_eq!(heartbeat[1], "2");

    // The Reset error was sent before the v201 exchanges, on a connection the CSMS reads in
    // order; a round trip on that connection makes sure it has been counted.
    exchange(&mut v16, r#"[2,"6","Heartbeat",{}]"#).await;

    csms.sigterm();
    let summary = parse_json(&csms.line());
    assert!(csms.wait().success());
    assert_eq!(summary["connections"], 3, "{summary}");
    assert_eq!(summary["active"], 3, "{summary}");
    // Bogus (1.6) and StartTransaction (2.0.1).
    assert_eq!(summary["not_implemented"], 2, "{summary}");
    assert_eq!(summary["bad_frames"], 4, "{summary}");
    assert_eq!(summary["sends"], 1, "{summary}");
    assert_eq!(summary["csms_calls_sent"], 1, "{summary}");
    assert_eq!(summary["csms_calls_answered"], 0, "{summary}");
    assert_eq!(summary["csms_calls_errors"], 1, "{summary}");
    assert_eq!(
        summary["by_action"],
        json!({"StartTransaction": 2, "BootNotification": 1, "TransactionEvent": 2, "Heartbeat": 3}),
        "{summary}"
    );
    assert_eq!(summary["calls"], 10, "{summary}");
}

#[test]
fn csms_stops_after_its_duration() {
    let mut csms = Proc::spawn(
        Path::new(SIM),
        &["csms", "--listen", "127.0.0.1:0", "--duration", "1"],
    );
    csms.listening("csms");
    let summary = parse_json(&csms.line());
    assert_eq!(summary["connections"], 0, "{summary}");
    assert!(csms.wait().success());
}

/// The `ocpp-node` binary that `cargo nextest run --workspace` builds next to `ocpp-sim`.
fn node_binary() -> PathBuf {
    let path = Path::new(SIM).with_file_name("ocpp-node");
    assert!(
        path.exists(),
        "{} is missing: it is built by the workspace tests; run `cargo nextest run --workspace` \
         (or `cargo build -p ocpp-node`) first",
        path.display()
    );
    path
}

/// `GET path` over plain HTTP/1.1; returns the status and the body.
/// GET with the node's admin bearer token.
fn http_get(base: &str, path: &str, token: &str) -> (u16, String) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

#[test]
fn chargers_run_transactions_through_ocpp_node() {
    let node_bin = node_binary();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"[node]
id = "lc"
data_dir = "{data}"

[[listener]]
name = "chargers"
bind = "127.0.0.1:0"

[admin]
bind = "127.0.0.1:0"

[auth.local_list]
"TAG-OK" = "Accepted"
"#,
            data = dir.path().join("data").display()
        ),
    )
    .unwrap();
    let node = Proc::spawn(&node_bin, &["run", "--config", config.to_str().unwrap()]);
    // The node prints one line per listener, chargers first.
    let chargers_url = node.listening("chargers");
    let admin_url = node.listening("admin");
    // No token in a secrets file: the node generated one into its data directory.
    let token = std::fs::read_to_string(dir.path().join("data").join("admin.token"))
        .expect("the node's generated admin token");
    let token = token.trim();

    let v16 = start_chargers(&chargers_url, "1.6", "N16-", 10);
    let v201 = start_chargers(&chargers_url, "2.0.1", "N201-", 10);
    finish_chargers(v16, 10);
    finish_chargers(v201, 10);

    // The chargers have every answer, but a journal commit may still be landing; wait briefly
    // for the store to show them all ended rather than race it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let transactions = loop {
        let (status, body) = http_get(&admin_url, "/api/transactions", token);
        assert_eq!(status, 200, "{body}");
        let list = parse_json(&body)["transactions"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no transactions array: {body}"));
        let all_ended = list.iter().all(|t| t["status"] == "Ended");
        if (list.len() == 40 && all_ended) || Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(transactions.len(), 40, "{transactions:#?}");
    for t in &transactions {
        assert_eq!(t["status"], "Ended", "{t}");
    }
    let per_version = |v: &str| {
        transactions
            .iter()
            .filter(|t| t["ocppVersion"] == v)
            .count()
    };
    assert_eq!(per_version("ocpp1.6"), 20);
    assert_eq!(per_version("ocpp2.0.1"), 20);
}
