//! What the `ocpp-node` subcommands other than `run` share: they talk to a running node's
//! admin API and render its answers for humans.

pub mod status;
