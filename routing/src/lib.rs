//! Routing for the OCPP overlay, as pure logic: no I/O, no clocks, no async (the quinn-proto
//! model). The `node` crate owns the sockets and timers and drives this crate; see ARCHITECTURE
//! §3.2, §3.4, §6.1 and §6.2.
//!
//! Conventions throughout:
//! * Connections are opaque [`LinkId`]s chosen by the caller; a reconnect should get a new one.
//! * Time is always passed in as `now: Instant`; expiries are `Instant`s on this node's clock.
//! * Node and charger ids are compared byte for byte.
//! * Payloads are never parsed or re-serialized on the forwarding path.
//!
//! # Modules
//! * [`glob`]: [`Glob`] (`*`, `?`) and [`AllowList`], for node allow-lists and static rules.
//! * [`table`]: [`Table`]: exact routes (static, connect, announce, auto-learn; priority,
//!   expiry, OCPP version) → longest static glob rule → default route. Bounded. A linked node
//!   peer's own id is a connect route too ([`Table::neighbour_up`]), so node-originated CALLs
//!   can be addressed to it.
//! * [`forward`]: [`Forwarder::receive`] / [`Forwarder::decide`] turn an arriving
//!   [`wire::text::OverlayFrame`] into a [`Decision`]: deliver, forward, broadcast, reply with a
//!   CALLERROR, drop, or reject.
//! * [`correlation`]: [`Correlation`], the (source, message id) table kept only by the node
//!   that translates for a plain peer, and the edge translation helpers of §3.2 / §6.1.
//! * [`announce`]: `NotifyNetworkTopology`: [`Announcer`] builds full/delta announcements per
//!   link with split horizon; [`apply`](announce::apply) installs a received one.
//!
//! # Driving it from a node
//! ```text
//! on link up (overlay neighbour): announcer.link_up(link); send announcer.announce(...)
//! on inbound node peer up:        table.neighbour_up(<authenticated id>, link, now); re-announce
//! on uplink active:               table.set_default(Some(link))
//! on plain charger connect:       table.insert(NewRoute { source: Connect, .. }); re-announce
//! on overlay frame from link:     forwarder.receive(&mut table, Ingress::Node { link, allow }, frame, now)
//! on plain CALL from charger:     correlation::plain_call_to_overlay(..), then
//!                                 forwarder.receive(.., Ingress::Plain { link }, ..)
//! on NotifyNetworkTopology SEND:  announce::apply(&mut table, link, allow, &payload, opts, now)
//! on link close:                  table.remove_link(link, now); announcer.link_down(link)
//! on timer (table.next_expiry(),
//!           corr.next_deadline()): table.expire(now); corr.expire(now)
//! ```
//! [`Removed::unreachable`] (from `remove_link`, `expire`, and `Applied::withdrawn` of `apply`)
//! lists the ids that lost their last static, connect or announced route: the chargers whose
//! mirrored CSMS socket the hub closes (§3.4 presence mirroring).
//!
//! Every refusal is returned, never logged here: [`Decision::Reject`], `Decision::Drop(Loop)`,
//! [`announce::RouteRejection::NotAllowed`] and `ClaimedElsewhere` are security events for the
//! caller to record.

pub mod announce;
pub mod correlation;
pub mod forward;
pub mod glob;
pub mod table;

pub use announce::{AnnouncedRoute, Announcement, Announcer};
pub use correlation::Correlation;
pub use forward::{Decision, Forwarder, Ingress, Refusal, Rejection};
pub use glob::{AllowList, Glob};
pub use table::{NewRoute, Removed, RouteEntry, Source, Table, TableConfig};

use std::fmt;

/// An opaque connection handle chosen by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link#{}", self.0)
    }
}

/// Reserved `dest`: anycast to whatever serves as the CSMS (§3.1).
pub const CSMS: &str = "CSMS";
/// Reserved `dest`: broadcast, SEND only (§3.1).
pub const BROADCAST: &str = "*";

/// `"CSMS"` and `"*"` name roles, not nodes: never learned, never matched by glob rules.
pub fn is_reserved(id: &str) -> bool {
    id == CSMS || id == BROADCAST
}
