//! Verification of OCPP's own signed messages: OCPP 2.0.1 / 2.1 Part 4 (OCPP-J), chapter 7.
//!
//! The rest of this crate signs payloads with our own `signatures` member, because that is what
//! the overlay's nodes exchange. Chargers and CSMSs that follow the OCA specification do
//! something else: they wrap a whole payload in a JSON Web Signature and rename the action. A
//! gateway that meets such a message must be able to see through it (to route and validate the
//! inner payload) and, when a policy asks for it, to check the signature. That is all this
//! module does; it never signs, never re-serializes, and does no I/O.
//!
//! # The format (Part 4 §7.1 – §7.4)
//!
//! ```text
//! [2, "19223201", "BootNotification",        {"reason": "PowerUp", ...}]
//! [2, "19223201", "BootNotification-Signed", {"protected": "...", "payload": "...", "signature": "..."}]
//! ```
//!
//! * The message type id and message id stay the same; the action gets the suffix `-Signed`
//!   ([`is_signed_action`]).
//! * The payload slot holds the **Flattened JWS JSON Serialization** (RFC 7515 §7.2.2) of the
//!   original payload: an object, not the compact `a.b.c` string. [`parse`] reads it.
//! * The JWS Protected Header SHALL carry `OCPPAction` (the unsigned action name) and
//!   `OCPPMessageTypedId` (the message type id, spelled with that typo in the specification),
//!   and SHOULD carry `x5t#S256`, the base64url SHA-256 hash of the DER signing certificate
//!   ([`certificate_thumbprint`]). How the certificate is found from the hash is out of scope
//!   of the specification, and so of this module: the caller picks the [`JwsKey`].
//! * Only `ES256`, `RS256` and `RS384` are allowed (§7.3, the TLS algorithms). Everything else,
//!   `none` and the HMAC family above all, is refused at parse time, so a key can never be
//!   used as an HMAC secret or skipped altogether.
//! * A key that differs from the TLS peer's is expected (§7.4 NOTE, Local Controllers), so
//!   nothing here looks at the connection.
//!
//! Sources: the text of Part 4 §7.1 – §7.4 as published for OCPP 2.0.1 and for OCPP 2.1
//! (Edition 2, 2025-12-03), which agree apart from the version they name; RFC 7515 (JWS) and
//! RFC 7518 §3.1, §3.3, §3.4 (JWA). The public implementations we found (the Rust crate
//! `ocpp-kit`, a TypeScript test suite) read the chapter the same way; a Go test suite sends
//! the field as `OCPPMessageTypeId`. The chapter has no worked example, so there is no
//! official vector: the tests use RFC 7515 A.2 / A.3 and signatures made with OpenSSL.
//!
//! # Readings the specification leaves open
//!
//! * The chapter's frame template shows an extra `{<Extension>}` element between the message
//!   id and the action, which no OCPP-J frame of §4 has. We take it for a leftover: this
//!   module only ever sees the payload slot, whatever the frame around it looks like.
//! * A `CALLRESULT` has no action to rename. Following "it SHALL send a signed reply", its
//!   payload slot simply holds the flattened JWS ([`is_flattened_jws`] recognizes one), with
//!   the *request's* action in `OCPPAction` and `3` in `OCPPMessageTypedId`.
//! * `OCPPMessageTypedId` is accepted under the corrected spelling `OCPPMessageTypeId` too;
//!   both are inside the protected header, so accepting either costs no integrity. If both
//!   are present they must agree.
//! * [`parse`] itself does not require the OCPP fields, so that plain RFC 7515 vectors parse;
//!   [`Jws::check_ocpp_binding`] enforces the SHALL and ties the signature to the frame that
//!   carried it, so that a signature cannot be lifted onto another action or message type.
//! * Key identifiers (`kid`, `x5t#S256`, `x5c`) are read from the protected header only. An
//!   unprotected `header` member is allowed by RFC 7515 and exposed raw, but nothing in it is
//!   trusted, and its names must not repeat the protected ones (RFC 7515 §7.2.1).
//! * We understand no `crit` extension, so any `crit` is refused (RFC 7515 §4.1.11), and so is
//!   `b64: false` (RFC 7797), which would change what the signature covers.
//! * Duplicate member names in the protected header are refused (RFC 7515 §5.2), so that two
//!   JSON parsers cannot disagree about which `alg` or `OCPPAction` was signed.
//! * The inner payload must be a JSON object, as every OCPP payload is. Its exact bytes are
//!   kept ([`Jws::payload_bytes`]) for forwarders that must not re-serialize.
//!
//! # Bounds
//!
//! A whole flattened JWS is at most [`MAX_INPUT`] bytes (serialized), the protected header at
//! most [`MAX_HEADER`] bytes decoded with at most [`MAX_HEADER_MEMBERS`] members, a signature at
//! most [`MAX_SIGNATURE`] bytes (RSA-8192), `x5c` at most [`MAX_X5C`] certificates. All
//! base64url is decoded strictly: no padding, no non-canonical trailing bits, so that one
//! signature has exactly one textual form.

use std::fmt;
use std::io;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::ObjectIdentifier;
use p256::pkcs8::spki::SubjectPublicKeyInfoRef;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// The suffix a signed action carries (§7.1).
pub const SIGNED_SUFFIX: &str = "-Signed";

/// Largest flattened JWS accepted, in serialized bytes.
pub const MAX_INPUT: usize = 64 * 1024;
/// Largest decoded protected header, in bytes. Room for an `x5c` chain of a few certificates.
pub const MAX_HEADER: usize = 16 * 1024;
/// Most members a protected (or unprotected) header may have.
pub const MAX_HEADER_MEMBERS: usize = 32;
/// Largest decoded signature: an RSA-8192 signature is 1024 bytes.
pub const MAX_SIGNATURE: usize = 1024;
/// Most certificates an `x5c` header may carry.
pub const MAX_X5C: usize = 8;

const ES256_SIGNATURE_LEN: usize = 64;
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// The header names of §7.1, and the corrected spelling some implementations send.
const OCPP_ACTION: &str = "OCPPAction";
const OCPP_MESSAGE_TYPE_ID: &str = "OCPPMessageTypedId";
const OCPP_MESSAGE_TYPE_ID_ALT: &str = "OCPPMessageTypeId";

const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

const DER_INTEGER: u8 = 0x02;
const DER_SEQUENCE: u8 = 0x30;
const DER_CONTEXT_0: u8 = 0xa0;

/// Why a signed message could not be read or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    #[error("{what} is larger than {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    #[error(
        "the signed payload is not a JSON object (OCPP uses the flattened JWS JSON serialization, not the compact form)"
    )]
    NotFlattened,
    #[error("the general JWS JSON serialization (\"signatures\") is not OCPP's flattened form")]
    GeneralSerialization,
    #[error("malformed JWS: {0}")]
    Malformed(&'static str),
    #[error("{0} is not valid unpadded base64url")]
    Base64(&'static str),
    #[error("duplicate JSON member {0:?} (RFC 7515 §5.2)")]
    DuplicateMember(String),
    #[error("the protected header has no \"alg\"")]
    MissingAlgorithm,
    #[error("algorithm {0:?} is not allowed (OCPP Part 4 §7.3 allows ES256, RS256 and RS384)")]
    UnsupportedAlgorithm(String),
    #[error("critical header extension {0:?} is not understood (RFC 7515 §4.1.11)")]
    CriticalHeader(String),
    #[error("the unencoded payload option (b64: false, RFC 7797) is not supported")]
    UnencodedPayload,
    #[error("header member {0:?} is both protected and unprotected (RFC 7515 §7.2.1)")]
    HeaderOverlap(String),
    #[error("the protected header has no {0}")]
    MissingOcppField(&'static str),
    #[error("the protected header says {field} is {found:?}, the frame says {expected:?}")]
    OcppMismatch {
        field: &'static str,
        expected: String,
        found: String,
    },
    #[error("a {algorithm} signature cannot be checked with a {key} key")]
    KeyMismatch {
        algorithm: JwsAlgorithm,
        key: &'static str,
    },
    #[error("a {algorithm} signature must be {expected} bytes, got {found}")]
    SignatureLength {
        algorithm: JwsAlgorithm,
        expected: usize,
        found: usize,
    },
    #[error("the signature does not verify")]
    InvalidSignature,
    #[error("bad public key: {0}")]
    BadKey(&'static str),
    #[error("unsupported public key type (expected RSA or EC P-256)")]
    UnsupportedKey,
}

/// The three algorithms of Part 4 §7.3, by their JWA names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    /// ECDSA on P-256 with SHA-256; the signature is 64 bytes r‖s (RFC 7518 §3.4).
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
}

impl JwsAlgorithm {
    pub const ALL: [JwsAlgorithm; 3] = [
        JwsAlgorithm::Es256,
        JwsAlgorithm::Rs256,
        JwsAlgorithm::Rs384,
    ];

    /// The `alg` value.
    pub fn name(self) -> &'static str {
        match self {
            JwsAlgorithm::Es256 => "ES256",
            JwsAlgorithm::Rs256 => "RS256",
            JwsAlgorithm::Rs384 => "RS384",
        }
    }

    /// Reads an `alg` value (case-sensitive, RFC 7515 §4.1.1); `None` for anything OCPP
    /// does not allow, `none` included.
    pub fn from_name(name: &str) -> Option<JwsAlgorithm> {
        JwsAlgorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for JwsAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The inner action of a signed action name: `Some("BootNotification")` for
/// `"BootNotification-Signed"`, `None` when the name is not a signed one.
pub fn is_signed_action(action: &str) -> Option<&str> {
    action
        .strip_suffix(SIGNED_SUFFIX)
        .filter(|inner| !inner.is_empty())
}

/// Whether a payload has the shape of a flattened JWS: an object whose `protected`, `payload`
/// and `signature` members are strings. For a `CALLRESULT`, which has no action to carry the
/// `-Signed` suffix, this is the only sign that the reply is signed.
pub fn is_flattened_jws(payload: &Value) -> bool {
    payload.as_object().is_some_and(|object| {
        ["protected", "payload", "signature"]
            .iter()
            .all(|name| object.get(*name).is_some_and(Value::is_string))
    })
}

/// The `x5t#S256` value of a DER certificate: base64url (unpadded) of its SHA-256 (§7.4,
/// RFC 7515 §4.1.8).
pub fn certificate_thumbprint(certificate_der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, certificate_der))
}

/// A parsed flattened JWS: the header fields that matter, the exact bytes that were signed,
/// and the inner payload. Parsing checks the form; [`Jws::verify`] checks the signature.
#[derive(Debug, Clone)]
pub struct Jws {
    algorithm: JwsAlgorithm,
    protected: Map<String, Value>,
    unprotected: Option<Map<String, Value>>,
    key_id: Option<String>,
    x5t_s256: Option<String>,
    x5c: Vec<Vec<u8>>,
    ocpp_action: Option<String>,
    ocpp_message_type_id: Option<u8>,
    signing_input: String,
    payload_bytes: Vec<u8>,
    payload: Value,
    signature: Vec<u8>,
}

/// Parses the payload slot of a signed message, already read as JSON. Duplicate names in the
/// outer object cannot be seen here (the `Value` kept one); [`parse_str`] refuses them.
pub fn parse(payload: &Value) -> Result<Jws, JwsError> {
    let Value::Object(object) = payload else {
        return Err(JwsError::NotFlattened);
    };
    if !serializes_within(payload, MAX_INPUT) {
        return Err(JwsError::TooLarge {
            what: "the signed payload",
            limit: MAX_INPUT,
        });
    }
    parse_object(object)
}

/// Parses the payload slot of a signed message from its JSON text. The length is checked
/// before anything is parsed, and duplicate member names are refused at the top level.
pub fn parse_str(text: &str) -> Result<Jws, JwsError> {
    if text.len() > MAX_INPUT {
        return Err(JwsError::TooLarge {
            what: "the signed payload",
            limit: MAX_INPUT,
        });
    }
    let object = match serde_json::from_str::<UniqueObject>(text) {
        Ok(UniqueObject(object)) => object,
        Err(_) if !text.trim_start().starts_with('{') => return Err(JwsError::NotFlattened),
        Err(error) => return Err(duplicate_or(error, "the signed payload is not JSON")),
    };
    parse_object(&object)
}

fn parse_object(object: &Map<String, Value>) -> Result<Jws, JwsError> {
    if object.contains_key("signatures") {
        return Err(JwsError::GeneralSerialization);
    }
    let protected_b64 = string_member(object, "protected")?;
    let payload_b64 = string_member(object, "payload")?;
    let signature_b64 = string_member(object, "signature")?;

    // Bound before decoding; base64 inflates by 4/3.
    if protected_b64.len() > MAX_HEADER.div_ceil(3) * 4 {
        return Err(JwsError::TooLarge {
            what: "the protected header",
            limit: MAX_HEADER,
        });
    }
    if signature_b64.len() > MAX_SIGNATURE.div_ceil(3) * 4 {
        return Err(JwsError::TooLarge {
            what: "the signature",
            limit: MAX_SIGNATURE,
        });
    }

    let header_bytes = decode_b64url(protected_b64, "the protected header")?;
    let payload_bytes = decode_b64url(payload_b64, "the payload")?;
    let signature = decode_b64url(signature_b64, "the signature")?;

    let protected = match serde_json::from_slice::<UniqueObject>(&header_bytes) {
        Ok(UniqueObject(map)) => map,
        Err(error) => {
            return Err(duplicate_or(
                error,
                "the protected header is not a JSON object",
            ));
        }
    };
    if protected.len() > MAX_HEADER_MEMBERS {
        return Err(JwsError::Malformed(
            "the protected header has too many members",
        ));
    }

    let unprotected = match object.get("header") {
        None => None,
        Some(Value::Object(map)) => Some(check_unprotected(map, &protected)?),
        Some(_) => return Err(JwsError::Malformed("\"header\" is not an object")),
    };

    let algorithm = match protected.get("alg") {
        None => return Err(JwsError::MissingAlgorithm),
        Some(Value::String(name)) => JwsAlgorithm::from_name(name)
            .ok_or_else(|| JwsError::UnsupportedAlgorithm(clip(name)))?,
        Some(_) => return Err(JwsError::Malformed("\"alg\" is not a string")),
    };
    if let Some(crit) = protected.get("crit") {
        return Err(JwsError::CriticalHeader(match crit {
            Value::Array(names) => names
                .first()
                .and_then(Value::as_str)
                .map_or_else(|| clip(&crit.to_string()), clip),
            other => clip(&other.to_string()),
        }));
    }
    match protected.get("b64") {
        None | Some(Value::Bool(true)) => {}
        Some(_) => return Err(JwsError::UnencodedPayload),
    }

    let key_id = optional_string(&protected, "kid")?;
    let x5t_s256 = optional_string(&protected, "x5t#S256")?;
    if let Some(thumbprint) = &x5t_s256 {
        match URL_SAFE_NO_PAD.decode(thumbprint) {
            Ok(digest) if digest.len() == 32 => {}
            _ => {
                return Err(JwsError::Malformed(
                    "\"x5t#S256\" is not an unpadded base64url SHA-256",
                ));
            }
        }
    }
    let x5c = match protected.get("x5c") {
        None => Vec::new(),
        Some(value) => decode_x5c(value)?,
    };
    let ocpp_action = optional_string(&protected, OCPP_ACTION)?;
    let ocpp_message_type_id = message_type_id(&protected)?;

    let payload: Value = serde_json::from_slice(&payload_bytes)
        .map_err(|_| JwsError::Malformed("the inner payload is not JSON"))?;
    if !payload.is_object() {
        return Err(JwsError::Malformed(
            "the inner payload is not a JSON object",
        ));
    }

    Ok(Jws {
        algorithm,
        protected,
        unprotected,
        key_id,
        x5t_s256,
        x5c,
        ocpp_action,
        ocpp_message_type_id,
        signing_input: format!("{protected_b64}.{payload_b64}"),
        payload_bytes,
        payload,
        signature,
    })
}

impl Jws {
    /// The `alg` of the protected header.
    pub fn algorithm(&self) -> JwsAlgorithm {
        self.algorithm
    }

    /// `kid` of the protected header, if any.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// `x5t#S256` of the protected header, if any: compare with [`certificate_thumbprint`].
    pub fn x5t_s256(&self) -> Option<&str> {
        self.x5t_s256.as_deref()
    }

    /// The DER certificates of the protected `x5c` header, leaf first; empty when absent.
    /// They identify a key, they do not make it trusted: chain validation is the caller's.
    pub fn x5c(&self) -> &[Vec<u8>] {
        &self.x5c
    }

    /// `OCPPAction` of the protected header: the action without `-Signed`.
    pub fn ocpp_action(&self) -> Option<&str> {
        self.ocpp_action.as_deref()
    }

    /// `OCPPMessageTypedId` (or `OCPPMessageTypeId`) of the protected header.
    pub fn ocpp_message_type_id(&self) -> Option<u8> {
        self.ocpp_message_type_id
    }

    /// The whole protected header, as signed.
    pub fn protected_header(&self) -> &Map<String, Value> {
        &self.protected
    }

    /// The unprotected `header` member, if any. Nothing in it is covered by the signature.
    pub fn unprotected_header(&self) -> Option<&Map<String, Value>> {
        self.unprotected.as_ref()
    }

    /// What the signature covers: `BASE64URL(header) '.' BASE64URL(payload)`, exactly as
    /// received (RFC 7515 §5.2).
    pub fn signing_input(&self) -> &[u8] {
        self.signing_input.as_bytes()
    }

    /// The exact bytes of the inner payload, for a forwarder that must not re-serialize.
    pub fn payload_bytes(&self) -> &[u8] {
        &self.payload_bytes
    }

    /// The inner payload: the normal message's payload (§7.2).
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    /// The decoded signature.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// Checks that this JWS belongs to the frame that carried it: `OCPPAction` must be
    /// `action` (without `-Signed`; for a `CALLRESULT`, the request's action) and the message
    /// type id must be `message_type_id`. Both fields are required (§7.1 SHALL).
    pub fn check_ocpp_binding(&self, action: &str, message_type_id: u8) -> Result<(), JwsError> {
        let found_action = self
            .ocpp_action
            .as_deref()
            .ok_or(JwsError::MissingOcppField(OCPP_ACTION))?;
        if found_action != action {
            return Err(JwsError::OcppMismatch {
                field: OCPP_ACTION,
                expected: clip(action),
                found: clip(found_action),
            });
        }
        let found_type = self
            .ocpp_message_type_id
            .ok_or(JwsError::MissingOcppField(OCPP_MESSAGE_TYPE_ID))?;
        if found_type != message_type_id {
            return Err(JwsError::OcppMismatch {
                field: OCPP_MESSAGE_TYPE_ID,
                expected: message_type_id.to_string(),
                found: found_type.to_string(),
            });
        }
        Ok(())
    }

    /// Verifies the signature with `key`. The key type must match `alg`: an RSA key never
    /// checks an ES256 signature, nor the reverse.
    pub fn verify(&self, key: &JwsKey) -> Result<(), JwsError> {
        let input = self.signing_input.as_bytes();
        match (self.algorithm, key) {
            (JwsAlgorithm::Es256, JwsKey::P256(key)) => {
                if self.signature.len() != ES256_SIGNATURE_LEN {
                    return Err(JwsError::SignatureLength {
                        algorithm: self.algorithm,
                        expected: ES256_SIGNATURE_LEN,
                        found: self.signature.len(),
                    });
                }
                let signature = p256::ecdsa::Signature::from_slice(&self.signature)
                    .map_err(|_| JwsError::InvalidSignature)?;
                key.verify(input, &signature)
                    .map_err(|_| JwsError::InvalidSignature)
            }
            (JwsAlgorithm::Rs256 | JwsAlgorithm::Rs384, JwsKey::Rsa(key)) => {
                let parameters = if self.algorithm == JwsAlgorithm::Rs256 {
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256
                } else {
                    &ring::signature::RSA_PKCS1_2048_8192_SHA384
                };
                ring::signature::RsaPublicKeyComponents {
                    n: key.n.as_slice(),
                    e: key.e.as_slice(),
                }
                .verify(parameters, input, &self.signature)
                .map_err(|_| JwsError::InvalidSignature)
            }
            (algorithm, key) => Err(JwsError::KeyMismatch {
                algorithm,
                key: key.kind(),
            }),
        }
    }
}

/// A public key that can check a JWS of §7.3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwsKey {
    /// For ES256.
    P256(p256::ecdsa::VerifyingKey),
    /// For RS256 and RS384.
    Rsa(RsaPublicKey),
}

/// An RSA public key of 2048 to 8192 bits, as big-endian modulus and exponent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

impl RsaPublicKey {
    /// The modulus, big-endian, without leading zeros.
    pub fn modulus(&self) -> &[u8] {
        &self.n
    }

    /// The public exponent, big-endian, without leading zeros.
    pub fn exponent(&self) -> &[u8] {
        &self.e
    }
}

impl JwsKey {
    /// From a DER `SubjectPublicKeyInfo`: `rsaEncryption`, or `id-ecPublicKey` on P-256.
    pub fn from_spki_der(der: &[u8]) -> Result<JwsKey, JwsError> {
        let info = SubjectPublicKeyInfoRef::try_from(der)
            .map_err(|_| JwsError::BadKey("malformed SubjectPublicKeyInfo"))?;
        let bits = info
            .subject_public_key
            .as_bytes()
            .ok_or(JwsError::BadKey("the key bit string is not whole bytes"))?;
        if info.algorithm.oid == OID_RSA_ENCRYPTION {
            JwsKey::rsa_from_pkcs1_der(bits)
        } else if info.algorithm.oid == OID_EC_PUBLIC_KEY {
            match info.algorithm.parameters_oid() {
                Ok(curve) if curve == OID_PRIME256V1 => JwsKey::p256_from_sec1(bits),
                _ => Err(JwsError::UnsupportedKey),
            }
        } else {
            Err(JwsError::UnsupportedKey)
        }
    }

    /// From a DER X.509 certificate: its subject public key. Nothing about the certificate
    /// (validity, chain, usage) is checked here.
    pub fn from_certificate_der(der: &[u8]) -> Result<JwsKey, JwsError> {
        JwsKey::from_spki_der(certificate_spki(der)?)
    }

    /// From a SEC1 P-256 point (uncompressed `04 x y` or compressed).
    pub fn p256_from_sec1(point: &[u8]) -> Result<JwsKey, JwsError> {
        p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
            .map(JwsKey::P256)
            .map_err(|_| JwsError::BadKey("not a P-256 point"))
    }

    /// From a DER PKCS#1 `RSAPublicKey` (the bit string inside an RSA SPKI).
    pub fn rsa_from_pkcs1_der(der: &[u8]) -> Result<JwsKey, JwsError> {
        let DerElement {
            tag,
            contents: body,
            rest,
            ..
        } = der_element(der)?;
        if tag != DER_SEQUENCE || !rest.is_empty() {
            return Err(JwsError::BadKey("RSAPublicKey is not one SEQUENCE"));
        }
        let DerElement {
            tag,
            contents: n,
            rest,
            ..
        } = der_element(body)?;
        if tag != DER_INTEGER {
            return Err(JwsError::BadKey("RSA modulus is not an INTEGER"));
        }
        let DerElement {
            tag,
            contents: e,
            rest,
            ..
        } = der_element(rest)?;
        if tag != DER_INTEGER || !rest.is_empty() {
            return Err(JwsError::BadKey("RSA exponent is not the last INTEGER"));
        }
        if n.first().is_some_and(|b| b & 0x80 != 0) || e.first().is_some_and(|b| b & 0x80 != 0) {
            return Err(JwsError::BadKey("negative RSA integer"));
        }
        JwsKey::rsa_from_components(n, e)
    }

    /// From the big-endian modulus and exponent (as in a JWK's `n` and `e`).
    pub fn rsa_from_components(n: &[u8], e: &[u8]) -> Result<JwsKey, JwsError> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        let bits = n.first().map_or(0, |first| {
            (n.len() - 1) * 8 + (8 - first.leading_zeros() as usize)
        });
        if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
            return Err(JwsError::BadKey("RSA modulus must be 2048 to 8192 bits"));
        }
        if e.is_empty() || e.len() > 4 || e.last().is_some_and(|b| b & 1 == 0) {
            return Err(JwsError::BadKey(
                "RSA exponent must be odd and at most 32 bits",
            ));
        }
        Ok(JwsKey::Rsa(RsaPublicKey {
            n: n.to_vec(),
            e: e.to_vec(),
        }))
    }

    fn kind(&self) -> &'static str {
        match self {
            JwsKey::P256(_) => "P-256",
            JwsKey::Rsa(_) => "RSA",
        }
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// The `subjectPublicKeyInfo` element (whole TLV) of a DER certificate.
fn certificate_spki(der: &[u8]) -> Result<&[u8], JwsError> {
    const BAD: JwsError = JwsError::BadKey("malformed X.509 certificate");
    let DerElement {
        tag,
        contents: certificate,
        rest,
        ..
    } = der_element(der)?;
    if tag != DER_SEQUENCE || !rest.is_empty() {
        return Err(BAD);
    }
    let DerElement {
        tag, contents: tbs, ..
    } = der_element(certificate)?;
    if tag != DER_SEQUENCE {
        return Err(BAD);
    }
    let mut cursor = tbs;
    let DerElement {
        tag,
        rest: after_version,
        ..
    } = der_element(cursor)?;
    if tag == DER_CONTEXT_0 {
        cursor = after_version;
    }
    // serialNumber, signature, issuer, validity, subject.
    for expected in [
        DER_INTEGER,
        DER_SEQUENCE,
        DER_SEQUENCE,
        DER_SEQUENCE,
        DER_SEQUENCE,
    ] {
        let DerElement { tag, rest, .. } = der_element(cursor)?;
        if tag != expected {
            return Err(BAD);
        }
        cursor = rest;
    }
    let DerElement {
        tag, whole: spki, ..
    } = der_element(cursor)?;
    if tag != DER_SEQUENCE {
        return Err(BAD);
    }
    Ok(spki)
}

/// One DER element split off the front of a byte string.
struct DerElement<'a> {
    tag: u8,
    contents: &'a [u8],
    /// Tag, length and contents.
    whole: &'a [u8],
    /// What follows the element.
    rest: &'a [u8],
}

/// Splits one DER element off `input`. Only single-byte tags and definite, minimal lengths
/// below 16 MiB: all that keys and certificates use.
fn der_element(input: &[u8]) -> Result<DerElement<'_>, JwsError> {
    const BAD: JwsError = JwsError::BadKey("malformed DER");
    let (&tag, after_tag) = input.split_first().ok_or(BAD)?;
    if tag & 0x1f == 0x1f {
        return Err(BAD);
    }
    let (&first, mut rest) = after_tag.split_first().ok_or(BAD)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 3 {
            return Err(BAD);
        }
        let (bytes, after) = rest.split_at_checked(count).ok_or(BAD)?;
        rest = after;
        if bytes.first() == Some(&0) {
            return Err(BAD);
        }
        let len = bytes
            .iter()
            .fold(0usize, |len, &byte| (len << 8) | usize::from(byte));
        if len < 0x80 {
            return Err(BAD);
        }
        len
    };
    let (contents, rest) = rest.split_at_checked(len).ok_or(BAD)?;
    let whole = &input[..input.len() - rest.len()];
    Ok(DerElement {
        tag,
        contents,
        whole,
        rest,
    })
}

fn string_member<'a>(
    object: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, JwsError> {
    match object.get(name) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(JwsError::Malformed(match name {
            "protected" => "\"protected\" is not a string",
            "payload" => "\"payload\" is not a string",
            _ => "\"signature\" is not a string",
        })),
        None => Err(JwsError::Malformed(match name {
            "protected" => "no \"protected\" member",
            "payload" => "no \"payload\" member",
            _ => "no \"signature\" member",
        })),
    }
}

fn optional_string(
    map: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, JwsError> {
    match map.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(JwsError::Malformed(match name {
            "kid" => "\"kid\" is not a string",
            "x5t#S256" => "\"x5t#S256\" is not a string",
            _ => "\"OCPPAction\" is not a string",
        })),
    }
}

fn message_type_id(map: &Map<String, Value>) -> Result<Option<u8>, JwsError> {
    let read = |name: &str| -> Result<Option<u8>, JwsError> {
        match map.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .and_then(|id| u8::try_from(id).ok())
                .map(Some)
                .ok_or(JwsError::Malformed(
                    "the OCPP message type id is not a small integer",
                )),
        }
    };
    match (read(OCPP_MESSAGE_TYPE_ID)?, read(OCPP_MESSAGE_TYPE_ID_ALT)?) {
        (Some(a), Some(b)) if a != b => Err(JwsError::Malformed(
            "OCPPMessageTypedId and OCPPMessageTypeId disagree",
        )),
        (a, b) => Ok(a.or(b)),
    }
}

fn decode_x5c(value: &Value) -> Result<Vec<Vec<u8>>, JwsError> {
    const BAD: JwsError = JwsError::Malformed("\"x5c\" is not an array of base64 DER certificates");
    let Value::Array(items) = value else {
        return Err(BAD);
    };
    if items.is_empty() || items.len() > MAX_X5C {
        return Err(BAD);
    }
    items
        .iter()
        .map(|item| {
            item.as_str()
                .and_then(|text| STANDARD.decode(text).ok())
                .filter(|der| !der.is_empty())
                .ok_or(BAD)
        })
        .collect()
}

fn check_unprotected(
    map: &Map<String, Value>,
    protected: &Map<String, Value>,
) -> Result<Map<String, Value>, JwsError> {
    if map.len() > MAX_HEADER_MEMBERS || !serializes_within(map, MAX_HEADER) {
        return Err(JwsError::TooLarge {
            what: "the unprotected header",
            limit: MAX_HEADER,
        });
    }
    if map.contains_key("crit") {
        return Err(JwsError::Malformed(
            "\"crit\" must be in the protected header",
        ));
    }
    if let Some(name) = map.keys().find(|name| protected.contains_key(*name)) {
        return Err(JwsError::HeaderOverlap(clip(name)));
    }
    Ok(map.clone())
}

fn decode_b64url(text: &str, what: &'static str) -> Result<Vec<u8>, JwsError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| JwsError::Base64(what))
}

/// Whether `value` serializes to at most `limit` bytes, without building the text: the
/// writer refuses the first byte over the limit, which stops serialization there.
fn serializes_within<T: serde::Serialize + ?Sized>(value: &T, limit: usize) -> bool {
    struct Budget(usize);
    impl io::Write for Budget {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 = self
                .0
                .checked_sub(buf.len())
                .ok_or_else(|| io::Error::other("over budget"))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(Budget(limit), value).is_ok()
}

fn clip(text: &str) -> String {
    text.chars().take(64).collect()
}

const DUPLICATE_PREFIX: &str = "duplicate member ";

fn duplicate_or(error: serde_json::Error, otherwise: &'static str) -> JwsError {
    let message = error.to_string();
    match message
        .strip_prefix(DUPLICATE_PREFIX)
        .and_then(|rest| rest.split(" at line ").next())
    {
        Some(name) => JwsError::DuplicateMember(clip(name.trim_matches('"'))),
        None => JwsError::Malformed(otherwise),
    }
}

/// A JSON object that refuses duplicate member names (serde_json's `Map` keeps the last).
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = UniqueObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
                let mut map = Map::new();
                while let Some(name) = access.next_key::<String>()? {
                    if map.contains_key(&name) {
                        return Err(de::Error::custom(format_args!(
                            "{DUPLICATE_PREFIX}\"{}\"",
                            clip(&name)
                        )));
                    }
                    let value: Value = access.next_value()?;
                    map.insert(name, value);
                }
                Ok(UniqueObject(map))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn b64d(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(text)
            .expect("test vector is base64url")
    }

    fn std64d(text: &str) -> Vec<u8> {
        STANDARD.decode(text).expect("test vector is base64")
    }

    /// The flattened form of a compact JWS (RFC 7515 §7.2.2 holds the same three parts).
    fn flatten(compact: &str) -> Value {
        let parts: Vec<&str> = compact.split('.').collect();
        assert_eq!(parts.len(), 3);
        json!({"protected": parts[0], "payload": parts[1], "signature": parts[2]})
    }

    fn signing_key(seed: u8) -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("fixed scalar is valid")
    }

    /// Signs `payload` the way §7.1 describes, ES256 with a fixed key.
    fn es256_sign(key: &p256::ecdsa::SigningKey, header: &Value, payload: &Value) -> Value {
        let protected = b64(header.to_string().as_bytes());
        let payload = b64(payload.to_string().as_bytes());
        let signature: p256::ecdsa::Signature =
            key.sign(format!("{protected}.{payload}").as_bytes());
        json!({"protected": protected, "payload": payload, "signature": b64(&signature.to_bytes())})
    }

    fn boot_header() -> Value {
        json!({"alg": "ES256", "OCPPAction": "BootNotification", "OCPPMessageTypedId": 2,
               "x5t#S256": b64(&[7u8; 32]), "kid": "station-7"})
    }

    fn boot_payload() -> Value {
        json!({"reason": "PowerUp", "chargingStation": {"model": "M1", "vendorName": "V"}})
    }

    fn p256_public(seed: u8) -> JwsKey {
        JwsKey::P256(*signing_key(seed).verifying_key())
    }

    fn with_member(jws: &Value, name: &str, value: Value) -> Value {
        let mut jws = jws.clone();
        jws[name] = value;
        jws
    }

    // RFC 7515 Appendix A: the payload shared by A.2 and A.3.
    const RFC_PAYLOAD_B64: &str = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
    // RFC 7515 A.2.1: the RSA key, as its JWK members.
    const A2_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    const A2_E: &str = "AQAB";
    const A2_D: &str = "Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ";
    const A2_P: &str = "4BzEEOtIpmVdVEZNCqS7baC4crd0pqnRH_5IB3jw3bcxGn6QLvnEtfdUdiYrqBdss1l58BQ3KhooKeQTa9AB0Hw_Py5PJdTJNPY8cQn7ouZ2KKDcmnPGBY5t7yLc1QlQ5xHdwW1VhvKn-nXqhJTBgIPgtldC-KDV5z-y2XDwGUc";
    const A2_Q: &str = "uQPEfgmVtjL0Uyyx88GZFF1fOunH3-7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYsp1ZSe7zFYHj7C6ul7TjeLQeZD_YwD66t62wDmpe_HlB-TnBA-njbglfIsRLtXlnDzQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdc";
    const A2_DP: &str = "BwKfV3Akq5_MFZDFZCnW-wzl-CCo83WoZvnLQwCTeDv8uzluRSnm71I3QCLdhrqE2e9YkxvuxdBfpT_PI7Yz-FOKnu1R6HsJeDCjn12Sk3vmAktV2zb34MCdy7cpdTh_YVr7tss2u6vneTwrA86rZtu5Mbr1C1XsmvkxHQAdYo0";
    const A2_DQ: &str = "h_96-mK1R_7glhsum81dZxjTnYynPbZpHziZjeeHcXYsXaaMwkOlODsWa7I9xXDoRwbKgB719rrmI2oKr6N3Do9U0ajaHF-NKJnwgjMd2w9cjz3_-kyNlxAr2v4IKhGNpmM5iIgOS1VZnOZ68m6_pbLBSp3nssTdlqvd0tIiTHU";
    const A2_QI: &str = "IYd7DHOhrWvxkwPQsRM2tOgrjbcrfvtQJipd-DlcxyVuuM9sQLdgjVk2oy26F0EmpScGLq2MowX7fhd_QJQ3ydy5cY7YIBi87w93IKLEdfnbJtoOPLUW0ITrJReOgo1cq9SbsxYawBgfp_gh6A5603k2-ZQwVK0JKSHuLFkuQ3U";
    // RFC 7515 A.2.1: the complete JWS Compact Serialization.
    const A2_JWS: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
    // RFC 7515 A.3.1: the P-256 key and the complete JWS (ECDSA is randomized, so verify only).
    const A3_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const A3_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
    const A3_JWS: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

    fn a2_key() -> JwsKey {
        JwsKey::rsa_from_components(&b64d(A2_N), &b64d(A2_E)).expect("RFC key is valid")
    }

    fn a3_key() -> JwsKey {
        let mut point = vec![0x04];
        point.extend(b64d(A3_X));
        point.extend(b64d(A3_Y));
        JwsKey::p256_from_sec1(&point).expect("RFC point is on the curve")
    }

    // Made once with OpenSSL 3.0 (`openssl req -x509`, `openssl dgst -sign`): an RSA-2048
    // certificate, its SPKI, and RS384 / RS256 signatures over OCPP headers; a P-256
    // certificate and an ES256 signature (DER converted to r‖s). Independent of this code.
    const RSA_CERT: &str = "MIIDDzCCAfegAwIBAgIUBZpgnjNhG90Fg3OgtJ9aTIDUTv8wDQYJKoZIhvcNAQELBQAwFzEVMBMGA1UEAwwMandzLXRlc3QtcnNhMB4XDTI2MTIwNzExMzgzN1oXDTM2MTIwNDExMzgzN1owFzEVMBMGA1UEAwwMandzLXRlc3QtcnNhMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAlJ0O7148pOkHvbTJrfoaeJeILvu57yfztmm5jBjOwMtyrlj8tR6KghWNBUahcz0FhepRj78NEE0tquKwaaPCEWIw+MaWpR5jG55K12EDe2H15131VZy5tTgHiiBj6Aw+e5ZSaEPifCZjTXnwsoA2diXxRQVTySJYbUsEaNjONyzxG7OCZ/vXnAofHMZrhmROAG3xvMdBeM7Ko6DulgD4PqEfCmt7xHSlCKQKhP4vZx5gHJNYrMQN0ToI9fjup3mfnWrSOj05rSv4XN4HQGib0Rp22P11HGrTkWAp+Ybp7LTfHnOxaS9QWVms3Ift5g9m1FehdaUDDgBpjNSLgFd2WQIDAQABo1MwUTAdBgNVHQ4EFgQU/bMSOjhAb2NvGeux8i7fX0NzUPAwHwYDVR0jBBgwFoAU/bMSOjhAb2NvGeux8i7fX0NzUPAwDwYDVR0TAQH/BAUwAwEB/zANBgkqhkiG9w0BAQsFAAOCAQEAcS0oKsU8dwRpeAdP7sFmMmOBuRj2DoOIlJbMAfGoC6wTQYRI0wLjpK0q4Jqj99sCfCzJI4Qq/u8EITg1hL/thZhVlqlFcbX6plK7iDaP9/DrgufWB66DnT8y9ZpChngdoSY1Huab/a/Wxw09G3ytDjlaq+5jxoPlTlnh3uC3my5TAu9VONguJyUsHVS7cbQJeTz5s5AlXSiMaiKiXjVR1IBCHpABjYMcAp81cxJWTJMewNs951NpHEGgi/j0aXdJ4wnydV4wxJp/t6RdDnsaHbyIFgI+DbWiTK+XTEILf+yNY05cbWGnqOTMxOIVBTOyVRSlLlh7C3eF6BkdPYsGdg==";
    const RSA_SPKI: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAlJ0O7148pOkHvbTJrfoaeJeILvu57yfztmm5jBjOwMtyrlj8tR6KghWNBUahcz0FhepRj78NEE0tquKwaaPCEWIw+MaWpR5jG55K12EDe2H15131VZy5tTgHiiBj6Aw+e5ZSaEPifCZjTXnwsoA2diXxRQVTySJYbUsEaNjONyzxG7OCZ/vXnAofHMZrhmROAG3xvMdBeM7Ko6DulgD4PqEfCmt7xHSlCKQKhP4vZx5gHJNYrMQN0ToI9fjup3mfnWrSOj05rSv4XN4HQGib0Rp22P11HGrTkWAp+Ybp7LTfHnOxaS9QWVms3Ift5g9m1FehdaUDDgBpjNSLgFd2WQIDAQAB";
    /// `openssl x509 -fingerprint -sha256` of RSA_CERT, as base64url.
    const RSA_CERT_X5T: &str = "XZQuK1-6ft5rn4QlINESvKxSwgcC8cP3veTEyWw3Tg0";
    const RS384_PROTECTED: &str = "eyJhbGciOiJSUzM4NCIsIk9DUFBBY3Rpb24iOiJIZWFydGJlYXQiLCJPQ1BQTWVzc2FnZVR5cGVkSWQiOjIsIng1dCNTMjU2IjoiWFpRdUsxLTZmdDVybjRRbElORVN2S3hTd2djQzhjUDN2ZVRFeVd3M1RnMCJ9";
    const RS384_PAYLOAD: &str = "e30";
    const RS384_SIGNATURE: &str = "ArgCRl5QZNI4-aJm43x1Jb5y3z2xR_bjdWd4b9UG0ssuVO8aEW6_tq6VsJAqA3LgZ80p0vizxUWVb50sVZFXJnHeT--eGRExTNbo3sVuGemrliL1qLeDXhGsWVJlm0P1oawGtd_knxIcV6Ia0yOD7Z1DMtOy0oL9xCmYdx_HgI0ZpFnQy47gNsKsfBZ2VH8S6G245CQuuayMxVcC1YPYXwHZnfdWHI4brtPrNhZzl2GItE4anMI8IusccxCGJUhoVl32qm-oMzLw1tLki9X4gw6BK4F5s33GHRXPMI31BpwQ2wKjXSeX8LBoCKQ1bNwGAR4n5btHSqKxRHeOpqoZcQ";
    const RS256_PROTECTED: &str = "eyJhbGciOiJSUzI1NiIsIk9DUFBBY3Rpb24iOiJCb290Tm90aWZpY2F0aW9uIiwiT0NQUE1lc3NhZ2VUeXBlZElkIjoyfQ";
    const RS256_PAYLOAD: &str = "eyJyZWFzb24iOiJQb3dlclVwIiwiY2hhcmdpbmdTdGF0aW9uIjp7Im1vZGVsIjoiTSIsInZlbmRvck5hbWUiOiJWIn19";
    const RS256_SIGNATURE: &str = "TdJ_EdAj2B_anR7Jci3vEwgMwuxDcIu3PYPZiwYH-M-CrdqR7MdaCh-SW_DnXwiuAOMv99wryZRXb6VDosfXZxqQ0CJQmgD0LPbm27TBNSv5cYEfo0YGUHVkRhfr-NnUxBk8Q9hz0oceP62L9umSoATZyxjk1X_eF0MH3DfNdeYpfGaaE8AV4HzAhs1Lkq5Bicl6RFChfzLoR7I7VtvoEwMKrOcMl2Gtx0zvgHFUeoZCqPhvavewVp-vcu6yYhfmfrFAz0S5H7mcc-BgOKWFCSxO3NPFtfQiShSmkMEbiflZOFG1pvkjuom1zXdTb8i_3lDoAWVcqDdkxZXBZ9N1vA";
    const EC_CERT: &str = "MIIBhjCCASugAwIBAgIUFhZdsUKJlg9zX3E74ZsUPU+SJrswCgYIKoZIzj0EAwIwGDEWMBQGA1UEAwwNandzLXRlc3QtcDI1NjAeFw0yNjEyMDcxMTM4MzdaFw0zNjEyMDQxMTM4MzdaMBgxFjAUBgNVBAMMDWp3cy10ZXN0LXAyNTYwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAT1m9UDuarPu8VIQasbSyTrVxYDrl30MLkIjFmty59hpVlP/K6GtA91c0dsMeOoG6toVbVVzqx1pIRPsQ6RAKoFo1MwUTAdBgNVHQ4EFgQUXKYjfqiTzx9w86DvAVNA8zX9FkkwHwYDVR0jBBgwFoAUXKYjfqiTzx9w86DvAVNA8zX9FkkwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEA4s/nJ23V43Ggoenn+Vhglh0oRtgUfkDSWjFWxkiDA4UCIQDsT4ucwsUx2//iW+GfmE9YdFDjCKzkVA/WiCF03zWgeA==";
    const EC_SPKI: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9ZvVA7mqz7vFSEGrG0sk61cWA65d9DC5CIxZrcufYaVZT/yuhrQPdXNHbDHjqBuraFW1Vc6sdaSET7EOkQCqBQ==";
    const ES256_PROTECTED: &str = "eyJhbGciOiJFUzI1NiIsIk9DUFBBY3Rpb24iOiJTdGF0dXNOb3RpZmljYXRpb24iLCJPQ1BQTWVzc2FnZVR5cGVkSWQiOjIsIng1dCNTMjU2IjoiTTduRTh3VjViSzVKczZuNko0SmJkQTdxOURYTElOd3lXY0pBQlVCcjNCSSJ9";
    const ES256_PAYLOAD: &str = "eyJ0aW1lc3RhbXAiOiIyMDI1LTAxLTAxVDAwOjAwOjAwWiIsImNvbm5lY3RvclN0YXR1cyI6IkF2YWlsYWJsZSIsImV2c2VJZCI6MSwiY29ubmVjdG9ySWQiOjF9";
    const ES256_SIGNATURE: &str =
        "m4bR7VZzJnZcQg4SdZyNE8AFx-1Ayh_07HVuJvTxPYKDEH8b6L3FTB2xzDBIy00Nj6xJyNSJsj3VpFI1pQEw8Q";

    fn flattened(protected: &str, payload: &str, signature: &str) -> Value {
        json!({"protected": protected, "payload": payload, "signature": signature})
    }

    #[test]
    fn jws_signed_action_names() {
        assert_eq!(
            is_signed_action("BootNotification-Signed"),
            Some("BootNotification")
        );
        assert_eq!(is_signed_action("Foo-Signed"), Some("Foo"));
        assert_eq!(is_signed_action("BootNotification"), None);
        assert_eq!(is_signed_action("-Signed"), None);
        assert_eq!(is_signed_action(""), None);
        assert_eq!(
            is_signed_action("Foo-signed"),
            None,
            "the suffix is case-sensitive"
        );
        assert_eq!(is_signed_action("Foo-Signed "), None);
    }

    #[test]
    fn jws_es256_round_trip_with_fixed_key() {
        let signed = es256_sign(&signing_key(1), &boot_header(), &boot_payload());
        assert!(is_flattened_jws(&signed));
        let jws = parse(&signed).unwrap();
        assert_eq!(jws.algorithm(), JwsAlgorithm::Es256);
        assert_eq!(jws.key_id(), Some("station-7"));
        assert_eq!(jws.x5t_s256(), Some(b64(&[7u8; 32]).as_str()));
        assert!(jws.x5c().is_empty());
        assert_eq!(jws.ocpp_action(), Some("BootNotification"));
        assert_eq!(jws.ocpp_message_type_id(), Some(2));
        assert_eq!(jws.payload(), &boot_payload());
        assert_eq!(jws.payload_bytes(), boot_payload().to_string().as_bytes());
        assert_eq!(jws.signature().len(), 64);
        assert_eq!(jws.protected_header()["alg"], "ES256");
        assert!(jws.unprotected_header().is_none());
        let expected_input = format!(
            "{}.{}",
            signed["protected"].as_str().unwrap(),
            signed["payload"].as_str().unwrap()
        );
        assert_eq!(jws.signing_input(), expected_input.as_bytes());
        jws.verify(&p256_public(1)).unwrap();
        jws.check_ocpp_binding("BootNotification", 2).unwrap();

        // The same through the text entry point.
        let jws = parse_str(&signed.to_string()).unwrap();
        jws.verify(&p256_public(1)).unwrap();
    }

    #[test]
    fn jws_tampered_payload_is_rejected() {
        let signed = es256_sign(&signing_key(1), &boot_header(), &boot_payload());
        let other = b64(json!({"reason": "FirmwareUpdate"}).to_string().as_bytes());
        let jws = parse(&with_member(&signed, "payload", json!(other))).unwrap();
        assert_eq!(jws.verify(&p256_public(1)), Err(JwsError::InvalidSignature));
    }

    #[test]
    fn jws_tampered_header_is_rejected() {
        let signed = es256_sign(&signing_key(1), &boot_header(), &boot_payload());
        let mut header = boot_header();
        header["OCPPAction"] = json!("RequestStartTransaction");
        let forged = with_member(
            &signed,
            "protected",
            json!(b64(header.to_string().as_bytes())),
        );
        let jws = parse(&forged).unwrap();
        assert_eq!(jws.verify(&p256_public(1)), Err(JwsError::InvalidSignature));
    }

    #[test]
    fn jws_tampered_signature_is_rejected() {
        let signed = es256_sign(&signing_key(1), &boot_header(), &boot_payload());
        let mut signature = b64d(signed["signature"].as_str().unwrap());
        for index in [0, 31, 32, 63] {
            signature[index] ^= 0x01;
            let forged = with_member(&signed, "signature", json!(b64(&signature)));
            let jws = parse(&forged).unwrap();
            assert_eq!(jws.verify(&p256_public(1)), Err(JwsError::InvalidSignature));
            signature[index] ^= 0x01;
        }
        let short = with_member(&signed, "signature", json!(b64(&signature[..63])));
        assert!(matches!(
            parse(&short).unwrap().verify(&p256_public(1)),
            Err(JwsError::SignatureLength {
                expected: 64,
                found: 63,
                ..
            })
        ));
        let zero = with_member(&signed, "signature", json!(b64(&[0u8; 64])));
        assert_eq!(
            parse(&zero).unwrap().verify(&p256_public(1)),
            Err(JwsError::InvalidSignature)
        );
    }

    #[test]
    fn jws_wrong_key_is_rejected() {
        let jws = parse(&es256_sign(
            &signing_key(1),
            &boot_header(),
            &boot_payload(),
        ))
        .unwrap();
        assert_eq!(jws.verify(&p256_public(2)), Err(JwsError::InvalidSignature));
        assert_eq!(
            jws.verify(&a2_key()),
            Err(JwsError::KeyMismatch {
                algorithm: JwsAlgorithm::Es256,
                key: "RSA"
            })
        );
        let rsa = parse(&flatten(A2_JWS)).unwrap();
        assert_eq!(
            rsa.verify(&p256_public(1)),
            Err(JwsError::KeyMismatch {
                algorithm: JwsAlgorithm::Rs256,
                key: "P-256"
            })
        );
        let other_rsa = JwsKey::from_spki_der(&std64d(RSA_SPKI)).unwrap();
        assert_eq!(rsa.verify(&other_rsa), Err(JwsError::InvalidSignature));
    }

    #[test]
    fn jws_rfc7515_a2_rs256() {
        let jws = parse(&flatten(A2_JWS)).unwrap();
        assert_eq!(jws.algorithm(), JwsAlgorithm::Rs256);
        assert_eq!(jws.payload()["iss"], "joe");
        assert_eq!(jws.payload()["exp"], 1300819380);
        assert_eq!(jws.payload()["http://example.com/is_root"], true);
        // The payload keeps its CR LF bytes: nothing is re-serialized.
        assert_eq!(jws.payload_bytes(), b64d(RFC_PAYLOAD_B64).as_slice());
        jws.verify(&a2_key()).unwrap();
        // A plain RFC 7515 JWS has no OCPP binding.
        assert_eq!(
            jws.check_ocpp_binding("Heartbeat", 2),
            Err(JwsError::MissingOcppField("OCPPAction"))
        );

        // RS256 is deterministic: the RFC's private key reproduces the exact published JWS,
        // which pins the signing input byte for byte.
        let key_pair = ring::rsa::KeyPair::from_components(&ring::rsa::KeyPairComponents {
            public_key: ring::rsa::PublicKeyComponents {
                n: b64d(A2_N),
                e: b64d(A2_E),
            },
            d: b64d(A2_D),
            p: b64d(A2_P),
            q: b64d(A2_Q),
            dP: b64d(A2_DP),
            dQ: b64d(A2_DQ),
            qInv: b64d(A2_QI),
        })
        .unwrap();
        let mut signature = vec![0u8; key_pair.public().modulus_len()];
        key_pair
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                jws.signing_input(),
                &mut signature,
            )
            .unwrap();
        let compact = format!(
            "{}.{}",
            std::str::from_utf8(jws.signing_input()).unwrap(),
            b64(&signature)
        );
        assert_eq!(compact, A2_JWS);

        // Any change to the payload breaks it.
        let mut tampered = flatten(A2_JWS);
        tampered["payload"] = json!(b64(b"{\"iss\":\"joe\"}"));
        assert_eq!(
            parse(&tampered).unwrap().verify(&a2_key()),
            Err(JwsError::InvalidSignature)
        );
    }

    #[test]
    fn jws_rfc7515_a3_es256() {
        let jws = parse(&flatten(A3_JWS)).unwrap();
        assert_eq!(jws.algorithm(), JwsAlgorithm::Es256);
        assert_eq!(jws.payload_bytes(), b64d(RFC_PAYLOAD_B64).as_slice());
        jws.verify(&a3_key()).unwrap();
        assert_eq!(jws.verify(&p256_public(1)), Err(JwsError::InvalidSignature));

        let mut tampered = flatten(A3_JWS);
        tampered["protected"] = json!(b64(br#"{"alg":"ES256","kid":"x"}"#));
        assert_eq!(
            parse(&tampered).unwrap().verify(&a3_key()),
            Err(JwsError::InvalidSignature)
        );
    }

    #[test]
    fn jws_openssl_rs384_with_certificate_and_spki() {
        let certificate = std64d(RSA_CERT);
        assert_eq!(certificate_thumbprint(&certificate), RSA_CERT_X5T);
        let from_certificate = JwsKey::from_certificate_der(&certificate).unwrap();
        let from_spki = JwsKey::from_spki_der(&std64d(RSA_SPKI)).unwrap();
        assert_eq!(from_certificate, from_spki);
        let JwsKey::Rsa(rsa) = &from_spki else {
            panic!("an RSA SPKI gives an RSA key");
        };
        assert_eq!(rsa.modulus().len(), 256);
        assert_eq!(rsa.exponent(), &[1, 0, 1]);

        let jws = parse(&flattened(RS384_PROTECTED, RS384_PAYLOAD, RS384_SIGNATURE)).unwrap();
        assert_eq!(jws.algorithm(), JwsAlgorithm::Rs384);
        assert_eq!(jws.x5t_s256(), Some(RSA_CERT_X5T));
        assert_eq!(jws.payload(), &json!({}));
        jws.check_ocpp_binding("Heartbeat", 2).unwrap();
        jws.verify(&from_certificate).unwrap();
        jws.verify(&from_spki).unwrap();
        assert_eq!(jws.verify(&a2_key()), Err(JwsError::InvalidSignature));

        // The RS384 signature under an RS256 header (re-labelled algorithm) fails.
        let mut header: Value = serde_json::from_slice(&b64d(RS384_PROTECTED)).unwrap();
        header["alg"] = json!("RS256");
        let relabelled = flattened(
            &b64(header.to_string().as_bytes()),
            RS384_PAYLOAD,
            RS384_SIGNATURE,
        );
        assert_eq!(
            parse(&relabelled).unwrap().verify(&from_spki),
            Err(JwsError::InvalidSignature)
        );
    }

    #[test]
    fn jws_openssl_rs256_boot_notification() {
        let key = JwsKey::from_spki_der(&std64d(RSA_SPKI)).unwrap();
        let jws = parse(&flattened(RS256_PROTECTED, RS256_PAYLOAD, RS256_SIGNATURE)).unwrap();
        assert_eq!(jws.algorithm(), JwsAlgorithm::Rs256);
        assert_eq!(jws.payload()["reason"], "PowerUp");
        jws.check_ocpp_binding("BootNotification", 2).unwrap();
        jws.verify(&key).unwrap();
        let mut signature = b64d(RS256_SIGNATURE);
        signature[100] ^= 0x80;
        let forged = flattened(RS256_PROTECTED, RS256_PAYLOAD, &b64(&signature));
        assert_eq!(
            parse(&forged).unwrap().verify(&key),
            Err(JwsError::InvalidSignature)
        );
    }

    #[test]
    fn jws_openssl_es256_with_certificate() {
        let certificate = std64d(EC_CERT);
        let key = JwsKey::from_certificate_der(&certificate).unwrap();
        assert_eq!(key, JwsKey::from_spki_der(&std64d(EC_SPKI)).unwrap());
        let jws = parse(&flattened(ES256_PROTECTED, ES256_PAYLOAD, ES256_SIGNATURE)).unwrap();
        assert_eq!(
            jws.x5t_s256(),
            Some(certificate_thumbprint(&certificate).as_str())
        );
        jws.check_ocpp_binding("StatusNotification", 2).unwrap();
        jws.verify(&key).unwrap();
        assert_eq!(jws.verify(&a3_key()), Err(JwsError::InvalidSignature));
    }

    #[test]
    fn jws_ocpp_binding_checks() {
        let signed = es256_sign(&signing_key(1), &boot_header(), &boot_payload());
        let jws = parse(&signed).unwrap();
        assert!(matches!(
            jws.check_ocpp_binding("Heartbeat", 2),
            Err(JwsError::OcppMismatch {
                field: "OCPPAction",
                ..
            })
        ));
        assert!(matches!(
            jws.check_ocpp_binding("BootNotification", 3),
            Err(JwsError::OcppMismatch {
                field: "OCPPMessageTypedId",
                ..
            })
        ));

        // A signed CALLRESULT: the request's action, message type 3.
        let reply = es256_sign(
            &signing_key(1),
            &json!({"alg": "ES256", "OCPPAction": "BootNotification", "OCPPMessageTypedId": 3}),
            &json!({"status": "Accepted", "interval": 300, "currentTime": "2025-01-01T00:00:00Z"}),
        );
        assert!(is_flattened_jws(&reply));
        parse(&reply)
            .unwrap()
            .check_ocpp_binding("BootNotification", 3)
            .unwrap();

        // The corrected spelling is read too; two spellings must agree.
        let alt = es256_sign(
            &signing_key(1),
            &json!({"alg": "ES256", "OCPPAction": "Heartbeat", "OCPPMessageTypeId": 2}),
            &json!({}),
        );
        let jws = parse(&alt).unwrap();
        assert_eq!(jws.ocpp_message_type_id(), Some(2));
        jws.check_ocpp_binding("Heartbeat", 2).unwrap();
        let both = es256_sign(
            &signing_key(1),
            &json!({"alg": "ES256", "OCPPMessageTypedId": 2, "OCPPMessageTypeId": 3}),
            &json!({}),
        );
        assert!(matches!(parse(&both), Err(JwsError::Malformed(_))));

        let missing_type = es256_sign(
            &signing_key(1),
            &json!({"alg": "ES256", "OCPPAction": "Heartbeat"}),
            &json!({}),
        );
        assert_eq!(
            parse(&missing_type)
                .unwrap()
                .check_ocpp_binding("Heartbeat", 2),
            Err(JwsError::MissingOcppField("OCPPMessageTypedId"))
        );
        for bad in [json!("2"), json!(-1), json!(256), json!(2.5), json!(null)] {
            let header = json!({"alg": "ES256", "OCPPMessageTypedId": bad});
            assert!(matches!(
                parse(&es256_sign(&signing_key(1), &header, &json!({}))),
                Err(JwsError::Malformed(_))
            ));
        }
        let header = json!({"alg": "ES256", "OCPPAction": 7});
        assert!(matches!(
            parse(&es256_sign(&signing_key(1), &header, &json!({}))),
            Err(JwsError::Malformed(_))
        ));
    }

    #[test]
    fn jws_refuses_algorithms_outside_7_3() {
        for alg in [
            "none", "HS256", "ES384", "RS512", "PS256", "EdDSA", "es256", "",
        ] {
            let header = json!({ "alg": alg });
            let jws = flattened(&b64(header.to_string().as_bytes()), "e30", "");
            assert_eq!(
                parse(&jws).unwrap_err(),
                JwsError::UnsupportedAlgorithm(alg.to_string()),
                "{alg}"
            );
        }
        let no_alg = flattened(&b64(br#"{"kid":"k"}"#), "e30", "");
        assert_eq!(parse(&no_alg).unwrap_err(), JwsError::MissingAlgorithm);
        let numeric = flattened(&b64(br#"{"alg":256}"#), "e30", "");
        assert!(matches!(parse(&numeric), Err(JwsError::Malformed(_))));
        // alg only counts in the protected header.
        let unprotected = json!({"protected": b64(b"{}"), "header": {"alg": "ES256"},
                                 "payload": "e30", "signature": ""});
        assert_eq!(parse(&unprotected).unwrap_err(), JwsError::MissingAlgorithm);
    }

    #[test]
    fn jws_refuses_header_extensions() {
        let key = signing_key(1);
        let crit = json!({"alg": "ES256", "crit": ["exp"], "exp": 0});
        assert_eq!(
            parse(&es256_sign(&key, &crit, &json!({}))).unwrap_err(),
            JwsError::CriticalHeader("exp".into())
        );
        let b64_false = json!({"alg": "ES256", "b64": false, "crit": ["b64"]});
        assert!(matches!(
            parse(&es256_sign(&key, &b64_false, &json!({}))),
            Err(JwsError::CriticalHeader(_))
        ));
        let b64_false = json!({"alg": "ES256", "b64": false});
        assert_eq!(
            parse(&es256_sign(&key, &b64_false, &json!({}))).unwrap_err(),
            JwsError::UnencodedPayload
        );
        let b64_true = json!({"alg": "ES256", "b64": true});
        parse(&es256_sign(&key, &b64_true, &json!({}))).unwrap();

        // Duplicate names in the protected header: which alg was signed?
        let duplicate = b64(br#"{"alg":"ES256","OCPPAction":"Heartbeat","OCPPAction":"Reset"}"#);
        assert_eq!(
            parse(&flattened(&duplicate, "e30", "")).unwrap_err(),
            JwsError::DuplicateMember("OCPPAction".into())
        );
    }

    #[test]
    fn jws_unprotected_header_rules() {
        let signed = es256_sign(&signing_key(1), &boot_header(), &boot_payload());
        let with_header = with_member(&signed, "header", json!({"note": "relayed"}));
        let jws = parse(&with_header).unwrap();
        assert_eq!(jws.unprotected_header().unwrap()["note"], "relayed");
        jws.verify(&p256_public(1)).unwrap();
        // Identifiers are never taken from it.
        let kid = with_member(&signed, "header", json!({"x5c": ["AAAA"]}));
        assert!(parse(&kid).unwrap().x5c().is_empty());

        let overlap = with_member(&signed, "header", json!({"kid": "someone-else"}));
        assert_eq!(
            parse(&overlap).unwrap_err(),
            JwsError::HeaderOverlap("kid".into())
        );
        let crit = with_member(&signed, "header", json!({"crit": ["x"]}));
        assert!(matches!(parse(&crit), Err(JwsError::Malformed(_))));
        let not_object = with_member(&signed, "header", json!("kid"));
        assert!(matches!(parse(&not_object), Err(JwsError::Malformed(_))));
        let general = with_member(&signed, "signatures", json!([]));
        assert_eq!(parse(&general).unwrap_err(), JwsError::GeneralSerialization);
        // Unknown top-level members are ignored (RFC 7515 §7.2.1).
        let extra = with_member(&signed, "comment", json!(1));
        parse(&extra).unwrap().verify(&p256_public(1)).unwrap();
    }

    #[test]
    fn jws_header_identifiers() {
        let key = signing_key(1);
        let certificate = std64d(RSA_CERT);
        let header = json!({"alg": "ES256", "x5c": [RSA_CERT, EC_CERT]});
        let jws = parse(&es256_sign(&key, &header, &json!({}))).unwrap();
        assert_eq!(jws.x5c().len(), 2);
        assert_eq!(jws.x5c()[0], certificate);
        assert!(JwsKey::from_certificate_der(&jws.x5c()[1]).is_ok());

        for bad in [
            json!({"alg": "ES256", "x5c": []}),
            json!({"alg": "ES256", "x5c": "MIIB"}),
            json!({"alg": "ES256", "x5c": ["not base64!"]}),
            json!({"alg": "ES256", "x5c": [1]}),
            json!({"alg": "ES256", "x5c": vec![RSA_CERT; MAX_X5C + 1]}),
            json!({"alg": "ES256", "x5t#S256": "abc"}),
            json!({"alg": "ES256", "x5t#S256": b64(&[1u8; 20])}),
            json!({"alg": "ES256", "x5t#S256": 5}),
            json!({"alg": "ES256", "kid": {"id": 1}}),
        ] {
            assert!(
                matches!(
                    parse(&es256_sign(&key, &bad, &json!({}))),
                    Err(JwsError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn jws_malformed_input_gives_errors() {
        let good = es256_sign(&signing_key(1), &boot_header(), &boot_payload());
        // Not the flattened form at all.
        assert_eq!(parse(&json!(A3_JWS)).unwrap_err(), JwsError::NotFlattened);
        assert_eq!(
            parse(&json!([1, 2, 3])).unwrap_err(),
            JwsError::NotFlattened
        );
        assert_eq!(parse(&json!(null)).unwrap_err(), JwsError::NotFlattened);
        assert_eq!(parse_str(A3_JWS).unwrap_err(), JwsError::NotFlattened);
        assert_eq!(parse_str("").unwrap_err(), JwsError::NotFlattened);
        assert!(matches!(parse_str("{"), Err(JwsError::Malformed(_))));
        assert!(matches!(parse_str("{}"), Err(JwsError::Malformed(_))));
        assert_eq!(
            parse_str(r#"{"payload":"e30","payload":"e30","protected":"","signature":""}"#)
                .unwrap_err(),
            JwsError::DuplicateMember("payload".into())
        );

        for name in ["protected", "payload", "signature"] {
            let mut missing = good.clone();
            missing.as_object_mut().unwrap().remove(name);
            assert!(
                matches!(parse(&missing), Err(JwsError::Malformed(_))),
                "{name}"
            );
            let not_string = with_member(&good, name, json!(12));
            assert!(
                matches!(parse(&not_string), Err(JwsError::Malformed(_))),
                "{name}"
            );
            // Bad base64url: padding, the standard alphabet, junk, a non-canonical last char.
            let text = good[name].as_str().unwrap().to_string();
            for bad in [
                format!("{text}="),
                format!("{text}+/"),
                "*".to_string(),
                "A".to_string(),
                "e31".to_string(),
            ] {
                let bad_b64 = with_member(&good, name, json!(bad));
                assert_eq!(
                    parse(&bad_b64).unwrap_err(),
                    JwsError::Base64(match name {
                        "protected" => "the protected header",
                        "payload" => "the payload",
                        _ => "the signature",
                    }),
                    "{name} {bad}"
                );
            }
        }

        // Header and payload must be JSON objects.
        for header in [
            &b"not json"[..],
            b"[1]",
            b"\"alg\"",
            b"{\"alg\":\"ES256\"",
            b"\xff\xfe",
        ] {
            let jws = with_member(&good, "protected", json!(b64(header)));
            assert!(matches!(parse(&jws), Err(JwsError::Malformed(_))));
        }
        for payload in [&b"not json"[..], b"[1]", b"42", b"", b"{\"a\":1} trailing"] {
            let jws = es256_sign(&signing_key(1), &boot_header(), &json!({}));
            let jws = with_member(&jws, "payload", json!(b64(payload)));
            assert!(matches!(parse(&jws), Err(JwsError::Malformed(_))));
        }
    }

    #[test]
    fn jws_size_bounds() {
        let key = signing_key(1);
        let big = "x".repeat(MAX_INPUT);
        let huge = es256_sign(&key, &boot_header(), &json!({ "data": big }));
        assert!(matches!(parse(&huge), Err(JwsError::TooLarge { .. })));
        assert!(matches!(
            parse_str(&huge.to_string()),
            Err(JwsError::TooLarge { .. })
        ));
        // Just under the limit is fine.
        let fits = es256_sign(
            &key,
            &boot_header(),
            &json!({ "data": "x".repeat(40 * 1024) }),
        );
        parse(&fits).unwrap().verify(&p256_public(1)).unwrap();
        // Size counts whitespace in text form too.
        let padded = format!("{}{}", " ".repeat(MAX_INPUT), fits);
        assert!(matches!(parse_str(&padded), Err(JwsError::TooLarge { .. })));

        let big_header = json!({"alg": "ES256", "kid": "k".repeat(MAX_HEADER)});
        assert!(matches!(
            parse(&es256_sign(&key, &big_header, &json!({}))),
            Err(JwsError::TooLarge {
                what: "the protected header",
                ..
            })
        ));
        let mut many = Map::new();
        many.insert("alg".into(), json!("ES256"));
        for index in 0..MAX_HEADER_MEMBERS {
            many.insert(format!("m{index}"), json!(index));
        }
        assert!(matches!(
            parse(&es256_sign(&key, &Value::Object(many), &json!({}))),
            Err(JwsError::Malformed(_))
        ));
        let long_signature = with_member(
            &es256_sign(&key, &boot_header(), &json!({})),
            "signature",
            json!(b64(&[1u8; MAX_SIGNATURE + 3])),
        );
        assert!(matches!(
            parse(&long_signature),
            Err(JwsError::TooLarge {
                what: "the signature",
                ..
            })
        ));
        let mut wide = Map::new();
        for index in 0..=MAX_HEADER_MEMBERS {
            wide.insert(format!("u{index}"), json!(index));
        }
        let wide = with_member(
            &es256_sign(&key, &boot_header(), &json!({})),
            "header",
            Value::Object(wide),
        );
        assert!(matches!(parse(&wide), Err(JwsError::TooLarge { .. })));
    }

    #[test]
    fn jws_deeply_nested_payload_is_an_error() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let jws = flattened(&b64(br#"{"alg":"ES256"}"#), &b64(deep.as_bytes()), "");
        assert!(matches!(parse(&jws), Err(JwsError::Malformed(_))));
        let deep_header = format!(
            r#"{{"alg":"ES256","x":{}{}}}"#,
            "[".repeat(1000),
            "]".repeat(1000)
        );
        let jws = flattened(&b64(deep_header.as_bytes()), "e30", "");
        assert!(matches!(parse(&jws), Err(JwsError::Malformed(_))));
    }

    #[test]
    fn jws_key_constructors_reject_bad_keys() {
        assert!(matches!(
            JwsKey::from_spki_der(b""),
            Err(JwsError::BadKey(_))
        ));
        assert!(matches!(
            JwsKey::from_spki_der(b"\x30\x03\x02\x01\x00"),
            Err(JwsError::BadKey(_))
        ));
        // An Ed25519 SPKI is well formed, and not a §7.3 key.
        let mut ed25519 = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        ed25519.extend([9u8; 32]);
        assert_eq!(
            JwsKey::from_spki_der(&ed25519),
            Err(JwsError::UnsupportedKey)
        );
        // A P-256 SPKI whose curve OID is changed to secp384r1.
        let mut p384 = std64d(EC_SPKI);
        let curve = p384
            .windows(8)
            .position(|w| w == [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03])
            .unwrap();
        p384.splice(
            curve..curve + 10,
            [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        );
        p384[1] -= 3;
        p384[3] -= 3;
        assert_eq!(JwsKey::from_spki_der(&p384), Err(JwsError::UnsupportedKey));

        assert!(matches!(
            JwsKey::p256_from_sec1(&[4u8; 65]),
            Err(JwsError::BadKey(_))
        ));
        assert!(matches!(
            JwsKey::p256_from_sec1(b""),
            Err(JwsError::BadKey(_))
        ));
        assert!(matches!(
            JwsKey::rsa_from_components(&[0xff; 128], &[1, 0, 1]),
            Err(JwsError::BadKey(_))
        ));
        assert!(matches!(
            JwsKey::rsa_from_components(&b64d(A2_N), &[1, 0, 0]),
            Err(JwsError::BadKey(_))
        ));
        assert!(matches!(
            JwsKey::rsa_from_components(&b64d(A2_N), &[]),
            Err(JwsError::BadKey(_))
        ));
        // Leading zeros in the modulus are tolerated.
        let mut padded = vec![0, 0];
        padded.extend(b64d(A2_N));
        assert_eq!(
            JwsKey::rsa_from_components(&padded, &[1, 0, 1]).unwrap(),
            a2_key()
        );
        assert!(matches!(
            JwsKey::rsa_from_pkcs1_der(b"\x30\x00"),
            Err(JwsError::BadKey(_))
        ));
        assert!(matches!(
            JwsKey::from_certificate_der(b"\x30\x00"),
            Err(JwsError::BadKey(_))
        ));
        assert!(matches!(
            JwsKey::from_certificate_der(&std64d(RSA_SPKI)),
            Err(JwsError::BadKey(_))
        ));
    }

    #[test]
    fn jws_truncated_and_flipped_inputs_never_panic() {
        let certificate = std64d(RSA_CERT);
        for end in 0..certificate.len() {
            assert!(JwsKey::from_certificate_der(&certificate[..end]).is_err());
            let _ = JwsKey::from_spki_der(&certificate[..end]);
            let _ = JwsKey::rsa_from_pkcs1_der(&certificate[..end]);
        }
        let mut flipped = certificate.clone();
        for index in 0..flipped.len() {
            flipped[index] ^= 0xff;
            let _ = JwsKey::from_certificate_der(&flipped);
            flipped[index] ^= 0xff;
        }

        let text = es256_sign(&signing_key(1), &boot_header(), &boot_payload()).to_string();
        let key = p256_public(1);
        for end in 0..text.len() {
            if let Some(prefix) = text.get(..end) {
                assert!(parse_str(prefix).is_err());
            }
        }
        let bytes = text.as_bytes();
        for index in 0..bytes.len() {
            for replacement in [b'A', b'"', b'.', b'{', b'\\', b'='] {
                let mut changed = bytes.to_vec();
                changed[index] = replacement;
                if let Ok(changed) = std::str::from_utf8(&changed) {
                    if let Ok(jws) = parse_str(changed) {
                        let _ = jws.verify(&key);
                    }
                }
            }
        }
    }
}
