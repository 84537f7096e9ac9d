"""A simulated SAXS beamline IOC (caproto) that speaks the standard PV set.

Run it with::

    python -m sim_iocs.saxs_beamline --prefix SAXS: [--detector Pilatus1M] [--tray tray.yaml]
        [--data-root DIR] [--poni-out geometry.poni] [--mask-out mask.edf] [--list-pvs]

PVs below the prefix ``P:``:

==========================  ==================================================================
``P:cam1:*``                ADPilatus driver (ADBase + pilatus.template), port ``PIL``
``P:image1:*``              NDStdArrays: ``ArrayData`` is the last frame, flat int32
``P:HDF1:*``                NDFileHDF5 (NDPluginBase + NDFile): ``/entry/data/data`` and the
                            NDAttributes; ``FilePath`` confined to ``--data-root``
``P:changer``               motor record of the sample changer (``.VAL``, ``.RBV``, ``.DMOV``,
                            ...); position n.0 is slot n, position 0 the empty cell
``P:mon:I0``                ai: incident photons of the last exposure
``P:mon:Transmission``      ai: measured transmission of the last exposure
``P:sim:*``                 simulation only: ``Ready``, ``Shutter``, ``Flux`` and the faults
                            ``BeamDump``, ``HotPixels``, ``BeamCenterDrift`` (0..1),
                            ``DetectorTimeout`` (1: Acquire never completes until put 0)
==========================  ==================================================================

Geometry is not a PV: ``--poni-out`` / ``--mask-out`` write the PONI file and the mask
(beamstop + module gaps; ``.edf`` via fabio or ``.npy``, 1 = masked) at start-up. The tray's
hidden truth (anomaly kind, severity) is only logged, never served. The start-up lines
(where it serves, what a client must export) are :mod:`sim_iocs.announce`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from caproto import ChannelType
from caproto.asyncio.server import start_server
from caproto.server import PVGroup, SubGroup, pvproperty

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
from sim_iocs.ad_common import is_on
from sim_iocs.announce import client_environment, startup_lines
from sim_iocs.areadetector import PilatusBase, make_pilatus_class
from sim_iocs.config import DETECTOR_DISTANCES_M, DETECTORS, SIM_DEFAULTS
from sim_iocs.motor import MotorRecord
from sim_iocs.ndattributes import attributes_xml
from sim_iocs.tray import TraySlot, default_tray, load_tray

__all__ = ["DETECTOR_DISTANCES_M", "SAXSBeamlineBase", "build_ioc", "client_environment",
           "main", "make_instrument", "make_ioc_class", "startup_lines", "write_geometry"]

log = logging.getLogger(__name__)

_GLOBAL_FAULTS = ("beam_dump", "hot_pixels", "beam_center_drift")


def make_instrument(detector: str = SIM_DEFAULTS.detector,
                    distance_m: float | None = None) -> Instrument:
    """Return the simulated instrument for ``detector``.

    The detector is a Pilatus300k or Pilatus1M; 1 A (wavelength), 1e12 ph/s.
    """
    if detector not in DETECTORS:
        raise ValueError(f"unsupported detector {detector!r}; choose from "
                         f"{', '.join(DETECTORS)}")
    dist = DETECTOR_DISTANCES_M[detector] if distance_m is None else distance_m
    return Instrument(geometry=make_geometry(detector, dist), flux_ph_per_s=1e12)


def write_geometry(instrument: Instrument, poni_out: Path | None = None,
                   mask_out: Path | None = None) -> None:
    """Write the PONI file and/or the mask (``.edf`` through fabio, or ``.npy``; 1 = masked).

    The mask is what a beamline scientist draws: module gaps plus the beamstop shadow.
    """
    if mask_out is not None and mask_out.suffix.lower() not in (".edf", ".npy"):
        raise ValueError(f"mask file {mask_out}: use a .edf or .npy name")
    if poni_out is not None:
        poni_out.parent.mkdir(parents=True, exist_ok=True)
        instrument.write_poni(poni_out)
    if mask_out is not None:
        mask_out.parent.mkdir(parents=True, exist_ok=True)
        mask = instrument.mask.astype(np.int8)
        if mask_out.suffix.lower() == ".npy":
            np.save(mask_out, mask)
        else:
            import fabio.edfimage

            fabio.edfimage.EdfImage(data=mask, header={"pbi_mask": "1 = masked"}).write(
                str(mask_out))


class MonitorGroup(PVGroup):
    """Beam monitors (``mon:``): ai records, as a scaler channel or electrometer serves them."""

    i0 = pvproperty(name="I0", value=0.0, record="ai", units="ph", precision=1,
                    read_only=True, doc="incident photons of the last exposure")
    transmission = pvproperty(name="Transmission", value=1.0, record="ai", precision=5,
                              read_only=True, doc="measured transmission, last exposure")


class SimGroup(PVGroup):
    """Simulation-only PVs (``sim:``): readiness, shutter, flux, fault injection."""

    ready = pvproperty(name="Ready", value=0, read_only=True,
                       doc="1 once the IOC is initialised")
    shutter = pvproperty(name="Shutter", value=1, dtype=ChannelType.INT, lower_ctrl_limit=0,
                         upper_ctrl_limit=1, doc="1 open, 0 closed (dark frames)")
    flux = pvproperty(name="Flux", value=1e12, units="ph/s", read_only=True)
    beam_dump = pvproperty(name="BeamDump", value=0.0, lower_ctrl_limit=0.0,
                           upper_ctrl_limit=1.0, doc="fault severity 0..1 on next frames")
    hot_pixels = pvproperty(name="HotPixels", value=0.0, lower_ctrl_limit=0.0,
                            upper_ctrl_limit=1.0)
    beam_center_drift = pvproperty(name="BeamCenterDrift", value=0.0, lower_ctrl_limit=0.0,
                                   upper_ctrl_limit=1.0)
    detector_timeout = pvproperty(name="DetectorTimeout", value=0, dtype=ChannelType.INT,
                                  lower_ctrl_limit=0, upper_ctrl_limit=1,
                                  doc="1: Acquire never completes (until Acquire = 0)")

    @ready.startup
    async def ready(self, instance: Any, async_lib: Any) -> None:
        await self.parent.initialize()
        await instance.write(1)


class SAXSBeamlineBase(PVGroup):
    """The beamline and its simulation.

    The class with its sub-groups comes from :func:`make_ioc_class` (frame size and tray
    set the waveform length and motor limits).
    """

    detector: PilatusBase
    changer: MotorRecord
    mon: MonitorGroup
    sim: SimGroup

    def __init__(self, *args: Any, tray: list[TraySlot], instrument: Instrument,
                 seed: int | None = None, **kwargs: Any) -> None:
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
            log.debug("slot %d %s %s: truth kind=%s severity=%.2f faults=%s%s", s.slot,
                      s.sample, s.composition, s.kind, s.severity, s.faults,
                      " (transient)" if s.transient else "")
        self.exposures: dict[int, int] = dict.fromkeys(self.tray, 0)
        self.frames_taken = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="render")
        p = self.prefix
        self.detector.wire(self, self.lookup, p, attributes_xml([
            ("I0", f"{p}mon:I0", "incident photons of the exposure"),
            ("Transmission", f"{p}mon:Transmission", "measured transmission")]))

    def lookup(self, name: str) -> Any:
        """Return the channel of a PV of this IOC (``NAME`` or ``RECORD.FIELD``), or None."""
        channel = self.pvdb.get(name)
        if channel is None and "." in name:
            record, fld = name.rsplit(".", 1)
            base = self.pvdb.get(record)
            if base is not None and hasattr(base, "get_field"):
                try:
                    return base.get_field(fld)
                except Exception:  # noqa: BLE001 - unknown field
                    return None
        return channel

    async def initialize(self) -> None:
        """Boot values: detector, changer at the empty cell (position 0), flux."""
        await self.detector.initialize()
        await self.changer.initialize()
        await self.sim.flux.write(self.instrument.flux_ph_per_s)

    # -- the simulation behind the detector --------------------------------------------------
    def slot_in_beam(self) -> int | None:
        """Slot at the changer's (dial) position, or None at the empty cell / between slots."""
        pos = self.changer.dial_position
        n = int(round(pos))
        if abs(pos - n) > 0.05 or n not in self.tray:
            return None
        return n

    def faults_for(self, slot: int | None) -> dict[str, float]:
        """Instrument faults for the next exposure of ``slot``; counts the exposure."""
        faults: dict[str, float] = {}
        for name in _GLOBAL_FAULTS:
            sev = float(getattr(self.sim, name).value)
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
            if faults:
                log.warning("faults %s are not simulated at the empty cell / between slots",
                            faults)
            return render_empty_cell(inst, self.rng, exposure_s=exposure_s)
        return render_frame(self.states[slot], inst, self.rng, exposure_s=exposure_s,
                            faults=faults)

    async def expose(self, exposure_s: float) -> np.ndarray:
        """One exposure (the detector's :class:`~sim_iocs.ad_driver.FrameSource`)."""
        slot = self.slot_in_beam()
        faults = self.faults_for(slot)
        shutter = is_on(self.sim.shutter.value)
        render = asyncio.get_running_loop().run_in_executor(
            self._executor, self._render, slot, exposure_s, faults, shutter)
        await asyncio.sleep(exposure_s)
        shot = await render
        if is_on(self.sim.detector_timeout.value):
            log.warning("DetectorTimeout fault: acquisition hangs until Acquire = 0")
            await asyncio.Event().wait()
        self.frames_taken += 1
        log.debug("frame %d: slot=%s faults=%s I0=%.4g T=%.4f", self.frames_taken, slot,
                  faults, shot.monitor, shot.transmission)
        await self.mon.i0.write(shot.monitor)
        await self.mon.transmission.write(shot.transmission)
        return shot.frame


def make_ioc_class(shape: tuple[int, int], model: str, data_root: Path,
                   n_slots: int) -> type[SAXSBeamlineBase]:
    """Return the IOC class for frames of ``shape`` and a tray whose last slot is ``n_slots``."""

    class SAXSBeamlineIOC(SAXSBeamlineBase):
        """Simulated SAXS beamline."""

        detector = SubGroup(make_pilatus_class(shape), prefix="", shape=shape, model=model,
                            data_root=data_root)
        changer = SubGroup(MotorRecord, prefix="changer", units="slot", velocity=5.0,
                           max_velocity=20.0, acceleration_s=0.05,
                           limits=(0.0, float(n_slots)), precision=3, resolution=0.001)
        mon = SubGroup(MonitorGroup, prefix="mon:")
        sim = SubGroup(SimGroup, prefix="sim:")

    return SAXSBeamlineIOC


def build_ioc(prefix: str, tray: list[TraySlot] | None = None,
              detector: str = SIM_DEFAULTS.detector, seed: int | None = None,
              data_root: Path | None = None) -> SAXSBeamlineBase:
    """Construct (not run) the beamline IOC; ``ioc.pvdb`` holds every PV."""
    instrument = make_instrument(detector)
    slots = tray or default_tray()
    root = Path(data_root or SIM_DEFAULTS.data_root)
    cls = make_ioc_class(instrument.shape, DETECTORS[detector], root,
                         max(s.slot for s in slots))
    ioc = cls(prefix=prefix, tray=slots, instrument=instrument, seed=seed)
    # warm the instrument's cached per-pixel maps so the first frame is fast
    _ = instrument.q_map_inv_angstrom, instrument.solid_angle_sr, instrument.polarization
    _ = instrument.detector_mask, instrument.flat_field
    return ioc


def _parser() -> argparse.ArgumentParser:
    d = SIM_DEFAULTS
    parser = argparse.ArgumentParser(
        prog="python -m sim_iocs.saxs_beamline",
        description="Simulated SAXS beamline IOC: ADPilatus detector (cam1:, image1:, "
                    "HDF1:), sample-changer motor record, beam monitors, fault injection.")
    parser.add_argument("--prefix", default=d.prefix, help=f"PV prefix (default {d.prefix})")
    parser.add_argument("--detector", default=d.detector, choices=sorted(DETECTORS))
    parser.add_argument("--tray", default=None,
                        help="tray file (YAML/JSON); default: the built-in 14-slot tray")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the specimens")
    parser.add_argument("--data-root", type=Path, default=d.data_root,
                        help=f"the only folder HDF1: may write into (default {d.data_root})")
    parser.add_argument("--poni-out", type=Path, default=None,
                        help="write the detector geometry as a pyFAI PONI file at start-up")
    parser.add_argument("--mask-out", type=Path, default=None,
                        help="write the mask (beamstop + gaps, 1 = masked) as .edf or .npy")
    parser.add_argument("--interfaces", nargs="+", default=list(d.interfaces),
                        help="interfaces to serve Channel Access on (default: loopback only)")
    parser.add_argument("--list-pvs", "--print-pvs", dest="list_pvs", action="store_true",
                        help="log the PV names, then serve (caproto's convention)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


class _QuietCaproto(logging.Filter):
    """Drop caproto's per-client connect lines and beacon-send errors.

    On loopback nobody listens on the beacon port; keep the rest (``Listening on ...``,
    write errors).
    """

    NOISE = ("beacon", "Connected to new client", "Disconnected from client")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOISE)


def _quiet_caproto(verbose: bool) -> None:
    if not verbose:
        logging.getLogger("caproto.ctx").addFilter(_QuietCaproto())


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _quiet_caproto(args.verbose)
    tray = load_tray(args.tray) if args.tray else default_tray()
    # absolute paths in the log: a client started from another folder must find the files
    poni_out, mask_out = (None if p is None else p.resolve()
                          for p in (args.poni_out, args.mask_out))
    ioc = build_ioc(args.prefix, tray, args.detector, args.seed, args.data_root.resolve())
    ioc.detector.data_root.mkdir(parents=True, exist_ok=True)
    write_geometry(ioc.instrument, poni_out, mask_out)
    for what, path in (("PONI", poni_out), ("mask", mask_out)):
        if path is not None:
            log.info("wrote %s %s", what, path)
    if args.list_pvs:  # caproto's convention: log the names, then serve
        log.info("PVs:\n    %s", "\n    ".join(sorted(ioc.pvdb)))
    for line in startup_lines(ioc.prefix, len(ioc.pvdb), args.interfaces,
                              ioc.detector.data_root):
        log.info("%s", line)
    signal.signal(signal.SIGTERM, _interrupt)  # before the loop runs: stop like Ctrl-C
    try:
        asyncio.run(_serve(ioc.pvdb, args.interfaces))
    except (KeyboardInterrupt, asyncio.CancelledError):  # SIGTERM before serving began
        log.info("stopping")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the close
        ioc.detector.hdf.close_now()


async def _serve(pvdb: dict, interfaces: list[str]) -> None:
    """Serve until SIGTERM, which cancels the server task so that caproto shuts down in order.

    A ``KeyboardInterrupt`` raised from a plain signal handler lands in whatever coroutine
    runs at that moment; inside a client's ``tcp_handler`` caproto turns it into an
    unretrieved ``ServerExit`` and the server keeps serving (seen in CI: the IOC then had to
    be killed).
    """
    main = asyncio.current_task()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    await start_server(pvdb, interfaces=interfaces, log_pv_names=False)
    log.info("stopping")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
