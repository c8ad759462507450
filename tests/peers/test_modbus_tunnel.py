"""The Modbus tunnel, hub -> edge -> device, with an independent Modbus device (pymodbus).

An edge owns two ``[[meter]]`` devices: ``site-meter``, a pymodbus TCP server holding known holding
and input registers, and ``dead``, an address where nothing listens. Its ``[[modbus.allow]]`` lets
the hub read holding 40000-40009 and input 0-9 of unit 1 on ``site-meter``, and input 0-9 on
``dead``. ``POST /api/modbus`` on the HUB with ``node`` = the edge's id becomes a ModbusTransfer
CALL through the overlay, answered by the edge:

* holding and input reads return exactly the registers pymodbus holds (``status`` Ok, the decoded
  ``registers`` and the raw response ``pdu``);
* a write PDU (FC 6 and FC 16, given raw as ``pdu``) is refused, and never reaches the device;
* a read outside the allow-list (one register past a range, another kind, another unit) is refused
  and never reaches the device;
* the dead device gives a clear status (Unreachable or Timeout, with a reason) within the timeout.
"""

from __future__ import annotations

import base64
import contextlib
import struct

import pytest

from dlmlib import ModbusServer, RegisterDevice, closed_port, modbus_request
from overlaylib import wait_uplink_up

pytestmark = pytest.mark.timeout(180)

EDGE = "mbedge1"
UNIT = 1
HOLDING = {40000 + i: 0x1000 + 17 * i for i in range(10)}
HOLDING[40010] = 0xBEEF  # on the device, outside the allow-list
INPUTS = {i: 0xA000 + 3 * i for i in range(10)}
INPUTS[10] = 0xCAFE      # on the device, outside the allow-list


def edge_extra(meter_port: int, dead_port: int) -> str:
    return f"""
[[meter]]
name = "site-meter"
transport = "tcp"
address = "127.0.0.1:{meter_port}"
unit_id = {UNIT}
map = "generic"
timeout_ms = 500

[[meter]]
name = "dead"
transport = "tcp"
address = "127.0.0.1:{dead_port}"
unit_id = {UNIT}
map = "generic"
timeout_ms = 500

[[modbus.allow]]
peer = "hub"
target = "site-meter"
units = [{UNIT}]
ranges = ["holding:40000-40009", "input:0-9"]

[[modbus.allow]]
peer = "hub"
target = "dead"
units = [{UNIT}]
ranges = ["input:0-9"]
"""


def b64(pdu: bytes) -> str:
    return base64.b64encode(pdu).decode("ascii")


def read_pdu(fc: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", fc, address, count)


async def test_hub_reads_an_edge_device_through_the_tunnel(overlay, csms):
    device = RegisterDevice(HOLDING, INPUTS)
    server = ModbusServer(device)
    port = await server.start()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(server.stop)
        hub = await overlay.start_hub(csms.url, peers={EDGE: ["MB-*", EDGE]})
        edge = await overlay.start_edge(EDGE, hub.charger_url, uplink_name="hub",
                                        extra=edge_extra(port, closed_port()))
        await wait_uplink_up(edge, 60)

        async def ask(body: dict, timeout_ms: int = 5000):
            body = {"node": EDGE, "unitId": UNIT, "timeoutMs": timeout_ms, **body}
            return await modbus_request(hub, body)

        # --- reads inside the allow-list return exactly what the device holds ---------------
        status, ans, took = await ask({"target": "site-meter", "function": "holding", "address": 40000,
                                       "count": 10})
        assert status == 200 and isinstance(ans, dict) and ans.get("status") == "Ok", (
            f"holding 40000+10 through hub -> {EDGE}: HTTP {status} {ans}\n{edge.output_tail(20)}")
        want = [HOLDING[40000 + i] for i in range(10)]
        assert ans.get("registers") == want, (ans, want)
        raw = base64.b64decode(ans["pdu"])
        assert raw == bytes([3, 20]) + b"".join(struct.pack(">H", v) for v in want), raw.hex()

        status, ans, _ = await ask({"target": "site-meter", "function": "input", "address": 2, "count": 8})
        assert status == 200 and ans.get("status") == "Ok", (status, ans)
        assert ans.get("registers") == [INPUTS[i] for i in range(2, 10)], ans

        # A raw read PDU works the same way (FC 4, input 0..9).
        status, ans, _ = await ask({"target": "site-meter", "pdu": b64(read_pdu(4, 0, 10))})
        assert status == 200 and ans.get("status") == "Ok", (status, ans)
        assert base64.b64decode(ans["pdu"]) == bytes([4, 20]) + b"".join(
            struct.pack(">H", INPUTS[i]) for i in range(10)), ans
        seen_reads = len(device.requests)
        assert seen_reads == 3, [(r.func_code, r.address, r.count) for r in device.requests]

        # --- writes are refused and never reach the device -----------------------------------
        for name, pdu in [("FC 6 write single register", struct.pack(">BHH", 6, 40000, 0x1234)),
                          ("FC 16 write multiple registers", struct.pack(">BHHBHH", 16, 40000, 2, 4, 1, 2)),
                          ("FC 5 write single coil", struct.pack(">BHH", 5, 0, 0xFF00))]:
            status, ans, _ = await ask({"target": "site-meter", "pdu": b64(pdu)})
            assert status == 200 and isinstance(ans, dict) and ans.get("status") == "Refused", (
                f"{name}: HTTP {status} {ans}")
            assert ans.get("reason"), f"{name}: a refusal must say why: {ans}"
        assert not device.writes(), [(r.func_code, r.address, r.values) for r in device.writes()]

        # --- outside the allow-list: refused, not read ---------------------------------------
        for name, body in [
            ("one holding register past the range", {"function": "holding", "address": 40005, "count": 6}),
            ("a holding register outside the range", {"function": "holding", "address": 40010, "count": 1}),
            ("an input register outside the range", {"function": "input", "address": 10, "count": 1}),
            ("coils (no rule for them)", {"function": "coils", "address": 0, "count": 1}),
            ("holding addresses allowed only as input", {"function": "holding", "address": 0, "count": 1}),
        ]:
            status, ans, _ = await ask({"target": "site-meter", **body})
            assert status == 200 and isinstance(ans, dict) and ans.get("status") == "Refused", (
                f"{name}: HTTP {status} {ans}")
            assert ans.get("reason"), (name, ans)
        status, ans, _ = await ask({"target": "site-meter", "unitId": UNIT + 1, "function": "input",
                                    "address": 0, "count": 1})
        assert status == 200 and ans.get("status") == "Refused", ("another unit id", status, ans)
        assert len(device.requests) == seen_reads, (
            "refused requests reached the device: "
            + str([(r.func_code, r.address, r.count) for r in device.requests[seen_reads:]]))

        # --- a dead device: a clear status within the timeout --------------------------------
        timeout_ms = 3000
        status, ans, took = await ask({"target": "dead", "function": "input", "address": 0, "count": 2},
                                      timeout_ms=timeout_ms)
        assert isinstance(ans, dict) and ans.get("status") in ("Unreachable", "Timeout"), (
            f"dead device: HTTP {status} {ans}")
        assert status == 200, f"the edge answered the transfer; the hub should pass it on as 200: {status} {ans}"
        assert ans.get("reason"), ans
        assert took <= timeout_ms / 1000 + 1.0, f"the dead device's answer took {took:.1f} s (timeout {timeout_ms} ms)"

        # The good device still answers afterwards.
        status, ans, _ = await ask({"target": "site-meter", "function": "holding", "address": 40009, "count": 1})
        assert status == 200 and ans.get("registers") == [HOLDING[40009]], (status, ans)
