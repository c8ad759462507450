//! User roles and signature policies: what a node demands of a message before it acts on it
//! or passes it on, and which messages it signs itself (ARCHITECTURE §3.5).
//!
//! A [`PolicySet`] is built once from configuration (every mistake is reported, not just the
//! first) and then asked, per CALL or SEND, for a [`Verdict`]. Rules are tried in order and
//! the first whose direction, action, source and destination globs match decides; a message
//! that no rule matches passes untouched, so a pure forwarder verifies nothing.
//!
//! A role is a set of keys, the actions they may invoke and the device-model variables they
//! may read or write. A key that signs for a role only counts for an action (and for the
//! variables a Get/Set names) that the role allows, so a `user` key can sign a Reset
//! perfectly well and still not get one through.

use std::collections::HashMap;

use routing::glob::Glob;
use serde_json::Value;

use crate::canonical::Message;
use crate::jws::{self, JwsKey};
use crate::replay::ReplayCache;
use crate::signature::{self, VerifyError};
use crate::{KeyError, PublicKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A CALL or SEND entering this node, from any link.
    In,
    /// A CALL or SEND this node originates, or translates from a plain peer into the overlay.
    Out,
}

/// Who may satisfy a requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Key(String),
    Role(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Out: sign with the named key.
    Sign(String),
    /// Out: leave as it is.
    None,
    /// In: a valid signature by at least one of these.
    RequireAny(Vec<Principal>),
    /// In: a valid signature by each of these.
    RequireAll(Vec<Principal>),
    /// In: unsigned passes; signatures present are checked all the same.
    AcceptUnsigned,
    /// In: refused with a CALLERROR.
    Reject,
    /// In: dropped silently.
    Drop,
    /// In: OCPP's own signed message (`<Action>-Signed`, a JWS) by a trusted key.
    RequireJws,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub direction: Direction,
    pub action: Glob,
    pub source: Glob,
    pub destination: Glob,
    pub check: Check,
}

#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    /// keyIds.
    pub keys: Vec<String>,
    pub actions: Vec<Glob>,
    /// Device-model variables (`Component.Variable` in 2.x, the key in 1.6) it may read.
    pub read: Vec<Glob>,
    pub write: Vec<Glob>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("role {role:?}: key {key:?}: {error}")]
    RoleKey {
        role: String,
        key: String,
        error: KeyError,
    },
    #[error("role {0:?} is defined twice")]
    DuplicateRole(String),
    #[error("policy {rule}: unknown role {role:?}")]
    UnknownRole { rule: usize, role: String },
    #[error("policy {rule}: key {key:?}: {error}")]
    RuleKey {
        rule: usize,
        key: String,
        error: KeyError,
    },
    #[error("policy {rule}: unknown signing key {key:?}")]
    UnknownSigningKey { rule: usize, key: String },
    #[error("policy {rule}: {check} is for direction {wants}")]
    WrongDirection {
        rule: usize,
        check: &'static str,
        wants: &'static str,
    },
    #[error("policy {rule}: require-any / require-all name no key or role")]
    EmptyRequirement { rule: usize },
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No rule for it.
    Pass,
    /// A rule admitted it; these keys' signatures verified.
    Accepted { signers: Vec<String> },
    /// Out: sign it with this key name.
    Sign(String),
    /// Refused: answer a CALL with SecurityError and record why.
    Refused(String),
    /// Dropped silently (and recorded).
    Drop(String),
}

#[derive(Debug)]
pub struct PolicySet {
    keys: HashMap<String, PublicKey>,
    /// keyId → indices of its roles.
    roles_of: HashMap<String, Vec<usize>>,
    roles: Vec<Role>,
    rules: Vec<Rule>,
    window: i64,
    /// Trusted keys for `require-jws`.
    jws_keys: Vec<JwsKey>,
}

/// Access a Get/Set asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

impl PolicySet {
    /// Checks everything and reports every mistake. `signing_keys` are the key names an
    /// out rule may sign with; `window` is the ± timestamp window in seconds.
    pub fn new(
        roles: Vec<Role>,
        rules: Vec<Rule>,
        signing_keys: &[&str],
        window: i64,
    ) -> Result<PolicySet, Vec<PolicyError>> {
        let mut errors = Vec::new();
        let mut keys = HashMap::new();
        let mut roles_of: HashMap<String, Vec<usize>> = HashMap::new();
        let mut names = HashMap::new();
        for (i, role) in roles.iter().enumerate() {
            if names.insert(role.name.clone(), i).is_some() {
                errors.push(PolicyError::DuplicateRole(role.name.clone()));
            }
            for key in &role.keys {
                match PublicKey::from_key_id(key) {
                    Ok(k) => {
                        keys.insert(key.clone(), k);
                        roles_of.entry(key.clone()).or_default().push(i);
                    }
                    Err(error) => errors.push(PolicyError::RoleKey {
                        role: role.name.clone(),
                        key: key.clone(),
                        error,
                    }),
                }
            }
        }
        for (n, rule) in rules.iter().enumerate() {
            let n = n + 1;
            let (check, wants) = match &rule.check {
                Check::Sign(_) => ("sign", Direction::Out),
                Check::None => ("none", Direction::Out),
                Check::RequireAny(_) => ("require-any", Direction::In),
                Check::RequireAll(_) => ("require-all", Direction::In),
                Check::AcceptUnsigned => ("accept-unsigned", Direction::In),
                Check::Reject => ("reject", Direction::In),
                Check::Drop => ("drop", Direction::In),
                Check::RequireJws => ("require-jws", Direction::In),
            };
            if rule.direction != wants {
                errors.push(PolicyError::WrongDirection {
                    rule: n,
                    check,
                    wants: if wants == Direction::In { "in" } else { "out" },
                });
            }
            match &rule.check {
                Check::Sign(key) if !signing_keys.contains(&key.as_str()) => {
                    errors.push(PolicyError::UnknownSigningKey {
                        rule: n,
                        key: key.clone(),
                    })
                }
                Check::RequireAny(ps) | Check::RequireAll(ps) => {
                    if ps.is_empty() {
                        errors.push(PolicyError::EmptyRequirement { rule: n });
                    }
                    for p in ps {
                        match p {
                            Principal::Role(r) if !names.contains_key(r) => {
                                errors.push(PolicyError::UnknownRole {
                                    rule: n,
                                    role: r.clone(),
                                })
                            }
                            Principal::Key(k) => match PublicKey::from_key_id(k) {
                                Ok(key) => {
                                    keys.insert(k.clone(), key);
                                }
                                Err(error) => errors.push(PolicyError::RuleKey {
                                    rule: n,
                                    key: k.clone(),
                                    error,
                                }),
                            },
                            Principal::Role(_) => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(PolicySet {
            keys,
            roles_of,
            roles,
            rules,
            window,
            jws_keys: Vec::new(),
        })
    }

    /// The keys a `require-jws` rule trusts (certificates or public keys of the signers).
    pub fn with_jws_keys(mut self, keys: Vec<JwsKey>) -> PolicySet {
        self.jws_keys = keys;
        self
    }

    pub fn window(&self) -> i64 {
        self.window
    }

    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// True when no rule exists: the stage can skip every frame.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn rule(
        &self,
        direction: Direction,
        action: &str,
        source: &str,
        destination: &str,
    ) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            r.direction == direction
                && r.action.matches(action)
                && r.source.matches(source)
                && r.destination.matches(destination)
        })
    }

    /// Whether an outgoing message is to be signed, and with which key.
    pub fn outgoing(&self, action: &str, source: &str, destination: &str) -> Option<&str> {
        match &self
            .rule(Direction::Out, action, source, destination)?
            .check
        {
            Check::Sign(key) => Some(key),
            _ => None,
        }
    }

    /// Whether any in rule could apply to `action`, without parsing anything. An OCPP
    /// signed message (`Reset-Signed`) is matched by its inner action (`Reset`).
    pub fn wants_in(&self, action: &str, source: &str, destination: &str) -> bool {
        let action = jws::is_signed_action(action).unwrap_or(action);
        self.rule(Direction::In, action, source, destination)
            .is_some()
    }

    /// The verdict on an incoming CALL or SEND from `source` (its path's originator). `now`
    /// is unix seconds; signatures that pass are remembered in `replay`.
    pub fn incoming(
        &self,
        message: &Message<'_>,
        source: &str,
        payload: &Value,
        now: i64,
        replay: &mut ReplayCache,
    ) -> Verdict {
        let inner = jws::is_signed_action(message.action);
        let Some(rule) = self.rule(
            Direction::In,
            inner.unwrap_or(message.action),
            source,
            message.destination,
        ) else {
            return Verdict::Pass;
        };
        match (&rule.check, inner) {
            (Check::RequireJws, None) => {
                return Verdict::Refused(format!(
                    "{} must be an OCPP signed message ({}-Signed)",
                    message.action, message.action
                ));
            }
            (Check::RequireJws, Some(inner)) => {
                return self.jws(message, inner, payload, now, replay);
            }
            (Check::RequireAny(_) | Check::RequireAll(_), Some(_)) => {
                return Verdict::Refused(format!(
                    "{} is an OCPP JWS; this policy requires jcs-v1 signatures",
                    message.action
                ));
            }
            (Check::AcceptUnsigned, Some(_)) => return Verdict::Accepted { signers: vec![] },
            _ => {}
        }
        let required = match &rule.check {
            Check::Reject => {
                return Verdict::Refused(format!(
                    "{} is refused by policy for {}",
                    message.action, message.destination
                ));
            }
            Check::Drop => return Verdict::Drop(format!("{} dropped by policy", message.action)),
            Check::RequireAny(p) | Check::RequireAll(p) => Some(p),
            Check::AcceptUnsigned => None,
            Check::Sign(_) | Check::None | Check::RequireJws => return Verdict::Pass,
        };
        let Verified {
            signers: verified,
            replay: seen,
        } = match self.verify_all(message, payload, now, replay) {
            Ok(v) => v,
            Err(why) => return Verdict::Refused(why),
        };
        let access = variables(message.action, payload);
        // A signer counts for a role only where the role allows the action and variables.
        let allowed_role = |key: &str, role: usize| {
            let r = &self.roles[role];
            r.keys.iter().any(|k| k == key)
                && r.actions.iter().any(|g| g.matches(message.action))
                && access.as_ref().is_none_or(|(a, names)| {
                    let globs = if *a == Access::Read {
                        &r.read
                    } else {
                        &r.write
                    };
                    names.iter().all(|n| globs.iter().any(|g| g.matches(n)))
                })
        };
        // Keys with roles must have one that allows this; keys named in the rule itself
        // are trusted for it directly.
        for key in &verified {
            if let Some(roles) = self.roles_of.get(key.as_str())
                && !roles.iter().any(|&i| allowed_role(key, i))
                && !required.is_some_and(|ps| ps.contains(&Principal::Key(key.clone())))
            {
                return Verdict::Refused(format!(
                    "no role of key {key} allows {}{}",
                    message.action,
                    access
                        .as_ref()
                        .map(|(_, n)| format!(" on {}", n.join(", ")))
                        .unwrap_or_default()
                ));
            }
        }
        let satisfied =
            |p: &Principal| match p {
                Principal::Key(k) => verified.contains(k),
                Principal::Role(r) => self.roles.iter().enumerate().any(|(i, role)| {
                    &role.name == r && verified.iter().any(|k| allowed_role(k, i))
                }),
            };
        let ok = match &rule.check {
            Check::RequireAny(ps) => ps.iter().any(satisfied),
            Check::RequireAll(ps) => ps.iter().all(satisfied),
            _ => true,
        };
        if !ok {
            let has = signature::signatures(payload).map(|s| s.len()).unwrap_or(0);
            let why = if has == 0 {
                format!("{} must be signed", message.action)
            } else if verified.is_empty() {
                format!("{} is signed by no known key", message.action)
            } else {
                format!("the signers of {} do not meet the policy", message.action)
            };
            return Verdict::Refused(why);
        }
        // Remembered only once admitted, so a refused message cannot block its honest copy.
        let expires = now + self.window;
        for (key, value) in seen {
            replay.insert(&key, &value, expires, now);
        }
        Verdict::Accepted { signers: verified }
    }

    /// An OCPP signed message: bound to its action and message type, verified by a trusted
    /// key, and new. A JWS has no timestamp, so a signature is remembered for one window.
    fn jws(
        &self,
        message: &Message<'_>,
        inner: &str,
        payload: &Value,
        now: i64,
        replay: &mut ReplayCache,
    ) -> Verdict {
        let parsed = match jws::parse(payload) {
            Ok(j) => j,
            Err(e) => return Verdict::Refused(format!("{}: {e}", message.action)),
        };
        if let Err(e) = parsed.check_ocpp_binding(inner, message.message_type) {
            return Verdict::Refused(format!("{}: {e}", message.action));
        }
        if !self.jws_keys.iter().any(|k| parsed.verify(k).is_ok()) {
            return Verdict::Refused(format!(
                "{}: the JWS does not verify with any trusted key",
                message.action
            ));
        }
        let who = parsed
            .x5t_s256()
            .or(parsed.key_id())
            .unwrap_or("jws")
            .to_owned();
        if !replay.insert(&who, parsed.signature(), now + self.window, now) {
            return Verdict::Refused(format!("replayed JWS of {}", message.action));
        }
        Verdict::Accepted { signers: vec![who] }
    }

    /// A grant check outside the rules: the keys whose valid signatures on `payload` come
    /// with a role that allows `action` (a pseudo-action such as `ModbusWrite`, or a real
    /// one). As in [`PolicySet::incoming`], every signature by a known key must verify and be
    /// new, or the message is refused; signatures by unknown keys are ignored. Keys named only
    /// in rules have no role and grant nothing here. On success the verified signatures are
    /// remembered in `replay`; the answer is the granting signers, never empty.
    pub fn authorize(
        &self,
        message: &Message<'_>,
        payload: &Value,
        now: i64,
        replay: &mut ReplayCache,
        action: &str,
    ) -> Result<Vec<String>, String> {
        let Verified {
            signers: verified,
            replay: seen,
        } = self.verify_all(message, payload, now, replay)?;
        let granting: Vec<String> = verified
            .iter()
            .filter(|key| {
                self.roles_of.get(key.as_str()).is_some_and(|roles| {
                    roles
                        .iter()
                        .any(|&i| self.roles[i].actions.iter().any(|g| g.matches(action)))
                })
            })
            .cloned()
            .collect();
        if granting.is_empty() {
            let has = signature::signatures(payload).map(|s| s.len()).unwrap_or(0);
            return Err(if has == 0 {
                format!("{} is not signed", message.action)
            } else if verified.is_empty() {
                format!("{} is signed by no known key", message.action)
            } else {
                format!("no role of its signers allows {action}")
            });
        }
        let expires = now + self.window;
        for (key, value) in &seen {
            replay.insert(key, value, expires, now);
        }
        Ok(granting)
    }

    /// Every signature by a known key must verify and be new; unknown keys are ignored.
    /// Returns the signers' keyIds (each once) and every verified signature's replay-cache
    /// entry, remembered once the message is admitted: each signature is verified once.
    fn verify_all(
        &self,
        message: &Message<'_>,
        payload: &Value,
        now: i64,
        replay: &ReplayCache,
    ) -> Result<Verified, String> {
        let objects = signature::signatures(payload).map_err(|e| e.to_string())?;
        let mut verified = Verified::default();
        for object in objects {
            let key_id = signature::key_id(object).map_err(|e| e.to_string())?;
            let Some(key) = self.keys.get(key_id) else {
                continue;
            };
            let v = signature::verify(message, payload, object, key, now, self.window)
                .map_err(|e: VerifyError| e.to_string())?;
            if replay.contains(&v.key_id, &v.replay_value) {
                return Err(format!("replayed signature by {key_id}"));
            }
            if !verified.signers.contains(&v.key_id) {
                verified.signers.push(v.key_id.clone());
            }
            verified.replay.push((v.key_id, v.replay_value));
        }
        Ok(verified)
    }
}

/// What [`PolicySet::verify_all`] found.
#[derive(Default)]
struct Verified {
    signers: Vec<String>,
    replay: Vec<(String, Vec<u8>)>,
}

/// The device-model variables a Get/Set names: `Component.Variable` in 2.x, the key in 1.6;
/// `*` for a GetConfiguration that asks for everything.
fn variables(action: &str, payload: &Value) -> Option<(Access, Vec<String>)> {
    let two_x = |list: &str| -> Vec<String> {
        payload
            .get(list)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|d| {
                        let c = d.pointer("/component/name").and_then(Value::as_str);
                        let v = d.pointer("/variable/name").and_then(Value::as_str);
                        format!("{}.{}", c.unwrap_or("?"), v.unwrap_or("?"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    match action {
        "GetVariables" => Some((Access::Read, two_x("getVariableData"))),
        "SetVariables" => Some((Access::Write, two_x("setVariableData"))),
        "GetConfiguration" => {
            let keys: Vec<String> = payload
                .get("key")
                .and_then(Value::as_array)
                .map(|k| {
                    k.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            Some((
                Access::Read,
                if keys.is_empty() {
                    vec!["*".into()]
                } else {
                    keys
                },
            ))
        }
        "ChangeConfiguration" => Some((
            Access::Write,
            vec![
                payload
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned(),
            ],
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{SignOptions, attach, sign};
    use crate::{Algorithm, PrivateKey};
    use serde_json::json;

    const NOW: i64 = 1_796_644_800;
    const STAMP: &str = "2026-12-07T12:00:00Z";

    fn g(p: &str) -> Glob {
        Glob::new(p).unwrap()
    }

    struct Site {
        admin: PrivateKey,
        user: PrivateKey,
        set: PolicySet,
    }

    fn site() -> Site {
        let admin = PrivateKey::generate(Algorithm::Ed25519).unwrap();
        let user = PrivateKey::generate(Algorithm::Secp256r1).unwrap();
        let roles = vec![
            Role {
                name: "admin".into(),
                keys: vec![admin.public().key_id()],
                actions: vec![g("*")],
                read: vec![g("*")],
                write: vec![g("*")],
            },
            Role {
                name: "user".into(),
                keys: vec![user.public().key_id()],
                actions: vec![g("Get*"), g("SetVariables"), g("RemoteStart*")],
                read: vec![g("*")],
                write: vec![g("DisplayMessageCtrlr.*")],
            },
        ];
        let any = |a: &str, roles: &[&str]| Rule {
            direction: Direction::In,
            action: g(a),
            source: g("*"),
            destination: g("*"),
            check: Check::RequireAny(roles.iter().map(|r| Principal::Role((*r).into())).collect()),
        };
        let rules = vec![
            Rule {
                direction: Direction::Out,
                action: g("MeterValues"),
                source: g("*"),
                destination: g("CSMS"),
                check: Check::Sign("identity".into()),
            },
            any("Reset", &["admin", "user"]),
            any("*Variables", &["admin", "user"]),
            Rule {
                direction: Direction::In,
                action: g("UpdateFirmware"),
                source: g("*"),
                destination: g("*"),
                check: Check::Reject,
            },
            Rule {
                direction: Direction::In,
                action: g("DataTransfer"),
                source: g("*"),
                destination: g("*"),
                check: Check::AcceptUnsigned,
            },
        ];
        let set = PolicySet::new(roles, rules, &["identity"], 300).unwrap();
        Site { admin, user, set }
    }

    fn msg(action: &str) -> Message<'_> {
        Message {
            message_type: 2,
            action,
            destination: "CS-1",
        }
    }

    fn signed(key: &PrivateKey, action: &str, mut payload: Value, nonce: &str) -> Value {
        let s = sign(
            &msg(action),
            &payload,
            key,
            SignOptions {
                timestamp: STAMP.into(),
                nonce: Some(nonce.into()),
                ..Default::default()
            },
        )
        .unwrap();
        attach(&mut payload, s).unwrap();
        payload
    }

    fn verdict(s: &Site, action: &str, payload: &Value, replay: &mut ReplayCache) -> Verdict {
        s.set.incoming(&msg(action), "CSMS", payload, NOW, replay)
    }

    #[test]
    fn only_a_role_that_allows_the_action_gets_it_through() {
        let s = site();
        let mut r = ReplayCache::new(100);
        let reset = json!({"type": "Immediate"});
        let by_admin = signed(&s.admin, "Reset", reset.clone(), "1");
        assert_eq!(
            verdict(&s, "Reset", &by_admin, &mut r),
            Verdict::Accepted {
                signers: vec![s.admin.public().key_id()]
            }
        );
        let by_user = signed(&s.user, "Reset", reset.clone(), "2");
        let Verdict::Refused(why) = verdict(&s, "Reset", &by_user, &mut r) else {
            panic!()
        };
        assert!(why.contains("no role"), "{why}");
        let Verdict::Refused(why) = verdict(&s, "Reset", &reset, &mut r) else {
            panic!()
        };
        assert!(why.contains("must be signed"), "{why}");
        let stranger = PrivateKey::generate(Algorithm::Secp384r1).unwrap();
        let by_stranger = signed(&stranger, "Reset", reset.clone(), "3");
        let Verdict::Refused(why) = verdict(&s, "Reset", &by_stranger, &mut r) else {
            panic!()
        };
        assert!(why.contains("no known key"), "{why}");
    }

    #[test]
    fn replay_and_tampering() {
        let s = site();
        let mut r = ReplayCache::new(100);
        let p = signed(&s.admin, "Reset", json!({"type": "Immediate"}), "1");
        assert!(matches!(
            verdict(&s, "Reset", &p, &mut r),
            Verdict::Accepted { .. }
        ));
        let Verdict::Refused(why) = verdict(&s, "Reset", &p, &mut r) else {
            panic!()
        };
        assert!(why.contains("replayed"), "{why}");
        let mut t = signed(&s.admin, "Reset", json!({"type": "Immediate"}), "2");
        t["type"] = json!("OnIdle");
        let Verdict::Refused(why) = verdict(&s, "Reset", &t, &mut r) else {
            panic!()
        };
        assert!(why.contains("does not verify"), "{why}");
        // A known key's bad signature spoils the message even beside a good one.
        let mut both = signed(&s.admin, "Reset", json!({"type": "Immediate"}), "3");
        let user = signed(&s.user, "Reset", json!({"type": "OnIdle"}), "4");
        both["signatures"]
            .as_array_mut()
            .unwrap()
            .push(user["signatures"][0].clone());
        assert!(matches!(
            verdict(&s, "Reset", &both, &mut r),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn variables_are_checked_against_the_role() {
        let s = site();
        let mut r = ReplayCache::new(100);
        let set = |c: &str, v: &str| json!({"setVariableData": [{"component": {"name": c}, "variable": {"name": v}, "attributeValue": "x"}]});
        let ok = signed(
            &s.user,
            "SetVariables",
            set("DisplayMessageCtrlr", "Enabled"),
            "1",
        );
        assert!(matches!(
            verdict(&s, "SetVariables", &ok, &mut r),
            Verdict::Accepted { .. }
        ));
        let no = signed(
            &s.user,
            "SetVariables",
            set("SecurityCtrlr", "SecurityProfile"),
            "2",
        );
        let Verdict::Refused(why) = verdict(&s, "SetVariables", &no, &mut r) else {
            panic!()
        };
        assert!(why.contains("SecurityCtrlr.SecurityProfile"), "{why}");
        let admin = signed(
            &s.admin,
            "SetVariables",
            set("SecurityCtrlr", "SecurityProfile"),
            "3",
        );
        assert!(matches!(
            verdict(&s, "SetVariables", &admin, &mut r),
            Verdict::Accepted { .. }
        ));
    }

    #[test]
    fn other_checks_and_no_rule() {
        let s = site();
        let mut r = ReplayCache::new(100);
        assert!(matches!(
            verdict(&s, "UpdateFirmware", &json!({}), &mut r),
            Verdict::Refused(_)
        ));
        assert_eq!(
            verdict(&s, "DataTransfer", &json!({"vendorId": "x"}), &mut r),
            Verdict::Accepted { signers: vec![] }
        );
        assert_eq!(verdict(&s, "Heartbeat", &json!({}), &mut r), Verdict::Pass);
        assert_eq!(
            s.set.outgoing("MeterValues", "CS-1", "CSMS"),
            Some("identity")
        );
        assert_eq!(s.set.outgoing("MeterValues", "CS-1", "edge-2"), None);
    }

    fn jws_reset(key: &p256::ecdsa::SigningKey, action: &str, kind: &str) -> Value {
        use base64::Engine as _;
        use p256::ecdsa::signature::Signer as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(
            json!({"alg": "ES256", "OCPPAction": action, "OCPPMessageTypedId": 2}).to_string(),
        );
        let body = b64.encode(json!({"type": kind}).to_string());
        let sig: p256::ecdsa::Signature = key.sign(format!("{header}.{body}").as_bytes());
        json!({"protected": header, "payload": body, "signature": b64.encode(sig.to_bytes())})
    }

    #[test]
    fn ocpp_signed_messages_can_be_required() {
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let other = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let rules = vec![Rule {
            direction: Direction::In,
            action: g("Reset"),
            source: g("*"),
            destination: g("*"),
            check: Check::RequireJws,
        }];
        let set = PolicySet::new(vec![], rules, &[], 300)
            .unwrap()
            .with_jws_keys(vec![JwsKey::P256(*key.verifying_key())]);
        let mut r = ReplayCache::new(10);
        let check = |action: &str, p: &Value, r: &mut ReplayCache| {
            set.incoming(
                &Message {
                    message_type: 2,
                    action,
                    destination: "CS-1",
                },
                "CSMS",
                p,
                NOW,
                r,
            )
        };
        let signed = jws_reset(&key, "Reset", "Immediate");
        assert!(matches!(
            check("Reset-Signed", &signed, &mut r),
            Verdict::Accepted { .. }
        ));
        let Verdict::Refused(why) = check("Reset-Signed", &signed, &mut r) else {
            panic!()
        };
        assert!(why.contains("replayed"), "{why}");
        let Verdict::Refused(why) = check("Reset", &json!({"type": "Immediate"}), &mut r) else {
            panic!()
        };
        assert!(why.contains("Reset-Signed"), "{why}");
        let foreign = jws_reset(&other, "Reset", "OnIdle");
        let Verdict::Refused(why) = check("Reset-Signed", &foreign, &mut r) else {
            panic!()
        };
        assert!(why.contains("trusted key"), "{why}");
        // Bound to its action: a signed ClearCache cannot pass as a Reset.
        let moved = jws_reset(&key, "ClearCache", "Immediate");
        assert!(matches!(
            check("Reset-Signed", &moved, &mut r),
            Verdict::Refused(_)
        ));
        let mut tampered = jws_reset(&key, "Reset", "Immediate");
        tampered["payload"] = json!(jws_reset(&key, "Reset", "OnIdle")["payload"]);
        assert!(matches!(
            check("Reset-Signed", &tampered, &mut r),
            Verdict::Refused(_)
        ));
    }

    #[test]
    fn authorize_grants_only_roles_that_allow_the_pseudo_action() {
        let writer = PrivateKey::generate(Algorithm::Ed25519).unwrap();
        let reader = PrivateKey::generate(Algorithm::Secp256r1).unwrap();
        let ruled = PrivateKey::generate(Algorithm::Ed25519).unwrap();
        let roles = vec![
            Role {
                name: "operator".into(),
                keys: vec![writer.public().key_id()],
                actions: vec![g("ModbusTransfer"), g("ModbusWrite")],
                read: vec![],
                write: vec![],
            },
            Role {
                name: "viewer".into(),
                keys: vec![reader.public().key_id()],
                actions: vec![g("ModbusTransfer")],
                read: vec![],
                write: vec![],
            },
        ];
        // A key named in a rule only: trusted for that rule, but it has no role to grant.
        let rules = vec![Rule {
            direction: Direction::In,
            action: g("Reset"),
            source: g("*"),
            destination: g("*"),
            check: Check::RequireAny(vec![Principal::Key(ruled.public().key_id())]),
        }];
        let set = PolicySet::new(roles, rules, &[], 300).unwrap();
        let m = msg("ModbusTransfer");
        let mut r = ReplayCache::new(100);
        let body = json!({"target": "io", "unitId": 1, "pdu": "BgBkACo="});
        let sign_with = |key: &PrivateKey, payload: Value, nonce: &str| {
            signed(key, "ModbusTransfer", payload, nonce)
        };
        let mut auth = |p: &Value| set.authorize(&m, p, NOW, &mut r, "ModbusWrite");

        let ok = sign_with(&writer, body.clone(), "1");
        assert_eq!(auth(&ok), Ok(vec![writer.public().key_id()]));
        // The same signature again is a replay.
        let again = auth(&ok).unwrap_err();
        assert!(again.contains("replayed"), "{again}");
        // Unsigned, by a role without the grant, by a rule-only key, by a stranger.
        let why = auth(&body).unwrap_err();
        assert!(why.contains("not signed"), "{why}");
        let why = auth(&sign_with(&reader, body.clone(), "2")).unwrap_err();
        assert!(why.contains("allows ModbusWrite"), "{why}");
        let why = auth(&sign_with(&ruled, body.clone(), "3")).unwrap_err();
        assert!(why.contains("allows ModbusWrite"), "{why}");
        let stranger = PrivateKey::generate(Algorithm::Secp384r1).unwrap();
        let why = auth(&sign_with(&stranger, body.clone(), "4")).unwrap_err();
        assert!(why.contains("no known key"), "{why}");
        // Tampered: signed over another value.
        let mut changed = sign_with(&writer, body.clone(), "5");
        changed["pdu"] = json!("BgBkAP8=");
        let why = auth(&changed).unwrap_err();
        assert!(why.contains("does not verify"), "{why}");
        // A bad known-key signature spoils a good one beside it.
        let mut both = sign_with(&writer, body.clone(), "6");
        let bad = sign_with(&reader, json!({"other": 1}), "7");
        both["signatures"]
            .as_array_mut()
            .unwrap()
            .push(bad["signatures"][0].clone());
        assert!(auth(&both).is_err());
        // A refused message is not remembered: its honest copy still passes.
        let honest = sign_with(&writer, body.clone(), "6");
        assert_eq!(auth(&honest), Ok(vec![writer.public().key_id()]));
        // Signed for another destination or action: does not verify.
        let elsewhere = {
            let mut p = body.clone();
            let s = sign(
                &Message {
                    message_type: 2,
                    action: "ModbusTransfer",
                    destination: "other-node",
                },
                &p,
                &writer,
                SignOptions {
                    timestamp: STAMP.into(),
                    nonce: Some("8".into()),
                    ..Default::default()
                },
            )
            .unwrap();
            attach(&mut p, s).unwrap();
            p
        };
        assert!(auth(&elsewhere).is_err());
        // Outside the time window.
        let late = sign_with(&writer, body.clone(), "9");
        assert!(
            set.authorize(
                &m,
                &late,
                NOW + 301,
                &mut ReplayCache::new(10),
                "ModbusWrite"
            )
            .unwrap_err()
            .contains("window")
        );
        // A wildcard role grants every action, pseudo-actions included.
        let admin = PrivateKey::generate(Algorithm::Ed25519).unwrap();
        let wide = PolicySet::new(
            vec![Role {
                name: "admin".into(),
                keys: vec![admin.public().key_id()],
                actions: vec![g("*")],
                read: vec![],
                write: vec![],
            }],
            vec![],
            &[],
            300,
        )
        .unwrap();
        let p = sign_with(&admin, body, "10");
        assert!(
            wide.authorize(&m, &p, NOW, &mut ReplayCache::new(10), "ModbusWrite")
                .is_ok()
        );
    }

    #[test]
    fn every_mistake_is_reported() {
        let bad = vec![
            Role {
                name: "r".into(),
                keys: vec!["AAAA".into()],
                actions: vec![],
                read: vec![],
                write: vec![],
            },
            Role {
                name: "r".into(),
                keys: vec![],
                actions: vec![],
                read: vec![],
                write: vec![],
            },
        ];
        let rules = vec![
            Rule {
                direction: Direction::In,
                action: g("*"),
                source: g("*"),
                destination: g("*"),
                check: Check::RequireAny(vec![Principal::Role("nobody".into())]),
            },
            Rule {
                direction: Direction::In,
                action: g("*"),
                source: g("*"),
                destination: g("*"),
                check: Check::Sign("k".into()),
            },
        ];
        let errors = PolicySet::new(bad, rules, &[], 300).unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
    }
}
