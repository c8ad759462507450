//! Connections once they are up: the one link loop every WebSocket runs ([`link`]) with its
//! writer order ([`writer`]), and what differs per kind of peer: a charger's session
//! ([`charger`]), an overlay link ([`overlay`]), the uplink dialer with failover ([`uplink`]) and
//! the hub's CSMS sockets ([`csms`]).

pub mod charger;
pub mod csms;
pub mod link;
pub mod overlay;
pub mod uplink;
pub mod writer;
