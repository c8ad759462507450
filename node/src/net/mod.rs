//! Getting connections: listeners with their per-IP limits, TLS (profiles 2 and 3), the HTTP
//! upgrade with authentication, password verification, and dialling out with backoff.

pub mod backoff;
pub mod dial;
pub mod handshake;
pub mod ip_guard;
pub mod listener;
pub mod password;
pub mod tls;
