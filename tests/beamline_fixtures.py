"""Fixtures that run the simulated SAXS beamline IOC for tests over real Channel Access.

Importing this module configures Channel Access for loopback on free ports (the caproto
client reads the environment when ophyd is first imported), so test modules must import
it before anything that imports ophyd, and import ophyd-based code inside tests/fixtures.

Use in a test module::

    from tests.beamline_fixtures import beamline, sim_ioc  # noqa: F401
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sim_iocs.tray import TraySlot, dump_tray, parse_tray

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_DEADLINE_S = 60.0

TEST_TRAY: list[dict[str, Any]] = [
    {"slot": 1, "sample": "N50-a", "composition": "50:50"},
    {"slot": 2, "sample": "C50-a", "composition": "50:50", "kind": "contamination",
     "severity": 1.0},
    {"slot": 3, "sample": "PMMA-ref", "composition": "0:100"},
    {"slot": 4, "sample": "T50-a", "composition": "50:50", "faults": {"beam_dump": 0.8},
     "transient": True},
    {"slot": 5, "sample": "N25-dev", "composition": "25:75"},
]
"""Slots 1-4 are for plan tests, slot 5 for device tests (slot 4's fault is one-shot)."""


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP+UDP port found on 127.0.0.1")


def _epics_env() -> dict[str, str]:
    server = _free_port()
    repeater = _free_port()
    while repeater == server:
        repeater = _free_port()
    return {
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(server),
        "EPICS_CA_REPEATER_PORT": str(repeater),
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_SERVER_PORT": str(server),
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CAS_BEACON_PORT": str(repeater),
    }


EPICS_ENV: dict[str, str] = _epics_env()
os.environ.update(EPICS_ENV)
if "ophyd" in sys.modules:  # pragma: no cover - import-order problem, explain it loudly
    log.warning("ophyd was imported before tests.beamline_fixtures; CA may use other ports")


@dataclass
class SimIOC:
    """A running simulated beamline IOC."""

    prefix: str
    env: dict[str, str]
    tray: list[TraySlot]
    tray_path: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    def log_tail(self, n_chars: int = 4000) -> str:
        """The end of the IOC's log (stdout+stderr)."""
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "<no log>"


_SHARED: dict[str, Any] = {"ioc": None, "users": 0}


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_ready(ioc: SimIOC, deadline_s: float) -> None:
    from caproto.sync.client import read

    deadline = time.monotonic() + deadline_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if ioc.process.poll() is not None:
            raise RuntimeError(f"sim IOC exited with code {ioc.process.returncode} before it "
                               f"was ready; its log:\n{ioc.log_tail()}")
        try:
            resp = read(f"{ioc.prefix}Ready", timeout=0.5, repeater=False)
            if int(resp.data[0]) == 1:
                return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last_error = exc
        time.sleep(0.2)
    raise RuntimeError(f"sim IOC {ioc.prefix} not ready within {deadline_s:g} s "
                       f"(last error: {last_error!r}); its log:\n{ioc.log_tail()}")


def start_sim_ioc(directory: Path, tray: list[dict[str, Any]] | None = None,
                  detector: str = "Pilatus300k", seed: int = 7) -> SimIOC:
    """Start ``python -m sim_iocs.saxs_beamline`` with a random prefix; wait until ready."""
    slots = parse_tray(tray or TEST_TRAY, "test tray")
    directory.mkdir(parents=True, exist_ok=True)
    tray_path = dump_tray(slots, directory / "tray.yaml")
    log_path = directory / "ioc.log"
    prefix = f"PBI{uuid.uuid4().hex[:8]}:"
    env = {**os.environ, **EPICS_ENV, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "sim_iocs.saxs_beamline", "--prefix", prefix,
           "--tray", str(tray_path), "--detector", detector, "--seed", str(seed)]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
    ioc = SimIOC(prefix, dict(EPICS_ENV), slots, tray_path, log_path, proc)
    atexit.register(_terminate, proc)
    try:
        _wait_ready(ioc, STARTUP_DEADLINE_S)
    except BaseException:
        _terminate(proc)
        raise
    return ioc


@pytest.fixture(scope="session")
def sim_ioc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimIOC]:
    """One simulated beamline IOC per test session (shared by every module importing it).

    Yields a :class:`SimIOC` (prefix, EPICS env, tray, log path); the subprocess is always
    terminated at the end of the session.
    """
    if _SHARED["ioc"] is None:
        _SHARED["ioc"] = start_sim_ioc(tmp_path_factory.mktemp("sim_ioc"))
    _SHARED["users"] += 1
    ioc: SimIOC = _SHARED["ioc"]
    try:
        if ioc.process.poll() is not None:
            pytest.fail(f"sim IOC died (code {ioc.process.returncode}):\n{ioc.log_tail()}")
        yield ioc
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            _terminate(ioc.process)
            _SHARED["ioc"] = None


@pytest.fixture(scope="session")
def beamline(sim_ioc: SimIOC) -> Any:
    """Connected :class:`pbi_bluesky.devices.Beamline` for the session's IOC."""
    from pbi_bluesky.devices import connect_beamline

    return connect_beamline(sim_ioc.prefix, timeout=10)


def ca_put(pvname: str, value: Any, timeout: float = 5.0) -> None:
    """Write a PV with put-completion (caproto sync client)."""
    from caproto.sync.client import write

    write(pvname, value, notify=True, timeout=timeout, repeater=False)


def ca_get(pvname: str, timeout: float = 5.0) -> Any:
    """Read a PV's first element (caproto sync client)."""
    from caproto.sync.client import read

    return read(pvname, timeout=timeout, repeater=False).data[0]


def move_changer(prefix: str, slot: int, deadline_s: float = 20.0) -> None:
    """Move the sample changer with plain CA and wait until it is in position."""
    ca_put(f"{prefix}changer:VAL", float(slot))
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if int(ca_get(f"{prefix}changer:DMOV")) == 1 and abs(
                float(ca_get(f"{prefix}changer:RBV")) - slot) < 1e-6:
            return
        time.sleep(0.05)
    raise RuntimeError(f"changer did not reach slot {slot} within {deadline_s} s")
