//! The security event log (ARCHITECTURE §5): an append-only hash chain in the store file.
//!
//! Each record is a JSON object stored under its index in one redb table. Its `prev` is the
//! SHA-256 of the previous record's stored bytes (64 zeros for the first), so changing, inserting
//! or deleting a stored record breaks the chain there, and `ocpp-node audit verify` names the
//! record. Anyone who can write the file could recompute the whole chain, though, so the node
//! also signs the head (index and hash of the last record) with its Ed25519 identity key and
//! reports it: in its log every `audit.report_interval_s` and at start, and on the admin API. A
//! head that was seen elsewhere pins every record up to it.
//!
//! Security events happen in sync code on hot paths (a refused upgrade, a looping frame), so
//! recording one never waits: the event goes into a bounded channel, and one task appends what it
//! finds there through the store's writer thread. When the channel is full the event is counted
//! in `ocpp_audit_dropped_total` rather than queued without bound.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use prometheus::{IntCounter, IntGauge};
use redb::{ReadTransaction, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use redb::{ReadableTableMetadata as _, WriteTransaction};
use ring::signature;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::core::identity::NodeKey;
use crate::core::metrics::Metrics;
use crate::core::store::{Store, StoreError};

/// index → the record's JSON bytes, exactly as hashed.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_log");
/// What the next start compares against, and the last signed head. Not part of the chain.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_meta");
const META_CONFIG: &str = "config_sha256";
const META_PUBLIC_KEY: &str = "public_key";
const META_SIGNED_HEAD: &str = "signed_head";

/// `prev` of record 0.
pub const GENESIS: [u8; 32] = [0; 32];
/// Events waiting for the audit task; beyond this they are counted and dropped.
const QUEUE: usize = 1024;
/// Most events appended in one store job.
const MAX_BATCH: usize = 256;
/// Longest detail kept; details quote what peers sent (ids, users), and a flood of long ones
/// must not turn into a flood of long records.
const MAX_DETAIL_BYTES: usize = 1024;
/// How long a stopping node waits for its last records and signed head.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The OCPP 1.6 Security Whitepaper (edition 2) §8 event name for an internal kind, if one fits.
///
/// The §8 names describe a Charge Point's view of its Central System. Towards the CSMS this node
/// is that Charge Point (§6.4), so the node's own credentials or the CSMS's certificate being
/// refused have names. A charger or node peer failing to log in HERE has none: calling it
/// FailedToAuthenticateAtCentralSystem or CentralSystemFailedToAuthenticate would tell the CSMS
/// that its own link failed. Such kinds are recorded with `event: null`.
pub fn whitepaper_event(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "node_started" => "StartupOfTheDevice",
        "config_changed" | "identity_key_created" | "identity_key_changed" => {
            "ReconfigurationOfSecurityParameters"
        }
        // This node's credentials refused upstream: by its hub, or by the CSMS (hub role).
        "uplink_auth_failed" | "csms_auth_failed" => "FailedToAuthenticateAtCentralSystem",
        "uplink_certificate_invalid" | "csms_certificate_invalid" => {
            "InvalidCentralSystemCertificate"
        }
        // Frames that are not valid in the overlay's rules: an overlay array from a plain
        // charger, a path or route outside the sender's allow-list (spoofing).
        "overlay_frame_from_charger" | "path_not_allowed" | "route_not_allowed" => {
            "InvalidMessages"
        }
        _ => return None,
    })
}

/// One stored record. The stored bytes are what is hashed, never a re-serialization, so the field
/// order here only matters to humans reading `audit show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub index: u64,
    /// UTC, RFC 3339, when the event happened (not when it was written).
    pub time: String,
    /// The node's internal kind, e.g. `auth_failed`, `loop`, `node_started`.
    pub kind: String,
    /// The Security Whitepaper §8 name, or null.
    pub event: Option<String>,
    /// What happened, for a human. Never a password or an Authorization header.
    pub detail: String,
    /// Hex SHA-256 of the previous record's stored bytes; 64 zeros for record 0.
    pub prev: String,
}

/// The end of the chain: how many records there are and the hash of the last one's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub records: u64,
    pub hash: [u8; 32],
}

impl Head {
    pub fn last_index(&self) -> Option<u64> {
        self.records.checked_sub(1)
    }
}

/// A head signed by the node's key, as the admin API reports it and the store keeps the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedHead {
    pub node_id: String,
    pub records: u64,
    pub index: u64,
    pub head: String,
    /// Hex Ed25519 signature of [`head_message`].
    pub signature: String,
    /// Hex of the raw 32-byte Ed25519 public key.
    pub public_key: String,
    /// When it was signed; informative, not covered by the signature.
    pub signed_at: String,
}

/// The bytes the node signs for a head.
pub fn head_message(node_id: &str, index: u64, head_hex: &str) -> String {
    format!("ocpp-overlay-audit-head:{node_id}:{index}:{head_hex}")
}

/// Whether `signed` carries a valid signature by `public_key` (raw 32 bytes).
pub fn signature_valid(public_key: &[u8], signed: &SignedHead) -> bool {
    let Some(sig) = unhex(&signed.signature) else {
        return false;
    };
    let message = head_message(&signed.node_id, signed.index, &signed.head);
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(message.as_bytes(), &sig)
        .is_ok()
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

/// SHA-256 of the effective config (defaults filled in), so that a start can tell whether
/// anything changed since the previous one. The parsed config's Debug form covers every value
/// whatever the file's comments and layout; a release that adds a key changes it too, which is
/// true of the effective config.
pub fn config_sha256(config: &Config) -> String {
    hex(&sha256(format!("{config:?}").as_bytes()))
}

/// Signs a head; `None` for an empty chain, which has no record to name.
pub fn sign_head(
    key: &NodeKey,
    node_id: &str,
    head: Head,
    now: DateTime<Utc>,
) -> Option<SignedHead> {
    let index = head.last_index()?;
    let head_hex = hex(&head.hash);
    let signature = key.sign(head_message(node_id, index, &head_hex).as_bytes());
    Some(SignedHead {
        node_id: node_id.to_owned(),
        records: head.records,
        index,
        head: head_hex,
        signature: hex(&signature),
        public_key: key.public_hex(),
        signed_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
    })
}

// ---------------------------------------------------------------------------------------------
// Appending
// ---------------------------------------------------------------------------------------------

/// An event waiting to be appended; its index is given when it is written.
#[derive(Debug)]
struct Pending {
    time: DateTime<Utc>,
    kind: &'static str,
    detail: String,
}

impl Pending {
    fn now(kind: &'static str, detail: String) -> Pending {
        Pending {
            time: Utc::now(),
            kind,
            detail: bounded(detail),
        }
    }
}

fn bounded(mut detail: String) -> String {
    if detail.len() > MAX_DETAIL_BYTES {
        let mut end = MAX_DETAIL_BYTES;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    detail
}

/// Appends `events` (in order) and writes `meta`, in one write transaction. The chain's end is
/// read inside the transaction, not remembered by the task, so an aborted batch can never leave
/// a gap or a fork.
fn append_in(
    wtx: &WriteTransaction,
    events: &[Pending],
    meta: &[(&'static str, Vec<u8>)],
) -> Result<Head, StoreError> {
    let mut table = wtx.open_table(LOG)?;
    let (mut next, mut prev) = match table.last()? {
        Some((k, v)) => {
            let next = k.value().checked_add(1).ok_or_else(|| {
                StoreError::Corrupt("the audit log's last index is u64::MAX".into())
            })?;
            (next, sha256(v.value()))
        }
        None => (0, GENESIS),
    };
    for e in events {
        let record = Record {
            index: next,
            time: e.time.to_rfc3339_opts(SecondsFormat::Millis, true),
            kind: e.kind.to_owned(),
            event: whitepaper_event(e.kind).map(str::to_owned),
            detail: e.detail.clone(),
            prev: hex(&prev),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        table.insert(next, bytes.as_slice())?;
        prev = sha256(&bytes);
        next += 1;
    }
    if !meta.is_empty() {
        let mut table = wtx.open_table(META)?;
        for (key, value) in meta {
            table.insert(*key, value.as_slice())?;
        }
    }
    Ok(Head {
        records: next,
        hash: prev,
    })
}

async fn append(
    store: &Store,
    events: Vec<Pending>,
    meta: Vec<(&'static str, Vec<u8>)>,
) -> Result<Head, StoreError> {
    store.write(move |wtx| append_in(wtx, &events, &meta)).await
}

fn read_meta(rtx: &ReadTransaction, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let table = match rtx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(table.get(key)?.map(|v| v.value().to_vec()))
}

fn read_meta_text(rtx: &ReadTransaction, key: &str) -> Result<Option<String>, StoreError> {
    Ok(read_meta(rtx, key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// What the audit log needs to know at start.
pub struct Options {
    pub node_id: String,
    /// `<role>`, for the node_started detail.
    pub role: &'static str,
    pub config_sha256: String,
    pub report_interval: Duration,
    /// The identity key was generated by this start.
    pub key_created: bool,
}

/// The handle every task records through; cheap to call from sync code.
pub struct AuditLog {
    events: mpsc::Sender<Pending>,
    stop: mpsc::Sender<oneshot::Sender<()>>,
    head: watch::Receiver<Head>,
    key: Arc<NodeKey>,
    node_id: String,
    dropped: IntCounter,
}

impl AuditLog {
    /// Queues a record without waiting. A full queue drops it and counts the loss.
    pub fn record(&self, kind: &'static str, detail: String) {
        if self.events.try_send(Pending::now(kind, detail)).is_err() {
            self.dropped.inc();
        }
    }

    pub fn head(&self) -> Head {
        *self.head.borrow()
    }

    pub fn public_hex(&self) -> String {
        self.key.public_hex()
    }

    /// The current head, signed now.
    pub fn signed_head(&self) -> Option<SignedHead> {
        sign_head(&self.key, &self.node_id, self.head(), Utc::now())
    }

    /// Appends what is still queued and a `node_stopping` record, and signs the final head;
    /// gives up after a few seconds so that a stuck disk cannot hold the process.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.stop.send(tx).await.is_ok() {
            let _ = tokio::time::timeout(STOP_TIMEOUT, rx).await;
        }
    }
}

/// The task's side: receives events, appends them, signs the head.
struct Task {
    store: Store,
    key: Arc<NodeKey>,
    node_id: String,
    events: mpsc::Receiver<Pending>,
    stop: mpsc::Receiver<oneshot::Sender<()>>,
    head: watch::Sender<Head>,
    period: Duration,
    dropped: IntCounter,
    records: IntGauge,
}

/// Writes this start's records (node_started, and what changed since the last start), signs and
/// reports the head, and returns the handle and the task to spawn. Fails when the log cannot be
/// written: a node whose security events would go nowhere should not run.
pub async fn start(
    store: Store,
    key: Arc<NodeKey>,
    options: Options,
    metrics: &Metrics,
) -> Result<(AuditLog, impl Future<Output = ()> + Send + 'static), StoreError> {
    let (old_config, old_key) = store
        .read(|rtx| {
            Ok((
                read_meta_text(rtx, META_CONFIG)?,
                read_meta_text(rtx, META_PUBLIC_KEY)?,
            ))
        })
        .await?;
    let public = key.public_hex();
    let mut startup = vec![Pending::now(
        "node_started",
        format!(
            "ocpp-node {} started as {} {:?}; config sha256 {}; public key {public}",
            env!("CARGO_PKG_VERSION"),
            options.role,
            options.node_id,
            options.config_sha256
        ),
    )];
    match old_key {
        Some(old) if old != public => startup.push(Pending::now(
            "identity_key_changed",
            format!(
                "the identity key changed since the last start: public key {old} -> {public}{}",
                if options.key_created {
                    " (generated: the key file was missing)"
                } else {
                    ""
                }
            ),
        )),
        None if options.key_created => startup.push(Pending::now(
            "identity_key_created",
            format!(
                "generated identity key {}; public key {public}",
                key.path().display()
            ),
        )),
        _ => {}
    }
    if let Some(old) = old_config.filter(|old| *old != options.config_sha256) {
        startup.push(Pending::now(
            "config_changed",
            format!(
                "the effective config changed since the last start: sha256 {old} -> {}",
                options.config_sha256
            ),
        ));
    }
    for e in &startup[1..] {
        metrics.security_event(e.kind);
        tracing::warn!(security_event = %e.kind, "{}", e.detail);
    }
    let meta = vec![
        (META_CONFIG, options.config_sha256.clone().into_bytes()),
        (META_PUBLIC_KEY, public.into_bytes()),
    ];
    let head = append(&store, startup, meta).await?;
    metrics.audit_records.set(head.records as i64);

    let (events_tx, events) = mpsc::channel(QUEUE);
    let (stop_tx, stop) = mpsc::channel(1);
    let (head_tx, head_rx) = watch::channel(head);
    let task = Task {
        store,
        key: key.clone(),
        node_id: options.node_id.clone(),
        events,
        stop,
        head: head_tx,
        period: options.report_interval,
        dropped: metrics.audit_dropped.clone(),
        records: metrics.audit_records.clone(),
    };
    task.report().await;
    let log = AuditLog {
        events: events_tx,
        stop: stop_tx,
        head: head_rx,
        key,
        node_id: options.node_id,
        dropped: metrics.audit_dropped.clone(),
    };
    Ok((log, task.run()))
}

impl Task {
    async fn run(mut self) {
        let first = tokio::time::Instant::now() + self.period;
        let mut tick = tokio::time::interval_at(first, self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(done) = self.stop.recv() => {
                    let mut batch = Vec::new();
                    while let Ok(e) = self.events.try_recv() {
                        batch.push(e);
                    }
                    batch.push(Pending::now("node_stopping", "the node is shutting down".into()));
                    self.append(batch).await;
                    self.report().await;
                    let _ = done.send(());
                    return;
                }
                Some(first) = self.events.recv() => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match self.events.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    self.append(batch).await;
                }
                _ = tick.tick() => self.report().await,
            }
        }
    }

    async fn append(&self, batch: Vec<Pending>) {
        let lost = batch.len() as u64;
        match append(&self.store, batch, Vec::new()).await {
            Ok(head) => {
                self.records.set(head.records as i64);
                self.head.send_replace(head);
            }
            Err(e) => {
                self.dropped.inc_by(lost);
                tracing::error!(error = %e, lost, "security events could not be written to the audit log");
            }
        }
    }

    /// Signs the current head, logs it, and keeps it in the store for `audit verify`.
    async fn report(&self) {
        let head = *self.head.borrow();
        let Some(signed) = sign_head(&self.key, &self.node_id, head, Utc::now()) else {
            return;
        };
        tracing::info!(
            "audit_head index={} head={} signature={}",
            signed.index,
            signed.head,
            signed.signature
        );
        let bytes = match serde_json::to_vec(&signed) {
            Ok(b) => b,
            Err(e) => return tracing::warn!(error = %e, "cannot encode the signed head"),
        };
        let written = self
            .store
            .write(move |wtx| {
                wtx.open_table(META)?
                    .insert(META_SIGNED_HEAD, bytes.as_slice())?;
                Ok(())
            })
            .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot store the signed audit head");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Verifying
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record links to the one before it (and to the stored signed head, if any).
    Intact {
        records: u64,
        head: [u8; 32],
        /// What was checked about the signed head, for humans.
        notes: Vec<String>,
    },
    /// The first record that is missing, unreadable or altered.
    Broken { index: u64, why: String },
    /// The stored signed head does not verify with the key.
    BadSignature(String),
}

/// Walks the chain from record 0 and checks each record's index and `prev`, then the stored
/// signed head against the chain. `trusted_key` is the node's public key as known from outside
/// the file; without it the signature is checked against the key stored beside it, which only
/// shows that the file is consistent.
pub fn verify(rtx: &ReadTransaction, trusted_key: Option<&[u8]>) -> Result<Verdict, StoreError> {
    let signed: Option<SignedHead> = match read_meta(rtx, META_SIGNED_HEAD)? {
        Some(bytes) => match serde_json::from_slice(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                return Ok(Verdict::BadSignature(format!(
                    "the stored signed head is unreadable: {e}"
                )));
            }
        },
        None => None,
    };
    let table = match rtx.open_table(LOG) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let broken = |index, why: String| Ok(Verdict::Broken { index, why });
    let mut last: Option<(u64, [u8; 32])> = None;
    if let Some(table) = &table {
        for row in table.iter()? {
            let (k, v) = row?;
            let (k, bytes) = (k.value(), v.value());
            let expected = last.map_or(0, |(i, _)| i + 1);
            if k != expected {
                return broken(expected, format!("missing (the next stored record is {k})"));
            }
            let record: Record = match serde_json::from_slice(bytes) {
                Ok(r) => r,
                Err(e) => return broken(k, format!("not a valid record: {e}")),
            };
            if record.index != k {
                return broken(
                    k,
                    format!("stored as record {k} but says it is {}", record.index),
                );
            }
            let expected_prev = hex(&last.map_or(GENESIS, |(_, h)| h));
            if record.prev != expected_prev {
                if k == 0 {
                    return broken(0, "its prev is not the genesis value (64 zeros)".into());
                }
                return blame_link(table, k, bytes, signed.as_ref());
            }
            last = Some((k, sha256(bytes)));
        }
    }
    let records = last.map_or(0, |(i, _)| i + 1);
    let head = last.map_or(GENESIS, |(_, h)| h);
    let mut notes = Vec::new();
    match &signed {
        Some(s) => {
            let (key, whose) = match trusted_key {
                Some(k) => (k.to_vec(), "the given public key"),
                None => (
                    unhex(&s.public_key).unwrap_or_default(),
                    "the public key stored with it (pass --public-key to check against a key you trust)",
                ),
            };
            if !signature_valid(&key, s) {
                return Ok(Verdict::BadSignature(format!(
                    "the stored signed head (record {}, signed at {}) does not verify with {whose}",
                    s.index, s.signed_at
                )));
            }
            if s.index >= records {
                return broken(
                    records,
                    format!(
                        "missing: the head signed at {} covers records up to {}",
                        s.signed_at, s.index
                    ),
                );
            }
            let stored = table
                .as_ref()
                .map(|t| t.get(s.index))
                .transpose()?
                .flatten()
                .map(|v| hex(&sha256(v.value())));
            if stored.as_deref() != Some(s.head.as_str()) {
                return broken(
                    s.index,
                    format!(
                        "does not match the head signed at {}: the chain was rewritten at or before this record",
                        s.signed_at
                    ),
                );
            }
            notes.push(format!(
                "signed head: record {} (signed at {} by node {:?}) matches, signature valid with {whose}",
                s.index, s.signed_at, s.node_id
            ));
        }
        None => notes.push("no signed head stored; records after the last one seen elsewhere are only as good as the file".into()),
    }
    Ok(Verdict::Intact {
        records,
        head,
        notes,
    })
}

/// Record `k`'s prev does not match record `k-1`'s bytes: either `k-1` was altered, or `k` was
/// (its prev field). Altering `k` also breaks the link from `k` to `k+1`, so the record after
/// `k` (or, for the last record, the signed head) tells which.
fn blame_link(
    table: &redb::ReadOnlyTable<u64, &'static [u8]>,
    k: u64,
    bytes: &[u8],
    signed: Option<&SignedHead>,
) -> Result<Verdict, StoreError> {
    let own = hex(&sha256(bytes));
    let next_prev = table
        .get(k + 1)?
        .and_then(|v| serde_json::from_slice::<Record>(v.value()).ok())
        .map(|r| r.prev);
    let (k_intact, certain) = match (next_prev, signed.filter(|s| s.index == k)) {
        (Some(p), _) => (p == own, true),
        (None, Some(s)) => (s.head == own, true),
        // The last record, not covered by a signed head: nothing can tell, so name the earlier.
        (None, None) => (true, false),
    };
    let why = if !k_intact {
        format!(
            "altered: its prev does not match record {}, and what follows does not match it either",
            k - 1
        )
    } else if certain {
        format!("altered: its stored bytes do not hash to the prev that record {k} holds")
    } else {
        format!(
            "its stored bytes do not hash to the prev that record {k} holds (or record {k}, the last, was altered)"
        )
    };
    Ok(Verdict::Broken {
        index: if k_intact { k - 1 } else { k },
        why,
    })
}

/// Every stored record's bytes, in order (for `audit show`).
pub fn records(rtx: &ReadTransaction) -> Result<Vec<Vec<u8>>, StoreError> {
    let table = match rtx.open_table(LOG) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::with_capacity(table.len()? as usize);
    for row in table.iter()? {
        out.push(row?.1.value().to_vec());
    }
    Ok(out)
}

/// The newest `n` records, oldest first, as stored (for the admin API's `/api/events`).
pub fn recent(rtx: &ReadTransaction, n: usize) -> Result<Vec<Vec<u8>>, StoreError> {
    let table = match rtx.open_table(LOG) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::with_capacity(n.min(table.len()? as usize));
    for row in table.iter()?.rev().take(n) {
        out.push(row?.1.value().to_vec());
    }
    out.reverse();
    Ok(out)
}

/// A store file opened for `audit verify` / `audit show`, without ever writing to it.
pub enum Opened {
    ReadOnly(redb::ReadOnlyDatabase),
    /// The file was not closed cleanly (a killed node): redb must repair it before reading, and
    /// does so on a temporary copy, so the original stays exactly as it was.
    RepairedCopy {
        db: redb::Database,
        copy: PathBuf,
    },
}

impl Opened {
    pub fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(match self {
            Opened::ReadOnly(db) => db.begin_read()?,
            Opened::RepairedCopy { db, .. } => db.begin_read()?,
        })
    }

    pub fn repaired(&self) -> bool {
        matches!(self, Opened::RepairedCopy { .. })
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        if let Opened::RepairedCopy { copy, .. } = self {
            let _ = std::fs::remove_file(copy);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "the store {} is in use by a running node; stop the node, or copy the file and verify the copy",
        .0.display()
    )]
    InUse(PathBuf),
    #[error("cannot open the store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("cannot copy the store {} for repair: {source}", path.display())]
    Copy {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn open_store(path: &Path) -> Result<Opened, OpenError> {
    let open_error = |source| OpenError::Open {
        path: path.to_owned(),
        source,
    };
    match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => Ok(Opened::ReadOnly(db)),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(OpenError::InUse(path.to_owned())),
        Err(redb::DatabaseError::RepairAborted) => {
            let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
            let copy = std::env::temp_dir().join(format!(
                "ocpp-node-audit-{}-{nanos}.redb",
                std::process::id()
            ));
            std::fs::copy(path, &copy).map_err(|source| OpenError::Copy {
                path: path.to_owned(),
                source,
            })?;
            match redb::Database::open(&copy) {
                Ok(db) => Ok(Opened::RepairedCopy { db, copy }),
                Err(e) => {
                    let _ = std::fs::remove_file(&copy);
                    Err(open_error(e))
                }
            }
        }
        Err(e) => Err(open_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &'static str, detail: &str) -> Pending {
        Pending::now(kind, detail.to_owned())
    }

    fn key(dir: &Path) -> NodeKey {
        NodeKey::load_or_create(None, dir).expect("key").0
    }

    /// A store file with `n` records and, if `key` is given, a signed head over all of them.
    fn chain(dir: &Path, n: usize, key: Option<&NodeKey>) -> redb::Database {
        let db = redb::Database::create(dir.join("node.redb")).expect("db");
        let kinds = ["node_started", "auth_failed", "loop", "path_not_allowed"];
        let wtx = db.begin_write().expect("write");
        // Appended one by one, as separate batches would be.
        let mut head = Head {
            records: 0,
            hash: GENESIS,
        };
        for i in 0..n {
            let e = event(kinds[i % kinds.len()], &format!("event number {i}"));
            head = append_in(&wtx, &[e], &[]).expect("append");
        }
        if let Some(key) = key {
            let signed = sign_head(key, "lc-test", head, Utc::now()).expect("sign");
            let bytes = serde_json::to_vec(&signed).unwrap();
            append_in(&wtx, &[], &[(META_SIGNED_HEAD, bytes)]).expect("meta");
        }
        wtx.commit().expect("commit");
        db
    }

    fn verdict(db: &redb::Database, trusted: Option<&[u8]>) -> Verdict {
        verify(&db.begin_read().expect("read"), trusted).expect("verify")
    }

    fn stored(db: &redb::Database, i: u64) -> Vec<u8> {
        let rtx = db.begin_read().unwrap();
        let t = rtx.open_table(LOG).unwrap();
        t.get(i).unwrap().expect("record").value().to_vec()
    }

    fn overwrite(db: &redb::Database, i: u64, bytes: &[u8]) {
        let wtx = db.begin_write().unwrap();
        wtx.open_table(LOG).unwrap().insert(i, bytes).unwrap();
        wtx.commit().unwrap();
    }

    fn remove(db: &redb::Database, i: u64) {
        let wtx = db.begin_write().unwrap();
        wtx.open_table(LOG).unwrap().remove(i).unwrap();
        wtx.commit().unwrap();
    }

    /// Changes one character of the record's detail, leaving it valid JSON.
    fn alter_detail(db: &redb::Database, i: u64) {
        let text = String::from_utf8(stored(db, i)).unwrap();
        let altered = text.replacen("event number", "event numbex", 1);
        assert_ne!(altered, text);
        overwrite(db, i, altered.as_bytes());
    }

    fn broken_at(v: &Verdict) -> u64 {
        match v {
            Verdict::Broken { index, .. } => *index,
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }

    #[test]
    fn records_link_by_the_hash_of_the_previous_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let db = chain(dir.path(), 3, None);
        let r0: Record = serde_json::from_slice(&stored(&db, 0)).unwrap();
        let r1: Record = serde_json::from_slice(&stored(&db, 1)).unwrap();
        assert_eq!(r0.prev, "0".repeat(64));
        assert_eq!(r1.prev, hex(&sha256(&stored(&db, 0))));
        assert_eq!((r0.index, r1.index), (0, 1));
        assert_eq!(r0.kind, "node_started");
        assert_eq!(r0.event.as_deref(), Some("StartupOfTheDevice"));
        assert_eq!(r1.kind, "auth_failed");
        assert_eq!(r1.event, None);
        assert!(
            DateTime::parse_from_rfc3339(&r0.time).is_ok(),
            "{}",
            r0.time
        );
    }

    #[test]
    fn an_intact_chain_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        let db = chain(dir.path(), 6, Some(&k));
        match verdict(&db, Some(k.public_key())) {
            Verdict::Intact { records, head, .. } => {
                assert_eq!(records, 6);
                assert_eq!(head, sha256(&stored(&db, 5)));
            }
            other => panic!("{other:?}"),
        }
        // Without a signed head, and without any record.
        let plain = tempfile::tempdir().unwrap();
        let db = chain(plain.path(), 4, None);
        assert!(matches!(
            verdict(&db, None),
            Verdict::Intact { records: 4, .. }
        ));
        let empty = tempfile::tempdir().unwrap();
        let db = chain(empty.path(), 0, None);
        assert_eq!(
            verdict(&db, None),
            Verdict::Intact {
                records: 0,
                head: GENESIS,
                notes: vec![
                    "no signed head stored; records after the last one seen elsewhere are only as good as the file".into()
                ]
            }
        );
    }

    #[test]
    fn an_altered_payload_names_that_record() {
        for i in 0..6 {
            let dir = tempfile::tempdir().unwrap();
            let k = key(dir.path());
            let db = chain(dir.path(), 6, Some(&k));
            alter_detail(&db, i);
            let v = verdict(&db, Some(k.public_key()));
            assert_eq!(broken_at(&v), i, "altered {i}: {v:?}");
        }
        // Without a signed head, an altered record in the middle is still named exactly.
        let dir = tempfile::tempdir().unwrap();
        let db = chain(dir.path(), 6, None);
        alter_detail(&db, 2);
        assert_eq!(broken_at(&verdict(&db, None)), 2);
    }

    #[test]
    fn an_altered_prev_names_that_record() {
        let dir = tempfile::tempdir().unwrap();
        let db = chain(dir.path(), 5, None);
        let mut r: Record = serde_json::from_slice(&stored(&db, 3)).unwrap();
        r.prev = "1".repeat(64);
        overwrite(&db, 3, &serde_json::to_vec(&r).unwrap());
        assert_eq!(broken_at(&verdict(&db, None)), 3);
        // A record that claims another index.
        let dir = tempfile::tempdir().unwrap();
        let db = chain(dir.path(), 5, None);
        let mut r: Record = serde_json::from_slice(&stored(&db, 1)).unwrap();
        r.index = 7;
        overwrite(&db, 1, &serde_json::to_vec(&r).unwrap());
        assert_eq!(broken_at(&verdict(&db, None)), 1);
        // Bytes that are no record at all.
        overwrite(&db, 0, b"not json");
        assert_eq!(broken_at(&verdict(&db, None)), 0);
    }

    #[test]
    fn a_deleted_record_is_named() {
        for i in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let db = chain(dir.path(), 5, None);
            remove(&db, i);
            let v = verdict(&db, None);
            assert_eq!(broken_at(&v), i, "deleted {i}: {v:?}");
            assert!(format!("{v:?}").contains("missing"), "{v:?}");
        }
        // Dropping the last record leaves a valid shorter chain; the signed head catches it.
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        let db = chain(dir.path(), 5, Some(&k));
        remove(&db, 4);
        let v = verdict(&db, Some(k.public_key()));
        assert_eq!(broken_at(&v), 4, "{v:?}");
    }

    #[test]
    fn a_rewritten_chain_is_caught_by_the_signed_head() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        let db = chain(dir.path(), 4, Some(&k));
        // Recompute the chain after altering record 1: every link holds again.
        let wtx = db.begin_write().unwrap();
        let mut prev = sha256(&stored(&db, 0));
        for i in 1..4 {
            let mut r: Record = serde_json::from_slice(&stored(&db, i)).unwrap();
            if i == 1 {
                r.detail = "nothing happened".into();
            }
            r.prev = hex(&prev);
            let bytes = serde_json::to_vec(&r).unwrap();
            wtx.open_table(LOG)
                .unwrap()
                .insert(i, bytes.as_slice())
                .unwrap();
            prev = sha256(&bytes);
        }
        wtx.commit().unwrap();
        let v = verdict(&db, Some(k.public_key()));
        assert_eq!(broken_at(&v), 3, "{v:?}");
        assert!(format!("{v:?}").contains("rewritten"), "{v:?}");
    }

    #[test]
    fn the_signature_verifies_with_the_nodes_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        let other_dir = tempfile::tempdir().unwrap();
        let other = key(other_dir.path());
        let head = Head {
            records: 3,
            hash: sha256(b"x"),
        };
        let signed = sign_head(&k, "node-1", head, Utc::now()).expect("signed");
        assert_eq!(signed.index, 2);
        assert_eq!(signed.public_key, k.public_hex());
        assert!(signature_valid(k.public_key(), &signed));
        assert!(!signature_valid(other.public_key(), &signed));
        // The signature covers node id, index and head.
        for tampered in [
            SignedHead {
                node_id: "node-2".into(),
                ..signed.clone()
            },
            SignedHead {
                index: 1,
                ..signed.clone()
            },
            SignedHead {
                head: hex(&sha256(b"y")),
                ..signed.clone()
            },
        ] {
            assert!(!signature_valid(k.public_key(), &tampered));
        }
        assert!(
            sign_head(
                &k,
                "node-1",
                Head {
                    records: 0,
                    hash: GENESIS
                },
                Utc::now()
            )
            .is_none()
        );
        // verify() with another key refuses the stored head.
        let db = chain(dir.path(), 3, Some(&k));
        assert!(matches!(
            verdict(&db, Some(other.public_key())),
            Verdict::BadSignature(_)
        ));
        assert!(matches!(
            verdict(&db, Some(k.public_key())),
            Verdict::Intact { records: 3, .. }
        ));
    }

    #[test]
    fn long_details_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_DETAIL_BYTES);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_DETAIL_BYTES + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(bounded("short".into()), "short");
    }

    #[test]
    fn whitepaper_names_come_from_section_8() {
        const SECTION_8: [&str; 18] = [
            "FirmwareUpdated",
            "FailedToAuthenticateAtCentralSystem",
            "CentralSystemFailedToAuthenticate",
            "SettingSystemTime",
            "StartupOfTheDevice",
            "ResetOrReboot",
            "SecurityLogWasCleared",
            "ReconfigurationOfSecurityParameters",
            "MemoryExhaustion",
            "InvalidMessages",
            "AttemptedReplayAttacks",
            "TamperDetectionActivated",
            "InvalidFirmwareSignature",
            "InvalidFirmwareSigningCertificate",
            "InvalidCentralSystemCertificate",
            "InvalidChargePointCertificate",
            "InvalidTLSVersion",
            "InvalidTLSCipherSuite",
        ];
        let kinds = [
            "node_started",
            "node_stopping",
            "config_changed",
            "identity_key_created",
            "identity_key_changed",
            "auth_failed",
            "certificate_invalid",
            "uplink_auth_failed",
            "uplink_certificate_invalid",
            "csms_auth_failed",
            "csms_certificate_invalid",
            "overlay_refused",
            "overlay_frame_from_charger",
            "path_not_allowed",
            "route_not_allowed",
            "route_claimed_elsewhere",
            "loop",
        ];
        for kind in kinds {
            if let Some(name) = whitepaper_event(kind) {
                assert!(SECTION_8.contains(&name), "{kind} -> {name}");
            }
        }
        // Inbound login failures are not the CSMS's business under those names.
        assert_eq!(whitepaper_event("auth_failed"), None);
        assert_eq!(
            whitepaper_event("uplink_auth_failed"),
            Some("FailedToAuthenticateAtCentralSystem")
        );
    }

    #[tokio::test]
    async fn the_task_appends_startup_and_queued_events_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node.redb")).unwrap();
        let metrics = Metrics::new().unwrap();
        let k = Arc::new(key(dir.path()));
        let options = |sha: &str| Options {
            node_id: "lc-test".into(),
            role: "local-controller",
            config_sha256: sha.into(),
            report_interval: Duration::from_secs(300),
            key_created: false,
        };
        let (log, task) = start(store.clone(), k.clone(), options("aaaa"), &metrics)
            .await
            .unwrap();
        let task = tokio::spawn(task);
        for i in 0..5 {
            log.record("auth_failed", format!("attempt {i}"));
        }
        log.stop().await;
        task.await.unwrap();
        // A second start with another config records the change.
        let (log, task) = start(store.clone(), k.clone(), options("bbbb"), &metrics)
            .await
            .unwrap();
        let task = tokio::spawn(task);
        log.stop().await;
        task.await.unwrap();
        let kinds: Vec<String> = store
            .read(|rtx| {
                Ok(records(rtx)?
                    .iter()
                    .map(|b| serde_json::from_slice::<Record>(b).unwrap().kind)
                    .collect())
            })
            .await
            .unwrap();
        let mut expected = vec!["node_started"];
        expected.extend(["auth_failed"; 5]);
        expected.extend([
            "node_stopping",
            "node_started",
            "config_changed",
            "node_stopping",
        ]);
        assert_eq!(kinds, expected);
        assert_eq!(metrics.audit_records.get(), expected.len() as i64);
        let verdict = store
            .read(move |rtx| verify(rtx, Some(k.public_key())))
            .await
            .unwrap();
        assert!(
            matches!(verdict, Verdict::Intact { records: 10, .. }),
            "{verdict:?}"
        );
        assert_eq!(log.head().records, 10);
        store.close();
    }

    #[tokio::test]
    async fn a_full_queue_counts_instead_of_growing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("node.redb")).unwrap();
        let metrics = Metrics::new().unwrap();
        let options = Options {
            node_id: "lc-test".into(),
            role: "local-controller",
            config_sha256: "aaaa".into(),
            report_interval: Duration::from_secs(300),
            key_created: true,
        };
        let (log, task) = start(store.clone(), Arc::new(key(dir.path())), options, &metrics)
            .await
            .unwrap();
        // The task is not running, so nothing drains the queue.
        for i in 0..QUEUE + 10 {
            log.record("loop", format!("{i}"));
        }
        assert_eq!(metrics.audit_dropped.get(), 10);
        drop(task);
        store.close();
    }
}
