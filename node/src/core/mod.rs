//! Leaf modules every part of the node uses: the messages between connections and the engine
//! ([`bus`]), the shared handles of a running node ([`node`]), the store, metrics, secrets, the
//! node's identity key and message ids.

pub mod bus;
pub mod identity;
pub mod ids;
pub mod metrics;
pub mod node;
pub mod published;
pub mod secrets;
pub mod small_file;
pub mod store;
