"""Fly scans with ophyd-async detectors: N frames at a set rate, one run per slot.

The detector is prepared for ``n_frames`` internally triggered frames of ``exposure`` s every
``period`` s (the way hardware triggering paces a real detector), kicked off, and collected
while it completes: frames arrive as StreamResource/StreamDatum documents pointing at the
HDF5 file, and I0/transmission per frame as NDAttribute datasets of the same file (set up by
:func:`~pbi_bluesky.devices.epics_async.setup_monitor_ndattributes`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

from pbi_bluesky.plans.tray import PILATUS_READOUT_S, _run_md, resolve_slots

__all__ = ["fly_slot"]

log = logging.getLogger(__name__)


def fly_slot(
    detector: Any,
    changer: Any,
    slot: int | Mapping[str, Any],
    n_frames: int,
    exposure: float,
    *,
    period: float | None = None,
    monitors: list[Any] | None = None,
    md: Mapping[str, Any] | None = None,
    flush_period: float = 0.2,
) -> MsgGenerator[str]:
    """Fly-scan one slot: ``n_frames`` frames of ``exposure`` s, one every ``period`` s.

    Parameters
    ----------
    detector
        An ophyd-async ``StandardDetector`` (e.g. ``adpilatus.PilatusDetector``).
    changer
        The sample changer; moved to the slot before the run.
    slot
        Slot number (session tray) or mapping, as for
        :func:`~pbi_bluesky.plans.measure_tray`.
    n_frames
        Frames in the run (>= 1).
    exposure
        Exposure per frame (s).
    period
        Time between frame starts (default: exposure + readout); sets the frame rate.
    monitors
        Signals recorded with every frame as NDAttributes (I0, transmission).
    md
        Extra start-document metadata.

    Returns
    -------
    str
        The run uid.
    """
    from ophyd_async.core import DetectorTrigger, TriggerInfo

    from pbi_bluesky.devices.epics_async import setup_monitor_ndattributes

    n_frames, exposure = int(n_frames), float(exposure)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if not exposure > 0:
        raise ValueError(f"exposure must be > 0 s, got {exposure}")
    period = exposure + PILATUS_READOUT_S if period is None else float(period)
    if period < exposure:
        raise ValueError(f"period {period} s is shorter than the exposure {exposure} s")
    ((number, known),) = resolve_slots([slot])
    run_md = _run_md(number, known, exposure, [detector], changer, "fly_slot",
                     {"n_frames": n_frames, "frame_period_s": period, **dict(md or {})})
    info = TriggerInfo(trigger=DetectorTrigger.INTERNAL, number_of_events=n_frames,
                       livetime=exposure, deadtime=max(period - exposure, 0.0))
    yield from bps.mv(changer, number)
    if monitors:
        yield from setup_monitor_ndattributes(detector, list(monitors))
    log.info("fly scan of slot %d: %d x %g s every %g s", number, n_frames, exposure, period)

    @bpp.stage_decorator([detector])
    @bpp.run_decorator(md=run_md)
    def inner() -> MsgGenerator[None]:
        yield from bps.prepare(detector, info, wait=True)
        yield from bps.declare_stream(detector, name="primary", collect=True)
        yield from bps.kickoff(detector, wait=True)
        yield from bps.collect_while_completing([detector], [detector],
                                                flush_period=flush_period)

    return (yield from inner())
