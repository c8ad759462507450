//! Properties across random inputs, and one edge → hub → CSMS scenario through routing alone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use routing::correlation::{self, Correlation, Key, Pending};
use routing::{
    AllowList, Decision, Forwarder, Ingress, LinkId, NewRoute, Refusal, Source, Table, TableConfig,
};
use wire::Limits;
use wire::text::{OverlayFrame, decode_overlay, decode_plain};

const IDS: [&str; 7] = ["n0", "n1", "n2", "own", "CP-1", "CSMS", "*"];

fn id() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(IDS.to_vec())
}

fn json_list(ids: &[&str]) -> String {
    let quoted: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", quoted.join(","))
}

/// A random overlay frame text: type, dest (one id or a source route), path, odd payload.
fn frame_text() -> impl Strategy<Value = String> {
    (
        proptest::sample::select(vec![2u8, 3, 4, 5, 6]),
        proptest::collection::vec(id(), 1..4),
        proptest::collection::vec(id(), 1..=16),
        0u32..1000,
    )
        .prop_map(|(ty, dest, path, n)| {
            let payload = format!("{{ \"n\" : {n}.0e0 ,\"s\":\"\\u0041\" }}");
            let (d, p) = (json_list(&dest), json_list(&path));
            match ty {
                2 | 6 => format!(r#"[{ty},{d},{p},"m","Act",{payload}]"#),
                3 => format!(r#"[3,{d},{p},"m",{payload}]"#),
                _ => format!(r#"[{ty},{d},{p},"m","GenericError","x",{payload}]"#),
            }
        })
}

#[derive(Debug, Clone)]
enum Op {
    Insert(&'static str, u64, u32, u8, Option<u64>),
    Rule(&'static str, u64),
    Default(Option<u64>),
    RemoveLink(u64),
    Expire(u64),
    Learn(Vec<&'static str>, u64),
    Lookup(&'static str, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            id(),
            0u64..4,
            0u32..4,
            0u8..4,
            proptest::option::of(0u64..20)
        )
            .prop_map(|(d, l, p, s, e)| Op::Insert(d, l, p, s, e)),
        (
            proptest::sample::select(vec!["n*", "CP-?", "*", "?1", "own"]),
            0u64..4
        )
            .prop_map(|(g, l)| Op::Rule(g, l)),
        proptest::option::of(0u64..4).prop_map(Op::Default),
        (0u64..4).prop_map(Op::RemoveLink),
        (0u64..20).prop_map(Op::Expire),
        (proptest::collection::vec(id(), 1..5), 0u64..4).prop_map(|(p, l)| Op::Learn(p, l)),
        (id(), 0u64..20).prop_map(|(d, t)| Op::Lookup(d, t)),
    ]
}

fn source(n: u8) -> Source {
    [
        Source::Static,
        Source::Connect,
        Source::Announce,
        Source::AutoLearn,
    ][usize::from(n % 4)]
}

fn random_table(ops: &[Op], t0: Instant) -> Table {
    let mut t = Table::new(TableConfig {
        max_entries: 12,
        ..TableConfig::default()
    });
    let at = |s: u64| t0 + Duration::from_secs(s);
    for op in ops {
        match op.clone() {
            Op::Insert(d, l, p, s, e) => {
                let _ = t.insert(NewRoute {
                    dest: d.to_owned(),
                    link: LinkId(l),
                    priority: p,
                    source: source(s),
                    expires: e.map(at),
                    version: None,
                });
            }
            Op::Rule(g, l) => {
                if let Ok(g) = routing::Glob::new(g) {
                    let _ = t.add_rule(g, LinkId(l), 0);
                }
            }
            Op::Default(l) => t.set_default(l.map(LinkId)),
            Op::RemoveLink(l) => {
                t.remove_link(LinkId(l), t0);
            }
            Op::Expire(s) => {
                t.expire(at(s));
            }
            Op::Learn(p, l) => {
                let ids = p.iter().map(|s| std::borrow::Cow::Borrowed(*s)).collect();
                if let Some(path) = wire::Route::from_ids(ids) {
                    t.auto_learn(&path, LinkId(l), t0);
                }
            }
            Op::Lookup(d, s) => {
                let _ = t.lookup(d, at(s));
            }
        }
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn forwarding_never_loops_and_adds_exactly_one_hop(
        text in frame_text(),
        ops in proptest::collection::vec(op(), 0..30),
        owner in any::<bool>(),
    ) {
        let t0 = Instant::now();
        let table = random_table(&ops, t0);
        let f = Forwarder::new("own").with_csms_owner(owner);
        let frame = match decode_overlay(&text, &Limits::default()) {
            Ok(f) => f,
            Err(e) => return Err(TestCaseError::fail(format!("{text}: {e}"))),
        };
        let before = frame.clone();
        let allow = AllowList::any();
        let from = LinkId(0);
        let decision = f.decide(&table, Ingress::Node { link: from, allow: &allow }, frame, t0);
        if before.path.contains("own") {
            prop_assert_eq!(decision, Decision::Drop(Refusal::Loop));
            return Ok(());
        }
        let grown = |out: &OverlayFrame<'_>| {
            let mut want = before.path.clone();
            want.push("own");
            out.path == want && out.frame == before.frame
        };
        match decision {
            Decision::Forward { link, frame } => {
                prop_assert_ne!(link, from);
                prop_assert!(grown(&frame), "{:?}", frame);
                prop_assert!(frame.path.len() <= f.hop_limit());
                prop_assert_eq!(frame.frame.payload().map(|p| p.get()), before.frame.payload().map(|p| p.get()));
            }
            Decision::Broadcast { except, frame } => {
                prop_assert_eq!(except, Some(from));
                prop_assert!(grown(&frame));
                prop_assert_eq!(frame.frame.message_type(), wire::MessageType::Send);
            }
            Decision::Deliver(frame) => {
                prop_assert_eq!(&frame.path, &before.path);
                let d = frame.dest.first();
                prop_assert!(d == "own" || (owner && d == "CSMS"));
            }
            Decision::Reply { link, frame, .. } => {
                prop_assert_eq!(before.frame.message_type(), wire::MessageType::Call);
                prop_assert_eq!(link, Some(from));
                prop_assert_eq!(frame.dest.first(), before.path.first());
                prop_assert_eq!(frame.path.ids(), ["own"]);
                prop_assert_eq!(&frame.frame.id, &before.frame.id);
            }
            Decision::Drop(reason) => {
                prop_assert_ne!(reason, Refusal::Loop);
                prop_assert_ne!(before.frame.message_type(), wire::MessageType::Call);
            }
            Decision::Reject(r) => prop_assert!(false, "allow-any rejected: {:?}", r),
        }
    }

    #[test]
    fn random_tables_stay_consistent(ops in proptest::collection::vec(op(), 0..60), probe in id(), s in 0u64..20) {
        let t0 = Instant::now();
        let mut t = random_table(&ops, t0);
        prop_assert!(t.len() <= 12);
        prop_assert_eq!(t.len(), t.iter().count() + t.rules().len());
        let now = t0 + Duration::from_secs(s);
        if let Some(best) = t.best_exact(probe, now) {
            prop_assert_eq!(t.lookup(probe, now).map(|h| h.link), Some(best.link));
        }
        let removed = t.expire(now);
        prop_assert!(removed.entries.iter().all(|e| e.expires.is_some_and(|x| x <= now)));
        prop_assert!(t.iter().all(|e| e.expires.is_none_or(|x| x > now)));
        prop_assert!(removed.unreachable.iter().all(|id| !t.is_present(id, now)));
        prop_assert_eq!(t.len(), t.iter().count() + t.rules().len());
    }

    #[test]
    fn correlation_matches_a_model(
        ops in proptest::collection::vec((0u8..3, 0u8..3, 0u8..4, 0u64..10), 0..80),
    ) {
        let t0 = Instant::now();
        let mut c: Correlation<u64> = Correlation::new(5);
        let mut model: HashMap<(u8, u8), u64> = HashMap::new();
        for (kind, src, id, secs) in ops {
            let (s, i) = (src.to_string(), id.to_string());
            match kind {
                0 => {
                    let p = Pending { original_id: i.clone(), reply_to: s.clone(), deadline: t0 + Duration::from_secs(secs), data: secs };
                    let ok = c.insert(Key::new(s, i), p).is_ok();
                    let expect = !model.contains_key(&(src, id)) && model.len() < 5;
                    prop_assert_eq!(ok, expect);
                    if ok { model.insert((src, id), secs); }
                }
                1 => {
                    let got = c.take(&s, &i).map(|p| p.data);
                    prop_assert_eq!(got, model.remove(&(src, id)));
                }
                _ => {
                    let mut due: Vec<u64> = c.expire(t0 + Duration::from_secs(secs)).into_iter().map(|(_, p)| p.data).collect();
                    let mut want: Vec<u64> = model.values().copied().filter(|d| *d <= secs).collect();
                    model.retain(|_, d| *d > secs);
                    prop_assert!(due.windows(2).all(|w| w[0] <= w[1]));
                    due.sort_unstable();
                    want.sort_unstable();
                    prop_assert_eq!(due, want);
                }
            }
            prop_assert_eq!(c.len(), model.len());
        }
    }
}

/// CP-1 (plain) → edge-1 → hub (owns CSMS), and the CSMS's answer back, using only this crate.
#[test]
fn charger_call_through_edge_and_hub_and_back() {
    let now = Instant::now();
    let limits = Limits::default();
    const CHARGER: LinkId = LinkId(10);
    const EDGE_UP: LinkId = LinkId(11);
    const HUB_FROM_EDGE: LinkId = LinkId(20);

    let edge = Forwarder::new("edge-1");
    let hub = Forwarder::new("hub").with_csms_owner(true);
    let mut edge_table = Table::default();
    let mut hub_table = Table::default();
    edge_table.set_default(Some(EDGE_UP));
    let r = edge_table.insert(NewRoute {
        dest: "CP-1".into(),
        link: CHARGER,
        priority: 0,
        source: Source::Connect,
        expires: None,
        version: Some(wire::OcppVersion::V16),
    });
    assert!(r.is_ok());
    let mut edge_corr: Correlation<()> = Correlation::new(100);
    let hub_allow = AllowList::parse(["CP-*", "edge-1"]).unwrap_or_else(|e| panic!("{e}"));
    let edge_allow = AllowList::any();

    // Charger → edge: translate, then route.
    let plain = r#"[2,"1","Heartbeat",{ }]"#;
    let call = decode_plain(plain, &limits).unwrap_or_else(|e| panic!("{e}"));
    let deadline = now + Duration::from_secs(30);
    let up = correlation::plain_call_to_overlay(
        &mut edge_corr,
        "CP-1",
        call,
        "uuid-1".into(),
        deadline,
        (),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let Decision::Forward { link, frame } = edge
        .receive(&mut edge_table, Ingress::Plain { link: CHARGER }, up, now)
        .decision
    else {
        panic!("edge did not forward");
    };
    assert_eq!(link, EDGE_UP);
    let on_wire = frame.to_text();
    assert_eq!(
        on_wire,
        r#"[2,"CSMS",["CP-1","edge-1"],"uuid-1","Heartbeat",{ }]"#
    );

    // Edge → hub: delivered to the CSMS side, and the hub learns the way back.
    let at_hub = decode_overlay(&on_wire, &limits).unwrap_or_else(|e| panic!("{e}"));
    let got = hub.receive(
        &mut hub_table,
        Ingress::Node {
            link: HUB_FROM_EDGE,
            allow: &hub_allow,
        },
        at_hub,
        now,
    );
    assert!(matches!(got.decision, Decision::Deliver(_)));
    assert_eq!(
        hub_table.lookup("CP-1", now).map(|h| h.link),
        Some(HUB_FROM_EDGE)
    );

    // The CSMS answers; the hub addresses the reply to path[0] and routes it down.
    let reply = r#"[3,"CP-1","CSMS","uuid-1",{"currentTime":"2025-01-01T00:00:00Z"}]"#;
    let reply = decode_overlay(reply, &limits).unwrap_or_else(|e| panic!("{e}"));
    let Decision::Forward { link, frame } = hub
        .receive(
            &mut hub_table,
            Ingress::Plain { link: LinkId(21) },
            reply,
            now,
        )
        .decision
    else {
        panic!("hub did not forward the reply");
    };
    assert_eq!(link, HUB_FROM_EDGE);
    let on_wire = frame.to_text();

    // Hub → edge → charger, with the charger's own id restored.
    let at_edge = decode_overlay(&on_wire, &limits).unwrap_or_else(|e| panic!("{e}"));
    let Decision::Forward { link, frame } = edge
        .receive(
            &mut edge_table,
            Ingress::Node {
                link: EDGE_UP,
                allow: &edge_allow,
            },
            at_edge,
            now,
        )
        .decision
    else {
        panic!("edge did not forward the reply");
    };
    assert_eq!(link, CHARGER);
    let (plain, _) = correlation::overlay_reply_to_plain(&mut edge_corr, frame)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plain.to_plain_string(),
        r#"[3,"1",{"currentTime":"2025-01-01T00:00:00Z"}]"#
    );
    assert!(edge_corr.is_empty());
}
