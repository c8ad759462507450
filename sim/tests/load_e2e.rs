//! End-to-end tests of the benchmark tools with real processes: `ocpp-sim load` against
//! `ocpp-sim backend`, directly and through `ocpp-sim forward`. Every process listens on port 0
//! and announces itself with a `listening <name> <url>` line, so these tests run in parallel with
//! anything else.

mod common;
use common::{Proc, SIM, parse_json};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Starts `ocpp-sim load --url <url> <args>`; collect it with [`finish_load`].
fn start_load(url: &str, args: &[&str]) -> Child {
    Command::new(SIM)
        .args(["load", "--url", url, "--timeout", "10"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Waits for a load run, checks that it succeeded and printed one well-formed JSON line, and
/// returns it.
fn finish_load(child: Child) -> Value {
    let Output { status, stdout, .. } = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(stdout).unwrap();
    assert!(status.success(), "ocpp-sim load failed: {status}, {stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stdout}");
    let report = parse_json(lines[0]);
    let keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "answered",
        "chargers",
        "duration_s",
        "errors",
        "latency_us",
        "mode",
        "msgs_per_s",
        "sent",
        "version",
    ];
    expected.sort_unstable();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, expected, "{report}");
    for key in ["sent", "answered", "errors", "chargers"] {
        assert!(report[key].is_u64(), "{key}: {report}");
    }
    let latency = &report["latency_us"];
    let p = |name: &str| {
        latency[name]
            .as_u64()
            .unwrap_or_else(|| panic!("latency_us.{name}: {report}"))
    };
    assert!(
        p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("max"),
        "{report}"
    );
    assert!(latency["mean"].as_f64().unwrap() > 0.0, "{report}");
    assert!(p("max") > 0, "{report}");
    let answered = report["answered"].as_u64().unwrap() as f64;
    let duration = report["duration_s"].as_f64().unwrap();
    let rate = report["msgs_per_s"].as_f64().unwrap();
    assert!((rate - answered / duration).abs() < 1.0, "{report}");
    report
}

fn u64_of(report: &Value, key: &str) -> u64 {
    report[key].as_u64().unwrap()
}

/// Closed loop: every CALL sent in the window is answered, except at most the one each charger
/// had in flight at the stop.
fn check_closed(report: &Value, chargers: u64) {
    assert_eq!(report["mode"], "closed", "{report}");
    assert_eq!(report["version"], "1.6", "{report}");
    assert_eq!(u64_of(report, "chargers"), chargers, "{report}");
    assert_eq!(report["duration_s"], 1.0, "{report}");
    assert_eq!(u64_of(report, "errors"), 0, "{report}");
    let (sent, answered) = (u64_of(report, "sent"), u64_of(report, "answered"));
    // Even a debug build on a busy machine does far more than this.
    assert!(answered >= 100, "{report}");
    assert!(answered <= sent && sent - answered <= chargers, "{report}");
}

#[test]
fn load_runs_against_the_backend_directly_and_through_the_forwarder() {
    let mut backend = Proc::sim(&["backend", "--listen", "127.0.0.1:0"]);
    let backend_url = backend.first_listening("backend");
    assert!(backend_url.starts_with("ws://127.0.0.1:"), "{backend_url}");
    let forward = Proc::sim(&[
        "forward",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &backend_url,
    ]);
    let forward_url = forward.first_listening("forward");

    let closed = [
        "--chargers",
        "5",
        "--mode",
        "closed",
        "--duration",
        "1",
        "--warmup",
        "0.2",
    ];
    let direct = start_load(&backend_url, &closed);
    let relayed = start_load(
        &forward_url,
        &[&closed[..], &["--id-prefix", "FWD-"]].concat(),
    );
    let direct = finish_load(direct);
    let relayed = finish_load(relayed);
    check_closed(&direct, 5);
    check_closed(&relayed, 5);

    backend.sigterm();
    let summary = parse_json(&backend.line());
    assert!(backend.wait().success());
    let mut keys: Vec<&str> = summary
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["calls", "connections", "signed"], "{summary}");
    assert_eq!(summary["connections"], 10, "{summary}");
    assert_eq!(summary["signed"], 0, "{summary}");
    // Ten boots, plus every answered Heartbeat (and the warmup's, and those in flight).
    let answered = u64_of(&direct, "answered") + u64_of(&relayed, "answered");
    assert!(u64_of(&summary, "calls") >= answered + 10, "{summary}");
}

#[test]
fn open_loop_keeps_its_rate() {
    let mut backend = Proc::sim(&["backend", "--listen", "127.0.0.1:0"]);
    let url = backend.first_listening("backend");
    let load = start_load(
        &url,
        &[
            "--chargers",
            "4",
            "--version",
            "2.0.1",
            "--mode",
            "open",
            "--rate",
            "200",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
    );
    let report = finish_load(load);
    assert_eq!(report["mode"], "open", "{report}");
    assert_eq!(report["version"], "2.0.1", "{report}");
    assert_eq!(u64_of(&report, "errors"), 0, "{report}");
    // 200 sends are scheduled in the window; the edges may move one in or out.
    let (sent, answered) = (u64_of(&report, "sent"), u64_of(&report, "answered"));
    assert!((198..=202).contains(&sent), "{report}");
    assert!(answered <= sent && sent - answered <= 4, "{report}");
    backend.sigterm();
    let summary = parse_json(&backend.line());
    assert!(backend.wait().success());
    assert!(u64_of(&summary, "calls") >= answered + 4, "{summary}");
}

#[test]
fn idle_chargers_report_ready_and_leave_on_sigterm() {
    let mut backend = Proc::sim(&["backend", "--listen", "127.0.0.1:0"]);
    let url = backend.first_listening("backend");
    let mut load = Proc::sim(&["load", "--url", &url, "--chargers", "3", "--mode", "idle"]);
    assert_eq!(load.line(), "ready 3");
    load.sigterm();
    assert!(load.wait().success());
    backend.sigterm();
    let summary = parse_json(&backend.line());
    assert!(backend.wait().success());
    assert_eq!(summary["connections"], 3, "{summary}");
    assert_eq!(summary["calls"], 3, "{summary}");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends one text frame and returns the parsed answer.
async fn exchange(ws: &mut Ws, text: &str) -> Value {
    ws.send(Message::text(text.to_owned())).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no answer in time")
        .expect("connection closed")
        .unwrap();
    parse_json(answer.to_text().unwrap())
}

#[tokio::test]
async fn backend_takes_any_path_and_answers_any_action() {
    let mut backend = Proc::sim(&["backend", "--listen", "127.0.0.1:0"]);
    let url = backend.first_listening("backend");
    let base = url.strip_suffix("/ocpp").unwrap();
    let mut request = format!("{base}/some/deep/path/CP-7")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("ocpp2.1"),
    );
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "ocpp2.1");
    let boot = exchange(&mut ws, r#"[2,"1","BootNotification",{}]"#).await;
    assert_eq!(boot[0], 3);
    assert_eq!(boot[2]["status"], "Accepted");
    assert!(boot[2]["interval"].is_u64(), "{boot}");
    assert!(boot[2]["currentTime"].is_string(), "{boot}");
    let heartbeat = exchange(&mut ws, r#"[2,"2","Heartbeat",{}]"#).await;
    assert!(heartbeat[2]["currentTime"].is_string(), "{heartbeat}");
    let unknown = exchange(&mut ws, r#"[2,"3","NoSuchAction",{"a":1}]"#).await;
    assert_eq!(unknown, serde_json::json!([3, "3", {}]));
    // A `signatures` member should never reach a plain CSMS: the backend counts such CALLs.
    let signed = exchange(&mut ws, r#"[2,"4","Heartbeat",{"signatures":[]}]"#).await;
    assert!(signed[2]["currentTime"].is_string(), "{signed}");

    backend.sigterm();
    let summary = parse_json(&backend.line());
    assert!(backend.wait().success());
    assert_eq!(
        summary,
        serde_json::json!({"connections": 1, "calls": 4, "signed": 1})
    );
}
