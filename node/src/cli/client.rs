//! The admin API as the CLI sees it: where the node is and which token to present.
//!
//! The admin API is plain HTTP on loopback, so a single GET over a TCP stream is enough; an HTTP
//! client crate would add a large dependency tree for one request. The token is looked up the
//! way a technician on the node's machine would expect it to be found without typing it:
//! `$OCPP_NODE_ADMIN_TOKEN`, `--token-file`, the config's secrets file or data directory, and
//! last `./ocpp-node-data/admin.token` (the default config's).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::admin::auth::{TOKEN_FILE, read_token_file};
use crate::config::Config;
use crate::core::secrets::Secrets;

/// Largest admin response read; the status document is a few KiB per hundred chargers.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;
/// The environment variable a script may set instead of a token file.
pub const TOKEN_ENV: &str = "OCPP_NODE_ADMIN_TOKEN";

/// Where to reach the node's admin API, shared by every subcommand that talks to it.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The node's admin API.
    #[arg(long, default_value = "http://127.0.0.1:9800")]
    pub admin: String,
    /// A file holding the admin token (else $OCPP_NODE_ADMIN_TOKEN, the --config's token, or
    /// ./ocpp-node-data/admin.token).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The node's config: its secrets file's `[admin] token`, else `<data_dir>/admin.token`.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// A connection target with its credentials.
pub struct Client {
    url: String,
    token: Option<String>,
}

impl Client {
    pub fn new(args: &AdminArgs) -> anyhow::Result<Client> {
        Ok(Client {
            url: args.admin.clone(),
            token: token(args)?,
        })
    }

    /// GET `path` and parse the JSON body; a refusal names its HTTP status and what to do.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let host = self
            .url
            .strip_prefix("http://")
            .context("the admin URL must start with http://")?
            .trim_end_matches('/');
        let mut stream = TcpStream::connect(host)
            .with_context(|| format!("cannot reach the node's admin API at {}", self.url))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let auth = self
            .token
            .as_deref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
        let text = String::from_utf8(raw).context("admin response is not UTF-8")?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("malformed HTTP response")?;
        let status_line = head.lines().next().unwrap_or_default();
        if status_line.starts_with("HTTP/1.1 401") {
            bail!(
                "the admin API refused {}: give --token-file FILE, --config FILE or set ${TOKEN_ENV}",
                if self.token.is_some() {
                    "the token"
                } else {
                    "a request without a token (none found)"
                }
            );
        }
        if !status_line.starts_with("HTTP/1.1 200") {
            bail!("admin API answered: {status_line}");
        }
        // axum answers these routes with Content-Length, never chunked.
        serde_json::from_str(body).context("admin response is not JSON")
    }
}

fn token(args: &AdminArgs) -> anyhow::Result<Option<String>> {
    if let Ok(t) = std::env::var(TOKEN_ENV)
        && !t.trim().is_empty()
    {
        return Ok(Some(t.trim().to_owned()));
    }
    if let Some(file) = &args.token_file {
        return Ok(Some(read_token_file(file)?));
    }
    if let Some(config) = &args.config {
        return config_token(config).map(Some);
    }
    let default = Path::new("ocpp-node-data").join(TOKEN_FILE);
    if default.exists() {
        return Ok(Some(read_token_file(&default)?));
    }
    Ok(None)
}

fn config_token(path: &Path) -> anyhow::Result<String> {
    let config = Config::load(path).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
        anyhow::anyhow!("{}: invalid config:\n{}", path.display(), list.join("\n"))
    })?;
    if let Some(file) = &config.node.secrets_file {
        let secrets = Secrets::load(file)?;
        if let Some(t) = secrets.admin_token() {
            return Ok(t.expose().to_owned());
        }
    }
    Ok(read_token_file(&config.node.data_dir.join(TOKEN_FILE))?)
}
