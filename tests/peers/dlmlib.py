"""Load management (DLM) and Modbus helpers for the independent Python peers.

Nothing here comes from the Rust code:

* ``Sdm630Meter``: a pymodbus Modbus TCP server (127.0.0.1, port 0) with the register layout of an
  Eastron SDM630 as ``modbus-tunnel/maps/sdm630.toml`` documents it (input registers, IEEE 754
  float32, high word first): per-phase voltage (230 V), current and power, total power, frequency,
  and a monotone import-energy register (kWh). Each read is computed live: a scripted base load
  (steps in time) plus what the attached chargers draw at that moment. ``stop()`` shuts the server
  down (listener and connections), which is how a test loses the meter.
* ``RegisterDevice``: a plain pymodbus device with fixed holding / input registers that records
  every request it serves (for the Modbus tunnel: what a read returns, and that a write never
  reached the device).
* ``DlmCharger16`` / ``DlmCharger201``: mobilityhouse ``ocpp`` charge points (use them as the
  ``cp_class`` of the ``charger`` fixture, so every frame the node sends them is schema-checked)
  that boot, start one transaction and then obey charging profiles like a real EVSE: profiles are
  stored per OCPP replacement rules (same id, or same purpose + stack level), the limit in force is
  the smallest of the limits of the profiles of the limiting purposes (the node's and the CSMS's),
  taken from the schedule period in force now; the EV's draw ramps toward it (10 A/s up, 20 A/s
  down, 0 A below the 6 A IEC 61851 minimum) and is reported every second as per-phase
  ``Current.Import`` (1.6 MeterValues, 2.0.1 TransactionEvent Updated). Every change of the limit
  in force is recorded with its time.
* ``SimSite``: ``ocpp-sim site`` as a process; its 200 ms JSON lines are read as they come.
* ``Timeline``: samples of what the grid sees (base, total per phase, every charger's limit and
  draw) every 100 ms, and of ``GET /api/dlm`` every 500 ms.
* ``http_post_json``: POSTs to the admin API with the node's bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import struct
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.datastore.context import ModbusBaseDeviceContext
from pymodbus.server import ModbusTcpServer

import peerlib
from peerlib import admin_headers, http_get_json

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

VOLTS = 230.0
MIN_CHARGING_A = 6.0  # IEC 61851: below this an EV pauses


def sim_bin() -> Path:
    """``ocpp-sim``: $OCPP_SIM_BIN, else next to the ocpp-node under test."""
    env = os.environ.get("OCPP_SIM_BIN")
    return Path(env) if env else peerlib.node_bin().with_name("ocpp-sim")


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# Admin API
# ---------------------------------------------------------------------------


def http_post_json(url: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
    """POST JSON with the node's bearer token; returns (HTTP status, parsed body) for any status."""
    data = json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json", **admin_headers(url)})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


async def modbus_request(node, body: dict, timeout: float = 70.0) -> tuple[int, Any, float]:
    """``POST /api/modbus`` on ``node``: (HTTP status, body, seconds it took)."""
    t0 = time.monotonic()
    status, answer = await asyncio.to_thread(http_post_json, f"{node.admin_url}/api/modbus", body, timeout)
    return status, answer, time.monotonic() - t0


async def dlm_status(node) -> dict:
    return await asyncio.to_thread(http_get_json, f"{node.admin_url}/api/dlm")


def dlm_toml(*, meter_port: int, grid_limit_a: float, margin_a: float = 1.0, cycle_ms: int = 1000,
             stale_s: int = 3, safe_limit_a: float = 6.0, min_a: float = 6.0, max_a: float = 16.0,
             phases: int = 3, deadband_a: float = 1.0, min_change_interval_s: int = 2,
             rotation_s: int = 120, stack_level: int = 50, meter_timeout_ms: int = 300) -> str:
    """``[dlm]`` with every timer explicit, and the SDM630 grid meter ``[[meter]]`` named grid."""
    return f"""
[dlm]
grid_limit_a = {grid_limit_a}
margin_a = {margin_a}
meter = "grid"
cycle_ms = {cycle_ms}
stale_s = {stale_s}
safe_limit_a = {safe_limit_a}
min_a = {min_a}
max_a = {max_a}
phases = {phases}
deadband_a = {deadband_a}
min_change_interval_s = {min_change_interval_s}
rotation_s = {rotation_s}
profile_v16 = "TxDefaultProfile"
profile_v2 = "ChargingStationMaxProfile"
stack_level = {stack_level}

[[meter]]
name = "grid"
transport = "tcp"
address = "127.0.0.1:{meter_port}"
unit_id = 1
map = "sdm630"
timeout_ms = {meter_timeout_ms}
"""


# ---------------------------------------------------------------------------
# Modbus devices (pymodbus)
# ---------------------------------------------------------------------------


@dataclass
class ModbusRequest:
    t: float
    func_code: int
    address: int
    count: int
    values: list | None = None  # for writes


class RecordingDevice(ModbusBaseDeviceContext):
    """A pymodbus device context that records every request (protocol addresses, 0-based)."""

    def __init__(self):
        self.requests: list[ModbusRequest] = []

    def reset(self):
        pass

    def getValues(self, func_code, address, count=1):  # noqa: N802 - pymodbus API
        self.requests.append(ModbusRequest(time.monotonic(), func_code, address, count))
        return self.read(func_code, address, count)

    def setValues(self, func_code, address, values):  # noqa: N802 - pymodbus API
        self.requests.append(ModbusRequest(time.monotonic(), func_code, address, len(values), list(values)))
        return ExcCodes.ILLEGAL_FUNCTION  # a meter is read-only

    def read(self, func_code: int, address: int, count: int):
        return ExcCodes.ILLEGAL_FUNCTION

    def writes(self) -> list[ModbusRequest]:
        return [r for r in self.requests if r.values is not None]


class ModbusServer:
    """A pymodbus TCP server for one device context, on 127.0.0.1 (port 0 = a free one)."""

    def __init__(self, device: ModbusBaseDeviceContext):
        self.device = device
        self.server: ModbusTcpServer | None = None
        self.port: int | None = None
        self.stopped_at: float | None = None

    async def start(self, port: int = 0) -> int:
        ctx = ModbusServerContext(devices=self.device, single=True)
        self.server = ModbusTcpServer(ctx, address=("127.0.0.1", port))
        await self.server.serve_forever(background=True)
        self.port = self.server.transport.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Shut the listener and every connection down (a lost meter)."""
        if self.server is not None and self.stopped_at is None:
            self.stopped_at = time.monotonic()
            await self.server.shutdown()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def f32_words(value: float) -> tuple[int, int]:
    """IEEE 754 float32, high word first (SDM630 / sdm630.toml word_order = "big")."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", float(value)))
    return hi, lo


class RegisterDevice(RecordingDevice):
    """Fixed holding and input registers (address -> value); anything else is IllegalDataAddress."""

    def __init__(self, holding: dict[int, int], inputs: dict[int, int]):
        super().__init__()
        self.holding = dict(holding)
        self.inputs = dict(inputs)

    def read(self, func_code, address, count):
        table = {3: self.holding, 4: self.inputs}.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if any(a not in table for a in range(address, address + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        return [table[a] for a in range(address, address + count)]


class BaseScript:
    """Base load per phase: [(seconds after start, amps), ...] steps; ``set()`` adds one now."""

    def __init__(self, steps: Iterable[tuple[float, float]] = ((0.0, 0.0),)):
        self.t0 = time.monotonic()
        self.steps = sorted((float(t), float(a)) for t, a in steps)
        self.changes: list[tuple[float, float]] = []  # (monotonic time, amps) of set() calls

    def at(self, t: float) -> float:
        amps = self.steps[0][1] if self.steps else 0.0
        for s, a in self.steps:
            if t - self.t0 >= s:
                amps = a
        return amps

    def set(self, amps: float) -> float:
        """Step the base load to ``amps`` now; returns the time of the step."""
        now = time.monotonic()
        self.steps = [(s, a) for s, a in self.steps if s <= now - self.t0] + [(now - self.t0, float(amps))]
        self.changes.append((now, float(amps)))
        return now


class Sdm630Meter(RecordingDevice):
    """The grid meter: base load + the chargers' draw, served as SDM630 input registers.

    ``sources`` are callables returning amps per phase [L1, L2, L3] (the chargers' draw now).
    """

    IMAGE_LEN = 0x50

    def __init__(self, base: BaseScript, sources: list[Callable[[], list[float]]] | None = None):
        super().__init__()
        self.base = base
        self.sources = list(sources or [])
        self.energy_kwh = 1000.0
        self._last_t = time.monotonic()
        self.server = ModbusServer(self)

    def add_source(self, src: Callable[[], list[float]]) -> None:
        self.sources.append(src)

    def currents(self, now: float | None = None) -> list[float]:
        now = time.monotonic() if now is None else now
        b = self.base.at(now)
        total = [b, b, b]
        for src in self.sources:
            for i, a in enumerate(src()):
                total[i] += a
        return total

    def image(self) -> list[int]:
        now = time.monotonic()
        cur = self.currents(now)
        power = [VOLTS * a for a in cur]
        # The import register only ever grows: energy of the power since the last read.
        self.energy_kwh += sum(power) * max(0.0, now - self._last_t) / 3_600_000.0
        self._last_t = now
        regs = [0] * self.IMAGE_LEN

        def put(addr: int, v: float):
            regs[addr], regs[addr + 1] = f32_words(v)

        for p in range(3):
            put(0x0000 + 2 * p, VOLTS)
            put(0x0006 + 2 * p, cur[p])
            put(0x000C + 2 * p, power[p])
        put(0x0034, sum(power))
        put(0x0046, 50.0)
        put(0x0048, self.energy_kwh)
        return regs

    def read(self, func_code, address, count):
        if func_code != 4:
            return ExcCodes.ILLEGAL_FUNCTION
        if count < 1 or address + count > self.IMAGE_LEN:
            return ExcCodes.ILLEGAL_ADDRESS
        return self.image()[address:address + count]

    async def start(self) -> int:
        return await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    @property
    def port(self) -> int | None:
        return self.server.port


# ---------------------------------------------------------------------------
# Profile-obeying chargers (mobilityhouse ocpp)
# ---------------------------------------------------------------------------


def _parse_time(s: str | None) -> float | None:
    """RFC 3339 -> POSIX seconds."""
    if not s:
        return None
    try:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class StoredProfile:
    id: int
    stack_level: int
    purpose: str
    kind: str
    unit: str
    periods: list[dict]  # snake_case: start_period, limit, number_phases
    start_schedule: float | None  # POSIX seconds
    received: float  # POSIX seconds
    raw: dict
    t: float = field(default_factory=time.monotonic)

    def limit_a(self, now: float, phases: int) -> float | None:
        """The limit of the period in force at POSIX time ``now``, in A per phase (None: none)."""
        origin = self.start_schedule if (self.kind == "Absolute" and self.start_schedule is not None) \
            else self.received
        elapsed = now - origin
        current = None
        for p in sorted(self.periods, key=lambda p: p.get("start_period", 0)):
            if p.get("start_period", 0) <= elapsed + 1e-6:
                current = p
        if current is None:
            return None
        limit = float(current["limit"])
        if self.unit == "W":
            n = current.get("number_phases") or phases
            limit = limit / (VOLTS * max(1, int(n)))
        return max(0.0, limit)


class ProfileCharger:
    """What both versions share: the profile store, the limit in force, the EV's physics, the
    meter-values loop. Mixed into the version's ``ChargePoint``."""

    version = ""
    limiting_purposes: tuple[str, ...] = ()
    NODE_PROFILE_ID = 90210

    def _init_charger(self):
        self.max_a = 16.0
        self.phases = 3
        self.ramp_up_a_per_s = 10.0
        self.ramp_down_a_per_s = 20.0
        self.meter_interval_s = 1.0
        self.id_tag = "TAG-OK"
        self.profiles: dict[int, StoredProfile] = {}
        self.set_profiles: list[tuple[float, dict]] = []  # (monotonic, snake_case request) as received
        self.limit = self.max_a
        self.limit_changes: list[tuple[float, float]] = [(time.monotonic(), self.max_a)]
        self.draw = 0.0
        self.charging = False
        self.energy_wh = 0.0
        self.tasks: list[asyncio.Task] = []
        self.errors: list[str] = []

    # -- profiles -------------------------------------------------------------
    def _store(self, p: StoredProfile) -> None:
        for pid, old in list(self.profiles.items()):
            if pid == p.id or (old.purpose == p.purpose and old.stack_level == p.stack_level):
                del self.profiles[pid]
        self.profiles[p.id] = p
        self.refresh()

    def _clear(self, pid=None, purpose=None, stack_level=None) -> bool:
        gone = [k for k, p in self.profiles.items()
                if (pid is not None and p.id == pid)
                or (pid is None and (purpose is None or p.purpose == purpose)
                    and (stack_level is None or p.stack_level == stack_level))]
        for k in gone:
            del self.profiles[k]
        self.refresh()
        return bool(gone)

    def limit_now(self) -> float:
        now = time.time()
        lim = self.max_a
        for p in self.profiles.values():
            if p.purpose not in self.limiting_purposes:
                continue
            a = p.limit_a(now, self.phases)
            if a is not None:
                lim = min(lim, a)
        return lim

    def refresh(self) -> None:
        lim = round(self.limit_now(), 3)
        if abs(lim - self.limit) > 1e-6:
            self.limit = lim
            self.limit_changes.append((time.monotonic(), lim))

    def node_profile_limits(self) -> list[tuple[float, float]]:
        """(time, limit) of every profile with the node's id (90210) this charger received."""
        out = []
        for t, req in self.set_profiles:
            p = self._profile_of(req)
            if p is not None and p.id == self.NODE_PROFILE_ID:
                out.append((t, p.limit_a(time.time() + 3600, self.phases) or 0.0))
        return out

    def node_limit(self) -> float | None:
        p = self.profiles.get(self.NODE_PROFILE_ID)
        return None if p is None else p.limit_a(time.time(), self.phases)

    def changes_between(self, a: float, b: float) -> list[tuple[float, float]]:
        return [(t, lim) for t, lim in self.limit_changes if a <= t < b]

    def limit_at(self, t: float) -> float:
        lim = self.limit_changes[0][1]
        for s, v in self.limit_changes:
            if s <= t:
                lim = v
        return lim

    def draw_phases(self) -> list[float]:
        return [self.draw if i < self.phases else 0.0 for i in range(3)]

    # -- physics ----------------------------------------------------------------
    async def _physics(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            dt_s, last = now - last, now
            self.refresh()
            target = 0.0
            if self.charging:
                target = min(self.limit, self.max_a)
                if target < MIN_CHARGING_A:
                    target = 0.0
            if self.draw < target:
                self.draw = min(target, self.draw + self.ramp_up_a_per_s * dt_s)
            else:
                self.draw = max(target, self.draw - self.ramp_down_a_per_s * dt_s)
            self.energy_wh += self.draw * VOLTS * self.phases * dt_s / 3600.0

    async def _meter_loop(self) -> None:
        while True:
            await asyncio.sleep(self.meter_interval_s)
            try:
                await self.send_meter_values()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - recorded, the test decides
                self.errors.append(f"{self.id}: meter values: {e!r}")
                return

    def current_samples(self, as_string: bool) -> list[dict]:
        out = []
        for ph in ("L1", "L2", "L3")[: self.phases]:
            v = round(self.draw, 2)
            s = {"value": str(v) if as_string else v, "measurand": "Current.Import", "phase": ph,
                 "context": "Sample.Periodic"}
            if as_string:
                s["unit"] = "A"
            else:
                s["unit_of_measure"] = {"unit": "A"}
            out.append(s)
        e = round(self.energy_wh)
        es = {"value": str(e) if as_string else e, "measurand": "Energy.Active.Import.Register",
              "context": "Sample.Periodic"}
        if as_string:
            es["unit"] = "Wh"
        else:
            es["unit_of_measure"] = {"unit": "Wh"}
        out.append(es)
        return out

    async def begin(self) -> None:
        """Boot, start the transaction, then run the EV and the meter values."""
        await self.boot_and_start()
        self.charging = True
        self.tasks = [asyncio.create_task(self._physics(), name=f"ev-{self.id}"),
                      asyncio.create_task(self._meter_loop(), name=f"mv-{self.id}")]

    async def halt(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(BaseException):
                await t
        self.tasks = []


class DlmCharger16(ProfileCharger, CP16):
    version = "ocpp1.6"
    limiting_purposes = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._init_charger()
        self.transaction_id: int | None = None

    @staticmethod
    def _profile_of(req: dict) -> StoredProfile | None:
        p = req.get("cs_charging_profiles") or {}
        s = p.get("charging_schedule") or {}
        try:
            return StoredProfile(
                id=int(p["charging_profile_id"]), stack_level=int(p["stack_level"]),
                purpose=p["charging_profile_purpose"], kind=p.get("charging_profile_kind", "Absolute"),
                unit=s["charging_rate_unit"], periods=list(s["charging_schedule_period"]),
                start_schedule=_parse_time(s.get("start_schedule")), received=time.time(), raw=req)
        except (KeyError, TypeError, ValueError):
            return None

    @on(Action16.set_charging_profile)
    def on_set_charging_profile(self, connector_id, cs_charging_profiles, **kw):
        req = {"connector_id": connector_id, "cs_charging_profiles": cs_charging_profiles}
        self.set_profiles.append((time.monotonic(), req))
        p = self._profile_of(req)
        if p is None:
            return result16.SetChargingProfile(status="Rejected")
        self._store(p)
        return result16.SetChargingProfile(status="Accepted")

    @on(Action16.clear_charging_profile)
    def on_clear_charging_profile(self, id=None, connector_id=None, charging_profile_purpose=None,
                                  stack_level=None, **kw):
        ok = self._clear(id, charging_profile_purpose, stack_level)
        return result16.ClearChargingProfile(status="Accepted" if ok else "Unknown")

    async def boot_and_start(self) -> None:
        boot = await self.call(call16.BootNotification(charge_point_model="DlmModel",
                                                       charge_point_vendor="DlmVendor"), suppress=False)
        assert boot.status == "Accepted", (self.id, boot)
        await self.call(call16.StatusNotification(connector_id=1, error_code="NoError", status="Preparing"),
                        suppress=False)
        start = await self.call(call16.StartTransaction(connector_id=1, id_tag=self.id_tag, meter_start=0,
                                                        timestamp=peerlib.now_iso()), suppress=False)
        assert start.id_tag_info["status"] == "Accepted", (self.id, start)
        self.transaction_id = start.transaction_id
        await self.call(call16.StatusNotification(connector_id=1, error_code="NoError", status="Charging"),
                        suppress=False)

    async def send_meter_values(self) -> None:
        await self.call(call16.MeterValues(connector_id=1, transaction_id=self.transaction_id, meter_value=[{
            "timestamp": peerlib.now_iso(), "sampled_value": self.current_samples(as_string=True)}]),
            suppress=False)


class DlmCharger201(ProfileCharger, CP201):
    version = "ocpp2.0.1"
    limiting_purposes = ("ChargingStationMaxProfile", "TxDefaultProfile", "TxProfile",
                         "ChargingStationExternalConstraints")

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._init_charger()
        self.transaction_id = f"TX-{self.id}"[:36]
        self.seq_no = 0

    @staticmethod
    def _profile_of(req: dict) -> StoredProfile | None:
        p = req.get("charging_profile") or {}
        try:
            s = p["charging_schedule"][0]
            return StoredProfile(
                id=int(p["id"]), stack_level=int(p["stack_level"]), purpose=p["charging_profile_purpose"],
                kind=p.get("charging_profile_kind", "Absolute"), unit=s["charging_rate_unit"],
                periods=list(s["charging_schedule_period"]), start_schedule=_parse_time(s.get("start_schedule")),
                received=time.time(), raw=req)
        except (KeyError, IndexError, TypeError, ValueError):
            return None

    @on(Action201.set_charging_profile)
    def on_set_charging_profile(self, evse_id, charging_profile, **kw):
        req = {"evse_id": evse_id, "charging_profile": charging_profile}
        self.set_profiles.append((time.monotonic(), req))
        p = self._profile_of(req)
        if p is None:
            return result201.SetChargingProfile(status="Rejected")
        self._store(p)
        return result201.SetChargingProfile(status="Accepted")

    @on(Action201.clear_charging_profile)
    def on_clear_charging_profile(self, charging_profile_id=None, charging_profile_criteria=None, **kw):
        c = charging_profile_criteria or {}
        ok = self._clear(charging_profile_id, c.get("charging_profile_purpose"), c.get("stack_level"))
        return result201.ClearChargingProfile(status="Accepted" if ok else "Unknown")

    def _next_seq(self) -> int:
        n = self.seq_no
        self.seq_no += 1
        return n

    async def boot_and_start(self) -> None:
        boot = await self.call(call201.BootNotification(
            charging_station={"model": "DlmModel", "vendor_name": "DlmVendor"}, reason="PowerUp"),
            suppress=False)
        assert boot.status == "Accepted", (self.id, boot)
        await self.call(call201.StatusNotification(timestamp=peerlib.now_iso(), connector_status="Occupied",
                                                   evse_id=1, connector_id=1), suppress=False)
        await self.call(call201.TransactionEvent(
            event_type="Started", timestamp=peerlib.now_iso(), trigger_reason="Authorized",
            seq_no=self._next_seq(),
            transaction_info={"transaction_id": self.transaction_id, "charging_state": "Charging"},
            id_token={"id_token": self.id_tag, "type": "ISO14443"}, evse={"id": 1, "connector_id": 1}),
            suppress=False)

    async def send_meter_values(self) -> None:
        await self.call(call201.TransactionEvent(
            event_type="Updated", timestamp=peerlib.now_iso(), trigger_reason="MeterValuePeriodic",
            seq_no=self._next_seq(),
            transaction_info={"transaction_id": self.transaction_id, "charging_state": "Charging"},
            evse={"id": 1, "connector_id": 1},
            meter_value=[{"timestamp": peerlib.now_iso(), "sampled_value": self.current_samples(as_string=False)}]),
            suppress=False)


def dlm_charger_class(version: str):
    return DlmCharger16 if version == "ocpp1.6" else DlmCharger201


# ---------------------------------------------------------------------------
# ocpp-sim site
# ---------------------------------------------------------------------------


class SimSite:
    """``ocpp-sim site`` as a process. ``latest`` is its last 200 ms line (``t``, ``base_a``,
    ``total_a``, ``chargers{id: {limit_a, draw_a, profiles, profile_changes}}``); ``lines`` keeps
    every one as (monotonic time of receipt, line)."""

    def __init__(self, args: list[str], phases: int = 3):
        self.args = args
        self.phases = phases
        self.proc: asyncio.subprocess.Process | None = None
        self.latest: dict | None = None
        self.lines: list[tuple[float, dict]] = []
        self.summary: dict | None = None
        self.meter_addr: str | None = None
        self.stderr: list[str] = []
        self.other: list[str] = []
        self._tasks: list[asyncio.Task] = []
        self._new = asyncio.Event()

    async def start(self) -> "SimSite":
        path = sim_bin()
        assert path.is_file(), (f"ocpp-sim not found at {path}: cargo build --release -p ocpp-sim, "
                                f"or set OCPP_SIM_BIN")
        self.proc = await asyncio.create_subprocess_exec(
            str(path), "site", *self.args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
            limit=2**22)
        self._tasks = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]
        return self

    async def _read_stdout(self):
        assert self.proc and self.proc.stdout
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                break
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("listening meter "):
                self.meter_addr = line.split()[-1]
            elif line.startswith("{"):
                try:
                    v = json.loads(line)
                except json.JSONDecodeError:
                    self.other.append(line)
                    continue
                if "summary" in v:
                    self.summary = v["summary"]
                else:
                    self.latest = v
                    self.lines.append((time.monotonic(), v))
            elif line:
                self.other.append(line)
            self._new.set()
        self._new.set()

    async def _read_stderr(self):
        assert self.proc and self.proc.stderr
        while True:
            raw = await self.proc.stderr.readline()
            if not raw:
                break
            self.stderr.append(raw.decode("utf-8", "replace").rstrip())
            del self.stderr[:-200]

    def chargers(self) -> dict[str, dict]:
        return dict((self.latest or {}).get("chargers") or {})

    def draw_phases(self) -> list[float]:
        total = [0.0, 0.0, 0.0]
        for c in self.chargers().values():
            for i in range(self.phases):
                total[i] += float(c.get("draw_a") or 0.0)
        return total

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def tail(self, n: int = 30) -> str:
        return ("--- ocpp-sim site stderr (tail) ---\n" + "\n".join(self.stderr[-n:])
                + ("\n--- other stdout ---\n" + "\n".join(self.other[-n:]) if self.other else ""))

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t


def sim_args(url: str, *, chargers: int, prefix: str, version: str, max_a: float = 16.0,
             ramp_a_per_s: float = 10.0, meter_interval_s: float = 1.0, id_tag: str = "TAG-OK",
             phases: int = 3) -> list[str]:
    """Arguments of ``ocpp-sim site`` for chargers only (no --meter-bind: the grid meter is ours)."""
    return ["--url", url, "--chargers", str(chargers), "--prefix", prefix, "--version", version,
            "--phases", str(phases), "--max-a", str(max_a), "--ramp-a-per-s", str(ramp_a_per_s),
            "--meter-interval-s", str(meter_interval_s), "--id-tag", id_tag]


# ---------------------------------------------------------------------------
# What the grid sees, over time
# ---------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    base: float
    total: list[float]
    limits: dict[str, float]
    draws: dict[str, float]


class Timeline:
    """Samples every ``every`` s: the meter's true total per phase and every charger's limit in
    force and draw (Python chargers exactly, sim chargers as of their last line); and the node's
    ``GET /api/dlm`` every ``poll_every`` s (``polls``: (time, answer))."""

    def __init__(self, meter: Sdm630Meter, pychargers: list[ProfileCharger], sims: list[SimSite],
                 node=None, every: float = 0.1, poll_every: float = 0.5):
        self.meter = meter
        self.pychargers = pychargers
        self.sims = sims
        self.node = node
        self.every = every
        self.poll_every = poll_every
        self.samples: list[Sample] = []
        self.polls: list[tuple[float, dict]] = []
        self.poll_errors: list[str] = []
        self._tasks: list[asyncio.Task] = []

    def snapshot(self) -> Sample:
        now = time.monotonic()
        limits, draws = {}, {}
        for cp in self.pychargers:
            limits[cp.id] = cp.limit
            draws[cp.id] = cp.draw
        for s in self.sims:
            for cid, c in s.chargers().items():
                limits[cid] = float(c.get("limit_a") or 0.0)
                draws[cid] = float(c.get("draw_a") or 0.0)
        return Sample(now, self.meter.base.at(now), self.meter.currents(now), limits, draws)

    async def _sample(self):
        while True:
            self.samples.append(self.snapshot())
            await asyncio.sleep(self.every)

    async def _poll(self):
        while True:
            try:
                self.polls.append((time.monotonic(), await dlm_status(self.node)))
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.poll_errors.append(repr(e))
            await asyncio.sleep(self.poll_every)

    def start(self) -> "Timeline":
        self._tasks = [asyncio.create_task(self._sample())]
        if self.node is not None:
            self._tasks.append(asyncio.create_task(self._poll()))
        return self

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t

    def window(self, a: float, b: float) -> list[Sample]:
        return [s for s in self.samples if a <= s.t < b]

    def polls_between(self, a: float, b: float) -> list[dict]:
        return [p for t, p in self.polls if a <= t < b]

    @staticmethod
    def longest_excess(samples: list[Sample], limit: float, tol: float = 0.05) -> tuple[float, float | None, float]:
        """(longest run above ``limit`` on any phase in s, when it began, peak total)."""
        longest, began, since, peak = 0.0, None, None, 0.0
        for s in samples:
            top = max(s.total)
            peak = max(peak, top)
            if top > limit + tol:
                if since is None:
                    since = s.t
                if s.t - since >= longest:
                    longest, began = s.t - since, since
            else:
                since = None
        return longest, began, peak

    def limit_changes(self, a: float, b: float) -> dict[str, int]:
        """How often each charger's limit changed in [a, b) (Python chargers: every change;
        sim chargers: changes seen between consecutive 200 ms lines)."""
        out: dict[str, int] = {}
        for cp in self.pychargers:
            out[cp.id] = len(cp.changes_between(a, b))
        for s in self.sims:
            prev: dict[str, float] | None = None
            lines = [v for t, v in s.lines if a <= t < b]
            for v in lines:
                cur = {cid: float(c.get("limit_a") or 0.0) for cid, c in (v.get("chargers") or {}).items()}
                for cid, lim in cur.items():
                    out.setdefault(cid, 0)
                    if prev is not None and cid in prev and abs(prev[cid] - lim) > 1e-6:
                        out[cid] += 1
                prev = cur
        return out

    def describe(self, a: float, b: float, step: float = 1.0) -> str:
        """A readable excerpt: one sample per ``step`` seconds in [a, b)."""
        out, next_t = [], a
        t0 = self.samples[0].t if self.samples else a
        for s in self.window(a, b):
            if s.t >= next_t:
                lims = " ".join(f"{k}={v:g}" for k, v in sorted(s.limits.items()))
                out.append(f"  t={s.t - t0:6.1f} base={s.base:g} total={[round(x, 1) for x in s.total]} "
                           f"limits_sum={sum(s.limits.values()):.1f} [{lims}]")
                next_t = s.t + step
        return "\n".join(out)
