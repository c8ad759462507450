"""Multiplexing: 50 chargers (25 x OCPP 1.6, 25 x OCPP 2.0.1) on one edge share ONE overlay
connection to the hub, and an unmodified CSMS sees each of them as if it were attached directly
(ARCHITECTURE §3.2, §3.4, §6.1, §6.2).

    50 x mobilityhouse ChargePoint --plain--> edge1 ==one overlay socket==> hub --50 x plain--> CSMS

Everything is a real process or a real socket: two ``ocpp-node`` processes, the chargers and the
CSMS (mobilityhouse ``ocpp`` on ``websockets``) in this test. Every frame the edge sends a charger
and every frame the hub sends the CSMS is validated against the OCA schemas (conftest).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from overlaylib import (
    HUB_ID, SESSION16_ACTIONS, SESSION201_ACTIONS, charger_class, check_relayed, csms_initiated16,
    csms_initiated201, established, listener_port, metric_sum, metrics, session16, session201, status,
    wait_until, wait_uplink_up,
)

pytestmark = pytest.mark.timeout(600)

N = 25
IDS16 = [f"MUX16-{i:02d}" for i in range(N)]
IDS201 = [f"MUX201-{i:02d}" for i in range(N)]
VERSIONS = {**{c: "ocpp1.6" for c in IDS16}, **{c: "ocpp2.0.1" for c in IDS201}}
PHASE = 60.0  # seconds per phase; the machine has 2 cores and is loaded


def one_uplink_socket(edge, hub, csms) -> str:
    """The OS view: the edge holds exactly one ESTABLISHED TCP connection to the hub's listener,
    the hub holds exactly one from it, and only the hub talks to the CSMS."""
    hub_port = listener_port(hub)
    edge_to_hub = established(remote_port=hub_port, pid=edge.proc.pid)
    any_to_hub = established(remote_port=hub_port)
    hub_from_edge = established(local_port=hub_port, pid=hub.proc.pid)
    edge_to_csms = established(remote_port=csms.port, pid=edge.proc.pid)
    hub_to_csms = established(remote_port=csms.port, pid=hub.proc.pid)
    problems = []
    if len(edge_to_hub) != 1:
        problems.append(f"edge pid {edge.proc.pid} has {len(edge_to_hub)} ESTABLISHED sockets to the hub "
                        f"port {hub_port}, want exactly 1: {edge_to_hub}")
    if len(any_to_hub) != 1:
        problems.append(f"{len(any_to_hub)} ESTABLISHED client sockets to the hub port {hub_port} on "
                        f"this machine, want exactly 1 (the edge's): {any_to_hub}")
    if len(hub_from_edge) != 1:
        problems.append(f"hub pid {hub.proc.pid} has {len(hub_from_edge)} ESTABLISHED sockets on its "
                        f"listener port {hub_port}, want 1: {hub_from_edge}")
    if edge_to_csms:
        problems.append(f"the edge talks to the CSMS directly: {edge_to_csms}")
    if len(hub_to_csms) != len(VERSIONS):
        problems.append(f"hub pid {hub.proc.pid} has {len(hub_to_csms)} ESTABLISHED sockets to the CSMS "
                        f"port {csms.port}, want {len(VERSIONS)} (one per charger)")
    assert not problems, "\n".join(problems)
    return f"edge->hub {edge_to_hub[0]}"


async def check_status_one_uplink(edge, hub) -> None:
    hub_port = listener_port(hub)
    st = await status(edge)
    assert st.get("node", {}).get("id") == "edge1" and st["node"].get("role") == "edge", st.get("node")
    ups = st.get("uplinks")
    assert isinstance(ups, list) and len(ups) == 1, f"edge /api/status uplinks: {ups}"
    assert ups[0].get("state") == "up", f"edge uplink not up: {ups[0]}"
    links = st.get("overlayLinks")
    assert isinstance(links, list) and len(links) == 1, (
        f"edge /api/status overlayLinks must hold exactly one entry, got {json.dumps(links)}")
    assert links[0].get("direction") == "uplink", links
    assert links[0].get("link") == ups[0].get("link"), (ups, links)
    ra = ups[0].get("remoteAddr") or ""
    assert ra.endswith(f":{hub_port}"), f"uplink remoteAddr {ra!r}, hub listens on port {hub_port}"
    chargers = {c.get("id"): c for c in st.get("chargers") or []}
    assert set(chargers) == set(VERSIONS), (
        f"edge /api/status chargers: {sorted(chargers)} (want the {len(VERSIONS)} connected ones)")
    for cid, v in VERSIONS.items():
        assert chargers[cid].get("ocppVersion") == v, chargers[cid]

    hs = await status(hub)
    assert hs.get("node", {}).get("id") == HUB_ID and hs["node"].get("role") == "hub", hs.get("node")
    hlinks = hs.get("overlayLinks") or []
    assert len(hlinks) == 1 and hlinks[0].get("direction") == "inbound" and hlinks[0].get("peer") == "edge1", (
        f"hub /api/status overlayLinks: {json.dumps(hlinks)}; want one inbound link from edge1")
    conns = {c.get("charger"): c for c in hs.get("csmsConnections") or []}
    assert set(conns) == set(VERSIONS), f"hub csmsConnections: {sorted(conns)}"
    for cid, v in VERSIONS.items():
        c = conns[cid]
        assert c.get("ocppVersion") == v and c.get("state") == "open", c


async def test_fifty_mixed_chargers_share_one_uplink(overlay, csms, charger):
    hub = await overlay.start_hub(csms.url, peers={"edge1": ["MUX16-*", "MUX201-*"]})
    edge = await overlay.start_edge("edge1", hub.charger_url, uplink_name="hub1")
    await wait_uplink_up(edge, PHASE)

    # -- 50 chargers connect concurrently -------------------------------------------------
    cps_list = await asyncio.wait_for(asyncio.gather(*(
        charger(edge.charger_url, cid, v, cp_class=charger_class(v), response_timeout=PHASE)
        for cid, v in VERSIONS.items())), PHASE)
    cps = {cp.id: cp for cp in cps_list}

    # -- (b) the CSMS sees 50 charger connections, right ids and subprotocols ---------------
    live = await csms.wait_connected(VERSIONS, PHASE)
    await asyncio.sleep(1.0)  # a duplicate or stray connection would show up now
    assert set(csms.open_conns()) == set(VERSIONS), (
        f"the CSMS has connections for {sorted(set(csms.open_conns()) - set(VERSIONS))} that no "
        f"charger made")
    for cid, v in VERSIONS.items():
        c = live[cid]
        assert c.path == f"/ocpp/{cid}", (cid, c.path)
        assert c.subprotocol == v, f"{cid}: the hub's CSMS socket speaks {c.subprotocol}, the charger {v}"
        assert len(csms.conns(cid)) == 1, f"{cid}: {len(csms.conns(cid))} CSMS connections, want 1"
        offered = [a.offered for a in csms.attempts_for(cid)]
        assert offered == [[v]], f"{cid}: the hub offered subprotocols {offered}, want only {v!r}"

    # -- (a) exactly ONE TCP connection edge -> hub ---------------------------------------
    await check_status_one_uplink(edge, hub)
    one_uplink_socket(edge, hub, csms)
    em = await metrics(edge)
    assert metric_sum(em, "ocpp_overlay_links", {"direction": "uplink"}) == 1, (
        "edge metric ocpp_overlay_links{direction=\"uplink\"} must be 1:\n"
        + "\n".join(l for l in em.splitlines() if "overlay" in l))
    hm = await metrics(hub)
    assert metric_sum(hm, "ocpp_csms_connections") == len(VERSIONS), (
        "hub metric ocpp_csms_connections:\n" + "\n".join(l for l in hm.splitlines() if "csms" in l))

    # -- (c) every charger CALL reaches the CSMS; its answer comes back to the right charger --
    await asyncio.wait_for(asyncio.gather(
        *(session16(cps[c], csms) for c in IDS16),
        *(session201(cps[c], csms) for c in IDS201)), 2 * PHASE)
    upstream_ids = []
    for cid in IDS16:
        upstream_ids += check_relayed(cps[cid], csms, SESSION16_ACTIONS)
    for cid in IDS201:
        upstream_ids += check_relayed(cps[cid], csms, SESSION201_ACTIONS)
    assert len(set(upstream_ids)) == len(upstream_ids), "the edge reused an upstream message id"
    all_tx = [t for c in IDS16 for t in csms.tx_ids[c]]
    assert len(set(all_tx)) == len(IDS16), all_tx

    # -- (d) CSMS-initiated calls reach the right charger; results return to the CSMS -----
    await asyncio.wait_for(asyncio.gather(
        *(csms_initiated16(csms, cps[c]) for c in IDS16),
        *(csms_initiated201(csms, cps[c]) for c in IDS201)), 2 * PHASE)

    # -- still one socket after all that traffic; nothing reconnected -------------------
    one_uplink_socket(edge, hub, csms)
    await check_status_one_uplink(edge, hub)
    assert len(csms.connections) == len(VERSIONS), f"CSMS connections: {csms.summary()}"
    um = await metrics(edge)
    connects = metric_sum(um, "ocpp_uplink_connects_total")
    assert connects == 1, f"ocpp_uplink_connects_total = {connects}; the uplink must not have reconnected"

    hs = await status(hub)
    for c in hs.get("csmsConnections") or []:
        assert c.get("path") == [c.get("charger"), "edge1"], (
            f"hub csmsConnections path for {c.get('charger')}: {c.get('path')}, "
            f"want [{c.get('charger')!r}, 'edge1']")

    # -- presence is mirrored: a charger that leaves closes its CSMS socket ---------------
    gone = IDS16[0]
    await cps[gone].ws.close()
    await wait_until(lambda: not csms.conns(gone)[-1].open, PHASE,
                     f"the CSMS socket of {gone} closing after the charger disconnected from the edge")
    assert all(csms.conns(c)[-1].open for c in VERSIONS if c != gone), csms.summary()
