"""Fixtures: a real ``ocpp-node`` process, and mobilityhouse ``ocpp`` chargers that connect to it.

Every text frame the node sends to a charger made by the ``charger`` fixture is recorded and, after the
test body, validated against the OCA JSON schemas inside the installed ``ocpp`` package. An invalid
frame, or a CALLERROR that the test did not declare with ``cp.log.expect_call_error(id)``, fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
import websockets

import peerlib
from peerlib import FrameLog, NodeProcess, RecordingConnection


# ---------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def node_bin():
    path = peerlib.node_bin()
    if not path.is_file():
        pytest.fail(f"ocpp-node binary not found at {path}: build it (cargo build --release -p ocpp-node) "
                    f"or set OCPP_NODE_BIN", pytrace=False)
    return path


class NodeFactory:
    def __init__(self, node_bin, tmp_path_factory):
        self.node_bin = node_bin
        self.tmp_path_factory = tmp_path_factory
        self.nodes: list[NodeProcess] = []

    def config(self, **kw) -> tuple:
        """Write a config into a fresh tmp dir; returns (dir, config path)."""
        d = self.tmp_path_factory.mktemp("node")
        cfg = d / "node.toml"
        cfg.write_text(peerlib.render_config(d / "data", **kw), encoding="utf-8")
        return d, cfg

    def start(self, **kw) -> NodeProcess:
        d, cfg = self.config(**kw)
        n = NodeProcess([str(self.node_bin), "run", "--config", str(cfg)], cwd=d)
        n.config_path = cfg
        n.data_dir = d / "data"
        self.nodes.append(n)
        n.start()
        return n

    def stop_all(self) -> list[str]:
        """Stop every node; returns complaints about nodes that died on their own."""
        complaints = []
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is not None and n.proc.returncode not in (0, None):
                complaints.append(f"ocpp-node exited by itself with rc={n.proc.returncode} during the test\n"
                                  + n.output_tail())
            n.stop()
        return complaints


@pytest.fixture
def node_factory(node_bin, tmp_path_factory):
    f = NodeFactory(node_bin, tmp_path_factory)
    yield f
    complaints = f.stop_all()
    if complaints:
        pytest.fail("\n".join(complaints), pytrace=False)


@pytest.fixture
def node(node_factory) -> NodeProcess:
    """A running ocpp-node (local-controller, standalone) with the default test config.

    Attributes: ``charger_url``, ``admin_url``, ``proc``, ``restart()``, ``output_tail()``.
    """
    return node_factory.start()


# ---------------------------------------------------------------------------
# Chargers (mobilityhouse ChargePoint over a recording websocket)
# ---------------------------------------------------------------------------


@pytest.fixture
def frame_logs(request) -> list[FrameLog]:
    logs: list[FrameLog] = []
    request.node._ocpp_frame_logs = logs
    return logs


@pytest.fixture
async def charger(frame_logs):
    """Factory: ``cp = await charger(url_base, "CP-1", "ocpp1.6")`` -> a started ChargePoint.

    ``cp.log`` is its FrameLog, ``cp.conn`` its RecordingConnection, ``cp.ws`` the raw websocket.
    Extra keyword arguments (e.g. ``ssl=``, ``server_hostname=``, ``additional_headers=``) go to
    ``websockets.connect``.
    """
    stack = contextlib.AsyncExitStack()

    async def connect(url_base: str, charger_id: str, version: str, cp_class=None,
                      response_timeout: float = 15.0, **ws_kwargs):
        if cp_class is None:
            if version == "ocpp1.6":
                from ocpp.v16 import ChargePoint as cp_class
            elif version == "ocpp2.0.1":
                from ocpp.v201 import ChargePoint as cp_class
            else:
                raise ValueError(version)
        url = f"{url_base.rstrip('/')}/{charger_id}"
        ws = await websockets.connect(url, subprotocols=[version], open_timeout=10,
                                      ping_interval=None, max_size=2**22, **ws_kwargs)
        stack.push_async_callback(_close_ws, ws)
        assert ws.subprotocol == version, (
            f"node answered subprotocol {ws.subprotocol!r} to an offer of only {version!r}")
        log = FrameLog(version, label=f"{charger_id}@{url}")
        frame_logs.append(log)
        conn = RecordingConnection(ws, log)
        cp = cp_class(charger_id, conn, response_timeout=response_timeout)
        cp.log, cp.conn, cp.ws = log, conn, ws
        task = asyncio.create_task(cp.start(), name=f"cp-{charger_id}")
        stack.push_async_callback(_stop_task, task)
        return cp

    yield connect
    await stack.aclose()


async def _close_ws(ws):
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 5)


async def _stop_task(task: asyncio.Task):
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


# ---------------------------------------------------------------------------
# Validation of every recorded frame after each test body
# ---------------------------------------------------------------------------


def _frame_report(item) -> tuple[list[str], str]:
    logs = getattr(item, "_ocpp_frame_logs", None) or []
    problems: list[str] = []
    transcripts = []
    for log in logs:
        problems += log.problems()
        transcripts.append(f"{log.label} ({log.version}):\n{log.transcript()}")
    return problems, "\n".join(transcripts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        result = yield
    except BaseException:
        problems, transcript = _frame_report(item)
        if transcript:
            item.add_report_section("call", "ocpp frames", transcript)
        if problems:
            item.add_report_section("call", "ocpp frame problems", "\n".join(problems))
        raise
    problems, transcript = _frame_report(item)
    if transcript:  # shown for passed tests with `-rP`
        item.add_report_section("call", "ocpp frames", transcript)
    if problems:
        raise AssertionError(
            "the node sent frames that break the OCA schemas / OCPP-J rules:\n  - "
            + "\n  - ".join(problems) + "\n\ntranscript (<< node, >> peer):\n" + transcript)
    return result


def pytest_configure(config):
    # The ocpp library logs every frame at INFO; keep failure reports readable.
    logging.getLogger("ocpp").setLevel(logging.WARNING)


# ---------------------------------------------------------------------------
# Overlay topologies (edge / hub) and the independent CSMS (see overlaylib.py)
# ---------------------------------------------------------------------------


@pytest.fixture
async def csms(frame_logs):
    """A mobilityhouse-``ocpp`` CSMS on ws://127.0.0.1:<port>/ocpp/<chargerId>.

    Every connection the hub opens is recorded (``csms.connections``, ``csms.attempts``) and its
    frames join ``frame_logs``, so what the hub sends the CSMS is validated like what a node sends
    a charger. Set ``csms.refuse[<id>] = 403`` to refuse a charger at the upgrade.
    """
    from overlaylib import CsmsServer
    server = CsmsServer(frame_logs)
    await server.start()
    yield server
    await server.stop()
    if server.problems:
        pytest.fail("the test CSMS saw problems:\n  - " + "\n  - ".join(server.problems), pytrace=False)


@pytest.fixture
def overlay(node_factory):
    """``overlaylib.Topology``: ``await overlay.start_hub(csms.url, peers={...})``,
    ``await overlay.start_edge("edge1", hub.charger_url)``."""
    from overlaylib import Topology
    return Topology(node_factory)
