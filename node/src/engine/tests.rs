//! The engine without sockets: engines are fed inputs and their actions are carried out by an
//! in-memory network. Overlay links between engines are wired together (what one sends, the
//! other reads), plain links (chargers, the hub's CSMS sockets) collect what is written to
//! them, store jobs run against a real redb file, local handlers run to completion, and time
//! only moves when a test says so.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use routing::{AllowList, LinkId};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};
use wire::{MessageType, OcppVersion, Route};

use super::*;
use crate::config::{AuthConfig, OutboxConfig};
use crate::core::metrics::Metrics;
use crate::edge::journal;
use crate::edge::outbox::Outbox;
use crate::hub::Presence;
use crate::local::authorize::Authorizer;
use crate::validate::schema::SchemaRegistry;
use crate::validate::{Busy, Validate};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(10);

fn settings(own: &str, owns_csms: bool) -> Settings {
    Settings {
        own_id: own.to_owned(),
        hop_limit: 8,
        owns_csms,
        request_timeout: REQUEST_TIMEOUT,
        announce_ttl: Duration::from_secs(300),
        csms_grace: GRACE,
        allow_move: false,
        limits: wire::Limits::default(),
    }
}

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new().expect("metrics"))
}

fn plain_stages(engine: &mut Engine) {
    engine.add_stage(Box::new(Validate::new(Arc::new(SchemaRegistry::new()))));
    engine.add_stage(Box::new(Busy));
}

fn edge(own: &str) -> Engine {
    let mut e = Engine::new(settings(own, false), metrics());
    plain_stages(&mut e);
    e
}

fn edge_with_outbox(own: &str) -> Engine {
    let mut e = edge(own);
    e.add_stage(Box::new(Outbox::new(
        OutboxConfig::default(),
        Authorizer::new(AuthConfig::default()),
        REQUEST_TIMEOUT,
        metrics(),
        journal::Loaded::default(),
    )));
    e
}

fn hub(own: &str) -> Engine {
    let presence = Presence::new(
        Arc::new(AtomicU64::new(1_000_000)),
        GRACE,
        REQUEST_TIMEOUT,
        wire::Limits::default(),
    );
    let mut e = Engine::new(settings(own, true), metrics()).with_hub(presence);
    plain_stages(&mut e);
    e
}

/// A plain link's side of the conversation.
type At = (usize, LinkId);

/// From node, to node, and how the text is changed on the way.
type Tamper = (usize, usize, fn(String) -> String);

struct Net {
    nodes: Vec<Engine>,
    ids: Vec<String>,
    /// Overlay links wired between engines.
    wires: HashMap<At, At>,
    /// Text written to plain links, in order.
    written: HashMap<At, Vec<String>>,
    /// Binary frames written to overlay links nobody is wired to (a test's own peer).
    binary: HashMap<At, Vec<Vec<u8>>>,
    /// Overlay text written to unwired overlay links.
    overlay: HashMap<At, Vec<String>>,
    /// Hub CSMS sockets: charger → link, while open.
    csms: HashMap<(usize, String), LinkId>,
    closed_csms: Vec<(usize, String)>,
    closed: Vec<(At, String)>,
    done: HashMap<(usize, u64), CallOutcome>,
    security: Vec<(usize, &'static str)>,
    /// Open the CSMS socket at once when the engine asks (else it stays "connecting").
    csms_accepts: bool,
    /// Rewrites overlay text on its way from node `.0` to node `.1` (a hostile hop).
    tamper: Option<Tamper>,
    db: redb::Database,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    now: Instant,
    next_token: u64,
}

impl Net {
    fn new(nodes: Vec<(&str, Engine)>) -> Net {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("node.redb")).expect("db");
        Net {
            ids: nodes.iter().map(|(id, _)| (*id).to_owned()).collect(),
            nodes: nodes.into_iter().map(|(_, e)| e).collect(),
            wires: HashMap::new(),
            written: HashMap::new(),
            binary: HashMap::new(),
            overlay: HashMap::new(),
            csms: HashMap::new(),
            closed_csms: Vec::new(),
            closed: Vec::new(),
            done: HashMap::new(),
            security: Vec::new(),
            csms_accepts: true,
            tamper: None,
            db,
            _dir: dir,
            rt: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
            now: Instant::now(),
            next_token: 1,
        }
    }

    fn remote() -> std::net::SocketAddr {
        "127.0.0.1:9".parse().expect("addr")
    }

    /// Node `a` dials node `b` (its uplink); the link is `link` on both sides.
    fn connect(&mut self, a: usize, b: usize, link: u64) {
        let link = LinkId(link);
        self.wires.insert((a, link), (b, link));
        self.wires.insert((b, link), (a, link));
        let (ia, ib) = (self.ids[a].clone(), self.ids[b].clone());
        // The accepting side knows the link before the dialler's first frame reaches it.
        let accepted = Peer::Node {
            peer: ia,
            allow: AllowList::any(),
            uplink: None,
            remote: Net::remote(),
        };
        self.nodes[b].handle(
            Input::Up {
                link,
                peer: accepted,
            },
            self.now,
        );
        let dialled = Peer::Node {
            peer: ib,
            allow: AllowList::any(),
            uplink: Some("up".into()),
            remote: Net::remote(),
        };
        self.input(
            a,
            Input::Up {
                link,
                peer: dialled,
            },
        );
    }

    fn disconnect(&mut self, a: usize, b: usize, link: u64) {
        let link = LinkId(link);
        self.wires.remove(&(a, link));
        self.wires.remove(&(b, link));
        self.input(a, Input::Down { link });
        self.input(b, Input::Down { link });
    }

    /// A test's own overlay peer, inbound on node `n`.
    fn peer(&mut self, n: usize, link: u64, id: &str) {
        let peer = Peer::Node {
            peer: id.to_owned(),
            allow: AllowList::any(),
            uplink: None,
            remote: Net::remote(),
        };
        self.input(
            n,
            Input::Up {
                link: LinkId(link),
                peer,
            },
        );
    }

    fn charger(&mut self, n: usize, link: u64, id: &str, version: OcppVersion) {
        let peer = Peer::Charger {
            id: id.to_owned(),
            version,
            max_pending: 4,
        };
        self.input(
            n,
            Input::Up {
                link: LinkId(link),
                peer,
            },
        );
    }

    /// A text frame read from `link` of node `n`.
    fn text(&mut self, n: usize, link: u64, text: &str) {
        let text = Utf8Bytes::from(text.to_owned());
        self.input(
            n,
            Input::Text {
                link: LinkId(link),
                text,
            },
        );
    }

    /// Node `n`'s CSMS writes on the charger's socket.
    fn csms_says(&mut self, n: usize, charger: &str, text: &str) {
        let link = self.csms[&(n, charger.to_owned())];
        self.text(n, link.0, text);
    }

    fn call(&mut self, n: usize, call: NodeCall) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.input(
            n,
            Input::Call {
                token: Token(token),
                call,
            },
        );
        token
    }

    fn input(&mut self, n: usize, input: Input) {
        self.nodes[n].handle(input, self.now);
        self.pump();
    }

    /// Carries out every action until the network is quiet; an engine is told it is idle
    /// whenever nothing is queued for it, as the driver does.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut inputs: Vec<(usize, Input)> = Vec::new();
            for n in 0..self.nodes.len() {
                self.nodes[n].idle(self.now);
                while let Some(action) = self.nodes[n].poll_action() {
                    self.act(n, action, &mut inputs);
                }
            }
            if inputs.is_empty() {
                return;
            }
            for (n, input) in inputs {
                self.nodes[n].handle(input, self.now);
            }
        }
        panic!("the network never became quiet");
    }

    fn act(&mut self, n: usize, action: Action, inputs: &mut Vec<(usize, Input)>) {
        match action {
            Action::Send { link, out, .. } => match (self.wires.get(&(n, link)), out) {
                (Some(&(m, l)), Outbound::Text(text)) => {
                    let text = match self.tamper {
                        Some((from, to, f)) if (from, to) == (n, m) => f(text),
                        _ => text,
                    };
                    inputs.push((
                        m,
                        Input::Text {
                            link: l,
                            text: text.into(),
                        },
                    ))
                }
                (Some(&(m, l)), Outbound::Binary { bytes, .. }) => {
                    inputs.push((m, Input::Binary { link: l, bytes }))
                }
                (None, Outbound::Text(text)) => {
                    if self.is_overlay(n, link) {
                        self.overlay.entry((n, link)).or_default().push(text)
                    } else {
                        self.written.entry((n, link)).or_default().push(text)
                    }
                }
                (None, Outbound::Binary { bytes, .. }) => self
                    .binary
                    .entry((n, link))
                    .or_default()
                    .push(bytes.to_vec()),
            },
            Action::Close { link, reason } => self.closed.push(((n, link), reason)),
            Action::OpenCsms { link, charger, .. } => {
                self.csms.insert((n, charger), link);
                if self.csms_accepts {
                    inputs.push((n, Input::CsmsOpen { link }));
                }
            }
            Action::CloseCsms { link } => {
                let charger = self
                    .csms
                    .iter()
                    .find(|(_, l)| **l == link)
                    .map(|((_, c), _)| c.clone());
                if let Some(c) = charger {
                    self.csms.remove(&(n, c.clone()));
                    self.closed_csms.push((n, c));
                }
            }
            Action::Persist { token, job, .. } => {
                let wtx = self.db.begin_write().expect("write");
                let result = job(&wtx).map_err(|e| e.to_string());
                wtx.commit().expect("commit");
                inputs.push((n, Input::Persisted { token, result }));
            }
            Action::Dispatch {
                token,
                handler,
                request,
                ..
            } => {
                let reply = self.rt.block_on(handler.handle(request));
                inputs.push((n, Input::LocalReply { token, reply }));
            }
            Action::CallDone { token, outcome } => {
                self.done.insert((n, token.0), outcome);
            }
            Action::SecurityEvent { kind, .. } => self.security.push((n, kind)),
        }
    }

    fn is_overlay(&self, n: usize, link: LinkId) -> bool {
        matches!(self.nodes[n].core.links.get(&link), Some(Link::Node(_)))
    }

    /// Moves the clock on, a housekeeping second at a time.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while self.now < end {
            self.now = (self.now + Duration::from_secs(1)).min(end);
            for n in 0..self.nodes.len() {
                self.nodes[n].tick(self.now);
            }
            self.pump();
        }
    }

    /// What was written to a plain link so far, taken.
    fn take(&mut self, n: usize, link: u64) -> Vec<Value> {
        self.take_raw(n, link)
            .iter()
            .map(|t| serde_json::from_str(t).expect("JSON"))
            .collect()
    }

    fn take_raw(&mut self, n: usize, link: u64) -> Vec<String> {
        self.written.remove(&(n, LinkId(link))).unwrap_or_default()
    }

    fn take_csms(&mut self, n: usize, charger: &str) -> Vec<String> {
        match self.csms.get(&(n, charger.to_owned())) {
            Some(link) => self.take_raw(n, link.0),
            None => Vec::new(),
        }
    }

    fn routes(&self, n: usize) -> Vec<String> {
        let status = self.nodes[n].status(self.now);
        status["routes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["destination"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

const EDGE: usize = 0;
const HUB: usize = 1;
const CP: u64 = 1;
const UP: u64 = 100;

/// An edge with one 1.6 charger, connected to a hub whose CSMS socket for it is open.
fn site() -> Net {
    let mut net = Net::new(vec![("edge-1", edge("edge-1")), ("hub-1", hub("hub-1"))]);
    net.connect(EDGE, HUB, UP);
    net.charger(EDGE, CP, "CP1", OcppVersion::V16);
    net
}

fn id_of(text: &str) -> String {
    let v: Value = serde_json::from_str(text).expect("JSON");
    v[1].as_str().expect("id").to_owned()
}

#[test]
fn a_charger_call_reaches_the_csms_and_its_answer_comes_back_under_the_chargers_id() {
    let mut net = site();
    assert!(net.routes(HUB).contains(&"CP1".to_owned()), "announced");
    assert!(
        net.csms.contains_key(&(HUB, "CP1".into())),
        "CSMS socket opened"
    );
    // Unusual spacing: the payload bytes must arrive as they were sent.
    let payload = r#"{ "vendorId" : "acme",  "data":"x" }"#;
    net.text(EDGE, CP, &format!(r#"[2,"c-1","DataTransfer",{payload}]"#));
    let at_csms = net.take_csms(HUB, "CP1");
    assert_eq!(at_csms.len(), 1, "{at_csms:?}");
    assert!(
        at_csms[0].ends_with(&format!(r#","DataTransfer",{payload}]"#)),
        "{}",
        at_csms[0]
    );
    let upstream_id = id_of(&at_csms[0]);
    assert_ne!(
        upstream_id, "c-1",
        "the edge gives each upstream CALL its own id"
    );
    net.csms_says(
        HUB,
        "CP1",
        &format!(r#"[3,"{upstream_id}",{{"status":"Accepted"}}]"#),
    );
    assert_eq!(
        net.take(EDGE, CP),
        vec![json!([3, "c-1", {"status": "Accepted"}])]
    );
}

#[test]
fn csms_calls_reach_the_charger_one_at_a_time() {
    let mut net = site();
    net.csms_says(HUB, "CP1", r#"[2,"s-1","Reset",{"type" : "Soft"}]"#);
    net.csms_says(HUB, "CP1", r#"[2,"s-2","ClearCache",{}]"#);
    let raw = net.take_raw(EDGE, CP);
    assert_eq!(
        raw,
        vec![r#"[2,"s-1","Reset",{"type" : "Soft"}]"#.to_owned()]
    );
    net.text(EDGE, CP, r#"[3,"s-1",{"status":"Accepted"}]"#);
    assert_eq!(
        net.take_csms(HUB, "CP1"),
        vec![r#"[3,"s-1",{"status":"Accepted"}]"#.to_owned()]
    );
    assert_eq!(
        net.take(EDGE, CP),
        vec![json!([2, "s-2", "ClearCache", {}])]
    );
    net.text(EDGE, CP, r#"[3,"s-2",{"status":"Accepted"}]"#);
    assert_eq!(net.take_csms(HUB, "CP1").len(), 1);
}

#[test]
fn an_unanswered_charger_call_times_out_under_its_own_id() {
    let mut net = site();
    net.text(EDGE, CP, r#"[2,"c-9","DataTransfer",{"vendorId":"acme"}]"#);
    assert_eq!(net.take_csms(HUB, "CP1").len(), 1);
    net.advance(REQUEST_TIMEOUT - Duration::from_secs(2));
    assert!(net.take(EDGE, CP).is_empty(), "not before the timeout");
    net.advance(Duration::from_secs(4));
    let got = net.take(EDGE, CP);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0][0], 4);
    assert_eq!(got[0][1], "c-9");
}

#[test]
fn an_invalid_call_is_refused_at_the_edge_and_never_forwarded() {
    let mut net = site();
    net.text(
        EDGE,
        CP,
        r#"[2,"c-2","BootNotification",{"chargePointVendor":7}]"#,
    );
    let got = net.take(EDGE, CP);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0][0], 4);
    assert!(net.take_csms(HUB, "CP1").is_empty());
    net.text(EDGE, CP, r#"[2,"c-3","NoSuchAction",{}]"#);
    assert_eq!(net.take(EDGE, CP)[0][2], "NotImplemented");
}

#[test]
fn a_charger_that_leaves_is_withdrawn_and_its_csms_socket_closes() {
    let mut net = site();
    net.input(EDGE, Input::Down { link: LinkId(CP) });
    assert!(!net.routes(HUB).contains(&"CP1".to_owned()));
    assert_eq!(net.closed_csms, vec![(HUB, "CP1".to_owned())]);
}

#[test]
fn a_lost_edge_keeps_its_chargers_csms_sockets_for_the_grace_period() {
    let mut net = site();
    net.disconnect(EDGE, HUB, UP);
    net.advance(GRACE / 2);
    assert!(net.closed_csms.is_empty(), "kept within the grace period");
    // Back in time: the socket is the same one, never closed.
    net.connect(EDGE, HUB, UP + 1);
    net.advance(GRACE * 2);
    assert!(net.closed_csms.is_empty(), "{:?}", net.closed_csms);
    // Lost for good this time.
    net.disconnect(EDGE, HUB, UP + 1);
    net.advance(GRACE * 3);
    assert_eq!(net.closed_csms, vec![(HUB, "CP1".to_owned())]);
}

#[test]
fn a_refused_charger_is_reported_to_its_edge() {
    let mut net = Net::new(vec![("edge-1", edge("edge-1")), ("hub-1", hub("hub-1"))]);
    net.csms_accepts = false;
    net.connect(EDGE, HUB, UP);
    net.charger(EDGE, CP, "CP1", OcppVersion::V16);
    let link = net.csms[&(HUB, "CP1".to_owned())];
    net.input(
        HUB,
        Input::CsmsRefused {
            link,
            http_status: Some(404),
            reason: "unknown charger".into(),
        },
    );
    // The edge closes the charger: the CSMS does not know it.
    assert!(
        net.closed
            .iter()
            .any(|((n, l), _)| *n == EDGE && *l == LinkId(CP)),
        "{:?}",
        net.closed
    );
}

#[test]
fn a_node_originated_call_joins_the_chargers_queue_and_its_answer_comes_back() {
    let mut net = site();
    net.csms_says(HUB, "CP1", r#"[2,"s-1","ClearCache",{}]"#);
    let token = net.call(
        EDGE,
        NodeCall {
            target: Target::Id("CP1".into()),
            on_behalf: None,
            id: Some("n-1".into()),
            action: "ChangeAvailability".into(),
            payload: r#"{"connectorId":0,"type":"Operative"}"#.into(),
            timeout: Some(Duration::from_secs(5)),
        },
    );
    assert_eq!(net.take(EDGE, CP).len(), 1, "only the CSMS's CALL is out");
    net.text(EDGE, CP, r#"[3,"s-1",{"status":"Accepted"}]"#);
    let got = net.take(EDGE, CP);
    assert_eq!(got[0][1], "n-1");
    assert_eq!(got[0][2], "ChangeAvailability");
    net.text(EDGE, CP, r#"[3,"n-1",{"status":"Accepted"}]"#);
    assert_eq!(
        net.done.get(&(EDGE, token)),
        Some(&CallOutcome::Result(r#"{"status":"Accepted"}"#.into()))
    );
    assert!(
        net.take_csms(HUB, "CP1").len() == 1,
        "only the CSMS's answer went up"
    );
}

#[test]
fn a_node_originated_call_nobody_answers_times_out() {
    let mut net = site();
    let token = net.call(
        EDGE,
        NodeCall {
            target: Target::Id("CP1".into()),
            on_behalf: None,
            id: None,
            action: "ClearCache".into(),
            payload: "{}".into(),
            timeout: Some(Duration::from_secs(3)),
        },
    );
    assert_eq!(net.take(EDGE, CP).len(), 1);
    net.advance(Duration::from_secs(5));
    assert_eq!(net.done.get(&(EDGE, token)), Some(&CallOutcome::Timeout));
}

struct Echo;

impl LocalHandler for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }
    fn handle(&self, request: LocalRequest) -> handlers::Reply {
        Box::pin(async move {
            LocalReply::Result(format!(
                r#"{{"from":"{}","payload":{}}}"#,
                request.from, request.payload
            ))
        })
    }
}

#[test]
fn a_call_addressed_to_a_node_is_answered_by_its_local_handler() {
    let mut net = site();
    net.nodes[HUB]
        .handlers_mut()
        .register(Scope::Node, "Echo", Arc::new(Echo));
    let call = |action: &str| NodeCall {
        target: Target::Id("hub-1".into()),
        on_behalf: None,
        id: None,
        action: action.into(),
        payload: r#"{"n":1}"#.into(),
        timeout: Some(Duration::from_secs(5)),
    };
    let token = net.call(EDGE, call("Echo"));
    assert_echoed(&net, EDGE, token, "edge-1");
    let token = net.call(EDGE, call("Nobody"));
    match net.done.get(&(EDGE, token)) {
        Some(CallOutcome::Error { code, from, .. }) => {
            assert_eq!(code, "NotImplemented");
            assert_eq!(from, "hub-1");
        }
        other => panic!("{other:?}"),
    }
}

fn echo_call(to: &str) -> NodeCall {
    NodeCall {
        target: Target::Id(to.into()),
        on_behalf: None,
        id: None,
        action: "Echo".into(),
        payload: r#"{"n":1}"#.into(),
        timeout: Some(Duration::from_secs(5)),
    }
}

/// The Echo handler at the target answered the CALL that `node` made as `token`.
fn assert_echoed(net: &Net, node: usize, token: u64, from: &str) {
    let want = format!(r#"{{"from":"{from}","payload":{{"n":1}}}}"#);
    assert_eq!(
        net.done.get(&(node, token)),
        Some(&CallOutcome::Result(want))
    );
}

fn assert_unreachable(net: &Net, node: usize, token: u64) {
    assert_eq!(
        net.done.get(&(node, token)),
        Some(&CallOutcome::NotSent("unreachable".into()))
    );
}

#[test]
fn a_hub_reaches_a_linked_edge_by_its_id_until_the_link_goes() {
    let mut net = site();
    net.nodes[EDGE]
        .handlers_mut()
        .register(Scope::Node, "Echo", Arc::new(Echo));
    assert!(net.routes(HUB).contains(&"edge-1".to_owned()));
    let token = net.call(HUB, echo_call("edge-1"));
    assert_echoed(&net, HUB, token, "hub-1");
    assert!(net.take(EDGE, CP).is_empty(), "nothing reached the charger");

    net.disconnect(EDGE, HUB, UP);
    assert!(!net.routes(HUB).contains(&"edge-1".to_owned()));
    let token = net.call(HUB, echo_call("edge-1"));
    assert_unreachable(&net, HUB, token);
}

/// edge-2 → edge-1 → hub-1: edge-1 announces its linked peer edge-2 like a charger, so the
/// hub reaches it two hops away; upward, the default route reaches the hub.
#[test]
fn node_ids_are_reachable_across_a_chain_both_ways() {
    let mut net = Net::new(vec![
        ("edge-2", edge("edge-2")),
        ("edge-1", edge("edge-1")),
        ("hub-1", hub("hub-1")),
    ]);
    let (e2, e1, h) = (0, 1, 2);
    net.connect(e1, h, 100);
    net.connect(e2, e1, 101);
    for n in [e2, h] {
        net.nodes[n]
            .handlers_mut()
            .register(Scope::Node, "Echo", Arc::new(Echo));
    }
    assert!(net.routes(h).contains(&"edge-2".to_owned()));
    let token = net.call(h, echo_call("edge-2"));
    assert_echoed(&net, h, token, "hub-1");
    let token = net.call(e2, echo_call("hub-1"));
    assert_echoed(&net, e2, token, "edge-2");

    net.disconnect(e2, e1, 101);
    assert!(
        !net.routes(h).contains(&"edge-2".to_owned()),
        "withdrawn upstream"
    );
    let token = net.call(h, echo_call("edge-2"));
    // The hub no longer knows edge-2, so the CALL is refused at once.
    assert_unreachable(&net, h, token);
}

#[test]
fn the_outbox_answers_offline_and_replays_once_the_uplink_is_back() {
    let mut net = Net::new(vec![
        ("edge-1", edge_with_outbox("edge-1")),
        ("hub-1", hub("hub-1")),
    ]);
    net.charger(EDGE, CP, "CP1", OcppVersion::V16);
    net.text(
        EDGE,
        CP,
        r#"[2,"b-1","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]"#,
    );
    assert_eq!(
        net.take(EDGE, CP)[0][2]["status"],
        "Accepted",
        "offline boot"
    );
    net.text(
        EDGE,
        CP,
        r#"[2,"s-1","StartTransaction",{"connectorId":1,"idTag":"T1","meterStart":0,"timestamp":"2026-12-05T10:00:00Z"}]"#,
    );
    let answer = net.take(EDGE, CP);
    assert_eq!(answer.len(), 1, "answered once it is on disk: {answer:?}");
    let local_tx = answer[0][2]["transactionId"].as_i64().expect("a local id");
    net.text(
        EDGE,
        CP,
        &format!(
            r#"[2,"m-1","MeterValues",{{"connectorId":1,"transactionId":{local_tx},"meterValue":[{{"timestamp":"2026-12-05T10:01:00Z","sampledValue":[{{"value":"10"}}]}}]}}]"#
        ),
    );
    assert_eq!(net.take(EDGE, CP).len(), 1);

    // The uplink comes up: the queued messages go to the CSMS in order, one at a time.
    net.connect(EDGE, HUB, UP);
    let boot = net.take_csms(HUB, "CP1");
    assert_eq!(boot.len(), 1, "{boot:?}");
    assert!(
        boot[0].contains("BootNotification"),
        "the boot first: {}",
        boot[0]
    );
    net.csms_says(
        HUB,
        "CP1",
        &format!(
            r#"[3,"{}",{{"status":"Accepted","currentTime":"2026-12-05T10:00:00Z","interval":300}}]"#,
            id_of(&boot[0])
        ),
    );
    let first = net.take_csms(HUB, "CP1");
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].contains("StartTransaction"), "{}", first[0]);
    net.csms_says(
        HUB,
        "CP1",
        &format!(
            r#"[3,"{}",{{"transactionId":777,"idTagInfo":{{"status":"Accepted"}}}}]"#,
            id_of(&first[0])
        ),
    );
    let second = net.take_csms(HUB, "CP1");
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(
        second[0].contains(r#""transactionId":777"#),
        "the CSMS's id: {}",
        second[0]
    );
    net.csms_says(HUB, "CP1", &format!(r#"[3,"{}",{{}}]"#, id_of(&second[0])));
    assert!(
        net.take(EDGE, CP).is_empty(),
        "replayed answers are not sent again"
    );
    // The CSMS stops the transaction by its id; the 1.6 charger knows it by its own.
    net.csms_says(
        HUB,
        "CP1",
        r#"[2,"r-1","RemoteStopTransaction",{"transactionId":777}]"#,
    );
    let down = net.take(EDGE, CP);
    assert_eq!(
        down,
        vec![json!([2, "r-1", "RemoteStopTransaction", {"transactionId": local_tx}])]
    );
}

#[test]
fn the_outbox_keeps_a_message_the_uplink_lost_and_sends_it_again() {
    let mut net = Net::new(vec![
        ("edge-1", edge_with_outbox("edge-1")),
        ("hub-1", hub("hub-1")),
    ]);
    net.connect(EDGE, HUB, UP);
    net.charger(EDGE, CP, "CP1", OcppVersion::V16);
    net.text(
        EDGE,
        CP,
        r#"[2,"s-1","StartTransaction",{"connectorId":1,"idTag":"T1","meterStart":0,"timestamp":"2026-12-05T10:00:00Z"}]"#,
    );
    let sent = net.take_csms(HUB, "CP1");
    assert_eq!(sent.len(), 1);
    // The link drops before the answer. The edge sends it again, under the same id, once it
    // is back; the hub, still waiting for the CSMS's answer to it, does not pass it on twice.
    net.disconnect(EDGE, HUB, UP);
    net.connect(EDGE, HUB, UP + 1);
    net.advance(Duration::from_secs(2));
    assert!(
        net.take_csms(HUB, "CP1").is_empty(),
        "the CSMS sees it once"
    );
    net.csms_says(
        HUB,
        "CP1",
        &format!(
            r#"[3,"{}",{{"transactionId":5,"idTagInfo":{{"status":"Accepted"}}}}]"#,
            id_of(&sent[0])
        ),
    );
    let outbox = &net.nodes[EDGE].status(net.now)["outbox"];
    assert_eq!(outbox["queued"], 0, "settled by the late answer: {outbox}");
    let answers = net.take(EDGE, CP);
    assert_eq!(
        answers.len(),
        1,
        "the charger is answered once: {answers:?}"
    );
    assert_eq!(answers[0][1], "s-1");
}

/// A binary SEND from a peer behind the hub, through the hub and two edges, to a peer behind
/// the far edge, and one back: dest and path are rewritten, meta and body arrive intact.
#[test]
fn binary_frames_cross_three_nodes_both_ways() {
    let mut net = Net::new(vec![
        ("edge-2", edge("edge-2")),
        ("edge-1", edge("edge-1")),
        ("hub-1", hub("hub-1")),
    ]);
    let (e2, e1, h) = (0, 1, 2);
    net.connect(e1, h, 100);
    net.connect(e2, e1, 101);
    net.peer(h, 200, "T1");
    net.peer(e2, 201, "T2");
    for (n, link, id) in [(h, 200, "T1"), (e2, 201, "T2")] {
        let ann = routing::Announcement {
            routing_node: id.into(),
            routes: vec![routing::announce::AnnouncedRoute {
                destination_id: id.into(),
                priority: 0,
                ocpp_version: None,
            }],
            withdrawn: Vec::new(),
            full: true,
            ttl: Some(300),
            not_before: None,
            not_after: None,
        };
        let own = net.ids[n].clone();
        let text = format!(
            r#"[6,["{own}"],["{id}"],"a-{id}","NotifyNetworkTopology",{}]"#,
            ann.to_payload()
        );
        net.text(n, link, &text);
    }
    assert!(
        net.routes(h).contains(&"T2".to_owned()),
        "{:?}",
        net.routes(h)
    );
    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let send = |dest: &str, from: &str| {
        wire::binary::BinaryFrame {
            message_type: MessageType::Send,
            dest: Route::single(dest.to_owned()),
            path: Route::single(from.to_owned()),
            id: "b-1".into(),
            action: Some("TestChunk".into()),
            meta: wire::Json::new(
                serde_json::value::RawValue::from_string(r#"{"seq":1}"#.into())
                    .expect("raw")
                    .as_ref(),
            ),
            body: &body,
        }
        .encode(&wire::Limits::default())
        .expect("encode")
    };
    let out = send("T2", "T1");
    net.input(
        h,
        Input::Binary {
            link: LinkId(200),
            bytes: Bytes::from(out),
        },
    );
    let got = net.binary.remove(&(e2, LinkId(201))).unwrap_or_default();
    assert_eq!(got.len(), 1, "arrived at T2");
    let frame = wire::binary::decode(&got[0], &wire::Limits::default()).expect("decodes");
    assert_eq!(frame.body, &body[..]);
    assert_eq!(frame.meta.get(), r#"{"seq":1}"#);
    assert_eq!(frame.dest.first(), "T2");
    assert_eq!(frame.path.first(), "T1", "path keeps the originator first");
    assert_eq!(frame.path.len(), 4, "T1, hub-1, edge-1, edge-2");

    let back = send("T1", "T2");
    net.input(
        e2,
        Input::Binary {
            link: LinkId(201),
            bytes: Bytes::from(back),
        },
    );
    let got = net.binary.remove(&(h, LinkId(200))).unwrap_or_default();
    assert_eq!(got.len(), 1, "back at T1");
    let frame = wire::binary::decode(&got[0], &wire::Limits::default()).expect("decodes");
    assert_eq!(frame.body, &body[..]);
}

#[test]
fn a_binary_frame_is_never_written_to_a_charger() {
    let mut net = site();
    net.peer(HUB, 200, "T1");
    let body = [1u8, 2, 3];
    let frame = wire::binary::BinaryFrame {
        message_type: MessageType::Send,
        dest: Route::single("CP1".to_owned()),
        path: Route::single("T1".to_owned()),
        id: "b-2".into(),
        action: Some("TestChunk".into()),
        meta: wire::Json::new(
            serde_json::value::RawValue::from_string("{}".into())
                .expect("raw")
                .as_ref(),
        ),
        body: &body,
    }
    .encode(&wire::Limits::default())
    .expect("encode");
    net.input(
        HUB,
        Input::Binary {
            link: LinkId(200),
            bytes: Bytes::from(frame),
        },
    );
    assert!(!net.binary.contains_key(&(EDGE, LinkId(CP))));
    assert!(net.take(EDGE, CP).is_empty());
}

/// A binary CALL that found its next hop's bulk queue full is answered with a CALLERROR toward
/// its originator, so its transfer retries; a dropped SEND is only counted.
#[test]
fn a_dropped_bulk_call_is_answered_with_a_callerror() {
    let mut net = site();
    net.peer(HUB, 200, "T1");
    // The hub learns T1 from the path of a frame it sends (ARCHITECTURE §3.4 auto-learn).
    net.text(HUB, 200, r#"[6,["hub-1"],["T1"],"x-1","TestPing",{}]"#);
    net.overlay.clear();
    let frame = |message_type: MessageType, id: &str| {
        wire::binary::BinaryFrame {
            message_type,
            dest: Route::single("T2".to_owned()),
            path: Route::from_ids(vec!["T1".into(), "hub-1".into()]).expect("a path"),
            id: id.to_owned().into(),
            action: Some("TestChunk".into()),
            meta: wire::Json::new(
                serde_json::value::RawValue::from_string(r#"{"seq":3}"#.into())
                    .expect("raw")
                    .as_ref(),
            ),
            body: &[7u8; 100],
        }
        .encode(&wire::Limits::default())
        .expect("encode")
    };
    net.input(
        HUB,
        Input::BulkDropped {
            link: LinkId(UP),
            bytes: Bytes::from(frame(MessageType::Send, "s-9")),
        },
    );
    assert!(
        net.overlay
            .remove(&(HUB, LinkId(200)))
            .unwrap_or_default()
            .is_empty(),
        "a dropped SEND gets no answer"
    );
    net.input(
        HUB,
        Input::BulkDropped {
            link: LinkId(UP),
            bytes: Bytes::from(frame(MessageType::Call, "c-9")),
        },
    );
    let got = net.overlay.remove(&(HUB, LinkId(200))).unwrap_or_default();
    assert_eq!(got.len(), 1, "one answer to T1: {got:?}");
    let v: Value = serde_json::from_str(&got[0]).expect("JSON");
    assert_eq!(v[0], 4, "a CALLERROR: {v}");
    // A sender writes a one-element dest or path as a string (ARCHITECTURE §3.1).
    assert_eq!(v[1], "T1", "toward the originator: {v}");
    assert_eq!(v[2], "hub-1", "from the hub: {v}");
    assert_eq!(v[3], "c-9");
    assert!(net.binary.is_empty(), "nothing else is written");
}

// ---------------------------------------------------------------------------------------------
// Signature policies across hops

/// hub ← mid ← edge ← CP1 (2.0.1); the charger-side edge requires an admin signature on Reset
/// and keeps `signatures` for the charger, so what it delivers can be compared byte for byte.
fn signed_chain(
    admin: &signing::PrivateKey,
) -> (Net, tokio::sync::watch::Sender<Arc<crate::policy::Policy>>) {
    let config: crate::config::SigningConfig = toml::from_str(&format!(
        r#"
        deliver_signatures = true
        [[role]]
        name = "admin"
        keys = ["{}"]
        actions = ["*"]
        [[policy]]
        direction = "in"
        action = "Reset"
        check = "require-any"
        roles = ["admin"]
        "#,
        admin.public().key_id()
    ))
    .expect("signing config");
    let policy =
        crate::policy::Policy::build(&config, HashMap::new(), Vec::new(), None).expect("policy");
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(policy));
    let mut e = edge("edge-1");
    e.add_stage(Box::new(crate::policy::Signatures::new(rx)));
    let mut net = Net::new(vec![
        ("hub-1", hub("hub-1")),
        ("mid-1", edge("mid-1")),
        ("edge-1", e),
    ]);
    net.connect(1, 0, 100);
    net.connect(2, 1, 101);
    net.charger(2, CP, "CP1", OcppVersion::V201);
    (net, tx)
}

fn signed_reset(admin: &signing::PrivateKey, nonce: &str) -> String {
    let mut payload = json!({"type": "Immediate", "evseId": 1});
    let message = signing::Message {
        message_type: 2,
        action: "Reset",
        destination: "CP1",
    };
    let options = signing::signature::SignOptions {
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        nonce: Some(nonce.into()),
        ..Default::default()
    };
    let sig = signing::signature::sign(&message, &payload, admin, options).expect("sign");
    signing::signature::attach(&mut payload, sig).expect("attach");
    // Unusual spacing, so a forwarder that re-serialized would show.
    serde_json::to_string_pretty(&payload).expect("json")
}

#[test]
fn a_signed_call_crosses_three_hops_byte_for_byte_and_is_verified_at_the_charger_side() {
    let admin = signing::PrivateKey::generate(signing::Algorithm::Secp256r1).expect("key");
    let (mut net, _tx) = signed_chain(&admin);
    let payload = signed_reset(&admin, "n-1");
    net.csms_says(0, "CP1", &format!(r#"[2,"s-1","Reset",{payload}]"#));
    let at_charger = net.take_raw(2, CP);
    assert_eq!(at_charger, vec![format!(r#"[2,"s-1","Reset",{payload}]"#)]);
    assert!(net.security.is_empty(), "{:?}", net.security);
    // The same bytes again are a replay.
    net.text(2, CP, r#"[3,"s-1",{"status":"Accepted"}]"#);
    assert_eq!(net.take_csms(0, "CP1").len(), 1);
    net.csms_says(0, "CP1", &format!(r#"[2,"s-2","Reset",{payload}]"#));
    assert!(
        net.take_raw(2, CP).is_empty(),
        "a replay reached the charger"
    );
    let refusal = net.take_csms(0, "CP1");
    assert_eq!(refusal.len(), 1, "{refusal:?}");
    let v: Value = serde_json::from_str(&refusal[0]).expect("json");
    assert_eq!(
        (v[0].as_u64(), v[1].as_str(), v[2].as_str()),
        (Some(4), Some("s-2"), Some("SecurityError")),
        "{v}"
    );
    assert!(
        v[3].as_str().unwrap_or_default().contains("replayed"),
        "{v}"
    );
    assert_eq!(net.security, vec![(2, "signature_refused")]);
}

#[test]
fn a_byte_changed_at_any_hop_is_refused_at_the_charger_side() {
    fn flip(text: String) -> String {
        text.replacen("Immediate", "OnIdle", 1)
    }
    let admin = signing::PrivateKey::generate(signing::Algorithm::Ed25519).expect("key");
    for (i, hop) in [(0, 1), (1, 2)].into_iter().enumerate() {
        let (mut net, _tx) = signed_chain(&admin);
        net.tamper = Some((hop.0, hop.1, flip));
        let payload = signed_reset(&admin, &format!("n-{i}"));
        net.csms_says(0, "CP1", &format!(r#"[2,"s-{i}","Reset",{payload}]"#));
        assert!(
            net.take_raw(2, CP).is_empty(),
            "hop {hop:?}: a tampered Reset reached the charger"
        );
        let refusal = net.take_csms(0, "CP1");
        assert_eq!(refusal.len(), 1, "hop {hop:?}: {refusal:?}");
        assert!(
            refusal[0].contains("SecurityError") && refusal[0].contains("does not verify"),
            "{}",
            refusal[0]
        );
        assert_eq!(net.security, vec![(2, "signature_refused")], "hop {hop:?}");
    }
}

#[test]
fn an_ocpp_jws_is_checked_by_its_inner_action_and_passes_through_byte_for_byte() {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    let trusted = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).expect("key");
    let other = p256::ecdsa::SigningKey::from_slice(&[4u8; 32]).expect("key");
    let jws = |key: &p256::ecdsa::SigningKey| {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header =
            b64.encode(r#"{"alg": "ES256", "OCPPAction": "Reset", "OCPPMessageTypedId": 2}"#);
        let body = b64.encode(r#"{"type": "Immediate"}"#);
        let sig: p256::ecdsa::Signature = key.sign(format!("{header}.{body}").as_bytes());
        format!(
            r#"{{"protected": "{header}", "payload": "{body}", "signature": "{}"}}"#,
            b64.encode(sig.to_bytes())
        )
    };
    let config: crate::config::SigningConfig = toml::from_str(
        "jws_trust = [\"trusted.pem\"]\n[[policy]]\ndirection = \"in\"\naction = \"Reset\"\ncheck = \"require-jws\"\n",
    )
    .expect("config");
    let key = signing::jws::JwsKey::P256(*trusted.verifying_key());
    let policy =
        crate::policy::Policy::build(&config, HashMap::new(), vec![key], None).expect("policy");
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(policy));
    let mut e = edge("edge-1");
    e.add_stage(Box::new(crate::policy::Signatures::new(rx)));
    let mut net = Net::new(vec![("hub-1", hub("hub-1")), ("edge-1", e)]);
    net.connect(1, 0, 100);
    net.charger(1, CP, "CP1", OcppVersion::V201);
    let good = format!(r#"[2,"s-1","Reset-Signed",{}]"#, jws(&trusted));
    net.csms_says(0, "CP1", &good);
    assert_eq!(net.take_raw(1, CP), vec![good]);
    net.text(1, CP, r#"[3,"s-1",{"status":"Accepted"}]"#);
    assert_eq!(net.take_csms(0, "CP1").len(), 1);
    for (id, frame) in [
        (
            "s-2",
            format!(r#"[2,"s-2","Reset-Signed",{}]"#, jws(&other)),
        ),
        (
            "s-3",
            r#"[2,"s-3","Reset",{"type":"Immediate"}]"#.to_owned(),
        ),
    ] {
        net.csms_says(0, "CP1", &frame);
        assert!(net.take_raw(1, CP).is_empty(), "{id} reached the charger");
        let answer = net.take_csms(0, "CP1");
        assert!(
            answer.len() == 1 && answer[0].contains("SecurityError"),
            "{id}: {answer:?}"
        );
    }
}

/// An edge attests for its legacy charger (`out`, sign with its key); the hub admits only what
/// that key signed, and removes the signatures before the unmodified CSMS.
#[test]
fn an_edge_signs_for_its_charger_and_the_hub_requires_it() {
    let site = signing::PrivateKey::generate(signing::Algorithm::Ed25519).expect("key");
    let policy = |text: &str, keys: HashMap<String, signing::PrivateKey>| {
        let config: crate::config::SigningConfig = toml::from_str(text).expect("config");
        let p = crate::policy::Policy::build(&config, keys, Vec::new(), None).expect("policy");
        tokio::sync::watch::channel(Arc::new(p))
    };
    let (_etx, erx) = policy(
        "[[key]]\nname = \"site\"\nfile = \"site.pem\"\n[[policy]]\ndirection = \"out\"\naction = \"DataTransfer\"\ncheck = \"sign\"\nkey = \"site\"\n",
        HashMap::from([("site".to_owned(), site.clone())]),
    );
    let (_htx, hrx) = policy(
        &format!(
            "[[policy]]\ndirection = \"in\"\naction = \"DataTransfer\"\ncheck = \"require-any\"\nkeys = [\"{}\"]\n",
            site.public().key_id()
        ),
        HashMap::new(),
    );
    let mut e = edge("edge-1");
    e.add_stage(Box::new(crate::policy::Signatures::new(erx)));
    let mut h = hub("hub-1");
    h.add_stage(Box::new(crate::policy::Signatures::new(hrx)));
    // A second edge signs nothing: its charger's DataTransfer must not reach the CSMS.
    let mut net = Net::new(vec![
        ("edge-1", e),
        ("hub-1", h),
        ("edge-2", edge("edge-2")),
    ]);
    net.connect(EDGE, HUB, UP);
    net.connect(2, HUB, 102);
    net.charger(EDGE, CP, "CP1", OcppVersion::V16);
    net.charger(2, CP, "CP2", OcppVersion::V16);

    net.text(
        EDGE,
        CP,
        r#"[2,"c-1","DataTransfer",{"vendorId":"acme","data":"x"}]"#,
    );
    let at_csms = net.take_csms(HUB, "CP1");
    assert_eq!(at_csms.len(), 1, "{at_csms:?}");
    let v: Value = serde_json::from_str(&at_csms[0]).expect("json");
    assert_eq!(
        v[3],
        json!({"vendorId": "acme", "data": "x"}),
        "signatures removed before the CSMS"
    );
    assert!(net.security.is_empty(), "{:?}", net.security);

    net.text(
        2,
        CP,
        r#"[2,"c-2","DataTransfer",{"vendorId":"acme","data":"y"}]"#,
    );
    assert!(
        net.take_csms(HUB, "CP2").is_empty(),
        "an unsigned DataTransfer reached the CSMS"
    );
    let answer = net.take(2, CP);
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(
        (
            answer[0][0].as_u64(),
            answer[0][1].as_str(),
            answer[0][2].as_str()
        ),
        (Some(4), Some("c-2"), Some("SecurityError")),
        "{answer:?}"
    );
    assert_eq!(net.security, vec![(HUB, "signature_refused")]);
}
