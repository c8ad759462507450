//! Multi-process overlay topologies: charger → edge → hub → CSMS with real `ocpp-node` processes.
//!
//! * [`Node`]: one `ocpp-node` started from a full config text, in its own temp dir (config, data,
//!   `stderr.log`); every `listening <name> <url>` line it prints is kept by name.
//! * [`NodeConfig`]: writes hub / edge configs with every overlay timer explicit.
//! * [`Csms`]: a plain OCPP-J CSMS in the test process (own runtime and thread, so a test that
//!   blocks never stalls it) that answers every CALL with a valid CALLRESULT and records what it got.
//! * [`Relay`]: a TCP forwarder that holds its port from the start, for links whose target starts
//!   later (two edges dialling each other) or whose connections must be counted.
//! * [`Ca`]: an rcgen test PKI for node links; [`write_secrets`]: the secrets file with a mode.
//! * [`Charger`] and [`overlay_connect`]: plain and overlay WebSocket clients.

use std::collections::BTreeMap;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::{Ws, http_get_json, http_get_text};

/// The header that asks for overlay mode at the upgrade (ARCHITECTURE §3.1).
pub const OVERLAY_HEADER: &str = "X-OCPP-NetworkingMode";
pub const OVERLAY_MODE: &str = "OverlayNetwork";

// ---------------------------------------------------------------------------------------------
// Nodes

/// One running `ocpp-node`. Killed when dropped.
pub struct Node {
    pub id: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    config: PathBuf,
    /// Listener name → URL, from the `listening <name> <url>` lines (the admin API is "admin").
    pub urls: BTreeMap<String, String>,
}

impl Node {
    /// Writes `config` to `<dir>/node.toml` and runs the node on it; returns once every listener
    /// and the admin API are announced. `id` is only a label for diagnostics.
    pub fn start(id: &str, dir: tempfile::TempDir, config: &str) -> Node {
        let path = dir.path().join("node.toml");
        std::fs::write(&path, config).expect("write node config");
        let mut node = Node {
            id: id.to_owned(),
            dir,
            child: None,
            config: path,
            urls: BTreeMap::new(),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let (child, urls) = super::spawn_node(&self.config, self.dir.path());
        self.child = Some(child);
        self.urls = urls;
    }

    /// The URL of listener `name`, e.g. `ws://127.0.0.1:40123/ocpp`.
    pub fn url(&self, name: &str) -> &str {
        self.urls
            .get(name)
            .unwrap_or_else(|| panic!("node {} has no listener {name}: {:?}", self.id, self.urls))
    }

    /// `127.0.0.1:PORT` of listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        host_port(self.url(name))
            .parse()
            .unwrap_or_else(|e| panic!("listener address of {}: {e}", self.url(name)))
    }

    pub fn admin_url(&self) -> &str {
        self.url("admin")
    }

    /// SIGKILL, and reap the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill");
            child.wait().expect("wait");
        }
    }

    /// Starts the node again on the same config and data directory (after [`Node::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    pub fn status(&self) -> Value {
        http_get_json(self.admin_url(), "/api/status")
    }

    pub fn metrics(&self) -> String {
        http_get_text(self.admin_url(), "/metrics")
    }

    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The last `lines` lines of stderr, for failure messages.
    pub fn stderr_tail(&self, lines: usize) -> String {
        let log = self.stderr_log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The state of uplink `name` in `/api/status` (`up`, `connecting`, `backoff`, `standby`).
    pub fn uplink_state(&self, name: &str) -> Option<String> {
        uplink_state(&self.status(), name)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `uplinks[name == name].state` of a status document.
pub fn uplink_state(status: &Value, name: &str) -> Option<String> {
    status["uplinks"]
        .as_array()?
        .iter()
        .find(|u| u["name"] == name)?["state"]
        .as_str()
        .map(str::to_owned)
}

/// `overlayLinks` of a status document (empty when absent).
pub fn overlay_links(status: &Value) -> Vec<Value> {
    status["overlayLinks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Stderr tails of several nodes, for failure messages.
pub fn diagnostics(nodes: &[&Node]) -> String {
    let mut out = String::new();
    for n in nodes {
        out += &format!(
            "\n----- {} stderr (tail) -----\n{}",
            n.id,
            n.stderr_tail(60)
        );
    }
    out
}

/// Whether a log has a line with `security_event=<kind>` (ARCHITECTURE contract for security
/// refusals). The value may be written bare or quoted by the logger.
pub fn has_security_event(log: &str, kind: &str) -> bool {
    log.contains(&format!("security_event={kind}"))
        || log.contains(&format!("security_event=\"{kind}\""))
}

/// The sum of every sample of `metric` (with or without labels) in Prometheus text, or `None`
/// when the metric is not there at all.
pub fn metric_sum(text: &str, metric: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value: f64 = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unparsable metric line {line:?}"));
        *found.get_or_insert(0.0) += value;
    }
    found
}

/// Polls `probe` every 50 ms until it returns `Some`, for at most `timeout`. Yields to the
/// runtime between probes.
pub async fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until uplink `name` of `node` is `up`; panics with the node's stderr otherwise.
pub async fn wait_uplink_up(node: &Node, name: &str, timeout: Duration, others: &[&Node]) {
    let up = wait_for(timeout, || {
        (node.uplink_state(name).as_deref() == Some("up")).then_some(())
    })
    .await;
    if up.is_none() {
        let mut all = vec![node];
        all.extend_from_slice(others);
        panic!(
            "uplink {name} of {} not up within {timeout:?}; status: {}{}",
            node.id,
            node.status(),
            diagnostics(&all)
        );
    }
}

/// A free loopback port, found by binding port 0 and releasing it. Only for a node that must
/// come back on the same port after a restart.
pub fn reserve_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

// ---------------------------------------------------------------------------------------------
// Configs

/// The overlay timers of a test config; every one is written out explicitly.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub request_timeout_s: u64,
    pub announce_ttl_s: u64,
    pub ping_interval_s: u64,
    pub connect_timeout_s: u64,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    pub csms_grace_s: u64,
}

impl Timers {
    /// The timers most tests run with; a `const`, so a test can derive its waits from them.
    pub const DEFAULT: Timers = Timers {
        request_timeout_s: 10,
        announce_ttl_s: 300,
        ping_interval_s: 5,
        connect_timeout_s: 2,
        reconnect_initial_ms: 200,
        reconnect_max_ms: 1000,
        csms_grace_s: 10,
    };
}

impl Default for Timers {
    fn default() -> Self {
        Timers::DEFAULT
    }
}

impl Timers {
    fn toml(&self) -> String {
        format!(
            "[overlay]\nrequest_timeout_s = {}\nannounce_ttl_s = {}\nping_interval_s = {}\n\
             connect_timeout_s = {}\nreconnect_initial_ms = {}\nreconnect_max_ms = {}\n\
             csms_grace_s = {}\n",
            self.request_timeout_s,
            self.announce_ttl_s,
            self.ping_interval_s,
            self.connect_timeout_s,
            self.reconnect_initial_ms,
            self.reconnect_max_ms,
            self.csms_grace_s
        )
    }
}

/// One `[[uplink]]`.
#[derive(Debug, Clone)]
pub struct Uplink {
    pub name: String,
    pub url: String,
    pub priority: u32,
    /// More keys of the table (`tls_ca_file = ...`).
    pub extra: String,
}

impl Uplink {
    pub fn new(name: &str, url: &str, priority: u32) -> Uplink {
        Uplink {
            name: name.to_owned(),
            url: url.to_owned(),
            priority,
            extra: String::new(),
        }
    }

    pub fn with(mut self, extra: &str) -> Uplink {
        self.extra += extra;
        self.extra += "\n";
        self
    }
}

/// A node config. `NodeConfig::hub` / `NodeConfig::edge` fill in the usual shape; the builder
/// methods add to it; [`NodeConfig::text`] renders the TOML.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: String,
    pub role: String,
    data_dir: PathBuf,
    secrets_file: Option<PathBuf>,
    pub timers: Timers,
    /// (name, bind, more keys)
    listeners: Vec<(String, String, String)>,
    uplinks: Vec<Uplink>,
    hub: Option<String>,
    extra: String,
}

impl NodeConfig {
    fn base(dir: &Path, id: &str, role: &str) -> NodeConfig {
        NodeConfig {
            id: id.to_owned(),
            role: role.to_owned(),
            data_dir: dir.join("data"),
            secrets_file: None,
            timers: Timers::default(),
            listeners: Vec::new(),
            uplinks: Vec::new(),
            hub: None,
            extra: String::new(),
        }
    }

    /// A hub owning the CSMS side at `csms_url`, with one listener `nodes` on `bind`
    /// (`127.0.0.1:0` unless the test must restart it on the same port).
    pub fn hub(dir: &Path, id: &str, csms_url: &str, bind: &str) -> NodeConfig {
        let mut c = NodeConfig::base(dir, id, "hub");
        c.hub = Some(format!("csms_url = \"{csms_url}\"\n"));
        c.listeners
            .push(("nodes".into(), bind.into(), String::new()));
        c
    }

    /// An edge with one charger listener `chargers` on `127.0.0.1:0`, profile 0.
    pub fn edge(dir: &Path, id: &str) -> NodeConfig {
        let mut c = NodeConfig::base(dir, id, "edge");
        c.listeners
            .push(("chargers".into(), "127.0.0.1:0".into(), String::new()));
        c
    }

    pub fn timers(mut self, timers: Timers) -> NodeConfig {
        self.timers = timers;
        self
    }

    /// More keys for the first listener (security profile, TLS files).
    pub fn listener_keys(mut self, keys: &str) -> NodeConfig {
        let l = self.listeners.first_mut().expect("a listener");
        l.2 += keys;
        l.2 += "\n";
        self
    }

    pub fn uplink(mut self, uplink: Uplink) -> NodeConfig {
        self.uplinks.push(uplink);
        self
    }

    /// More keys for `[hub]` (TLS toward the CSMS).
    pub fn hub_keys(mut self, keys: &str) -> NodeConfig {
        let hub = self.hub.as_mut().expect("a hub config");
        *hub += keys;
        *hub += "\n";
        self
    }

    /// `[node_peers."<id>"]` with `allow` and, for profiles 1 and 2, a password hash.
    pub fn node_peer(
        mut self,
        id: &str,
        allow: &[&str],
        password_hash: Option<&str>,
    ) -> NodeConfig {
        let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
        self.extra += &format!("\n[node_peers.\"{id}\"]\nallow = [{}]\n", allow.join(", "));
        if let Some(h) = password_hash {
            self.extra += &format!("password_hash = \"{h}\"\n");
        }
        self
    }

    pub fn secrets_file(mut self, path: &Path) -> NodeConfig {
        self.secrets_file = Some(path.to_owned());
        self
    }

    /// Whole tables appended at the end.
    pub fn extra(mut self, text: &str) -> NodeConfig {
        self.extra += "\n";
        self.extra += text;
        self.extra += "\n";
        self
    }

    pub fn text(&self) -> String {
        let mut t = format!(
            "[node]\nid = \"{}\"\nrole = \"{}\"\ndata_dir = \"{}\"\n",
            self.id,
            self.role,
            self.data_dir.display()
        );
        if let Some(s) = &self.secrets_file {
            t += &format!("secrets_file = \"{}\"\n", s.display());
        }
        t += "\n";
        t += &self.timers.toml();
        for (name, bind, keys) in &self.listeners {
            t += &format!("\n[[listener]]\nname = \"{name}\"\nbind = \"{bind}\"\n{keys}");
        }
        t += "\n[admin]\nbind = \"127.0.0.1:0\"\n";
        for u in &self.uplinks {
            t += &format!(
                "\n[[uplink]]\nname = \"{}\"\nurl = \"{}\"\npriority = {}\n{}",
                u.name, u.url, u.priority, u.extra
            );
        }
        if let Some(hub) = &self.hub {
            t += &format!("\n[hub]\n{hub}");
        }
        t += &self.extra;
        t
    }

    /// Starts a node on this config in `dir` (the dir the config was made for).
    pub fn start(&self, dir: tempfile::TempDir) -> Node {
        Node::start(&self.id, dir, &self.text())
    }
}

/// Writes a secrets file with `mode` (e.g. 0o600) and returns its path.
pub fn write_secrets(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write secrets");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod secrets");
    path
}

// ---------------------------------------------------------------------------------------------
// PKI

/// A test certificate authority (rcgen).
pub struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA"))
    }

    pub fn pem(&self) -> String {
        self.0.pem()
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.pem()).expect("write CA");
        path.to_owned()
    }

    /// A leaf certificate and key (PEM) with subject alternative names `sans` (DNS names or IP
    /// addresses) and common name `cn`.
    pub fn leaf(&self, sans: &[&str], cn: &str) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.0).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes `<stem>.pem` and `<stem>.key` in `dir` (the key with mode 0600); returns their paths.
    pub fn write_leaf(
        &self,
        dir: &Path,
        stem: &str,
        sans: &[&str],
        cn: &str,
    ) -> (PathBuf, PathBuf) {
        let (cert, key) = self.leaf(sans, cn);
        let cert_path = dir.join(format!("{stem}.pem"));
        std::fs::write(&cert_path, cert).expect("write cert");
        let key_path = write_secrets(dir, &format!("{stem}.key"), &key, 0o600);
        (cert_path, key_path)
    }
}

// ---------------------------------------------------------------------------------------------
// The in-test CSMS

/// One WebSocket the CSMS accepted (one per charger connection the hub opened).
#[derive(Debug, Clone)]
pub struct CsmsConnection {
    pub charger: String,
    pub protocol: Option<String>,
    pub authorization: Option<String>,
    pub open: bool,
}

/// One CALL the CSMS received.
#[derive(Debug, Clone)]
pub struct CsmsCall {
    pub charger: String,
    pub id: String,
    pub action: String,
    pub payload: Value,
}

#[derive(Debug, Default)]
pub struct CsmsLog {
    pub connections: Vec<CsmsConnection>,
    pub calls: Vec<CsmsCall>,
    /// Frames that were not CALLs, or not OCPP-J at all.
    pub other_frames: Vec<String>,
}

/// A plain OCPP-J CSMS: accepts any charger id on `<url>/<id>`, echoes the first OCPP
/// subprotocol offered, answers every CALL at once with a valid CALLRESULT — except for chargers
/// whose id starts with "MUTE", whose CALLs it records and never answers, and those whose id
/// starts with "REFUSE", whose CALLs other than boot, heartbeat and status get a CALLERROR.
pub struct Csms {
    /// `ws://127.0.0.1:PORT/csms`: the hub's `csms_url`.
    pub url: String,
    log: Arc<Mutex<CsmsLog>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Csms {
    pub fn start() -> Csms {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind CSMS");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("CSMS runtime");
        let log = Arc::new(Mutex::new(CsmsLog::default()));
        let log2 = log.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("from_std");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(csms_connection(stream, log2.clone()));
            }
        });
        Csms {
            url: format!("ws://{addr}/csms"),
            log,
            rt: Some(rt),
        }
    }

    pub fn with_log<T>(&self, f: impl FnOnce(&CsmsLog) -> T) -> T {
        f(&self.log.lock().expect("CSMS log"))
    }

    /// CALLs with `action` received for `charger` (`None`: for any charger).
    pub fn calls(&self, charger: Option<&str>, action: &str) -> usize {
        self.with_log(|l| {
            l.calls
                .iter()
                .filter(|c| c.action == action && charger.is_none_or(|ch| c.charger == ch))
                .count()
        })
    }

    /// Every CALL received for `charger`.
    pub fn calls_of(&self, charger: &str) -> Vec<CsmsCall> {
        self.with_log(|l| {
            l.calls
                .iter()
                .filter(|c| c.charger == charger)
                .cloned()
                .collect()
        })
    }

    /// Connections ever accepted for `charger`.
    pub fn connections(&self, charger: &str) -> Vec<CsmsConnection> {
        self.with_log(|l| {
            l.connections
                .iter()
                .filter(|c| c.charger == charger)
                .cloned()
                .collect()
        })
    }

    pub fn open_connections(&self, charger: &str) -> usize {
        self.connections(charger).iter().filter(|c| c.open).count()
    }

    /// Waits until `charger` has had at least `total` connections, one of them open.
    pub async fn wait_connected(&self, charger: &str, total: usize, timeout: Duration) -> bool {
        wait_for(timeout, || {
            let c = self.connections(charger);
            (c.len() >= total && c.iter().any(|c| c.open)).then_some(())
        })
        .await
        .is_some()
    }
}

impl Drop for Csms {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// The handshake callback's error type is tungstenite's, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn csms_connection(stream: tokio::net::TcpStream, log: Arc<Mutex<CsmsLog>>) {
    let seen: Arc<Mutex<Option<CsmsConnection>>> = Arc::default();
    let seen2 = seen.clone();
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let charger = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let offered = req
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let protocol = offered
            .split(',')
            .map(str::trim)
            .find(|p| ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"].contains(p))
            .map(str::to_owned);
        if let Some(p) = &protocol {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(p).expect("header"),
            );
        }
        let authorization = req
            .headers()
            .get("Authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        *seen2.lock().expect("seen") = Some(CsmsConnection {
            charger,
            protocol,
            authorization,
            open: true,
        });
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    let Some(conn) = seen.lock().expect("seen").take() else {
        return;
    };
    let charger = conn.charger.clone();
    let index = {
        let mut l = log.lock().expect("CSMS log");
        l.connections.push(conn);
        l.connections.len() - 1
    };
    while let Some(Ok(msg)) = ws.next().await {
        let text = match msg {
            Message::Text(t) => t.as_str().to_owned(),
            Message::Close(_) => break,
            _ => continue,
        };
        let frame: Option<Vec<Value>> = serde_json::from_str(&text).ok();
        let reply = match frame.as_deref() {
            Some([t, id, action, payload]) if t == 2 => {
                let (Some(id), Some(action)) = (id.as_str(), action.as_str()) else {
                    log.lock().expect("CSMS log").other_frames.push(text);
                    continue;
                };
                log.lock().expect("CSMS log").calls.push(CsmsCall {
                    charger: charger.clone(),
                    id: id.to_owned(),
                    action: action.to_owned(),
                    payload: payload.clone(),
                });
                // A CSMS that never answers, for the chargers named so.
                if charger.starts_with("MUTE") {
                    continue;
                }
                // A CSMS that refuses these chargers' transaction messages.
                if charger.starts_with("REFUSE")
                    && !["BootNotification", "Heartbeat", "StatusNotification"].contains(&action)
                {
                    json!([4, id, "InternalError", "refused by the test CSMS", {}])
                } else {
                    json!([3, id, csms_answer(action)])
                }
            }
            _ => {
                log.lock().expect("CSMS log").other_frames.push(text);
                continue;
            }
        };
        if ws.send(Message::text(reply.to_string())).await.is_err() {
            break;
        }
    }
    log.lock().expect("CSMS log").connections[index].open = false;
}

static NEXT_TRANSACTION: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1000);

/// The smallest valid OCPP 1.6 response payload for `action`.
fn csms_answer(action: &str) -> Value {
    const NOW: &str = "2026-01-01T00:00:00Z";
    match action {
        "BootNotification" => json!({"status": "Accepted", "currentTime": NOW, "interval": 300}),
        "Heartbeat" => json!({"currentTime": NOW}),
        // Distinct ids from 1000 up, so that a test can tell the CSMS's ids from an edge's.
        "StartTransaction" => json!({
            "idTagInfo": {"status": "Accepted"},
            "transactionId": NEXT_TRANSACTION.fetch_add(1, Ordering::SeqCst),
        }),
        "Authorize" | "StopTransaction" => json!({"idTagInfo": {"status": "Accepted"}}),
        _ => json!({}),
    }
}

// ---------------------------------------------------------------------------------------------
// TCP relay

/// A TCP forwarder on `127.0.0.1:<port>` that holds its port from the start. Connections that
/// arrive before a target is set are closed at once; it counts what it accepted and what is open.
pub struct Relay {
    pub addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    /// Ends every forwarded connection (see [`Relay::cut`]).
    cut: Arc<tokio::sync::Notify>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Relay {
    pub fn start(target: Option<SocketAddr>) -> Relay {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("relay runtime");
        let target = Arc::new(Mutex::new(target));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let cut = Arc::new(tokio::sync::Notify::new());
        let (t, a, o, c) = (target.clone(), accepted.clone(), open.clone(), cut.clone());
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("from_std");
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let Some(to) = *t.lock().expect("target") else {
                    drop(inbound);
                    continue;
                };
                let (o, c) = (o.clone(), c.clone());
                tokio::spawn(async move {
                    let cut = c.notified();
                    tokio::pin!(cut);
                    cut.as_mut().enable();
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    o.fetch_add(1, Ordering::SeqCst);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut => {}
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Relay {
            addr,
            target,
            accepted,
            open,
            cut,
            rt: Some(rt),
        }
    }

    pub fn set_target(&self, to: SocketAddr) {
        *self.target.lock().expect("target") = Some(to);
    }

    /// Cuts the line: forwarded connections close and new ones are refused until
    /// [`Relay::set_target`] restores it.
    pub fn cut(&self) {
        *self.target.lock().expect("target") = None;
        self.cut.notify_waiters();
    }

    /// Connections accepted so far (forwarded or not).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Forwarded connections open right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// `ws://<relay addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A plain OCPP 1.6 charger: one WebSocket to an edge, one CALL at a time.
pub struct Charger {
    pub id: String,
    pub ws: Ws,
    next: u64,
}

impl Charger {
    /// Connects as `id` with subprotocol ocpp1.6; panics with the HTTP status on refusal.
    pub async fn connect(url: &str, id: &str) -> Charger {
        let ws = super::connect(url, id, Some("ocpp1.6"), None)
            .await
            .unwrap_or_else(|status| panic!("charger {id} refused at {url}: HTTP {status}"));
        Charger {
            id: id.to_owned(),
            ws,
            next: 0,
        }
    }

    /// A fresh message id of this charger.
    pub fn next_id(&mut self) -> String {
        self.next += 1;
        format!("{}-{}", self.id, self.next)
    }

    /// Sends `[2,id,action,payload]` and returns (id, the answer with that id), or `None` when no
    /// answer came within `timeout`. Panics if the socket closes.
    pub async fn call(
        &mut self,
        action: &str,
        payload: Value,
        timeout: Duration,
    ) -> (String, Option<Value>) {
        let id = self.next_id();
        let frame = json!([2, id, action, payload]).to_string();
        self.ws
            .send(Message::text(frame))
            .await
            .unwrap_or_else(|e| panic!("charger {}: send failed: {e}", self.id));
        let reply = self.answer(&id, timeout).await;
        (id, reply)
    }

    /// The next CALLRESULT / CALLERROR with `id`, skipping anything else (CSMS CALLs).
    pub async fn answer(&mut self, id: &str, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            let msg = match msg {
                Some(Ok(m)) => m,
                Some(Err(e)) => panic!("charger {}: connection error: {e}", self.id),
                None => panic!("charger {}: the edge closed the connection", self.id),
            };
            let t = match msg {
                Message::Text(t) => t,
                Message::Close(c) => {
                    panic!("charger {}: the edge closed the connection: {c:?}", self.id)
                }
                _ => continue,
            };
            let v: Value = serde_json::from_str(t.as_str()).expect("frame is JSON");
            if (v[0] == 3 || v[0] == 4) && v[1] == id {
                return Some(v);
            }
        }
    }

    pub async fn boot(&mut self, timeout: Duration) -> (String, Option<Value>) {
        self.call(
            "BootNotification",
            json!({"chargePointVendor": "TestVendor", "chargePointModel": "TestModel"}),
            timeout,
        )
        .await
    }

    pub async fn heartbeat(&mut self, timeout: Duration) -> (String, Option<Value>) {
        self.call("Heartbeat", json!({}), timeout).await
    }
}

/// The ids of a `dest` or `path` value: a string is one id, an array lists them.
pub fn ids(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| x.to_string())
            })
            .collect(),
        other => vec![other.to_string()],
    }
}

/// Opens an overlay connection as node `id` to `<url>/<id>` with the overlay header and
/// subprotocol `protocol`, optionally with Basic auth. `Err` is the HTTP status of a refusal
/// (0: no HTTP answer). Panics if the 101 does not echo the overlay header.
pub async fn overlay_connect(
    url: &str,
    id: &str,
    protocol: Option<&str>,
    password: Option<&str>,
) -> Result<Ws, u16> {
    let basic = password.map(|pw| (id, pw));
    let req = super::upgrade_request(url, id, protocol, basic, &[(OVERLAY_HEADER, OVERLAY_MODE)]);
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            let echoed = resp
                .headers()
                .get(OVERLAY_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            assert_eq!(
                echoed.as_deref(),
                Some(OVERLAY_MODE),
                "the 101 must echo {OVERLAY_HEADER}"
            );
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(_) => Err(0),
    }
}

/// The next text frame on an overlay link that is not a SEND (type 6), parsed; `None` when none
/// came within `timeout`. Panics if the link closes.
pub async fn overlay_next(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()?;
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("frame is JSON");
                if v[0] != 6 {
                    return Some(v);
                }
            }
            Some(Ok(Message::Close(c))) => panic!("overlay link closed by the node: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("overlay link error: {e}"),
            None => panic!("overlay link closed by the node"),
        }
    }
}
