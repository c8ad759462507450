//! The ocpp-node daemon as a library: every module of the binary, so that integration tools
//! (the config-parser fuzz target) can drive the same code the daemon runs.
//!
//! Layers, each depending only on those above it:
//! * `core` (bus types, store, metrics, ids, identity key) and `config` (pure parsing and
//!   checks; `config::files` is the start-up step that reads what a config names);
//! * `validate`, `local`, `edge`, `hub`: what the node decides about frames, as engine stages,
//!   local handlers and sub-state machines, without I/O;
//! * `dlm` (load management: the pure allocator and controller, the observing stage, the
//!   loop that reads the meter) and `modbus` (the devices and the tunnel's handler);
//! * `engine`: the sans-IO forwarding core those plug into;
//! * `net` (TLS, handshakes, dialling), `conn` (the link loop, one per WebSocket), `driver`
//!   (runs the engine on tokio), `admin`, `audit`, `cli`;
//! * `app`: the composition root that builds a role from these parts.

pub mod admin;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod conn;
pub mod core;
pub mod dlm;
pub mod driver;
pub mod edge;
pub mod engine;
pub mod hub;
pub mod local;
pub mod modbus;
pub mod net;
pub mod policy;
pub mod validate;
