//! The ocpp-node daemon as a library: every module of the binary, so that integration tools
//! (the config-parser fuzz target) can drive the same code the daemon runs.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod config;
pub mod csms_connector;
pub mod dial;
pub mod handshake;
pub mod ip_guard;
pub mod journal;
pub mod listener;
pub mod local_csms;
pub mod metrics;
pub mod outbox;
pub mod overlay_link;
pub mod response_cache;
pub mod router;
pub mod schema;
pub mod secrets;
pub mod session;
pub mod small_file;
pub mod state;
pub mod status;
pub mod store;
pub mod tls;
pub mod transactions;
pub mod uplink;
