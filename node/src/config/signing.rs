//! The `[signing]` section: the keys this node signs with, the user roles, and the signature
//! policies (ARCHITECTURE §3.5). It is the one section reloaded on SIGHUP, so its checks are
//! also what a reload runs: an invalid reload reports every mistake here and keeps the old set.

use std::path::PathBuf;

use routing::glob::Glob;
use serde::Deserialize;
use signing::policy::{Check, Direction, PolicySet, Principal, Role, Rule};

use super::Config;

/// The key name that means the node identity key.
pub const IDENTITY_KEY: &str = "identity";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// A signature's timestamp may be this far from the node's clock, either way.
    pub window_s: u64,
    /// (keyId, signature) pairs remembered to refuse replays; the oldest gives way when full.
    pub replay_cache: usize,
    /// Keep the `signatures` member in payloads written to plain chargers and to the CSMS
    /// (off: it is removed there, after its check, as their schemas do not allow it).
    pub deliver_signatures: bool,
    /// PEM files (certificates or public keys) whose keys `require-jws` trusts for OCPP's own
    /// signed messages.
    pub jws_trust: Vec<PathBuf>,
    pub key: Vec<KeyConfig>,
    pub role: Vec<RoleConfig>,
    pub policy: Vec<PolicyConfig>,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            window_s: 300,
            replay_cache: 65_536,
            deliver_signatures: false,
            jws_trust: Vec::new(),
            key: Vec::new(),
            role: Vec::new(),
            policy: Vec::new(),
        }
    }
}

/// A private key this node signs with (PKCS#8 PEM, mode 0600).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    pub file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub name: String,
    /// keyIds (base64 of the raw ed25519 key or the compressed SEC1 point).
    pub keys: Vec<String>,
    /// Action globs the role may invoke.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Device-model variables (`Component.Variable`, or the 1.6 key) it may read and write.
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub write: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `in` (a CALL or SEND entering this node) or `out` (one it originates or translates).
    pub direction: String,
    #[serde(default = "any")]
    pub action: String,
    #[serde(default = "any")]
    pub source: String,
    #[serde(default = "any")]
    pub destination: String,
    /// in: `require-any`, `require-all`, `require-jws`, `accept-unsigned`, `reject`, `drop`;
    /// out: `sign`, `none`.
    pub check: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    /// out `sign`: a `[[signing.key]]` name, or `identity` for the node identity key.
    pub key: Option<String>,
}

fn glob(errors: &mut Vec<(String, String)>, path: String, pattern: &str) -> Option<Glob> {
    match Glob::new(pattern) {
        Ok(g) => Some(g),
        Err(e) => {
            errors.push((path, format!("{pattern:?}: {e}")));
            None
        }
    }
}

fn any() -> String {
    "*".to_owned()
}

impl SigningConfig {
    /// The policy set, or every mistake as (config path, message).
    pub fn policy_set(&self) -> Result<PolicySet, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut roles = Vec::new();
        for (i, r) in self.role.iter().enumerate() {
            let mut globs = |list: &[String], f: &str| {
                list.iter()
                    .filter_map(|g| glob(&mut errors, format!("signing.role[{i}].{f}"), g))
                    .collect::<Vec<_>>()
            };
            roles.push(Role {
                name: r.name.clone(),
                keys: r.keys.clone(),
                actions: globs(&r.actions, "actions"),
                read: globs(&r.read, "read"),
                write: globs(&r.write, "write"),
            });
        }
        let mut rules = Vec::new();
        for (i, c) in self.policy.iter().enumerate() {
            let p = |f: &str| format!("signing.policy[{i}].{f}");
            let direction = match c.direction.as_str() {
                "in" => Some(Direction::In),
                "out" => Some(Direction::Out),
                other => {
                    errors.push((
                        p("direction"),
                        format!("{other:?}: expected \"in\" or \"out\""),
                    ));
                    None
                }
            };
            let principals = || {
                c.roles
                    .iter()
                    .map(|r| Principal::Role(r.clone()))
                    .chain(c.keys.iter().map(|k| Principal::Key(k.clone())))
                    .collect::<Vec<_>>()
            };
            let check = match c.check.as_str() {
                "require-any" => Some(Check::RequireAny(principals())),
                "require-all" => Some(Check::RequireAll(principals())),
                "accept-unsigned" => Some(Check::AcceptUnsigned),
                "reject" => Some(Check::Reject),
                "drop" => Some(Check::Drop),
                "require-jws" => {
                    if self.jws_trust.is_empty() {
                        errors.push((
                            p("check"),
                            "require-jws needs [signing] jws_trust, the keys it trusts".into(),
                        ));
                    }
                    Some(Check::RequireJws)
                }
                "none" => Some(Check::None),
                "sign" => match &c.key {
                    Some(k) => Some(Check::Sign(k.clone())),
                    None => {
                        errors.push((p("key"), "check \"sign\" needs the name of a key".into()));
                        None
                    }
                },
                other => {
                    errors.push((
                        p("check"),
                        format!("{other:?}: expected require-any, require-all, require-jws, accept-unsigned, reject, drop (in) or sign, none (out)"),
                    ));
                    None
                }
            };
            let (action, source, destination) = (
                glob(&mut errors, p("action"), &c.action),
                glob(&mut errors, p("source"), &c.source),
                glob(&mut errors, p("destination"), &c.destination),
            );
            if let (Some(direction), Some(check), Some(action), Some(source), Some(destination)) =
                (direction, check, action, source, destination)
            {
                rules.push(Rule {
                    direction,
                    action,
                    source,
                    destination,
                    check,
                });
            }
        }
        let mut names: Vec<&str> = self.key.iter().map(|k| k.name.as_str()).collect();
        names.push(IDENTITY_KEY);
        for (i, k) in self.key.iter().enumerate() {
            if k.name == IDENTITY_KEY {
                errors.push((
                    format!("signing.key[{i}].name"),
                    "\"identity\" is the node identity key's name; choose another".into(),
                ));
            }
        }
        let window = i64::try_from(self.window_s).unwrap_or(i64::MAX);
        let built = PolicySet::new(roles, rules, &names, window);
        match built {
            Ok(set) if errors.is_empty() => Ok(set),
            Ok(_) => Err(errors),
            Err(policy) => {
                errors.extend(
                    policy
                        .into_iter()
                        .map(|e| ("signing".to_owned(), e.to_string())),
                );
                Err(errors)
            }
        }
    }
}

pub(super) fn check(config: &Config, err: &mut impl FnMut(String, String)) {
    let s = &config.signing;
    if !(1..=86_400).contains(&s.window_s) {
        err("signing.window_s".into(), "must be 1..=86400".into());
    }
    if !(16..=10_000_000).contains(&s.replay_cache) {
        err(
            "signing.replay_cache".into(),
            "must be 16..=10000000".into(),
        );
    }
    if let Err(errors) = s.policy_set() {
        for (path, message) in errors {
            err(path, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const ADMIN: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    #[test]
    fn a_valid_section_parses() {
        let c = Config::parse(&format!(
            r#"
            [[signing.role]]
            name = "admin"
            keys = ["{ADMIN}"]
            actions = ["*"]
            [[signing.policy]]
            direction = "in"
            action = "Reset"
            check = "require-any"
            roles = ["admin"]
            [[signing.policy]]
            direction = "out"
            action = "MeterValues"
            check = "sign"
            key = "identity"
            "#
        ))
        .unwrap();
        let set = c.signing.policy_set().unwrap();
        assert_eq!(set.rules().len(), 2);
    }

    #[test]
    fn every_mistake_is_reported_with_its_path() {
        let errors = Config::parse(
            r#"
            [signing]
            window_s = 0
            [[signing.role]]
            name = "admin"
            keys = ["not-a-key"]
            [[signing.policy]]
            direction = "sideways"
            check = "require-any"
            [[signing.policy]]
            direction = "in"
            check = "require-any"
            roles = ["nobody"]
            [[signing.policy]]
            direction = "out"
            check = "sign"
            key = "missing"
            [[signing.policy]]
            direction = "in"
            check = "maybe"
            action = ""
            "#,
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        for want in [
            "signing.window_s",
            "signing.policy[0].direction",
            "signing.policy[3].check",
            "signing.policy[3].action",
        ] {
            assert!(all.contains(want), "{want} missing in:\n{all}");
        }
        // The bad key, role and signing key are found by the policy set once the rules
        // themselves parse: `cross_references_are_checked`.
    }

    #[test]
    fn cross_references_are_checked() {
        let errors = Config::parse(
            r#"
            [[signing.role]]
            name = "admin"
            keys = ["not-a-key"]
            [[signing.policy]]
            direction = "in"
            check = "require-any"
            roles = ["nobody"]
            [[signing.policy]]
            direction = "out"
            check = "sign"
            key = "missing"
            "#,
        )
        .unwrap_err();
        let all: String = errors.iter().map(|e| format!("{e}\n")).collect();
        for want in [
            "not-a-key",
            "unknown role \"nobody\"",
            "unknown signing key \"missing\"",
        ] {
            assert!(all.contains(want), "{want} missing in:\n{all}");
        }
    }
}
