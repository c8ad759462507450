"""Metrics: what an edge and a hub export passes ``promtool check metrics`` (Prometheus' own
linter, from Debian's ``prometheus`` package), carries the series an operator needs (relay
latency histogram, queue depth and oldest age, uplink state, drops by reason), and every query
of the shipped Grafana dashboard (``deploy/grafana/ocpp-overlay.json``) names a metric the node
exports.

    2 x mobilityhouse ChargePoint --> edge1 ==overlay==> hub --> CSMS (mobilityhouse ocpp)
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from overlaylib import charger_class, metric_sum, metrics, session16, wait_uplink_up

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "ocpp-overlay.json"
PHASE = 60.0
IDS = ["MET-1", "MET-2"]
# Series suffixes of a histogram or summary family.
SUFFIXES = ("_bucket", "_sum", "_count")


def promtool(text: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool not installed (tests/peers/run.sh installs Debian's prometheus package)"
    return subprocess.run([exe, "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60)


def families(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^# TYPE (\S+) \S+$", text, re.M)}


def dashboard_metrics() -> set[str]:
    """Every ``ocpp_*`` name in every target expression of the dashboard, histogram suffixes
    stripped (a query of ``x_bucket`` needs the family ``x``)."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    names = set()
    for e in exprs:
        for n in re.findall(r"\b(ocpp_[a-z0-9_]+)", e):
            for s in SUFFIXES:
                if n.endswith(s):
                    n = n[: -len(s)]
            names.add(n)
    return names


async def test_metrics_pass_promtool_and_feed_the_dashboard(overlay, csms, charger):
    hub = await overlay.start_hub(csms.url, peers={"edge1": ["MET-*"]})
    edge = await overlay.start_edge("edge1", hub.charger_url, uplink_name="hub1")
    await wait_uplink_up(edge, PHASE)
    cps = [await charger(edge.charger_url, cid, "ocpp1.6", cp_class=charger_class("ocpp1.6"),
                         response_timeout=PHASE) for cid in IDS]
    await asyncio.wait_for(asyncio.gather(*(session16(cp, csms) for cp in cps)), 2 * PHASE)
    # A refused upgrade (a plain GET on the charger listener), so that the refusal counter has a
    # series too.
    port = int(edge.charger_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(Exception):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ocpp/NOT-A-WEBSOCKET", timeout=5)

    texts = {"edge": await metrics(edge), "hub": await metrics(hub)}
    for name, text in texts.items():
        r = promtool(text)
        assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
            f"promtool check metrics on the {name}'s /metrics (rc={r.returncode}):\n"
            f"{r.stdout}{r.stderr}")

    em = texts["edge"]
    # The relay latency histogram saw every relayed charger CALL the CSMS answered: Boot,
    # Heartbeat and Authorize of each charger. Transaction messages go through the durable
    # queue instead, whose delay is ocpp_outbox_oldest_age_seconds.
    count = metric_sum(em, "ocpp_relay_latency_seconds_count")
    assert count == 2 * 3, f"ocpp_relay_latency_seconds_count = {count}, want 6"
    inf = metric_sum(em, "ocpp_relay_latency_seconds_bucket", {"le": "+Inf"})
    assert inf == count, (inf, count)
    assert metric_sum(em, "ocpp_uplink_up", {"uplink": "hub1"}) == 1, [
        l for l in em.splitlines() if "uplink_up" in l]
    # The queue drained: nothing queued, so no age.
    assert metric_sum(em, "ocpp_outbox_queued") == 0
    assert metric_sum(em, "ocpp_outbox_oldest_age_seconds") == 0
    reasons = set(re.findall(r'^ocpp_frames_dropped_total\{reason="([a-z_]+)"\}', em, re.M))
    assert {"malformed", "unreachable", "loop", "queue_full", "busy"} <= reasons, reasons
    assert (metric_sum(em, "ocpp_handshakes_refused_total") or 0) >= 1, [
        l for l in em.splitlines() if "refused" in l]

    exported = families(em) | families(texts["hub"])
    missing = dashboard_metrics() - exported
    assert not missing, f"the dashboard queries metrics no node exports: {sorted(missing)}"
