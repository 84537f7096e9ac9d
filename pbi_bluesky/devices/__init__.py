"""Beamline devices: stock ophyd and ophyd-async classes configured from ``beamline.yaml``.

Must not import :mod:`pbi_bluesky.reduction` or the models: devices only move, trigger and
read; reduction happens in consumers of the documents.
"""

from __future__ import annotations

from pbi_bluesky.config import BeamlineConfig
from pbi_bluesky.devices.base import (
    Beamline,
    BeamlineConnectionError,
    DetectorTimeoutError,
)

__all__ = [
    "Beamline",
    "BeamlineConnectionError",
    "DetectorTimeoutError",
    "make_async_beamline",
    "make_beamline",
    "make_ophyd_beamline",
]


def make_ophyd_beamline(cfg: BeamlineConfig, *, connect: bool = True) -> Beamline:
    """Stock ophyd devices (see :mod:`pbi_bluesky.devices.epics_ophyd`)."""
    from pbi_bluesky.devices.epics_ophyd import make_ophyd_beamline as make

    return make(cfg, connect=connect)


def make_async_beamline(cfg: BeamlineConfig, *, connect: bool = True, **kwargs) -> Beamline:
    """Stock ophyd-async devices (see :mod:`pbi_bluesky.devices.epics_async`)."""
    from pbi_bluesky.devices.epics_async import make_async_beamline as make

    return make(cfg, connect=connect, **kwargs)


def make_beamline(cfg: BeamlineConfig, mode: str = "ophyd", *, connect: bool = True
                  ) -> Beamline:
    """Build the beamline's devices in ``mode``.

    ``"ophyd"`` (Resource/Datum) or ``"async"`` (StreamResource/StreamDatum).
    """
    if mode == "ophyd":
        return make_ophyd_beamline(cfg, connect=connect)
    if mode == "async":
        return make_async_beamline(cfg, connect=connect)
    raise ValueError(f"mode must be 'ophyd' or 'async', got {mode!r}")
