//! End-to-end message signatures, as pure logic with no I/O (ARCHITECTURE §3.5).
//!
//! TLS ends at every hop, so nothing but a signature inside the payload proves who sent a
//! command once a node sits in the path. This crate holds:
//! * [`key`]: ed25519 / secp256r1 / secp384r1 keys, their keyId, and PKCS#8 PEM files;
//! * [`canonical`]: the RFC 8785 (JCS) object a signature covers: message type, action,
//!   destination, the payload without `signatures`, and the signer object;
//! * [`signature`]: the `signatures` payload member, signing and verifying one message;
//! * [`replay`]: the bounded cache of (keyId, value) pairs seen within the time window;
//! * [`jws`]: OCPP's own signed messages (`<Action>-Signed`, JWS), verified to pass through;
//! * [`policy`]: user roles and per-action signature policies, evaluated to a verdict.
//!
//! Forwarders never re-serialize payloads, so a signature made here survives every hop; only
//! the node that adds a signature writes the payload anew.

pub mod algorithm;
pub mod canonical;
pub mod jws;
pub mod key;
pub mod policy;
pub mod replay;
pub mod signature;

pub use algorithm::Algorithm;
pub use canonical::Message;
pub use key::{KeyError, PrivateKey, PublicKey};
pub use policy::{Check, Direction, PolicyError, PolicySet, Principal, Role, Rule, Verdict};
pub use replay::ReplayCache;
pub use signature::{SignError, SignatureObject, VerifyError};
