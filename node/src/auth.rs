//! Inbound Basic-auth credentials (security profile 1): salted argon2id hashes, never plain text.
//!
//! Hash verification is deliberately expensive, so it runs on the blocking pool, and a semaphore
//! caps how many run at once: a flood of bad passwords can slow logins down but cannot starve
//! the runtime or exhaust memory (each argon2 run holds its memory cost).

use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use base64::Engine as _;
use tokio::sync::Semaphore;

/// At most this many hash verifications run at the same time.
const CONCURRENT_VERIFICATIONS: usize = 4;

pub struct Verifier {
    gate: Semaphore,
}

impl Verifier {
    pub fn new() -> Self {
        Verifier {
            gate: Semaphore::new(CONCURRENT_VERIFICATIONS),
        }
    }

    /// True when `password` matches the PHC `hash`. Any malformed hash is a mismatch.
    pub async fn verify(&self, password: String, hash: String) -> bool {
        let Ok(_permit) = self.gate.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || {
            Argon2::default()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }
}

/// A fresh salted hash for the config (`ocpp-node hash-password`).
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Splits an `Authorization: Basic …` header value into user and password.
pub fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    // OCPP 1.6 security whitepaper: the password may be raw bytes; we require UTF-8 text here
    // because hashes are made from `hash-password` input, which is text.
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let v = Verifier::new();
        assert!(v.verify("s3cret".into(), hash.clone()).await);
        assert!(!v.verify("wrong".into(), hash).await);
        assert!(!v.verify("x".into(), "not a hash".into()).await);
    }

    #[test]
    fn basic_header() {
        assert_eq!(
            parse_basic("Basic Q1AxOnB3OmQ="),
            Some(("CP1".into(), "pw:d".into()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
    }
}
