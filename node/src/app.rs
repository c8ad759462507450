//! The composition root: the one place that knows which parts a role is made of. It builds the
//! engine with its stages and handlers for the configured role, starts the driver, the
//! uplink dialer, the listeners and the admin API, and runs until a signal or a failure.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::audit;
use crate::config::Config;
use crate::config::files::Loaded;
use crate::core::identity::NodeKey;
use crate::core::metrics::Metrics;
use crate::core::node::Node;
use crate::core::store::Store;
use crate::driver::Driver;
use crate::edge::journal;
use crate::edge::outbox::Outbox;
use crate::engine::{Engine, Scope, Settings};
use crate::hub::Presence;
use crate::local::authorize::Authorizer;
use crate::local::csms::LocalCsms;
use crate::validate::{Busy, Validate};
use crate::{admin, conn, net};

/// The store's file name inside `node.data_dir`.
pub const STORE_FILE: &str = "node.redb";
/// Events that connections may queue for the engine before they wait (backpressure).
const EVENT_QUEUE: usize = 4096;

pub async fn serve(config: Config, mut files: Loaded, store: Store) -> anyhow::Result<()> {
    let data_dir = &config.node.data_dir;
    let (key, created) = match files.identity_key.take() {
        Some(key) => (key, false),
        None => NodeKey::load_or_create(None, data_dir)?,
    };
    let identity_file = key.path().to_owned();
    let policy = crate::policy::Policy::build(
        &config.signing,
        std::mem::take(&mut files.signing_keys),
        std::mem::take(&mut files.jws_keys),
        Some(&identity_file),
    )
    .map_err(|errors| anyhow::anyhow!("invalid [signing]: {}", errors.join("; ")))?;
    let (policies, policy_updates) = tokio::sync::watch::channel(Arc::new(policy));
    // The public half only: it is what a verifier of the signed audit head needs.
    tracing::info!(
        public_key = %key.public_hex(),
        file = %key.path().display(),
        "node identity key {}",
        if created { "generated" } else { "loaded" }
    );
    let metrics = Arc::new(Metrics::new()?);
    let options = audit::Options {
        node_id: config.node.id.clone(),
        role: config.node.role.as_str(),
        config_sha256: audit::config_sha256(&config),
        report_interval: std::time::Duration::from_secs(config.audit.report_interval_s),
        key_created: created,
    };
    let (audit_log, audit_task) = audit::start(store.clone(), Arc::new(key), options, &metrics)
        .await
        .context("cannot write the security event log")?;
    let (events, events_rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
    let node = Arc::new(Node::new(config, files, store, metrics, audit_log, events));
    let devices = crate::modbus::Devices::from_config(&node.config.meter);
    let (mut engine, site_events) = engine_for(&node, &devices, policy_updates.clone()).await?;
    // Screens every frame routing forwards or delivers; the other stages see plain frames.
    engine.add_stage(Box::new(crate::policy::Signatures::new(policy_updates)));
    tracing::info!(stages = ?engine.stage_names(), "engine ready");

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(audit_task);
    tasks.spawn(
        crate::policy::reload::Reloader {
            config_file: node.files.config_file.clone(),
            identity_key: Some(identity_file),
            running: node.config.clone(),
            policies,
        }
        .run(),
    );
    let driver = Driver::new(engine, node.clone());
    tasks.spawn(async move {
        driver.run(events_rx).await;
        tracing::error!("engine stopped");
    });
    if !node.config.uplink.is_empty() {
        tasks.spawn(conn::uplink::run(node.clone()));
    }
    if let (Some(dlm), Some((events, metrics))) = (node.config.dlm.clone(), site_events) {
        let meter = grid_meter(&node, &devices, &dlm)?;
        let status = node.dlm.get_or_init(Default::default).clone();
        tracing::info!(meter = %dlm.meter, grid_limit_a = ?dlm.grid_limit_a, "load management on");
        tasks.spawn(crate::dlm::run::run(
            node.clone(),
            dlm,
            meter,
            events,
            status,
            metrics,
        ));
    }

    let mut infos = Vec::new();
    for (index, cfg) in node.config.listener.iter().enumerate() {
        if cfg.security_profile == 0 {
            tracing::warn!(
                listener = %cfg.name,
                "SECURITY PROFILE 0: chargers on this listener connect WITHOUT authentication; use profile 1+ outside a lab"
            );
        }
        let (info, accept_loop) = net::listener::bind(node.clone(), index).await?;
        tasks.spawn(accept_loop);
        infos.push(info);
    }
    let mut ready: Vec<String> = infos
        .iter()
        .map(|i| format!("listening {} {}", i.name, i.url))
        .collect();
    let admin = node.config.admin.clone();
    let mut admin_hint = None;
    if admin.enabled {
        let socket = tokio::net::TcpListener::bind(admin.bind)
            .await
            .with_context(|| format!("admin API cannot bind {}", admin.bind))?;
        ready.push(format!("listening admin http://{}", socket.local_addr()?));
        let configured = node.secrets().admin_token().map(|t| t.expose());
        let (token, generated) =
            admin::auth::load_or_create(configured, &node.config.node.data_dir)?;
        if let Some(file) = &generated {
            // Where it is, never what it is.
            tracing::info!(file = %file.display(), "generated the admin API token");
        }
        let place = match configured {
            Some(_) => "the secrets file's [admin] token".to_owned(),
            None => format!(
                "the token in {}",
                node.config
                    .node
                    .data_dir
                    .join(admin::auth::TOKEN_FILE)
                    .display()
            ),
        };
        admin_hint = Some(format!(
            "status page: http://{}/login?token=<{place}>",
            socket.local_addr()?
        ));
        let auth = Arc::new(admin::auth::AdminAuth::new(
            token,
            admin.metrics_without_token,
        ));
        let router = admin::router(node.clone(), auth)
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        tasks.spawn(async move {
            if let Err(e) = axum::serve(socket, router).await {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
    }
    let _ = node.listeners.set(infos.clone());

    // The machine-readable lines first (tests and scripts wait for them), then the human hint.
    // A closed stdout (a supervisor that stopped reading) must not stop a running node.
    let mut lines = ready;
    for info in &infos {
        let url = match info.url.strip_prefix("ws://0.0.0.0") {
            Some(rest) => format!("ws://<this-host-address>{rest}"),
            None => info.url.clone(),
        };
        lines.push(format!("point chargers at {url}/<chargerId>"));
    }
    lines.extend(admin_hint);
    let mut out = std::io::stdout().lock();
    if let Err(e) = lines
        .iter()
        .try_for_each(|line| writeln!(out, "{line}"))
        .and_then(|()| out.flush())
    {
        tracing::warn!(error = %e, "cannot write the listening lines to stdout; running on");
    }
    drop(out);

    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = terminate() => tracing::info!("terminated; shutting down"),
        Some(_) = tasks.join_next() => bail!("a listener, the engine or the audit log stopped unexpectedly"),
    }
    // The last records and a signed head that covers them, so the log ends where the node did.
    node.audit.stop().await;
    Ok(())
}

/// The engine of this node's role. Ingress stage order: validation, the busy limit, then (an
/// edge with an uplink) the durable outbox, which must see only frames that will be forwarded.
async fn engine_for(
    node: &Arc<Node>,
    devices: &crate::modbus::Devices,
    policies: tokio::sync::watch::Receiver<Arc<crate::policy::Policy>>,
) -> anyhow::Result<(Engine, Option<SiteEvents>)> {
    let config = &node.config;
    let settings = Settings::from_config(config);
    let limits = settings.limits;
    let mut engine = Engine::new(settings, node.metrics.clone());
    engine.add_stage(Box::new(Validate::new(node.schemas.clone())));
    engine.add_stage(Box::new(Busy));
    // Load management watches every charger frame, so it goes before the outbox, which keeps
    // (and answers) the frames it queues.
    let mut site_events = None;
    if config.dlm.is_some() {
        let metrics = Arc::new(
            crate::dlm::run::DlmMetrics::new(&node.metrics.registry)
                .context("cannot register the load management metrics")?,
        );
        let (tx, rx) = tokio::sync::mpsc::channel(crate::dlm::run::EVENT_QUEUE);
        engine.add_stage(Box::new(crate::dlm::observe::Observe::new(
            tx,
            metrics.events_dropped.clone(),
        )));
        site_events = Some((rx, metrics));
    }
    if !config.meter.is_empty() {
        // Refused writes are security events; a weak reference, so the handler does not
        // keep the node alive.
        let events = Arc::downgrade(node);
        let tunnel = crate::modbus::Tunnel::new(
            devices.clone(),
            modbus_tunnel::allow::AllowList(config.modbus.allow.clone()),
            config.node.id.clone(),
            policies,
            Arc::new(move |kind, detail| {
                if let Some(node) = events.upgrade() {
                    node.security_event(kind, detail);
                }
            }),
        );
        engine
            .handlers_mut()
            .register(Scope::Node, "ModbusTransfer", Arc::new(tunnel));
    }
    if let Some(hub) = &config.hub {
        let o = &config.overlay;
        engine = engine.with_hub(Presence::new(
            node.conn_ids.clone(),
            std::time::Duration::from_secs(o.csms_grace_s),
            std::time::Duration::from_secs(o.request_timeout_s),
            limits,
        ));
        tracing::debug!(csms = %hub.csms_url, "serving the CSMS side");
    } else if !config.uplink.is_empty() {
        let loaded = node
            .store
            .read(journal::load)
            .await
            .context("cannot read the durable outbound queue from the store")?;
        engine.add_stage(Box::new(Outbox::new(
            config.outbox.clone(),
            Authorizer::new(config.auth.clone()),
            std::time::Duration::from_secs(config.overlay.request_timeout_s),
            node.metrics.clone(),
            loaded,
        )));
    } else {
        // A standalone local controller is the CSMS itself.
        let csms = Arc::new(LocalCsms::new(
            node.store.clone(),
            node.metrics.clone(),
            node.schemas.clone(),
            Authorizer::new(config.auth.clone()),
            u64::from(config.local_csms.heartbeat_interval_s),
        ));
        engine
            .handlers_mut()
            .register_fallback(Scope::Csms, Arc::new(csms));
    }
    Ok((engine, site_events))
}

type SiteEvents = (
    tokio::sync::mpsc::Receiver<crate::dlm::control::SiteEvent>,
    Arc<crate::dlm::run::DlmMetrics>,
);

/// The `[[meter]]` that `[dlm] meter` names, with its register map loaded.
fn grid_meter(
    node: &Node,
    devices: &crate::modbus::Devices,
    dlm: &crate::config::DlmConfig,
) -> anyhow::Result<crate::dlm::run::GridMeter> {
    let m = node
        .config
        .meter
        .iter()
        .find(|m| m.name == dlm.meter)
        .with_context(|| format!("no [[meter]] is named {:?}", dlm.meter))?;
    let device = devices
        .get(&m.name)
        .with_context(|| format!("meter {:?} has no transport", m.name))?;
    Ok(crate::dlm::run::GridMeter {
        device,
        unit: m.unit_id,
        map: match m.max_current_a {
            Some(a) => load_map(&m.map)?
                .with_max_current_a(a)
                .map_err(|e| anyhow::anyhow!("meter {:?}: {e}", m.name))?,
            None => load_map(&m.map)?,
        },
    })
}

/// A shipped register map by name, or a map file.
pub fn load_map(name: &str) -> anyhow::Result<modbus_tunnel::map::Map> {
    if let Ok(map) = modbus_tunnel::map::Map::builtin(name) {
        return Ok(map);
    }
    let text = std::fs::read_to_string(name)
        .with_context(|| format!("cannot read the register map file {name}"))?;
    modbus_tunnel::map::Map::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("register map {name}: {e}"))
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending().await
}
