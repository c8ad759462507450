//! `NotifyNetworkTopology`: telling neighbours which ids are reachable through this node
//! (ARCHITECTURE §3.4, §6.2).
//!
//! Payload (the `payload` of a SEND `NotifyNetworkTopology`):
//! ```json
//! {"networkTopologyInformation": {"routingNode": "edge-1",
//!   "routes": [{"destinationId": "CP-1", "priority": 0, "ocppVersion": "ocpp2.0.1"}],
//!   "withdrawn": ["CP-2"], "full": false, "ttl": 300,
//!   "notBefore": "2025-01-01T00:00:00Z", "notAfter": "2025-01-01T00:05:00Z"}}
//! ```
//! * The first announcement after a link comes up is full; later ones are deltas against what
//!   was last announced on that link.
//! * `ttl` is authoritative, on the receiver's clock; `notBefore`/`notAfter` are carried for
//!   humans and older peers only, because site clocks drift.
//! * Split horizon: a route is never announced over the link it was learned from.
//! * Older peers may send the §3.4 form without `full`, `withdrawn` or `ttl`: a missing `full`
//!   means full (that form always lists everything), a missing `ttl` means the receiver's default.
//!
//! Unlike per-frame forwarding, this payload is parsed and built with serde_json: it is
//! addressed to this node, not passed through.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wire::OcppVersion;

use crate::glob::AllowList;
use crate::table::{NewRoute, Priority, Removed, Source, Table, TableError};
use crate::{LinkId, is_reserved};

/// The SEND action that carries announcements.
pub const ACTION: &str = "NotifyNetworkTopology";

/// One reachable id as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncedRoute {
    pub destination_id: String,
    pub priority: Priority,
    pub ocpp_version: Option<OcppVersion>,
}

/// A decoded or to-be-encoded announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub routing_node: String,
    pub routes: Vec<AnnouncedRoute>,
    pub withdrawn: Vec<String>,
    pub full: bool,
    /// Seconds. `None` only on receipt from a peer that did not send it.
    pub ttl: Option<u64>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    #[error("NotifyNetworkTopology payload is malformed: {0}")]
    Malformed(String),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    network_topology_information: Info,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    routing_node: String,
    #[serde(default)]
    routes: Vec<RouteJson>,
    #[serde(default)]
    withdrawn: Vec<String>,
    #[serde(default = "full_by_default")]
    full: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_after: Option<String>,
}

fn full_by_default() -> bool {
    true
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RouteJson {
    destination_id: String,
    #[serde(default)]
    priority: Priority,
    // Kept as text so that one unknown version rejects one route, not the whole announcement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ocpp_version: Option<String>,
}

impl Announcement {
    /// The SEND payload.
    pub fn to_payload(&self) -> String {
        let info = Info {
            routing_node: self.routing_node.clone(),
            routes: self
                .routes
                .iter()
                .map(|r| RouteJson {
                    destination_id: r.destination_id.clone(),
                    priority: r.priority,
                    ocpp_version: r.ocpp_version.map(|v| v.subprotocol().to_owned()),
                })
                .collect(),
            withdrawn: self.withdrawn.clone(),
            full: self.full,
            ttl: self.ttl,
            not_before: self.not_before.clone(),
            not_after: self.not_after.clone(),
        };
        let envelope = Envelope {
            network_topology_information: info,
        };
        // Strings, integers and bools only: serialization cannot fail.
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    /// Parses a received SEND payload. Routes with an unknown `ocppVersion` are kept with no
    /// version; see [`Announcement::parse`] to see them reported.
    pub fn from_payload(json: &str) -> Result<Self, AnnounceError> {
        Self::parse(json).map(|(a, _)| a)
    }

    /// Like [`Announcement::from_payload`], also returning the ids whose `ocppVersion` was
    /// unknown (those routes are kept with `ocpp_version: None`).
    pub fn parse(json: &str) -> Result<(Self, Vec<String>), AnnounceError> {
        let envelope: Envelope =
            serde_json::from_str(json).map_err(|e| AnnounceError::Malformed(e.to_string()))?;
        let info = envelope.network_topology_information;
        let mut unknown = Vec::new();
        let routes = info
            .routes
            .into_iter()
            .map(|r| {
                let ocpp_version = match r.ocpp_version {
                    None => None,
                    Some(v) => match v.parse::<OcppVersion>() {
                        Ok(v) => Some(v),
                        Err(_) => {
                            unknown.push(r.destination_id.clone());
                            None
                        }
                    },
                };
                AnnouncedRoute {
                    destination_id: r.destination_id,
                    priority: r.priority,
                    ocpp_version,
                }
            })
            .collect();
        Ok((
            Announcement {
                routing_node: info.routing_node,
                routes,
                withdrawn: info.withdrawn,
                full: info.full,
                ttl: info.ttl,
                not_before: info.not_before,
                not_after: info.not_after,
            },
            unknown,
        ))
    }

    /// A delta with nothing in it. Still worth sending as a keep-alive before the ttl runs out,
    /// not worth sending on a change trigger.
    pub fn is_empty_delta(&self) -> bool {
        !self.full && self.routes.is_empty() && self.withdrawn.is_empty()
    }
}

/// How long the receiver keeps the routes, and the informative timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    pub ttl: Duration,
    /// Passed through as given (RFC 3339 from the caller's clock); informative only.
    pub not_before: Option<String>,
    pub not_after: Option<String>,
}

/// Builds announcements per link: full first, then deltas.
#[derive(Debug, Clone)]
pub struct Announcer {
    own_id: String,
    // What each link was last told. A link missing here gets a full announcement next.
    last: HashMap<LinkId, BTreeMap<String, (Priority, Option<OcppVersion>)>>,
}

impl Announcer {
    pub fn new(own_id: impl Into<String>) -> Self {
        Announcer {
            own_id: own_id.into(),
            last: HashMap::new(),
        }
    }

    /// A (re)connected link: the next announcement on it is full.
    pub fn link_up(&mut self, link: LinkId) {
        self.last.remove(&link);
    }

    pub fn link_down(&mut self, link: LinkId) {
        self.last.remove(&link);
    }

    /// What `link` should hear now: the routes of `table`, minus those learned from `link`.
    ///
    /// Announced: the preferred live static, connect or announced entry of each id. Auto-learned
    /// entries are guesses from traffic and are not passed on. Priorities are announced as
    /// stored.
    pub fn routes_for(table: &Table, link: LinkId, now: Instant) -> Vec<AnnouncedRoute> {
        let mut dests: Vec<&str> = table
            .iter()
            .filter(|e| e.source != Source::AutoLearn)
            .map(|e| e.dest.as_str())
            .collect();
        dests.sort_unstable();
        dests.dedup();
        dests
            .into_iter()
            .filter_map(|dest| Self::route_for(table, dest, link, now))
            .collect()
    }

    /// What `link` should hear about one id now: its preferred live static, connect or
    /// announced entry, unless that entry leads through `link` itself.
    pub fn route_for(
        table: &Table,
        dest: &str,
        link: LinkId,
        now: Instant,
    ) -> Option<AnnouncedRoute> {
        let best = table
            .entries(dest)
            .iter()
            .filter(|e| e.source != Source::AutoLearn)
            .filter(|e| e.expires.is_none_or(|t| now < t))
            .min_by_key(|e| (e.priority, e.source, e.link))?;
        // Split horizon on the preferred route: if we reach it through `link`, telling `link`
        // would invite it to route through us and back.
        (best.link != link).then(|| AnnouncedRoute {
            destination_id: best.dest.clone(),
            priority: best.priority,
            ocpp_version: best.version,
        })
    }

    /// Like [`Announcer::announce`], but only the ids in `changed` are looked at again, so a
    /// change costs in proportion to its size, not to the table's. A link that has not had its
    /// full announcement yet gets one (a scan of the table, once per link up).
    pub fn announce_changes<'c>(
        &mut self,
        link: LinkId,
        table: &Table,
        changed: impl IntoIterator<Item = &'c str>,
        validity: &Validity,
        now: Instant,
    ) -> Announcement {
        let Some(last) = self.last.get_mut(&link) else {
            return self.announce(link, table, validity, now);
        };
        let mut ids: Vec<&str> = changed.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let (mut routes, mut withdrawn) = (Vec::new(), Vec::new());
        for id in ids {
            match Self::route_for(table, id, link, now) {
                Some(route) => {
                    let value = (route.priority, route.ocpp_version);
                    if last.get(id) != Some(&value) {
                        last.insert(id.to_owned(), value);
                        routes.push(route);
                    }
                }
                None => {
                    if last.remove(id).is_some() {
                        withdrawn.push(id.to_owned());
                    }
                }
            }
        }
        Announcement {
            routing_node: self.own_id.clone(),
            routes,
            withdrawn,
            full: false,
            ttl: Some(validity.ttl.as_secs()),
            not_before: validity.not_before.clone(),
            not_after: validity.not_after.clone(),
        }
    }

    /// The announcement for `link` now, and remembers it as sent. Full when the link is new,
    /// else a delta (possibly empty: see [`Announcement::is_empty_delta`]).
    pub fn announce(
        &mut self,
        link: LinkId,
        table: &Table,
        validity: &Validity,
        now: Instant,
    ) -> Announcement {
        let current: BTreeMap<String, (Priority, Option<OcppVersion>)> =
            Self::routes_for(table, link, now)
                .into_iter()
                .map(|r| (r.destination_id, (r.priority, r.ocpp_version)))
                .collect();
        let to_route = |(id, (priority, version)): (&String, &(Priority, Option<OcppVersion>))| {
            AnnouncedRoute {
                destination_id: id.clone(),
                priority: *priority,
                ocpp_version: *version,
            }
        };
        let (full, routes, withdrawn) = match self.last.get(&link) {
            None => (true, current.iter().map(to_route).collect(), Vec::new()),
            Some(previous) => {
                let routes = current
                    .iter()
                    .filter(|(id, v)| previous.get(*id) != Some(*v))
                    .map(to_route)
                    .collect();
                let withdrawn = previous
                    .keys()
                    .filter(|id| !current.contains_key(*id))
                    .cloned()
                    .collect();
                (false, routes, withdrawn)
            }
        };
        self.last.insert(link, current);
        Announcement {
            routing_node: self.own_id.clone(),
            routes,
            withdrawn,
            full,
            ttl: Some(validity.ttl.as_secs()),
            not_before: validity.not_before.clone(),
            not_after: validity.not_after.clone(),
        }
    }
}

/// Receiver policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Whether an id already claimed by another link may move to this one (§6.2).
    pub allow_move: bool,
    /// Used when the announcement carries no `ttl`.
    pub default_ttl: Duration,
    /// Upper bound on a peer's `ttl`, so a peer cannot pin routes forever.
    pub max_ttl: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            allow_move: false,
            default_ttl: Duration::from_secs(300),
            max_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why one announced route was not installed. Each is worth a log line; `NotAllowed` and
/// `ClaimedElsewhere` are security events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteRejection {
    /// Outside the link's allow-list.
    NotAllowed,
    /// Already reachable through another link (announced or connected), and moves are off.
    ClaimedElsewhere {
        link: LinkId,
    },
    /// `"CSMS"`, `"*"` or empty.
    Reserved,
    Table(TableError),
}

/// An id that moved to the announcing link (`allow_move`). If `source` is
/// [`Source::Connect`], the caller closes that old plain connection: a duplicate identity
/// replaces the older one (§4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub id: String,
    pub from_link: LinkId,
    pub source: Source,
}

/// What applying an announcement did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Ids installed or refreshed from `routes`.
    pub installed: Vec<String>,
    /// Entries taken out by `withdrawn` or by a full replacement; `withdrawn.unreachable` lists
    /// the ids whose mirrored CSMS sockets close.
    pub withdrawn: Removed,
    pub moved: Vec<Moved>,
    pub rejected: Vec<(String, RouteRejection)>,
}

/// Installs an announcement received on `from`, whose neighbour may speak for `allow`.
///
/// Expiry is `now + ttl` (capped by `max_ttl`) for every route the link has announced, not
/// only those in this message: any announcement proves the link alive and restates its set.
pub fn apply(
    table: &mut Table,
    from: LinkId,
    allow: &AllowList,
    announcement: &Announcement,
    options: &ApplyOptions,
    now: Instant,
) -> Applied {
    let mut out = Applied::default();
    let ttl = announcement
        .ttl
        .map_or(options.default_ttl, Duration::from_secs)
        .min(options.max_ttl);
    let expires = now.checked_add(ttl);
    let withdraw_sources = [Source::Announce, Source::AutoLearn];

    let mut withdrawn_ids: Vec<String> = announcement.withdrawn.clone();
    if announcement.full {
        let keep: HashSet<&str> = announcement
            .routes
            .iter()
            .map(|r| r.destination_id.as_str())
            .collect();
        let mut stale: Vec<String> = table
            .iter()
            .filter(|e| e.link == from && e.source == Source::Announce)
            .filter(|e| !keep.contains(e.dest.as_str()))
            .map(|e| e.dest.clone())
            .collect();
        stale.sort();
        withdrawn_ids.extend(stale);
    }
    for id in &withdrawn_ids {
        // Only this link's own claims: a neighbour must not withdraw someone else's route.
        let removed = table.withdraw(id, from, &withdraw_sources, now);
        out.withdrawn.entries.extend(removed.entries);
        out.withdrawn.unreachable.extend(removed.unreachable);
    }

    for route in &announcement.routes {
        let id = route.destination_id.as_str();
        if id.is_empty() || is_reserved(id) {
            out.rejected.push((id.to_owned(), RouteRejection::Reserved));
            continue;
        }
        if !allow.allows(id) {
            out.rejected
                .push((id.to_owned(), RouteRejection::NotAllowed));
            continue;
        }
        let claims: Vec<(LinkId, Source)> = table
            .entries(id)
            .iter()
            .filter(|e| e.link != from && e.expires.is_none_or(|t| now < t))
            .filter(|e| matches!(e.source, Source::Announce | Source::Connect))
            .map(|e| (e.link, e.source))
            .collect();
        if let Some(&(link, _)) = claims.first()
            && !options.allow_move
        {
            out.rejected
                .push((id.to_owned(), RouteRejection::ClaimedElsewhere { link }));
            continue;
        }
        let installed = table.insert(NewRoute {
            dest: id.to_owned(),
            link: from,
            priority: route.priority,
            source: Source::Announce,
            expires,
            version: route.ocpp_version,
        });
        if let Err(e) = installed {
            out.rejected.push((id.to_owned(), RouteRejection::Table(e)));
            continue;
        }
        // Installed first, then the old claims removed, so the id is never reported unreachable
        // in between (the hub would close and reopen the CSMS socket for nothing).
        for (link, source) in claims {
            table.remove(id, link, source, now);
            out.moved.push(Moved {
                id: id.to_owned(),
                from_link: link,
                source,
            });
        }
        out.installed.push(id.to_owned());
    }

    table.refresh(from, Source::Announce, expires);
    // An id withdrawn and re-announced in the one message never went away.
    out.withdrawn
        .unreachable
        .retain(|id| !table.is_present(id, now));
    out.withdrawn.unreachable.sort();
    out.withdrawn.unreachable.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN: LinkId = LinkId(1);
    const UP: LinkId = LinkId(2);
    const OTHER: LinkId = LinkId(3);

    fn validity() -> Validity {
        Validity {
            ttl: Duration::from_secs(300),
            not_before: Some("2025-01-01T00:00:00Z".to_owned()),
            not_after: Some("2025-01-01T00:05:00Z".to_owned()),
        }
    }

    fn connect(t: &mut Table, id: &str, link: LinkId, version: Option<OcppVersion>) {
        let r = t.insert(NewRoute {
            dest: id.to_owned(),
            link,
            priority: 0,
            source: Source::Connect,
            expires: None,
            version,
        });
        assert!(r.is_ok());
    }

    fn ids(routes: &[AnnouncedRoute]) -> Vec<&str> {
        routes.iter().map(|r| r.destination_id.as_str()).collect()
    }

    fn ann(routes: &[&str], withdrawn: &[&str], full: bool, ttl: Option<u64>) -> Announcement {
        Announcement {
            routing_node: "edge-1".to_owned(),
            routes: routes
                .iter()
                .map(|id| AnnouncedRoute {
                    destination_id: (*id).to_owned(),
                    priority: 0,
                    ocpp_version: Some(OcppVersion::V16),
                })
                .collect(),
            withdrawn: withdrawn.iter().map(|s| (*s).to_owned()).collect(),
            full,
            ttl,
            not_before: None,
            not_after: None,
        }
    }

    fn allow(p: &[&str]) -> AllowList {
        AllowList::parse(p.iter().copied()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn incremental_deltas_match_full_recomputation() {
        let now = Instant::now();
        let mut t = Table::default();
        let (mut full, mut inc) = (Announcer::new("edge-1"), Announcer::new("edge-1"));
        for a in [&mut full, &mut inc] {
            a.link_up(UP);
        }
        // Both start with a full announcement of nothing.
        assert!(full.announce(UP, &t, &validity(), now).full);
        let first = inc.announce_changes(UP, &t, ["CP-0"], &validity(), now);
        assert!(first.full, "a link's first announcement is full");
        let mut changed: Vec<String> = Vec::new();
        for step in 0..40u32 {
            let id = format!("CP-{}", step % 7);
            if step % 3 == 2 {
                t.remove(&id, DOWN, Source::Connect, now);
            } else {
                connect(&mut t, &id, DOWN, Some(OcppVersion::V16));
            }
            changed.push(id);
            if step % 4 == 3 {
                let a = full.announce(UP, &t, &validity(), now);
                let b = inc.announce_changes(
                    UP,
                    &t,
                    changed.iter().map(String::as_str),
                    &validity(),
                    now,
                );
                assert_eq!(ids(&a.routes), ids(&b.routes), "step {step}");
                assert_eq!(a.withdrawn, b.withdrawn, "step {step}");
                changed.clear();
            }
        }
    }

    #[test]
    fn first_full_then_deltas() {
        let now = Instant::now();
        let mut t = Table::default();
        let mut a = Announcer::new("edge-1");
        connect(&mut t, "CP-1", DOWN, Some(OcppVersion::V201));
        a.link_up(UP);
        let first = a.announce(UP, &t, &validity(), now);
        assert!(first.full);
        assert_eq!(ids(&first.routes), ["CP-1"]);
        assert_eq!(first.routes[0].ocpp_version, Some(OcppVersion::V201));
        assert_eq!(first.ttl, Some(300));

        let none = a.announce(UP, &t, &validity(), now);
        assert!(none.is_empty_delta());

        connect(&mut t, "CP-2", DOWN, None);
        let delta = a.announce(UP, &t, &validity(), now);
        assert!(!delta.full);
        assert_eq!(ids(&delta.routes), ["CP-2"]);
        assert!(delta.withdrawn.is_empty());

        t.remove_link(DOWN, now);
        let delta = a.announce(UP, &t, &validity(), now);
        assert!(delta.routes.is_empty());
        assert_eq!(delta.withdrawn, ["CP-1", "CP-2"]);

        // A priority change is re-announced.
        connect(&mut t, "CP-3", DOWN, None);
        a.announce(UP, &t, &validity(), now);
        let r = t.insert(NewRoute {
            dest: "CP-3".to_owned(),
            link: DOWN,
            priority: 4,
            source: Source::Connect,
            expires: None,
            version: None,
        });
        assert!(r.is_ok());
        let delta = a.announce(UP, &t, &validity(), now);
        assert_eq!(delta.routes.first().map(|r| r.priority), Some(4));

        // Reconnect: full again.
        a.link_down(UP);
        a.link_up(UP);
        assert!(a.announce(UP, &t, &validity(), now).full);
    }

    #[test]
    fn split_horizon_and_no_guesses() {
        let now = Instant::now();
        let mut t = Table::default();
        connect(&mut t, "CP-1", DOWN, None);
        connect(&mut t, "hubside", UP, None);
        let r = t.insert(NewRoute {
            dest: "guess".to_owned(),
            link: DOWN,
            priority: 0,
            source: Source::AutoLearn,
            expires: None,
            version: None,
        });
        assert!(r.is_ok());
        assert_eq!(ids(&Announcer::routes_for(&t, UP, now)), ["CP-1"]);
        assert_eq!(ids(&Announcer::routes_for(&t, DOWN, now)), ["hubside"]);
    }

    /// Multi-hop: a node announces its directly linked node peers upstream like its chargers
    /// (so a hub reaches an edge behind a mid node), never back to the peer itself, and no
    /// other link can claim the peer's id while it is linked.
    #[test]
    fn a_linked_node_is_announced_upstream_and_cannot_be_claimed_elsewhere() {
        let now = Instant::now();
        let mut t = Table::default();
        assert!(t.neighbour_up("edge-2", DOWN, now).is_ok());
        assert_eq!(ids(&Announcer::routes_for(&t, UP, now)), ["edge-2"]);
        assert!(Announcer::routes_for(&t, DOWN, now).is_empty());

        let applied = apply(
            &mut t,
            OTHER,
            &allow(&["*"]),
            &ann(&["edge-2"], &[], true, Some(60)),
            &ApplyOptions::default(),
            now,
        );
        assert_eq!(
            applied.rejected,
            vec![(
                "edge-2".to_owned(),
                RouteRejection::ClaimedElsewhere { link: DOWN }
            )]
        );
        assert_eq!(t.lookup("edge-2", now).map(|h| h.link), Some(DOWN));

        // The upstream side: the announced node is reachable through the announcing link, and
        // goes with the link.
        let mut hub = Table::default();
        let applied = apply(
            &mut hub,
            UP,
            &allow(&["CP-*", "edge-2"]),
            &ann(&["edge-2"], &[], true, Some(60)),
            &ApplyOptions::default(),
            now,
        );
        assert_eq!(applied.installed, ["edge-2"]);
        assert_eq!(hub.lookup("edge-2", now).map(|h| h.link), Some(UP));
        assert_eq!(hub.remove_link(UP, now).unreachable, ["edge-2"]);
    }

    #[test]
    fn payload_shape_and_round_trip() {
        let a = Announcement {
            routing_node: "edge-1".to_owned(),
            routes: vec![AnnouncedRoute {
                destination_id: "CP-1".to_owned(),
                priority: 0,
                ocpp_version: Some(OcppVersion::V201),
            }],
            withdrawn: vec!["CP-2".to_owned()],
            full: false,
            ttl: Some(300),
            not_before: Some("2025-01-01T00:00:00Z".to_owned()),
            not_after: None,
        };
        let json = a.to_payload();
        assert_eq!(
            json,
            r#"{"networkTopologyInformation":{"routingNode":"edge-1","routes":[{"destinationId":"CP-1","priority":0,"ocppVersion":"ocpp2.0.1"}],"withdrawn":["CP-2"],"full":false,"ttl":300,"notBefore":"2025-01-01T00:00:00Z"}}"#
        );
        assert_eq!(Announcement::from_payload(&json), Ok(a));
    }

    #[test]
    fn older_form_is_full_with_default_ttl() {
        let json = r#"{"networkTopologyInformation":{"routingNode":"e","routes":[{"destinationId":"CP-1","priority":0}],"notBefore":"a","notAfter":"b"}}"#;
        let a = Announcement::from_payload(json).unwrap_or_else(|e| panic!("{e}"));
        assert!(a.full);
        assert_eq!(a.ttl, None);
        assert!(a.withdrawn.is_empty());
        assert_eq!(a.not_after.as_deref(), Some("b"));
    }

    #[test]
    fn malformed_and_unknown_versions() {
        assert!(Announcement::from_payload("{}").is_err());
        assert!(Announcement::from_payload("[]").is_err());
        assert!(
            Announcement::from_payload(r#"{"networkTopologyInformation":{"routingNode":1}}"#)
                .is_err()
        );
        let json = r#"{"networkTopologyInformation":{"routingNode":"e","routes":[{"destinationId":"CP-1","ocppVersion":"ocpp9"}]}}"#;
        let (a, unknown) = Announcement::parse(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(unknown, ["CP-1"]);
        assert_eq!(a.routes[0].ocpp_version, None);
    }

    #[test]
    fn apply_installs_with_ttl_on_our_clock() {
        let now = Instant::now();
        let mut t = Table::default();
        let got = apply(
            &mut t,
            DOWN,
            &allow(&["CP-*"]),
            &ann(&["CP-1", "CP-2"], &[], true, Some(60)),
            &ApplyOptions::default(),
            now,
        );
        assert_eq!(got.installed, ["CP-1", "CP-2"]);
        assert!(got.rejected.is_empty());
        let e = t.best_exact("CP-1", now).cloned();
        assert_eq!(e.as_ref().map(|e| e.link), Some(DOWN));
        assert_eq!(
            e.as_ref().and_then(|e| e.expires),
            Some(now + Duration::from_secs(60))
        );
        assert_eq!(e.and_then(|e| e.version), Some(OcppVersion::V16));
        // A later empty delta refreshes every route of the link.
        let later = now + Duration::from_secs(50);
        apply(
            &mut t,
            DOWN,
            &allow(&["CP-*"]),
            &ann(&[], &[], false, Some(60)),
            &ApplyOptions::default(),
            later,
        );
        assert!(t.is_present("CP-2", now + Duration::from_secs(100)));
        let expired = t.expire(later + Duration::from_secs(60));
        assert_eq!(expired.unreachable, ["CP-1", "CP-2"]);
    }

    #[test]
    fn ttl_default_and_cap() {
        let now = Instant::now();
        let opts = ApplyOptions {
            default_ttl: Duration::from_secs(7),
            max_ttl: Duration::from_secs(100),
            ..ApplyOptions::default()
        };
        let mut t = Table::default();
        apply(
            &mut t,
            DOWN,
            &AllowList::any(),
            &ann(&["a"], &[], true, None),
            &opts,
            now,
        );
        assert_eq!(
            t.best_exact("a", now).and_then(|e| e.expires),
            Some(now + Duration::from_secs(7))
        );
        apply(
            &mut t,
            DOWN,
            &AllowList::any(),
            &ann(&["a"], &[], true, Some(u64::MAX)),
            &opts,
            now,
        );
        assert_eq!(
            t.best_exact("a", now).and_then(|e| e.expires),
            Some(now + Duration::from_secs(100))
        );
    }

    #[test]
    fn allow_list_and_reserved_ids() {
        let now = Instant::now();
        let mut t = Table::default();
        let got = apply(
            &mut t,
            DOWN,
            &allow(&["CP-*"]),
            &ann(&["CP-1", "EVIL", "CSMS", "*", ""], &[], true, None),
            &ApplyOptions::default(),
            now,
        );
        assert_eq!(got.installed, ["CP-1"]);
        assert_eq!(
            got.rejected,
            vec![
                ("EVIL".to_owned(), RouteRejection::NotAllowed),
                ("CSMS".to_owned(), RouteRejection::Reserved),
                ("*".to_owned(), RouteRejection::Reserved),
                (String::new(), RouteRejection::Reserved),
            ]
        );
    }

    #[test]
    fn second_claim_is_refused_unless_moves_are_allowed() {
        let now = Instant::now();
        let mut t = Table::default();
        let any = AllowList::any();
        apply(
            &mut t,
            DOWN,
            &any,
            &ann(&["CP-1"], &[], true, None),
            &ApplyOptions::default(),
            now,
        );
        connect(&mut t, "CP-9", LinkId(50), None);
        let got = apply(
            &mut t,
            OTHER,
            &any,
            &ann(&["CP-1", "CP-9"], &[], true, None),
            &ApplyOptions::default(),
            now,
        );
        assert!(got.installed.is_empty());
        assert_eq!(
            got.rejected,
            vec![
                (
                    "CP-1".to_owned(),
                    RouteRejection::ClaimedElsewhere { link: DOWN }
                ),
                (
                    "CP-9".to_owned(),
                    RouteRejection::ClaimedElsewhere { link: LinkId(50) }
                ),
            ]
        );
        let moving = ApplyOptions {
            allow_move: true,
            ..ApplyOptions::default()
        };
        let got = apply(
            &mut t,
            OTHER,
            &any,
            &ann(&["CP-1", "CP-9"], &[], true, None),
            &moving,
            now,
        );
        assert_eq!(got.installed, ["CP-1", "CP-9"]);
        assert_eq!(
            got.moved,
            vec![
                Moved {
                    id: "CP-1".to_owned(),
                    from_link: DOWN,
                    source: Source::Announce
                },
                Moved {
                    id: "CP-9".to_owned(),
                    from_link: LinkId(50),
                    source: Source::Connect
                },
            ]
        );
        // Moved, not lost: presence never dropped.
        assert!(got.withdrawn.unreachable.is_empty());
        assert_eq!(t.lookup("CP-1", now).map(|h| h.link), Some(OTHER));
        assert_eq!(t.entries("CP-1").len(), 1);
        // The same link re-announcing is a refresh, never a conflict.
        let got = apply(
            &mut t,
            OTHER,
            &any,
            &ann(&["CP-1"], &[], false, None),
            &ApplyOptions::default(),
            now,
        );
        assert_eq!(got.installed, ["CP-1"]);
    }

    #[test]
    fn full_replaces_and_deltas_withdraw_only_own_routes() {
        let now = Instant::now();
        let mut t = Table::default();
        let any = AllowList::any();
        let opts = ApplyOptions::default();
        apply(
            &mut t,
            DOWN,
            &any,
            &ann(&["a", "b", "c"], &[], true, None),
            &opts,
            now,
        );
        apply(
            &mut t,
            OTHER,
            &any,
            &ann(&["x"], &[], true, None),
            &opts,
            now,
        );
        t.auto_learn(&wire::Route::single("b"), DOWN, now);
        let got = apply(
            &mut t,
            DOWN,
            &any,
            &ann(&["a"], &[], true, None),
            &opts,
            now,
        );
        assert_eq!(got.withdrawn.unreachable, ["b", "c"]);
        // The auto-learned guess for b through the same link goes with it.
        assert!(t.entries("b").is_empty());
        assert_eq!(got.withdrawn.entries.len(), 3);
        // DOWN cannot withdraw OTHER's x.
        let got = apply(
            &mut t,
            DOWN,
            &any,
            &ann(&[], &["x", "a"], false, None),
            &opts,
            now,
        );
        assert_eq!(got.withdrawn.unreachable, ["a"]);
        assert!(t.is_present("x", now));
        // Withdrawn and re-added in one message: still present, not reported.
        let got = apply(
            &mut t,
            OTHER,
            &any,
            &ann(&["x"], &["x"], false, None),
            &opts,
            now,
        );
        assert!(got.withdrawn.unreachable.is_empty());
        assert!(t.is_present("x", now));
    }

    #[test]
    fn table_full_is_reported_per_route() {
        let now = Instant::now();
        let mut t = Table::new(crate::TableConfig {
            max_entries: 1,
            ..crate::TableConfig::default()
        });
        let got = apply(
            &mut t,
            DOWN,
            &AllowList::any(),
            &ann(&["a", "b"], &[], true, None),
            &ApplyOptions::default(),
            now,
        );
        assert_eq!(got.installed, ["a"]);
        assert!(
            matches!(got.rejected.as_slice(), [(id, RouteRejection::Table(TableError::Full { .. }))] if id == "b")
        );
    }

    #[test]
    fn sender_and_receiver_agree_after_deltas() {
        let now = Instant::now();
        let mut edge = Table::default();
        let mut hub = Table::default();
        let mut a = Announcer::new("edge-1");
        a.link_up(UP);
        let any = AllowList::any();
        let steps: [&[&str]; 4] = [&["a", "b"], &["b", "c", "d"], &[], &["a"]];
        for want in steps {
            edge.remove_link(DOWN, now);
            for id in want {
                connect(&mut edge, id, DOWN, None);
            }
            let msg = a.announce(UP, &edge, &validity(), now);
            let msg =
                Announcement::from_payload(&msg.to_payload()).unwrap_or_else(|e| panic!("{e}"));
            apply(&mut hub, DOWN, &any, &msg, &ApplyOptions::default(), now);
            let mut have: Vec<&str> = hub.iter().map(|e| e.dest.as_str()).collect();
            have.sort_unstable();
            assert_eq!(have, want);
        }
    }
}
