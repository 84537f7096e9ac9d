"""A simulated SAXS beamline IOC (caproto): detector, sample changer, beam and faults.

Run it with::

    python -m sim_iocs.saxs_beamline --prefix P: --tray tray.yaml [--detector Pilatus1M]

PVs (prefix ``P:``), an areaDetector / motor-record subset:

===========================  =================================================================
``P:Ready``                  1 once the IOC is initialised (geometry, limits published)
``P:cam1:Acquire``           put 1 to acquire ``NumImages`` frames of ``AcquireTime`` s each;
                             returns to 0 when done (put 0 aborts)
``P:cam1:AcquireTime``       exposure per frame (s)
``P:cam1:NumImages``         frames per acquisition when ``ImageMode`` is 1 (multiple)
``P:cam1:ImageMode``         0 single, 1 multiple
``P:cam1:DetectorState_RBV`` 0 idle, 1 acquire
``P:cam1:ArrayCounter_RBV``  frames acquired since start
``P:cam1:ArraySize0_RBV``    frame width (columns, x)
``P:cam1:ArraySize1_RBV``    frame height (rows, y)
``P:cam1:PONI``              char waveform: pyFAI PONI text of the detector geometry
``P:image1:ArrayData``       last frame, flat int32 waveform (row-major, gaps = -1)
``P:HDF1:*``                 FilePath, FileName, FileNumber, FullFileName_RBV, Capture,
                             NumCaptured_RBV, EnableCallbacks (writes /entry/data/data)
``P:changer:*``              VAL, RBV, DMOV, STOP, HLM, LLM, VELO (slots, slots/s)
``P:tray:NumSlots``          number of tray slots
``P:tray:N:Name``            sample name in slot N
``P:tray:N:Composition``     nominal recipe of slot N
``P:tray:N:Thickness``       specimen thickness of slot N (cm)
``P:beam:Shutter``           1 open, 0 closed (closed: dark frames)
``P:beam:I0``                incident photons of the last exposure
``P:beam:Transmission``      measured transmission of the last exposed sample
``P:beam:Flux``              incident flux (photons/s)
``P:fault:BeamDump``         fault severities 0..1 (0 off) applied to the next frames
``P:fault:HotPixels``
``P:fault:BeamCenterDrift``
``P:fault:DetectorTimeout``  1: Acquire never completes (until put 0)
===========================  =================================================================

The hidden truth of each slot (anomaly kind, severity) is only logged, never served.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from caproto import ChannelData, ChannelDouble, ChannelInteger, ChannelString, ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty, run, template_arg_parser

from pbi_bluesky.simulate import (
    PS_PMMA,
    Instrument,
    RenderedFrame,
    apply_anomaly,
    make_geometry,
    nominal_state,
    render_empty_cell,
    render_frame,
)
from pbi_bluesky.simulate.scattering import SampleState
from sim_iocs.tray import TraySlot, default_tray, load_tray

__all__ = ["DETECTOR_DISTANCES_M", "build_ioc", "main", "make_instrument", "make_ioc_class"]

log = logging.getLogger(__name__)

DETECTOR_DISTANCES_M = {"Pilatus300k": 3.0, "Pilatus1M": 3.0}
"""Default sample-detector distance per supported detector."""

PONI_MAX_LENGTH = 4096
PATH_MAX_LENGTH = 512


def make_instrument(detector: str = "Pilatus300k", distance_m: float | None = None) -> Instrument:
    """The simulated instrument for ``detector`` (Pilatus300k or Pilatus1M), 1 A, 1e12 ph/s."""
    if detector not in DETECTOR_DISTANCES_M:
        raise ValueError(f"unsupported detector {detector!r}; choose from "
                         f"{', '.join(DETECTOR_DISTANCES_M)}")
    dist = DETECTOR_DISTANCES_M[detector] if distance_m is None else distance_m
    return Instrument(geometry=make_geometry(detector, dist), flux_ph_per_s=1e12)


def _poni_text(instrument: Instrument) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "geometry.poni"
        instrument.write_poni(path)
        text = path.read_text()
    if len(text) >= PONI_MAX_LENGTH:
        raise ValueError(f"PONI text has {len(text)} characters, more than {PONI_MAX_LENGTH}")
    return text


# -- PV groups -----------------------------------------------------------------------------
class CamGroup(PVGroup):
    """Detector driver subset (``cam1:``)."""

    acquire = pvproperty(name="Acquire", value=0, doc="1 = acquire, returns to 0 when done")
    acquire_time = pvproperty(name="AcquireTime", value=0.1, precision=4, units="s",
                              lower_ctrl_limit=1e-4, upper_ctrl_limit=3600.0)
    num_images = pvproperty(name="NumImages", value=1, lower_ctrl_limit=1,
                            upper_ctrl_limit=1000)
    image_mode = pvproperty(name="ImageMode", value=0, doc="0 single, 1 multiple")
    detector_state = pvproperty(name="DetectorState_RBV", value=0, read_only=True,
                                doc="0 idle, 1 acquire")
    array_counter = pvproperty(name="ArrayCounter_RBV", value=0, read_only=True)
    array_size0 = pvproperty(name="ArraySize0_RBV", value=0, read_only=True)
    array_size1 = pvproperty(name="ArraySize1_RBV", value=0, read_only=True)
    poni = pvproperty(name="PONI", value="", dtype=ChannelType.CHAR,
                      max_length=PONI_MAX_LENGTH, read_only=True)

    @acquire.putter
    async def acquire(self, instance: ChannelData, value: int) -> int:
        beamline: SAXSBeamlineBase = self.parent
        if value:
            beamline.start_acquisition()
            return 1
        await beamline.stop_acquisition()
        return 0


class HDFGroup(PVGroup):
    """HDF5 file-writer subset (``HDF1:``): one file per acquisition at /entry/data/data."""

    file_path = pvproperty(name="FilePath", value="", dtype=ChannelType.CHAR,
                           max_length=PATH_MAX_LENGTH)
    file_name = pvproperty(name="FileName", value="saxs", dtype=ChannelType.CHAR,
                           max_length=PATH_MAX_LENGTH)
    file_number = pvproperty(name="FileNumber", value=0)
    full_file_name = pvproperty(name="FullFileName_RBV", value="", dtype=ChannelType.CHAR,
                                max_length=PATH_MAX_LENGTH, read_only=True)
    capture = pvproperty(name="Capture", value=0, doc="1 while a file is being written")
    num_captured = pvproperty(name="NumCaptured_RBV", value=0, read_only=True)
    enable_callbacks = pvproperty(name="EnableCallbacks", value=0, doc="1 = write files")


class ChangerGroup(PVGroup):
    """Sample changer, motor-record subset (``changer:``), positions are integer slots."""

    val = pvproperty(name="VAL", value=1.0, precision=1, units="slot")
    rbv = pvproperty(name="RBV", value=1.0, precision=3, units="slot", read_only=True)
    dmov = pvproperty(name="DMOV", value=1, read_only=True, doc="1 = done moving")
    stop = pvproperty(name="STOP", value=0)
    hlm = pvproperty(name="HLM", value=1.0, read_only=True)
    llm = pvproperty(name="LLM", value=1.0, read_only=True)
    velo = pvproperty(name="VELO", value=5.0, units="slot/s", lower_ctrl_limit=0.1,
                      upper_ctrl_limit=100.0)
    lvio = pvproperty(name="LVIO", value=0, read_only=True, doc="1 = last move violated limits")

    _task: asyncio.Task | None = None

    @val.putter
    async def val(self, instance: ChannelData, value: float) -> float:
        target = float(round(value))
        lo, hi = self.llm.value, self.hlm.value
        if not lo <= target <= hi:
            log.warning("changer move to %s refused: outside limits [%s, %s]", value, lo, hi)
            await self.lvio.write(1)
            target = float(self.rbv.value)
        else:
            await self.lvio.write(0)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._move(target))
        return target

    @stop.putter
    async def stop(self, instance: ChannelData, value: int) -> int:
        if value and self._task is not None and not self._task.done():
            self._task.cancel()
            await self.val.write(self.rbv.value, verify_value=False)
        return 0

    async def _move(self, target: float) -> None:
        await self.dmov.write(0)
        try:
            dt = 0.02
            pos = float(self.rbv.value)
            while abs(target - pos) > 1e-9:
                step = max(self.velo.value, 0.1) * dt
                pos = target if abs(target - pos) <= step else pos + np.sign(target - pos) * step
                await asyncio.sleep(dt)
                await self.rbv.write(pos)
            # a motor record always pulses DMOV, also for a null move
            await asyncio.sleep(0.05)
        finally:
            await self.dmov.write(1)


class BeamGroup(PVGroup):
    """Beam: shutter, incident-flux monitor and transmission (``beam:``)."""

    shutter = pvproperty(name="Shutter", value=1, doc="1 open, 0 closed")
    i0 = pvproperty(name="I0", value=0.0, read_only=True, units="ph")
    transmission = pvproperty(name="Transmission", value=1.0, precision=5, read_only=True)
    flux = pvproperty(name="Flux", value=1e12, units="ph/s", read_only=True)


class FaultGroup(PVGroup):
    """Fault injection (``fault:``): severities 0..1 applied to the following frames."""

    beam_dump = pvproperty(name="BeamDump", value=0.0, lower_ctrl_limit=0.0,
                           upper_ctrl_limit=1.0)
    hot_pixels = pvproperty(name="HotPixels", value=0.0, lower_ctrl_limit=0.0,
                            upper_ctrl_limit=1.0)
    beam_center_drift = pvproperty(name="BeamCenterDrift", value=0.0, lower_ctrl_limit=0.0,
                                   upper_ctrl_limit=1.0)
    detector_timeout = pvproperty(name="DetectorTimeout", value=0,
                                  doc="1 = Acquire never completes")


_GLOBAL_FAULTS = {
    "beam_dump": "beam_dump",
    "hot_pixels": "hot_pixels",
    "beam_center_drift": "beam_center_drift",
}


class SAXSBeamlineBase(PVGroup):
    """Simulation state shared by the PV groups; subclass made by :func:`make_ioc_class`."""

    cam: CamGroup
    image: PVGroup
    hdf: HDFGroup
    changer: ChangerGroup
    beam: BeamGroup
    fault: FaultGroup

    def __init__(
        self,
        *args: Any,
        tray: list[TraySlot],
        instrument: Instrument,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.instrument = instrument
        self.tray = {s.slot: s for s in tray}
        self.rng = np.random.default_rng(seed)
        self.states: dict[int, SampleState] = {}
        for s in tray:
            state = nominal_state(PS_PMMA, s.composition, self.rng)
            if s.kind != "normal":
                state = apply_anomaly(state, s.kind, s.severity, self.rng)
            self.states[s.slot] = dataclasses.replace(state, thickness_cm=s.thickness_cm)
            log.info("slot %d %s %s: truth kind=%s severity=%.2f faults=%s%s", s.slot,
                     s.sample, s.composition, s.kind, s.severity, s.faults,
                     " (transient)" if s.transient else "")
        self.exposures: dict[int, int] = dict.fromkeys(self.tray, 0)
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")
        self.poni_text = _poni_text(instrument)
        self._add_tray_pvs()

    def _add_tray_pvs(self) -> None:
        p = f"{self.prefix}tray:"
        self.pvdb[f"{p}NumSlots"] = ChannelInteger(value=len(self.tray))
        # position 0 holds the empty cell (windows only): the background reference
        self.pvdb[f"{p}0:Name"] = ChannelString(value="empty cell")
        self.pvdb[f"{p}0:Composition"] = ChannelString(value="")
        self.pvdb[f"{p}0:Thickness"] = ChannelDouble(value=0.0, precision=4, units="cm")
        for n, s in self.tray.items():
            self.pvdb[f"{p}{n}:Name"] = ChannelString(value=s.sample)
            self.pvdb[f"{p}{n}:Composition"] = ChannelString(value=s.composition)
            self.pvdb[f"{p}{n}:Thickness"] = ChannelDouble(value=s.thickness_cm, precision=4,
                                                           units="cm")

    async def initialize(self) -> None:
        """Publish geometry, frame size and changer limits (run once at IOC start)."""
        ny, nx = self.instrument.shape
        await self.cam.array_size0.write(nx)
        await self.cam.array_size1.write(ny)
        await self.cam.poni.write(self.poni_text)
        lo, hi = 0.0, float(max(self.tray))  # position 0: the empty cell
        await self.changer.llm.write(lo)
        await self.changer.hlm.write(hi)
        await self.changer.val.write_metadata(lower_ctrl_limit=lo, upper_ctrl_limit=hi)
        await self.changer.val.write(lo, verify_value=False)
        await self.changer.rbv.write(lo)
        await self.beam.flux.write(self.instrument.flux_ph_per_s)
        await self.hdf.file_path.write(tempfile.gettempdir())

    # -- acquisition ------------------------------------------------------------------------
    def start_acquisition(self) -> None:
        """Start an acquisition task unless one is running."""
        if self._task is not None and not self._task.done():
            log.info("Acquire=1 while acquiring: ignored")
            return
        self._task = asyncio.get_running_loop().create_task(self._acquire())

    async def stop_acquisition(self) -> None:
        """Abort a running acquisition."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            log.info("acquisition aborted")

    def slot_in_beam(self) -> int | None:
        """Slot at the changer position, or None between slots / at an empty position."""
        pos = float(self.changer.rbv.value)
        n = int(round(pos))
        if abs(pos - n) > 0.05 or n not in self.tray:
            return None
        return n

    def faults_for(self, slot: int | None) -> dict[str, float]:
        """Instrument faults for the next exposure of ``slot``; counts the exposure."""
        faults: dict[str, float] = {}
        for attr, name in _GLOBAL_FAULTS.items():
            sev = float(getattr(self.fault, attr).value)
            if sev > 0:
                faults[name] = min(sev, 1.0)
        if slot is not None:
            s = self.tray[slot]
            first = self.exposures[slot] == 0
            self.exposures[slot] += 1
            if s.faults and (first or not s.transient):
                for name, sev in s.faults.items():
                    faults[name] = max(sev, faults.get(name, 0.0))
        return faults

    def _render(self, slot: int | None, exposure_s: float, faults: dict[str, float],
                shutter_open: bool) -> RenderedFrame:
        inst = self.instrument
        if not shutter_open:
            dark = self.rng.poisson(inst.dark_rate_per_s * exposure_s, inst.shape)
            dark = dark.astype(np.int32)
            dark[inst.detector_mask] = -1
            return RenderedFrame(dark, 0.0, 0.0, exposure_s, {}, {"kind": "shutter_closed"})
        if slot is None:
            return render_empty_cell(inst, self.rng, exposure_s=exposure_s)
        return render_frame(self.states[slot], inst, self.rng, exposure_s=exposure_s,
                            faults=faults)

    async def _acquire(self) -> None:
        cam = self.cam
        loop = asyncio.get_running_loop()
        exposure = float(cam.acquire_time.value)
        n_frames = max(1, int(cam.num_images.value)) if int(cam.image_mode.value) else 1
        frames: list[np.ndarray] = []
        await cam.detector_state.write(1)
        try:
            for _ in range(n_frames):
                slot = self.slot_in_beam()
                faults = self.faults_for(slot)
                shutter = bool(self.beam.shutter.value)
                render = loop.run_in_executor(self._executor, self._render, slot, exposure,
                                              faults, shutter)
                await asyncio.sleep(exposure)
                shot = await render
                if int(self.fault.detector_timeout.value):
                    log.warning("DetectorTimeout fault: acquisition hangs until Acquire=0")
                    await asyncio.Event().wait()
                log.info("frame %d: slot=%s faults=%s I0=%.4g T=%.4f",
                         cam.array_counter.value + 1, slot, faults, shot.monitor,
                         shot.transmission)
                await self.image.array_data.write(shot.frame.ravel())
                await self.beam.i0.write(shot.monitor)
                await self.beam.transmission.write(shot.transmission)
                await cam.array_counter.write(cam.array_counter.value + 1)
                frames.append(shot.frame)
            if int(self.hdf.enable_callbacks.value) and frames:
                await self._write_hdf(frames, exposure)
        except asyncio.CancelledError:
            log.info("acquisition cancelled")
        except Exception:  # keep the IOC alive; the client sees a trigger timeout
            log.exception("acquisition failed")
        finally:
            await cam.detector_state.write(0)
            await cam.acquire.write(0, verify_value=False)

    async def _write_hdf(self, frames: list[np.ndarray], exposure: float) -> None:
        hdf = self.hdf
        directory = Path(str(hdf.file_path.value) or tempfile.gettempdir())
        number = int(hdf.file_number.value)
        path = directory / f"{hdf.file_name.value}_{number:05d}.h5"
        await hdf.capture.write(1)
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, _write_h5, path, np.stack(frames), exposure, self.poni_text)
        except OSError:
            log.exception("HDF5 writer: cannot write %s", path)
            return
        finally:
            await hdf.capture.write(0)
        await hdf.full_file_name.write(str(path))
        await hdf.num_captured.write(len(frames))
        await hdf.file_number.write(number + 1)


def _write_h5(path: Path, data: np.ndarray, exposure: float, poni: str) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        grp = entry.create_group("data")
        grp.attrs["NX_class"] = "NXdata"
        grp.create_dataset("data", data=data, dtype="<i4", chunks=(1, *data.shape[1:]))
        instr = entry.create_group("instrument")
        instr.create_dataset("exposure_s", data=exposure)
        instr.create_dataset("poni", data=poni)


def make_ioc_class(n_pixels: int) -> type[SAXSBeamlineBase]:
    """The IOC class for a detector of ``n_pixels`` pixels (waveform length is static)."""

    class ImagePlugin(PVGroup):
        """Image plugin subset (``image1:``)."""

        array_data = pvproperty(name="ArrayData", value=np.zeros(n_pixels, dtype=np.int32),
                                dtype=ChannelType.LONG, max_length=n_pixels, read_only=True)

    class SAXSBeamlineIOC(SAXSBeamlineBase):
        """Simulated SAXS beamline."""

        cam = SubGroup(CamGroup, prefix="cam1:")
        image = SubGroup(ImagePlugin, prefix="image1:")
        hdf = SubGroup(HDFGroup, prefix="HDF1:")
        changer = SubGroup(ChangerGroup, prefix="changer:")
        beam = SubGroup(BeamGroup, prefix="beam:")
        fault = SubGroup(FaultGroup, prefix="fault:")

        ready = pvproperty(name="Ready", value=0, read_only=True,
                           doc="1 once the IOC has published geometry and limits")

        @ready.startup
        async def ready(self, instance: ChannelData, async_lib: Any) -> None:
            await self.initialize()
            await instance.write(1)

    return SAXSBeamlineIOC


def build_ioc(
    prefix: str,
    tray: list[TraySlot] | None = None,
    detector: str = "Pilatus300k",
    seed: int | None = None,
) -> SAXSBeamlineBase:
    """Construct (not run) the beamline IOC; ``ioc.pvdb`` holds every PV."""
    instrument = make_instrument(detector)
    ny, nx = instrument.shape
    cls = make_ioc_class(nx * ny)
    ioc = cls(prefix=prefix, tray=tray or default_tray(), instrument=instrument, seed=seed)
    # warm the instrument's cached per-pixel maps so the first frame is fast
    _ = instrument.q_map_inv_angstrom, instrument.solid_angle_sr, instrument.polarization
    _ = instrument.detector_mask, instrument.flat_field
    return ioc


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser, split_args = template_arg_parser(
        desc="Simulated SAXS beamline (detector, sample changer, beam, fault injection)",
        default_prefix="SAXS:",
    )
    parser.add_argument("--tray", default=None, help="tray file (YAML/JSON); default: "
                        "the built-in 14-slot tray")
    parser.add_argument("--detector", default="Pilatus300k", choices=sorted(DETECTOR_DISTANCES_M))
    parser.add_argument("--seed", type=int, default=None, help="random seed of the specimens")
    parser.add_argument("--print-pvs", action="store_true",
                        help="print the PV names and exit without serving")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    ioc_options, run_options = split_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("caproto").propagate = False  # caproto has its own handler
    tray = load_tray(args.tray) if args.tray else default_tray()
    ioc = build_ioc(ioc_options["prefix"], tray, args.detector, args.seed)
    if args.print_pvs:
        print("\n".join(sorted(ioc.pvdb)))
        return
    log.info("serving %d PVs with prefix %s (pid %d)", len(ioc.pvdb), ioc.prefix, os.getpid())
    run(ioc.pvdb, **run_options)


if __name__ == "__main__":
    main()
