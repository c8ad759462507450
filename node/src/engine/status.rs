//! The routing state as the admin API shows it: routes, overlay links, the hub's CSMS sockets.

use std::time::Instant;

use routing::LinkId;
use serde_json::{Value, json};

use super::{Core, HERE, Link};

impl Core {
    pub(super) fn status(&self, now: Instant) -> Value {
        let peer_of = |link: LinkId| match self.links.get(&link) {
            Some(Link::Node(o)) => Value::String(o.peer.clone()),
            Some(Link::Charger(c)) => Value::String(c.id.clone()),
            _ if link == HERE => Value::String(self.settings.own_id.clone()),
            _ => Value::Null,
        };
        let mut routes: Vec<Value> = self
            .table
            .iter()
            .map(|e| {
                json!({
                    "destination": e.dest,
                    "link": e.link.0,
                    "peer": peer_of(e.link),
                    "source": match e.source {
                        routing::Source::Static => "static",
                        routing::Source::Connect => "connect",
                        routing::Source::Announce => "announce",
                        routing::Source::AutoLearn => "autolearn",
                    },
                    "priority": e.priority,
                    "ocppVersion": e.version.map(|v| v.subprotocol()),
                    "expiresInS": e.expires.map(|t| t.saturating_duration_since(now).as_secs()),
                })
            })
            .collect();
        routes.sort_by(|a, b| a["destination"].as_str().cmp(&b["destination"].as_str()));
        let mut links: Vec<Value> = self
            .links
            .iter()
            .filter_map(|(id, l)| match l {
                Link::Node(o) => Some(json!({
                    "link": id.0,
                    "peer": o.peer,
                    "direction": if o.uplink.is_some() { "uplink" } else { "inbound" },
                    "remoteAddr": o.remote.to_string(),
                })),
                _ => None,
            })
            .collect();
        links.sort_by_key(|l| l["link"].as_u64());
        let csms = self
            .hub
            .as_ref()
            .map_or_else(|| Value::Array(Vec::new()), |h| h.status());
        json!({"routes": routes, "overlayLinks": links, "csmsConnections": csms})
    }
}
