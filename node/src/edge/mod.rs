//! The edge role's durable outbound queue (ARCHITECTURE §6.3): which messages are journaled
//! ([`classes`]), the store tables ([`journal`]), the in-memory queues ([`queue`]), the 1.6
//! transaction id mapping ([`txids`]), and the engine stage that drives them all ([`outbox`]).

pub mod classes;
pub mod journal;
pub mod outbox;
pub mod queue;
pub mod txids;

pub use outbox::Outbox;
