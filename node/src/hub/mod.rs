//! The hub role's CSMS side: one socket per charger toward an unmodified CSMS, mirroring each
//! charger's presence ([`presence`]), and the memory of the CSMS's answers that keeps an edge's
//! replays from reaching the CSMS twice ([`response_cache`]).

pub mod presence;
pub mod response_cache;

pub use presence::{Delivery, Effect, Presence};
