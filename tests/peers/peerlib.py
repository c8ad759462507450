"""Helpers for the independent Python peers that test ``ocpp-node``.

Nothing here comes from the Rust code: the node is started as a real process,
spoken to over real sockets by the mobilityhouse ``ocpp`` library, and every
text frame the node sends is checked against the OCA JSON schemas shipped
inside the installed ``ocpp`` package.
"""

from __future__ import annotations

import contextlib
import decimal
import importlib.resources
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft4Validator, Draft6Validator

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NODE_BIN = REPO_ROOT / "target" / "release" / "ocpp-node"

LISTENING_RE = re.compile(r"^listening (\S+) (\S+)\s*$")


def node_bin() -> Path:
    """The ocpp-node binary under test: $OCPP_NODE_BIN or target/release/ocpp-node."""
    return Path(os.environ.get("OCPP_NODE_BIN") or DEFAULT_NODE_BIN)


# ---------------------------------------------------------------------------
# The node as a process
# ---------------------------------------------------------------------------


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def render_config(
    data_dir: Path,
    *,
    node_id: str = "lc-test",
    role: str = "local-controller",
    heartbeat_interval_s: int = 300,
    unknown_id_tag: str = "Invalid",
    local_list: dict[str, str] | None = None,
    extra: str = "",
    security_profile: int = 0,
    listener_extra: str = "",
) -> str:
    """The TOML config of the contract, all listeners on 127.0.0.1:0.

    ``listener_extra`` is appended inside the ``chargers`` listener table (e.g. TLS keys);
    ``extra`` at the end of the file (e.g. ``[chargers."<id>"]`` tables).
    """
    if local_list is None:
        local_list = {"TAG-OK": "Accepted", "TAG-BLOCKED": "Blocked"}
    lines = [
        "[node]",
        f"id = {toml_str(node_id)}",
        f"role = {toml_str(role)}",
        f"data_dir = {toml_str(str(data_dir))}",
        "",
        "[[listener]]",
        'name = "chargers"',
        'bind = "127.0.0.1:0"',
        'path = "/ocpp"',
        f"security_profile = {int(security_profile)}",
    ]
    if listener_extra:
        lines += [listener_extra.rstrip("\n")]
    lines += [
        "",
        "[admin]",
        'bind = "127.0.0.1:0"',
        "",
        "[local_csms]",
        f"heartbeat_interval_s = {int(heartbeat_interval_s)}",
        "",
        "[auth]",
        f"unknown_id_tag = {toml_str(unknown_id_tag)}",
        "[auth.local_list]",
    ]
    lines += [f"{toml_str(k)} = {toml_str(v)}" for k, v in local_list.items()]
    if extra:
        lines += ["", extra]
    return "\n".join(lines) + "\n"


class NodeStartError(AssertionError):
    pass


class NodeProcess:
    """One running ``ocpp-node``; stdout/stderr are drained by threads for its whole life."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None,
                 wanted_listeners: tuple[str, ...] = ("chargers", "admin")):
        self.argv = argv
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self.env.setdefault("RUST_BACKTRACE", "1")
        self.wanted = wanted_listeners
        self.proc: subprocess.Popen | None = None
        self.urls: dict[str, str] = {}
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._stdout_q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.starts = 0

    # -- urls ---------------------------------------------------------------
    @property
    def charger_url(self) -> str:
        return self.urls["chargers"]

    @property
    def admin_url(self) -> str:
        return self.urls["admin"].rstrip("/")

    # -- lifecycle ----------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "NodeProcess":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.urls = {}
        self._stdout_q = queue.Queue()
        self.starts += 1
        marker = f"--- start #{self.starts}: {' '.join(self.argv)}"
        with self._lock:
            self.stdout_lines.append(marker)
            self.stderr_lines.append(marker)
        self.proc = subprocess.Popen(
            self.argv, cwd=str(self.cwd), env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1,
            start_new_session=True,
        )
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout_lines, self._stdout_q),
                             daemon=True, name="node-stdout"),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr_lines, None),
                             daemon=True, name="node-stderr"),
        ]
        for t in self._threads:
            t.start()
        self._wait_listening(timeout)
        return self

    def _drain(self, stream, sink: list[str], q: queue.Queue | None) -> None:
        try:
            for line in stream:
                line = line.rstrip("\r\n")
                with self._lock:
                    sink.append(line)
                if q is not None:
                    q.put(line)
        except (ValueError, OSError):
            pass
        finally:
            if q is not None:
                q.put(None)  # EOF

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(name in self.urls for name in self.wanted):
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise NodeStartError(
                    f"ocpp-node did not print 'listening {' / '.join(self.wanted)} <url>' within "
                    f"{timeout:.0f}s (got {self.urls}).\n" + self.output_tail())
            try:
                line = self._stdout_q.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the process is gone
                rc = self._wait_exit(5)
                raise NodeStartError(
                    f"ocpp-node exited (rc={rc}) before printing its listening lines "
                    f"(got {self.urls}).\n" + self.output_tail())
            m = LISTENING_RE.match(line.strip())
            if m:
                self.urls.setdefault(m.group(1), m.group(2))
        if "admin" in self.urls:
            remember_admin_token(self.admin_url, self.argv, self.cwd)

    def _wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout) if self.proc else None
        except subprocess.TimeoutExpired:
            return None

    def wait_for_output(self, pattern: str | re.Pattern, timeout: float = 5.0,
                        streams: tuple[str, ...] = ("stdout", "stderr")) -> str | None:
        """Return the first line of the given streams matching ``pattern`` (re.search), or None."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                lines = []
                if "stdout" in streams:
                    lines += self.stdout_lines
                if "stderr" in streams:
                    lines += self.stderr_lines
            for line in lines:
                if rx.search(line):
                    return line
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait(timeout=10)
        for t in self._threads:
            t.join(timeout=5)
        for s in (p.stdout, p.stderr):
            with contextlib.suppress(Exception):
                s.close()
        return p.returncode

    def restart(self, timeout: float = 30.0) -> "NodeProcess":
        """Stop and start again with the same config (same data_dir); urls change (port 0)."""
        self.stop()
        self.proc = None
        return self.start(timeout)

    def output_tail(self, n: int = 60) -> str:
        with self._lock:
            out = self.stdout_lines[-n:]
            err = self.stderr_lines[-n:]
        return ("--- ocpp-node stdout (tail) ---\n" + "\n".join(out) +
                "\n--- ocpp-node stderr (tail) ---\n" + "\n".join(err) + "\n")


# ---------------------------------------------------------------------------
# Admin API (stdlib HTTP)
# ---------------------------------------------------------------------------


# Admin base URL -> the node's admin token, so that every admin request of a test carries it.
ADMIN_TOKENS: dict[str, str] = {}


def remember_admin_token(admin_url: str, argv: list[str], cwd: Path) -> None:
    """Reads the token the node generated into ``<data_dir>/admin.token`` (the test configs set
    none in a secrets file); it exists once the node has announced its admin API."""
    import tomllib
    config: dict = {}
    if "--config" in argv:
        path = Path(argv[argv.index("--config") + 1])
        config = tomllib.loads((path if path.is_absolute() else cwd / path).read_text())
    data_dir = Path(config.get("node", {}).get("data_dir", "ocpp-node-data"))
    token_file = (data_dir if data_dir.is_absolute() else cwd / data_dir) / "admin.token"
    if token_file.exists():
        ADMIN_TOKENS[admin_url.rstrip("/")] = token_file.read_text().strip()


def admin_headers(url: str) -> dict[str, str]:
    """The Authorization header for a URL under a known node's admin API, else none."""
    for base, token in ADMIN_TOKENS.items():
        if url == base or url.startswith(base + "/"):
            return {"Authorization": f"Bearer {token}"}
    return {}


def http_get_json(url: str, timeout: float = 10.0) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json", **admin_headers(url)})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read().decode("utf-8")
            status = resp.status
    except urllib.error.HTTPError as e:
        raise AssertionError(f"GET {url} -> HTTP {e.code}: {e.read()[:500]!r}") from None
    assert status == 200, f"GET {url} -> HTTP {status}: {body[:500]}"
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise AssertionError(f"GET {url} returned non-JSON ({e}): {body[:500]!r}") from None


# ---------------------------------------------------------------------------
# Schema validation of the frames the node sends
# ---------------------------------------------------------------------------

VERSIONS = {
    # subprotocol: (package folder, request-file suffix, validator class)
    "ocpp1.6": ("v16", "", Draft4Validator),
    "ocpp2.0.1": ("v201", "Request", Draft6Validator),
}

ERROR_CODES = {
    "ocpp1.6": {
        "NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError",
        "FormationViolation", "PropertyConstraintViolation", "OccurenceConstraintViolation",
        "TypeConstraintViolation", "GenericError",
    },
    "ocpp2.0.1": {
        "FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported",
        "NotImplemented", "NotSupported", "OccurrenceConstraintViolation",
        "PropertyConstraintViolation", "ProtocolError", "RpcFrameworkError", "SecurityError",
        "TypeConstraintViolation",
    },
}

_RFC3339 = re.compile(
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$")

FORMAT_CHECKER = jsonschema.FormatChecker(formats=())


@FORMAT_CHECKER.checks("date-time")
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    return bool(_RFC3339.match(value))


def _decimal_multiple_of(validator, dB, instance, schema):
    """multipleOf done in decimal, so that valid values like 21.4 / 0.1 are not rejected."""
    if not validator.is_type(instance, "number"):
        return
    try:
        ok = decimal.Decimal(str(instance)) % decimal.Decimal(str(dB)) == 0
    except decimal.InvalidOperation:
        ok = False
    if not ok:
        yield jsonschema.ValidationError(f"{instance!r} is not a multiple of {dB}")


def _is_integer(checker, instance) -> bool:
    if isinstance(instance, bool):
        return False
    if isinstance(instance, int):
        return True
    if isinstance(instance, float):
        return instance.is_integer()
    if isinstance(instance, decimal.Decimal):
        return instance.is_finite() and instance == instance.to_integral_value()
    return False


def _make_validator_class(base, allow_integral_floats: bool):
    type_checker = base.TYPE_CHECKER
    if allow_integral_floats:  # draft-06: 1.0 is an integer
        type_checker = type_checker.redefine("integer", _is_integer)
    return jsonschema.validators.extend(
        base, validators={"multipleOf": _decimal_multiple_of}, type_checker=type_checker)


_VALIDATOR_CLASSES = {
    "ocpp1.6": _make_validator_class(Draft4Validator, False),
    "ocpp2.0.1": _make_validator_class(Draft6Validator, True),
}

_schema_cache: dict[tuple[str, str], Any] = {}


def schema_path(version: str, action: str, response: bool):
    folder, req_suffix, _ = VERSIONS[version]
    name = f"{action}Response.json" if response else f"{action}{req_suffix}.json"
    return importlib.resources.files("ocpp").joinpath(folder, "schemas", name)


def get_validator(version: str, action: str, response: bool):
    """The jsonschema validator of the OCA schema, or None if the package has no such schema."""
    key = (version, f"{action}{'Response' if response else 'Request'}")
    if key not in _schema_cache:
        p = schema_path(version, action, response)
        if not p.is_file():
            _schema_cache[key] = None
        else:
            schema = json.loads(p.read_text(encoding="utf-8"))
            cls = _VALIDATOR_CLASSES[version]
            # The $schema of every file must agree with the draft we use for it.
            want = "draft-04" if version == "ocpp1.6" else "draft-06"
            assert want in schema.get("$schema", ""), f"{p}: unexpected $schema {schema.get('$schema')}"
            cls.check_schema(schema)
            _schema_cache[key] = cls(schema, format_checker=FORMAT_CHECKER)
    return _schema_cache[key]


def validate_payload(version: str, action: str, payload: Any, response: bool) -> list[str]:
    """Problems of one payload against its OCA schema (empty list = valid)."""
    v = get_validator(version, action, response)
    kind = "response" if response else "request"
    if v is None:
        return [f"no OCA {version} schema for {action} {kind}"]
    errs = sorted(v.iter_errors(payload), key=lambda e: list(e.absolute_path))
    return [f"{action} {kind} invalid at /{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in errs]


@dataclass
class Frame:
    direction: str  # "node->peer" or "peer->node"
    text: str | bytes
    t: float = field(default_factory=time.monotonic)


class FrameLog:
    """Frames of one OCPP-J connection, in both directions, and their validation."""

    def __init__(self, version: str, label: str = ""):
        if version not in VERSIONS:
            raise ValueError(f"unsupported version {version!r}")
        self.version = version
        self.label = label
        self.frames: list[Frame] = []
        self.expected_errors: set[str] = set()  # unique ids for which a CALLERROR is fine

    def record_from_node(self, msg: str | bytes) -> None:
        self.frames.append(Frame("node->peer", msg))

    def record_to_node(self, msg: str | bytes) -> None:
        self.frames.append(Frame("peer->node", msg))

    def expect_call_error(self, unique_id: str) -> None:
        self.expected_errors.add(unique_id)

    def node_frames(self) -> list[str | bytes]:
        return [f.text for f in self.frames if f.direction == "node->peer"]

    def transcript(self, limit: int = 80) -> str:
        out = []
        for f in self.frames[-limit:]:
            arrow = "<<" if f.direction == "node->peer" else ">>"
            text = f.text if isinstance(f.text, str) else f"<binary {len(f.text)} bytes>"
            out.append(f"  {arrow} {text[:600]}")
        return "\n".join(out)

    def problems(self) -> list[str]:
        """Every problem with what the node sent on this connection."""
        problems: list[str] = []
        peer_calls: dict[str, str] = {}  # ids of CALLs the peer sent -> action
        answered: set[str] = set()
        for f in self.frames:
            if f.direction == "peer->node":
                msg = _loads(f.text)
                if isinstance(msg, list) and len(msg) == 4 and msg[0] == 2 and isinstance(msg[1], str):
                    peer_calls[msg[1]] = msg[2]
                continue
            problems += [f"{self.label}: {p} -- frame: {_short(f.text)}"
                         for p in check_node_frame(self.version, f.text, peer_calls, answered,
                                                   self.expected_errors)]
        return problems


def _loads(text: str | bytes) -> Any:
    if isinstance(text, bytes):
        return None
    try:
        # Decimals keep the exact digits for multipleOf.
        return json.loads(text, parse_float=decimal.Decimal)
    except json.JSONDecodeError:
        return None


def _short(text: str | bytes, n: int = 300) -> str:
    if isinstance(text, bytes):
        return f"<binary {len(text)} bytes>"
    return text if len(text) <= n else text[:n] + "..."



def check_node_frame(version: str, text: str | bytes, peer_calls: dict[str, str],
                     answered: set[str], expected_errors: set[str]) -> list[str]:
    """Problems of one frame that the node sent to a plain OCPP-J peer of ``version``."""
    if isinstance(text, bytes):
        return ["binary frame on a plain OCPP-J connection"]
    try:
        msg = json.loads(text, parse_float=decimal.Decimal)
    except json.JSONDecodeError as e:
        return [f"not JSON: {e}"]
    if not isinstance(msg, list) or not msg:
        return ["not a non-empty JSON array"]
    mtype = msg[0]
    if isinstance(mtype, bool) or not isinstance(mtype, int):
        return [f"message type {mtype!r} is not an integer"]
    if mtype == 2:
        if len(msg) != 4:
            return [f"CALL has {len(msg)} elements, want 4"]
        _, uid, action, payload = msg
        p = _check_id(uid)
        if not isinstance(action, str):
            p.append(f"CALL action {action!r} is not a string")
            return p
        if not isinstance(payload, dict):
            p.append("CALL payload is not an object")
            return p
        return p + validate_payload(version, action, payload, response=False)
    if mtype == 3:
        if len(msg) != 3:
            return [f"CALLRESULT has {len(msg)} elements, want 3"]
        _, uid, payload = msg
        p = _check_id(uid)
        if p:
            return p
        action = peer_calls.get(uid)
        if action is None:
            return [f"CALLRESULT for id {uid!r}, which the peer never sent as a CALL"]
        if uid in answered:
            return [f"second reply for id {uid!r}"]
        answered.add(uid)
        if not isinstance(payload, dict):
            return ["CALLRESULT payload is not an object"]
        return validate_payload(version, action, payload, response=True)
    if mtype == 4:
        if len(msg) != 5:
            return [f"CALLERROR has {len(msg)} elements, want 5"]
        _, uid, code, desc, details = msg
        p = _check_id(uid)
        if not isinstance(code, str) or code not in ERROR_CODES[version]:
            p.append(f"CALLERROR code {code!r} is not a {version} error code")
        if not isinstance(desc, str):
            p.append("CALLERROR description is not a string")
        if not isinstance(details, dict):
            p.append("CALLERROR details is not an object")
        if isinstance(uid, str):
            if uid in answered:
                p.append(f"second reply for id {uid!r}")
            answered.add(uid)
            if uid not in expected_errors:
                what = peer_calls.get(uid, "an unknown request")
                p.append(f"unexpected CALLERROR {code!r} ({desc!r}) for {what} id {uid!r}")
        return p
    if mtype in (5, 6):
        return [f"message type {mtype} exists only in OCPP 2.1 / overlay links, never on {version}"]
    return [f"unknown message type {mtype}"]



def _check_id(uid: Any) -> list[str]:
    if not isinstance(uid, str):
        return [f"message id {uid!r} is not a string"]
    if len(uid) > 36:
        return [f"message id {uid!r} is longer than 36 characters"]
    return []


class RecordingConnection:
    """Wraps a ``websockets`` client connection for ``ocpp.ChargePoint``; records every frame."""

    def __init__(self, ws, log: FrameLog):
        self.ws = ws
        self.log = log

    @property
    def subprotocol(self):
        return self.ws.subprotocol

    async def recv(self):
        msg = await self.ws.recv()
        self.log.record_from_node(msg)
        return msg

    async def send(self, msg):
        self.log.record_to_node(msg)
        await self.ws.send(msg)

    async def close(self, *a, **kw):
        await self.ws.close(*a, **kw)


# ---------------------------------------------------------------------------
# Small helpers for tests
# ---------------------------------------------------------------------------


def now_iso() -> str:
    """UTC now as RFC 3339 with milliseconds and Z."""
    import datetime as _dt
    t = _dt.datetime.now(_dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def wait_for_transaction(admin_url: str, charger_id: str, transaction_id: str,
                         status: str | None = None, timeout: float = 10.0) -> dict:
    """Poll GET /api/transactions until the transaction is listed (with ``status``, if given)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = http_get_json(f"{admin_url}/api/transactions")
        assert isinstance(last, dict) and isinstance(last.get("transactions"), list), (
            f"GET /api/transactions: want {{\"transactions\": [...]}}, got {last!r}")
        for tx in last["transactions"]:
            if tx.get("chargerId") == charger_id and tx.get("transactionId") == transaction_id:
                if status is None or tx.get("status") == status:
                    return tx
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"transaction {transaction_id!r} of {charger_id!r}"
                f"{' with status ' + status if status else ''} not in GET /api/transactions "
                f"after {timeout:.0f}s; last answer: {json.dumps(last)[:2000]}")
        time.sleep(0.2)


def port_in_use(host: str, port: int) -> bool:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like a server's bind: TIME_WAIT leftovers of an earlier run do not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False
