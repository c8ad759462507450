"""The node answers a peer's WebSocket Close with its own Close (RFC 6455 §5.5.1, issue 15).

An endpoint that receives a Close frame must send a Close frame in response before it closes the
TCP connection. A node that just drops the connection leaves the peer with an abnormal closure
(1006): mobilityhouse ``ChargePoint.start()`` then raises
``ConnectionClosedError: sent 1000 (OK); no close frame received``.

Checked here with ``websockets`` as the independent peer, on every kind of link the node has:

* a charger on the charger listener of a standalone node (plain ``websockets`` and a mobilityhouse
  ``ocpp`` ChargePoint whose ``start()`` must end with ``ConnectionClosedOK``);
* a raw overlay peer (a configured node peer in overlay mode) on a hub's listener;
* the hub's per-charger socket to the CSMS, when the CSMS closes it (server side of the close).

Every wait is bounded; ``close_timeout`` is explicit so a missing reply shows up as a 1006 within
a few seconds, not as a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import websockets
from websockets.protocol import State

from overlaylib import OVERLAY_HEADERS, charger_class, wait_until
from peerlib import FrameLog, RecordingConnection

pytestmark = pytest.mark.timeout(120)

# How long the peer waits for the node's Close reply (and then the TCP close) after its own Close.
CLOSE_TIMEOUT = 5.0
PHASE = 30.0


def close_report(ws) -> str:
    p = ws.protocol
    return (f"state={p.state.name} close_sent={p.close_sent!r} close_rcvd={p.close_rcvd!r} "
            f"close_rcvd_then_sent={p.close_rcvd_then_sent!r} close_code={ws.close_code!r}")


def assert_close_answered(ws, code: int, who: str) -> None:
    """``ws`` sent a Close with ``code`` first; the node must have answered with its own Close."""
    p = ws.protocol
    assert p.close_sent is not None and p.close_sent.code == code, (
        f"{who}: the peer's own Close({code}) was not sent: {close_report(ws)}")
    assert p.close_rcvd is not None, (
        f"{who}: the node did not answer the peer's Close({code}) with a Close frame "
        f"(RFC 6455 §5.5.1); abnormal closure: {close_report(ws)}")
    assert p.close_rcvd_then_sent is False, (
        f"{who}: the peer's Close must have come first and the node's second: {close_report(ws)}")
    # tungstenite echoes the code of the Close it answers.
    assert p.close_rcvd.code == code, (
        f"{who}: the node's Close reply carries code {p.close_rcvd.code}, want the echoed {code}: "
        f"{close_report(ws)}")
    assert ws.close_code == code and ws.close_code != 1006, (
        f"{who}: closing handshake incomplete: {close_report(ws)}")
    assert p.state is State.CLOSED, f"{who}: connection not closed: {close_report(ws)}"


async def close_and_wait(ws, code: int = 1000, reason: str = "bye") -> float:
    """Send Close(code) and wait (bounded) for the handshake and the TCP close; returns seconds."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(ws.close(code=code, reason=reason), CLOSE_TIMEOUT + 5)
    await asyncio.wait_for(ws.wait_closed(), CLOSE_TIMEOUT + 5)
    return loop.time() - t0


# ---------------------------------------------------------------------------
# Charger listener
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
async def test_charger_close_is_answered_by_the_node(node, version):
    """A bare ``websockets`` charger closes with 1000 right after a Heartbeat was answered."""
    cid = f"CLOSE-RAW-{version[-3:].replace('.', '')}"
    ws = await websockets.connect(f"{node.charger_url}/{cid}", subprotocols=[version], open_timeout=10,
                                  ping_interval=None, close_timeout=CLOSE_TIMEOUT)
    try:
        assert ws.subprotocol == version, ws.subprotocol
        # One exchange first, so the session is fully set up inside the node.
        # Heartbeat has an empty request payload in both 1.6 and 2.0.1.
        await ws.send(json.dumps([2, "close-hb-1", "Heartbeat", {}]))
        reply = await asyncio.wait_for(ws.recv(), 10)
        assert '"close-hb-1"' in reply, reply
        took = await close_and_wait(ws, 1000, "charger done")
    finally:
        with contextlib.suppress(Exception):
            ws.transport.abort()
    assert_close_answered(ws, 1000, f"charger {cid} on {node.charger_url}")
    assert took < CLOSE_TIMEOUT, (
        f"the closing handshake took {took:.2f}s (>= close_timeout {CLOSE_TIMEOUT}s): "
        f"the node's Close reply came late or the peer gave up: {close_report(ws)}")


async def test_charger_close_other_code_is_echoed(node):
    """A charger closing with 1001 (going away) gets a Close back too, not a dropped TCP."""
    ws = await websockets.connect(f"{node.charger_url}/CLOSE-1001", subprotocols=["ocpp1.6"], open_timeout=10,
                                  ping_interval=None, close_timeout=CLOSE_TIMEOUT)
    try:
        await close_and_wait(ws, 1001, "rebooting")
    finally:
        with contextlib.suppress(Exception):
            ws.transport.abort()
    assert_close_answered(ws, 1001, "charger CLOSE-1001")


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
async def test_mobilityhouse_chargepoint_ends_cleanly(node, frame_logs, version):
    """The symptom of issue 15: ``ChargePoint.start()`` must end with ConnectionClosedOK (1000 both
    ways), not ``ConnectionClosedError: sent 1000 (OK); no close frame received``."""
    cid = f"CLOSE-CP-{version[-3:].replace('.', '')}"
    ws = await websockets.connect(f"{node.charger_url}/{cid}", subprotocols=[version], open_timeout=10,
                                  ping_interval=None, close_timeout=CLOSE_TIMEOUT)
    log = FrameLog(version, label=f"{cid}@{node.charger_url}")
    frame_logs.append(log)
    cp = charger_class(version)(cid, RecordingConnection(ws, log), response_timeout=15)
    task = asyncio.create_task(cp.start(), name=f"cp-{cid}")
    try:
        if version == "ocpp1.6":
            from ocpp.v16 import call
            res = await asyncio.wait_for(cp.call(call.BootNotification(
                charge_point_model="CloseTest", charge_point_vendor="PyPeer")), 15)
        else:
            from ocpp.v201 import call
            res = await asyncio.wait_for(cp.call(call.BootNotification(
                charging_station={"model": "CloseTest", "vendor_name": "PyPeer"}, reason="PowerUp")), 15)
        assert res.status == "Accepted", res
        await close_and_wait(ws, 1000, "charger done")
        done, _ = await asyncio.wait({task}, timeout=CLOSE_TIMEOUT + 5)
        assert task in done, f"ChargePoint.start() still running after the close: {close_report(ws)}"
        exc = task.exception()
        assert isinstance(exc, websockets.ConnectionClosedOK), (
            f"ChargePoint.start() ended with {exc!r}; want ConnectionClosedOK after a clean "
            f"closing handshake: {close_report(ws)}")
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        with contextlib.suppress(Exception):
            ws.transport.abort()
    assert_close_answered(ws, 1000, f"ChargePoint {cid}")


async def test_node_still_serves_after_a_close(node):
    """After a charger's clean close the same id reconnects and is answered."""
    url = f"{node.charger_url}/CLOSE-AGAIN"
    for round_ in range(2):
        ws = await websockets.connect(url, subprotocols=["ocpp1.6"], open_timeout=10, ping_interval=None,
                                      close_timeout=CLOSE_TIMEOUT)
        try:
            await ws.send(f'[2,"again-{round_}","Heartbeat",{{}}]')
            reply = await asyncio.wait_for(ws.recv(), 10)
            assert f'"again-{round_}"' in reply, reply
            await close_and_wait(ws, 1000)
        finally:
            with contextlib.suppress(Exception):
                ws.transport.abort()
        assert_close_answered(ws, 1000, f"CLOSE-AGAIN round {round_}")


# ---------------------------------------------------------------------------
# Overlay link (a node peer on a hub's listener)
# ---------------------------------------------------------------------------


async def test_overlay_peer_close_is_answered(overlay, csms):
    hub = await overlay.start_hub(csms.url, peers={"peer1": ["CP-P*"]})
    ws = await websockets.connect(f"{hub.charger_url}/peer1", additional_headers=OVERLAY_HEADERS,
                                  open_timeout=10, ping_interval=None, close_timeout=CLOSE_TIMEOUT)
    try:
        await close_and_wait(ws, 1000, "peer leaving")
    finally:
        with contextlib.suppress(Exception):
            ws.transport.abort()
    assert_close_answered(ws, 1000, f"overlay peer1 on hub {hub.charger_url}")


# ---------------------------------------------------------------------------
# The hub's per-charger socket to the CSMS: the CSMS closes it
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
async def test_csms_close_is_answered_by_the_hub(overlay, csms, charger, version):
    cid = f"CLOSE-CSMS-{version[-3:].replace('.', '')}"
    hub = await overlay.start_hub(csms.url, peers={})
    cp = await charger(hub.charger_url, cid, version, cp_class=charger_class(version), response_timeout=PHASE)
    assert cp.ws.subprotocol == version
    live = await csms.wait_connected({cid: version}, PHASE)
    c = live[cid]
    ws = c.ws  # the server side of the hub's socket
    ws.close_timeout = CLOSE_TIMEOUT
    assert ws.state is State.OPEN, close_report(ws)

    await close_and_wait(ws, 1000, "csms closing")
    # The CSMS's ChargePoint handler saw the connection end too (bounded).
    await asyncio.wait_for(c.closed.wait(), CLOSE_TIMEOUT + 5)
    assert_close_answered(ws, 1000, f"CSMS side of the hub's socket for {cid}")

    # The hub redials the CSMS for the still-attached charger (ARCHITECTURE §6.2: as the charger
    # itself would), and the new socket carries the charger's traffic.
    def redialled():
        conns = csms.conns(cid)
        return conns[-1] if len(conns) >= 2 and conns[-1].open else None

    again = await wait_until(redialled, PHASE, f"the hub's new CSMS socket for {cid}",
                             lambda: f"CSMS connections: {csms.summary()}")
    assert again.subprotocol == version, again.subprotocol
