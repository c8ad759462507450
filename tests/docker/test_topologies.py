"""The four docker topologies of ``deploy/``, brought up from the FROM-scratch images that
``scripts/build-images`` makes, with real faults: a killed edge, a hub cut off its network, an
uplink partition. Counts are taken at the simulated CSMS (``ocpp-sim csms``), which keys every
transaction message it sees by (charger, action, payload): 0 lost means every message each
charger got an answer for arrived, 0 duplicated means none arrived twice.

Every simulated charger (1.6) runs 3 transactions of 2 meter values: 12 transaction messages.
"""

from __future__ import annotations

import time

import pytest

from dockerlib import Topology, clean_leftovers, run, tx_seen

pytestmark = pytest.mark.timeout(420)

TX_PER_CHARGER = 3 * (1 + 2 + 1)


@pytest.fixture(scope="session", autouse=True)
def no_leftovers():
    clean_leftovers()
    yield
    clean_leftovers()


def topology(request, name: str, **env: str) -> Topology:
    t = Topology(name, {"CHARGER_HOLD_S": "0", **env})
    request.addfinalizer(t.down)
    return t


def started(summary: dict) -> int:
    return (summary.get("by_action") or {}).get("StartTransaction", 0)


def assert_exact(summary: dict, chargers: int) -> None:
    tx = summary.get("transaction_messages") or {}
    want = chargers * TX_PER_CHARGER
    assert tx.get("duplicated") == 0, f"duplicated transaction messages at the CSMS: {tx}"
    assert tx.get("distinct") == want, f"lost: the CSMS saw {tx.get('distinct')} of {want}: {summary}"
    by_action = summary.get("by_action") or {}
    for action, n in (("StartTransaction", 3), ("MeterValues", 6), ("StopTransaction", 3)):
        assert by_action.get(action) == chargers * n, (action, by_action)


def assert_all_ok(t: Topology, service: str, chargers: int) -> dict:
    s = t.charger_summary(service)
    assert s.get("ok") == chargers and s.get("failed") == 0, f"{service}: {s}\n{t.diagnostics(service)}"
    assert s.get("transaction_calls") == chargers * TX_PER_CHARGER, s
    return s


def test_site_answers_offline_through_a_30s_partition_and_drains(request):
    t = topology(request, "site", CHARGER_PACE_MS="1000")
    t.up("csms", "hub", "edge")
    t.wait_uplink("edge")
    t.up("chargers")
    # Cut once every charger is in its first transaction: from then on it sends only transaction
    # messages, which the edge journals and answers itself when the uplink is gone. (A Heartbeat
    # or StatusNotification caught in flight would get CALLERROR "timeout" instead.)
    t.wait_csms(lambda s: started(s) >= 10, 60, "every charger's first StartTransaction")

    run("docker", "network", "disconnect", t.network("uplink"), t.container("edge"))
    cut = time.monotonic()
    # The edge notices within two pings (1 s each) and answers the chargers itself, journaling.
    t.wait_status("edge", lambda st: all(u.get("state") != "up" for u in st["uplinks"]), 15,
                  "the uplink seen down")
    t.wait_status("edge", lambda st: (st.get("outbox") or {}).get("queued", 0) > 0, 20,
                  "transaction messages queued while offline")
    # 16 calls at 1 per second: the chargers finish during the partition, answered offline.
    assert t.wait_exit("chargers", 60) == 0, t.diagnostics("chargers", "edge")
    assert time.monotonic() - cut < 30, "the chargers finished only after the partition"
    offline = assert_all_ok(t, "chargers", 10)
    assert offline["reconnects"] == 0, f"the chargers stayed connected to the edge: {offline}"
    queued = t.status("edge")["outbox"]["queued"]
    assert queued > 0, "nothing queued at the end of the offline run"

    time.sleep(max(0.0, 30 - (time.monotonic() - cut)))
    run("docker", "network", "connect", t.network("uplink"), t.container("edge"))
    t.wait_uplink("edge", timeout=60)
    t.wait_drained("edge", timeout=90)
    summary = t.wait_csms(lambda s: (s.get("transaction_messages") or {}).get("total", 0) >= 120, 60,
                          "all 120 transaction messages")
    time.sleep(2)  # a duplicate arriving late would show now
    assert_exact(t.csms_summary(), 10)
    print(f"site: {queued} queued offline, drained; CSMS {summary['transaction_messages']}")


def test_multi_site_survives_a_killed_edge(request):
    t = topology(request, "multi-site", CHARGER_PACE_MS="1000")
    t.up("csms", "hub", "edge-a", "edge-b", "edge-c")
    for e in ("edge-a", "edge-b", "edge-c"):
        t.wait_uplink(e)
    t.up("chargers-a", "chargers-b", "chargers-c")
    t.wait_csms(lambda s: tx_seen(s, "A-") >= 3 * 5, 60, "site A's first transactions")

    run("docker", "kill", t.container("edge-a"))
    time.sleep(3)
    run("docker", "start", t.container("edge-a"))

    for s in ("chargers-a", "chargers-b", "chargers-c"):
        assert t.wait_exit(s, 120) == 0, t.diagnostics(s)
    a = assert_all_ok(t, "chargers-a", 3)
    assert a["reconnects"] >= 3, f"site A's chargers never lost their edge: {a}"
    for s in ("chargers-b", "chargers-c"):
        other = assert_all_ok(t, s, 3)
        # No gap: never a reconnect, and every answer as prompt as usual.
        assert other["reconnects"] == 0, other
        assert other["max_wait_ms"] < 2000, f"{s} waited {other['max_wait_ms']} ms for an answer"
    t.wait_uplink("edge-a")
    t.wait_drained("edge-a")
    t.wait_csms(lambda s: (s.get("transaction_messages") or {}).get("distinct", 0) >= 108, 60,
                "all 108 transaction messages")
    time.sleep(2)
    assert_exact(t.csms_summary(), 9)


def test_chain_reaches_the_csms_through_both_edges(request):
    t = topology(request, "chain", CHARGER_PACE_MS="100", CHARGER_HOLD_S="60")
    t.up("csms", "hub", "edge2", "edge1")
    t.wait_uplink("edge2")
    t.wait_uplink("edge1")
    t.up("chargers")
    ids = [f"CHAIN-CP-{i}" for i in range(1, 5)]

    def paths(st: dict) -> bool:
        conns = {c.get("charger"): c for c in st.get("csmsConnections") or []}
        return all(conns.get(i, {}).get("path") == [i, "edge1", "edge2"] for i in ids)

    t.wait_status("hub", paths, 60, "every charger's path [id, edge1, edge2] at the hub")
    routes = {r["destination"]: r for r in t.status("edge2")["routes"]}
    assert all(routes.get(i, {}).get("peer") == "edge1" for i in ids), routes
    t.wait_csms(lambda s: (s.get("transaction_messages") or {}).get("distinct", 0) >= 48, 90,
                "all 48 transaction messages")
    time.sleep(2)
    assert_exact(t.csms_summary(), 4)


def test_failover_moves_the_edge_to_the_standby_hub(request):
    t = topology(request, "failover", CHARGER_PACE_MS="1000")
    t.up("csms", "hub-a", "hub-b", "edge")
    t.wait_uplink("edge", "hub-a")
    t.up("chargers")
    ids = [f"FO-CP-{i}" for i in range(1, 6)]
    t.wait_status("hub-a", lambda st: len([c for c in st.get("csmsConnections") or []
                                           if c.get("state") == "open"]) == 5, 60,
                  "hub-a's five CSMS sockets")
    t.wait_csms(lambda s: started(s) >= 5, 60, "every charger's first StartTransaction")

    run("docker", "network", "disconnect", t.network("uplink"), t.container("hub-a"))
    t.wait_uplink("edge", "hub-b", timeout=30)

    def all_open(st: dict) -> bool:
        conns = {c.get("charger"): c for c in st.get("csmsConnections") or []}
        return all(conns.get(i, {}).get("state") == "open" for i in ids)

    t.wait_status("hub-b", all_open, 60, "every charger's CSMS socket open again, through hub-b")
    assert t.wait_exit("chargers", 120) == 0, t.diagnostics("chargers", "edge")
    assert_all_ok(t, "chargers", 5)
    t.wait_drained("edge")
    t.wait_csms(lambda s: (s.get("transaction_messages") or {}).get("distinct", 0) >= 60, 60,
                "all 60 transaction messages")
    time.sleep(2)
    assert_exact(t.csms_summary(), 5)
