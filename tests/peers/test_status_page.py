"""The status page (``GET /`` of the admin API) as a real browser renders it: headless Chromium
opens an edge's page while 10 chargers (mobilityhouse ``ocpp``, 1.6 and 2.0.1) are connected to
it through a hub to an independent CSMS, and the test reads the DOM Chromium built.

    10 x ChargePoint --plain--> edge1 ==overlay==> hub --10 x plain--> CSMS
                                  ^
                         chromium --headless  (login with the admin token, then /)

The screenshot goes to a temp dir; with ``UPDATE_SCREENSHOT=1`` it replaces
``docs/status-page.png``. Chromium: ``$CHROMIUM`` or ``chromium`` on PATH (tests/peers/run.sh
installs Debian's package when it is missing).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
import tempfile
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

import peerlib
from overlaylib import charger_class, http_get_text, status, wait_until, wait_uplink_up

pytestmark = pytest.mark.timeout(300)

IDS16 = [f"PAGE16-{i:02d}" for i in range(5)]
IDS201 = [f"PAGE201-{i:02d}" for i in range(5)]
VERSIONS = {**{c: "ocpp1.6" for c in IDS16}, **{c: "ocpp2.0.1" for c in IDS201}}
PHASE = 60.0
SCREENSHOT = peerlib.REPO_ROOT / "docs" / "status-page.png"


def chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("chromium not found: apt-get install chromium (tests/peers/run.sh does, as "
                    "root), or set CHROMIUM=<binary>", pytrace=False)
    return path


def run_chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
            f"--user-data-dir={profile}", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)} -> rc {done.returncode}\n{done.stderr[-3000:]}"
    return done


def admin_token(node) -> str | None:
    """The token the node generated; none means the admin API of this build is still open."""
    f = Path(node.data_dir) / "admin.token"
    return f.read_text().strip() if f.exists() else None


def page_url(node) -> str:
    token = admin_token(node)
    if token is None:
        return f"{node.admin_url}/"
    # The browser way in: /login sets the cookie and answers 303 to /.
    return f"{node.admin_url}/login?{urllib.parse.urlencode({'token': token})}"


class Dom(HTMLParser):
    """The few things the test reads from the page: table rows by class, the diagram's boxes by
    class, and the state badges, each as the text inside them."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self.boxes: dict[str, list[list[str]]] = {}
        self.svg = 0
        self.title = ""
        self._in_svg = 0
        self._in_title = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._box: list[str] | None = None
        self._text: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        if tag == "svg":
            self._in_svg += 1
            self.svg += "topo" in cls.split()
        # The page's own title, not the tooltips of the diagram's boxes.
        self._in_title = tag == "title" and not self._in_svg
        if tag == "tr" and cls:
            self._row = []
            self.rows.setdefault(cls, []).append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "g" and cls.startswith("node "):
            self._box = []
            self.boxes.setdefault(cls.split()[1], []).append(self._box)
        elif tag == "text" and self._box is not None:
            self._text = []

    def handle_endtag(self, tag):
        if tag == "svg":
            self._in_svg -= 1
        self._in_title = False
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "text" and self._text is not None and self._box is not None:
            self._box.append("".join(self._text))
            self._text = None
        elif tag == "g":
            self._box = None

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell.append(data)
        if self._text is not None:
            self._text.append(data)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


async def boot(cp, version: str) -> None:
    if version == "ocpp1.6":
        r = await cp.call(call16.BootNotification(charge_point_model="Page", charge_point_vendor="Test"))
    else:
        r = await cp.call(call201.BootNotification(
            charging_station={"model": "Page", "vendor_name": "Test"}, reason="PowerUp"))
    assert r.status == "Accepted", f"{cp.id}: boot {r}"


async def test_status_page_in_headless_chromium(overlay, csms, charger, tmp_path):
    hub = await overlay.start_hub(csms.url, peers={"edge1": ["PAGE16-*", "PAGE201-*"]})
    edge = await overlay.start_edge("edge1", hub.charger_url, uplink_name="hub1")
    await wait_uplink_up(edge, PHASE)

    cps = await asyncio.wait_for(asyncio.gather(*(
        charger(edge.charger_url, cid, v, cp_class=charger_class(v), response_timeout=PHASE)
        for cid, v in VERSIONS.items())), PHASE)
    await asyncio.wait_for(asyncio.gather(*(boot(cp, VERSIONS[cp.id]) for cp in cps)), PHASE)
    await csms.wait_connected(VERSIONS, PHASE)

    async def all_heard():
        st = await status(edge)
        got = {c["id"]: c for c in st.get("chargers") or []}
        return st if set(got) == set(VERSIONS) and all(c.get("lastMessageAt") for c in got.values()) else None

    st = await wait_until(all_heard, PHASE, "edge /api/status: all 10 chargers with lastMessageAt")
    for c in st["chargers"]:
        assert c.get("securityProfile") == 0, c

    # -- the DOM Chromium built from the edge's page ----------------------------------------
    url = page_url(edge)
    done = await asyncio.to_thread(run_chromium, tmp_path / "profile", "--dump-dom", url)
    dom = Dom()
    dom.feed(done.stdout)
    assert "edge1" in dom.title, f"page title {dom.title!r}; page:\n{done.stdout[:3000]}"

    rows = dom.rows.get("charger", [])
    assert len(rows) == len(VERSIONS), f"{len(rows)} charger rows, want {len(VERSIONS)}: {rows}"
    by_id = {r[0]: r for r in rows}
    assert set(by_id) == set(VERSIONS), sorted(by_id)
    for cid, v in VERSIONS.items():
        # id, OCPP, security profile, connected since, last message, from, path
        r = by_id[cid]
        assert r[1] == v and r[2] == "0", r
        assert r[3].endswith(" UTC") and r[4].endswith(" UTC"), f"times of {cid}: {r}"
        assert r[5].startswith("127.0.0.1:"), r
        assert r[6] == cid, r

    uplinks = dom.rows.get("uplink", [])
    assert len(uplinks) == 1, uplinks
    # name, state, priority, url, remote address, last error
    hub_addr = hub.charger_url.split("://")[1].split("/")[0]
    assert uplinks[0][:2] == ["hub1", "up"] and uplinks[0][4] == hub_addr, uplinks

    assert dom.svg == 1, "one topology diagram"
    labels = [b[0] for b in dom.boxes.get("charger", [])]
    assert sorted(labels) == sorted(VERSIONS), f"diagram charger boxes: {labels}"
    ups = dom.boxes.get("uplink", [])
    assert ups == [["hub1", f"up · {hub_addr}"]], ups
    assert [b[0] for b in dom.boxes.get("self", [])] == ["edge1"], dom.boxes.get("self")
    assert dom.rows.get("event"), "the node's own start is a security event on the page"

    # -- the screenshot ---------------------------------------------------------------------
    shot = tmp_path / "status-page.png"
    await asyncio.to_thread(run_chromium, tmp_path / "profile2", f"--screenshot={shot}",
                            "--window-size=1280,1600", url)
    assert png_size(shot) == (1280, 1600)
    assert shot.stat().st_size > 20_000, "a blank page compresses to almost nothing"
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    # -- without the token the page is not served -------------------------------------------
    if admin_token(edge) is not None:
        bare = await asyncio.to_thread(run_chromium, tmp_path / "profile3", "--dump-dom",
                                       f"{edge.admin_url}/")
        assert "PAGE16-00" not in bare.stdout, "the status page was served without the admin token"

    # -- the hub's page: its edge and the CSMS sockets ----------------------------------------
    hub_html = await asyncio.to_thread(http_get_text, f"{hub.admin_url}/")
    hdom = Dom()
    hdom.feed(hub_html)
    assert [b[0] for b in hdom.boxes.get("peer", [])] == ["edge1"], hdom.boxes
    csms_box = hdom.boxes.get("csms", [])
    assert len(csms_box) == 1 and csms_box[0][1] == "10 of 10 sockets open", csms_box
    sockets = hdom.rows.get("csms", [])
    assert sorted(r[0] for r in sockets) == sorted(VERSIONS), sockets
    assert all(r[2] == "open" for r in sockets), sockets
