//! What the `ocpp-node` subcommands other than `run` share: they talk to a running node's
//! admin API and render its answers for humans, or as JSON for scripts.

pub mod client;
pub mod status;
pub mod tables;
pub mod wait;
