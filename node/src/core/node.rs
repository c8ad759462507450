//! What every task of a running node shares: config, the files it names, schemas, store,
//! metrics, the sessions, and the way to the engine.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio::sync::Notify;
use wire::OcppVersion;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::config::files::Loaded;
use crate::core::bus::EventTx;
use crate::core::metrics::Metrics;
use crate::core::secrets::Secrets;
use crate::core::store::Store;
use crate::net::password::Verifier;
use crate::validate::schema::SchemaRegistry;

/// One connected charger, as the admin API and a newer duplicate connection see it.
pub struct SessionInfo {
    pub conn_id: u64,
    pub version: OcppVersion,
    pub remote: SocketAddr,
    pub listener: String,
    pub connected_at: DateTime<Utc>,
    /// The listener's security profile the charger was admitted under.
    pub security_profile: u8,
    /// Written by the connection loop at every text frame, read by the admin API.
    pub last_message: Arc<LastMessage>,
    /// Wakes the session to close itself: a newer connection took its identity.
    pub replaced: Arc<Notify>,
}

/// When a charger last sent a text frame, as unix milliseconds (0: not yet). A relaxed atomic
/// store, because the connection loop writes it per frame and a lock or allocation there would
/// cost every frame for a value a human reads every few seconds.
#[derive(Debug, Default)]
pub struct LastMessage(AtomicU64);

impl LastMessage {
    pub fn touch(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.0.store(now, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<DateTime<Utc>> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(i64::try_from(ms).ok()?),
        }
    }
}

/// A listener's name and the URL it really listens on (port 0 resolved).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerInfo {
    pub name: String,
    pub url: String,
    #[serde(rename = "securityProfile")]
    pub security_profile: u8,
}

/// One configured uplink as the status page shows it. Updated by the dialer on state changes
/// only, never per frame.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UplinkStatus {
    pub name: String,
    pub url: String,
    pub priority: u32,
    /// "up" | "connecting" | "backoff" | "standby"
    pub state: &'static str,
    pub link: Option<u64>,
    #[serde(rename = "remoteAddr")]
    pub remote_addr: Option<String>,
    #[serde(rename = "lastError")]
    pub last_error: Option<String>,
}

pub struct Node {
    pub config: Config,
    /// What the files the config names hold (TLS, secrets), loaded once at start.
    pub files: Loaded,
    /// Every connection hands its frames to the engine here.
    pub events: EventTx,
    pub uplinks: Mutex<Vec<UplinkStatus>>,
    pub schemas: Arc<SchemaRegistry>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// The security event log; every security event is appended to it.
    pub audit: AuditLog,
    pub verifier: Verifier,
    pub sessions: DashMap<String, SessionInfo>,
    pub listeners: OnceLock<Vec<ListenerInfo>>,
    pub started: Instant,
    /// Numbers connections; shared with the engine, which numbers the hub's CSMS sockets.
    pub conn_ids: Arc<AtomicU64>,
    /// Load management's last decisions, for `/api/dlm` (set when `[dlm]` runs).
    pub dlm: OnceLock<Arc<crate::core::published::Published>>,
}

impl Node {
    pub fn new(
        config: Config,
        files: Loaded,
        store: Store,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        events: EventTx,
    ) -> Self {
        let mut uplinks: Vec<UplinkStatus> = config
            .uplink
            .iter()
            .map(|u| UplinkStatus {
                name: u.name.clone(),
                url: u.url.clone(),
                priority: u.priority,
                state: "standby",
                link: None,
                remote_addr: None,
                last_error: None,
            })
            .collect();
        uplinks.sort_by_key(|u| u.priority);
        Node {
            config,
            files,
            events,
            uplinks: Mutex::new(uplinks),
            schemas: Arc::new(SchemaRegistry::new()),
            store,
            metrics,
            audit,
            verifier: Verifier::new(),
            sessions: DashMap::new(),
            listeners: OnceLock::new(),
            started: Instant::now(),
            conn_ids: Arc::new(AtomicU64::new(1)),
            dlm: OnceLock::new(),
        }
    }

    pub fn secrets(&self) -> &Secrets {
        &self.files.secrets
    }

    pub fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a security event: a warning with a greppable `security_event=<kind>` field, a
    /// counter, and a record in the audit log. Never waits: it runs on hot paths, and the audit
    /// log takes the record through a bounded queue.
    pub fn security_event(&self, kind: &'static str, detail: impl std::fmt::Display) {
        self.metrics.security_event(kind);
        let detail = detail.to_string();
        tracing::warn!(security_event = %kind, "{detail}");
        self.audit.record(kind, detail);
    }

    /// Updates one uplink's status entry.
    pub fn set_uplink(&self, name: &str, update: impl FnOnce(&mut UplinkStatus)) {
        let mut uplinks = self.uplinks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = uplinks.iter_mut().find(|u| u.name == name) {
            update(u);
        }
    }
}
