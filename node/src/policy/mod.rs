//! The signature policy stage: the OCPP firewall of ARCHITECTURE §3.5.
//!
//! Every CALL and SEND that routing is about to forward or deliver is screened here, after
//! the allow-list and loop checks (so a refusal never answers a spoofed path):
//! * `in` rules check the signatures of what enters this node, from any link, and refuse it
//!   with CALLERROR SecurityError (and a security event) when the policy is not met;
//! * `out` rules sign what this node originates or translates from a plain peer (an edge
//!   attesting for a legacy charger with its identity key);
//! * toward a plain charger or the CSMS, the checked `signatures` member is removed unless
//!   `deliver_signatures` is set, since their schemas do not allow it.
//!
//! Forwarded payloads pass through untouched unless one of these applies, so signatures made
//! anywhere survive every hop. The rules are swapped on SIGHUP ([`reload`]) without touching a
//! connection; the stage picks up a new set on its next tick, so the frame path takes no lock.

pub mod reload;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use serde_json::value::RawValue;
use signing::policy::{PolicySet, Verdict};
use signing::signature::{self, SignOptions};
use signing::{Message, PrivateKey, ReplayCache};
use tokio::sync::watch;
use wire::MessageType;

use crate::config::SigningConfig;
use crate::config::signing::IDENTITY_KEY;
use crate::engine::Cx;
use crate::engine::stages::{Origin, Passing, Screen, Stage};

/// A checked policy set with the keys it signs with.
#[derive(Debug)]
pub struct Policy {
    pub set: PolicySet,
    pub keys: HashMap<String, PrivateKey>,
    pub deliver_signatures: bool,
    pub replay_cache: usize,
}

impl Policy {
    /// Builds the set from `[signing]`; `keys` are the loaded `[[signing.key]]` files, and
    /// `identity` the node identity key file. Every mistake is returned.
    pub fn build(
        config: &SigningConfig,
        mut keys: HashMap<String, PrivateKey>,
        jws_keys: Vec<signing::jws::JwsKey>,
        identity: Option<&std::path::Path>,
    ) -> Result<Policy, Vec<String>> {
        let set = config
            .policy_set()
            .map_err(|errors| {
                errors
                    .into_iter()
                    .map(|(path, m)| format!("{path}: {m}"))
                    .collect::<Vec<_>>()
            })?
            .with_jws_keys(jws_keys);
        let wants_identity = set
            .rules()
            .iter()
            .any(|r| r.check == signing::Check::Sign(IDENTITY_KEY.to_owned()));
        if wants_identity {
            let path = identity.ok_or_else(|| {
                vec![
                    "signing: a policy signs with the identity key, which is not loaded".to_owned(),
                ]
            })?;
            let key = crate::core::small_file::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| PrivateKey::from_pkcs8(&b).map_err(|e| e.to_string()))
                .map_err(|e| vec![format!("node identity key {}: {e}", path.display())])?;
            keys.insert(IDENTITY_KEY.to_owned(), key);
        }
        Ok(Policy {
            set,
            keys,
            deliver_signatures: config.deliver_signatures,
            replay_cache: config.replay_cache,
        })
    }

    /// Nothing to check, sign or strip.
    fn is_idle(&self) -> bool {
        self.set.is_empty() && self.deliver_signatures
    }
}

pub struct Signatures {
    current: Arc<Policy>,
    updates: watch::Receiver<Arc<Policy>>,
    replay: ReplayCache,
}

impl Signatures {
    pub fn new(updates: watch::Receiver<Arc<Policy>>) -> Self {
        let current = updates.borrow().clone();
        Signatures {
            replay: ReplayCache::new(current.replay_cache),
            current,
            updates,
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Stage for Signatures {
    fn name(&self) -> &'static str {
        "signatures"
    }

    fn tick(&mut self, _cx: &mut Cx<'_>) {
        if self.updates.has_changed().unwrap_or(false) {
            let next = self.updates.borrow_and_update().clone();
            if next.replay_cache != self.current.replay_cache {
                // Seen signatures stay refused: the old entries move into the new bound.
                let mut replay = ReplayCache::new(next.replay_cache);
                std::mem::swap(&mut replay, &mut self.replay);
                self.replay.absorb(replay);
            }
            tracing::info!(
                rules = next.set.rules().len(),
                roles = next.set.roles().len(),
                "signature policies reloaded"
            );
            self.current = next;
        }
    }

    fn status(&self, _now: std::time::Instant) -> Option<(&'static str, Value)> {
        let set = &self.current.set;
        Some((
            "signing",
            serde_json::json!({
                "rules": set.rules().len(),
                "roles": set.roles().iter().map(|r| serde_json::json!({
                    "name": r.name, "keys": r.keys.len(),
                })).collect::<Vec<_>>(),
                "signingKeys": self.current.keys.keys().collect::<Vec<_>>(),
                "deliverSignatures": self.current.deliver_signatures,
                "replayCache": {"entries": self.replay.len(), "evicted": self.replay.evicted()},
            }),
        ))
    }

    fn screen(&mut self, p: &Passing<'_, '_>, cx: &mut Cx<'_>) -> Screen {
        // Fields apart: the policy is read while the replay cache is written, with no clone.
        let policy = &*self.current;
        if policy.is_idle() {
            return Screen::Pass;
        }
        let action = p.action();
        let source = p.frame.path.first();
        let destination = p.frame.dest.last();
        let message = Message {
            message_type: if p.frame.frame.message_type() == MessageType::Send {
                6
            } else {
                2
            },
            action,
            destination,
        };
        let mut payload: Option<Value> = None;
        let parse = |payload: &mut Option<Value>| -> Result<(), String> {
            if payload.is_none() {
                *payload = Some(serde_json::from_str(p.payload()).map_err(|e| e.to_string())?);
            }
            Ok(())
        };
        if p.origin != Origin::Local && policy.set.wants_in(action, source, destination) {
            if let Err(e) = parse(&mut payload) {
                return Screen::Refuse(format!("payload is not JSON: {e}"));
            }
            let Some(tree) = &payload else {
                return Screen::Pass;
            };
            match policy
                .set
                .incoming(&message, source, tree, unix_now(), &mut self.replay)
            {
                Verdict::Refused(why) => {
                    cx.security_event(
                        "signature_refused",
                        format_args!("{action} from {source:?} to {destination:?} refused: {why}"),
                    );
                    return Screen::Refuse(why);
                }
                Verdict::Drop(why) => {
                    cx.security_event(
                        "signature_dropped",
                        format_args!("{action} from {source:?} to {destination:?}: {why}"),
                    );
                    return Screen::Drop;
                }
                Verdict::Accepted { signers } => {
                    tracing::debug!(action, source, ?signers, "signature policy met");
                }
                Verdict::Pass | Verdict::Sign(_) => {}
            }
        }
        let strip = p.to_plain && !policy.deliver_signatures;
        if p.origin != Origin::Node
            && !strip
            && let Some(name) = policy.set.outgoing(action, source, destination)
        {
            let Some(key) = policy.keys.get(name) else {
                return Screen::Pass;
            };
            if let Err(e) = parse(&mut payload) {
                tracing::warn!(action, error = %e, "not signed: the payload is not JSON");
                return Screen::Pass;
            }
            let Some(mut tree) = payload.take() else {
                return Screen::Pass;
            };
            let options = SignOptions {
                timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                // The message id is unique per originator, so it serves as the nonce.
                nonce: Some(p.frame.frame.id.to_string()),
                name: Some(cx.own_id().to_owned()),
                description: None,
            };
            let signed = signature::sign(&message, &tree, key, options)
                .and_then(|s| signature::attach(&mut tree, s));
            return match signed.ok().and_then(|()| to_raw(&tree)) {
                Some(raw) => Screen::Payload(raw),
                None => {
                    tracing::warn!(action, "could not sign the payload; sent unsigned");
                    Screen::Pass
                }
            };
        }
        // A cheap look first: most payloads carry no signatures at all.
        if strip && p.payload().contains("\"signatures\"") {
            if parse(&mut payload).is_err() {
                return Screen::Pass;
            }
            if let Some(Value::Object(mut map)) = payload.take()
                && map.remove("signatures").is_some()
                && let Some(raw) = to_raw(&Value::Object(map))
            {
                return Screen::Payload(raw);
            }
        }
        Screen::Pass
    }
}

fn to_raw(value: &Value) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(value).ok()
}
