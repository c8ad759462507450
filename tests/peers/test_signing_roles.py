"""The OCPP firewall end to end (ARCHITECTURE §3.5): CSMS -> hub -> edge2 -> edge1 -> charger.

The charger-side edge (edge1) requires a Reset for its chargers to be signed by a key whose role
allows it. Keys are made with the Python ``cryptography`` package and signatures with the
``rfc8785`` package (signinglib), so the node's verifier is checked against an independent
implementation. The hub and edge2 only forward: the signed payload crosses three overlay hops
and reaches the charger byte for byte (edge1 keeps ``signatures`` for it), where it verifies.
Refusals come back to the CSMS as CALLERROR SecurityError, never reach the charger, and are
recorded as security events. A SIGHUP that adds a role applies without a reconnect; an invalid
one changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from dataclasses import dataclass

import pytest
from ocpp.exceptions import OCPPError
from ocpp.routing import on
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call_result as result201

import signinglib as sl
from overlaylib import security_events, session201, status, wait_log, wait_until, wait_uplink_up

pytestmark = pytest.mark.timeout(300)

CID = "SIG-201"
PHASE = 60.0


@dataclass
class Reset:
    """A 2.0.1 Reset whose payload may carry signatures (the class name is the action)."""
    type: str
    signatures: list | None = None


class SignedCharger(CP201):
    """Takes a Reset with a ``signatures`` member, which the 2.0.1 schema would refuse."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.resets = 0

    @on("BootNotification")
    def on_boot(self, **kw):  # never called: the charger only sends boots
        raise AssertionError

    @on("Reset", skip_schema_validation=True)
    def on_reset(self, type, **kw):
        self.resets += 1
        return result201.Reset(status="Accepted")


def roles_toml(roles: dict[str, tuple[list[str], list[str]]], deliver: bool = True) -> str:
    out = [f"[signing]\ndeliver_signatures = {'true' if deliver else 'false'}\n"]
    for name, (keys, actions) in roles.items():
        ks = ", ".join(json.dumps(k) for k in keys)
        acts = ", ".join(json.dumps(a) for a in actions)
        out.append(f'[[signing.role]]\nname = "{name}"\nkeys = [{ks}]\nactions = [{acts}]\n')
    req = ", ".join(json.dumps(r) for r in roles)
    out.append('[[signing.policy]]\ndirection = "in"\naction = "Reset"\ndestination = "SIG-*"\n'
               f'check = "require-any"\nroles = [{req}]\n')
    return "\n".join(out)


def reset(key=None, *, destination: str = CID, timestamp: str | None = None, nonce: str = "n") -> Reset:
    payload = {"type": "Immediate"}
    if key is not None:
        kw = {"nonce": nonce}
        if timestamp is not None:
            kw["timestamp"] = timestamp
        payload = sl.sign_payload(payload, key, action="Reset", destination=destination, **kw)
    return Reset(type=payload["type"], signatures=payload.get("signatures"))


async def refused(csms, payload: Reset, uid: str) -> str:
    csms.conn(CID).log.expect_call_error(uid)
    with pytest.raises(OCPPError) as e:
        await csms.conn(CID).cp.call(payload, suppress=False, unique_id=uid, skip_schema_validation=True)
    assert type(e.value).__name__ == "SecurityError", (
        f"{uid}: want CALLERROR SecurityError, got {type(e.value).__name__}: {e.value}")
    return str(e.value)


def received_resets(cp) -> list[str]:
    """The raw text of every Reset frame the charger received."""
    out = []
    for f in cp.log.frames:
        if f.direction == "node->peer" and isinstance(f.text, str) and '"Reset"' in f.text:
            out.append(f.text)
    return out


def payload_text(frame: str) -> str:
    """The payload's exact bytes inside a CALL frame text."""
    at = frame.index('"Reset"') + len('"Reset"')
    return frame[frame.index("{", at):frame.rindex("}") + 1]


async def test_roles_tampering_replay_three_hops_and_sighup(overlay, csms, charger):
    admin = sl.generate_key("ed25519")
    user = sl.generate_key("secp256r1")
    stranger = sl.generate_key("secp384r1")
    ops = sl.generate_key("secp384r1")
    roles = {"admin": ([sl.key_id(admin)], ["*"]), "user": ([sl.key_id(user)], ["Get*"])}

    hub = await overlay.start_hub(csms.url, peers={"edge2": ["SIG-*", "edge1"]})
    edge2 = await overlay.start_node("edge2", "edge", uplinks=[("hub", hub.charger_url)],
                                     peers={"edge1": ["SIG-*"]})
    await wait_uplink_up(edge2, PHASE)
    edge1 = await overlay.start_edge("edge1", edge2.charger_url, uplink_name="edge2",
                                     extra=roles_toml(roles))
    await wait_uplink_up(edge1, PHASE)
    cp = await charger(edge1.charger_url, CID, "ocpp2.0.1", cp_class=SignedCharger, response_timeout=PHASE)
    await csms.wait_connected({CID: "ocpp2.0.1"}, PHASE)
    await asyncio.wait_for(session201(cp, csms, full=False), PHASE)
    events0 = await security_events(edge1, "signature_refused")

    # An admin-signed Reset reaches the charger with the CSMS's bytes, and verifies there.
    signed = reset(admin, nonce="a-1")
    r = await csms.conn(CID).cp.call(signed, suppress=False, unique_id="sig-admin",
                                     skip_schema_validation=True)
    assert r.status == "Accepted"
    sent = [t for t in (f.text for f in csms.conn(CID).log.frames if f.direction == "peer->node")
            if isinstance(t, str) and "sig-admin" in t]
    got = received_resets(cp)
    assert len(sent) == 1 and len(got) == 1, (sent, got)
    assert payload_text(got[0]) == payload_text(sent[0]), (
        f"the payload changed on the way:\nCSMS sent {payload_text(sent[0])}\ncharger got {payload_text(got[0])}")
    at_charger = json.loads(payload_text(got[0]))
    sl.verify_payload(at_charger, key_ids=[sl.key_id(admin)], action="Reset", destination=CID)
    # edge1 delivers signatures to this charger on purpose (deliver_signatures), which the
    # 2.0.1 schema does not allow: this frame was checked here, so it leaves the log's audit.
    cp.log.frames = [f for f in cp.log.frames if f.text is not got[0]]

    # Unsigned, by a user key, by an unknown key, tampered, replayed, outside the window:
    # each is a SecurityError and never reaches the charger.
    why = {}
    why["unsigned"] = await refused(csms, reset(), "sig-unsigned")
    why["user"] = await refused(csms, reset(user, nonce="u-1"), "sig-user")
    why["stranger"] = await refused(csms, reset(stranger, nonce="s-1"), "sig-stranger")
    tampered = reset(admin, nonce="a-2")
    tampered.type = "OnIdle"
    why["tampered"] = await refused(csms, tampered, "sig-tampered")
    why["other charger"] = await refused(csms, reset(admin, destination="SIG-OTHER", nonce="a-3"), "sig-moved")
    why["replay"] = await refused(csms, signed, "sig-replay")
    why["old"] = await refused(csms, reset(admin, timestamp=sl.now_offset(-600), nonce="a-4"), "sig-old")
    assert cp.resets == 1, f"the charger got {cp.resets} Resets; refusals: {why}"
    assert "must be signed" in why["unsigned"], why
    assert "no role" in why["user"], why
    assert "no known key" in why["stranger"], why
    assert "does not verify" in why["tampered"] and "does not verify" in why["other charger"], why
    assert "replayed" in why["replay"], why
    assert "window" in why["old"], why

    async def counted():
        return await security_events(edge1, "signature_refused") - events0 >= 7
    await wait_until(counted, 10, "7 signature_refused security events at edge1")

    # SIGHUP adding a role: applies without a reconnect.
    conns_before = len(csms.conns(CID))
    roles["ops"] = ([sl.key_id(ops)], ["Reset"])
    text = edge1.config_path.read_text().replace(
        'roles = ["admin", "user"]', 'roles = ["admin", "user", "ops"]', 1) + (
        f'\n[[signing.role]]\nname = "ops"\nkeys = ["{sl.key_id(ops)}"]\nactions = ["Reset"]\n')
    edge1.config_path.write_text(text)
    os.kill(edge1.proc.pid, signal.SIGHUP)
    assert await wait_log(edge1, "signature policies reloaded", 15), "edge1 did not reload on SIGHUP"
    r = await csms.conn(CID).cp.call(reset(ops, nonce="o-1"), suppress=False, unique_id="sig-ops",
                                     skip_schema_validation=True)
    assert r.status == "Accepted" and cp.resets == 2
    cp.log.frames = [f for f in cp.log.frames if not (isinstance(f.text, str) and '"Reset"' in f.text)]
    assert len(csms.conns(CID)) == conns_before and csms.conn(CID).open, "a connection was dropped"
    signing = (await status(edge1)).get("signing") or {}
    assert [r["name"] for r in signing.get("roles", [])] == ["admin", "user", "ops"], signing
    assert cp.ws.state.name == "OPEN"

    # An invalid reload changes nothing: ops still passes, and every mistake is logged.
    edge1.config_path.write_text(text + '\n[[signing.policy]]\ndirection = "sideways"\ncheck = "maybe"\n')
    os.kill(edge1.proc.pid, signal.SIGHUP)
    line = await wait_log(edge1, "SIGHUP: the config has mistakes", 15)
    assert line, "edge1 did not report the invalid reload"
    assert await wait_log(edge1, "direction", 5) and await wait_log(edge1, "check", 5)
    await asyncio.sleep(1.5)  # past the stage's tick, had anything been swapped
    r = await csms.conn(CID).cp.call(reset(ops, nonce="o-2"), suppress=False, unique_id="sig-ops-2",
                                     skip_schema_validation=True)
    assert r.status == "Accepted" and cp.resets == 3
    cp.log.frames = [f for f in cp.log.frames if not (isinstance(f.text, str) and '"Reset"' in f.text)]
    why["unsigned again"] = await refused(csms, reset(), "sig-unsigned-2")
    s = await status(edge1)
    assert any(c.get("id") == CID or c.get("charger") == CID for c in s.get("chargers") or []), s.get("chargers")


def es256_jws(key, action: str, payload: dict, message_type: int = 2) -> dict:
    """OCPP Part 4 ch. 7: the flattened JWS of a payload, made with ``cryptography``."""
    import base64
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    def b64u(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    header = b64u(json.dumps({"alg": "ES256", "OCPPAction": action,
                              "OCPPMessageTypedId": message_type}).encode())
    body = b64u(json.dumps(payload).encode())
    r, s = decode_dss_signature(key.sign(f"{header}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
    return {"protected": header, "payload": body,
            "signature": b64u(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}


async def test_ocpp_jws_passes_through_and_can_be_required(overlay, csms, charger, tmp_path):
    from dataclasses import make_dataclass

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    trusted = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "csms-jws.pem"
    pem.write_bytes(trusted.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    policy = (f'[signing]\njws_trust = ["{pem}"]\n'
              '[[signing.policy]]\ndirection = "in"\naction = "Reset"\ncheck = "require-jws"\n')
    hub = await overlay.start_hub(csms.url, peers={"edge1": ["SIG-*"]})
    edge1 = await overlay.start_edge("edge1", hub.charger_url, uplink_name="hub", extra=policy)
    await wait_uplink_up(edge1, PHASE)
    cp = await charger(edge1.charger_url, CID, "ocpp2.0.1", cp_class=SignedCharger, response_timeout=PHASE)
    await csms.wait_connected({CID: "ocpp2.0.1"}, PHASE)
    await asyncio.wait_for(session201(cp, csms, full=False), PHASE)
    ResetSigned = make_dataclass("Reset-Signed", [("protected", str), ("payload", str), ("signature", str)])
    conn = csms.conn(CID)

    # A trusted JWS passes through byte for byte; the charger has no handler for it and says so.
    jws = es256_jws(trusted, "Reset", {"type": "Immediate"})
    conn.log.expect_call_error("jws-ok")
    with pytest.raises(OCPPError) as e:
        await conn.cp.call(ResetSigned(**jws), suppress=False, unique_id="jws-ok", skip_schema_validation=True)
    assert type(e.value).__name__ != "SecurityError", f"a trusted JWS was refused: {e.value}"
    got = [f.text for f in cp.log.frames if f.direction == "node->peer" and isinstance(f.text, str)
           and "Reset-Signed" in f.text]
    sent = [f.text for f in conn.log.frames if f.direction == "peer->node" and isinstance(f.text, str)
            and "jws-ok" in f.text]
    assert len(got) == 1 and len(sent) == 1, (got, sent)
    inner = lambda t: t[t.index("{", t.index('"Reset-Signed"')):t.rindex("}") + 1]  # noqa: E731
    assert inner(got[0]) == inner(sent[0]), (got, sent)
    # The charger's schema audit knows no Reset-Signed; this frame and its answer were checked here.
    cp.log.frames = [f for f in cp.log.frames if not (isinstance(f.text, str) and "jws-ok" in f.text)]

    # An unsigned Reset, a JWS by another key, a replay, or one bound to another action: refused.
    why = {
        "unsigned": await refused(csms, reset(), "jws-unsigned"),
    }
    for uid, payload in [("jws-other", es256_jws(other, "Reset", {"type": "Immediate"})),
                         ("jws-replay", jws),
                         ("jws-moved", es256_jws(trusted, "ClearCache", {"type": "Immediate"}))]:
        conn.log.expect_call_error(uid)
        with pytest.raises(OCPPError) as e:
            await conn.cp.call(ResetSigned(**payload), suppress=False, unique_id=uid, skip_schema_validation=True)
        assert type(e.value).__name__ == "SecurityError", (uid, e.value)
        why[uid] = str(e.value)
    assert "Reset-Signed" in why["unsigned"], why
    assert "trusted key" in why["jws-other"] and "replayed" in why["jws-replay"], why
    assert cp.resets == 0
    assert [f for f in cp.log.frames if isinstance(f.text, str) and "Reset" in f.text
            and "jws-ok" not in f.text and f.direction == "node->peer"] == []
