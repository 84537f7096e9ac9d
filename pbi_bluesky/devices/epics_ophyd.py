"""Stock ophyd devices of a SAXS beamline, configured from ``beamline.yaml``.

Nothing here is hand-written against a particular IOC: the detector is ophyd's own
``SingleTrigger`` + ``PilatusDetector`` with the stock ``HDF5Plugin`` +
``FileStoreHDF5IterativeWrite`` (Resource/Datum documents of spec ``AD_HDF5``, read back with
``area_detector_handlers``) and an ``ImagePlugin``; the changer is an ``EpicsMotor``; I0 and
transmission are ``EpicsSignalRO``. The only addition is a trigger deadline: a detector that
never finishes fails the status with :class:`DetectorTimeoutError` instead of hanging the scan.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, EpicsMotor, EpicsSignal, EpicsSignalRO
from ophyd.areadetector import ImagePlugin, PilatusDetector, SingleTrigger
from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite
from ophyd.areadetector.plugins import HDF5Plugin

from pbi_bluesky.config import BeamlineConfig
from pbi_bluesky.devices.base import Beamline, DetectorTimeoutError, wait_connected

__all__ = ["HDF5PluginWithFileStore", "SAXSPilatus", "make_ophyd_beamline"]

log = logging.getLogger(__name__)


class HDF5PluginWithFileStore(HDF5Plugin, FileStoreHDF5IterativeWrite):
    """The stock NDFileHDF5 plugin with the stock iterative file store (``AD_HDF5``)."""


class SAXSPilatus(SingleTrigger, PilatusDetector):
    """ADPilatus detector: stock classes, frames to HDF5, one frame per trigger.

    Parameters
    ----------
    prefix
        areaDetector IOC prefix.
    write_path, read_path
        HDF5 folder as the IOC sees it and as this machine sees it.
    timeout_margin
        A trigger fails after ``AcquireTime * NumImages + timeout_margin`` seconds.
    """

    image1 = Cpt(ImagePlugin, "image1:")
    hdf1 = Cpt(HDF5PluginWithFileStore, "HDF1:", write_path_template="/",
               read_path_template="/")
    hdf1_lazy_open = Cpt(EpicsSignal, "HDF1:LazyOpen", string=True, kind="omitted")
    """The plugin's LazyOpen (ADCore >= 2.1; not a component of the stock HDF5Plugin)."""

    def __init__(self, prefix: str = "", *, name: str, write_path: str = "/",
                 read_path: str | None = None, timeout_margin: float = 3.0,
                 **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)
        self.hdf1.write_path_template = str(write_path).rstrip("/") + "/"
        self.hdf1.read_path_template = str(read_path or write_path).rstrip("/") + "/"
        self.hdf1.reg_root = str(read_path or write_path)
        self.hdf1.kind = "normal"  # stock components read nothing by default
        self.timeout_margin = float(timeout_margin)
        self.stage_sigs.update({"cam.image_mode": "Single", "cam.num_images": 1,
                                "cam.trigger_mode": "Internal"})
        # stock ophyd names the file from FileNumber_RBV - 1 after Capture = 1, which only
        # holds when the file opens at Capture (LazyOpen = No); the detector's own stage
        # signals are applied before the plugin is staged
        self.stage_sigs["hdf1_lazy_open"] = "No"

    def ensure_warm(self) -> None:
        """Push one array through the HDF5 plugin if it has never seen one.

        After an IOC boot ``ArraySize*_RBV`` are 0 and the stock plugin refuses to stage.
        """
        if 0 in tuple(self.hdf1.array_size.get()):
            log.info("%s: warming up the HDF5 plugin (no array seen since IOC boot)", self.name)
            self.hdf1.warmup()

    def _start_acquisition(self) -> Any:
        """Stock ``SingleTrigger.trigger`` keeping its own reference to the status.

        The stock method returns ``self._status``, which the Acquire monitor (a CA thread)
        resets to ``None`` when the acquisition ends; a short exposure on a loaded machine
        can end before the method returns, and bluesky then gets ``None`` (seen at 0.05 s
        exposures). Same steps, same status class, no race.
        """
        from ophyd.device import Staged

        if self._staged != Staged.yes:
            raise RuntimeError("This detector is not ready to trigger. "
                               "Call the stage() method before triggering.")
        status = self._status_type(self)
        self._status = status
        self._acquisition_signal.put(1, wait=False)
        self.generate_datum(self._image_name, time.time(), {})
        return status

    def trigger(self) -> Any:
        """Acquire one frame (stock ``SingleTrigger`` steps), with a deadline.

        The status fails with :class:`DetectorTimeoutError` once exposure plus
        :attr:`timeout_margin` has passed without the acquisition ending; the acquisition is
        then stopped (``Acquire`` = 0).
        """
        status = self._start_acquisition()
        exposure = float(self.cam.acquire_time.get())
        frames = max(1, int(self.cam.num_images.get()))
        deadline = exposure * frames + self.timeout_margin

        def expire() -> None:
            if status.done:
                return
            msg = (f"{self.name}: acquisition of {frames} x {exposure:g} s did not finish "
                   f"within {deadline:g} s; stopped it ({self.cam.acquire.pvname} = 0). "
                   "Check the detector IOC.")
            log.error(msg)
            try:
                self.cam.acquire.put(0, wait=False)
            except Exception:  # noqa: BLE001 - report the timeout, not the abort failure
                log.exception("could not stop the acquisition")
            try:
                status.set_exception(DetectorTimeoutError(msg))
            except Exception:  # noqa: BLE001 - it finished in the meantime
                pass

        timer = threading.Timer(deadline, expire)
        timer.daemon = True
        timer.start()
        status.add_callback(lambda st: timer.cancel())
        return status


def _detector_class(cam: str, image: str | None, hdf: str) -> type[SAXSPilatus]:
    """:class:`SAXSPilatus` with other plugin suffixes (stock names need no subclass)."""
    if (cam, image, hdf) == ("cam1:", "image1:", "HDF1:"):
        return SAXSPilatus
    attrs: dict[str, Any] = {
        "cam": Cpt(SAXSPilatus.cam.cls, cam),
        "hdf1": Cpt(HDF5PluginWithFileStore, hdf, write_path_template="/",
                    read_path_template="/"),
        "hdf1_lazy_open": Cpt(EpicsSignal, f"{hdf}LazyOpen", string=True, kind="omitted"),
    }
    attrs["image1"] = Cpt(ImagePlugin, image) if image else None
    return type("SAXSPilatusCustom", (SAXSPilatus,), attrs)


@contextlib.contextmanager
def _no_lazy_wait() -> Iterator[None]:
    """Build without waiting for PVs.

    Stock areaDetector classes touch lazy signals in their constructors, which otherwise
    waits for each (and fails with a bare timeout).
    """
    orig = Device.lazy_wait_for_connection
    Device.lazy_wait_for_connection = False
    try:
        yield
    finally:
        Device.lazy_wait_for_connection = orig


def make_ophyd_beamline(cfg: BeamlineConfig, *, connect: bool = True) -> Beamline:
    """Build the beamline's devices as stock ophyd objects, connected.

    With ``connect=False`` nothing waits for a PV, e.g. to check the names a configuration
    gives.

    Raises
    ------
    BeamlineConnectionError
        Naming the devices and PVs that did not answer and the CA settings in use.
    """
    d = cfg.detector
    if d.kind != "pilatus":
        raise ValueError(f"{cfg.source}: detector.kind {d.kind!r} is not supported "
                         "(supported: 'pilatus')")
    cls = _detector_class(d.cam, d.image, d.hdf)
    with _no_lazy_wait():  # construction never blocks; connecting is explicit, below
        detector = cls(d.prefix, name=d.name, write_path=d.write_path, read_path=d.read_path,
                       timeout_margin=d.timeout_margin_s)
    changer = EpicsMotor(cfg.changer.motor, name=cfg.changer.name)
    i0 = EpicsSignalRO(cfg.monitors.i0, name=cfg.monitors.i0_name)
    monitors = [i0]
    if cfg.monitors.transmission:
        monitors.append(EpicsSignalRO(cfg.monitors.transmission,
                                      name=cfg.monitors.transmission_name))
    beamline = Beamline(cfg, detector, changer, monitors, mode="ophyd")
    if connect:
        wait_connected(beamline, cfg.connection_timeout_s)
        detector.ensure_warm()
    return beamline
