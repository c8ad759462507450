//! SIGHUP: read the config file again and swap in its `[signing]` section without touching a
//! connection. A reload with any mistake changes nothing and logs every mistake, so a typo in
//! the field never opens the firewall or locks operators out.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::Policy;
use crate::config::{self, Config};

/// Where a reload reads from, and what it publishes to.
pub struct Reloader {
    pub config_file: Option<PathBuf>,
    pub identity_key: Option<PathBuf>,
    /// The config the node runs, to warn that other sections need a restart.
    pub running: Config,
    pub policies: watch::Sender<Arc<Policy>>,
}

impl Reloader {
    /// Reloads on every SIGHUP until the process ends.
    pub async fn run(self) {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(s) => s,
            Err(e) => {
                return tracing::warn!(error = %e, "no SIGHUP handler: policies cannot be reloaded");
            }
        };
        let me = Arc::new(self);
        while hangups.recv().await.is_some() {
            let this = me.clone();
            let outcome = tokio::task::spawn_blocking(move || this.reload()).await;
            match outcome {
                Ok(Ok(policy)) => {
                    tracing::info!(
                        rules = policy.set.rules().len(),
                        roles = policy.set.roles().len(),
                        "SIGHUP: signature policies and roles loaded; they apply within a second"
                    );
                    me.policies.send_replace(Arc::new(policy));
                }
                Ok(Err(errors)) => {
                    tracing::error!(
                        mistakes = errors.len(),
                        "SIGHUP: the config has mistakes; the running policies are kept"
                    );
                    for e in errors {
                        tracing::error!("SIGHUP: {e}");
                    }
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed"),
            }
        }
    }

    /// The new policy set, or every mistake found.
    pub fn reload(&self) -> Result<Policy, Vec<String>> {
        let Some(path) = &self.config_file else {
            return Err(vec![
                "the node runs on the embedded default config: there is no file to reload".into(),
            ]);
        };
        let text = config::read(path).map_err(to_strings)?;
        let parsed = config::parse_all(&text);
        let mut errors = to_strings(parsed.errors.clone());
        let Some(mut new) = parsed.config else {
            return Err(errors);
        };
        let (keys, key_errors) = config::files::load_signing_keys(&new.signing);
        errors.extend(to_strings(key_errors));
        let (jws, jws_errors) = config::files::load_jws_keys(&new.signing);
        errors.extend(to_strings(jws_errors));
        if !errors.is_empty() {
            return Err(errors);
        }
        let policy = Policy::build(&new.signing, keys, jws, self.identity_key.as_deref())?;
        new.signing = self.running.signing.clone();
        if new != self.running {
            tracing::warn!(
                "SIGHUP: only [signing] is reloaded; the other changes in {} take effect at the next start",
                path.display()
            );
        }
        Ok(policy)
    }
}

fn to_strings(errors: Vec<config::ConfigError>) -> Vec<String> {
    errors.into_iter().map(|e| e.to_string()).collect()
}
