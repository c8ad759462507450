//! Prometheus metrics. Every series used on the frame path is resolved once at startup, so
//! counting a frame is one atomic add, never a label lookup behind a lock.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub chargers_connected: IntGauge,
    pub frames_in: IntCounter,
    pub frames_out: IntCounter,
    pub frame_errors: IntCounter,
    pub oversize_frames: IntCounter,
    pub transactions_started: IntCounter,
    pub transactions_ended: IntCounter,
    handshakes_refused: IntCounterVec,
    pub uplink_links: IntGauge,
    pub inbound_links: IntGauge,
    pub csms_connections: IntGauge,
    pub uplink_connects: IntCounter,
    pub frames_forwarded: IntCounter,
    pub frames_dropped: Drops,
    /// Edge: a charger's CALL until the answer from upstream arrives here.
    pub relay_latency: Histogram,
    /// Edge: age of the oldest queued transaction message; set when scraped.
    pub outbox_oldest_age: IntGauge,
    /// 1 for each uplink that is up, 0 otherwise; set when scraped.
    pub uplink_up: IntGaugeVec,
    security_events: IntCounterVec,
    /// Security events that never reached the audit log (its queue was full, or a write failed).
    pub audit_dropped: IntCounter,
    pub audit_records: IntGauge,
    /// Edge: transaction messages in the durable queue, not yet answered by the CSMS.
    pub outbox_queued: IntGauge,
    pub outbox_dead_letters: IntGauge,
    /// Edge: charger CALLs the edge answered itself (uplink down, or a queue backlog).
    pub outbox_local_answers: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let chargers_connected =
            IntGauge::new("ocpp_chargers_connected", "Chargers with an open WebSocket")?;
        registry.register(Box::new(chargers_connected.clone()))?;
        let handshakes_refused = IntCounterVec::new(
            Opts::new(
                "ocpp_handshakes_refused_total",
                "WebSocket upgrades refused, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(handshakes_refused.clone()))?;
        let links = IntGaugeVec::new(
            Opts::new("ocpp_overlay_links", "Open overlay links, by direction"),
            &["direction"],
        )?;
        registry.register(Box::new(links.clone()))?;
        let relay_latency = Histogram::with_opts(
            HistogramOpts::new(
                "ocpp_relay_latency_seconds",
                "From a charger's CALL to its answer arriving back from upstream, at the edge",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
        )?;
        registry.register(Box::new(relay_latency.clone()))?;
        let uplink_up = IntGaugeVec::new(
            Opts::new("ocpp_uplink_up", "1 while the uplink is up, by uplink name"),
            &["uplink"],
        )?;
        registry.register(Box::new(uplink_up.clone()))?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let security_events = IntCounterVec::new(
            Opts::new(
                "ocpp_security_events_total",
                "Security events (refused paths, routes, loops, overlay misuse), by kind",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(security_events.clone()))?;
        Ok(Metrics {
            uplink_links: links.with_label_values(&["uplink"]),
            inbound_links: links.with_label_values(&["inbound"]),
            csms_connections: gauge(
                "ocpp_csms_connections",
                "Hub: chargers' sockets to the CSMS (open or connecting)",
            )?,
            uplink_connects: counter(
                "ocpp_uplink_connects_total",
                "Overlay uplink connections established",
            )?,
            frames_forwarded: counter(
                "ocpp_frames_forwarded_total",
                "Overlay frames forwarded to a next hop",
            )?,
            frames_dropped: Drops::new(&registry)?,
            relay_latency,
            outbox_oldest_age: gauge(
                "ocpp_outbox_oldest_age_seconds",
                "Age of the oldest transaction message in the durable queue (0 when empty)",
            )?,
            uplink_up,
            security_events,
            audit_dropped: counter(
                "ocpp_audit_dropped_total",
                "Security events not written to the audit log (queue full or write failed)",
            )?,
            audit_records: gauge(
                "ocpp_audit_records",
                "Records in the security event log (hash chain)",
            )?,
            outbox_queued: gauge(
                "ocpp_outbox_queued",
                "Transaction messages in the durable queue, not yet answered by the CSMS",
            )?,
            outbox_dead_letters: gauge(
                "ocpp_outbox_dead_letters",
                "Queued messages given up after the configured CSMS CALLERRORs",
            )?,
            outbox_local_answers: counter(
                "ocpp_outbox_local_answers_total",
                "Charger CALLs the edge answered itself (uplink down, or a queue backlog)",
            )?,
            chargers_connected,
            frames_in: counter(
                "ocpp_frames_received_total",
                "Text frames received from chargers",
            )?,
            frames_out: counter("ocpp_frames_sent_total", "Text frames sent to chargers")?,
            frame_errors: counter(
                "ocpp_frame_errors_total",
                "Frames answered with a CALLERROR",
            )?,
            oversize_frames: counter(
                "ocpp_oversize_frames_total",
                "Connections closed for an oversize frame",
            )?,
            transactions_started: counter(
                "ocpp_transactions_started_total",
                "Transactions started",
            )?,
            transactions_ended: counter("ocpp_transactions_ended_total", "Transactions ended")?,
            handshakes_refused,
            registry,
        })
    }

    /// Counts a refused upgrade. Off the frame path; `reason` is a fixed label set.
    pub fn refused(&self, reason: &'static str) {
        self.handshakes_refused.with_label_values(&[reason]).inc();
    }

    /// Counts a security event. Rare by nature, so the label lookup is fine here.
    pub fn security_event(&self, kind: &'static str) {
        self.security_events.with_label_values(&[kind]).inc();
    }

    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

/// Frames dropped or refused, one counter per reason, each resolved once at start so that the
/// frame path never looks a label up.
pub struct Drops {
    pub malformed: IntCounter,
    pub loop_: IntCounter,
    pub hop_limit: IntCounter,
    pub unreachable: IntCounter,
    pub bad_source_route: IntCounter,
    pub broadcast_not_send: IntCounter,
    pub path_not_allowed: IntCounter,
    /// Nothing on this node takes the frame (a binary frame delivered here).
    pub no_handler: IntCounter,
    /// The next hop's queue was full.
    pub queue_full: IntCounter,
    /// A charger had too many CALLs waiting for an answer.
    pub busy: IntCounter,
    /// Refused or dropped by a signature policy.
    pub policy: IntCounter,
}

impl Drops {
    fn new(registry: &Registry) -> Result<Drops, prometheus::Error> {
        let vec = IntCounterVec::new(
            Opts::new(
                "ocpp_frames_dropped_total",
                "Frames dropped or refused, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(vec.clone()))?;
        let c = |reason: &str| vec.with_label_values(&[reason]);
        Ok(Drops {
            malformed: c("malformed"),
            loop_: c("loop"),
            hop_limit: c("hop_limit"),
            unreachable: c("unreachable"),
            bad_source_route: c("bad_source_route"),
            broadcast_not_send: c("broadcast_not_send"),
            path_not_allowed: c("path_not_allowed"),
            no_handler: c("no_handler"),
            queue_full: c("queue_full"),
            busy: c("busy"),
            policy: c("policy"),
        })
    }

    /// The counter of a routing refusal.
    pub fn refusal(&self, r: routing::Refusal) -> &IntCounter {
        use routing::Refusal;
        match r {
            Refusal::Loop => &self.loop_,
            Refusal::HopLimit => &self.hop_limit,
            Refusal::Unreachable => &self.unreachable,
            Refusal::BadSourceRoute => &self.bad_source_route,
            Refusal::BroadcastNotSend => &self.broadcast_not_send,
        }
    }

    /// Every reason's count added up (for tests and the benchmark).
    pub fn total(&self) -> u64 {
        [
            &self.malformed,
            &self.loop_,
            &self.hop_limit,
            &self.unreachable,
            &self.bad_source_route,
            &self.broadcast_not_send,
            &self.path_not_allowed,
            &self.no_handler,
            &self.queue_full,
            &self.busy,
            &self.policy,
        ]
        .iter()
        .map(|c| c.get())
        .sum()
    }
}
