"""The plans as the queue server offers them.

The same plans, with parameter annotations the queue server understands.

``bluesky-queueserver`` describes each plan from its signature; it cannot rebuild string
annotations (``from __future__ import annotations`` in :mod:`pbi_bluesky.plans`), and it
turns device *names* in a queued item into devices only where a parameter is annotated as a
device. These generator functions have the signatures of :func:`~pbi_bluesky.plans.measure_tray`,
:func:`~pbi_bluesky.plans.measure_normals`, :func:`~pbi_bluesky.plans.rescan` and
:func:`~pbi_bluesky.plans.fly_slot`, a
``parameter_annotation_decorator`` description, and delegate to them: the startup file
(``profiles/profile_saxs/startup``) exports them, so ``pbi ipython`` and the queue server's
worker run the same code.

A queued item names devices by their names in the worker namespace (the beamline's device
names from ``beamline.yaml``: ``saxs``, ``i0``, ``transmission``, ``changer`` for the
simulated beamline)::

    {"name": "measure_tray", "args": [["saxs", "i0", "transmission"], "changer", [1, 2], 0.5]}
"""

# No ``from __future__ import annotations`` here: the queue server reads these annotations.

import typing
from collections.abc import Generator

try:
    from bluesky_queueserver import parameter_annotation_decorator
except ImportError:  # without the [queue] extra: the same plans, for IPython, unannotated

    def parameter_annotation_decorator(annotation: dict) -> typing.Callable:
        """Stand-in without bluesky-queueserver: returns the plan unchanged."""
        return lambda plan: plan

from pbi_bluesky import plans as _plans

__all__ = ["QUEUE_PLANS", "fly_slot", "measure_normals", "measure_tray", "rescan"]

_DETECTORS = {
    "description": "Detector and monitors (device names), e.g. ['saxs', 'i0', 'transmission'].",
    "annotation": "typing.Union[Readable, typing.List[Readable]]",
    "devices": {"Readable": ["__READABLE__:.+"]},
}
_CHANGER = {
    "description": "The sample changer (a motor; positions are slot numbers).",
    "annotation": "Motor",
    "devices": {"Motor": ["__MOTOR__:.+"]},
}
_SLOT = {
    "description": "Slot number (described by the session's sample list) or a mapping "
                   "{'slot': n, 'sample': ..., 'composition': ..., 'thickness_cm': ...}.",
    "annotation": "typing.Union[int, typing.Dict[str, typing.Any]]",
    "convert_device_names": False,
}
_MD = {
    "description": "Extra start-document metadata.",
    "annotation": "typing.Optional[typing.Dict[str, typing.Any]]",
    "convert_device_names": False,
}
_EXPOSURE = {"description": "Exposure time per frame (s), > 0.", "annotation": "float"}

Plan = Generator[typing.Any, typing.Any, typing.Any]


@parameter_annotation_decorator({
    "description": "Measure each slot of a tray: move, set the exposure, one run with one "
                   "frame per slot (pbi_bluesky.plans.measure_tray).",
    "parameters": {
        "detectors": _DETECTORS, "changer": _CHANGER, "exposure": _EXPOSURE, "md": _MD,
        "slots": {**_SLOT, "description": "Slots to measure (numbers or mappings).",
                  "annotation": "typing.List[typing.Union[int, typing.Dict[str, typing.Any]]]"},
    },
})
def measure_tray(detectors: typing.Any, changer: typing.Any, slots: list, exposure: float, *,
                 md: dict | None = None) -> Plan:
    """Measure each slot of a tray (see :func:`pbi_bluesky.plans.measure_tray`)."""
    return (yield from _plans.measure_tray(detectors, changer, slots, exposure, md=md))


@parameter_annotation_decorator({
    "description": "Measure normal specimens to train a model on: one run per recipe, one "
                   "frame per specimen, purpose 'normals' (pbi_bluesky.plans.measure_normals).",
    "parameters": {
        "detectors": _DETECTORS, "changer": _CHANGER, "exposure": _EXPOSURE, "md": _MD,
        "slots": {**_SLOT, "description": "Slots of the normal specimens (numbers or "
                                          "mappings with their composition).",
                  "annotation": "typing.List[typing.Union[int, typing.Dict[str, typing.Any]]]"},
    },
})
def measure_normals(detectors: typing.Any, changer: typing.Any, slots: list, exposure: float,
                    *, md: dict | None = None) -> Plan:
    """Measure normal specimens, a run per recipe (:func:`pbi_bluesky.plans.measure_normals`)."""
    return (yield from _plans.measure_normals(detectors, changer, slots, exposure, md=md))


@parameter_annotation_decorator({
    "description": "Measure one slot again, recording which measurement is being checked "
                   "(pbi_bluesky.plans.rescan; what people and the pbi agent queue).",
    "parameters": {
        "detectors": _DETECTORS, "changer": _CHANGER, "slot": _SLOT, "exposure": _EXPOSURE,
        "md": _MD,
        "rescan_of": {"description": "Raw run uid of the measurement being checked.",
                      "annotation": "typing.Optional[str]", "convert_device_names": False},
        "rescan_round": {"description": "Which rescan of that measurement (1, 2, ...).",
                         "annotation": "int", "min": 1},
    },
})
def rescan(detectors: typing.Any, changer: typing.Any, slot: typing.Any, exposure: float, *,
           rescan_of: str | None = None, rescan_round: int = 1,
           md: dict | None = None) -> Plan:
    """Measure one slot again (see :func:`pbi_bluesky.plans.rescan`)."""
    return (yield from _plans.rescan(detectors, changer, slot, exposure, rescan_of=rescan_of,
                                     rescan_round=rescan_round, md=md))


@parameter_annotation_decorator({
    "description": "Fly-scan one slot with an ophyd-async detector: n_frames frames of "
                   "exposure s, one every period s (pbi_bluesky.plans.fly_slot).",
    "parameters": {
        "detector": {**_DETECTORS, "annotation": "Readable",
                     "description": "The ophyd-async area detector."},
        "changer": _CHANGER, "slot": _SLOT, "exposure": _EXPOSURE, "md": _MD,
        "n_frames": {"description": "Frames in the run (>= 1).", "annotation": "int", "min": 1},
        "period": {"description": "Time between frame starts (s; default exposure + "
                                  "readout).", "annotation": "typing.Optional[float]"},
        "monitors": {"description": "Signals recorded with every frame (I0, transmission).",
                     "annotation": "typing.Optional[typing.List[Readable]]",
                     "devices": {"Readable": ["__READABLE__:.+"]}},
        "flush_period": {"description": "How often frames are collected (s).",
                         "annotation": "float"},
    },
})
def fly_slot(detector: typing.Any, changer: typing.Any, slot: typing.Any, n_frames: int,
             exposure: float, *, period: float | None = None, monitors: list | None = None,
             md: dict | None = None, flush_period: float = 0.2) -> Plan:
    """Fly-scan one slot (see :func:`pbi_bluesky.plans.fly_slot`)."""
    return (yield from _plans.fly_slot(detector, changer, slot, n_frames, exposure,
                                       period=period, monitors=monitors, md=md,
                                       flush_period=flush_period))


QUEUE_PLANS = {"measure_tray": measure_tray, "measure_normals": measure_normals,
               "rescan": rescan, "fly_slot": fly_slot}
"""The plans the profile exports to the queue server."""
