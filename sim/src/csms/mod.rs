//! `ocpp-sim csms`: a plain OCPP-J CSMS that accepts any charger and answers every CALL at once
//! with the smallest valid response. It is the backend of relay benchmarks and end-to-end tests,
//! so the per-frame path takes no lock and logs nothing above debug level.
//!
//! Chargers connect at `<url>/<chargerId>`. The highest offered subprotocol that `--subprotocols`
//! allows is chosen; an offer with none of them gets HTTP 400, and `--refuse ID` answers HTTP 404
//! for that id (a CSMS refusing a charger). On SIGTERM, SIGINT or `--duration` expiry a JSON
//! summary line goes to stdout: `{"connections":..,"calls":..,"by_action":{...},...}`.
//!
//! `ocpp-sim backend` ([`crate::backend`]) is the same server in its [`Flavor::Backend`] form:
//! any path, `{}` for unknown actions, and a two-field summary.

mod answers;
mod conn;
mod stats;

use std::collections::HashSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wire::{Limits, OcppVersion};

use stats::Stats;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on; port 0 picks a free one (the `listening` line tells which).
    #[arg(long)]
    listen: SocketAddr,
    /// URL path under which chargers connect, as `<path>/<chargerId>`.
    #[arg(long, default_value = "/ocpp")]
    path: String,
    /// Subprotocols accepted, comma-separated; the highest one a charger offers wins.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_subprotocol,
        default_value = "ocpp1.6,ocpp2.0.1,ocpp2.1"
    )]
    subprotocols: Vec<OcppVersion>,
    /// Refuse this charger id with HTTP 404 (repeatable).
    #[arg(long = "refuse", value_name = "ID")]
    refuse: Vec<String>,
    /// Send this CALL to each charger right after answering its BootNotification, e.g.
    /// `Reset:{"type":"Soft"}` (repeatable; sent one at a time, in order).
    #[arg(long = "on-boot", value_name = "ACTION:JSON", value_parser = parse_on_boot)]
    on_boot: Vec<OnBootCall>,
    /// The heartbeat interval given in BootNotification answers, in seconds.
    #[arg(long, default_value_t = 300)]
    heartbeat_interval: u32,
    /// Print the summary to stderr every SECS seconds.
    #[arg(long, value_name = "SECS")]
    stats_every: Option<u64>,
    /// Print the summary and exit after SECS seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Add `"by_charger":{id:calls}` to the summary (large with many chargers).
    #[arg(long)]
    by_charger: bool,
}

/// A CALL sent to every charger after its boot.
#[derive(Debug, Clone)]
pub struct OnBootCall {
    action: String,
    payload: Box<RawValue>,
}

fn parse_on_boot(s: &str) -> Result<OnBootCall, String> {
    let Some((action, json)) = s.split_once(':') else {
        return Err("expected ACTION:JSON, e.g. Reset:{\"type\":\"Soft\"}".into());
    };
    if action.is_empty() {
        return Err("the action is empty".into());
    }
    let payload = RawValue::from_string(json.to_owned()).map_err(|e| format!("{e}"))?;
    if !payload.get().trim_start().starts_with('{') {
        return Err("the payload must be a JSON object".into());
    }
    Ok(OnBootCall {
        action: action.to_owned(),
        payload,
    })
}

fn parse_subprotocol(s: &str) -> Result<OcppVersion, String> {
    let token = if s.starts_with("ocpp") {
        s.to_owned()
    } else {
        format!("ocpp{s}")
    };
    token.parse().map_err(|e| format!("{e}"))
}

/// Which server this is: the simulated CSMS, or the bare backend of relay benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `ocpp-sim csms`: chargers under `--path`, NotImplemented for unknown actions, the full
    /// summary.
    Csms,
    /// `ocpp-sim backend`: chargers at any `/<anything>/<id>`, `{}` for unknown actions, and the
    /// summary `{"connections":n,"calls":n,"signed":n}`.
    Backend,
}

impl Flavor {
    fn name(self) -> &'static str {
        match self {
            Flavor::Csms => "csms",
            Flavor::Backend => "backend",
        }
    }
}

/// Everything [`serve`] needs; `csms` fills it from its flags, `backend` with fixed values.
pub struct Options {
    pub flavor: Flavor,
    pub listen: SocketAddr,
    /// The path chargers connect under (`<path>/<id>`); `None` accepts any path and takes the
    /// last segment as the id.
    pub path: Option<String>,
    pub subprotocols: Vec<OcppVersion>,
    pub refuse: Vec<String>,
    pub on_boot: Vec<OnBootCall>,
    pub heartbeat_interval: u32,
    pub stats_every: Option<u64>,
    pub duration: Option<Duration>,
    pub by_charger: bool,
}

/// Settings every connection reads.
pub struct Config {
    flavor: Flavor,
    heartbeat_interval: u32,
    on_boot: Vec<OnBootCall>,
    limits: Limits,
}

/// What the accept loop hands to each connection.
pub struct Shared {
    config: Config,
    stats: Arc<Stats>,
    /// `<path>/`, the prefix before a charger id; `None`: any path, the id is its last segment.
    prefix: Option<String>,
    subprotocols: Vec<OcppVersion>,
    refuse: HashSet<String>,
    ws_config: WebSocketConfig,
}

/// A handshake that takes longer is dropped, so idle sockets cannot pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(args: Args) -> Result<bool> {
    let path = format!("/{}", args.path.trim_matches('/'));
    serve(Options {
        flavor: Flavor::Csms,
        listen: args.listen,
        path: Some(path.trim_end_matches('/').to_owned()),
        subprotocols: args.subprotocols,
        refuse: args.refuse,
        on_boot: args.on_boot,
        heartbeat_interval: args.heartbeat_interval,
        stats_every: args.stats_every,
        duration: args.duration.map(Duration::from_secs),
        by_charger: args.by_charger,
    })
    .await
}

/// Listens, serves every charger until SIGTERM, SIGINT or the duration, then prints the summary.
pub async fn serve(args: Options) -> Result<bool> {
    if args.subprotocols.is_empty() {
        bail!("--subprotocols must name at least one version");
    }
    let limits = Limits::default();
    let ws_config = crate::ws::config(limits.max_frame_bytes);
    // The URL printed in the `listening` line: the backend accepts any path, and shows the usual
    // one.
    let shown_path = args.path.clone().unwrap_or_else(|| "/ocpp".to_owned());
    let shared = Arc::new(Shared {
        config: Config {
            flavor: args.flavor,
            heartbeat_interval: args.heartbeat_interval,
            on_boot: args.on_boot,
            limits,
        },
        stats: Arc::new(Stats::new(args.by_charger)),
        prefix: args.path.map(|path| format!("{path}/")),
        subprotocols: args.subprotocols,
        refuse: args.refuse.into_iter().collect(),
        ws_config,
    });

    let listener = crate::ws::listen(args.listen)?;
    let local = listener.local_addr()?;

    // Signal handlers go in before the ready line, so a test that signals right after reading
    // it gets a summary rather than the default action (death without output).
    let shutdown = shutdown_signal(args.duration)?;
    tokio::pin!(shutdown);

    println!("listening {} ws://{local}{shown_path}", args.flavor.name());
    std::io::stdout().flush()?;

    if let Some(every) = args.stats_every.filter(|s| *s > 0) {
        let stats = Arc::clone(&shared.stats);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            tick.tick().await; // the first tick is immediate
            loop {
                tick.tick().await;
                eprintln!("{}", stats.summary());
            }
        });
    }

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(accept(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    let summary = shared.stats.summary();
    let summary = match args.flavor {
        Flavor::Csms => summary,
        Flavor::Backend => serde_json::json!({
            "connections": summary["connections"],
            "calls": summary["calls"],
            "signed": summary["signed_calls"],
        }),
    };
    println!("{summary}");
    std::io::stdout().flush()?;
    Ok(true)
}

/// Resolves on SIGTERM, SIGINT or after `duration`. The handlers are installed by this call.
pub fn shutdown_signal(
    duration: Option<Duration>,
) -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };
    Ok(async move {
        let timer = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        #[cfg(unix)]
        tokio::select! {
            () = timer => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::select! {
            () = timer => {}
            Ok(()) = tokio::signal::ctrl_c() => {}
        }
    })
}

/// The WebSocket upgrade, then the connection.
// The callback's large `Err` is tungstenite's `ErrorResponse`; its signature is not ours to choose.
#[allow(clippy::result_large_err)]
async fn accept(stream: TcpStream, shared: Arc<Shared>) {
    // Every reply is a small frame someone waits for; Nagle would add latency to each.
    let _ = stream.set_nodelay(true);
    let mut agreed: Option<(String, OcppVersion)> = None;
    let callback = |request: &Request, mut response: Response| match shared.decide(request) {
        Ok((charger, version, echo)) => {
            if echo {
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(version.subprotocol()),
                );
            }
            shared.stats.accepted();
            agreed = Some((charger, version));
            Ok(response)
        }
        Err((status, reason)) => {
            tracing::debug!(path = %request.uri(), %status, reason, "upgrade refused");
            shared.stats.refused();
            let mut refusal = ErrorResponse::new(Some(reason));
            *refusal.status_mut() = status;
            Err(refusal)
        }
    };
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(shared.ws_config));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "WebSocket handshake failed or refused");
            return;
        }
        Err(_) => {
            tracing::debug!("WebSocket handshake timed out");
            return;
        }
    };
    let Some((charger, version)) = agreed else {
        // The handshake cannot succeed without the callback accepting it.
        return;
    };
    tracing::debug!(%charger, %version, "charger connected");
    let registration = shared.stats.register(charger);
    let conn = &registration.conn;
    conn::serve(ws, &conn.charger, version, &conn.counters, &shared).await;
}

impl Shared {
    /// Accepts or refuses an upgrade: the charger id, the version, and whether to echo the
    /// subprotocol; or the HTTP status and reason.
    fn decide(
        &self,
        request: &Request,
    ) -> Result<(String, OcppVersion, bool), (StatusCode, String)> {
        let path = request.uri().path();
        let raw_id = match &self.prefix {
            Some(prefix) => path.strip_prefix(prefix.as_str()).ok_or_else(|| {
                (
                    StatusCode::NOT_FOUND,
                    format!("connect at {prefix}<chargerId>"),
                )
            })?,
            None => crate::ws::last_segment(path),
        };
        let charger = percent_encoding::percent_decode_str(raw_id)
            .decode_utf8()
            .map_err(|_| (StatusCode::NOT_FOUND, "charger id is not UTF-8".to_owned()))?;
        if charger.is_empty() || charger.contains('/') {
            return Err((
                StatusCode::NOT_FOUND,
                "no charger id in the path".to_owned(),
            ));
        }
        if self.refuse.contains(charger.as_ref()) {
            return Err((
                StatusCode::NOT_FOUND,
                format!("charger {charger} is refused"),
            ));
        }
        let offered = crate::ws::offered_subprotocols(request.headers());
        if offered.is_empty() {
            // As most CSMSs do: a charger that offers nothing is taken to speak 1.6.
            return if self.subprotocols.contains(&OcppVersion::V16) {
                Ok((charger.into_owned(), OcppVersion::V16, false))
            } else {
                Err((StatusCode::BAD_REQUEST, "no subprotocol offered".to_owned()))
            };
        }
        let best = offered
            .iter()
            .filter_map(|token| token.parse::<OcppVersion>().ok())
            .filter(|v| self.subprotocols.contains(v))
            .max();
        match best {
            Some(version) => Ok((charger.into_owned(), version, true)),
            None => Err((
                StatusCode::BAD_REQUEST,
                format!("none of the subprotocols {offered:?} is accepted"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_boot_needs_action_and_object() {
        let call = parse_on_boot(r#"Reset:{"type":"Soft"}"#).unwrap();
        assert_eq!(call.action, "Reset");
        assert_eq!(call.payload.get(), r#"{"type":"Soft"}"#);
        assert!(parse_on_boot("Reset").is_err());
        assert!(parse_on_boot(":{}").is_err());
        assert!(parse_on_boot("Reset:[1]").is_err());
        assert!(parse_on_boot("Reset:{").is_err());
    }

    #[test]
    fn subprotocols_parse_with_or_without_prefix() {
        assert_eq!(parse_subprotocol("1.6"), Ok(OcppVersion::V16));
        assert_eq!(parse_subprotocol("ocpp2.0.1"), Ok(OcppVersion::V201));
        assert!(parse_subprotocol("ocpp1.5").is_err());
    }
}
