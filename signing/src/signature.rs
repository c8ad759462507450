//! The `signatures` payload member: making one signature object, and checking one against a
//! known key, the time window and the algorithm it claims.
//!
//! The signer object is the signature object as received, less `value`, so members this node
//! does not know are covered too and cannot be changed on the way.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::canonical::{Message, signed_bytes};
use crate::{Algorithm, PrivateKey, PublicKey};

/// More signature objects than this in one payload are refused unread.
pub const MAX_SIGNATURES: usize = 8;
/// `signingMethod` of §3.5.
pub const SIGNING_METHOD: &str = "jcs-v1";

/// A signature object as this node writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignatureObject {
    pub key_id: String,
    pub value: String,
    pub algorithm: String,
    pub signing_method: String,
    pub encoding: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the payload is not a JSON object")]
    NotAnObject,
    #[error("the payload's \"signatures\" member is not an array")]
    SignaturesNotArray,
    #[error("the payload already holds {MAX_SIGNATURES} signatures")]
    TooMany,
    #[error("cannot canonicalize: {0}")]
    Canonical(#[from] serde_json::Error),
}

/// Why a signature object was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the payload's \"signatures\" member is not an array of objects")]
    Malformed,
    #[error("more than {MAX_SIGNATURES} signatures")]
    TooMany,
    #[error("signature member {0:?} is missing or not a string")]
    Missing(&'static str),
    #[error("unsupported {member} {value:?}")]
    Unsupported { member: &'static str, value: String },
    #[error("signature made with {claimed} but keyId {key_id} is a {actual} key")]
    AlgorithmMismatch {
        key_id: String,
        claimed: String,
        actual: Algorithm,
    },
    #[error("timestamp {0:?} is not RFC 3339")]
    Timestamp(String),
    #[error("timestamp {timestamp} is {off} s from now, outside the ±{window} s window")]
    OutsideWindow {
        timestamp: String,
        off: i64,
        window: i64,
    },
    #[error("signature value is not base64")]
    ValueEncoding,
    #[error("signature by {0} does not verify (the message was changed, or the key is wrong)")]
    Invalid(String),
    #[error("cannot canonicalize the payload: {0}")]
    Canonical(String),
}

/// The signature objects in a payload; none when it has no `signatures` member.
pub fn signatures(payload: &Value) -> Result<Vec<&Map<String, Value>>, VerifyError> {
    let Some(list) = payload.get("signatures") else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or(VerifyError::Malformed)?;
    if list.len() > MAX_SIGNATURES {
        return Err(VerifyError::TooMany);
    }
    list.iter()
        .map(|s| s.as_object().ok_or(VerifyError::Malformed))
        .collect()
}

/// How to sign, besides the key.
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    /// RFC 3339.
    pub timestamp: String,
    pub nonce: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
}

/// A signature object for `payload` (its `signatures` member, if any, is not covered).
pub fn sign(
    message: &Message<'_>,
    payload: &Value,
    key: &PrivateKey,
    options: SignOptions,
) -> Result<SignatureObject, SignError> {
    let mut object = SignatureObject {
        key_id: key.public().key_id(),
        value: String::new(),
        algorithm: key.algorithm().name().to_owned(),
        signing_method: SIGNING_METHOD.to_owned(),
        encoding: "base64".to_owned(),
        name: options.name,
        description: options.description,
        timestamp: options.timestamp,
        nonce: options.nonce,
    };
    let Value::Object(mut signer) = serde_json::to_value(&object)? else {
        return Err(SignError::NotAnObject);
    };
    signer.remove("value");
    let bytes = signed_bytes(message, payload, &signer)?;
    object.value = STANDARD.encode(key.sign_raw(&bytes));
    Ok(object)
}

/// Appends a signature object to the payload's `signatures` array.
pub fn attach(payload: &mut Value, signature: SignatureObject) -> Result<(), SignError> {
    let object = payload.as_object_mut().ok_or(SignError::NotAnObject)?;
    let list = object
        .entry("signatures")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or(SignError::SignaturesNotArray)?;
    if list.len() >= MAX_SIGNATURES {
        return Err(SignError::TooMany);
    }
    list.push(serde_json::to_value(signature)?);
    Ok(())
}

/// The keyId a signature object names, before anything is verified.
pub fn key_id(object: &Map<String, Value>) -> Result<&str, VerifyError> {
    str_member(object, "keyId")
}

fn str_member<'a>(
    object: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, VerifyError> {
    object
        .get(name)
        .and_then(Value::as_str)
        .ok_or(VerifyError::Missing(name))
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_id: String,
    /// Unix seconds.
    pub timestamp: i64,
    /// What the replay cache remembers: the normalized raw signature.
    pub replay_value: Vec<u8>,
}

/// Checks one signature object against `key`, with `now` and `window` in seconds.
pub fn verify(
    message: &Message<'_>,
    payload: &Value,
    object: &Map<String, Value>,
    key: &PublicKey,
    now: i64,
    window: i64,
) -> Result<Verified, VerifyError> {
    let key_id = key_id(object)?;
    let algorithm = str_member(object, "algorithm")?;
    if algorithm != key.algorithm().name() {
        return Err(match algorithm.parse::<Algorithm>() {
            Ok(_) => VerifyError::AlgorithmMismatch {
                key_id: key_id.to_owned(),
                claimed: algorithm.to_owned(),
                actual: key.algorithm(),
            },
            Err(_) => unsupported("algorithm", algorithm),
        });
    }
    let method = str_member(object, "signingMethod")?;
    if method != SIGNING_METHOD {
        return Err(unsupported("signingMethod", method));
    }
    let encoding = str_member(object, "encoding")?;
    if encoding != "base64" {
        return Err(unsupported("encoding", encoding));
    }
    let stamp = str_member(object, "timestamp")?;
    let at = chrono::DateTime::parse_from_rfc3339(stamp)
        .map_err(|_| VerifyError::Timestamp(stamp.chars().take(40).collect()))?
        .timestamp();
    let off = at.saturating_sub(now);
    if off.abs() > window {
        return Err(VerifyError::OutsideWindow {
            timestamp: stamp.to_owned(),
            off,
            window,
        });
    }
    let value = str_member(object, "value")?;
    if value.len() > 256 {
        return Err(VerifyError::ValueEncoding);
    }
    let raw = STANDARD
        .decode(value)
        .map_err(|_| VerifyError::ValueEncoding)?;
    let mut signer = object.clone();
    signer.remove("value");
    let bytes = signed_bytes(message, payload, &signer)
        .map_err(|e| VerifyError::Canonical(e.to_string()))?;
    let replay_value = key
        .verify_raw(&bytes, &raw)
        .map_err(|_| VerifyError::Invalid(key_id.to_owned()))?;
    Ok(Verified {
        key_id: key_id.to_owned(),
        timestamp: at,
        replay_value,
    })
}

fn unsupported(member: &'static str, value: &str) -> VerifyError {
    VerifyError::Unsupported {
        member,
        value: value.chars().take(32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_796_644_800; // 2026-12-07T12:00:00Z
    const STAMP: &str = "2026-12-07T12:00:00Z";

    fn reset() -> Message<'static> {
        Message {
            message_type: 2,
            action: "Reset",
            destination: "CS-1",
        }
    }

    fn signed(alg: Algorithm) -> (PrivateKey, Value) {
        let key = PrivateKey::generate(alg).unwrap();
        let mut payload = json!({"type": "Immediate", "evseId": 1});
        let sig = sign(
            &reset(),
            &payload,
            &key,
            SignOptions {
                timestamp: STAMP.into(),
                nonce: Some("n-1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        attach(&mut payload, sig).unwrap();
        (key, payload)
    }

    fn check(
        key: &PrivateKey,
        message: &Message<'_>,
        payload: &Value,
    ) -> Result<Verified, VerifyError> {
        let objects = signatures(payload)?;
        verify(message, payload, objects[0], &key.public(), NOW, 300)
    }

    #[test]
    fn signs_and_verifies_all_three() {
        for alg in Algorithm::ALL {
            let (key, payload) = signed(alg);
            let v = check(&key, &reset(), &payload).unwrap();
            assert_eq!(v.key_id, key.public().key_id());
            assert_eq!(v.timestamp, NOW);
        }
    }

    #[test]
    fn any_change_is_refused() {
        for alg in Algorithm::ALL {
            let (key, payload) = signed(alg);
            let mut p = payload.clone();
            p["type"] = json!("OnIdle");
            assert!(matches!(
                check(&key, &reset(), &p),
                Err(VerifyError::Invalid(_))
            ));
            let mut p = payload.clone();
            p["extra"] = json!(1);
            assert!(matches!(
                check(&key, &reset(), &p),
                Err(VerifyError::Invalid(_))
            ));
            for m in [
                Message {
                    action: "UpdateFirmware",
                    ..reset()
                },
                Message {
                    destination: "CS-2",
                    ..reset()
                },
                Message {
                    message_type: 6,
                    ..reset()
                },
            ] {
                assert!(matches!(
                    check(&key, &m, &payload),
                    Err(VerifyError::Invalid(_))
                ));
            }
            // The signer object is covered: a changed nonce or timestamp fails.
            let mut p = payload.clone();
            p["signatures"][0]["nonce"] = json!("n-2");
            assert!(matches!(
                check(&key, &reset(), &p),
                Err(VerifyError::Invalid(_))
            ));
            let mut p = payload.clone();
            p["signatures"][0]["timestamp"] = json!("2026-12-07T12:00:01Z");
            assert!(matches!(
                check(&key, &reset(), &p),
                Err(VerifyError::Invalid(_))
            ));
            let other = PrivateKey::generate(alg).unwrap();
            assert!(matches!(
                check(&other, &reset(), &payload),
                Err(VerifyError::Invalid(_))
            ));
        }
    }

    #[test]
    fn member_order_and_whitespace_do_not_matter() {
        let (key, payload) = signed(Algorithm::Ed25519);
        let text = format!(
            "{{ \"evseId\" : 1.0e0 , \"signatures\": {}, \"type\":\"Immediate\" }}",
            payload["signatures"]
        );
        let reordered: Value = serde_json::from_str(&text).unwrap();
        check(&key, &reset(), &reordered).unwrap();
    }

    #[test]
    fn time_window_and_malformed_objects() {
        let (key, payload) = signed(Algorithm::Ed25519);
        let objects = signatures(&payload).unwrap();
        let pk = key.public();
        assert!(verify(&reset(), &payload, objects[0], &pk, NOW + 300, 300).is_ok());
        assert!(matches!(
            verify(&reset(), &payload, objects[0], &pk, NOW + 301, 300),
            Err(VerifyError::OutsideWindow { off: -301, .. })
        ));
        assert!(matches!(
            verify(&reset(), &payload, objects[0], &pk, NOW - 301, 300),
            Err(VerifyError::OutsideWindow { .. })
        ));
        let mut p = payload.clone();
        p["signatures"][0]["algorithm"] = json!("secp256r1");
        assert!(matches!(
            check(&key, &reset(), &p),
            Err(VerifyError::AlgorithmMismatch { .. })
        ));
        p["signatures"][0]["algorithm"] = json!("rsa");
        assert!(matches!(
            check(&key, &reset(), &p),
            Err(VerifyError::Unsupported { .. })
        ));
        let mut p = payload.clone();
        p["signatures"][0]["value"] = json!("%%%");
        assert_eq!(check(&key, &reset(), &p), Err(VerifyError::ValueEncoding));
        let mut p = payload.clone();
        p["signatures"][0]["timestamp"] = json!("yesterday");
        assert!(matches!(
            check(&key, &reset(), &p),
            Err(VerifyError::Timestamp(_))
        ));
        assert_eq!(
            signatures(&json!({"signatures": {}})),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            signatures(&json!({"signatures": [1]})),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            signatures(&json!({"signatures": vec![json!({}); 9]})),
            Err(VerifyError::TooMany)
        );
        assert!(signatures(&json!({"type": "Hard"})).unwrap().is_empty());
    }
}
