//! `ocpp-node`: one binary for the edge, local-controller and hub roles of ocpp-overlay.
//!
//! With no arguments it runs as a standalone local controller with the embedded default config:
//! chargers connect to it as to a central system, and it answers, authorizes from its local list
//! and records transactions in its store file.

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use ocpp_node::app::{self, STORE_FILE};
use ocpp_node::audit;
use ocpp_node::cli::client::{AdminArgs, Client};
use ocpp_node::cli::keys::{self, GenerateArgs, SignArgs, VerifyArgs};
use ocpp_node::cli::wait::{self, WaitArgs};
use ocpp_node::cli::{status, tables};
use ocpp_node::config::files::{self, Loaded};
use ocpp_node::config::{Config, ConfigError};
use ocpp_node::core::store;
use ocpp_node::net::password;

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
    Status(View),
    /// The connected chargers: version, security profile, since when, last message, path.
    Chargers(View),
    /// The overlay routes (and, on a hub, the CSMS sockets).
    Routes(View),
    /// The newest security events.
    Events(View),
    /// The durable queue of transaction messages and its dead letters.
    Outbox(View),
    /// Wait until the node answers and is healthy (exit 1 on timeout).
    Wait {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        want: WaitArgs,
    },
    /// Read a password from stdin and print its salted hash for `[chargers.<id>] password_hash`.
    HashPassword,
    /// The security event log (a hash chain in the store file).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Keys for end-to-end signatures: make a key file, show its keyId.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Sign a JSON payload: print it as one line with a new signature object appended to its
    /// `signatures` member.
    Sign(SignArgs),
    /// Check a payload's signatures by the given keyIds: exit 0 printing `verified <keyId>` per
    /// signature, or exit 1 saying why.
    Verify(VerifyArgs),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new private key (PKCS#8 PEM, mode 0600) and print its keyId.
    Generate(GenerateArgs),
    /// Print a key file's keyId and algorithm (never the private key).
    Show { file: PathBuf },
}

/// The options of every subcommand that shows an admin resource.
#[derive(clap::Args)]
struct View {
    #[command(flatten)]
    admin: AdminArgs,
    /// Print the JSON the admin API answered instead of a table.
    #[arg(long)]
    json: bool,
}

impl View {
    /// GETs `path` and prints it as JSON or with `human`.
    fn show(&self, path: &str, human: fn(&serde_json::Value)) -> anyhow::Result<()> {
        let value = Client::new(&self.admin)?.get(path)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            human(&value);
        }
        Ok(())
    }
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
                let config = Config::load(config).map_err(|errors| invalid(config, &errors))?;
                Ok(config.node.data_dir.join(STORE_FILE))
            }
            (None, None) => bail!("give --store FILE or --config FILE"),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run { config: None }) {
        Command::Run { config } => run(config),
        Command::CheckConfig { file } => check_config(&file),
        Command::Status(view) => view.show("/api/status", status::print),
        Command::Chargers(view) => view.show("/api/status", tables::chargers),
        Command::Routes(view) => view.show("/api/status", tables::routes),
        Command::Events(view) => view.show("/api/events", tables::events),
        Command::Outbox(view) => view.show("/api/outbox", tables::outbox),
        Command::Wait { admin, want } => wait::run(&Client::new(&admin)?, &want),
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("no password on stdin");
            }
            println!(
                "{}",
                password::hash_password(password).map_err(anyhow::Error::msg)?
            );
            Ok(())
        }
        Command::Audit { command } => match command {
            AuditCommand::Verify { store, public_key } => {
                audit_verify(&store.path()?, public_key.as_deref())
            }
            AuditCommand::Show { store } => audit_show(&store.path()?),
        },
        Command::Keys { command } => match command {
            KeysCommand::Generate(args) => {
                println!("{}", keys::generate(&args)?);
                Ok(())
            }
            KeysCommand::Show { file } => {
                println!("{}", keys::show(&file)?);
                Ok(())
            }
        },
        Command::Sign(args) => {
            println!("{}", keys::sign(&args)?);
            Ok(())
        }
        Command::Verify(args) => {
            let found = keys::verify(&args, chrono::Utc::now().timestamp())?;
            for note in &found.ignored {
                eprintln!("ignored: {note}");
            }
            for id in &found.verified {
                println!("verified {id}");
            }
            Ok(())
        }
    }
}

fn audit_verify(path: &Path, public_key: Option<&str>) -> anyhow::Result<()> {
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

fn audit_show(path: &Path) -> anyhow::Result<()> {
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

fn invalid(path: &Path, errors: &[ConfigError]) -> anyhow::Error {
    let list: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
    anyhow::anyhow!("{}: invalid config:\n{}", path.display(), list.join("\n"))
}

/// `check-config` runs the same start-up step as `run` (the files the config names are read
/// too), so a config it calls valid starts.
fn check_config(file: &Path) -> anyhow::Result<()> {
    match files::load(file) {
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
    let (config, files) = match &config_path {
        Some(path) => files::load(path).map_err(|errors| invalid(path, &errors))?,
        None => {
            tracing::info!(
                "no --config given: running as a standalone local controller with the embedded default"
            );
            (Config::embedded_default(), Loaded::default())
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
    let result = runtime.block_on(app::serve(config, files, store.clone()));
    // Shutting the runtime down drops every task and with them the other store handles; closing
    // the last one then waits for the writer, so the file is closed cleanly and needs no repair
    // at the next start or for `audit verify`. A blocking task that outlives the timeout keeps
    // its handle, and the process then exits without waiting (every acknowledged write is
    // committed anyway).
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    store.close();
    result
}
