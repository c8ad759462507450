"""Security of the overlay (ARCHITECTURE §3.2, §3.4, §6.2; the overlay contract's security events).

Each refusal is paired with a control that works on the same nodes, so that a refusal cannot pass
because something is simply down. Each refusal must be logged on the node's stderr with
``security_event=<kind>`` and counted in ``ocpp_security_events_total{kind="<kind>"}``, and the CSMS
must receive nothing from it.

* a plain charger that sends an overlay-form (6-element) array gets a CALLERROR
  (1.6 FormationViolation, 2.0.1 RpcFrameworkError; §6.5 "wrong array length");
* a plain charger that asks for overlay mode gets HTTP 403, on an edge and on a hub; a charger
  (no header) that uses a configured node-peer id gets 403 too;
* a node peer ``rogue`` (allow = ["CP-R*"]) that speaks for, or announces, an id outside its
  allow-list is dropped / not installed; a frame whose path already holds the hub's id is a loop;
* the CSMS refuses one charger at the upgrade: the edge closes that charger's WebSocket (1008);
* a CALL to an unknown destination gets CALLERROR GenericError "unreachable" within the request
  timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from overlaylib import (
    HUB_ID, OVERLAY_HEADERS, OverlayPeer, announcement, as_list, charger_class, security_events, session16,
    status, stderr_lines, wait_log, wait_until, wait_uplink_up,
)

pytestmark = pytest.mark.timeout(240)

PHASE = 60.0
QUIET = 3.0  # how long "nothing arrives" is watched for


async def assert_security_event(node, kind: str, timeout: float = 10.0) -> None:
    line = await wait_log(node, rf"security_event={kind}\b", timeout)
    assert line is not None, (
        f"{node.node_id}: no stderr line with security_event={kind} within {timeout:.0f}s\n"
        + node.output_tail(40))
    n = await security_events(node, kind)
    assert n >= 1, (f"{node.node_id}: ocpp_security_events_total{{kind=\"{kind}\"}} is {n} after a "
                    f"logged {kind} event")


async def hub_and_edge(overlay, csms, hub_timers=None, edge_timers=None):
    hub = await overlay.start_hub(csms.url, peers={"edge1": ["SEC-*", "CP-*"], "rogue": ["CP-R*"]},
                                  timers=hub_timers)
    edge = await overlay.start_edge("edge1", hub.charger_url, uplink_name="hub1", timers=edge_timers)
    await wait_uplink_up(edge, PHASE)
    return hub, edge


# ---------------------------------------------------------------------------
# (a) overlay-form frames from a plain charger
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("version,code", [("ocpp1.6", "FormationViolation"),
                                          ("ocpp2.0.1", "RpcFrameworkError")])
async def test_overlay_frame_from_plain_charger_is_refused(overlay, csms, charger, version, code):
    hub, edge = await hub_and_edge(overlay, csms)
    cid = "SEC-X16" if version == "ocpp1.6" else "SEC-X201"
    cp = await charger(edge.charger_url, cid, version, cp_class=charger_class(version), response_timeout=PHASE)
    conn = (await csms.wait_connected({cid: version}, PHASE))[cid]

    # Control: the charger's plain frames do reach the CSMS.
    from ocpp.v16 import call as call16
    from ocpp.v201 import call as call201
    hb = call16.Heartbeat() if version == "ocpp1.6" else call201.Heartbeat()
    got = await cp.call(hb, suppress=False, unique_id="ctl-hb")
    assert got.current_time == csms.clock(cid), got
    before = len(conn.frames_from_hub())

    # §6.5: a wrong array length with a readable id (element 1, here "CSMS") -> CALLERROR with that id.
    cp.log.expect_call_error("CSMS")
    sent = '[2,"CSMS","CP-X","id1","Heartbeat",{}]'
    n_before = len(cp.log.node_frames())
    await cp.conn.send(sent)

    def reply():
        for text in cp.log.node_frames()[n_before:]:
            try:
                msg = json.loads(text)
            except (TypeError, ValueError):
                continue
            if isinstance(msg, list) and msg and msg[0] == 4:
                return msg
        return None

    err = await wait_until(reply, 10, f"a CALLERROR for the overlay-form frame {sent}",
                           lambda: cp.log.transcript(10))
    assert len(err) == 5, f"plain CALLERROR must have 5 elements: {err}"
    assert err[2] == code, f"{version}: overlay-form frame {sent} answered {err}; want code {code}"
    assert err[1] == "CSMS", (
        f"{version}: CALLERROR {err} for {sent}; §6.5 (wrong array length, id readable) answers with "
        f"the id in the plain id slot, \"CSMS\"")

    await assert_security_event(edge, "overlay_frame_from_charger")
    await asyncio.sleep(QUIET)
    assert len(conn.frames_from_hub()) == before, (
        f"the CSMS received something after the overlay-form frame: "
        f"{conn.frames_from_hub()[before:]}")
    assert not csms.attempts_for("CP-X"), f"the CSMS was contacted for CP-X: {csms.attempts_for('CP-X')}"
    assert set(csms.open_conns()) == {cid}, csms.summary()


# ---------------------------------------------------------------------------
# (b) a charger asking for overlay mode; a charger using a node-peer id
# ---------------------------------------------------------------------------


async def _upgrade_status(url: str, headers: dict | None, subprotocols=("ocpp1.6",)) -> int:
    try:
        ws = await websockets.connect(url, additional_headers=headers, subprotocols=list(subprotocols) or None,
                                      open_timeout=10, ping_interval=None)
    except InvalidStatus as e:
        return e.response.status_code
    await ws.close()
    return 101


async def test_charger_asking_for_overlay_mode_gets_403(overlay, csms, charger):
    hub, edge = await hub_and_edge(overlay, csms)

    # Control: the same listener takes an ordinary charger, and the CSMS sees it.
    await charger(edge.charger_url, "SEC-PLAIN", "ocpp1.6", cp_class=charger_class("ocpp1.6"))
    await csms.wait_connected({"SEC-PLAIN": "ocpp1.6"}, PHASE)

    st = await _upgrade_status(f"{edge.charger_url}/SEC-SNEAKY", OVERLAY_HEADERS)
    assert st == 403, f"edge: a charger id that is not a node peer asked for overlay mode and got HTTP {st}"
    await assert_security_event(edge, "overlay_refused")

    st = await _upgrade_status(f"{hub.charger_url}/SEC-SNEAKY2", OVERLAY_HEADERS, subprotocols=())
    assert st == 403, f"hub: a charger id that is not a node peer asked for overlay mode and got HTTP {st}"
    await assert_security_event(hub, "overlay_refused")

    # A charger (no header) that uses a configured node-peer id is refused as well.
    st = await _upgrade_status(f"{hub.charger_url}/rogue", None)
    assert st == 403, f"hub: a plain charger using the node-peer id 'rogue' got HTTP {st}, want 403"

    await asyncio.sleep(QUIET)
    for cid in ("SEC-SNEAKY", "SEC-SNEAKY2", "rogue"):
        assert not csms.attempts_for(cid), f"the CSMS was contacted for {cid}: {csms.attempts_for(cid)}"
    assert set(csms.open_conns()) == {"SEC-PLAIN"}, csms.summary()
    st = await status(edge)
    assert [c.get("id") for c in st.get("chargers") or []] == ["SEC-PLAIN"], st.get("chargers")


# ---------------------------------------------------------------------------
# (c) a node peer outside its allow-list; a loop
# ---------------------------------------------------------------------------


async def test_node_peer_outside_its_allow_list(overlay, csms):
    hub = await overlay.start_hub(csms.url, peers={"rogue": ["CP-R*"]})
    rogue = await OverlayPeer.connect(hub.charger_url, "rogue")
    try:
        # Control: an allowed announcement opens a CSMS socket, and an allowed CALL gets through.
        await rogue.send([6, "CSMS", "rogue", str(uuid.uuid4()), "NotifyNetworkTopology",
                          announcement("rogue", [("CP-R1", "ocpp1.6")], full=True, ttl=120)])
        conn = (await csms.wait_connected({"CP-R1": "ocpp1.6"}, PHASE))["CP-R1"]
        assert conn.subprotocol == "ocpp1.6", conn.subprotocol
        await rogue.send([2, "CSMS", "CP-R1", "u-ok", "Heartbeat", {}])
        ok = await rogue.wait_frame(lambda f: isinstance(f, list) and len(f) >= 4 and f[3] == "u-ok", 10)
        assert ok is not None, f"no reply to an allowed CALL; rogue got {rogue.frames}\n" + hub.output_tail(30)
        assert ok[0] == 3 and as_list(ok[1]) == ["CP-R1"] and ok[4] == {"currentTime": csms.clock("CP-R1")}, ok
        assert [a for _, a, _ in csms.calls("CP-R1")] == ["Heartbeat"], csms.calls("CP-R1")

        # A CALL whose path[0] is outside the allow-list: dropped, logged, nothing at the CSMS.
        await rogue.send([2, "CSMS", "CP-OTHER", "u-bad", "Heartbeat", {}])
        await assert_security_event(hub, "path_not_allowed")

        # An announcement of an id outside the allow-list: not installed, logged, no CSMS socket.
        await rogue.send([6, "CSMS", "rogue", str(uuid.uuid4()), "NotifyNetworkTopology",
                          announcement("rogue", [("CP-OTHER", "ocpp1.6")], full=False, ttl=120)])
        await assert_security_event(hub, "route_not_allowed")

        # A frame that already passed through the hub: a loop, dropped and logged.
        await rogue.send([2, "CSMS", ["CP-R1", HUB_ID], "u-loop", "Heartbeat", {}])
        await assert_security_event(hub, "loop")

        await asyncio.sleep(QUIET)
        assert not csms.attempts_for("CP-OTHER"), (
            f"the hub contacted the CSMS for CP-OTHER: {csms.attempts_for('CP-OTHER')}")
        assert [a for _, a, _ in csms.calls("CP-R1")] == ["Heartbeat"], (
            f"the CSMS received more than the one allowed Heartbeat: {csms.calls('CP-R1')}")
        assert conn.open, "the allowed charger's CSMS socket closed"
        assert set(csms.open_conns()) == {"CP-R1"}, csms.summary()
        assert not rogue.frames_with_id("u-bad"), f"a dropped frame was answered: {rogue.frames_with_id('u-bad')}"
        hs = await status(hub)
        dests = [r.get("destination") for r in hs.get("routes") or []]
        assert "CP-OTHER" not in dests and "CP-R1" in dests, f"hub routes: {json.dumps(hs.get('routes'))}"
        assert "CP-OTHER" not in [c.get("charger") for c in hs.get("csmsConnections") or []], hs
    finally:
        await rogue.close()


# ---------------------------------------------------------------------------
# (d) the CSMS refuses one charger
# ---------------------------------------------------------------------------


async def test_csms_refusal_closes_the_charger(overlay, csms, charger):
    csms.refuse["CP-REFUSED"] = 403
    hub, edge = await hub_and_edge(overlay, csms)

    # Control: another charger on the same edge is accepted and keeps working.
    fine = await charger(edge.charger_url, "SEC-FINE", "ocpp1.6", cp_class=charger_class("ocpp1.6"),
                         response_timeout=PHASE)
    await csms.wait_connected({"SEC-FINE": "ocpp1.6"}, PHASE)

    ws = await websockets.connect(f"{edge.charger_url}/CP-REFUSED", subprotocols=["ocpp1.6"],
                                  open_timeout=10, ping_interval=None)
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(ws.wait_closed(), 10)
    except asyncio.TimeoutError:
        await ws.close()
        pytest.fail(f"the edge kept CP-REFUSED connected for 10 s after the CSMS refused it "
                    f"(CSMS attempts: {[(a.path, a.status) for a in csms.attempts_for('CP-REFUSED')]})\n"
                    + edge.output_tail(30) + hub.output_tail(30), pytrace=False)
    took = time.monotonic() - t0
    rcvd = ws.protocol.close_rcvd
    code = rcvd.code if rcvd is not None else None
    assert code == 1008, (f"the edge closed CP-REFUSED after {took:.1f}s with close code {code} "
                          f"(received close frame: {rcvd}); the contract says 1008")
    refused = csms.attempts_for("CP-REFUSED")
    assert refused and all(a.status == 403 for a in refused), refused
    assert not csms.conns("CP-REFUSED"), csms.summary()

    def logged_why():
        # A line about CP-REFUSED that says it was refused (the id itself contains "REFUSED").
        return [l for l in stderr_lines(edge)
                if "CP-REFUSED" in l and re.search(r"(?i)refus|\b403\b", l.replace("CP-REFUSED", ""))]

    await wait_until(logged_why, 5, "an edge log line saying why CP-REFUSED was closed",
                     lambda: edge.output_tail(30))

    await session16(fine, csms, full=False)
    assert csms.conn("SEC-FINE").open


# ---------------------------------------------------------------------------
# (e) unreachable destination
# ---------------------------------------------------------------------------


async def test_call_to_unknown_destination_is_answered_unreachable(overlay, csms):
    hub = await overlay.start_hub(csms.url, peers={"rogue": ["CP-R*"]}, timers={"request_timeout_s": 5})
    rogue = await OverlayPeer.connect(hub.charger_url, "rogue")
    try:
        t0 = time.monotonic()
        await rogue.send([2, "NOWHERE", "rogue", "u1", "Heartbeat", {}])
        got = await rogue.wait_frame(lambda f: isinstance(f, list) and len(f) >= 4 and f[3] == "u1", 10)
        took = time.monotonic() - t0
        assert got is not None, (f"no answer within 10 s (request_timeout_s = 5) to a CALL for NOWHERE; "
                                 f"rogue got {rogue.frames}\n" + hub.output_tail(30))
        assert got[0] == 4 and len(got) == 7, f"want a 7-element overlay CALLERROR, got {got}"
        assert as_list(got[1]) == ["rogue"], f"dest of the CALLERROR must be the originator: {got}"
        assert as_list(got[2]) == [HUB_ID], f"path of the CALLERROR must be [hub id]: {got}"
        assert got[4] == "GenericError" and got[5] == "unreachable", got
        assert isinstance(got[6], dict), got
        assert took <= 10, took
        await asyncio.sleep(1)
        assert not csms.attempts, f"the CSMS was contacted: {[(a.path, a.status) for a in csms.attempts]}"
    finally:
        await rogue.close()
