"""What the simulated IOC says at start-up: where it serves, and how a client reaches it.

Serving on loopback (the default), the IOC answers only searches sent to that address, not
a default Channel Access client's broadcast. :func:`client_environment` names the
``EPICS_CA_*`` variables a client must export to find it, and :func:`startup_lines` the
lines ``python -m sim_iocs.saxs_beamline`` (and so ``pbi sim iocs``) logs at start-up: the
prefix, the interfaces, the data root and that ``export`` line. Building and serving the
IOC is :mod:`sim_iocs.saxs_beamline`'s job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["client_environment", "startup_lines"]


def client_environment(interfaces: list[str] | tuple[str, ...],
                       environ: Any = None) -> dict[str, str]:
    """Return the ``EPICS_CA_*`` variables a Channel Access client needs to find this IOC.

    Parameters
    ----------
    interfaces : list of str
        The interfaces the IOC serves on (``--interfaces``).
    environ : mapping, optional
        The IOC's environment (default ``os.environ``): a non-default server port
        (``EPICS_CAS_SERVER_PORT`` or ``EPICS_CA_SERVER_PORT``) must be exported too.

    Returns
    -------
    dict
        Variable name to value. Serving on specific addresses (loopback by default), the
        IOC answers only searches sent to them, not a default client's broadcast: the
        client lists them in ``EPICS_CA_ADDR_LIST`` and turns the automatic list off.
        Serving on ``0.0.0.0`` needs nothing.
    """
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    addresses = [a for a in interfaces if a not in ("0.0.0.0", "")]
    if addresses and len(addresses) == len(interfaces):
        out["EPICS_CA_ADDR_LIST"] = " ".join(addresses)
        out["EPICS_CA_AUTO_ADDR_LIST"] = "NO"
    port = environ.get("EPICS_CAS_SERVER_PORT") or environ.get("EPICS_CA_SERVER_PORT")
    if port and port != "5064":
        out["EPICS_CA_SERVER_PORT"] = port
    return out


def startup_lines(prefix: str, n_pvs: int, interfaces: list[str] | tuple[str, ...],
                  data_root: Path, environ: Any = None) -> list[str]:
    """Return the IOC's start-up lines: prefix, where, and what a client must export.

    Parameters
    ----------
    prefix : str
        The PV prefix.
    n_pvs : int
        How many PVs it serves.
    interfaces : list of str
        The Channel Access interfaces it serves on.
    data_root : Path
        The only folder its HDF5 plugin writes into.
    environ : mapping, optional
        The IOC's environment (see :func:`client_environment`).

    Returns
    -------
    list of str
        Log lines, the last one the ``export`` command for a client's shell.
    """
    env = client_environment(interfaces, environ)
    lines = [f"serving {n_pvs} PVs with prefix {prefix} on {' '.join(interfaces)} "
             f"(pid {os.getpid()}), HDF5 data root {data_root}"]
    if env:
        lines.append("a Channel Access client (pbi ipython, ophyd, caget) must export: "
                     + " ".join(f"{k}={v!r}" if " " in v else f"{k}={v}"
                                for k, v in env.items())
                     + " (the epics section of profiles/profile_saxs/beamline.yaml sets them"
                       " for pbi ipython)")
    return lines
