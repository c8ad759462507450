//! How much CPU the engine itself costs per message, without sockets: an edge engine and a hub
//! engine wired together in memory, N chargers on the edge, each sending Heartbeat CALLs that
//! the CSMS side answers at once. The number decides whether the engine can stay one task per
//! process (README, design notes): it must be far below what the sockets around it cost.
//!
//! `cargo bench -p ocpp-node --bench engine` (release); prints one line per charger count.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use ocpp_node::core::metrics::Metrics;
use ocpp_node::engine::{Action, Engine, Input, Outbound, Peer, Settings};
use ocpp_node::hub::Presence;
use ocpp_node::validate::schema::SchemaRegistry;
use ocpp_node::validate::{Busy, Validate};
use routing::{AllowList, LinkId};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use wire::OcppVersion;

const UP: LinkId = LinkId(1_000_000_000);

fn settings(own: &str, owns_csms: bool) -> Settings {
    Settings {
        own_id: own.to_owned(),
        hop_limit: 8,
        owns_csms,
        request_timeout: Duration::from_secs(30),
        announce_ttl: Duration::from_secs(300),
        csms_grace: Duration::from_secs(10),
        allow_move: false,
        limits: wire::Limits::default(),
    }
}

fn engine(own: &str, hub: bool) -> Engine {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let mut e = Engine::new(settings(own, hub), metrics);
    if hub {
        e = e.with_hub(Presence::new(
            Arc::new(AtomicU64::new(2_000_000_000)),
            Duration::from_secs(10),
            Duration::from_secs(30),
            wire::Limits::default(),
        ));
    }
    e.add_stage(Box::new(Validate::new(Arc::new(SchemaRegistry::new()))));
    e.add_stage(Box::new(Busy));
    e
}

/// Moves frames between the two engines until both are quiet; what is written to plain links
/// (chargers on the edge: `false`; CSMS sockets on the hub: `true`) is collected in `out`.
fn pump(edge: &mut Engine, hub: &mut Engine, now: Instant, out: &mut Vec<(bool, LinkId, String)>) {
    loop {
        let mut moved = false;
        while let Some(a) = edge.poll_action() {
            moved = true;
            match a {
                Action::Send {
                    link,
                    out: Outbound::Text(t),
                    ..
                } if link == UP => hub.handle(
                    Input::Text {
                        link: UP,
                        text: Utf8Bytes::from(t),
                    },
                    now,
                ),
                Action::Send {
                    link,
                    out: Outbound::Text(t),
                    ..
                } => out.push((false, link, t)),
                _ => {}
            }
        }
        while let Some(a) = hub.poll_action() {
            moved = true;
            match a {
                Action::Send {
                    link,
                    out: Outbound::Text(t),
                    ..
                } if link == UP => edge.handle(
                    Input::Text {
                        link: UP,
                        text: Utf8Bytes::from(t),
                    },
                    now,
                ),
                Action::Send {
                    link,
                    out: Outbound::Text(t),
                    ..
                } => out.push((true, link, t)),
                Action::OpenCsms { link, .. } => hub.handle(Input::CsmsOpen { link }, now),
                _ => {}
            }
        }
        if !moved {
            edge.idle(now);
            hub.idle(now);
            if edge.poll_timeout().is_none() {
                return;
            }
            // idle() may have queued an announcement; one more round moves it.
            let mut again = false;
            while let Some(a) = edge.poll_action() {
                again = true;
                if let Action::Send {
                    link,
                    out: Outbound::Text(t),
                    ..
                } = a
                    && link == UP
                {
                    hub.handle(
                        Input::Text {
                            link: UP,
                            text: Utf8Bytes::from(t),
                        },
                        now,
                    );
                }
            }
            if !again {
                return;
            }
        }
    }
}

fn run(chargers: u64, rounds: u64) {
    let (mut edge, mut hub) = (engine("edge-b", false), engine("hub-b", true));
    let now = Instant::now();
    let remote = "127.0.0.1:9".parse().expect("addr");
    hub.handle(
        Input::Up {
            link: UP,
            peer: Peer::Node {
                peer: "edge-b".into(),
                allow: AllowList::any(),
                uplink: None,
                remote,
            },
        },
        now,
    );
    edge.handle(
        Input::Up {
            link: UP,
            peer: Peer::Node {
                peer: "hub-b".into(),
                allow: AllowList::any(),
                uplink: Some("up".into()),
                remote,
            },
        },
        now,
    );
    let mut out = Vec::new();
    for c in 1..=chargers {
        edge.handle(
            Input::Up {
                link: LinkId(c),
                peer: Peer::Charger {
                    id: format!("CP{c}"),
                    version: OcppVersion::V16,
                    max_pending: 4,
                },
            },
            now,
        );
    }
    pump(&mut edge, &mut hub, now, &mut out);
    out.clear();
    let started = Instant::now();
    let mut answered = 0u64;
    for r in 0..rounds {
        for c in 1..=chargers {
            let call = format!(r#"[2,"h{r}","Heartbeat",{{}}]"#);
            edge.handle(
                Input::Text {
                    link: LinkId(c),
                    text: Utf8Bytes::from(call),
                },
                now,
            );
        }
        pump(&mut edge, &mut hub, now, &mut out);
        // The CSMS answers every CALL it got, under the id it got.
        let at_csms: Vec<(LinkId, String)> = out
            .drain(..)
            .filter(|(is_hub, _, _)| *is_hub)
            .map(|(_, link, text)| (link, text))
            .collect();
        for (link, text) in at_csms {
            let id = text.split('"').nth(1).unwrap_or_default();
            let reply = format!(r#"[3,"{id}",{{"currentTime":"2026-12-05T10:00:00Z"}}]"#);
            hub.handle(
                Input::Text {
                    link,
                    text: Utf8Bytes::from(reply),
                },
                now,
            );
        }
        pump(&mut edge, &mut hub, now, &mut out);
        answered += out.drain(..).filter(|(is_hub, _, _)| !*is_hub).count() as u64;
    }
    let elapsed = started.elapsed();
    let per = elapsed.as_nanos() as f64 / answered.max(1) as f64;
    println!(
        "chargers {chargers:>5}  answered {answered:>8}  {:>6.2} us per round trip (edge + hub engines, both ways)  {:>9.0} round trips/s on one core",
        per / 1000.0,
        1e9 / per
    );
    assert_eq!(answered, chargers * rounds, "every Heartbeat answered");
}

fn main() {
    for (chargers, rounds) in [(1, 100_000), (100, 1_000), (1_000, 100), (10_000, 10)] {
        run(chargers, rounds);
    }
}
