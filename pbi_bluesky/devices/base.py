"""What every beamline implementation provides: the devices of one SAXS beamline.

Two implementations build a :class:`Beamline` from one ``beamline.yaml``:
:func:`~pbi_bluesky.devices.epics_ophyd.make_ophyd_beamline` (stock ophyd, Resource/Datum)
and :func:`~pbi_bluesky.devices.epics_async.make_async_beamline` (stock ophyd-async,
StreamResource/StreamDatum). Plans only rely on the small protocols below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pbi_bluesky.config import BeamlineConfig

__all__ = [
    "Beamline",
    "BeamlineConnectionError",
    "DetectorTimeoutError",
    "Named",
    "wait_connected",
]


class DetectorTimeoutError(TimeoutError):
    """An acquisition did not complete within exposure + margin."""


class BeamlineConnectionError(TimeoutError):
    """The beamline IOCs (or some of their PVs) did not answer."""


@runtime_checkable
class Named(Protocol):
    """Anything bluesky can move, trigger or read has a name."""

    name: str


@dataclass
class Beamline:
    """The devices of one beamline, built from its configuration.

    Attributes
    ----------
    config
        The configuration the devices were built from.
    detector
        The area detector (stock ophyd ``PilatusDetector`` or ophyd-async one).
    changer
        The sample changer (a motor record: ``EpicsMotor`` or ophyd-async ``Motor``).
    monitors
        I0 and (if configured) transmission readings, read with every frame.
    mode
        ``"ophyd"`` or ``"async"``.
    """

    config: BeamlineConfig
    detector: Any
    changer: Any
    monitors: list[Any] = field(default_factory=list)
    mode: str = "ophyd"

    @property
    def readables(self) -> list[Any]:
        """What a step scan measures at each point: the detector and the monitors.

        (With ophyd-async the plans have the IOC record the monitors with every frame as
        NDAttributes, which arrive under the monitors' names.)
        """
        return [self.detector, *self.monitors]

    @property
    def devices(self) -> dict[str, Any]:
        """Devices by name (for a queue server's device list)."""
        return {d.name: d for d in (self.detector, self.changer, *self.monitors)}

    @property
    def image_key(self) -> str:
        """Data key of the frames in this mode's event descriptors."""
        name = self.config.detector.name
        return f"{name}_image" if self.mode == "ophyd" else name


def connection_help(prefix_or_pv: str) -> str:
    """Describe the CA settings in use, for error messages."""
    addr = os.environ.get("EPICS_CA_ADDR_LIST", "<unset>")
    port = os.environ.get("EPICS_CA_SERVER_PORT", "5064")
    return (f"Is the IOC serving {prefix_or_pv} running and reachable "
            f"(EPICS_CA_ADDR_LIST={addr}, EPICS_CA_SERVER_PORT={port})?")


def wait_connected(beamline: Beamline, timeout: float) -> None:
    """Wait for every ophyd device of ``beamline``; fail with the ones missing."""
    missing: list[str] = []
    for dev in beamline.devices.values():
        try:
            dev.wait_for_connection(timeout=timeout)
        except TimeoutError as exc:
            missing.append(f"{dev.name}: {exc}")
    if missing:
        raise BeamlineConnectionError(
            f"beamline {beamline.config.name!r} ({beamline.config.source}): not connected "
            f"within {timeout:g} s: " + "; ".join(missing) + ". "
            + connection_help(beamline.config.detector.prefix))
