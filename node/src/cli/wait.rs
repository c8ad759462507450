//! `ocpp-node wait`: blocks until a node is healthy, for scripts after `docker-compose up` and
//! for a technician watching a site come up.
//!
//! Healthy means the admin API answers and, as asked, an uplink is up and enough chargers are
//! connected. On a terminal a spinner says what is still missing; piped, it prints nothing but
//! the final line, so logs stay clean.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::client::Client;

/// What to wait for.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// At least this many chargers connected.
    #[arg(long, default_value_t = 0)]
    pub chargers: usize,
    /// An uplink in state `up`.
    #[arg(long)]
    pub uplink_up: bool,
    /// Give up after this many seconds (exit 1).
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// What is still missing from a status document, or `None` when it is healthy.
pub fn missing(status: &Value, want: &WaitArgs) -> Option<String> {
    let chargers = status["chargers"].as_array().map_or(0, Vec::len);
    let up = status["uplinks"]
        .as_array()
        .is_some_and(|u| u.iter().any(|u| u["state"] == "up"));
    let mut parts = Vec::new();
    if chargers < want.chargers {
        parts.push(format!("{chargers}/{} chargers", want.chargers));
    }
    if want.uplink_up && !up {
        parts.push("no uplink up".to_owned());
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

pub fn run(client: &Client, want: &WaitArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(want.timeout);
    let spinner = std::io::stderr().is_terminal().then(|| {
        let s = ProgressBar::new_spinner();
        s.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        s.enable_steady_tick(Duration::from_millis(120));
        s
    });
    let say = |msg: String| {
        if let Some(s) = &spinner {
            s.set_message(msg);
        }
    };
    let last = loop {
        let why = match client.get("/api/status") {
            Ok(status) => match missing(&status, want) {
                None => break None,
                Some(why) => why,
            },
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            break Some(why);
        }
        say(format!("waiting: {why}"));
        std::thread::sleep(Duration::from_millis(250));
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    match last {
        None => {
            println!("healthy");
            Ok(())
        }
        Some(why) => bail!("not healthy after {} s: {why}", want.timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn want(chargers: usize, uplink_up: bool) -> WaitArgs {
        WaitArgs {
            chargers,
            uplink_up,
            timeout: 1,
        }
    }

    #[test]
    fn health_needs_the_chargers_and_the_uplink_asked_for() {
        let status = json!({"chargers": [{"id": "a"}], "uplinks": [{"state": "backoff"}]});
        assert_eq!(missing(&status, &want(1, false)), None);
        assert_eq!(
            missing(&status, &want(2, true)).as_deref(),
            Some("1/2 chargers, no uplink up")
        );
        let up = json!({"chargers": [], "uplinks": [{"state": "standby"}, {"state": "up"}]});
        assert_eq!(missing(&up, &want(0, true)), None);
    }
}
