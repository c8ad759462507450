//! `ocpp-node`: one binary for the edge, local-controller and hub roles of ocpp-overlay.
//!
//! With no arguments it runs as a standalone local controller with the embedded default config:
//! chargers connect to it as to a central system, and it answers, authorizes from its local list
//! and records transactions in its store file.

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use ocpp_node::config::Config;
use ocpp_node::state::Node;
use ocpp_node::{
    admin, audit, auth, journal, listener, metrics, router, secrets, status, store, uplink,
};

#[derive(Parser)]
#[command(
    name = "ocpp-node",
    version,
    about = "OCPP overlay node: edge, local controller or hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (the default). Without --config, the embedded default config is used.
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file: exit 0 if it is valid, else list every mistake and exit 1.
    CheckConfig { file: PathBuf },
    /// Show what a running node has connected and routed.
    Status {
        /// The node's admin API.
        #[arg(long, default_value = "http://127.0.0.1:9800")]
        admin: String,
        /// Print the raw JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Read a password from stdin and print its salted hash for `[chargers.<id>] password_hash`.
    HashPassword,
    /// The security event log (a hash chain in the store file).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the chain: exit 0 with `ok: N records, head <hex>`, or exit 1 with
    /// `broken at record <i>: <why>` for the first broken record. Run it on a stopped node's
    /// store, or on a copy: a running node holds the file's lock.
    Verify {
        #[command(flatten)]
        store: StoreArg,
        /// The node's public key (hex, as the node logs it and /api/audit reports it); the stored
        /// signed head must verify with it.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Print every record as one JSON line.
    Show {
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct StoreArg {
    /// The store file (`<data_dir>/node.redb`).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Or the node's config, whose data_dir holds the store.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl StoreArg {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match (&self.store, &self.config) {
            (Some(store), _) => Ok(store.clone()),
            (None, Some(config)) => {
                let config = Config::load(config).map_err(|errors| {
                    let list: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
                    anyhow::anyhow!("{}: invalid config:\n{}", config.display(), list.join("\n"))
                })?;
                Ok(config.node.data_dir.join(STORE_FILE))
            }
            (None, None) => bail!("give --store FILE or --config FILE"),
        }
    }
}

/// The store's file name inside `node.data_dir`.
const STORE_FILE: &str = "node.redb";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::Run { config } => run(config),
        Command::CheckConfig { file } => check_config(&file),
        Command::Status { admin, json } => {
            let status = status::fetch(&admin, "/api/status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                status::print(&status);
            }
            Ok(())
        }
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("no password on stdin");
            }
            println!(
                "{}",
                auth::hash_password(password).map_err(anyhow::Error::msg)?
            );
            Ok(())
        }
        Command::Audit { command } => match command {
            AuditCommand::Verify { store, public_key } => {
                audit_verify(&store.path()?, public_key.as_deref())
            }
            AuditCommand::Show { store } => audit_show(&store.path()?),
        },
    }
}

fn audit_verify(path: &std::path::Path, public_key: Option<&str>) -> anyhow::Result<()> {
    let key = match public_key {
        Some(hex) => match audit::unhex(hex.trim()) {
            Some(k) if k.len() == 32 => Some(k),
            _ => bail!("--public-key must be 64 hex digits (a raw Ed25519 public key)"),
        },
        None => None,
    };
    let opened = audit::open_store(path)?;
    if opened.repaired() {
        eprintln!(
            "note: {} was not closed cleanly; verifying a repaired temporary copy (the file is not changed)",
            path.display()
        );
    }
    let verdict = audit::verify(&opened.begin_read()?, key.as_deref())
        .with_context(|| format!("cannot read the audit log in {}", path.display()))?;
    // Before any exit: dropping it removes a repaired temporary copy.
    drop(opened);
    match verdict {
        audit::Verdict::Intact {
            records,
            head,
            notes,
        } => {
            println!("ok: {records} records, head {}", audit::hex(&head));
            for note in notes {
                println!("{note}");
            }
            Ok(())
        }
        audit::Verdict::Broken { index, why } => {
            println!("broken at record {index}: {why}");
            std::process::exit(1);
        }
        audit::Verdict::BadSignature(why) => {
            println!("bad signature: {why}");
            std::process::exit(1);
        }
    }
}

fn audit_show(path: &std::path::Path) -> anyhow::Result<()> {
    let opened = audit::open_store(path)?;
    let records = audit::records(&opened.begin_read()?)?;
    let mut out = std::io::stdout().lock();
    for bytes in records {
        // Stored bytes as they are: each record is one line of JSON.
        out.write_all(&bytes)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    match Config::load(file) {
        Ok(_) => {
            println!("{}: config is valid", file.display());
            Ok(())
        }
        Err(errors) => {
            eprintln!("{}: {} mistake(s):", file.display(), errors.len());
            for e in &errors {
                eprintln!("  - {e}");
            }
            std::process::exit(1);
        }
    }
}

fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match &config_path {
        Some(path) => Config::load(path).map_err(|errors| {
            let list: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
            anyhow::anyhow!("{}: invalid config:\n{}", path.display(), list.join("\n"))
        })?,
        None => {
            tracing::info!(
                "no --config given: running as a standalone local controller with the embedded default"
            );
            Config::embedded_default()
        }
    };
    let data_dir = &config.node.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let store_path = data_dir.join(STORE_FILE);
    let store = store::Store::open(&store_path).with_context(|| {
        format!(
            "cannot open the store {} (is another node using it?)",
            store_path.display()
        )
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(config, store.clone()));
    // Shutting the runtime down drops every task and with them the other store handles; closing
    // the last one then waits for the writer, so the file is closed cleanly and needs no repair
    // at the next start or for `audit verify`. A blocking task that outlives the timeout keeps
    // its handle, and the process then exits without waiting (every acknowledged write is
    // committed anyway).
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    store.close();
    result
}

async fn serve(config: Config, store: store::Store) -> anyhow::Result<()> {
    let data_dir = &config.node.data_dir;
    let secrets = match &config.node.secrets_file {
        Some(path) => secrets::Secrets::load(path)?,
        None => secrets::Secrets::default(),
    };
    let (key, created) =
        audit::NodeKey::load_or_create(config.node.identity_key_file.as_deref(), data_dir)?;
    // The public half only: it is what a verifier of the signed audit head needs.
    tracing::info!(
        public_key = %key.public_hex(),
        file = %key.path().display(),
        "node identity key {}",
        if created { "generated" } else { "loaded" }
    );
    let metrics = metrics::Metrics::new()?;
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
    let overlay = config.is_overlay();
    let (router_tx, router_rx) = tokio::sync::mpsc::channel(4096);
    let node = Arc::new(Node::new(
        config,
        secrets,
        store,
        metrics,
        audit_log,
        overlay.then_some(router_tx),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(audit_task);
    if overlay {
        let mut router = router::Router::new(node.clone());
        if node.keeps_outbox() {
            let loaded = node
                .store
                .read(journal::load)
                .await
                .context("cannot read the durable outbound queue from the store")?;
            router.load_outbox(loaded);
        }
        tasks.spawn(async move {
            router.run(router_rx).await;
            tracing::error!("router stopped");
        });
        if !node.config.uplink.is_empty() {
            let node = node.clone();
            tasks.spawn(uplink::run(node));
        }
    }

    let mut infos = Vec::new();
    for cfg in node.config.listener.clone() {
        if cfg.security_profile == 0 {
            tracing::warn!(
                listener = %cfg.name,
                "SECURITY PROFILE 0: chargers on this listener connect WITHOUT authentication; use profile 1+ outside a lab"
            );
        }
        let (info, accept_loop) = listener::bind(node.clone(), cfg).await?;
        tasks.spawn(accept_loop);
        infos.push(info);
    }
    let mut ready = Vec::new();
    for info in &infos {
        ready.push(format!("listening {} {}", info.name, info.url));
    }
    let admin = node.config.admin.clone();
    if admin.enabled {
        let socket = tokio::net::TcpListener::bind(admin.bind)
            .await
            .with_context(|| format!("admin API cannot bind {}", admin.bind))?;
        ready.push(format!("listening admin http://{}", socket.local_addr()?));
        let router = admin::router(node.clone());
        tasks.spawn(async move {
            if let Err(e) = axum::serve(socket, router).await {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
    }
    let _ = node.listeners.set(infos.clone());

    // The machine-readable lines first (tests and scripts wait for them), then the human hint.
    let mut out = std::io::stdout().lock();
    for line in &ready {
        writeln!(out, "{line}")?;
    }
    for info in &infos {
        let url = match info.url.strip_prefix("ws://0.0.0.0") {
            Some(rest) => format!("ws://<this-host-address>{rest}"),
            None => info.url.clone(),
        };
        writeln!(out, "point chargers at {url}/<chargerId>")?;
    }
    out.flush()?;
    drop(out);

    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = terminate() => tracing::info!("terminated; shutting down"),
        Some(_) = tasks.join_next() => bail!("a listener, the router or the audit log stopped unexpectedly"),
    }
    // The last records and a signed head that covers them, so the log ends where the node did.
    node.audit.stop().await;
    Ok(())
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
