//! What every task of a running node shares: config, schemas, store, metrics and the sessions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio::sync::Notify;
use wire::OcppVersion;

use crate::auth::Verifier;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::schema::SchemaRegistry;
use crate::store::Store;

/// One connected charger, as the admin API and a newer duplicate connection see it.
pub struct SessionInfo {
    pub conn_id: u64,
    pub version: OcppVersion,
    pub remote: SocketAddr,
    pub listener: String,
    pub connected_at: DateTime<Utc>,
    /// Wakes the session to close itself: a newer connection took its identity.
    pub replaced: Arc<Notify>,
}

/// A listener's name and the URL it really listens on (port 0 resolved).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerInfo {
    pub name: String,
    pub url: String,
    #[serde(rename = "securityProfile")]
    pub security_profile: u8,
}

pub struct Node {
    pub config: Config,
    pub schemas: SchemaRegistry,
    pub store: Store,
    pub metrics: Metrics,
    pub verifier: Verifier,
    pub sessions: DashMap<String, SessionInfo>,
    pub listeners: OnceLock<Vec<ListenerInfo>>,
    pub started: Instant,
    next_conn_id: AtomicU64,
}

impl Node {
    pub fn new(config: Config, store: Store, metrics: Metrics) -> Self {
        Node {
            config,
            schemas: SchemaRegistry::new(),
            store,
            metrics,
            verifier: Verifier::new(),
            sessions: DashMap::new(),
            listeners: OnceLock::new(),
            started: Instant::now(),
            next_conn_id: AtomicU64::new(1),
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}
