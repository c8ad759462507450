"""`ocpp-node` with no arguments runs the embedded default config (ARCHITECTURE §6.6)."""

import re

import pytest

from ocpp.v16 import call

import peerlib
from peerlib import NodeProcess, http_get_json

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def default_node(node_bin, tmp_path):
    busy = [f"{h}:{p}" for h, p in (("0.0.0.0", 9000), ("127.0.0.1", 9800)) if peerlib.port_in_use(h, p)]
    if busy:
        pytest.skip(f"port(s) {', '.join(busy)} already in use: cannot run the embedded default config")
    n = NodeProcess([str(node_bin)], cwd=tmp_path)
    n.start()
    yield n
    rc_before_stop = n.proc.poll()
    n.stop()
    if rc_before_stop is not None:
        pytest.fail(f"ocpp-node (no args) exited by itself with rc={rc_before_stop}\n" + n.output_tail(),
                    pytrace=False)


async def test_no_args_runs_embedded_default(default_node, charger, tmp_path):
    n = default_node
    assert re.fullmatch(r"ws://[^/\s]+:9000/ocpp", n.charger_url), (
        f"want 'listening chargers ws://<host>:9000/ocpp', got {n.charger_url!r}")
    assert n.admin_url == "http://127.0.0.1:9800", f"want admin on http://127.0.0.1:9800, got {n.admin_url!r}"
    hint = n.wait_for_output(r"ws://[^/\s]+:9000/ocpp/\S+", timeout=5)
    assert hint, ("want a hint line with ws://<host>:9000/ocpp/<chargerId> on stdout or stderr\n"
                  + n.output_tail())

    cp = await charger("ws://127.0.0.1:9000/ocpp", "CP-DEFAULT", "ocpp1.6")
    boot = await cp.call(call.BootNotification(charge_point_model="M", charge_point_vendor="V"), suppress=False)
    assert boot.status == "Accepted", boot
    assert boot.interval > 0, boot

    status = http_get_json(f"{n.admin_url}/api/status")
    ids = [c.get("id") for c in status.get("chargers", [])]
    assert "CP-DEFAULT" in ids, status
    assert (tmp_path / "ocpp-node-data").is_dir(), (
        f"the default data dir ./ocpp-node-data was not created in the working directory {tmp_path}")
