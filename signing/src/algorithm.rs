//! The three signature algorithms of §3.5, by the names the `algorithm` member carries.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ed25519 (RFC 8032); keyId is the raw 32-byte public key.
    Ed25519,
    /// ECDSA on P-256 with SHA-256; the signature is 64 bytes r‖s.
    Secp256r1,
    /// ECDSA on P-384 with SHA-384; the signature is 96 bytes r‖s.
    Secp384r1,
}

impl Algorithm {
    pub const ALL: [Algorithm; 3] = [
        Algorithm::Ed25519,
        Algorithm::Secp256r1,
        Algorithm::Secp384r1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Secp256r1 => "secp256r1",
            Algorithm::Secp384r1 => "secp384r1",
        }
    }

    /// Length of a raw signature.
    pub fn signature_len(self) -> usize {
        match self {
            Algorithm::Ed25519 | Algorithm::Secp256r1 => 64,
            Algorithm::Secp384r1 => 96,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signature algorithm {0:?} (expected ed25519, secp256r1 or secp384r1)")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| UnknownAlgorithm(s.chars().take(32).collect()))
    }
}
