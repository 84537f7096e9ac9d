"""Fixtures that run the simulated SAXS beamline IOC for tests over real Channel Access.

Importing this module configures Channel Access for loopback on free ports (the caproto
client reads the environment when ophyd is first imported), so test modules must import
it before anything that imports ophyd, and import ophyd-based code inside tests/fixtures.

``tests/conftest.py`` registers this module with ``pytest_plugins``: a test names the
fixtures (``sim_ioc``, ``sim_config``, ``beamline``) as arguments and imports only helpers.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pbi_bluesky.testing.iocs import (
    SimIOC,
    _terminate,  # noqa: F401 - used by the fixture
    loopback_epics_env,
)
from pbi_bluesky.testing.iocs import start_sim_ioc as _start

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
    {"slot": 6, "sample": "N25-live", "composition": "25:75"},
    {"slot": 7, "sample": "T50-live", "composition": "50:50", "faults": {"beam_dump": 0.8},
     "transient": True},
    {"slot": 8, "sample": "D50-live", "composition": "50:50", "kind": "degradation",
     "severity": 1.0},
    {"slot": 9, "sample": "T50-ioc", "composition": "50:50", "faults": {"beam_dump": 0.8},
     "transient": True},
    {"slot": 10, "sample": "T50-async", "composition": "50:50",
     "faults": {"beam_dump": 0.8}, "transient": True},
    {"slot": 11, "sample": "T50-agent", "composition": "50:50",
     "faults": {"beam_dump": 0.8}, "transient": True},
]
"""Slots 1-4: plan tests, 5: device tests, 6-8: live end-to-end (ophyd), 6, 8, 10: live
end-to-end (ophyd-async), 9: IOC tests, 11: agent through the queue server (one-shot faults on
4, 7, 9, 10, 11: expose those slots only in the tests they belong to). Position 0: empty
cell."""


EPICS_ENV: dict[str, str] = loopback_epics_env()
os.environ.update(EPICS_ENV)
if "ophyd" in sys.modules:  # pragma: no cover - import-order problem, explain it loudly
    log.warning("ophyd was imported before tests.beamline_fixtures; CA may use other ports")

_SHARED: dict[str, Any] = {"ioc": None, "users": 0}


def start_sim_ioc(directory: Path, tray: list[dict[str, Any]] | None = None,
                  detector: str = "Pilatus300k", seed: int = 7) -> SimIOC:
    """Start the IOC on this session's loopback ports with the test tray by default.

    Tests use the small Pilatus300k for speed (the IOC's own default is the Pilatus1M).
    """
    return _start(directory, tray or TEST_TRAY, detector, seed, env=EPICS_ENV)


@pytest.fixture(scope="session")
def sim_ioc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimIOC]:
    """One simulated beamline IOC per test session (shared by every module importing it).

    Yields a :class:`SimIOC` (prefix, EPICS env, tray, log path, ``data_root`` for HDF5
    files, ``poni_path``, ``mask_path``); the subprocess is always terminated at the end of
    the session.
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
def sim_config(sim_ioc: SimIOC) -> Any:
    """The :class:`pbi_bluesky.config.BeamlineConfig` of the session's IOC."""
    from pbi_bluesky.demos.beamline import sim_beamline_config

    return sim_beamline_config(sim_ioc, connection_timeout_s=15.0)


@pytest.fixture(scope="session")
def beamline(sim_config: Any) -> Any:
    """Connected stock-ophyd :class:`pbi_bluesky.devices.Beamline` for the session's IOC."""
    from pbi_bluesky.devices import make_ophyd_beamline

    return make_ophyd_beamline(sim_config)


def ca_put(pvname: str, value: Any, timeout: float = 5.0) -> None:
    """Write a PV with put-completion (caproto sync client)."""
    from caproto.sync.client import write

    write(pvname, value, notify=True, timeout=timeout, repeater=False)


def ca_get(pvname: str, timeout: float = 5.0) -> Any:
    """Read a PV's first element (caproto sync client); enums come back as their string."""
    from caproto.sync.client import read

    return read(pvname, timeout=timeout, repeater=False).data[0]


def ca_get_array(pvname: str, timeout: float = 5.0) -> Any:
    """Read a whole waveform (caproto sync client)."""
    from caproto.sync.client import read

    return read(pvname, timeout=timeout, repeater=False).data


def ca_get_str(pvname: str, timeout: float = 5.0) -> str:
    """Read a string PV (DBR_STRING, enum or char waveform) as text."""
    data = ca_get_array(pvname, timeout)
    if len(data) and isinstance(data[0], bytes):
        return data[0].decode()
    return bytes(bytearray(int(c) for c in data)).split(b"\0", 1)[0].decode()


def move_changer(prefix: str, slot: float, deadline_s: float = 20.0) -> None:
    """Move the sample changer (motor record ``<prefix>changer``) with plain CA.

    The put to ``.VAL`` completes when the move is done (as a motor record's does);
    ``.DMOV`` and ``.RBV`` are checked afterwards.
    """
    ca_put(f"{prefix}changer.VAL", float(slot), timeout=deadline_s)
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        if int(ca_get(f"{prefix}changer.DMOV")) == 1 and abs(
                float(ca_get(f"{prefix}changer.RBV")) - slot) < 1e-6:
            return
        time.sleep(0.05)
    raise RuntimeError(f"changer did not reach position {slot} within {deadline_s} s")
