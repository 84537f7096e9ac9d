"""Plans that measure a tray of SAXS specimens, one run per sample measurement.

What is in each slot (sample name, nominal recipe, thickness) is data: a tray (sample list)
given to the plan or registered once per session with :func:`use_tray` — a real beamline has
no PV that knows a sample's recipe. Geometry and other beamline facts come from the session's
metadata (``RE.md``, set by the profile from ``beamline.yaml``).

Works with stock ophyd detectors (``cam.acquire_time``; Resource/Datum) and stock ophyd-async
ones (prepared with a ``TriggerInfo``; StreamResource/StreamDatum), and with ``ophyd.sim``
devices for dry runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import MsgGenerator

__all__ = ["SLOT_KEYS", "TrayError", "load_sample_list", "measure_normals", "measure_tray",
           "rescan", "resolve_slots", "use_tray"]

log = logging.getLogger(__name__)

SLOT_KEYS = ("sample", "composition", "thickness_cm", "sample_type")
"""What a plan may know about a slot (the rest of a tray file is hidden truth or notes)."""

PILATUS_READOUT_S = 0.95e-3
"""Pilatus3 readout time: AcquirePeriod = AcquireTime + this."""

_SESSION_TRAY: dict[int, dict[str, Any]] = {}


class TrayError(ValueError):
    """A slot is unknown or described inconsistently."""


def load_sample_list(path: str | Path) -> list[dict[str, Any]]:
    """Read a sample list, keeping only :data:`SLOT_KEYS`.

    YAML/JSON: a list of slots, or ``{"slots": [...]}``; anomaly truth in a simulator's
    tray file is dropped.
    """
    import json

    import yaml

    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError) as exc:
        raise TrayError(f"cannot read sample list {path}: {exc}") from exc
    if isinstance(data, Mapping):
        data = data.get("slots")
    if not isinstance(data, list):
        raise TrayError(f"{path}: expected a list of slots (or a mapping with 'slots')")
    out = []
    for entry in data:
        if not isinstance(entry, Mapping) or "slot" not in entry:
            raise TrayError(f"{path}: every slot needs a 'slot' number, got {entry!r}")
        out.append({"slot": int(entry["slot"]),
                    **{k: entry[k] for k in SLOT_KEYS if entry.get(k) is not None}})
    return out


def use_tray(slots: Iterable[Mapping[str, Any]] | str | Path | None) -> None:
    """Register the session's tray: later plans may name slots by number only.

    ``None`` clears it.
    """
    _SESSION_TRAY.clear()
    if slots is None:
        return
    entries = load_sample_list(slots) if isinstance(slots, (str, Path)) else slots
    for entry in entries:
        _SESSION_TRAY[int(entry["slot"])] = {k: entry[k] for k in SLOT_KEYS if k in entry}


def _slot_entry(entry: Any) -> tuple[int, dict[str, Any]]:
    """``3`` or ``{"slot": 3, "sample": ..., ...}`` -> (3, fields from the tray + caller)."""
    if isinstance(entry, Mapping):
        if "slot" not in entry:
            raise ValueError(f"slot entry {dict(entry)!r} has no 'slot' key")
        slot, given = entry["slot"], {k: v for k, v in entry.items() if k != "slot"}
    else:
        slot, given = entry, {}
    if isinstance(slot, bool) or not isinstance(slot, (int, float)) or int(slot) != slot:
        raise ValueError(f"slot must be an integer or a mapping with 'slot', got {entry!r}")
    if _SESSION_TRAY and int(slot) not in _SESSION_TRAY and not given:
        raise TrayError(f"slot {int(slot)} is not in the session's sample list (slots "
                        f"{sorted(_SESSION_TRAY)}); describe it: {{'slot': {int(slot)}, "
                        "'sample': ..., 'composition': ..., 'thickness_cm': ...}")
    return int(slot), {**_SESSION_TRAY.get(int(slot), {}), **given}


def resolve_slots(slots: Iterable[Any]) -> list[tuple[int, dict[str, Any]]]:
    """Slot numbers or mappings -> ``(slot, known fields)`` using the session tray."""
    return [_slot_entry(e) for e in slots]


def _as_list(devices: Any) -> list[Any]:
    return list(devices) if isinstance(devices, Sequence) else [devices]


def _is_async(device: Any) -> bool:
    return hasattr(device, "_trigger_logic") or type(device).__module__.startswith(
        "ophyd_async")


def set_exposure(detector: Any, exposure: float) -> MsgGenerator[None]:
    """Set one detector's exposure.

    ``cam.acquire_time`` (+ period) for stock ophyd, a one-frame ``TriggerInfo`` for
    ophyd-async; nothing for devices without either.
    """
    if _is_async(detector):
        from ophyd_async.core import TriggerInfo

        yield from bps.prepare(detector, TriggerInfo(number_of_events=1, livetime=exposure),
                               wait=True)
        return
    cam = getattr(detector, "cam", None)
    if cam is not None and hasattr(cam, "acquire_time"):
        yield from bps.mv(cam.acquire_time, exposure)
        if hasattr(cam, "acquire_period"):
            yield from bps.mv(cam.acquire_period, exposure + PILATUS_READOUT_S)


def _run_md(slot: int, known: dict[str, Any], exposure: float, detectors: list[Any],
            changer: Any, plan_name: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    md: dict[str, Any] = {
        **{k: v for k, v in known.items() if v is not None},
        "slot": slot,
        "exposure_s": exposure,
        "plan_name": plan_name,
        "detectors": [d.name for d in detectors],
        "motors": [changer.name],
        **extra,
    }
    if md.get("thickness_cm") is not None:
        md["thickness_cm"] = float(md["thickness_cm"])
    return md


def split_monitors(detectors: list[Any]) -> tuple[list[Any], list[Any]]:
    """Split into what to read and the monitors recorded as NDAttributes.

    Returns ``(what to read, monitors recorded as NDAttributes by ophyd-async detectors)``.

    With an ophyd-async area detector among ``detectors``, the other scalar readables (I0,
    transmission) are recorded by the IOC with every frame instead of being read beside it
    (the data keys are the same; reading both would declare them twice).
    """
    async_dets = [d for d in detectors if _is_async(d) and hasattr(d, "driver")]
    if not async_dets:
        return detectors, []
    return async_dets, [d for d in detectors if d not in async_dets]


def _checked(slots: Iterable[int | Mapping[str, Any]], exposure: float
             ) -> tuple[float, list[tuple[int, dict[str, Any]]]]:
    """Return the exposure as a float and the resolved slots; ValueError if either is bad."""
    exposure = float(exposure)
    if not exposure > 0:
        raise ValueError(f"exposure must be > 0 s, got {exposure}")
    entries = resolve_slots(slots)
    if not entries:
        raise ValueError("no slots to measure")
    return exposure, entries


def _setup_monitors(detectors: list[Any], monitors: list[Any]) -> MsgGenerator[None]:
    """Have ophyd-async detectors record the monitors in their files (nothing without any)."""
    if monitors:
        from pbi_bluesky.devices.epics_async import setup_monitor_ndattributes

        for det in detectors:
            yield from setup_monitor_ndattributes(det, monitors)


def _one_point(detectors: list[Any], changer: Any, slot: int, exposure: float,
               md: dict[str, Any]) -> MsgGenerator[str]:
    """Move, set the exposure, then one staged run with one frame."""
    detectors, monitors = split_monitors(detectors)
    yield from _setup_monitors(detectors, monitors)
    yield from bps.mv(changer, slot)
    for det in detectors:
        yield from set_exposure(det, exposure)
    log.info("measuring slot %d (%s, %s) for %g s", slot, md.get("sample"),
             md.get("composition"), exposure)

    @bpp.stage_decorator(detectors)
    @bpp.run_decorator(md=md)
    def inner() -> MsgGenerator[None]:
        yield from bps.trigger_and_read([*detectors, changer])

    return (yield from inner())


def measure_tray(
    detectors: Any,
    changer: Any,
    slots: Iterable[int | Mapping[str, Any]],
    exposure: float,
    *,
    md: Mapping[str, Any] | None = None,
) -> MsgGenerator[list[str]]:
    """Measure each slot of a tray: move, set exposure, one run with one frame per slot.

    Parameters
    ----------
    detectors
        A detector or a list (the detector plus its monitors, e.g. ``beamline.readables``).
        Stock ophyd detectors get ``cam.acquire_time`` set; ophyd-async ones are prepared.
    changer
        The sample changer (an ``EpicsMotor`` / ophyd-async ``Motor`` over a motor record,
        or any settable positioner).
    slots
        Slot numbers (described by the session tray, :func:`use_tray`) or mappings
        ``{"slot": n, "sample": ..., "composition": ..., "thickness_cm": ...,
        "sample_type": ...}``; mapping values override the tray's.
    exposure
        Exposure time per frame (s), > 0.
    md
        Extra metadata for every run's start document (overrides the defaults).

    Returns
    -------
    list of str
        The run uids, one per slot.

    Notes
    -----
    Each start document carries ``sample``, ``slot``, ``composition``, ``thickness_cm``,
    ``sample_type`` (when known), ``exposure_s``, ``plan_name`` = ``"measure_tray"``,
    ``tray_index``/``tray_size`` and ``md``. The detector is staged per run, so every run
    has its own files and asset documents.
    """
    exposure, entries = _checked(slots, exposure)
    dets = _as_list(detectors)
    uids: list[str] = []
    for index, (slot, known) in enumerate(entries):
        run_md = _run_md(slot, known, exposure, dets, changer, "measure_tray",
                         {"tray_index": index, "tray_size": len(entries),
                          "plan_args": {"slots": [s for s, _ in entries],
                                        "exposure": exposure},
                          **dict(md or {})})
        uids.append((yield from _one_point(dets, changer, slot, exposure, run_md)))
    return uids


def measure_normals(
    detectors: Any,
    changer: Any,
    slots: Iterable[int | Mapping[str, Any]],
    exposure: float,
    *,
    md: Mapping[str, Any] | None = None,
) -> MsgGenerator[list[str]]:
    """Measure normal specimens to train a model on: one run per recipe, a frame per specimen.

    The specimens of a recipe are measured in one run, the changer moving between frames,
    so a model learns the batch-to-batch scatter of the specimens, not one specimen's
    counting noise, and the catalog holds one run per recipe rather than one per frame.
    Measure the empty cell before (``measure_tray(..., [0], ...)``): training from Tiled
    subtracts the empty-cell run measured before each run.

    Parameters
    ----------
    detectors, changer, exposure
        As for :func:`measure_tray`.
    slots
        Slot numbers (described by the session tray) or mappings, as for
        :func:`measure_tray`; each needs a ``composition`` (the recipe), and the specimens of
        one recipe one ``thickness_cm`` (the run is reduced with one thickness).
    md
        Extra metadata for every run's start document (overrides the defaults).

    Returns
    -------
    list of str
        The run uids, one per recipe, in the order the recipes first appear in ``slots``.

    Raises
    ------
    TrayError
        A slot without a recipe, or specimens of one recipe of different thicknesses.

    Notes
    -----
    Each start document carries ``sample`` (``"normals RECIPE"``), ``composition``,
    ``thickness_cm`` (when known), ``specimens`` and ``slots`` (one per frame, in order),
    ``exposure_s``, ``purpose`` = ``"normals"`` (what ``pbi model train --tiled --query
    purpose=normals`` selects), ``plan_name`` = ``"measure_normals"`` and ``md``.
    """
    exposure, entries = _checked(slots, exposure)
    by_recipe: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for slot, known in entries:
        if not known.get("composition"):
            raise TrayError(f"slot {slot} has no composition: a normal specimen must name "
                            "its recipe")
        by_recipe.setdefault(str(known["composition"]), []).append((slot, known))
    dets = _as_list(detectors)
    detectors_read, monitors = split_monitors(dets)
    runs_md = []
    for recipe, group in by_recipe.items():
        thicknesses = {float(k["thickness_cm"]) for _, k in group
                       if k.get("thickness_cm") is not None}
        if len(thicknesses) > 1:
            raise TrayError(f"the {recipe} specimens have thicknesses {sorted(thicknesses)} cm: "
                            "one run is reduced with one thickness; measure them apart")
        run_md: dict[str, Any] = {
            "sample": f"normals {recipe}", "composition": recipe,
            "specimens": [k.get("sample", f"slot {s}") for s, k in group],
            "slots": [s for s, _ in group], "exposure_s": exposure, "purpose": "normals",
            "plan_name": "measure_normals", "detectors": [d.name for d in detectors_read],
            "motors": [changer.name],
            "plan_args": {"slots": [s for s, _ in entries], "exposure": exposure},
            **({"thickness_cm": thicknesses.pop()} if thicknesses else {}),
            **dict(md or {})}
        runs_md.append((group, run_md))
    yield from _setup_monitors(detectors_read, monitors)
    for det in detectors_read:
        yield from set_exposure(det, exposure)
    uids: list[str] = []
    for group, run_md in runs_md:
        log.info("measuring %d normal %s specimens for %g s each", len(group),
                 run_md["composition"], exposure)

        @bpp.stage_decorator(detectors_read)
        @bpp.run_decorator(md=run_md)
        def one_run(group: list[tuple[int, dict[str, Any]]] = group) -> MsgGenerator[None]:
            for slot, _known in group:
                yield from bps.mv(changer, slot)
                yield from bps.trigger_and_read([*detectors_read, changer])

        uids.append((yield from one_run()))
    return uids


def rescan(
    detectors: Any,
    changer: Any,
    slot: int | Mapping[str, Any],
    exposure: float,
    *,
    rescan_of: str | None = None,
    rescan_round: int = 1,
    md: Mapping[str, Any] | None = None,
) -> MsgGenerator[str]:
    """Measure one slot again (a plain plan: people and agents queue it).

    Parameters
    ----------
    detectors, changer, exposure
        As for :func:`measure_tray`.
    slot
        Slot number or mapping, as for :func:`measure_tray`.
    rescan_of
        Raw run uid of the measurement being checked (recorded as ``rescan_of``).
    rescan_round
        Which rescan of that measurement this is (1, 2, ...).
    md
        Extra start-document metadata.

    Returns
    -------
    str
        The rescan's run uid.
    """
    exposure = float(exposure)
    if not exposure > 0:
        raise ValueError(f"exposure must be > 0 s, got {exposure}")
    ((number, known),) = resolve_slots([slot])
    dets = _as_list(detectors)
    extra = {"purpose": "rescan", "rescan_round": int(rescan_round), **dict(md or {})}
    if rescan_of:
        extra["rescan_of"] = rescan_of
    run_md = _run_md(number, known, exposure, dets, changer, "rescan", extra)
    return (yield from _one_point(dets, changer, number, exposure, run_md))
