"""The node can be restarted on the same config and data dir; chargers reconnect and boot again."""

import pytest
from ocpp.v16 import call

pytestmark = pytest.mark.timeout(90)


async def test_restart_and_reboot(node, charger):
    cp = await charger(node.charger_url, "CP-RESTART", "ocpp1.6")
    boot = await cp.call(call.BootNotification(charge_point_model="M", charge_point_vendor="V"), suppress=False)
    assert boot.status == "Accepted", boot

    old_pid = node.proc.pid
    node.restart()
    assert node.alive() and node.proc.pid != old_pid

    cp2 = await charger(node.charger_url, "CP-RESTART", "ocpp1.6")
    boot2 = await cp2.call(call.BootNotification(charge_point_model="M", charge_point_vendor="V"), suppress=False)
    assert boot2.status == "Accepted", boot2
    hb = await cp2.call(call.Heartbeat(), suppress=False)
    assert hb.current_time
