"""Plans that measure a tray of SAXS specimens, one run per sample measurement."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

__all__ = ["measure_tray"]

log = logging.getLogger(__name__)

_SLOT_KEYS = ("sample", "composition", "thickness_cm")


def _slot_entry(entry: int | Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """``3`` or ``{"slot": 3, "sample": ..., ...}`` -> (3, caller-given fields)."""
    if isinstance(entry, Mapping):
        if "slot" not in entry:
            raise ValueError(f"slot entry {dict(entry)!r} has no 'slot' key")
        return int(entry["slot"]), {k: v for k, v in entry.items() if k != "slot"}
    if isinstance(entry, bool) or not isinstance(entry, (int, float)) or int(entry) != entry:
        raise ValueError(f"slot must be an integer or a mapping with 'slot', got {entry!r}")
    return int(entry), {}


def _value(reading: Mapping[str, Any] | None, key_suffix: str) -> Any:
    if not reading:
        return None
    for key, val in reading.items():
        if key.endswith(key_suffix):
            return val["value"]
    return None


def _slot_metadata(changer: Any, slot: int) -> MsgGenerator[dict[str, Any]]:
    """Read sample name, composition and thickness from the changer's tray PVs, if any."""
    if not hasattr(changer, "slot_info") or getattr(changer, "tray_prefix", None) is None:
        return {}
    info = changer.slot_info(slot)
    reading = yield from bps.read(info)
    md = {
        "sample": _value(reading, "_sample"),
        "composition": _value(reading, "_composition"),
        "thickness_cm": _value(reading, "_thickness_cm"),
    }
    if md["thickness_cm"] is not None:
        md["thickness_cm"] = float(md["thickness_cm"])
    return {k: v for k, v in md.items() if v is not None}


def _exposure_signal(detector: Any) -> Any:
    cam = getattr(detector, "cam", None)
    if cam is not None and hasattr(cam, "acquire_time"):
        return cam.acquire_time
    return getattr(detector, "exposure_time_signal", None)


def _geometry(detector: Any) -> MsgGenerator[str | None]:
    cam = getattr(detector, "cam", None)
    poni = getattr(cam, "poni", None) if cam is not None else None
    if poni is None:
        return None
    reading = yield from bps.read(poni)
    return _value(reading, "poni")


def measure_tray(
    detector: Any,
    changer: Any,
    slots: Iterable[int | Mapping[str, Any]],
    exposure: float,
    *,
    md: Mapping[str, Any] | None = None,
) -> MsgGenerator[list[str | None]]:
    """Measure each slot of a tray: move, set exposure, one run with one frame per slot.

    Parameters
    ----------
    detector
        A triggerable detector; a :class:`~pbi_bluesky.devices.SAXSDetector` gets its
        exposure set through ``cam.acquire_time`` and its PONI recorded as ``geometry``.
        Any ophyd(-sim) readable works for dry runs.
    changer
        A settable positioner (e.g. :class:`~pbi_bluesky.devices.SampleChanger` or an
        ``ophyd.sim`` motor). With a ``slot_info`` method, sample name, composition and
        thickness come from the tray PVs.
    slots
        Slot numbers, or mappings ``{"slot": n, "sample": ..., "composition": ...,
        "thickness_cm": ...}``; values given here fill in what the tray PVs do not provide.
    exposure
        Exposure time per frame (s), > 0.
    md
        Extra metadata for every run's start document (overrides the defaults).

    Yields
    ------
    Msg
        bluesky messages.

    Returns
    -------
    list
        The run uids, one per slot (``None`` entries under simulators).

    Notes
    -----
    Each start document carries ``sample``, ``slot``, ``composition``, ``thickness_cm``,
    ``exposure_s``, ``geometry`` (PONI text, ``None`` if the detector has none),
    ``geometry_format``, ``plan_name`` = ``"measure_tray"``, ``tray_index``/``tray_size``,
    plus ``md``.
    """
    exposure = float(exposure)
    if not exposure > 0:
        raise ValueError(f"exposure must be > 0 s, got {exposure}")
    entries = [_slot_entry(e) for e in slots]
    if not entries:
        raise ValueError("no slots to measure")
    user_md = dict(md or {})
    exposure_signal = _exposure_signal(detector)
    uids: list[str | None] = []

    def one_slot(index: int, slot: int, given: dict[str, Any]) -> MsgGenerator[str | None]:
        yield from bps.mv(changer, slot)
        if exposure_signal is not None:
            yield from bps.mv(exposure_signal, exposure)
        from_pvs = yield from _slot_metadata(changer, slot)
        geometry = yield from _geometry(detector)
        sample_md = {k: given.get(k) for k in _SLOT_KEYS}
        sample_md.update({k: v for k, v in from_pvs.items() if v is not None})
        extra = {k: v for k, v in given.items() if k not in _SLOT_KEYS}
        run_md: dict[str, Any] = {
            **sample_md,
            **extra,
            "slot": slot,
            "exposure_s": exposure,
            "geometry": geometry,
            "geometry_format": "pyFAI PONI" if geometry else None,
            "plan_name": "measure_tray",
            "plan_args": {
                "detector": repr(detector),
                "changer": repr(changer),
                "slots": [s for s, _ in entries],
                "exposure": exposure,
            },
            "detectors": [detector.name],
            "motors": [changer.name],
            "tray_index": index,
            "tray_size": len(entries),
            **user_md,
        }
        log.info("measuring slot %d (%s, %s) for %g s", slot, run_md.get("sample"),
                 run_md.get("composition"), exposure)
        uid = yield from bpp.run_wrapper(
            bps.trigger_and_read([detector, changer]), md=run_md)
        return uid

    @bpp.stage_decorator([detector])
    def inner() -> MsgGenerator[None]:
        for index, (slot, given) in enumerate(entries):
            uid = yield from one_slot(index, slot, given)
            uids.append(uid)

    yield from inner()
    return uids
