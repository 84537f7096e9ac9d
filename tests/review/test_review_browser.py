"""`pbi review` as a process, driven by a real headless browser (Debian's chromium)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pbi_bluesky.infra.ports import free_port, port_open
from pbi_bluesky.store import labels_of, open_runs

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed "
                                "(`make test` installs it with apt-get)")


def _listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp and tcp6)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                out.add(addr)
    return out


def _chromium(*args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--virtual-time-budget=4000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True).stdout


class Browser:
    """One headless chromium driven over the DevTools protocol (page loads, JS, no reload)."""

    def __init__(self, workdir: Path) -> None:
        from websockets.sync.client import connect

        port = free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--remote-debugging-port={port}", f"--user-data-dir={workdir}",
             "--remote-allow-origins=*", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list",
                                            timeout=5) as reply:
                    pages = [t for t in json.load(reply) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, "no chromium"
            time.sleep(0.2)
        self._connection = connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        self.ws = self._connection.__enter__()
        self._id = 0

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def open(self, url: str) -> str:
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while self.js("document.readyState") != "complete" or self.js("location.href") != url:
            assert time.monotonic() < deadline, f"{url} did not load"
            time.sleep(0.1)
        return self.js("document.documentElement.outerHTML")

    def close(self) -> None:
        self._connection.__exit__(None, None, None)
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def server(tiny_model, instrument, tmp_path_factory):
    # a Tiled server: an embedded catalog's DuckDB tables are opened by one process at a
    # time, so a page in another process than the writer needs a server (as a live session)
    from pbi_bluesky.testing.services import TiledServer
    from tests.review.conftest import fill_catalog

    root = tmp_path_factory.mktemp("review-browser")
    tiled = TiledServer(root / "tiled").start()
    _, uids = fill_catalog(open_runs(tiled.uri, api_key=tiled.api_key), tiny_model,
                           instrument, root)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pbi_bluesky.cli", "review", "--tiled",
                             tiled.uri, "--api-key", tiled.api_key, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not port_open(port) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    yield f"http://127.0.0.1:{port}", port, tiled, uids
    proc.terminate()
    proc.wait(10)
    tiled.stop()


def test_browser_sees_flags_plots_and_labels(server, tiny_model, instrument, tmp_path):
    from pbi_bluesky.simulate import PS_PMMA, nominal_state, simulate_profile
    from pbi_bluesky.testing.analyses import write_scored_run
    from tests.review.conftest import RECIPE, bump

    url, port, tiled, uids = server
    rng = np.random.default_rng(11)
    intensity, sigma = tiny_model.resample(
        [simulate_profile(nominal_state(PS_PMMA, RECIPE, rng), instrument, rng)])
    assert _listening(port) == {"0100007F"}  # 127.0.0.1 only
    browser = Browser(tmp_path / "chromium")
    try:
        index = browser.open(url + "/")
        assert f"/run/{uids['b']}" in index and f"/run/{uids['a']}" in index
        assert index.index(uids["b"]) < index.index(uids["a"])  # newest first
        assert f'/run/{uids["normal"]}"' not in index
        # a new flag written while the page is open appears without a reload
        browser.js("window.notReloaded = true")
        runs = open_runs(tiled.uri, api_key=tiled.api_key)
        new, _ = write_scored_run(runs, tiny_model, bump(intensity, 0.8), sigma, RECIPE,
                                  md={"sample": "new"})
        deadline = time.monotonic() + 30
        while new not in (browser.js("document.getElementById('rows').innerHTML") or ""):
            assert time.monotonic() < deadline, "the new flag did not appear on the page"
            time.sleep(0.5)
        assert browser.js("window.notReloaded") is True
        rows = browser.js("[...document.querySelectorAll('#rows a')].map(a => a.href)")
        assert rows[0].endswith(f"/run/{new}") and len(rows) == 3  # newest first
        assert browser.js("document.getElementById('count').textContent") == "3"
    finally:
        browser.close()
    page = _chromium("--dump-dom", f"{url}/run/{uids['b']}")
    assert f"/run/{uids['b']}/curve.svg" in page and "attribution.svg" in page
    shot = Path(os.environ.get("PBI_REVIEW_SCREENSHOT", tmp_path / "run.png"))
    _chromium(f"--screenshot={shot}", "--window-size=1100,1600", f"{url}/run/{uids['b']}")
    assert shot.stat().st_size > 20_000  # the plots are drawn, not a blank page
    # label as the page's form does: an urlencoded POST of label, note, by
    body = urllib.parse.urlencode({"label": "false-alarm", "note": "browser", "by": "zoe"})
    request = urllib.request.Request(f"{url}/run/{uids['b']}/label", data=body.encode(),
                                     method="POST")
    with urllib.request.urlopen(request, timeout=30) as reply:  # follows the 303
        assert "labelled false-alarm" in reply.read().decode()
    label = labels_of(open_runs(tiled.uri, api_key=tiled.api_key))[uids["b"]]
    assert (label["label"], label["labelled_by"]) == ("false-alarm", "zoe")
    final = _chromium("--dump-dom", f"{url}/run/{uids['b']}")
    assert "false-alarm" in final and tiled.api_key not in final + index + page
