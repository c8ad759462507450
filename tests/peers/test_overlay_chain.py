"""A chain of nodes: charger -> edge1 -> edge2 -> hub -> CSMS (ARCHITECTURE §3.1, §3.4, §6.1, §6.2).

edge1's uplink is edge2; edge2 accepts edge1 as a node peer and has its own uplink to the hub; the
hub accepts edge2 (allowed to speak for the chargers and for edge1). A 1.6 and a 2.0.1 charger boot
and heartbeat through the chain; the hub records the overlay path of each charger
(``csmsConnections[].path == [<charger>, "edge1", "edge2"]``); CSMS-initiated calls reach the
chargers back down the chain and their results return to the CSMS.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from overlaylib import (
    HUB_ID, charger_class, check_relayed, csms_initiated16, csms_initiated201, listener_port, session16,
    session201, status, wait_until, wait_uplink_up,
)

pytestmark = pytest.mark.timeout(300)

CP16 = "CHAIN-16"
CP201 = "CHAIN-201"
VERSIONS = {CP16: "ocpp1.6", CP201: "ocpp2.0.1"}
PHASE = 60.0


async def test_charger_edge_edge_hub_csms(overlay, csms, charger):
    hub = await overlay.start_hub(csms.url, peers={"edge2": ["CHAIN-*", "edge1"]})
    edge2 = await overlay.start_node("edge2", "edge", uplinks=[("hub", hub.charger_url)],
                                     peers={"edge1": ["CHAIN-*"]})
    await wait_uplink_up(edge2, PHASE)
    edge1 = await overlay.start_edge("edge1", edge2.charger_url, uplink_name="edge2")
    await wait_uplink_up(edge1, PHASE)

    s1 = await status(edge1)
    ups = s1["uplinks"]
    assert ups[0]["remoteAddr"].endswith(f":{listener_port(edge2)}"), (
        f"edge1's uplink must go to edge2 (port {listener_port(edge2)}): {ups}")

    cps = {}
    for cid, v in VERSIONS.items():
        cps[cid] = await charger(edge1.charger_url, cid, v, cp_class=charger_class(v), response_timeout=PHASE)

    live = await csms.wait_connected(VERSIONS, PHASE)
    for cid, v in VERSIONS.items():
        assert live[cid].subprotocol == v, (cid, live[cid].subprotocol)
        assert live[cid].path == f"/ocpp/{cid}", (cid, live[cid].path)

    # Boot and heartbeat through three nodes; the answers are the CSMS's, for this charger.
    await asyncio.wait_for(asyncio.gather(session16(cps[CP16], csms, full=False),
                                          session201(cps[CP201], csms, full=False)), PHASE)
    for cid in VERSIONS:
        check_relayed(cps[cid], csms, ["BootNotification", "Heartbeat"])

    # The hub knows where each charger is: the last overlay path it saw from it.
    async def paths_seen():
        hs = await status(hub)
        conns = {c.get("charger"): c for c in hs.get("csmsConnections") or []}
        for cid, v in VERSIONS.items():
            c = conns.get(cid)
            assert c is not None, f"{cid} missing from hub csmsConnections: {json.dumps(hs.get('csmsConnections'))}"
            assert c.get("path") == [cid, "edge1", "edge2"], (
                f"hub csmsConnections path for {cid} is {c.get('path')}, want {[cid, 'edge1', 'edge2']}")
            assert c.get("ocppVersion") == v and c.get("state") == "open", c
        return True

    await wait_until(paths_seen, 10, "the hub's csmsConnections paths")

    # The middle node: the chargers are reachable through its inbound link from edge1.
    s2 = await status(edge2)
    inbound = [l for l in s2.get("overlayLinks") or [] if l.get("direction") == "inbound"]
    assert len(inbound) == 1 and inbound[0].get("peer") == "edge1", (
        f"edge2 overlayLinks: {json.dumps(s2.get('overlayLinks'))}; want one inbound link from edge1")
    routes = {r.get("destination"): r for r in s2.get("routes") or []}
    for cid in VERSIONS:
        assert cid in routes and routes[cid].get("link") == inbound[0].get("link"), (
            f"edge2 routes: {json.dumps(s2.get('routes'))}; want {cid} via edge1's link")
    assert not s2.get("chargers"), f"no charger is attached to edge2 itself: {s2.get('chargers')}"
    hs = await status(hub)
    hlinks = hs.get("overlayLinks") or []
    assert len(hlinks) == 1 and hlinks[0].get("peer") == "edge2", (
        f"hub overlayLinks: {json.dumps(hlinks)}; want one inbound link from edge2 only")

    # CSMS-initiated calls go down the chain; results come back up to the CSMS.
    await asyncio.wait_for(asyncio.gather(csms_initiated16(csms, cps[CP16]),
                                          csms_initiated201(csms, cps[CP201])), PHASE)
    assert len(csms.connections) == len(VERSIONS), csms.summary()
    assert HUB_ID == (await status(hub))["node"]["id"]
