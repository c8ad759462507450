"""Drives one compose topology of ``deploy/`` for a test: bring services up under a project name
of its own, reach each node's admin API through its published port with the token the node
generated, read the simulators' summaries from ``docker logs``, and tear everything down.

Only the docker CLI and docker-compose are used, so a failing test leaves nothing a later run
would trip over: every project name starts with ``ocppt-`` and is removed before and after.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PREFIX = "ocppt-"


def run(*argv: str, timeout: float = 120, check: bool = True, env: dict | None = None,
        ) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> rc {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def clean_leftovers() -> None:
    """Removes containers, networks and volumes of earlier runs that did not finish."""
    label = "label=com.docker.compose.project"
    kinds = (
        (["ps", "-aq"], ["container", "inspect"], '{{ index .Config.Labels "com.docker.compose.project" }}',
         ["rm", "-f"]),
        (["network", "ls", "-q"], ["network", "inspect"], '{{ index .Labels "com.docker.compose.project" }}',
         ["network", "rm"]),
        (["volume", "ls", "-q"], ["volume", "inspect"], '{{ index .Labels "com.docker.compose.project" }}',
         ["volume", "rm", "-f"]),
    )
    for ls, inspect, fmt, rm in kinds:  # containers first: networks and volumes are in use until then
        for i in run("docker", *ls, "--filter", label, check=False).stdout.split():
            project = run("docker", *inspect, "-f", fmt, i, check=False).stdout.strip()
            if project.startswith(PREFIX):
                run("docker", *rm, i, check=False)


class Topology:
    def __init__(self, name: str, env: dict[str, str]):
        self.name = name
        self.project = f"{PREFIX}{name.replace('-', '')}-{os.getpid()}"
        self.file = DEPLOY / name / "docker-compose.yml"
        self.env = env
        self._tokens: dict[str, str] = {}

    # -- compose ------------------------------------------------------------------------
    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return run("docker-compose", "-p", self.project, "-f", str(self.file), *args,
                   timeout=timeout, env=self.env)

    def up(self, *services: str) -> None:
        self.compose("up", "-d", "--no-build", *services)

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "5", timeout=300)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def network(self, name: str) -> str:
        return f"{self.project}_{name}"

    def logs(self, service: str) -> str:
        r = run("docker", "logs", self.container(service), check=False, timeout=60)
        return r.stdout + r.stderr

    def diagnostics(self, *services: str, lines: int = 30) -> str:
        out = []
        for s in services:
            tail = "\n".join(self.logs(s).splitlines()[-lines:])
            out.append(f"--- {s} (last {lines} lines) ---\n{tail}")
        return "\n".join(out)

    # -- admin API ----------------------------------------------------------------------
    def admin_url(self, service: str) -> str:
        # The published port may change when a container restarts: ask every time.
        port = run("docker", "port", self.container(service), "9800/tcp").stdout.split()[0]
        return f"http://{port}"

    def token(self, service: str) -> str:
        if service not in self._tokens:
            raw = subprocess.run(["docker", "cp", f"{self.container(service)}:/data/admin.token", "-"],
                                 capture_output=True, timeout=30, check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                member = tar.extractfile("admin.token")
                assert member is not None
                self._tokens[service] = member.read().decode().strip()
        return self._tokens[service]

    def status(self, service: str) -> dict:
        req = urllib.request.Request(f"{self.admin_url(service)}/api/status",
                                     headers={"Authorization": f"Bearer {self.token(service)}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def wait_status(self, service: str, ok: Callable[[dict], Any], timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.status(service)
                if ok(last):
                    return last
            except (OSError, ValueError, AssertionError, subprocess.SubprocessError, KeyError) as e:
                last = repr(e)
            time.sleep(0.5)
        raise AssertionError(f"{self.name}/{service}: {what} not within {timeout:.0f} s; last status: "
                             f"{json.dumps(last)[:2000]}\n{self.diagnostics(service)}")

    def wait_uplink(self, service: str, name: str | None = None, timeout: float = 60) -> dict:
        def up(st: dict) -> bool:
            return any(u.get("state") == "up" and (name is None or u.get("name") == name)
                       for u in st.get("uplinks") or [])
        return self.wait_status(service, up, timeout, f"uplink {name or ''} up")

    def wait_drained(self, service: str, timeout: float = 60) -> dict:
        return self.wait_status(service, lambda st: (st.get("outbox") or {}).get("queued") == 0,
                                timeout, "outbox drained")

    # -- simulators ---------------------------------------------------------------------
    def wait_exit(self, service: str, timeout: float) -> int:
        r = run("docker", "wait", self.container(service), timeout=timeout)
        return int(r.stdout.strip())

    def charger_summary(self, service: str) -> dict:
        r = run("docker", "logs", self.container(service), check=False)
        lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
        assert lines, f"{service} printed no summary\n{self.diagnostics(service)}"
        return json.loads(lines[-1])

    def csms_summary(self) -> dict:
        """The CSMS's latest summary (it prints one to stderr every second)."""
        r = run("docker", "logs", self.container("csms"), check=False)
        for line in reversed(r.stderr.splitlines()):
            if line.startswith("{") and "by_action" in line:
                return json.loads(line)
        return {}

    def wait_csms(self, ok: Callable[[dict], bool], timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            last = self.csms_summary()
            if last and ok(last):
                return last
            time.sleep(0.5)
        raise AssertionError(f"{self.name}: the CSMS did not see {what} within {timeout:.0f} s; "
                             f"last summary: {json.dumps(last)}")


def tx_seen(summary: dict, prefix: str = "") -> int:
    """Calls the CSMS counted for chargers whose id starts with ``prefix``."""
    return sum(n for cid, n in (summary.get("by_charger") or {}).items() if cid.startswith(prefix))
