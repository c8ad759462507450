//! Runs the real `ocpp-node` binary for end-to-end tests: every node listens on 127.0.0.1:0
//! and announces its ports with `listening <name> <url>` lines, so tests run in parallel.
#![allow(dead_code)] // each test binary uses a different part of this harness

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub mod audit;
pub mod topology;
pub const BIN: &str = env!("CARGO_BIN_EXE_ocpp-node");

pub struct NodeProc {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub charger_url: String,
    pub admin_url: String,
    config: PathBuf,
}

/// A config for tests: loopback, ephemeral ports, data in the test's temp dir. `extra` is
/// appended (more sections) and `listener_extra` goes into the `[[listener]]` table.
pub fn config(dir: &Path, listener_extra: &str, extra: &str) -> String {
    format!(
        r#"
[node]
id = "lc-test"
data_dir = "{data}"

[[listener]]
name = "chargers"
bind = "127.0.0.1:0"
{listener_extra}

[admin]
bind = "127.0.0.1:0"

[auth]
unknown_id_tag = "Invalid"
[auth.local_list]
"TAG-OK" = "Accepted"
{extra}
"#,
        data = dir.join("data").display()
    )
}

impl NodeProc {
    pub fn start(listener_extra: &str, extra: &str) -> NodeProc {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("node.toml");
        std::fs::write(&config, config_text(dir.path(), listener_extra, extra))
            .expect("write config");
        let (child, charger_url, admin_url) = spawn(&config, dir.path());
        NodeProc {
            dir,
            child,
            charger_url,
            admin_url,
            config,
        }
    }

    /// SIGKILL, then start again on the same config and data directory.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
        let (child, charger_url, admin_url) = spawn(&self.config, self.dir.path());
        self.child = child;
        self.charger_url = charger_url;
        self.admin_url = admin_url;
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        http_get_json(&self.admin_url, path)
    }

    /// Peak resident memory of the node process, in KiB (Linux VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.child.id())
    }

    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

/// Peak resident memory of process `pid`, in KiB (Linux VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

fn config_text(dir: &Path, listener_extra: &str, extra: &str) -> String {
    config(dir, listener_extra, extra)
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        // A failing test shows why the node behaved as it did; its temp dir is gone after this.
        if std::thread::panicking() {
            let log = self.stderr_log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let exited = self.child.try_wait().ok().flatten();
            eprintln!(
                "--- node stderr (last 40 lines; exited: {exited:?}) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(config: &Path, dir: &Path) -> (Child, String, String) {
    let (child, urls) = spawn_node(config, dir);
    let url = |name: &str| urls.get(name).cloned().unwrap_or_default();
    (child, url("chargers"), url("admin"))
}

/// Starts `ocpp-node run --config <config>` with stderr appended to `<dir>/stderr.log`, and
/// returns it with the URL of every `listening <name> <url>` line. The admin API is announced
/// last, so its line means every listener is up.
pub fn spawn_node(
    config: &Path,
    dir: &Path,
) -> (Child, std::collections::BTreeMap<String, String>) {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .expect("stderr log");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn ocpp-node");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Drain to the end even after the caller stopped listening, so that the node never
        // writes into a closed pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut urls = std::collections::BTreeMap::new();
    while !urls.contains_key("admin") {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
            panic!(
                "node did not announce its listeners (got {urls:?}); stderr:\n{}",
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            );
        };
        let mut words = line.split_whitespace();
        if let (Some("listening"), Some(name), Some(url)) =
            (words.next(), words.next(), words.next())
        {
            urls.insert(name.to_owned(), url.to_owned());
        }
    }
    if let Some(admin) = urls.get("admin") {
        remember_admin_token(config, admin);
    }
    (child, urls)
}

/// Admin URL → the node's admin token, so that every request of a test carries it.
static ADMIN_TOKENS: std::sync::Mutex<BTreeMap<String, String>> =
    std::sync::Mutex::new(BTreeMap::new());

/// The token a node generated into `<data_dir>/admin.token` (the test configs set none in a
/// secrets file); it exists once the node has announced its admin API.
fn remember_admin_token(config: &Path, admin: &str) {
    let text = std::fs::read_to_string(config).expect("read config");
    let table: toml::Table = toml::from_str(&text).expect("config toml");
    let data_dir = table
        .get("node")
        .and_then(|n| n.get("data_dir"))
        .and_then(|d| d.as_str())
        .unwrap_or("ocpp-node-data");
    if let Ok(token) = std::fs::read_to_string(Path::new(data_dir).join("admin.token")) {
        admin_tokens().insert(admin.to_owned(), token.trim().to_owned());
    }
}

fn admin_tokens() -> std::sync::MutexGuard<'static, BTreeMap<String, String>> {
    ADMIN_TOKENS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The admin token of the node at `base`, as [`spawn_node`] found it.
pub fn admin_token(base: &str) -> Option<String> {
    admin_tokens().get(base).cloned()
}

pub fn http_get_json(base: &str, path: &str) -> serde_json::Value {
    serde_json::from_str(&http_get_text(base, path)).expect("json body")
}

pub fn http_get_text(base: &str, path: &str) -> String {
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connect admin");
    let auth = admin_token(base)
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// POSTs `body` as JSON to the admin API with the node's token; the HTTP status and the JSON
/// answer, whatever the status, since refusals are what some tests look at.
pub fn http_post_json(
    base: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connect admin");
    let auth = admin_token(base)
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{head}\n{body}: {e}"));
    (status, json)
}

/// Opens a charger connection; `Err` carries the HTTP status of a refused upgrade, or 0 when the
/// node closed the connection without any HTTP answer.
pub async fn connect(
    url: &str,
    id: &str,
    protocols: Option<&str>,
    basic: Option<(&str, &str)>,
) -> Result<Ws, u16> {
    connect_with(url, id, protocols, basic, &[]).await
}

pub async fn connect_with(
    url: &str,
    id: &str,
    protocols: Option<&str>,
    basic: Option<(&str, &str)>,
    headers: &[(&'static str, &str)],
) -> Result<Ws, u16> {
    match tokio_tungstenite::connect_async(upgrade_request(url, id, protocols, basic, headers))
        .await
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        // No HTTP answer at all (reset, closed): status 0.
        Err(_) => Err(0),
    }
}

/// The upgrade request of a charger (or node) `id` at `<url>/<id>`: the subprotocol(s) offered,
/// Basic credentials `(user, password)` and any further headers.
pub fn upgrade_request(
    url: &str,
    id: &str,
    protocols: Option<&str>,
    basic: Option<(&str, &str)>,
    headers: &[(&'static str, &str)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("{url}/{id}")
        .into_client_request()
        .expect("request");
    if let Some(p) = protocols {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(p).expect("header"),
        );
    }
    if let Some((user, pw)) = basic {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        );
        req.headers_mut()
            .insert("Authorization", HeaderValue::from_str(&v).expect("header"));
    }
    for (k, v) in headers {
        req.headers_mut()
            .insert(*k, HeaderValue::from_str(v).expect("header"));
    }
    req
}

/// Sends one text frame and returns the next text frame received, parsed.
pub async fn call(ws: &mut Ws, frame: &str) -> serde_json::Value {
    ws.send(Message::text(frame.to_owned()))
        .await
        .expect("send");
    recv(ws).await
}

pub async fn recv(ws: &mut Ws) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("reply within 20 s")
            .expect("connection open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("reply is JSON");
        }
    }
}

/// A salted hash of `password`, made by the binary's own `hash-password` command.
pub fn hash_password(password: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn hash-password");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write password");
    let out = child.wait_with_output().expect("hash-password output");
    assert!(out.status.success(), "hash-password failed");
    String::from_utf8(out.stdout)
        .expect("UTF-8 hash")
        .trim()
        .to_owned()
}

/// Runs `ocpp-node check-config FILE`: whether it found the file valid, and the mistakes it
/// reported (on stderr).
pub fn check_config(file: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(file)
        .output()
        .expect("run check-config");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
