//! `ocpp-node`: one binary for the edge, local-controller and hub roles of ocpp-overlay.
//!
//! With no arguments it runs as a standalone local controller with the embedded default config:
//! chargers connect to it as to a central system, and it answers, authorizes from its local list
//! and records transactions in its store file.

mod admin;
mod auth;
mod config;
mod csms_connector;
mod dial;
mod handshake;
mod ip_guard;
mod listener;
mod local_csms;
mod metrics;
mod overlay_link;
mod router;
mod schema;
mod secrets;
mod session;
mod state;
mod status;
mod store;
mod tls;
mod transactions;
mod uplink;

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::state::Node;

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
}

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
    }
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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let data_dir = &config.node.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let store_path = data_dir.join("node.redb");
    let store = store::Store::open(&store_path).with_context(|| {
        format!(
            "cannot open the store {} (is another node using it?)",
            store_path.display()
        )
    })?;
    let secrets = match &config.node.secrets_file {
        Some(path) => secrets::Secrets::load(path)?,
        None => secrets::Secrets::default(),
    };
    let overlay = config.is_overlay();
    let (router_tx, router_rx) = tokio::sync::mpsc::channel(4096);
    let node = Arc::new(Node::new(
        config,
        secrets,
        store,
        metrics::Metrics::new()?,
        overlay.then_some(router_tx),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    if overlay {
        let router = router::Router::new(node.clone());
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
        Some(_) = tasks.join_next() => bail!("a listener or the router stopped unexpectedly"),
    }
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
