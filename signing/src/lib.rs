//! End-to-end message signatures, as pure logic with no I/O.
//!
//! This crate will hold the `signatures` payload object, the RFC 8785 (JCS) canonical form that is
//! signed (`messageType`, `action`, `destination`, payload without `signatures`, signer), the
//! ed25519 / secp256r1 / secp384r1 signers and verifiers, timestamp-window and replay checks, and
//! the per-action signature policies and user roles of ARCHITECTURE §3.5. Forwarders never
//! re-serialize payloads, so signatures made here survive every hop. Intentionally empty for now.
