//! Inbound Basic-auth credentials (security profile 1): salted argon2id hashes, never plain text.
//!
//! Hash verification is deliberately expensive, so it runs on the blocking pool, and a semaphore
//! caps how many run at once: a flood of bad passwords can slow logins down but cannot starve
//! the runtime or exhaust memory (each argon2 run holds its memory cost).

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher as _, Version};
use base64::Engine as _;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, oneshot};

/// At most this many hash verifications run at the same time, each on its own thread.
const CONCURRENT_VERIFICATIONS: usize = 4;

/// A password and its hash, and where the verdict goes.
type Job = (String, String, oneshot::Sender<bool>);

/// Verifies on a fixed set of threads rather than on tokio's blocking pool. Each argon2 run
/// allocates its whole memory cost (19 MiB with the default parameters); the allocator keeps
/// that memory with the thread that freed it, so a pool that grows to many threads under a flood
/// of logins would keep many such blocks. A fixed set bounds it at CONCURRENT_VERIFICATIONS
/// blocks, which is the figure the hostile-input test's peak-RSS limit is built on.
pub struct Verifier {
    gate: Semaphore,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Verifier {
    pub fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..CONCURRENT_VERIFICATIONS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-verify-{i}"))
                .spawn(move || {
                    // This thread's argon2 memory, kept from one verification to the next.
                    let mut memory: Vec<Block> = Vec::new();
                    loop {
                        // Only the waiting for a job holds the lock, never the hashing.
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((password, hash, reply)) = job else {
                            return;
                        };
                        let ok = verify_with(&mut memory, password.as_bytes(), &hash);
                        let _ = reply.send(ok);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password verification thread");
            }
        }
        Verifier {
            gate: Semaphore::new(CONCURRENT_VERIFICATIONS),
            jobs: tx,
        }
    }

    /// True when `password` matches the PHC `hash`. Any malformed hash is a mismatch.
    pub async fn verify(&self, password: String, hash: String) -> bool {
        let Ok(_permit) = self.gate.acquire().await else {
            return false;
        };
        let (tx, rx) = oneshot::channel();
        self.jobs.send((password, hash, tx)).is_ok() && rx.await.unwrap_or(false)
    }
}

/// Largest argon2 memory cost a configured hash may ask for (KiB): a hash made by
/// `hash-password` uses 19 MiB; a hand-made one cannot make each login cost gigabytes.
const MAX_MEMORY_KIB: u32 = 256 * 1024;

/// Checks `password` against the PHC `hash` in `memory`, which is grown once to the hash's
/// memory cost and then reused: the argon2 crate's own verifier allocates (and frees) the whole
/// memory cost on every call, and the allocator does not reliably give it back, so every login
/// grew the process by 19 MiB.
fn verify_with(memory: &mut Vec<Block>, password: &[u8], hash: &str) -> bool {
    let Ok(phc) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(phc.algorithm.as_str()),
        Params::try_from(&phc),
    ) else {
        return false;
    };
    let version = match phc.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    if params.m_cost() > MAX_MEMORY_KIB {
        tracing::warn!(
            m_cost_kib = params.m_cost(),
            "password hash asks for more memory than allowed; treated as a mismatch"
        );
        return false;
    }
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    if argon
        .hash_password_into_with_memory(password, salt.as_ref(), &mut out, &mut memory[..blocks])
        .is_err()
    {
        return false;
    }
    // Constant time: the comparison must not tell how many leading bytes were right.
    use subtle::ConstantTimeEq as _;
    bool::from(out.as_slice().ct_eq(expected.as_bytes()))
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

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
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
