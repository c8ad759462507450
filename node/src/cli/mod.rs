//! What the `ocpp-node` subcommands other than `run` share: they talk to a running node's
//! admin API and render its answers for humans, or as JSON for scripts; `keys`, `sign` and
//! `verify` work on key files and payloads alone.

pub mod client;
pub mod keys;
pub mod status;
pub mod tables;
pub mod wait;
