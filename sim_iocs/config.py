"""The simulated beamline's defaults.

Shared by ``python -m sim_iocs.saxs_beamline``, ``pbi iocs`` and
:func:`pbi_bluesky.testing.iocs.start_sim_ioc`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DETECTORS", "DETECTOR_DISTANCES_M", "SIM_DEFAULTS", "SimDefaults"]

DETECTORS: dict[str, str] = {
    "Pilatus300k": "Pilatus 300K (simulated)",
    "Pilatus1M": "Pilatus 1M (simulated)",
}
"""Supported detectors and the ``Model_RBV`` the IOC serves for each."""

DETECTOR_DISTANCES_M: dict[str, float] = {"Pilatus300k": 3.0, "Pilatus1M": 3.0}
"""Default sample-detector distance per supported detector."""


@dataclass(frozen=True)
class SimDefaults:
    """Defaults of the simulated beamline IOC.

    Parameters
    ----------
    prefix
        PV prefix (the shipped ``beamline.yaml`` names ``SAXS:``).
    detector
        ``Pilatus1M``: the shipped model covers its q range.
    interfaces
        Channel Access interfaces: loopback unless asked otherwise.
    data_root
        The only folder the HDF5 plugin may write into.
    """

    prefix: str = "SAXS:"
    detector: str = "Pilatus1M"
    interfaces: tuple[str, ...] = ("127.0.0.1",)
    data_root: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "pbi_sim_data")


SIM_DEFAULTS = SimDefaults()
