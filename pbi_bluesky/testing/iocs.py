"""Start and stop the simulated beamline IOC as a subprocess on loopback Channel Access.

Used by the test fixtures, the benchmarks and ``pbi demo``: free ports, a random PV prefix,
a data root for the HDF5 files, the PONI and mask files written by the IOC at start-up,
readiness polled on ``<prefix>sim:Ready``, and a guaranteed stop.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbi_bluesky.infra.ports import free_port
from pbi_bluesky.testing.launch import die_with_parent
from sim_iocs.config import SIM_DEFAULTS
from sim_iocs.tray import TraySlot, dump_tray, parse_tray

__all__ = ["SimIOC", "loopback_epics_env", "start_sim_ioc", "stop_sim_ioc"]

STARTUP_DEADLINE_S = 60.0


def loopback_epics_env() -> dict[str, str]:
    """Channel Access on 127.0.0.1 only, on a free server and a free repeater port."""
    server = free_port()
    repeater = free_port()
    while repeater == server:
        repeater = free_port()
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
        # libca clients (ophyd-async's aioca) need this for image1:ArrayData of a 1M frame
        "EPICS_CA_MAX_ARRAY_BYTES": "100000000",
    }


@dataclass
class SimIOC:
    """A running simulated beamline IOC.

    ``data_root`` is the only folder its HDF5 plugin writes into; ``poni_path`` and
    ``mask_path`` (EDF, 1 = masked) hold the geometry the IOC wrote at start-up.
    """

    prefix: str
    env: dict[str, str]
    tray: list[TraySlot]
    tray_path: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    data_root: Path = Path()
    poni_path: Path = Path()
    mask_path: Path = Path()
    detector: str = SIM_DEFAULTS.detector

    def log_tail(self, n_chars: int = 4000) -> str:
        """Return the end of the IOC's log (stdout+stderr)."""
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "<no log>"


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
            resp = read(f"{ioc.prefix}sim:Ready", timeout=0.5, repeater=False)
            if int(resp.data[0]) == 1:
                return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last_error = exc
        time.sleep(0.2)
    raise RuntimeError(f"sim IOC {ioc.prefix} not ready within {deadline_s:g} s "
                       f"(last error: {last_error!r}); its log:\n{ioc.log_tail()}")


def start_sim_ioc(directory: Path, tray: list[dict[str, Any]] | list[TraySlot],
                  detector: str = SIM_DEFAULTS.detector, seed: int = 7,
                  env: dict[str, str] | None = None,
                  data_root: Path | None = None) -> SimIOC:
    """Start ``python -m sim_iocs.saxs_beamline`` with a random prefix; wait until ready.

    The IOC writes ``directory / "geometry.poni"`` and ``directory / "mask.edf"``; every
    path of the returned :class:`SimIOC` is absolute, whatever the caller's working folder.

    Parameters
    ----------
    directory : Path
        The IOC's working folder (log, geometry, mask).
    tray : list of dict or list of TraySlot
        The samples in the changer's slots.
    detector : str
        The simulated detector's name.
    seed : int
        Seed of the simulated scattering.
    env : dict of str to str, optional
        The EPICS variables (default: :func:`loopback_epics_env`).
    data_root : Path, optional
        The HDF5 folder (default ``directory / "data"``).
    """
    if all(isinstance(t, TraySlot) for t in tray):
        slots = list(tray)
    else:
        slots = parse_tray(tray, "tray")
    epics = env or loopback_epics_env()
    # absolute paths: the IOC runs with its cwd in ``directory``, so a relative path given
    # to it (``demo_output/ioc/geometry.poni``) would land one folder deeper than the caller
    # looks for it
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    tray_path = dump_tray(slots, directory / "tray.yaml")
    log_path = directory / "ioc.log"
    root = Path(data_root or directory / "data").resolve()
    root.mkdir(parents=True, exist_ok=True)
    poni, mask = directory / "geometry.poni", directory / "mask.edf"
    prefix = f"PBI{uuid.uuid4().hex[:8]}:"
    full_env = {**os.environ, **epics, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "sim_iocs.saxs_beamline", "--prefix", prefix,
           "--tray", str(tray_path), "--detector", detector, "--seed", str(seed),
           "--data-root", str(root), "--poni-out", str(poni), "--mask-out", str(mask),
           "--interfaces", "127.0.0.1"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=directory, env=full_env, stdout=log_file,
                                stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    ioc = SimIOC(prefix, dict(epics), list(slots), tray_path, log_path, proc,
                 data_root=root, poni_path=poni, mask_path=mask, detector=detector)
    atexit.register(_terminate, proc)
    try:
        _wait_ready(ioc, STARTUP_DEADLINE_S)
    except BaseException:
        _terminate(proc)
        raise
    return ioc


def stop_sim_ioc(ioc: SimIOC) -> None:
    """Terminate the IOC subprocess (kill it if it does not stop within 5 s)."""
    _terminate(ioc.process)
