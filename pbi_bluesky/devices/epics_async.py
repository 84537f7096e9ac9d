"""Stock ophyd-async devices of a SAXS beamline, configured from ``beamline.yaml``.

The detector is ``ophyd_async.epics.adpilatus.PilatusDetector`` with the stock HDF writer
(StreamResource/StreamDatum documents), the changer ``ophyd_async.epics.motor.Motor``, the
monitors ``epics_signal_r``. I0 and transmission reach every frame the areaDetector way: as
NDAttributes recorded by the IOC into the HDF5 file (``/entry/instrument/NDAttributes/<name>``),
declared by :func:`ndattributes` and set up by :func:`setup_monitor_ndattributes` (a plan stub,
run by the plans in :mod:`pbi_bluesky.plans` before they acquire).

ophyd-async devices connect in bluesky's event loop: create the ``RunEngine`` first.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from pbi_bluesky.config import BeamlineConfig
from pbi_bluesky.devices.base import Beamline, BeamlineConnectionError, connection_help

__all__ = ["make_async_beamline", "ndattributes", "setup_monitor_ndattributes"]


def ndattributes(monitors: list[Any]) -> list[Any]:
    """Return the NDAttribute declarations that record I0 and transmission with every frame.

    Their names are the monitors' names, so frame, I0 and transmission arrive under the
    same data keys (``i0``, ``transmission``) in both modes.
    """
    from ophyd_async.epics.adcore import NDAttributePv, NDAttributePvDbrType

    return [NDAttributePv(m.name, m, NDAttributePvDbrType.DBR_DOUBLE,
                          description=f"{m.name} at the end of each frame")
            for m in monitors]


def setup_monitor_ndattributes(detector: Any, monitors: list[Any]):  # noqa: ANN201 - a plan
    """Write the NDAttributes XML (I0, transmission) to the detector driver (a plan stub).

    The IOC then records them with every frame.
    """
    from ophyd_async.epics.adcore import setup_ndattributes

    yield from setup_ndattributes(detector.driver, ndattributes(monitors))


def make_async_beamline(cfg: BeamlineConfig, *, connect: bool = True,
                        path_provider: Any = None) -> Beamline:
    """Build the beamline's devices as stock ophyd-async objects.

    They are connected unless ``connect=False``; a ``RunEngine`` must exist for that.

    Parameters
    ----------
    cfg
        The beamline configuration.
    path_provider
        Where the HDF writer puts files (default: a UUID file name in
        ``detector.write_path``, URIs pointing at ``detector.read_path``).

    Raises
    ------
    BeamlineConnectionError
        Naming what did not connect.
    """
    from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider
    from ophyd_async.epics.adcore import ADWriterFactory
    from ophyd_async.epics.adpilatus import PilatusDetector
    from ophyd_async.epics.core import epics_signal_r
    from ophyd_async.epics.motor import Motor

    d = cfg.detector
    if d.kind != "pilatus":
        raise ValueError(f"{cfg.source}: detector.kind {d.kind!r} is not supported "
                         "(supported: 'pilatus')")
    if path_provider is None:
        uri = "file://localhost" + str(PurePosixPath(d.local_path)).rstrip("/") + "/"
        path_provider = StaticPathProvider(UUIDFilenameProvider(),
                                           PurePosixPath(d.write_path), directory_uri=uri)
    detector = PilatusDetector(d.prefix, ADWriterFactory.hdf(path_provider, writer_suffix=d.hdf),
                               driver_suffix=d.cam, name=d.name)
    changer = Motor(cfg.changer.motor, name=cfg.changer.name)
    monitors = [epics_signal_r(float, cfg.monitors.i0, name=cfg.monitors.i0_name)]
    if cfg.monitors.transmission:
        monitors.append(epics_signal_r(float, cfg.monitors.transmission,
                                       name=cfg.monitors.transmission_name))
    beamline = Beamline(cfg, detector, changer, monitors, mode="async")
    if connect:
        connect_async(beamline, cfg.connection_timeout_s)
    return beamline


def connect_async(beamline: Beamline, timeout: float) -> None:
    """Connect every device in bluesky's event loop; fail with what did not connect."""
    import asyncio

    from bluesky.run_engine import call_in_bluesky_event_loop

    async def connect_all() -> list[str]:
        devices = list(beamline.devices.values())
        results = await asyncio.gather(*(d.connect(timeout=timeout) for d in devices),
                                       return_exceptions=True)
        return [f"{d.name}: {r}" for d, r in zip(devices, results, strict=True)
                if isinstance(r, BaseException)]

    try:
        failures = call_in_bluesky_event_loop(connect_all())
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}: create the RunEngine before the ophyd-async devices") \
            from exc
    if failures:
        raise BeamlineConnectionError(
            f"beamline {beamline.config.name!r} ({beamline.config.source}): not connected: "
            + "; ".join(failures) + ". " + connection_help(beamline.config.detector.prefix))
