"""Crash-and-outage harness for ``test_outage.py``: a fault-injecting TCP proxy, chargers that behave
like real ones (a transaction-message queue that survives reconnects), a seeded fault schedule, and
the CSMS-side checks of exactly-once, in-order delivery (ARCHITECTURE §6.1, §6.3).

* ``FaultProxy``: an asyncio TCP proxy between the edge's uplink and the hub's listener. Modes
  ``pass``, ``reset`` (every open connection gets an RST, new ones are reset at once) and
  ``blackhole`` (nothing is forwarded any more, bytes are read and dropped, sockets stay open).
* ``SimCharger``: one mobilityhouse ``ocpp`` ChargePoint per WebSocket connection, but ONE charger
  state across them: a producer generates transaction messages at a seeded pace into an in-memory
  queue; a sender sends the head, pops it only on a CALLRESULT, and otherwise resends the SAME
  content under a new message id (after a timeout, a CALLERROR or a lost connection).
* ``fault_schedule`` / ``FaultInjector``: uplink cuts (reset or blackhole, 1-4 s) and edge crashes
  (SIGKILL of the process group, restart on the same config and data dir), never two at once.
* ``check16`` / ``check201``: what the CSMS received, per charger, against what the charger generated.

Nothing here comes from the Rust code.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as _dt
import os
import random
import signal
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import websockets
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.exceptions import OCPPError
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call as call16
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call as call201

from overlaylib import LOCAL_HEARTBEAT_INTERVAL, _json, overlay_toml, uplink_toml
from peerlib import FrameLog, NodeProcess, RecordingConnection

# Transaction actions: queued, retried until answered, checked at the CSMS.
TX_ACTIONS_16 = ("StartTransaction", "MeterValues", "StopTransaction")
TX_ACTIONS_201 = ("TransactionEvent",)


class Clock:
    """Seconds since the start of the run, for log lines and the fault schedule."""

    def __init__(self):
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0

    def stamp(self) -> str:
        wall = _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        return f"[{wall} +{self():7.3f}s]"


# ---------------------------------------------------------------------------
# Node config
# ---------------------------------------------------------------------------


def outbox_toml(max_messages: int = 100000, message_attempts: int = 3, retry_interval_s: int = 1) -> str:
    return (f"[outbox]\nmax_messages = {int(max_messages)}\nmessage_attempts = {int(message_attempts)}\n"
            f"retry_interval_s = {int(retry_interval_s)}\n")


async def start_edge(factory, node_id: str, uplink_url: str, *, timers: dict[str, int],
                     id_tags: list[str], outbox: bool = True) -> NodeProcess:
    """An edge whose offline answers accept ``id_tags``. ``overlaylib.Topology.start_edge`` cannot
    set ``[auth]`` (the table is written by ``peerlib.render_config``), so this passes it there."""
    parts = [overlay_toml(**timers), uplink_toml("hub", uplink_url, 0)]
    if outbox:
        parts.append(outbox_toml())
    n = await asyncio.to_thread(
        factory.start, node_id=node_id, role="edge", heartbeat_interval_s=LOCAL_HEARTBEAT_INTERVAL,
        unknown_id_tag="Accepted", local_list={t: "Accepted" for t in id_tags}, extra="\n".join(parts))
    n.node_id = node_id
    return n


async def crash_and_restart(node: NodeProcess) -> None:
    """SIGKILL the node's whole process group (it runs in its own session), then start it again on
    the same config and data dir, like NodeProcess.restart() but without a graceful stop."""
    assert node.alive(), "crash_and_restart: the node is not running\n" + node.output_tail(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.proc.pid, signal.SIGKILL)
    await asyncio.to_thread(node.proc.wait, 10)
    await asyncio.to_thread(node.stop)  # reaps it, joins the output drains, closes the pipes
    node.proc = None
    await asyncio.to_thread(node.start)


# ---------------------------------------------------------------------------
# The fault-injecting TCP proxy
# ---------------------------------------------------------------------------


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close with an RST: SO_LINGER on, timeout 0, then close without flushing."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    blackholed: bool = False
    closed: bool = False


class FaultProxy:
    """127.0.0.1:<port> -> ``target``; see the module docstring for the modes."""

    def __init__(self, target_host: str, target_port: int, clock: Clock, log: Callable[[str], None] = print):
        self.target = (target_host, target_port)
        self.clock = clock
        self.log = log
        self.mode = "pass"
        self.links: set[_Link] = set()
        self.events: list[tuple[float, str, str, int]] = []  # (t, old mode, new mode, open links)
        self.accepted = 0
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> "FaultProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.log(f"{self.clock.stamp()} proxy: 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]}")
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            self._kill(link)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # -- modes --------------------------------------------------------------
    def _set_mode(self, new: str) -> None:
        self.events.append((self.clock(), self.mode, new, len(self.links)))
        self.log(f"{self.clock.stamp()} proxy: {self.mode} -> {new} ({len(self.links)} open connection(s))")
        self.mode = new

    def reset(self) -> None:
        self._set_mode("reset")
        for link in list(self.links):
            self._kill(link)

    def blackhole(self) -> None:
        self._set_mode("blackhole")
        for link in self.links:
            link.blackholed = True

    def restore(self) -> None:
        """Back to pass mode. A blackholed connection stays dead: its peers forgot it long ago (or
        will get an RST at their next segment), so it is reset now."""
        self._set_mode("pass")
        for link in list(self.links):
            if link.blackholed:
                self._kill(link)

    # -- connections --------------------------------------------------------
    def _kill(self, link: _Link) -> None:
        link.closed = True
        _rst(link.client)
        _rst(link.upstream)
        self.links.discard(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "reset":
            _rst(writer)
            return
        link = _Link(client=writer, blackholed=self.mode == "blackhole")
        self.links.add(link)
        if link.blackholed:  # accepted, never forwarded
            self._spawn(self._pump(reader, None, link))
            return
        try:
            ureader, uwriter = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, asyncio.TimeoutError):
            self._kill(link)
            return
        link.upstream = uwriter
        if link.closed:  # reset while we were dialling
            _rst(uwriter)
            return
        self._spawn(self._pump(reader, uwriter, link))
        self._spawn(self._pump(ureader, writer, link))

    def _spawn(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, link: _Link) -> None:
        reset = False
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if link.blackholed or link.closed or dst is None:
                    continue  # read and dropped
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            reset = True
        if link.blackholed or link.closed:
            # A blackhole hides a side's close from the other side too; restore() resets both.
            return
        # Pass mode: mirror the close on the other side (an RST as an RST, an EOF as a FIN).
        link.closed = True
        self.links.discard(link)
        other = link.upstream if dst is link.client else link.client
        for w in (dst, other):
            if w is None:
                continue
            if reset:
                _rst(w)
            else:
                with contextlib.suppress(Exception):
                    w.close()


# ---------------------------------------------------------------------------
# Chargers
# ---------------------------------------------------------------------------


class LogicalClock:
    """Per-charger RFC 3339 timestamps, strictly increasing (so unique): the edge and the checks
    recognise a re-sent message by its content, of which the timestamp is part."""

    def __init__(self):
        self.last_ms = 0

    def now(self) -> str:
        ms = max(int(time.time() * 1000), self.last_ms + 1)
        self.last_ms = ms
        t = _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc)
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def payload_json(payload) -> dict:
    """The JSON object mobilityhouse ``call()`` puts on the wire for ``payload``."""
    return remove_nones(snake_to_camel_case(serialize_as_dict(payload)))


@dataclass(eq=False)
class TxMessage:
    """One queued transaction message. ``make`` builds the payload the first time the message is at
    the head of the queue (so that a MeterValues queued behind an unanswered StartTransaction gets
    the transactionId of the Start's answer); every resend reuses that payload."""
    action: str
    key: tuple  # content identity, as the CSMS-side checks recognise it
    tx: int  # index of the transaction within the charger
    make: Callable[[], Any]
    on_result: Callable[[Any], None] | None = None
    payload: Any = None
    sent: dict | None = None  # the JSON payload as sent
    attempts: int = 0
    result: Any = None


class Retry(Exception):
    pass


@dataclass
class ChargerStats:
    connects: int = 0
    drops: int = 0
    timeouts: int = 0
    call_errors: collections.Counter = field(default_factory=collections.Counter)
    resends: int = 0
    best_effort_lost: int = 0
    last_connect_error: str = ""
    # Who answered the transaction messages, told apart by the CSMS's distinctive idTagInfo /
    # idTokenInfo (parentIdTag "P<n>", groupIdToken "G-<id>"); "unknown" = an answer without one.
    answers: collections.Counter = field(default_factory=collections.Counter)


class SimCharger:
    """A charger that keeps its transaction messages across reconnects (see the module docstring).

    The URL is looked up in ``edge.urls`` at every connection attempt: the edge's listener is on
    port 0 (peerlib.render_config), so it moves when the edge restarts.
    """

    RESPONSE_TIMEOUT = 10.0
    BACKOFF = (0.2, 1.0)
    HEARTBEAT_EVERY = (10.0, 20.0)

    def __init__(self, cid: str, version: str, edge: NodeProcess, rng: random.Random, n_tx: int,
                 pace: tuple[float, float], gap: tuple[float, float], frame_logs: list[FrameLog],
                 clock: Clock):
        self.id = cid
        self.version = version
        self.edge = edge
        # ``rng`` drives what the charger generates (pacing, meter readings, transaction ids), so a
        # seed reproduces it; ``jitter`` the timing-dependent draws (backoff, heartbeats).
        self.rng = rng
        self.jitter = random.Random(rng.getrandbits(64))
        self.n_tx = n_tx
        self.pace = pace
        self.gap = gap
        self.clock = clock
        self.tag = f"TAG-{cid}"[:20]
        self.ts = LogicalClock()
        # One frame log over all of this charger's connections (message ids are UUIDs, unique
        # across them), validated by conftest after the test like every charger's.
        self.log = FrameLog(version, label=f"{cid}@edge (all connections)")
        frame_logs.append(self.log)
        self.queue: collections.deque[TxMessage] = collections.deque()
        self.generated: list[TxMessage] = []
        self.live: collections.deque = collections.deque(maxlen=8)  # best-effort calls
        self.wake = asyncio.Event()
        self.producer_done = False
        self.booted = False
        self.boot_result: Any = None
        self.tx_ids: dict[int, Any] = {}  # tx index -> transactionId the charger was answered (1.6)
        self.stats = ChargerStats()
        self.problems: list[str] = []
        self.energy = 1000 + rng.randint(0, 9000)
        self.cp = None
        self.ws = None
        self.reader: asyncio.Task | None = None
        self.next_heartbeat = 0.0
        self.inflight: TxMessage | None = None  # a transaction message awaiting its answer

    # -- schedule -----------------------------------------------------------
    def plan(self) -> list[float]:
        """The producer's sleeps, drawn up front so the run's length is known before it starts."""
        delays = []
        for _ in range(self.n_tx):
            delays.append(self.rng.uniform(*self.gap))
            delays += [self.rng.uniform(*self.pace) for _ in range(4)]
        return delays

    # -- connection -----------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.cp is not None and self.reader is not None and not self.reader.done()

    def _drop(self) -> None:
        if self.cp is None:
            return
        self.stats.drops += 1
        if self.reader is not None:
            self.reader.cancel()
        ws = self.ws
        self.cp = self.ws = self.reader = None
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.transport.abort()

    async def _read(self, cp) -> None:
        try:
            await cp.start()
        except websockets.ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever broke the ocpp library's reader is a finding
            self.problems.append(f"{self.id}: the charger's reader failed: {e!r}")
        finally:
            self.wake.set()

    async def ensure_connected(self) -> None:
        while not self.connected:
            self._drop()
            url = self.edge.urls.get("chargers")  # empty while the edge is (re)starting
            if url:
                try:
                    ws = await websockets.connect(
                        f"{url.rstrip('/')}/{self.id}", subprotocols=[self.version], open_timeout=5,
                        close_timeout=1, ping_interval=None, max_size=2**22)
                except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as e:
                    self.stats.last_connect_error = f"{url}: {e!r}"
                else:
                    if ws.subprotocol != self.version:
                        self.problems.append(f"{self.id}: the edge answered subprotocol {ws.subprotocol!r} "
                                             f"to an offer of only {self.version!r}")
                    cls = CP16 if self.version == "ocpp1.6" else CP201
                    self.cp = cls(self.id, RecordingConnection(ws, self.log),
                                  response_timeout=self.RESPONSE_TIMEOUT)
                    self.ws = ws
                    self.reader = asyncio.create_task(self._read(self.cp), name=f"reader-{self.id}")
                    self.stats.connects += 1
                    if not self.booted:  # a real charger boots once, at power-up
                        self.booted = True
                        self.boot_result = await self.best_effort(self._boot())
                    continue
            await asyncio.sleep(self.jitter.uniform(*self.BACKOFF))

    async def call(self, payload) -> Any:
        """One attempt; raises Retry on a timeout, a CALLERROR or a lost connection."""
        if not self.connected:
            raise Retry("not connected")
        cp, reader = self.cp, self.reader
        uid = str(uuid.uuid4())
        # A CALLERROR is something a real charger copes with (it resends); the frame checks must not
        # count it as a protocol violation. Its error code is still validated.
        self.log.expect_call_error(uid)
        task = asyncio.create_task(cp.call(payload, suppress=False, unique_id=uid))
        await asyncio.wait({task, reader}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():  # the connection went away under the call
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            self._drop()
            raise Retry("connection lost")
        try:
            return task.result()
        except asyncio.TimeoutError:
            self.stats.timeouts += 1
            raise Retry("timeout") from None
        except OCPPError as e:
            self.stats.call_errors[f"{type(payload).__name__}: {getattr(e, 'code', type(e).__name__)} "
                                   f"{getattr(e, 'description', '')!r}"] += 1
            raise Retry(f"CALLERROR {e!r}") from None
        except websockets.ConnectionClosed:
            self._drop()
            raise Retry("connection closed") from None

    async def best_effort(self, payload) -> Any:
        if not self.connected:
            self.stats.best_effort_lost += 1
            return None
        try:
            return await self.call(payload)
        except Retry:
            self.stats.best_effort_lost += 1
            return None

    # -- the sender -----------------------------------------------------------
    async def run_sender(self) -> None:
        while True:
            await self.ensure_connected()
            while self.live and self.connected:
                await self.best_effort(self.live.popleft())
            if time.monotonic() >= self.next_heartbeat and self.connected:
                self.next_heartbeat = time.monotonic() + self.jitter.uniform(*self.HEARTBEAT_EVERY)
                await self.best_effort(call16.Heartbeat() if self.version == "ocpp1.6" else call201.Heartbeat())
            if not self.queue:
                if self.producer_done:
                    return
                self.wake.clear()
                if self.live or not self.connected:
                    continue
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), max(0.05, self.next_heartbeat - time.monotonic()))
                continue
            if not self.connected:
                continue
            msg = self.queue[0]
            if msg.payload is None:
                msg.payload = msg.make()
                msg.sent = payload_json(msg.payload)
            if msg.attempts:
                self.stats.resends += 1
            msg.attempts += 1
            self.inflight = msg
            try:
                msg.result = await self.call(msg.payload)
            except Retry:
                await asyncio.sleep(self.jitter.uniform(*self.BACKOFF))
                continue
            finally:
                self.inflight = None
            self.stats.answers[self._answered_by(msg.result)] += 1
            if msg.on_result is not None:
                msg.on_result(msg.result)
            self.queue.popleft()

    @staticmethod
    def _answered_by(result) -> str:
        info = getattr(result, "id_tag_info", None) or getattr(result, "id_token_info", None)
        if not info:
            return "unknown"
        parent = info.get("parent_id_tag") or (info.get("group_id_token") or {}).get("id_token") or ""
        return "csms" if parent.startswith(("P", "G-")) else "local"

    def _enqueue(self, msg: TxMessage) -> None:
        self.queue.append(msg)
        self.generated.append(msg)
        self.wake.set()

    def _live(self, payload) -> None:
        self.live.append(payload)
        self.wake.set()

    # -- the producer -----------------------------------------------------------
    async def run_producer(self, delays: list[float]) -> None:
        it = iter(delays)
        try:
            for i in range(self.n_tx):
                if self.version == "ocpp1.6":
                    await self._transaction16(i, it)
                else:
                    await self._transaction201(i, it)
        finally:
            self.producer_done = True
            self.wake.set()

    def _boot(self):
        if self.version == "ocpp1.6":
            return call16.BootNotification(charge_point_model="OutageModel", charge_point_vendor="OutageVendor",
                                           charge_point_serial_number=self.id[:25])
        return call201.BootNotification(
            charging_station={"model": "OutageModel", "vendor_name": "OutageVendor", "serial_number": self.id[:25]},
            reason="PowerUp")

    def _meter16(self, ts: str, wh: int, context: str) -> list:
        return [{"timestamp": ts, "sampledValue": [{
            "value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh", "context": context}]}]

    async def _transaction16(self, i: int, delays) -> None:
        await asyncio.sleep(next(delays))
        self._live(call16.Authorize(id_tag=self.tag))
        self._live(call16.StatusNotification(connector_id=1, error_code="NoError", status="Preparing",
                                             timestamp=self.ts.now()))
        tag, start_ts, meter_start = self.tag, self.ts.now(), self.energy

        def got_start(result, i=i):
            self.tx_ids[i] = result.transaction_id

        self._enqueue(TxMessage(
            "StartTransaction", (1, tag, start_ts, meter_start), i,
            lambda: call16.StartTransaction(connector_id=1, id_tag=tag, meter_start=meter_start,
                                            timestamp=start_ts),
            got_start))
        self._live(call16.StatusNotification(connector_id=1, error_code="NoError", status="Charging",
                                             timestamp=self.ts.now()))
        for _ in range(3):
            await asyncio.sleep(next(delays))
            self.energy += self.rng.randint(50, 900)
            ts, wh = self.ts.now(), self.energy
            self._enqueue(TxMessage(
                "MeterValues", (ts,), i,
                lambda ts=ts, wh=wh: call16.MeterValues(connector_id=1, transaction_id=self._tx_id(i),
                                                        meter_value=self._meter16(ts, wh, "Sample.Periodic"))))
        await asyncio.sleep(next(delays))
        self.energy += self.rng.randint(50, 900)
        ts, wh = self.ts.now(), self.energy
        self._enqueue(TxMessage(
            "StopTransaction", (ts, wh), i,
            lambda: call16.StopTransaction(meter_stop=wh, timestamp=ts, transaction_id=self._tx_id(i),
                                           reason="Local", id_tag=tag)))
        self._live(call16.StatusNotification(connector_id=1, error_code="NoError", status="Available",
                                             timestamp=self.ts.now()))

    def _tx_id(self, i: int) -> int:
        # Only called at the head of the queue, i.e. after the Start of transaction i was answered.
        assert i in self.tx_ids, f"{self.id}: transaction {i} has no id yet (queue order broken)"
        return self.tx_ids[i]

    def _meter201(self, ts: str, wh: int, context: str) -> list:
        return [{"timestamp": ts, "sampledValue": [{
            "value": wh, "measurand": "Energy.Active.Import.Register", "context": context,
            "unitOfMeasure": {"unit": "Wh"}}]}]

    async def _transaction201(self, i: int, delays) -> None:
        await asyncio.sleep(next(delays))
        token = {"id_token": self.tag, "type": "ISO14443"}
        txid = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self._live(call201.Authorize(id_token=token))
        self._live(call201.StatusNotification(timestamp=self.ts.now(), connector_status="Occupied",
                                              evse_id=1, connector_id=1))
        for seq in range(5):
            if seq:
                await asyncio.sleep(next(delays))
            self.energy += self.rng.randint(50, 900) if seq else 0
            ts, wh = self.ts.now(), self.energy
            if seq == 0:
                p = call201.TransactionEvent(
                    event_type="Started", timestamp=ts, trigger_reason="Authorized", seq_no=0,
                    transaction_info={"transaction_id": txid, "charging_state": "Charging"}, id_token=token,
                    evse={"id": 1, "connector_id": 1}, meter_value=self._meter201(ts, wh, "Transaction.Begin"))
            elif seq < 4:
                p = call201.TransactionEvent(
                    event_type="Updated", timestamp=ts, trigger_reason="MeterValuePeriodic", seq_no=seq,
                    transaction_info={"transaction_id": txid, "charging_state": "Charging"},
                    meter_value=self._meter201(ts, wh, "Sample.Periodic"))
            else:
                p = call201.TransactionEvent(
                    event_type="Ended", timestamp=ts, trigger_reason="StopAuthorized", seq_no=4,
                    transaction_info={"transaction_id": txid, "charging_state": "Idle", "stopped_reason": "Local"},
                    id_token=token, meter_value=self._meter201(ts, wh, "Transaction.End"))
            self._enqueue(TxMessage("TransactionEvent", (txid, seq), i, lambda p=p: p))
        self._live(call201.StatusNotification(timestamp=self.ts.now(), connector_status="Available",
                                              evse_id=1, connector_id=1))

    async def close(self) -> None:
        ws, reader = self.ws, self.reader
        self.cp = self.ws = self.reader = None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader


# ---------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------


@dataclass
class Fault:
    at: float  # seconds after the start of the run
    kind: str  # "reset" | "blackhole" | "crash"
    duration: float = 0.0  # cuts only
    # Crashes with crash_in_cut: the uplink is cut (reset/blackhole) ``pre`` seconds before the kill
    # and restored ``post`` seconds after the restart, so the edge dies holding locally answered
    # messages and restarts offline.
    cut: str | None = None
    pre: float = 0.0
    post: float = 0.0
    exposed: int = 0  # chargers with a transaction message awaiting its answer when it hit
    outbox: float | None = None  # crashes: the edge's ocpp_outbox_queued just before the kill
    started: float | None = None
    ended: float | None = None

    def describe(self) -> str:
        what = self.kind if self.kind == "crash" else f"{self.kind} {self.duration:.1f}s"
        if self.cut:
            what += f" inside a {self.cut} ({self.pre:.1f}s before, {self.post:.1f}s after)"
        if self.started is None:
            return f"(planned {self.at:.1f}s) {what}"
        outbox = f", outbox {self.outbox:g}" if self.outbox is not None else ""
        return f"{self.started:.1f}s {what} [{self.exposed} in flight{outbox}]"


CUTS_PER_CYCLE = 10
CRASHES_PER_CYCLE = 3
CYCLE_S = 60.0  # a longer run repeats the 13-fault cycle every ~this many seconds


def fault_schedule(rng: random.Random, start: float, end: float,
                   crash_in_cut: bool | str = False) -> list[Fault]:
    """10 cuts + 3 crashes per cycle, each in its own slot of the window (so never two at once).
    ``crash_in_cut`` nests crashes in a cut of their own (see Fault): True for every crash,
    "mixed" for all but the first crash of each cycle, so that a run has crashes of an online
    edge (messages on their way) and of an offline one (messages answered locally, on disk)."""
    cycles = max(1, int((end - start) // CYCLE_S))
    cycle_len = (end - start) / cycles
    faults = []
    for c in range(cycles):
        kinds = ["cut"] * CUTS_PER_CYCLE + ["crash"] * CRASHES_PER_CYCLE
        rng.shuffle(kinds)
        slot = cycle_len / len(kinds)
        crashes = 0
        for k, kind in enumerate(kinds):
            if kind == "cut":
                kind, duration = rng.choice(["reset", "blackhole"]), rng.uniform(1.0, 4.0)
            else:
                duration = 0.0
            slack = max(0.0, slot - duration - 0.5)
            f = Fault(start + c * cycle_len + k * slot + rng.uniform(0, slack), kind, duration)
            nested = crash_in_cut is True or (crash_in_cut == "mixed" and crashes > 0)
            if kind == "crash":
                crashes += 1
            if kind == "crash" and nested:
                f.cut, f.pre, f.post = rng.choice(["reset", "blackhole"]), rng.uniform(1.0, 2.5), rng.uniform(0.5, 2.0)
            faults.append(f)
    return faults


class FaultInjector:
    """Runs a schedule one fault at a time: a fault that overruns its slot delays the next one."""

    def __init__(self, schedule: list[Fault], proxy: FaultProxy, edge: NodeProcess, clock: Clock,
                 log: Callable[[str], None] = print, exposure: Callable[[], int] = lambda: 0,
                 outbox: Callable[[], Any] | None = None):
        self.exposure = exposure
        self.outbox = outbox  # async () -> float | None, read before a crash (diagnostics only)
        self.schedule = schedule
        self.proxy = proxy
        self.edge = edge
        self.clock = clock
        self.log = log
        self.done: list[Fault] = []

    async def run(self) -> None:
        for f in self.schedule:
            await asyncio.sleep(max(0.0, f.at - self.clock()))
            f.started = self.clock()
            f.exposed = self.exposure()
            if f.kind == "crash":
                if f.cut:
                    getattr(self.proxy, f.cut)()
                    await asyncio.sleep(f.pre)
                if self.outbox is not None:
                    with contextlib.suppress(Exception):
                        f.outbox = await asyncio.wait_for(self.outbox(), 1)
                old = self.edge.proc.pid
                self.log(f"{self.clock.stamp()} fault: SIGKILL edge (pid {old})")
                await crash_and_restart(self.edge)
                self.log(f"{self.clock.stamp()} fault: edge restarted (pid {self.edge.proc.pid}, "
                         f"chargers at {self.edge.urls.get('chargers')})")
                if f.cut:
                    await asyncio.sleep(f.post)
                    self.proxy.restore()
            else:
                getattr(self.proxy, f.kind)()
                await asyncio.sleep(f.duration)
                self.proxy.restore()
            f.ended = self.clock()
            self.done.append(f)

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(f.kind for f in self.done))


# ---------------------------------------------------------------------------
# What the CSMS received
# ---------------------------------------------------------------------------


@dataclass
class CsmsCall:
    t: float
    uid: str
    action: str
    payload: dict
    reply: Any  # the CSMS's CALLRESULT payload, or None


def csms_calls(csms, cid: str) -> list[CsmsCall]:
    """Every CALL the hub sent the CSMS for ``cid``, over all its CSMS connections, in arrival
    order (the frames' receive times), with the CSMS's answer."""
    out = []
    for c in csms.conns(cid):
        replies = {}
        for f in c.log.frames:
            msg = _json(f.text)
            if f.direction == "peer->node" and isinstance(msg, list) and len(msg) == 3 and msg[0] == 3:
                replies.setdefault(msg[1], msg[2])
        for f in c.log.frames:
            msg = _json(f.text)
            if f.direction == "node->peer" and isinstance(msg, list) and len(msg) == 4 and msg[0] == 2:
                out.append(CsmsCall(f.t, msg[1], msg[2], msg[3], replies.get(msg[1])))
    out.sort(key=lambda x: x.t)
    return out


def csms_key16(call: CsmsCall) -> tuple:
    p = call.payload
    if call.action == "StartTransaction":
        return (p.get("connectorId"), p.get("idTag"), p.get("timestamp"), p.get("meterStart"))
    if call.action == "MeterValues":
        mv = p.get("meterValue") or [{}]
        return (mv[0].get("timestamp"),)
    return (p.get("timestamp"), p.get("meterStop"))


def csms_key201(call: CsmsCall) -> tuple:
    p = call.payload
    return ((p.get("transactionInfo") or {}).get("transactionId"), p.get("seqNo"))


def _delivery_problems(cid: str, generated: list[TxMessage], got: list[tuple[str, tuple]]) -> list[str]:
    """Exactly once and in order: ``got`` = [(action, key)] at the CSMS."""
    want = [(m.action, m.key) for m in generated]
    counts = collections.Counter(got)
    wanted = set(want)
    problems = []
    missing = [w for w in want if counts[w] == 0]
    dups = [(w, n) for w, n in counts.items() if n > 1]
    stray = [g for g in counts if g not in wanted]
    if missing:
        problems.append(f"{cid}: {len(missing)} of {len(want)} transaction messages never reached the CSMS, "
                        f"first: {missing[:3]}")
    if dups:
        problems.append(f"{cid}: {sum(n - 1 for _, n in dups)} duplicate(s) at the CSMS, first: {dups[:3]}")
    if stray:
        problems.append(f"{cid}: the CSMS got {len(stray)} transaction message(s) the charger never generated "
                        f"(content changed?), first: {stray[:3]}")
    if not missing and not dups and not stray and got != want:
        first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        problems.append(f"{cid}: transaction messages out of order at the CSMS; first difference at #{first}: "
                        f"got {got[first]}, the charger generated {want[first]}")
    return problems


def duplicates(csms, ch: SimCharger) -> int:
    """Extra copies of this charger's transaction messages at the CSMS."""
    if ch.version == "ocpp1.6":
        keys = [(c.action, csms_key16(c)) for c in csms_calls(csms, ch.id) if c.action in TX_ACTIONS_16]
    else:
        keys = [csms_key201(c) for c in csms_calls(csms, ch.id) if c.action in TX_ACTIONS_201]
    return sum(n - 1 for n in collections.Counter(keys).values() if n > 1)


def check16(csms, ch: SimCharger) -> tuple[list[str], list[int]]:
    """Problems, and the CSMS transaction ids of this charger's transactions."""
    cid = ch.id
    calls = [c for c in csms_calls(csms, cid) if c.action in TX_ACTIONS_16]
    problems = _delivery_problems(cid, ch.generated, [(c.action, csms_key16(c)) for c in calls])
    by_key = {}
    for c in calls:
        by_key.setdefault((c.action, csms_key16(c)), c)
    csms_ids: dict[int, Any] = {}
    for m in ch.generated:
        c = by_key.get((m.action, m.key))
        if c is None:
            continue
        sent = dict(m.sent or {})
        got = dict(c.payload)
        if m.action == "StartTransaction":
            tid = (c.reply or {}).get("transactionId")
            csms_ids[m.tx] = tid
            if tid is None:
                problems.append(f"{cid}: no CSMS answer recorded for StartTransaction {m.key}")
            mine = ch.tx_ids.get(m.tx)
            if isinstance(mine, int) and mine > 0 and mine != tid:
                problems.append(f"{cid}: transaction #{m.tx}: the charger was answered transactionId {mine}, "
                                f"the CSMS gave {tid}; §6.3: online the charger sees the CSMS's real answer, "
                                f"offline a negative local id")
        else:
            tid = csms_ids.get(m.tx)
            if got.get("transactionId") != tid or not isinstance(tid, int) or tid <= 0:
                problems.append(f"{cid}: {m.action} {m.key} of transaction #{m.tx} reached the CSMS with "
                                f"transactionId {got.get('transactionId')!r}; the CSMS answered its Start with "
                                f"{tid!r} (the charger used {ch.tx_ids.get(m.tx)!r})")
            # The one rewrite §6.3 allows: a local id replaced by the CSMS's.
            sent.pop("transactionId", None)
            got.pop("transactionId", None)
        if got != sent:
            problems.append(f"{cid}: {m.action} {m.key} reached the CSMS as {got}, the charger sent {sent}")
    return problems, [v for v in csms_ids.values() if v is not None]


def check201(csms, ch: SimCharger) -> tuple[list[str], list[str]]:
    """Problems, and the transactionIds that the CSMS saw Started."""
    cid = ch.id
    calls = [c for c in csms_calls(csms, cid) if c.action in TX_ACTIONS_201]
    problems = _delivery_problems(cid, ch.generated, [(c.action, csms_key201(c)) for c in calls])
    by_key = {}
    for c in calls:
        by_key.setdefault(csms_key201(c), c)
    for m in ch.generated:
        c = by_key.get(m.key)
        if c is not None and c.payload != m.sent:
            problems.append(f"{cid}: TransactionEvent {m.key} reached the CSMS as {c.payload}, "
                            f"the charger sent {m.sent}")
    per_tx: dict[str, list[tuple[Any, Any]]] = collections.defaultdict(list)
    for c in calls:
        txid, seq = csms_key201(c)
        per_tx[txid].append((seq, c.payload.get("eventType")))
    want = [(0, "Started"), (1, "Updated"), (2, "Updated"), (3, "Updated"), (4, "Ended")]
    for txid, seqs in per_tx.items():
        if seqs != want:
            problems.append(f"{cid}: transaction {txid}: (seqNo, eventType) at the CSMS {seqs}, want {want}")
    started = [txid for txid, seqs in per_tx.items() if any(e == "Started" for _, e in seqs)]
    return problems, started
