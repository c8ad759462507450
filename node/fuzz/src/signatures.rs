//! The check of the `signatures` fuzz target: a payload from the network, as the signature
//! stage meets it. It is read as JSON, then its `signatures` member is checked against a policy
//! that knows one key of each algorithm (so every verifier runs on hostile objects), and it is
//! read as OCPP's flattened JWS. Nothing may panic, a refusal must say why, and an input is
//! never accepted: the fuzzer cannot forge a signature of keys made at start.

use std::sync::OnceLock;

use ocpp_node::config::SigningConfig;
use serde_json::Value;
use signing::policy::{PolicySet, Verdict};
use signing::{Algorithm, Message, PrivateKey, ReplayCache};

pub const MAX_INPUT_BYTES: usize = 64 * 1024;

fn policy() -> &'static PolicySet {
    static SET: OnceLock<PolicySet> = OnceLock::new();
    SET.get_or_init(|| {
        let keys: Vec<String> = Algorithm::ALL
            .into_iter()
            .map(|a| match PrivateKey::generate(a) {
                Ok(k) => format!("{:?}", k.public().key_id()),
                Err(e) => panic!("key: {e}"),
            })
            .collect();
        let text = format!(
            r#"
            [[role]]
            name = "admin"
            keys = [{}]
            actions = ["*"]
            read = ["*"]
            [[policy]]
            direction = "in"
            action = "*"
            check = "require-any"
            roles = ["admin"]
            "#,
            keys.join(", ")
        );
        let config: SigningConfig = match toml::from_str(&text) {
            Ok(c) => c,
            Err(e) => panic!("policy config: {e}"),
        };
        match config.policy_set() {
            Ok(set) => set,
            Err(e) => panic!("policy: {e:?}"),
        }
    })
}

pub fn check(data: &[u8]) {
    if data.len() > MAX_INPUT_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = signing::jws::parse_str(text);
    let Ok(payload) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let mut replay = ReplayCache::new(16);
    for action in [
        "Reset",
        "GetVariables",
        "ChangeConfiguration",
        "Reset-Signed",
    ] {
        let message = Message {
            message_type: 2,
            action,
            destination: "CS-1",
        };
        match policy().incoming(&message, "CSMS", &payload, 1_796_644_800, &mut replay) {
            Verdict::Refused(why) => assert!(!why.is_empty(), "a refusal without a reason"),
            other => panic!("{action}: a fuzzed payload got {other:?}: {text}"),
        }
    }
    let _ = signing::jws::parse(&payload).map(|j| j.check_ocpp_binding("Reset", 2));
}
