"""End-to-end message signatures, written independently of the Rust ``signing`` crate.

The normative form (ARCHITECTURE §3.5): a payload (a JSON object) may carry
``"signatures": [{keyId, value, algorithm, signingMethod, encoding, name, description,
timestamp, nonce}]``. A signature covers the UTF-8 of the RFC 8785 (JCS) canonical form of::

    {"messageType": <2..6>, "action": <action>, "destination": <final destination id>,
     "payload": <the payload without its "signatures" member>,
     "signer": <the signature object without "value">}

Algorithms: ``ed25519``; ``secp256r1`` (ECDSA P-256 / SHA-256, value = 64 raw bytes r||s);
``secp384r1`` (ECDSA P-384 / SHA-384, 96 bytes r||s). ``keyId`` is standard base64 of the raw
32-byte ed25519 public key or of the SEC1 *compressed* EC point (33 / 49 bytes); ``value`` is
standard base64 of the signature; ``encoding`` = "base64"; ``signingMethod`` = "jcs-v1";
``timestamp`` RFC 3339 UTC. A verifier rejects a timestamp outside ±300 s, tampered bytes, an
unknown algorithm and a wrong key.

Canonical bytes come from the PyPI ``rfc8785`` package, signatures from ``cryptography``
(whose ECDSA speaks DER: converted here to and from fixed-width r||s).
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import re
import secrets
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

ALGORITHMS = ("ed25519", "secp256r1", "secp384r1")
SIGNING_METHOD = "jcs-v1"
ENCODING = "base64"
WINDOW_S = 300

# algorithm -> (curve, hash, scalar width in bytes, group order n)
_EC = {
    "secp256r1": (ec.SECP256R1(), hashes.SHA256(), 32,
                  0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551),
    "secp384r1": (ec.SECP384R1(), hashes.SHA384(), 48,
                  0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973),
}
SIGNATURE_LEN = {"ed25519": 64, "secp256r1": 64, "secp384r1": 96}
KEY_ID_LEN = {"ed25519": 32, "secp256r1": 33, "secp384r1": 49}

TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


class SignatureError(AssertionError):
    pass


# ---------------------------------------------------------------------------
# base64, timestamps
# ---------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(s: str, what: str = "base64") -> bytes:
    """Standard base64 with padding, nothing else (no URL-safe alphabet, no missing '=')."""
    if not isinstance(s, str):
        raise SignatureError(f"{what}: not a string: {s!r}")
    try:
        raw = base64.b64decode(s, validate=True)
    except (ValueError, base64.binascii.Error) as e:
        raise SignatureError(f"{what}: not standard base64: {s!r} ({e})") from e
    if b64(raw) != s:
        raise SignatureError(f"{what}: not the canonical standard base64 (with padding): {s!r}")
    return raw


def rfc3339(t: dt.datetime | None = None) -> str:
    """``2026-12-07T12:00:00Z`` (UTC, whole seconds)."""
    t = t or dt.datetime.now(dt.timezone.utc)
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_offset(seconds: float) -> str:
    return rfc3339(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds))


def parse_timestamp(s: str) -> dt.datetime:
    if not isinstance(s, str) or not TIMESTAMP_RE.match(s):
        raise SignatureError(f"timestamp {s!r} is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS[.f]Z)")
    return dt.datetime.fromisoformat(s[:-1] + "+00:00")


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def generate_key(algorithm: str):
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm in _EC:
        return ec.generate_private_key(_EC[algorithm][0])
    raise ValueError(f"unknown algorithm {algorithm!r}")


def load_private_key_pem(data: bytes):
    return serialization.load_pem_private_key(data, password=None)


def private_key_pem(key) -> bytes:
    """PKCS#8 PEM, unencrypted (``-----BEGIN PRIVATE KEY-----``)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def algorithm_of(key) -> str:
    """The spec's algorithm name for a private or public key."""
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        for name, (curve, *_rest) in _EC.items():
            if key.curve.name == curve.name:
                return name
        raise ValueError(f"unsupported curve {key.curve.name}")
    raise ValueError(f"unsupported key type {type(key).__name__}")


def public_key_bytes(key) -> bytes:
    """Raw 32 bytes (ed25519) or the SEC1 compressed point (ECDSA)."""
    pub = key.public_key() if hasattr(key, "private_bytes") else key
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


def key_id(key) -> str:
    return b64(public_key_bytes(key))


def public_key_from_key_id(kid: str, algorithm: str):
    raw = b64decode_strict(kid, "keyId")
    if algorithm not in KEY_ID_LEN:
        raise SignatureError(f"unknown algorithm {algorithm!r}")
    if len(raw) != KEY_ID_LEN[algorithm]:
        raise SignatureError(f"keyId of {algorithm} must be {KEY_ID_LEN[algorithm]} bytes, got {len(raw)}")
    if algorithm == "ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    if raw[0] not in (2, 3):
        raise SignatureError(f"keyId of {algorithm} is not a compressed SEC1 point (first byte {raw[0]:#x})")
    return ec.EllipticCurvePublicKey.from_encoded_point(_EC[algorithm][0], raw)


# ---------------------------------------------------------------------------
# Canonical bytes
# ---------------------------------------------------------------------------


def strip_signatures(payload: dict) -> dict:
    return {k: v for k, v in payload.items() if k != "signatures"}


def signer_of(signature: dict) -> dict:
    return {k: v for k, v in signature.items() if k != "value"}


def signed_bytes(payload: dict, signer: dict, *, action: str, destination: str,
                 message_type: int = 2) -> bytes:
    """The RFC 8785 bytes a signature covers (``signatures`` removed from the payload)."""
    return rfc8785.dumps({
        "messageType": message_type,
        "action": action,
        "destination": destination,
        "payload": strip_signatures(payload),
        "signer": signer_of(signer),
    })


# ---------------------------------------------------------------------------
# Raw signatures
# ---------------------------------------------------------------------------


def _normalize_s(algorithm: str, r: int, s: int, s_form: str | None) -> tuple[int, int]:
    n = _EC[algorithm][3]
    if s_form == "low" and s > n // 2:
        s = n - s
    elif s_form == "high" and s <= n // 2:
        s = n - s
    return r, s


def sign_raw(key, data: bytes, *, s_form: str | None = None) -> bytes:
    """ed25519: 64 bytes. ECDSA: r||s, each the curve's width, big-endian. ``s_form`` = "low" /
    "high" forces that half of the (equally valid) ECDSA pair; None keeps OpenSSL's choice."""
    alg = algorithm_of(key)
    if alg == "ed25519":
        return key.sign(data)
    _curve, h, width, _n = _EC[alg]
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(h)))
    r, s = _normalize_s(alg, r, s, s_form)
    return r.to_bytes(width, "big") + s.to_bytes(width, "big")


def verify_raw(public_key, algorithm: str, data: bytes, sig: bytes) -> None:
    """Raises SignatureError unless ``sig`` is a valid ``algorithm`` signature of ``data``."""
    if algorithm not in SIGNATURE_LEN:
        raise SignatureError(f"unknown algorithm {algorithm!r}")
    if algorithm_of(public_key) != algorithm:
        raise SignatureError(f"key is {algorithm_of(public_key)}, signature says {algorithm}")
    if len(sig) != SIGNATURE_LEN[algorithm]:
        raise SignatureError(f"{algorithm} signature must be {SIGNATURE_LEN[algorithm]} bytes, got {len(sig)}")
    try:
        if algorithm == "ed25519":
            public_key.verify(sig, data)
        else:
            _curve, h, width, _n = _EC[algorithm]
            r = int.from_bytes(sig[:width], "big")
            s = int.from_bytes(sig[width:], "big")
            public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(h))
    except InvalidSignature as e:
        raise SignatureError(f"{algorithm} signature does not verify") from e


# ---------------------------------------------------------------------------
# Payload signatures
# ---------------------------------------------------------------------------


def make_signer(key, *, timestamp: str | None = None, name: str | None = None,
                description: str | None = None, nonce: str | None = "", algorithm: str | None = None,
                kid: str | None = None) -> dict:
    """The signature object without ``value``. ``nonce=""`` (default) draws a random one,
    ``None`` leaves it out; ``algorithm`` / ``kid`` override what the key says (for negative tests)."""
    signer: dict[str, Any] = {
        "keyId": kid if kid is not None else key_id(key),
        "algorithm": algorithm if algorithm is not None else algorithm_of(key),
        "signingMethod": SIGNING_METHOD,
        "encoding": ENCODING,
        "timestamp": timestamp if timestamp is not None else rfc3339(),
    }
    if name is not None:
        signer["name"] = name
    if description is not None:
        signer["description"] = description
    if nonce == "":
        nonce = secrets.token_urlsafe(16)
    if nonce is not None:
        signer["nonce"] = nonce
    return signer


def sign_payload(payload: dict, key, *, action: str, destination: str, message_type: int = 2,
                 signer: dict | None = None, s_form: str | None = None, **signer_kw) -> dict:
    """A copy of ``payload`` with one more signature appended to its ``signatures`` array."""
    signer = dict(signer) if signer is not None else make_signer(key, **signer_kw)
    data = signed_bytes(payload, signer, action=action, destination=destination, message_type=message_type)
    sig = dict(signer)
    sig["value"] = b64(sign_raw(key, data, s_form=s_form))
    out = copy.deepcopy(payload)
    out.setdefault("signatures", [])
    out["signatures"] = list(out["signatures"]) + [sig]
    return out


@dataclass
class Verified:
    key_id: str
    algorithm: str
    timestamp: dt.datetime
    signed: bytes


def check_signature_shape(sig: dict) -> None:
    """The fields of one signature object, as the spec writes them."""
    if not isinstance(sig, dict):
        raise SignatureError(f"signature is not an object: {sig!r}")
    missing = [k for k in ("keyId", "value", "algorithm", "signingMethod", "encoding", "timestamp") if k not in sig]
    if missing:
        raise SignatureError(f"signature lacks {missing}: {sig!r}")
    unknown = set(sig) - {"keyId", "value", "algorithm", "signingMethod", "encoding", "name",
                          "description", "timestamp", "nonce"}
    if unknown:
        raise SignatureError(f"signature has unknown members {sorted(unknown)}: {sig!r}")
    if sig["algorithm"] not in ALGORITHMS:
        raise SignatureError(f"unknown algorithm {sig['algorithm']!r}")
    if sig["signingMethod"] != SIGNING_METHOD:
        raise SignatureError(f"signingMethod {sig['signingMethod']!r} != {SIGNING_METHOD!r}")
    if sig["encoding"] != ENCODING:
        raise SignatureError(f"encoding {sig['encoding']!r} != {ENCODING!r}")
    for k in ("name", "description", "nonce"):
        if k in sig and not isinstance(sig[k], str):
            raise SignatureError(f"{k} is not a string: {sig[k]!r}")
    parse_timestamp(sig["timestamp"])


def verify_signature(payload: dict, sig: dict, *, action: str, destination: str, message_type: int = 2,
                     expected_key_id: str | None = None, window_s: float | None = WINDOW_S,
                     canonical_payload: dict | None = None) -> Verified:
    """Verify one signature object of ``payload`` (raises SignatureError).

    ``canonical_payload`` (optional) is the payload whose canonical bytes are used instead of
    ``payload`` — e.g. what the test sent, so a node that re-serialized differently is caught.
    """
    check_signature_shape(sig)
    alg = sig["algorithm"]
    if expected_key_id is not None and sig["keyId"] != expected_key_id:
        raise SignatureError(f"keyId {sig['keyId']!r} != expected {expected_key_id!r}")
    pub = public_key_from_key_id(sig["keyId"], alg)
    ts = parse_timestamp(sig["timestamp"])
    if window_s is not None:
        skew = abs((dt.datetime.now(dt.timezone.utc) - ts).total_seconds())
        if skew > window_s:
            raise SignatureError(f"timestamp {sig['timestamp']} is {skew:.0f}s from now (window ±{window_s}s)")
    raw = b64decode_strict(sig["value"], "value")
    data = signed_bytes(payload if canonical_payload is None else canonical_payload, sig,
                        action=action, destination=destination, message_type=message_type)
    verify_raw(pub, alg, data, raw)
    return Verified(sig["keyId"], alg, ts, data)


def verify_payload(payload: dict, *, key_ids: list[str], action: str, destination: str,
                   message_type: int = 2, window_s: float | None = WINDOW_S) -> list[Verified]:
    """Every signature by a listed key must verify and at least one must be present."""
    sigs = payload.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise SignatureError("no signatures")
    out = [verify_signature(payload, s, action=action, destination=destination, message_type=message_type,
                            window_s=window_s)
           for s in sigs if isinstance(s, dict) and s.get("keyId") in key_ids]
    if not out:
        raise SignatureError(f"no signature by any of {key_ids}")
    return out
