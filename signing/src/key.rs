//! Keys: a private key signs, a public key verifies, and a keyId names a public key on the
//! wire. The keyId is the base64 of the raw ed25519 key or of the SEC1 *compressed* point, so
//! one key has exactly one keyId and its length tells the algorithm.
//!
//! Private keys live in PKCS#8 files (PEM "PRIVATE KEY", or DER as the node identity key is
//! written). New keys take their bytes from ring's system random source, so no second random
//! number generator enters the tree.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ring::rand::SecureRandom as _;
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;

use crate::Algorithm;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("keyId is not base64: {0}")]
    KeyIdEncoding(String),
    #[error(
        "keyId of {0} bytes is no public key (ed25519: 32 raw bytes; secp256r1: 33, secp384r1: 49, a SEC1 compressed point)"
    )]
    KeyIdLength(usize),
    #[error("keyId is not a valid {0} public key")]
    InvalidPoint(Algorithm),
    #[error("not a PKCS#8 private key (PEM \"PRIVATE KEY\" or DER): {0}")]
    NotPkcs8(String),
    #[error("the PKCS#8 key is not ed25519, secp256r1 or secp384r1")]
    UnsupportedKey,
    #[error("the system random source failed")]
    Random,
    #[error("cannot encode the key: {0}")]
    Encode(String),
}

/// A key that signs. Its bytes are never printed.
#[derive(Clone)]
pub enum PrivateKey {
    Ed25519(ed25519_dalek::SigningKey),
    Secp256r1(p256::ecdsa::SigningKey),
    Secp384r1(p384::ecdsa::SigningKey),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PrivateKey({}, {})",
            self.algorithm(),
            self.public().key_id()
        )
    }
}

/// A key that verifies.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    Secp256r1(p256::ecdsa::VerifyingKey),
    Secp384r1(p384::ecdsa::VerifyingKey),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {})", self.algorithm(), self.key_id())
    }
}

impl PublicKey {
    /// The key a keyId names.
    pub fn from_key_id(key_id: &str) -> Result<PublicKey, KeyError> {
        if key_id.len() > 128 {
            return Err(KeyError::KeyIdLength(key_id.len() * 3 / 4));
        }
        let raw = STANDARD
            .decode(key_id)
            .map_err(|e| KeyError::KeyIdEncoding(e.to_string()))?;
        Self::from_raw(&raw)
    }

    fn from_raw(raw: &[u8]) -> Result<PublicKey, KeyError> {
        match raw.len() {
            32 => {
                let bytes: [u8; 32] = raw.try_into().map_err(|_| KeyError::KeyIdLength(32))?;
                ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map(PublicKey::Ed25519)
                    .map_err(|_| KeyError::InvalidPoint(Algorithm::Ed25519))
            }
            33 => p256::ecdsa::VerifyingKey::from_sec1_bytes(raw)
                .map(PublicKey::Secp256r1)
                .map_err(|_| KeyError::InvalidPoint(Algorithm::Secp256r1)),
            49 => p384::ecdsa::VerifyingKey::from_sec1_bytes(raw)
                .map(PublicKey::Secp384r1)
                .map_err(|_| KeyError::InvalidPoint(Algorithm::Secp384r1)),
            n => Err(KeyError::KeyIdLength(n)),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Ed25519(_) => Algorithm::Ed25519,
            PublicKey::Secp256r1(_) => Algorithm::Secp256r1,
            PublicKey::Secp384r1(_) => Algorithm::Secp384r1,
        }
    }

    /// The raw bytes the keyId encodes.
    pub fn raw(&self) -> Vec<u8> {
        match self {
            PublicKey::Ed25519(k) => k.to_bytes().to_vec(),
            PublicKey::Secp256r1(k) => k.to_encoded_point(true).as_bytes().to_vec(),
            PublicKey::Secp384r1(k) => k.to_encoded_point(true).as_bytes().to_vec(),
        }
    }

    pub fn key_id(&self) -> String {
        STANDARD.encode(self.raw())
    }
}

impl PrivateKey {
    /// A new key from the system random source.
    pub fn generate(algorithm: Algorithm) -> Result<PrivateKey, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        // A scalar outside the group order is refused; with P-256/P-384 that is ~2^-32 rare,
        // so a few tries always suffice.
        for _ in 0..8 {
            let key = match algorithm {
                Algorithm::Ed25519 => {
                    let mut seed = [0u8; 32];
                    rng.fill(&mut seed).map_err(|_| KeyError::Random)?;
                    Some(PrivateKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                        &seed,
                    )))
                }
                Algorithm::Secp256r1 => {
                    let mut d = [0u8; 32];
                    rng.fill(&mut d).map_err(|_| KeyError::Random)?;
                    p256::ecdsa::SigningKey::from_slice(&d)
                        .ok()
                        .map(PrivateKey::Secp256r1)
                }
                Algorithm::Secp384r1 => {
                    let mut d = [0u8; 48];
                    rng.fill(&mut d).map_err(|_| KeyError::Random)?;
                    p384::ecdsa::SigningKey::from_slice(&d)
                        .ok()
                        .map(PrivateKey::Secp384r1)
                }
            };
            if let Some(key) = key {
                return Ok(key);
            }
        }
        Err(KeyError::Random)
    }

    /// A PKCS#8 key, PEM ("PRIVATE KEY") or DER.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<PrivateKey, KeyError> {
        let text = bytes.trim_ascii_start();
        let der = if text.starts_with(b"-----") {
            PrivatePkcs8KeyDer::from_pem_slice(text)
                .map_err(|e| KeyError::NotPkcs8(e.to_string()))?
                .secret_pkcs8_der()
                .to_vec()
        } else {
            bytes.to_vec()
        };
        Self::from_pkcs8_der(&der)
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<PrivateKey, KeyError> {
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_der(der) {
            return Ok(PrivateKey::Ed25519(k));
        }
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_der(der) {
            return Ok(PrivateKey::Secp256r1(k));
        }
        if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_der(der) {
            return Ok(PrivateKey::Secp384r1(k));
        }
        Err(KeyError::UnsupportedKey)
    }

    /// PKCS#8 PEM text, for a key file.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        let der = match self {
            // PKCS#8 v1 (no public key member): v2's is refused by OpenSSL-based readers
            // such as Python's cryptography ("extra data").
            PrivateKey::Ed25519(k) => ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: k.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_der(),
            // The ECDSA signing keys encode only with the `pem` feature; their secret keys
            // do without it.
            PrivateKey::Secp256r1(k) => p256::SecretKey::from(k).to_pkcs8_der(),
            PrivateKey::Secp384r1(k) => p384::SecretKey::from(k).to_pkcs8_der(),
        }
        .map_err(|e| KeyError::Encode(e.to_string()))?;
        let body = STANDARD.encode(der.as_bytes());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).map_err(|e| KeyError::Encode(e.to_string()))?);
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok(pem)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.public().algorithm()
    }

    pub fn public(&self) -> PublicKey {
        match self {
            PrivateKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
            PrivateKey::Secp256r1(k) => PublicKey::Secp256r1(*k.verifying_key()),
            PrivateKey::Secp384r1(k) => PublicKey::Secp384r1(*k.verifying_key()),
        }
    }

    /// The raw signature of `message` (deterministic for all three: RFC 8032, RFC 6979).
    pub fn sign_raw(&self, message: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer as _;
        match self {
            PrivateKey::Ed25519(k) => k.sign(message).to_bytes().to_vec(),
            PrivateKey::Secp256r1(k) => {
                let s: p256::ecdsa::Signature = k.sign(message);
                s.to_bytes().to_vec()
            }
            PrivateKey::Secp384r1(k) => {
                let s: p384::ecdsa::Signature = k.sign(message);
                s.to_bytes().to_vec()
            }
        }
    }
}

/// Why a raw signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSignature;

impl PublicKey {
    /// Verifies a raw signature, and returns the form the replay cache keys on: ECDSA's
    /// `s` normalized to the low half, so that flipping `s` to `n - s` (a second valid
    /// signature of the same message) cannot pass for a new message.
    pub fn verify_raw(&self, message: &[u8], signature: &[u8]) -> Result<Vec<u8>, BadSignature> {
        use ed25519_dalek::Verifier as _;
        match self {
            PublicKey::Ed25519(k) => {
                let s =
                    ed25519_dalek::Signature::from_slice(signature).map_err(|_| BadSignature)?;
                // Strict: no small-order keys, no non-canonical S (RFC 8032 §5.1.7).
                k.verify_strict(message, &s).map_err(|_| BadSignature)?;
                Ok(signature.to_vec())
            }
            PublicKey::Secp256r1(k) => {
                let s = p256::ecdsa::Signature::from_slice(signature).map_err(|_| BadSignature)?;
                k.verify(message, &s).map_err(|_| BadSignature)?;
                Ok(s.normalize_s().unwrap_or(s).to_bytes().to_vec())
            }
            PublicKey::Secp384r1(k) => {
                let s = p384::ecdsa::Signature::from_slice(signature).map_err(|_| BadSignature)?;
                k.verify(message, &s).map_err(|_| BadSignature)?;
                Ok(s.normalize_s().unwrap_or(s).to_bytes().to_vec())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8032 §7.1, tests 1, 2, 3 and "SHA(abc)".
    #[test]
    fn rfc8032_vectors() {
        let vectors = [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
            (
                "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
                "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
                "af82",
                "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
            ),
            (
                "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
                "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
                "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
            ),
        ];
        for (secret, public, message, signature) in vectors {
            let seed: [u8; 32] = unhex(secret).try_into().unwrap();
            let key = PrivateKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed));
            assert_eq!(key.public().raw(), unhex(public));
            let sig = key.sign_raw(&unhex(message));
            assert_eq!(sig, unhex(signature));
            let public = PublicKey::from_key_id(&key.public().key_id()).unwrap();
            assert!(public.verify_raw(&unhex(message), &sig).is_ok());
            let mut bad = sig.clone();
            bad[10] ^= 1;
            assert!(public.verify_raw(&unhex(message), &bad).is_err());
        }
    }

    #[test]
    fn generate_pem_round_trip_and_key_ids() {
        for alg in Algorithm::ALL {
            let key = PrivateKey::generate(alg).unwrap();
            let pem = key.to_pkcs8_pem().unwrap();
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let back = PrivateKey::from_pkcs8(pem.as_bytes()).unwrap();
            assert_eq!(back.public(), key.public());
            let id = key.public().key_id();
            let raw_len = match alg {
                Algorithm::Ed25519 => 32,
                Algorithm::Secp256r1 => 33,
                Algorithm::Secp384r1 => 49,
            };
            assert_eq!(STANDARD.decode(&id).unwrap().len(), raw_len);
            assert_eq!(PublicKey::from_key_id(&id).unwrap(), key.public());
            let sig = key.sign_raw(b"hello");
            assert_eq!(sig.len(), alg.signature_len());
            assert!(key.public().verify_raw(b"hello", &sig).is_ok());
            assert!(key.public().verify_raw(b"hellO", &sig).is_err());
        }
    }

    #[test]
    fn ring_identity_key_is_read() {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = PrivateKey::from_pkcs8(doc.as_ref()).unwrap();
        assert_eq!(key.algorithm(), Algorithm::Ed25519);
    }

    #[test]
    fn bad_key_ids_are_refused() {
        assert!(matches!(
            PublicKey::from_key_id("not base64!"),
            Err(KeyError::KeyIdEncoding(_))
        ));
        assert_eq!(
            PublicKey::from_key_id(&STANDARD.encode([1u8; 20])),
            Err(KeyError::KeyIdLength(20))
        );
        // An uncompressed P-256 point is 65 bytes: not a keyId, so one key has one name.
        let key = PrivateKey::generate(Algorithm::Secp256r1).unwrap();
        let PrivateKey::Secp256r1(k) = &key else {
            unreachable!()
        };
        let long = k.verifying_key().to_encoded_point(false);
        assert_eq!(
            PublicKey::from_key_id(&STANDARD.encode(long.as_bytes())),
            Err(KeyError::KeyIdLength(65))
        );
        let mut off_curve = vec![2u8];
        off_curve.extend([0xffu8; 32]);
        assert_eq!(
            PublicKey::from_key_id(&STANDARD.encode(&off_curve)),
            Err(KeyError::InvalidPoint(Algorithm::Secp256r1))
        );
        assert!(
            PrivateKey::from_pkcs8(
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            )
            .is_err()
        );
    }

    #[test]
    fn high_s_ecdsa_maps_to_the_same_replay_key() {
        let key = PrivateKey::generate(Algorithm::Secp256r1).unwrap();
        let sig = key.sign_raw(b"m");
        let s = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        let (r, low) = s.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r, -*low).unwrap();
        let public = key.public();
        let a = public.verify_raw(b"m", &sig).unwrap();
        let b = public.verify_raw(b"m", &high.to_bytes()).unwrap();
        assert_eq!(a, b);
    }
}
