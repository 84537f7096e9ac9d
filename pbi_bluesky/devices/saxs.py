"""ophyd devices for a SAXS beamline with an areaDetector-like detector.

Built against the PV names of :mod:`sim_iocs.saxs_beamline` (a subset of areaDetector and
motor-record naming), so the same classes talk to the simulator and to a real IOC that
exposes those PVs.

* :class:`SAXSDetector` - triggerable; ``read()`` gives the frame (int32, (ny, nx)), the
  incident photons I0 and the transmission; ``read_configuration()`` the exposure time and
  the PONI text needed to reduce the frames.
* :class:`SampleChanger` - a :class:`ophyd.PVPositioner` over VAL/RBV/DMOV/STOP with the
  tray description (sample name, composition, thickness per slot).
* :class:`BeamMonitor` - shutter, I0, transmission, flux.
* :func:`connect_beamline` - build and connect all three, failing fast with a clear error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, DeviceStatus, EpicsSignal, EpicsSignalRO, Kind, PVPositioner

__all__ = [
    "HANDLER_REGISTRY",
    "HDF5Plugin",
    "SAXSDetectorHDF5",
    "SAXSHDF5Handler",
    "Beamline",
    "BeamlineConnectionError",
    "BeamMonitor",
    "DetectorTimeoutError",
    "ImageSignal",
    "SAXSCam",
    "SAXSDetector",
    "SampleChanger",
    "TraySlotInfo",
    "connect_beamline",
]

log = logging.getLogger(__name__)


class DetectorTimeoutError(TimeoutError):
    """An acquisition did not complete within exposure + margin."""


class BeamlineConnectionError(TimeoutError):
    """The beamline IOC (or some of its PVs) did not answer."""


class ImageSignal(EpicsSignalRO):
    """A flat int32 image waveform served as a 2D ``(ny, nx)`` array.

    The shape comes from the parent detector's ``cam.array_size1`` (rows) and
    ``cam.array_size0`` (columns), read once after connection.
    """

    _image_shape: tuple[int, int] | None = None

    @property
    def image_shape(self) -> tuple[int, int]:
        """Frame shape (rows, columns)."""
        if self._image_shape is None:
            cam = self.parent.cam
            shape = (int(cam.array_size1.get()), int(cam.array_size0.get()))
            if min(shape) <= 0:
                raise RuntimeError(f"{self.name}: detector reports frame size {shape}")
            self._image_shape = shape
        return self._image_shape

    def get(self, **kwargs: Any) -> np.ndarray:
        """The last frame as an int32 array of :attr:`image_shape`."""
        flat = np.asarray(super().get(**kwargs), dtype=np.int32)
        ny, nx = self.image_shape
        if flat.size != ny * nx:
            raise RuntimeError(f"{self.name}: got {flat.size} pixels, expected {ny}x{nx}")
        return flat.reshape(ny, nx)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Data key with shape ``[ny, nx]`` and ``dtype_numpy`` ``"<i4"``."""
        return {
            self.name: {
                "source": f"PV:{self.pvname}",
                "dtype": "array",
                "dtype_numpy": "<i4",
                "shape": list(self.image_shape),
                "units": "counts",
            }
        }


class SAXSCam(Device):
    """Detector driver PVs (``cam1:``)."""

    acquire = Cpt(EpicsSignal, "Acquire", kind="omitted", auto_monitor=True)
    acquire_time = Cpt(EpicsSignal, "AcquireTime", kind="config")
    num_images = Cpt(EpicsSignal, "NumImages", kind="omitted")
    image_mode = Cpt(EpicsSignal, "ImageMode", kind="omitted")
    detector_state = Cpt(EpicsSignalRO, "DetectorState_RBV", kind="omitted")
    array_counter = Cpt(EpicsSignalRO, "ArrayCounter_RBV", kind="omitted", auto_monitor=True)
    array_size0 = Cpt(EpicsSignalRO, "ArraySize0_RBV", kind="config")
    array_size1 = Cpt(EpicsSignalRO, "ArraySize1_RBV", kind="config")
    poni = Cpt(EpicsSignalRO, "PONI", string=True, kind="config")


class SAXSDetector(Device):
    """A triggerable SAXS area detector plus the beam readings needed to normalise frames.

    Parameters
    ----------
    prefix
        Beamline prefix, e.g. ``"P:"`` (the device reads ``P:cam1:*``, ``P:image1:ArrayData``
        and ``P:beam:I0``/``P:beam:Transmission``).
    timeout_margin
        Seconds added to the total exposure before :meth:`trigger` gives up.
    """

    cam = Cpt(SAXSCam, "cam1:", kind="config")
    image = Cpt(ImageSignal, "image1:ArrayData", kind="normal")
    i0 = Cpt(EpicsSignalRO, "beam:I0", kind="hinted")
    transmission = Cpt(EpicsSignalRO, "beam:Transmission", kind="normal")

    def __init__(self, prefix: str = "", *, name: str, timeout_margin: float = 3.0,
                 **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)
        self.timeout_margin = float(timeout_margin)
        self.stage_sigs.update({"cam.image_mode": 0, "cam.num_images": 1})
        self._acquiring_lock = threading.Lock()

    @property
    def exposure_time(self) -> float:
        """Exposure per frame (s), the detector's AcquireTime."""
        return float(self.cam.acquire_time.get())

    def trigger(self) -> DeviceStatus:
        """Start one acquisition; the status finishes when Acquire returns to 0.

        The status fails with :class:`DetectorTimeoutError` if the frame has not arrived
        after the total exposure plus :attr:`timeout_margin` seconds; the acquisition is
        then aborted (Acquire put to 0).
        """
        cam = self.cam
        exposure = float(cam.acquire_time.get())
        n_frames = max(1, int(cam.num_images.get())) if int(cam.image_mode.get()) else 1
        deadline = exposure * n_frames + self.timeout_margin
        start_counter = int(cam.array_counter.get(use_monitor=False))
        status = DeviceStatus(self)
        state: dict[str, Any] = {"counter_seen": False, "acquire": None, "finished": False}
        lock = threading.Lock()

        def finish(exc: Exception | None = None) -> None:
            with lock:
                if state["finished"]:
                    return
                state["finished"] = True
            timer.cancel()
            cam.acquire.clear_sub(on_acquire)
            cam.array_counter.clear_sub(on_counter)
            if exc is None:
                status.set_finished()
            else:
                status.set_exception(exc)

        def check() -> None:
            if state["counter_seen"] and state["acquire"] == 0:
                finish()

        def on_acquire(value: Any = None, **kwargs: Any) -> None:
            state["acquire"] = int(value)
            check()

        def on_counter(value: Any = None, **kwargs: Any) -> None:
            if int(value) >= start_counter + n_frames:
                state["counter_seen"] = True
                check()

        def on_timeout() -> None:
            msg = (f"{self.name}: acquisition of {n_frames} x {exposure:g} s did not complete "
                   f"within {deadline:g} s (exposure + {self.timeout_margin:g} s margin); "
                   f"aborted. Check {cam.acquire.pvname} and the detector IOC.")
            log.error(msg)
            try:
                cam.acquire.put(0, wait=False)
            except Exception:  # noqa: BLE001 - report the timeout, not the abort failure
                log.exception("could not abort acquisition")
            finish(DetectorTimeoutError(msg))

        timer = threading.Timer(deadline, on_timeout)
        timer.daemon = True
        cam.acquire.subscribe(on_acquire, run=False)
        cam.array_counter.subscribe(on_counter, run=False)
        try:
            cam.acquire.put(1, wait=False)
        except Exception as exc:
            finish(exc)
            return status
        timer.start()
        return status


class HDF5Plugin(Device):
    """HDF5 file-writer PVs (``HDF1:``); the IOC writes one file per acquisition."""

    file_path = Cpt(EpicsSignal, "FilePath", string=True, kind="config")
    file_name = Cpt(EpicsSignal, "FileName", string=True, kind="config")
    file_number = Cpt(EpicsSignal, "FileNumber", kind="omitted")
    full_file_name = Cpt(EpicsSignalRO, "FullFileName_RBV", string=True, kind="omitted")
    capture = Cpt(EpicsSignal, "Capture", kind="omitted")
    num_captured = Cpt(EpicsSignalRO, "NumCaptured_RBV", kind="omitted")
    enable_callbacks = Cpt(EpicsSignal, "EnableCallbacks", kind="omitted")


class SAXSDetectorHDF5(SAXSDetector):
    """:class:`SAXSDetector` whose frames go to HDF5 files, referenced by Resource/Datum.

    Events carry a datum id instead of the pixels; consumers load frames with
    :data:`HANDLER_REGISTRY` (spec ``"AD_HDF5"``, e.g. ``event_model.Filler``).

    Parameters
    ----------
    prefix
        Beamline prefix.
    write_path
        Directory the IOC writes into.
    read_path
        The same directory as seen by consumers (default: ``write_path``).
    """

    hdf = Cpt(HDF5Plugin, "HDF1:", kind="config")

    def __init__(self, prefix: str = "", *, name: str, write_path: str,
                 read_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)
        self.write_path = str(write_path)
        self.read_path = str(read_path or write_path)
        self.image.kind = Kind.omitted
        self.stage_sigs.update({"hdf.file_path": self.write_path, "hdf.enable_callbacks": 1})
        self._asset_docs_cache: deque[tuple[str, dict[str, Any]]] = deque()
        self._last_datum: dict[str, Any] | None = None
        self._new_frame = False

    @property
    def _image_key(self) -> str:
        return f"{self.name}_image"

    def stage(self) -> list[Any]:
        """Point the writer at :attr:`write_path` and enable it."""
        self._asset_docs_cache.clear()
        self._last_datum = None
        return super().stage()

    def unstage(self) -> list[Any]:
        """Restore the writer settings."""
        self._asset_docs_cache.clear()
        return super().unstage()

    def trigger(self) -> DeviceStatus:
        """Acquire; the next :meth:`read` emits a Resource (the new file) and a Datum."""
        self._last_datum = None
        status = super().trigger()

        def mark(st: DeviceStatus) -> None:
            self._new_frame = bool(st.success)

        self._new_frame = False
        status.add_callback(mark)
        return status

    def _make_assets(self) -> None:
        import event_model

        written = PurePosixPath(self.hdf.full_file_name.get(use_monitor=False))
        try:
            relative = written.relative_to(self.write_path)
        except ValueError as exc:
            raise RuntimeError(f"{self.name}: IOC wrote {written}, outside write_path "
                               f"{self.write_path}; is {self.hdf.file_path.pvname} right?") from exc
        bundle = event_model.compose_resource(
            spec="AD_HDF5", root=self.read_path, resource_path=str(relative),
            resource_kwargs={"frame_per_point": 1})
        datum = bundle.compose_datum(datum_kwargs={"point_number": 0})
        self._asset_docs_cache.append(("resource", dict(bundle.resource_doc)))
        self._asset_docs_cache.append(("datum", dict(datum)))
        self._last_datum = {"value": datum["datum_id"], "timestamp": time.time()}

    def read(self) -> dict[str, dict[str, Any]]:
        """Readings with the frame as a datum id (external)."""
        res = super().read()
        if getattr(self, "_new_frame", False):
            self._new_frame = False
            self._make_assets()
        if self._last_datum is None:
            raise RuntimeError(f"{self.name}: read() before a successful trigger()")
        res[self._image_key] = dict(self._last_datum)
        return res

    def describe(self) -> dict[str, dict[str, Any]]:
        """Data keys; the frame is ``external: FILESTORE:``."""
        res = super().describe()
        key = self.image.describe()[self.image.name]
        res[self._image_key] = {**key, "external": "FILESTORE:"}
        return res

    def collect_asset_docs(self):  # noqa: ANN201 - generator of (name, doc)
        """Yield and forget the cached Resource/Datum documents."""
        items = list(self._asset_docs_cache)
        self._asset_docs_cache.clear()
        yield from items


class SAXSHDF5Handler:
    """Load frames referenced by ``AD_HDF5`` resources (``/entry/data/data``).

    Parameters
    ----------
    filename
        HDF5 file (root + resource_path).
    frame_per_point
        Frames per datum.
    """

    specs = {"AD_HDF5"}

    def __init__(self, filename: str, frame_per_point: int = 1) -> None:
        import h5py

        self._file = h5py.File(filename, "r")
        self._fpp = int(frame_per_point)

    def __call__(self, point_number: int) -> np.ndarray:
        """Frame(s) of one datum: (ny, nx) for 1 frame per point, else (n, ny, nx)."""
        data = self._file["/entry/data/data"]
        start = int(point_number) * self._fpp
        block = np.asarray(data[start:start + self._fpp])
        return block[0] if self._fpp == 1 else block

    def close(self) -> None:
        """Close the file."""
        self._file.close()


HANDLER_REGISTRY: dict[str, type] = {"AD_HDF5": SAXSHDF5Handler}
"""Handlers for the asset specs these devices emit, for ``event_model.Filler``."""


class TraySlotInfo(Device):
    """Description of one tray slot (``tray:N:``)."""

    sample = Cpt(EpicsSignalRO, "Name", string=True)
    composition = Cpt(EpicsSignalRO, "Composition", string=True)
    thickness_cm = Cpt(EpicsSignalRO, "Thickness")


class SampleChanger(PVPositioner):
    """Sample changer moving between integer slot positions (motor-record subset).

    Parameters
    ----------
    prefix
        Changer prefix, e.g. ``"P:changer:"``.
    tray_prefix
        Prefix of the per-slot PVs, e.g. ``"P:tray:"``; enables :meth:`slot_info`.
    """

    setpoint = Cpt(EpicsSignal, "VAL", kind="normal")
    readback = Cpt(EpicsSignalRO, "RBV", kind="hinted")
    done = Cpt(EpicsSignalRO, "DMOV", kind="omitted", auto_monitor=True)
    stop_signal = Cpt(EpicsSignal, "STOP", kind="omitted")
    high_limit = Cpt(EpicsSignalRO, "HLM", kind="config")
    low_limit = Cpt(EpicsSignalRO, "LLM", kind="config")
    velocity = Cpt(EpicsSignal, "VELO", kind="config")

    done_value = 1
    stop_value = 1

    def __init__(self, prefix: str = "", *, name: str, tray_prefix: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(prefix, name=name, **kwargs)
        self.tray_prefix = tray_prefix
        self._slots: dict[int, TraySlotInfo] = {}

    @property
    def limits(self) -> tuple[float, float]:
        """(low, high) slot limits from LLM/HLM."""
        return float(self.low_limit.get()), float(self.high_limit.get())

    def slot_info(self, slot: int, timeout: float = 2.0) -> TraySlotInfo:
        """The connected :class:`TraySlotInfo` device of ``slot`` (created on first use)."""
        if self.tray_prefix is None:
            raise RuntimeError(f"{self.name}: no tray_prefix, slot descriptions unavailable")
        slot = int(slot)
        if slot not in self._slots:
            dev = TraySlotInfo(f"{self.tray_prefix}{slot}:", name=f"{self.name}_slot{slot}")
            try:
                dev.wait_for_connection(timeout=timeout)
            except TimeoutError as exc:
                raise BeamlineConnectionError(
                    f"no description for slot {slot} at {self.tray_prefix}{slot}:* "
                    f"(is the slot in the tray?)") from exc
            self._slots[slot] = dev
        return self._slots[slot]


class BeamMonitor(Device):
    """Beam readings (``beam:``): shutter, I0, transmission, flux."""

    shutter = Cpt(EpicsSignal, "Shutter", kind="config")
    i0 = Cpt(EpicsSignalRO, "I0", kind="hinted")
    transmission = Cpt(EpicsSignalRO, "Transmission", kind="normal")
    flux = Cpt(EpicsSignalRO, "Flux", kind="config")


@dataclass
class Beamline:
    """The connected devices of one beamline."""

    prefix: str
    detector: SAXSDetector
    changer: SampleChanger
    beam: BeamMonitor

    @property
    def devices(self) -> dict[str, Device]:
        """Devices by their ophyd name."""
        return {d.name: d for d in (self.detector, self.changer, self.beam)}


def connect_beamline(prefix: str, timeout: float = 5.0, *,
                     timeout_margin: float = 3.0, hdf5_path: str | None = None) -> Beamline:
    """Create the beamline devices for ``prefix`` and wait for all their PVs.

    Parameters
    ----------
    prefix
        IOC prefix including the trailing separator, e.g. ``"SAXS:"``.
    timeout
        Seconds to wait for the connections.
    timeout_margin
        Detector trigger timeout margin (s) beyond the exposure.
    hdf5_path
        If given, the detector is a :class:`SAXSDetectorHDF5` writing into this directory
        (events reference the files); otherwise frames are read inline over CA.

    Raises
    ------
    BeamlineConnectionError
        Naming the prefix, the missing PVs and the CA address list in use.
    """
    detector: SAXSDetector
    if hdf5_path is None:
        detector = SAXSDetector(prefix, name="saxs", timeout_margin=timeout_margin)
    else:
        detector = SAXSDetectorHDF5(prefix, name="saxs", timeout_margin=timeout_margin,
                                    write_path=hdf5_path)
    changer = SampleChanger(f"{prefix}changer:", name="changer", tray_prefix=f"{prefix}tray:")
    beam = BeamMonitor(f"{prefix}beam:", name="beam")
    for dev in (detector, changer, beam):
        try:
            dev.wait_for_connection(timeout=timeout)
        except TimeoutError as exc:
            addr = os.environ.get("EPICS_CA_ADDR_LIST", "<unset>")
            port = os.environ.get("EPICS_CA_SERVER_PORT", "5064")
            raise BeamlineConnectionError(
                f"SAXS beamline with prefix {prefix!r} did not answer within {timeout:g} s "
                f"({dev.name}: {exc}). Is the IOC running (python -m sim_iocs.saxs_beamline "
                f"--prefix {prefix}) and reachable (EPICS_CA_ADDR_LIST={addr}, "
                f"EPICS_CA_SERVER_PORT={port})?") from exc
    log.info("connected SAXS beamline %s", prefix)
    return Beamline(prefix, detector, changer, beam)
