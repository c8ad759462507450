"""End-to-end message signatures: ``ocpp-node keys`` / ``sign`` / ``verify`` against an
independent implementation (``signinglib.py``: the PyPI ``rfc8785`` package for the canonical
bytes, ``cryptography`` for ed25519 / ECDSA P-256 / P-384), in both directions, for the three
algorithms.

  * the node makes a key and signs; Python reads the PKCS#8 PEM, recomputes the keyId and verifies;
  * Python makes a key and signs; ``ocpp-node verify`` accepts it, and refuses tampered payloads,
    another destination / action / message type, a timestamp outside ±300 s, a wrong or unlisted
    key, an unknown algorithm;
  * RFC 8785: for a payload full of canonicalization traps (number formatting, -0, escapes,
    UTF-16 key order with non-ASCII and supplementary-plane keys) the bytes the node signs are the
    bytes ``rfc8785`` produces, both ways.

Tests that need the binary skip (with the reason) only when it is missing; the Python-only checks
of the reference implementation always run.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import rfc8785

import peerlib
import signinglib as sl

pytestmark = pytest.mark.timeout(180)

ACTION = "Reset"
DESTINATION = "CS-1"
RESET = {"type": "Immediate"}

# Canonicalization traps, each a JSON text the node reads verbatim (see _tricky_text).
# Large integers are written as floats: JCS numbers are IEEE-754 doubles and ``rfc8785`` refuses
# Python ints outside ±(2**53 - 1).
TRICKY_FRAGMENTS: list[tuple[str, str]] = [
    # RFC 8785 §3.2.2 sample numbers -> [333333333.3333333,1e+30,4.5,0.002,1e-27]
    ("rfcNumbers", "[333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001]"),
    # the ECMAScript switch between plain and exponent notation
    ("exponentBoundaries", "[1e21, 1e20, 9.999999999999999e20, 0.000001, 1e-7, 0.0000001234, 1.2345678901234568e20]"),
    ("zeros", "[-0, -0.0, 0, 0.0, 0E5, -0e-3]"),
    ("extremes", "[5e-324, 1.7976931348623157e308, 2.2250738585072014e-308, 9007199254740991, "
                 "-9007199254740991, -1.5, 1.0, 100]"),
    # shortest round-trip digits; the last one is exactly half-way between 1 and its successor
    ("rounding", "[0.1, 0.30000000000000004, 1.0000000000000002, 123456789.123456789, 4.35, 0.000035, "
                 "2.2250738585072011e-308, 1.00000000000000011102230246251565404236316680908203125]"),
    # RFC 8785 §3.2.2 sample string -> "€$\u000f\nA'B\"\\\\\"/"
    ("rfcString", r'"\u20ac$\u000F\u000aA' + "'" + r'\u0042\u0022\u005c\\\"\/"'),
    ("controls", r'"\u0000\u0001\u001f\u007f\b\f\n\r\t \u2028\u2029"'),
    ("unicode", r'"日本語 ö é 😀 \ud83d\ude00 \ufb33 \uffff"'),
    # RFC 8785 §3.2.3 sample keys -> \r, 1, \u0080, ö, €, 😀, דּ  (UTF-16 code units)
    ("rfcKeys", r'{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh",'
                r'"1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control",'
                r'"\u00f6":"Latin Small Letter O With Diaeresis"}'),
    # keys whose escaped form sorts differently from the keys themselves
    ("asciiKeys", r'{"b":1,"a":2,"B":3,"A":4,"aa":5,"":6,"a b":7,"_":8,"~":9,"\"":10,"\\":11,"\n":12}'),
    # a surrogate pair (D83D) sorts below U+E000..U+FFFF but above U+D7FF
    ("surrogateKeys", r'{"\uffff":1,"\ud83d\ude00":2,"\ue000":3,"\ud7ff":4,"\u00e9":5}'),
    ("nested", '{"z":[{"b":[],"a":{}}],"y":{"d":{"c":null}},"x":[[],[[]],{}]}'),
    ("literals", "[null, true, false]"),
]


def _tricky_text(fragments=TRICKY_FRAGMENTS) -> str:
    body = ",\n  ".join(f'"{label}": {text}' for label, text in fragments)
    return '{\n  "type": "Immediate",\n  ' + body + "\n}\n"


# ---------------------------------------------------------------------------
# The binary and the CLI
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exe() -> Path:
    path = peerlib.node_bin()
    if not path.is_file() or not os.access(path, os.X_OK):
        why = (f"ocpp-node binary missing at {path}: build it (cargo build --release -p ocpp-node) "
               f"or set OCPP_NODE_BIN")
        print(why)
        pytest.skip(why)
    return path


def run(exe: Path, *args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *args], input=stdin, capture_output=True, text=True, encoding="utf-8",
                          timeout=60, cwd=str(cwd) if cwd else None)


def describe(r: subprocess.CompletedProcess) -> str:
    return (f"$ {' '.join(map(str, r.args))}\nrc={r.returncode}\nstdout: {r.stdout.strip()[:2000]}\n"
            f"stderr: {r.stderr.strip()[:2000]}")


def node_keygen(exe: Path, alg: str, out: Path) -> str:
    r = run(exe, "keys", "generate", "--algorithm", alg, "--out", str(out))
    assert r.returncode == 0, describe(r)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"keys generate must print exactly the keyId (one line):\n{describe(r)}"
    return lines[0].strip()


def node_sign(exe: Path, key: Path, payload_text: str, *, tmp: Path | None = None, name: str | None = None,
              message_type: int | None = None, action: str = ACTION, destination: str = DESTINATION) -> dict:
    """``ocpp-node sign``; the payload from a file when ``tmp`` is given, else from stdin."""
    args = ["sign", "--key", str(key), "--action", action, "--destination", destination]
    if message_type is not None:
        args += ["--message-type", str(message_type)]
    if name is not None:
        args += ["--name", name]
    if tmp is not None:
        f = tmp / "payload.json"
        f.write_text(payload_text, encoding="utf-8")
        r = run(exe, *args, str(f))
    else:
        r = run(exe, *args, "-", stdin=payload_text)
    assert r.returncode == 0, describe(r)
    out = r.stdout.strip()
    assert out and "\n" not in out, f"sign must print one line of JSON:\n{describe(r)}"
    try:
        signed = json.loads(out)
    except ValueError as e:
        raise AssertionError(f"sign printed no JSON ({e}):\n{describe(r)}") from None
    assert isinstance(signed, dict), describe(r)
    return signed


def node_verify(exe: Path, payload: dict | str, key_ids: list[str], *, action: str = ACTION,
                destination: str = DESTINATION, message_type: int | None = None,
                tmp: Path | None = None) -> subprocess.CompletedProcess:
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    args = ["verify"]
    for k in key_ids:
        args += ["--key-id", k]
    args += ["--action", action, "--destination", destination]
    if message_type is not None:
        args += ["--message-type", str(message_type)]
    if tmp is not None:
        f = tmp / "signed.json"
        f.write_text(text, encoding="utf-8")
        return run(exe, *args, str(f))
    return run(exe, *args, "-", stdin=text)


def assert_verified(r: subprocess.CompletedProcess, key_ids: list[str]) -> None:
    assert r.returncode == 0, "ocpp-node verify refused a valid signature:\n" + describe(r)
    for k in key_ids:
        assert k in r.stdout, f"verify must print the verified keyId {k}:\n{describe(r)}"


def assert_refused(r: subprocess.CompletedProcess, what: str) -> None:
    assert r.returncode != 0, f"ocpp-node verify accepted {what}:\n{describe(r)}"
    assert r.stderr.strip(), f"verify refused {what} without a reason on stderr:\n{describe(r)}"


def python_key(alg: str):
    k = sl.generate_key(alg)
    return k, sl.key_id(k)


def check_node_signature(sig: dict, *, alg: str, kid: str, name: str | None) -> None:
    """What the spec says one signature object the node made looks like."""
    sl.check_signature_shape(sig)
    assert sig["algorithm"] == alg, sig
    assert sig["keyId"] == kid, f"signature keyId {sig['keyId']!r} != the key's {kid!r}"
    assert len(sl.b64decode_strict(sig["value"], "value")) == sl.SIGNATURE_LEN[alg], sig
    if name is not None:
        assert sig.get("name") == name, sig
    else:
        assert "name" not in sig, f"name must be omitted when absent: {sig}"
    assert "description" not in sig, f"description must be omitted when absent: {sig}"
    if "nonce" in sig:
        assert sig["nonce"], f"an empty nonce: {sig}"
    skew = abs((dt.datetime.now(dt.timezone.utc) - sl.parse_timestamp(sig["timestamp"])).total_seconds())
    assert skew < 60, f"timestamp {sig['timestamp']} is {skew:.0f}s away from now"


ALGS = pytest.mark.parametrize("alg", sl.ALGORITHMS)


# ---------------------------------------------------------------------------
# The reference implementation on its own (no node needed)
# ---------------------------------------------------------------------------


def test_rfc8785_reference_vectors():
    """``rfc8785`` reproduces RFC 8785's own samples (§3.2.2 values, §3.2.3 key order)."""
    values = json.loads('{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],'
                        r'"string":"\u20ac$\u000F\u000aA' "'" r'\u0042\u0022\u005c\\\"\/",'
                        '"literals":[null,true,false]}')
    assert rfc8785.dumps(values) == (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}').encode("utf-8")
    keys = json.loads(dict(TRICKY_FRAGMENTS)["rfcKeys"])
    assert [k for k in json.loads(rfc8785.dumps(keys))] == [
        "\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001F600", "\ufb33"]
    assert rfc8785.dumps([1e21, 1e20, 0.000001, 1e-7, -0.0, 5e-324]) == \
        b"[1e+21,100000000000000000000,0.000001,1e-7,0,5e-324]"
    # every trap canonicalizes (no ints outside the double range slipped in)
    rfc8785.dumps(json.loads(_tricky_text()))


@ALGS
def test_signinglib_roundtrip(alg):
    """Python signs, Python verifies; tampering, another destination and a stale timestamp fail."""
    k, kid = python_key(alg)
    assert len(sl.b64decode_strict(kid)) == sl.KEY_ID_LEN[alg]
    assert sl.key_id(sl.load_private_key_pem(sl.private_key_pem(k))) == kid
    forms = [None] if alg == "ed25519" else [None, "low", "high"]
    for form in forms:
        p = sl.sign_payload(RESET, k, action=ACTION, destination=DESTINATION, s_form=form)
        assert [v.key_id for v in sl.verify_payload(p, key_ids=[kid], action=ACTION, destination=DESTINATION)] == [kid]
    bad = copy.deepcopy(p)
    bad["type"] = "OnIdle"
    stale = sl.sign_payload(RESET, k, action=ACTION, destination=DESTINATION, timestamp=sl.now_offset(-600))
    for payload, kw in ((bad, {}), (p, {"destination": "CS-2"}), (p, {"action": "Reboot"}), (stale, {})):
        args = {"key_ids": [kid], "action": ACTION, "destination": DESTINATION, **kw}
        with pytest.raises(sl.SignatureError):
            sl.verify_payload(payload, **args)


# ---------------------------------------------------------------------------
# 1. The node signs, Python verifies
# ---------------------------------------------------------------------------


@ALGS
def test_node_signs_python_verifies(exe, alg, tmp_path):
    keyfile = tmp_path / f"{alg}.pem"
    kid = node_keygen(exe, alg, keyfile)

    mode = stat.S_IMODE(keyfile.stat().st_mode)
    assert mode == 0o600, f"key file mode {mode:#o}, want 0o600"
    pem = keyfile.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----"), pem[:80]
    key = sl.load_private_key_pem(pem)
    assert sl.algorithm_of(key) == alg
    assert sl.key_id(key) == kid, f"keys generate printed {kid!r}, the PEM's public key is {sl.key_id(key)!r}"

    r = run(exe, "keys", "show", str(keyfile))
    assert r.returncode == 0, describe(r)
    assert re.search(rf"^keyId:\s*{re.escape(kid)}\s*$", r.stdout, re.M), describe(r)
    assert re.search(rf"^algorithm:\s*{alg}\s*$", r.stdout, re.M), describe(r)

    signed = node_sign(exe, keyfile, json.dumps(RESET), tmp=tmp_path, name="csms-operator")
    assert sl.strip_signatures(signed) == RESET, signed
    assert isinstance(signed.get("signatures"), list) and len(signed["signatures"]) == 1, signed
    sig = signed["signatures"][0]
    check_node_signature(sig, alg=alg, kid=kid, name="csms-operator")
    v = sl.verify_signature(signed, sig, action=ACTION, destination=DESTINATION, message_type=2,
                            expected_key_id=kid, canonical_payload=RESET)
    assert v.signed.startswith(b'{"action":"Reset","destination":"CS-1","messageType":2,"payload":{"type":"Immediate"}')

    # Python's verifier is not a rubber stamp
    for kw in ({"destination": "CS-2"}, {"action": "Reboot"}, {"message_type": 3}):
        args = {"action": ACTION, "destination": DESTINATION, "message_type": 2, **kw}
        with pytest.raises(sl.SignatureError):
            sl.verify_signature(signed, sig, **args)

    # the node agrees with itself
    assert_verified(node_verify(exe, signed, [kid]), [kid])

    # a second signature is appended; both cover the payload without ``signatures``
    keyfile2 = tmp_path / f"{alg}-2.pem"
    kid2 = node_keygen(exe, alg, keyfile2)
    assert kid2 != kid
    twice = node_sign(exe, keyfile2, json.dumps(signed))
    assert twice.get("signatures", [None])[0] == sig, f"the first signature must be kept as it was: {twice}"
    assert len(twice["signatures"]) == 2, twice
    check_node_signature(twice["signatures"][1], alg=alg, kid=kid2, name=None)
    got = sl.verify_payload(twice, key_ids=[kid, kid2], action=ACTION, destination=DESTINATION)
    assert sorted(x.key_id for x in got) == sorted([kid, kid2])


# ---------------------------------------------------------------------------
# 2. Python signs, the node verifies
# ---------------------------------------------------------------------------


@ALGS
def test_python_signs_node_verifies(exe, alg, tmp_path):
    k, kid = python_key(alg)
    signed = sl.sign_payload(RESET, k, action=ACTION, destination=DESTINATION, name="csms",
                             description="CSMS operator key")
    assert_verified(node_verify(exe, signed, [kid], tmp=tmp_path), [kid])

    tampered = copy.deepcopy(signed)
    tampered["type"] = "OnIdle"
    assert_refused(node_verify(exe, tampered, [kid]), "a tampered payload (Immediate -> OnIdle)")
    assert_refused(node_verify(exe, signed, [kid], destination="CS-2"), "another destination")
    assert_refused(node_verify(exe, signed, [kid], action="Reboot"), "another action")
    stale = sl.sign_payload(RESET, k, action=ACTION, destination=DESTINATION, timestamp=sl.now_offset(-600))
    assert_refused(node_verify(exe, stale, [kid]), "a timestamp 10 minutes old")


def _accept_cases():
    cases = []
    for alg in sl.ALGORITHMS:
        for variant in ("minimal_no_nonce", "timestamp_200s_old", "timestamp_200s_ahead", "message_type_3",
                        "unlisted_extra_signature_ignored", "two_listed_keys"):
            cases.append(pytest.param(alg, variant, id=f"{alg}-{variant}"))
        if alg != "ed25519":  # OpenSSL makes either half; a verifier must take both
            for variant in ("low_s", "high_s"):
                cases.append(pytest.param(alg, variant, id=f"{alg}-{variant}"))
    return cases


@pytest.mark.parametrize("alg,variant", _accept_cases())
def test_node_verify_accepts(exe, alg, variant):
    k, kid = python_key(alg)
    sign = lambda key=k, **kw: sl.sign_payload(RESET, key, action=ACTION, destination=DESTINATION, **kw)  # noqa: E731
    key_ids, mt = [kid], None
    if variant == "minimal_no_nonce":
        signed = sign(nonce=None)
    elif variant == "timestamp_200s_old":
        signed = sign(timestamp=sl.now_offset(-200))
    elif variant == "timestamp_200s_ahead":
        signed = sign(timestamp=sl.now_offset(200))
    elif variant == "message_type_3":
        signed = sl.sign_payload(RESET, k, action=ACTION, destination=DESTINATION, message_type=3)
        mt = 3
    elif variant == "unlisted_extra_signature_ignored":
        other, _ = python_key(alg)
        signed = sign()
        junk = sl.sign_payload(RESET, other, action="Other", destination="elsewhere")["signatures"][0]
        signed["signatures"].insert(0, junk)
    elif variant == "two_listed_keys":
        k2, kid2 = python_key("ed25519" if alg != "ed25519" else "secp256r1")
        signed = sl.sign_payload(sign(), k2, action=ACTION, destination=DESTINATION)
        key_ids = [kid, kid2]
    else:
        signed = sign(s_form=variant.split("_")[0])
    sl.verify_payload(signed, key_ids=key_ids, action=ACTION, destination=DESTINATION,
                      message_type=mt or 2)  # the reference agrees
    assert_verified(node_verify(exe, signed, key_ids, message_type=mt), key_ids)


REJECT_CASES = ("tampered_payload", "wrong_destination", "wrong_action", "timestamp_10min_old",
                "timestamp_10min_ahead", "wrong_message_type", "tampered_signer", "wrong_key",
                "key_not_listed", "unknown_algorithm", "algorithm_mismatch", "second_listed_signature_bad",
                "no_signatures")


@pytest.mark.parametrize("case", REJECT_CASES)
@ALGS
def test_node_verify_rejects(exe, alg, case):
    k, kid = python_key(alg)
    other, other_kid = python_key(alg)
    sign = lambda key=k, **kw: sl.sign_payload(RESET, key, action=ACTION, destination=DESTINATION, **kw)  # noqa: E731
    kw = {}
    key_ids = [kid]
    if case == "tampered_payload":
        signed = sign()
        signed["type"] = "OnIdle"
    elif case == "wrong_destination":
        signed, kw = sign(), {"destination": "CS-2"}
    elif case == "wrong_action":
        signed, kw = sign(), {"action": "Reboot"}
    elif case == "timestamp_10min_old":
        signed = sign(timestamp=sl.now_offset(-600))
    elif case == "timestamp_10min_ahead":
        signed = sign(timestamp=sl.now_offset(600))
    elif case == "wrong_message_type":
        signed, kw = sign(), {"message_type": 3}
    elif case == "tampered_signer":
        signed = sign(name="csms")
        signed["signatures"][0]["name"] = "admin"
    elif case == "wrong_key":  # made by another key, claiming ours
        signed = sign(other, kid=kid)
    elif case == "key_not_listed":
        signed, key_ids = sign(), [other_kid]
    elif case == "unknown_algorithm":
        signed = sign(algorithm="ed448")
    elif case == "algorithm_mismatch":  # a real algorithm name that is not the key's
        signed = sign(algorithm={"ed25519": "secp256r1", "secp256r1": "secp384r1", "secp384r1": "ed25519"}[alg])
    elif case == "second_listed_signature_bad":
        # ours is valid, the other listed key's covers another action
        signed = sign()
        signed["signatures"] += sl.sign_payload(RESET, other, action="Reboot", destination=DESTINATION)["signatures"]
        key_ids = [kid, other_kid]
    elif case == "no_signatures":
        signed = dict(RESET)
    else:
        raise AssertionError(case)
    with pytest.raises(sl.SignatureError):  # the reference refuses it too
        sl.verify_payload(signed, key_ids=key_ids, action=kw.get("action", ACTION),
                          destination=kw.get("destination", DESTINATION), message_type=kw.get("message_type", 2))
    assert_refused(node_verify(exe, signed, key_ids, **kw), case.replace("_", " "))


# ---------------------------------------------------------------------------
# 3. RFC 8785: the node signs exactly the bytes ``rfc8785`` makes
# ---------------------------------------------------------------------------


def _node_fragment_mismatches(exe: Path, keyfile: Path, kid: str) -> list[str]:
    """Which traps the node canonicalizes differently (each signed alone, verified in Python)."""
    bad = []
    for label, text in TRICKY_FRAGMENTS:
        payload_text = _tricky_text([(label, text)])
        try:
            signed = node_sign(exe, keyfile, payload_text)
        except AssertionError as e:
            bad.append(f"{label}: sign failed: {str(e)[:300]}")
            continue
        sent = json.loads(payload_text)
        try:
            sl.verify_signature(signed, signed["signatures"][-1], action=ACTION, destination=DESTINATION,
                                expected_key_id=kid, canonical_payload=sent)
        except sl.SignatureError as e:
            bad.append(f"{label}: {e}; rfc8785 payload = {rfc8785.dumps(sent).decode()}")
    return bad


@ALGS
def test_jcs_tricky_payload_node_signs(exe, alg, tmp_path):
    keyfile = tmp_path / f"{alg}.pem"
    kid = node_keygen(exe, alg, keyfile)
    text = _tricky_text()
    sent = json.loads(text)
    signed = node_sign(exe, keyfile, text)
    assert rfc8785.dumps(sl.strip_signatures(signed)) == rfc8785.dumps(sent), (
        "the node printed a payload whose values differ from what it read:\n"
        f"sent:    {rfc8785.dumps(sent).decode()}\nprinted: {rfc8785.dumps(sl.strip_signatures(signed)).decode()}")
    sig = signed["signatures"][-1]
    check_node_signature(sig, alg=alg, kid=kid, name=None)
    try:
        sl.verify_signature(signed, sig, action=ACTION, destination=DESTINATION, expected_key_id=kid,
                            canonical_payload=sent)
    except sl.SignatureError as e:
        detail = _node_fragment_mismatches(exe, keyfile, kid)
        pytest.fail(f"the node's signature over the tricky payload does not cover the rfc8785 bytes ({e}).\n"
                    "traps signed one by one that disagree:\n  - " + "\n  - ".join(detail or ["(none alone)"]),
                    pytrace=False)


@ALGS
def test_jcs_tricky_payload_python_signs(exe, alg):
    k, kid = python_key(alg)
    sent = json.loads(_tricky_text())
    signed = sl.sign_payload(sent, k, action=ACTION, destination=DESTINATION)
    r = node_verify(exe, signed, [kid])
    if r.returncode != 0:
        bad = []
        for label, text in TRICKY_FRAGMENTS:
            one = sl.sign_payload(json.loads(_tricky_text([(label, text)])), k, action=ACTION, destination=DESTINATION)
            if node_verify(exe, one, [kid]).returncode != 0:
                bad.append(f"{label}: {text}")
        pytest.fail("ocpp-node verify refused a signature over the rfc8785 bytes of the tricky payload:\n"
                    f"{describe(r)}\ntraps refused one by one:\n  - " + "\n  - ".join(bad or ["(none alone)"]),
                    pytrace=False)
    assert_verified(r, [kid])
