//! The node answering in the CSMS's place: the shared answer builder ([`answers`]), the one
//! authorization decision ([`authorize`]), and the standalone local controller's CSMS
//! ([`csms`]) with its transaction records ([`transactions`]).

pub mod answers;
pub mod authorize;
pub mod csms;
pub mod transactions;
