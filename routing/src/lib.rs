//! Routing for the OCPP overlay, as pure logic with no I/O (the quinn-proto model).
//!
//! This crate will hold the routing table (static routes, routes learned when a node connects,
//! announced routes with expiry, auto-learned routes and the default route), the forwarding
//! decision for each frame (plain ↔ overlay translation at the edge, network-path append, loop and
//! hop-limit checks, CALLERROR for unreachable destinations), request correlation keyed by
//! (source node, message id) with timeouts, and the `NotifyNetworkTopology` announcements that
//! nodes exchange. The `node` crate drives it from its sockets; see ARCHITECTURE §3.4 and §6.1–6.2.
//! It is filled by the overlay-routing work; today it is intentionally empty.
