"""Overlay topologies for the independent Python peers: hub + edge(s) as real ``ocpp-node``
processes, an independent CSMS, raw overlay peers and the OS socket table.

* ``CsmsServer``: a CSMS made of mobilityhouse ``ocpp`` ChargePoints (``ocpp.v16`` / ``ocpp.v201``)
  on a ``websockets`` server (127.0.0.1, port 0, subprotocols ``ocpp1.6`` and ``ocpp2.0.1``). It
  records every connection attempt (path, offered subprotocols, headers, HTTP status) and, per
  charger id, every frame of every connection with its negotiated subprotocol. Each connection's
  frames go into a ``peerlib.FrameLog``, so the frames the hub sends the CSMS are validated against
  the OCA schemas exactly like the frames a node sends a charger. Its answers are distinctive per
  charger (interval, currentTime, transactionId, parentIdTag / groupIdToken), so a test can tell a
  CSMS answer from a local one and see that it went back to the right charger.
* ``Topology``: writes node configs per the overlay contract (``[overlay]`` timers, ``[[uplink]]``,
  ``[node_peers."<id>"]``, ``[hub]``) and starts the nodes through the ``node_factory`` fixture.
* ``OverlayPeer``: a raw ``websockets`` client that asks for overlay mode
  (``X-OCPP-NetworkingMode: OverlayNetwork``) as a configured node peer and speaks 6-element arrays.
* ``Charger16`` / ``Charger201``: mobilityhouse ChargePoints that answer CSMS-initiated calls
  (Reset, GetConfiguration, RemoteStartTransaction / RequestStartTransaction) and record them.
* ``/proc/net/tcp`` parsing: established TCP sockets per port and per owning process.

Nothing here comes from the Rust code.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import websockets
from websockets.asyncio.server import serve as ws_serve
from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201

import peerlib
from peerlib import FrameLog, NodeProcess, RecordingConnection, admin_headers, http_get_json, toml_str

HUB_ID = "hub"
NETWORKING_MODE = "X-OCPP-NetworkingMode"
OVERLAY_NETWORK = "OverlayNetwork"
OVERLAY_HEADERS = {NETWORKING_MODE: OVERLAY_NETWORK}

UUID4_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.I)

# Every timer the tests depend on, set explicitly (the contract's defaults are not relied on).
TIMERS: dict[str, int] = {
    "request_timeout_s": 30,
    "announce_ttl_s": 300,
    "ping_interval_s": 20,
    "connect_timeout_s": 10,
    "reconnect_initial_ms": 200,
    "reconnect_max_ms": 2000,
    "hop_limit": 16,
    "csms_grace_s": 30,
}

# The heartbeat interval a node would answer LOCALLY; the CSMS never answers it, so a boot that
# comes back with it was not answered by the CSMS.
LOCAL_HEARTBEAT_INTERVAL = 77


# ---------------------------------------------------------------------------
# Config (per /tmp/overlay-contract.md)
# ---------------------------------------------------------------------------


def overlay_toml(**timers: int | bool) -> str:
    t = dict(TIMERS)
    t.update(timers)
    lines = ["[overlay]"]
    for k, v in t.items():
        lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else int(v)}")
    return "\n".join(lines) + "\n"


def uplink_toml(name: str, url: str, priority: int = 0) -> str:
    return (f"[[uplink]]\nname = {toml_str(name)}\nurl = {toml_str(url)}\n"
            f"priority = {int(priority)}\n")


def node_peer_toml(peer_id: str, allow: list[str]) -> str:
    allow_s = ", ".join(toml_str(a) for a in allow)
    return f"[node_peers.{toml_str(peer_id)}]\nallow = [{allow_s}]\n"


def hub_toml(csms_url: str) -> str:
    return f"[hub]\ncsms_url = {toml_str(csms_url)}\n"


class Topology:
    """Starts overlay nodes through the ``node_factory`` fixture (real processes, port 0)."""

    def __init__(self, node_factory):
        self.factory = node_factory
        self.nodes: dict[str, NodeProcess] = {}

    async def start_node(self, node_id: str, role: str, *,
                         uplinks: list[tuple[str, str]] | None = None,
                         peers: dict[str, list[str]] | None = None,
                         csms_url: str | None = None,
                         timers: dict[str, int] | None = None,
                         extra: str = "") -> NodeProcess:
        """``uplinks``: [(name, listener url of the upstream node)], priority = list order."""
        parts = [overlay_toml(**(timers or {}))]
        for prio, (name, url) in enumerate(uplinks or []):
            parts.append(uplink_toml(name, url, prio))
        for pid, allow in (peers or {}).items():
            parts.append(node_peer_toml(pid, allow))
        if csms_url is not None:
            parts.append(hub_toml(csms_url))
        if extra:
            parts.append(extra)
        # NodeProcess.start() blocks until the `listening` lines: keep the event loop (the CSMS,
        # the chargers) running meanwhile.
        n = await asyncio.to_thread(
            self.factory.start, node_id=node_id, role=role,
            heartbeat_interval_s=LOCAL_HEARTBEAT_INTERVAL, extra="\n".join(parts))
        n.node_id = node_id
        self.nodes[node_id] = n
        return n

    async def start_hub(self, csms_url: str, peers: dict[str, list[str]], node_id: str = HUB_ID,
                        **kw) -> NodeProcess:
        return await self.start_node(node_id, "hub", peers=peers, csms_url=csms_url, **kw)

    async def start_edge(self, node_id: str, uplink_url: str, uplink_name: str = "up",
                         **kw) -> NodeProcess:
        return await self.start_node(node_id, "edge", uplinks=[(uplink_name, uplink_url)], **kw)


def listener_port(node: NodeProcess, name: str = "chargers") -> int:
    return urllib.parse.urlsplit(node.urls[name]).port


# ---------------------------------------------------------------------------
# Admin API and logs
# ---------------------------------------------------------------------------


async def status(node: NodeProcess) -> dict:
    return await asyncio.to_thread(http_get_json, f"{node.admin_url}/api/status")


def http_get_text(url: str, timeout: float = 10.0) -> str:
    import urllib.request
    req = urllib.request.Request(url, headers=admin_headers(url))
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        assert resp.status == 200, f"GET {url} -> HTTP {resp.status}"
        return resp.read().decode("utf-8")


async def metrics(node: NodeProcess) -> str:
    return await asyncio.to_thread(http_get_text, f"{node.admin_url}/metrics")


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one Prometheus sample (labels must match exactly, in any order), or None."""
    want = dict(labels or {})
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if got == want:
            return float(m.group(3))
    return None


def metric_sum(text: str, name: str, where: dict[str, str] | None = None) -> float | None:
    """The sum of the samples of ``name`` whose labels include ``where``; None if there are none."""
    want = dict(where or {})
    total, seen = 0.0, False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in want.items()):
            total += float(m.group(3))
            seen = True
    return total if seen else None


async def security_events(node: NodeProcess, kind: str) -> float:
    v = metric_sum(await metrics(node), "ocpp_security_events_total", {"kind": kind})
    return 0.0 if v is None else v


async def wait_log(node: NodeProcess, pattern: str, timeout: float) -> str | None:
    return await asyncio.to_thread(node.wait_for_output, pattern, timeout, ("stderr",))


def stderr_lines(node: NodeProcess) -> list[str]:
    with node._lock:
        return list(node.stderr_lines)


async def wait_until(check: Callable[[], Any], timeout: float, what: str,
                     describe: Callable[[], str] | None = None, interval: float = 0.2) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            v = check()
            if asyncio.iscoroutine(v):
                v = await v
            if v:
                return v
            last_exc = None
        except AssertionError as e:
            last_exc = e
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout:.0f}s waiting for {what}"
            if last_exc is not None:
                msg += f"; last check: {last_exc}"
            if describe is not None:
                d = describe()
                if asyncio.iscoroutine(d):
                    d = await d
                msg += f"\n{d}"
            raise AssertionError(msg)
        await asyncio.sleep(interval)


async def wait_uplink_up(node: NodeProcess, timeout: float = 60.0) -> dict:
    async def up():
        st = await status(node)
        ups = st.get("uplinks") or []
        return st if ups and ups[0].get("state") == "up" else None

    async def describe():
        with contextlib.suppress(Exception):
            return f"last /api/status of {node.node_id}: {json.dumps(await status(node))[:3000]}\n" \
                   + node.output_tail(40)
        return node.output_tail(40)

    return await wait_until(up, timeout, f"{node.node_id}: uplinks[0].state == 'up'", describe)


# ---------------------------------------------------------------------------
# /proc/net/tcp
# ---------------------------------------------------------------------------

TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


@dataclass(frozen=True)
class TcpSocket:
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: str
    inode: int


def _ipv4(hexaddr: str) -> str:
    b = bytes.fromhex(hexaddr)[::-1]  # one little-endian 32-bit word
    return ".".join(str(x) for x in b)


def _ipv6(hexaddr: str) -> str:
    import ipaddress
    raw = bytes.fromhex(hexaddr)
    # four 32-bit words, each in host (little-endian) order
    b = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    a = ipaddress.IPv6Address(b)
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


def tcp_sockets() -> list[TcpSocket]:
    """Every TCP socket of this network namespace (IPv4 and IPv6)."""
    out: list[TcpSocket] = []
    for fname, conv in (("/proc/net/tcp", _ipv4), ("/proc/net/tcp6", _ipv6)):
        try:
            lines = Path(fname).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10:
                continue
            la, lp = f[1].split(":")
            ra, rp = f[2].split(":")
            out.append(TcpSocket(conv(la), int(lp, 16), conv(ra), int(rp, 16),
                                 TCP_STATES.get(f[3].upper(), f[3]), int(f[9])))
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets that process ``pid`` holds open."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            m = re.match(r"^socket:\[(\d+)\]$", target)
            if m:
                inodes.add(int(m.group(1)))
    return inodes


def established(*, remote_port: int | None = None, local_port: int | None = None,
                pid: int | None = None) -> list[TcpSocket]:
    socks = [s for s in tcp_sockets() if s.state == "ESTABLISHED"]
    if remote_port is not None:
        socks = [s for s in socks if s.remote_port == remote_port]
    if local_port is not None:
        socks = [s for s in socks if s.local_port == local_port]
    if pid is not None:
        owned = socket_inodes(pid)
        socks = [s for s in socks if s.inode in owned]
    return socks


# ---------------------------------------------------------------------------
# The independent CSMS
# ---------------------------------------------------------------------------


@dataclass
class Attempt:
    """One HTTP upgrade that reached the CSMS."""
    path: str
    charger_id: str | None
    offered: list[str]
    headers: dict[str, str]
    status: int | None = None  # None = accepted (101)
    t: float = field(default_factory=time.monotonic)


class CsmsConnection:
    def __init__(self, server: "CsmsServer", ws, charger_id: str, version: str):
        self.server = server
        self.ws = ws
        self.charger_id = charger_id
        self.path = ws.request.path
        self.subprotocol = version
        self.headers = {k: v for k, v in ws.request.headers.raw_items()}
        self.log = FrameLog(version, label=f"CSMS<-hub {charger_id}")
        self.conn = RecordingConnection(ws, self.log)
        cls = CsmsCP16 if version == "ocpp1.6" else CsmsCP201
        self.cp = cls(charger_id, self.conn, response_timeout=60)
        self.cp.server = server
        self.opened_at = time.monotonic()
        self.closed_at: float | None = None
        self.closed = asyncio.Event()

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def calls(self) -> list[tuple[str, str, dict]]:
        """(unique id, action, payload) of every CALL the hub sent on this connection."""
        out = []
        for f in self.log.frames:
            if f.direction != "node->peer":
                continue
            msg = _json(f.text)
            if isinstance(msg, list) and len(msg) == 4 and msg[0] == 2:
                out.append((msg[1], msg[2], msg[3]))
        return out

    def frames_from_hub(self) -> list[Any]:
        return [_json(f.text) for f in self.log.frames if f.direction == "node->peer"]


def _json(text) -> Any:
    if isinstance(text, bytes):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


class CsmsServer:
    """An unmodified OCPP-J CSMS: ``ws://127.0.0.1:<port>/ocpp/<chargerId>``."""

    def __init__(self, frame_logs: list[FrameLog] | None = None, path: str = "/ocpp"):
        self.frame_logs = frame_logs if frame_logs is not None else []
        self.base_path = path
        self.refuse: dict[str, int] = {}  # charger id -> HTTP status of the refusal
        self.attempts: list[Attempt] = []
        self.connections: list[CsmsConnection] = []
        self.problems: list[str] = []
        self.index: dict[str, int] = {}  # charger id -> stable small number (distinct answers)
        self.tx_ids: dict[str, list[int]] = {}
        self._next_tx = 900001
        self._server = None
        self._tasks: set[asyncio.Task] = set()
        self.url = ""

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> "CsmsServer":
        self._server = await ws_serve(
            self._handler, "127.0.0.1", 0, subprotocols=["ocpp1.6", "ocpp2.0.1"],
            process_request=self._process_request, ping_interval=None, max_size=2**22,
            open_timeout=30)
        port = self._server.sockets[0].getsockname()[1]
        self.port = port
        self.url = f"ws://127.0.0.1:{port}{self.base_path}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 10)

    # -- upgrade ------------------------------------------------------------
    def _charger_id(self, path: str) -> str | None:
        prefix = self.base_path.rstrip("/") + "/"
        raw = path.split("?", 1)[0]
        if not raw.startswith(prefix) or "/" in raw[len(prefix):] or len(raw) == len(prefix):
            return None
        return urllib.parse.unquote(raw[len(prefix):])

    def _process_request(self, connection, request):
        offered = []
        for v in request.headers.get_all("Sec-WebSocket-Protocol"):
            offered += [p.strip() for p in v.split(",") if p.strip()]
        cid = self._charger_id(request.path)
        a = Attempt(request.path, cid, offered, {k: v for k, v in request.headers.raw_items()})
        self.attempts.append(a)
        if cid is None:
            self.problems.append(f"hub opened a CSMS socket on an unexpected path {request.path!r}")
            a.status = 404
            return connection.respond(http.HTTPStatus.NOT_FOUND, "no such path\n")
        if cid in self.refuse:
            a.status = self.refuse[cid]
            return connection.respond(http.HTTPStatus(self.refuse[cid]), "refused by the test CSMS\n")
        return None

    async def _handler(self, ws):
        cid = self._charger_id(ws.request.path) or "?"
        version = ws.subprotocol
        if version not in peerlib.VERSIONS:
            self.problems.append(f"{cid}: hub's CSMS socket negotiated subprotocol {version!r}")
            await ws.close(1002, "unexpected subprotocol")
            return
        c = CsmsConnection(self, ws, cid, version)
        self.index.setdefault(cid, len(self.index))
        self.connections.append(c)
        self.frame_logs.append(c.log)
        try:
            await c.cp.start()
        except websockets.ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001 - a CSMS bug must show up in the test
            self.problems.append(f"{cid}: CSMS handler crashed: {e!r}")
        finally:
            c.closed_at = time.monotonic()
            c.closed.set()

    # -- queries ------------------------------------------------------------
    def conns(self, cid: str) -> list[CsmsConnection]:
        return [c for c in self.connections if c.charger_id == cid]

    def open_conns(self) -> dict[str, CsmsConnection]:
        out = {}
        for c in self.connections:
            if c.open:
                out[c.charger_id] = c
        return out

    def conn(self, cid: str) -> CsmsConnection:
        live = [c for c in self.conns(cid) if c.open]
        assert live, f"the CSMS has no open connection for {cid!r} (connections: {self.summary()})"
        return live[-1]

    def calls(self, cid: str, action: str | None = None) -> list[tuple[str, str, dict]]:
        out = []
        for c in self.conns(cid):
            out += [x for x in c.calls() if action is None or x[1] == action]
        return out

    def attempts_for(self, cid: str) -> list[Attempt]:
        return [a for a in self.attempts if a.charger_id == cid]

    def summary(self) -> str:
        parts = []
        for c in self.connections:
            parts.append(f"{c.charger_id}({c.subprotocol},{'open' if c.open else 'closed'},"
                         f"{len(c.log.frames)} frames)")
        return ", ".join(parts) or "none"

    async def wait_connected(self, wanted: dict[str, str], timeout: float) -> dict[str, CsmsConnection]:
        """Wait until every charger id in ``wanted`` (id -> subprotocol) has an open connection."""
        def ok():
            live = self.open_conns()
            return live if all(cid in live for cid in wanted) else None

        def describe():
            live = self.open_conns()
            missing = sorted(set(wanted) - set(live))
            return (f"CSMS is missing {len(missing)} of {len(wanted)} chargers: {missing[:20]}\n"
                    f"attempts: {[(a.path, a.status) for a in self.attempts][-20:]}")

        return await wait_until(ok, timeout, f"{len(wanted)} CSMS connections", describe)

    async def call(self, cid: str, payload, unique_id: str | None = None):
        return await self.conn(cid).cp.call(payload, suppress=False, unique_id=unique_id)

    # -- distinctive answers --------------------------------------------------
    def idx(self, cid: str) -> int:
        return self.index.setdefault(cid, len(self.index))

    def interval(self, cid: str) -> int:
        return 1000 + self.idx(cid)

    def clock(self, cid: str) -> str:
        i = self.idx(cid)
        return f"2031-01-01T{i // 60 % 24:02d}:{i % 60:02d}:07.000Z"

    def parent_tag(self, cid: str) -> str:
        return f"P{self.idx(cid)}"[:20]

    def group_token(self, cid: str) -> str:
        return f"G-{cid}"[:36]

    def new_tx(self, cid: str) -> int:
        tx = self._next_tx
        self._next_tx += 1
        self.tx_ids.setdefault(cid, []).append(tx)
        return tx

    def total_cost(self, cid: str) -> float:
        return self.idx(cid) + 0.25


class CsmsCP16(CP16):
    server: CsmsServer

    @on(Action16.boot_notification)
    def on_boot(self, **kw):
        return result16.BootNotification(current_time=self.server.clock(self.id),
                                         interval=self.server.interval(self.id), status="Accepted")

    @on(Action16.heartbeat)
    def on_heartbeat(self, **kw):
        return result16.Heartbeat(current_time=self.server.clock(self.id))

    @on(Action16.authorize)
    def on_authorize(self, id_tag, **kw):
        return result16.Authorize(id_tag_info={"status": "Accepted",
                                               "parent_id_tag": self.server.parent_tag(self.id)})

    @on(Action16.start_transaction)
    def on_start(self, **kw):
        return result16.StartTransaction(
            transaction_id=self.server.new_tx(self.id),
            id_tag_info={"status": "Accepted", "parent_id_tag": self.server.parent_tag(self.id)})

    @on(Action16.stop_transaction)
    def on_stop(self, **kw):
        return result16.StopTransaction(
            id_tag_info={"status": "Accepted", "parent_id_tag": self.server.parent_tag(self.id)})

    @on(Action16.meter_values)
    def on_meter_values(self, **kw):
        return result16.MeterValues()

    @on(Action16.status_notification)
    def on_status(self, **kw):
        return result16.StatusNotification()

    @on(Action16.data_transfer)
    def on_data_transfer(self, **kw):
        return result16.DataTransfer(status="Accepted", data=f"csms:{self.id}")


class CsmsCP201(CP201):
    server: CsmsServer

    @on(Action201.boot_notification)
    def on_boot(self, **kw):
        return result201.BootNotification(current_time=self.server.clock(self.id),
                                          interval=self.server.interval(self.id), status="Accepted")

    @on(Action201.heartbeat)
    def on_heartbeat(self, **kw):
        return result201.Heartbeat(current_time=self.server.clock(self.id))

    @on(Action201.authorize)
    def on_authorize(self, id_token, **kw):
        return result201.Authorize(id_token_info={
            "status": "Accepted",
            "group_id_token": {"id_token": self.server.group_token(self.id), "type": "Central"}})

    @on(Action201.transaction_event)
    def on_transaction_event(self, event_type, **kw):
        info = {"status": "Accepted",
                "group_id_token": {"id_token": self.server.group_token(self.id), "type": "Central"}}
        if event_type == "Ended":
            return result201.TransactionEvent(total_cost=self.server.total_cost(self.id),
                                              id_token_info=info)
        return result201.TransactionEvent(id_token_info=info)

    @on(Action201.status_notification)
    def on_status(self, **kw):
        return result201.StatusNotification()

    @on(Action201.meter_values)
    def on_meter_values(self, **kw):
        return result201.MeterValues()

    @on(Action201.notify_event)
    def on_notify_event(self, **kw):
        return result201.NotifyEvent()


# ---------------------------------------------------------------------------
# Chargers that answer CSMS-initiated calls
# ---------------------------------------------------------------------------


class Charger16(CP16):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.received: list[tuple[str, dict]] = []

    @on(Action16.reset)
    def on_reset(self, type, **kw):
        self.received.append(("Reset", {"type": type}))
        return result16.Reset(status="Accepted")

    @on(Action16.get_configuration)
    def on_get_configuration(self, key=None, **kw):
        self.received.append(("GetConfiguration", {"key": key}))
        return result16.GetConfiguration(configuration_key=[
            {"key": "ChargePointId", "readonly": True, "value": self.id}])

    @on(Action16.remote_start_transaction)
    def on_remote_start(self, id_tag, connector_id=None, **kw):
        self.received.append(("RemoteStartTransaction", {"id_tag": id_tag, "connector_id": connector_id}))
        return result16.RemoteStartTransaction(status="Accepted")


class Charger201(CP201):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.received: list[tuple[str, dict]] = []

    @on(Action201.reset)
    def on_reset(self, type, **kw):
        self.received.append(("Reset", {"type": type}))
        return result201.Reset(status="Accepted")

    @on(Action201.request_start_transaction)
    def on_request_start(self, id_token, remote_start_id, **kw):
        self.received.append(("RequestStartTransaction",
                              {"id_token": id_token, "remote_start_id": remote_start_id}))
        return result201.RequestStartTransaction(status="Accepted", transaction_id=f"T-{self.id}"[:36])

    @on(Action201.get_variables)
    def on_get_variables(self, get_variable_data, **kw):
        self.received.append(("GetVariables", {"get_variable_data": get_variable_data}))
        return result201.GetVariables(get_variable_result=[
            {"attribute_status": "Accepted", "attribute_value": self.id,
             "component": d["component"], "variable": d["variable"]} for d in get_variable_data])


def charger_class(version: str):
    return Charger16 if version == "ocpp1.6" else Charger201


# ---------------------------------------------------------------------------
# A raw overlay peer (6-element arrays)
# ---------------------------------------------------------------------------


class OverlayPeer:
    """``ws://<node listener>/<node_id>`` with ``X-OCPP-NetworkingMode: OverlayNetwork``."""

    def __init__(self, ws, node_id: str):
        self.ws = ws
        self.node_id = node_id
        self.frames: list[Any] = []  # parsed frames received (text), in order
        self.raw: list[str | bytes] = []
        self._new = asyncio.Event()
        self._task = asyncio.create_task(self._read(), name=f"overlay-peer-{node_id}")
        self.closed = asyncio.Event()

    @classmethod
    async def connect(cls, listener_url: str, node_id: str, subprotocols=None, **kw) -> "OverlayPeer":
        url = f"{listener_url.rstrip('/')}/{urllib.parse.quote(node_id, safe='')}"
        ws = await websockets.connect(url, additional_headers=OVERLAY_HEADERS, subprotocols=subprotocols,
                                      open_timeout=10, ping_interval=None, max_size=2**22, **kw)
        got = ws.response.headers.get(NETWORKING_MODE)
        assert got is not None and got.strip().lower() == OVERLAY_NETWORK.lower(), (
            f"the node accepted overlay peer {node_id!r} without echoing {NETWORKING_MODE} "
            f"(got {got!r}); §3.1 says the 101 echoes it")
        return cls(ws, node_id)

    async def _read(self):
        try:
            async for msg in self.ws:
                self.raw.append(msg)
                self.frames.append(_json(msg) if isinstance(msg, str) else msg)
                self._new.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self._new.set()

    async def send(self, frame: list) -> None:
        await self.ws.send(json.dumps(frame))

    async def wait_frame(self, pred: Callable[[Any], bool], timeout: float) -> Any | None:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for f in self.frames[seen:]:
                if pred(f):
                    return f
            seen = len(self.frames)
            left = deadline - time.monotonic()
            if left <= 0 or self.closed.is_set():
                for f in self.frames[seen:]:
                    if pred(f):
                        return f
                return None
            self._new.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)

    def frames_with_id(self, uid: str) -> list[Any]:
        return [f for f in self.frames if isinstance(f, list) and len(f) >= 4 and f[3] == uid]

    async def close(self):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


def announcement(routing_node: str, routes: list[tuple[str, str]], *, full: bool = True,
                 withdrawn: list[str] | None = None, ttl: int = 120) -> dict:
    """A NotifyNetworkTopology payload (routing/src/announce.rs shape); routes = [(id, version)]."""
    info: dict[str, Any] = {
        "routingNode": routing_node,
        "routes": [{"destinationId": d, "priority": 0, "ocppVersion": v} for d, v in routes],
        "full": full,
        "ttl": ttl,
    }
    if withdrawn:
        info["withdrawn"] = withdrawn
    return {"networkTopologyInformation": info}


def as_list(v: Any) -> list:
    """dest/path may be a string or an array (§3.1)."""
    return [v] if isinstance(v, str) else list(v) if isinstance(v, list) else [v]


# ---------------------------------------------------------------------------
# Charger sessions through the overlay, checked against what the CSMS saw
# ---------------------------------------------------------------------------


def _energy201(wh: float, context: str) -> list:
    return [{"timestamp": peerlib.now_iso(), "sampledValue": [{
        "value": wh, "measurand": "Energy.Active.Import.Register", "context": context,
        "unitOfMeasure": {"unit": "Wh"}}]}]


async def session16(cp, csms: CsmsServer, *, full: bool = True) -> dict:
    """Boot, Heartbeat (and if ``full``: Authorize, Start/MeterValues/StopTransaction) of a 1.6
    charger; every answer must be the CSMS's distinctive answer for THIS charger."""
    from ocpp.v16 import call as call16
    cid = cp.id
    tag = f"TAG-{cid}"[:20]
    boot = await cp.call(call16.BootNotification(charge_point_model="OverlayModel",
                                                 charge_point_vendor="OverlayVendor",
                                                 charge_point_serial_number=cid[:25]),
                         suppress=False, unique_id=f"{cid}-boot")
    assert boot.status == "Accepted", (cid, boot)
    assert boot.interval == csms.interval(cid), (
        f"{cid}: BootNotification interval {boot.interval}, the CSMS answered {csms.interval(cid)} "
        f"for this charger ({LOCAL_HEARTBEAT_INTERVAL} would be the node's local answer)")
    assert boot.current_time == csms.clock(cid), (cid, boot, csms.clock(cid))
    hb = await cp.call(call16.Heartbeat(), suppress=False, unique_id=f"{cid}-hb")
    assert hb.current_time == csms.clock(cid), (
        f"{cid}: Heartbeat currentTime {hb.current_time!r}, the CSMS answered {csms.clock(cid)!r}")
    if not full:
        return {}
    auth = await cp.call(call16.Authorize(id_tag=tag), suppress=False, unique_id=f"{cid}-auth")
    assert auth.id_tag_info == {"status": "Accepted", "parent_id_tag": csms.parent_tag(cid)}, (cid, auth)
    meter_start = 100 + csms.idx(cid)
    start = await cp.call(call16.StartTransaction(connector_id=1, id_tag=tag, meter_start=meter_start,
                                                  timestamp=peerlib.now_iso()),
                          suppress=False, unique_id=f"{cid}-start")
    assigned = csms.tx_ids.get(cid, [])
    assert len(assigned) == 1, f"{cid}: the CSMS handed out transaction ids {assigned}, want exactly one"
    assert start.transaction_id == assigned[0], (
        f"{cid}: StartTransaction answered transactionId {start.transaction_id}, the CSMS gave this "
        f"charger {assigned[0]}")
    assert start.id_tag_info == {"status": "Accepted", "parent_id_tag": csms.parent_tag(cid)}, (cid, start)
    tx = start.transaction_id
    await cp.call(call16.MeterValues(connector_id=1, transaction_id=tx, meter_value=[{
        "timestamp": peerlib.now_iso(),
        "sampledValue": [{"value": str(meter_start + 500), "measurand": "Energy.Active.Import.Register",
                          "unit": "Wh", "context": "Sample.Periodic"}]}]),
        suppress=False, unique_id=f"{cid}-mv")
    stop = await cp.call(call16.StopTransaction(meter_stop=meter_start + 900, timestamp=peerlib.now_iso(),
                                                transaction_id=tx, reason="Local", id_tag=tag),
                         suppress=False, unique_id=f"{cid}-stop")
    assert stop.id_tag_info == {"status": "Accepted", "parent_id_tag": csms.parent_tag(cid)}, (cid, stop)
    return {"tx": tx}


SESSION16_ACTIONS = ["BootNotification", "Heartbeat", "Authorize", "StartTransaction", "MeterValues",
                     "StopTransaction"]
SESSION201_ACTIONS = ["BootNotification", "Heartbeat", "Authorize", "TransactionEvent", "TransactionEvent"]


async def session201(cp, csms: CsmsServer, *, full: bool = True) -> dict:
    """Boot, Heartbeat (and if ``full``: Authorize, TransactionEvent Started/Ended) of a 2.0.1 charger."""
    from ocpp.v201 import call as call201
    cid = cp.id
    token = {"id_token": f"TAG-{cid}"[:36], "type": "ISO14443"}
    group = {"status": "Accepted", "group_id_token": {"id_token": csms.group_token(cid), "type": "Central"}}
    boot = await cp.call(call201.BootNotification(
        charging_station={"model": "OverlayModel", "vendor_name": "OverlayVendor", "serial_number": cid[:25]},
        reason="PowerUp"), suppress=False, unique_id=f"{cid}-boot")
    assert boot.status == "Accepted", (cid, boot)
    assert boot.interval == csms.interval(cid), (
        f"{cid}: BootNotification interval {boot.interval}, the CSMS answered {csms.interval(cid)} "
        f"for this charger ({LOCAL_HEARTBEAT_INTERVAL} would be the node's local answer)")
    assert boot.current_time == csms.clock(cid), (cid, boot, csms.clock(cid))
    hb = await cp.call(call201.Heartbeat(), suppress=False, unique_id=f"{cid}-hb")
    assert hb.current_time == csms.clock(cid), (
        f"{cid}: Heartbeat currentTime {hb.current_time!r}, the CSMS answered {csms.clock(cid)!r}")
    if not full:
        return {}
    auth = await cp.call(call201.Authorize(id_token=token), suppress=False, unique_id=f"{cid}-auth")
    assert auth.id_token_info == group, (cid, auth)
    txid = f"TX-{cid}"[:36]
    started = await cp.call(call201.TransactionEvent(
        event_type="Started", timestamp=peerlib.now_iso(), trigger_reason="Authorized", seq_no=0,
        transaction_info={"transaction_id": txid, "charging_state": "Charging"}, id_token=token,
        evse={"id": 1, "connector_id": 1}, meter_value=_energy201(100, "Transaction.Begin")),
        suppress=False, unique_id=f"{cid}-started")
    assert started.id_token_info == group, (cid, started)
    ended = await cp.call(call201.TransactionEvent(
        event_type="Ended", timestamp=peerlib.now_iso(), trigger_reason="StopAuthorized", seq_no=1,
        transaction_info={"transaction_id": txid, "charging_state": "Idle", "stopped_reason": "Local"},
        id_token=token, meter_value=_energy201(1500, "Transaction.End")),
        suppress=False, unique_id=f"{cid}-ended")
    assert ended.total_cost == csms.total_cost(cid), (
        f"{cid}: TransactionEvent Ended totalCost {ended.total_cost}, the CSMS answered "
        f"{csms.total_cost(cid)} for this charger")
    assert ended.id_token_info == group, (cid, ended)
    return {"tx": txid}


def exchanges(log: FrameLog, caller: str) -> list[tuple[str, str, Any, Any]]:
    """(id, action, request payload, reply) of the CALLs that ``caller`` ("peer" = the test side,
    "node" = the node side) sent on one connection; reply = ("result", payload) / ("error", code)."""
    sent_dir = "peer->node" if caller == "peer" else "node->peer"
    calls: list[tuple[str, str, Any]] = []
    replies: dict[str, Any] = {}
    for f in log.frames:
        msg = _json(f.text)
        if not isinstance(msg, list) or not msg:
            continue
        if f.direction == sent_dir and len(msg) == 4 and msg[0] == 2:
            calls.append((msg[1], msg[2], msg[3]))
        elif f.direction != sent_dir and msg[0] == 3 and len(msg) == 3:
            replies.setdefault(msg[1], ("result", msg[2]))
        elif f.direction != sent_dir and msg[0] == 4 and len(msg) == 5:
            replies.setdefault(msg[1], ("error", msg[2]))
    return [(uid, action, payload, replies.get(uid)) for uid, action, payload in calls]


def check_relayed(cp, csms: CsmsServer, expected_actions: list[str]) -> list[str]:
    """The CSMS got exactly the charger's CALLs (same actions and payloads, in order, each once,
    under fresh UUID v4 ids), and the charger got exactly the CSMS's answers. Returns the CSMS ids."""
    cid = cp.id
    mine = exchanges(cp.log, "peer")
    conns = csms.conns(cid)
    theirs = []
    for c in conns:
        theirs += exchanges(c.log, "node")
    assert [a for _, a, _, _ in mine] == expected_actions, (cid, mine)
    assert [a for _, a, _, _ in theirs] == expected_actions, (
        f"{cid}: the CSMS received {[a for _, a, _, _ in theirs]}, the charger sent {expected_actions}")
    ids = []
    for (cuid, action, cpayload, creply), (suid, saction, spayload, sreply) in zip(mine, theirs):
        assert spayload == cpayload, (
            f"{cid} {action}: the CSMS received payload {spayload}, the charger sent {cpayload}")
        assert isinstance(suid, str) and UUID4_RE.match(suid), (
            f"{cid} {action}: the CSMS saw message id {suid!r}; §6.1: the edge gives every charger "
            f"CALL a fresh UUID v4")
        assert suid != cuid, (cid, action, suid)
        assert creply == sreply, (
            f"{cid} {action}: the charger got {creply}, the CSMS answered {sreply}")
        ids.append(suid)
    return ids


async def csms_initiated16(csms: CsmsServer, cp) -> None:
    """Reset, GetConfiguration and RemoteStartTransaction from the CSMS to a 1.6 charger."""
    from ocpp.v16 import call as call16
    cid = cp.id
    r = await csms.call(cid, call16.Reset(type="Soft"), unique_id=f"cs-{cid}-reset")
    assert r.status == "Accepted", (cid, r)
    gc = await csms.call(cid, call16.GetConfiguration(key=["ChargePointId"]), unique_id=f"cs-{cid}-gc")
    assert gc.configuration_key == [{"key": "ChargePointId", "readonly": True, "value": cid}], (
        f"GetConfiguration sent by the CSMS for {cid} was answered with {gc.configuration_key}")
    tag = f"RS-{cid}"[:20]
    rs = await csms.call(cid, call16.RemoteStartTransaction(id_tag=tag, connector_id=1),
                         unique_id=f"cs-{cid}-rs")
    assert rs.status == "Accepted", (cid, rs)
    assert cp.received == [("Reset", {"type": "Soft"}), ("GetConfiguration", {"key": ["ChargePointId"]}),
                           ("RemoteStartTransaction", {"id_tag": tag, "connector_id": 1})], (
        f"{cid} received {cp.received}")
    _check_csms_ids_kept(cp, [f"cs-{cid}-reset", f"cs-{cid}-gc", f"cs-{cid}-rs"])


async def csms_initiated201(csms: CsmsServer, cp) -> None:
    """Reset, RequestStartTransaction and GetVariables from the CSMS to a 2.0.1 charger."""
    from ocpp.v201 import call as call201
    cid = cp.id
    r = await csms.call(cid, call201.Reset(type="Immediate"), unique_id=f"cs-{cid}-reset")
    assert r.status == "Accepted", (cid, r)
    token = {"id_token": f"RS-{cid}"[:36], "type": "Central"}
    rid = 5000 + csms.idx(cid)
    rs = await csms.call(cid, call201.RequestStartTransaction(id_token=token, remote_start_id=rid),
                         unique_id=f"cs-{cid}-rs")
    assert rs.status == "Accepted", (cid, rs)
    assert rs.transaction_id == f"T-{cid}"[:36], (
        f"RequestStartTransaction sent by the CSMS for {cid} was answered with {rs}")
    gv = await csms.call(cid, call201.GetVariables(get_variable_data=[
        {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "Identity"}}]), unique_id=f"cs-{cid}-gv")
    assert [x["attribute_value"] for x in gv.get_variable_result] == [cid], (cid, gv)
    got = [(a, p) for a, p in cp.received]
    assert [a for a, _ in got] == ["Reset", "RequestStartTransaction", "GetVariables"], (cid, got)
    assert got[0][1] == {"type": "Immediate"}, (cid, got)
    assert got[1][1] == {"id_token": token, "remote_start_id": rid}, (cid, got)
    _check_csms_ids_kept(cp, [f"cs-{cid}-reset", f"cs-{cid}-rs", f"cs-{cid}-gv"])


def _check_csms_ids_kept(cp, ids: list[str]) -> None:
    got = [uid for uid, _, _, _ in exchanges(cp.log, "node")]
    assert got == ids, (
        f"{cp.id}: CSMS-initiated CALLs arrived with ids {got}; §6.1: the CSMS's ids are kept "
        f"down to the charger ({ids})")
