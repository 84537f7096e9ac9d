"""Absolute intensity: the scale factor from a measured standard, stored beside the PONI.

A frame reduced by :meth:`~.pipeline.Reducer.reduce_absolute` is normalised by the
incident photons ``I0``, the pixel's absolute solid angle, the transmission and the
thickness: nominally dSigma/dOmega in 1/cm. Real monitors do not count every incident
photon and detectors do not count every scattered one, so the nominal scale is off by an
instrument factor ``F``: ``I_abs = F * I_nominal``. SAXS beamlines measure ``F`` with a
secondary standard of known cross-section; water is the usual one, flat at SAXS q,
0.01632 1/cm at 20 C (Orthaber, Bergmann & Glatter, J. Appl. Cryst. 33 (2000) 218).

:func:`calibrate_with_water` reduces water frames (empty cell subtracted) at ``F = 1``,
takes the inverse-variance weighted mean over a flat q range, and returns ``F`` with its
uncertainty (counting noise, inflated by the scatter about flat when that is larger, and
the reference's own uncertainty). :func:`save_absolute_scale` writes it as a small JSON
file next to the PONI (``geometry.poni`` -> ``geometry.absolute.json``), where every
:class:`~.pipeline.Reducer` built from that PONI finds and applies it, and records it in
each profile's provenance.

Glassy carbon (NIST SRM 3600) is not offered: its certified curve is not shipped with
this package.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..profile import Profile
from .errors import ReductionError

__all__ = [
    "ABSOLUTE_SCALE_SUFFIX",
    "WATER_INV_CM_20C",
    "AbsoluteScale",
    "absolute_scale_path",
    "calibrate_with_water",
    "find_absolute_scale",
    "load_absolute_scale",
    "resolve_absolute_scale",
    "save_absolute_scale",
]

logger = logging.getLogger(__name__)

WATER_INV_CM_20C = 0.01632
"""dSigma/dOmega of water at 20 C, 1/cm (Orthaber et al. 2000)."""
ABSOLUTE_SCALE_SUFFIX = ".absolute.json"
FORMAT = "pbi_bluesky.absolute_scale"


@dataclass(frozen=True)
class AbsoluteScale:
    """An instrument's absolute-intensity factor: ``I_abs = factor * I_nominal``."""

    factor: float = 1.0
    uncertainty: float | None = None
    standard: str | None = None
    reference_inv_cm: float | None = None
    temperature_c: float | None = None
    source: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f = self.factor
        if not (isinstance(f, (int, float)) and math.isfinite(f) and f > 0):
            raise ReductionError(f"absolute scale factor must be a finite number > 0, got {f!r}")
        u = self.uncertainty
        if u is not None and not (isinstance(u, (int, float)) and math.isfinite(u) and u >= 0):
            raise ReductionError(f"absolute scale uncertainty must be >= 0, got {u!r}")

    @property
    def calibrated(self) -> bool:
        """True when the factor came from a measured standard."""
        return self.standard is not None

    def provenance(self) -> dict[str, Any]:
        """Return what a profile records about the scale it was reduced with."""
        return {"factor": self.factor, "uncertainty": self.uncertainty,
                "standard": self.standard, "reference_inv_cm": self.reference_inv_cm,
                "temperature_c": self.temperature_c, "source": self.source or None,
                "calibrated": self.calibrated}

    def to_dict(self) -> dict[str, Any]:
        """Return every field as a plain dict (the inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> AbsoluteScale:
        """Build from a dict (a scale file, or an ``absolute_scale`` run-metadata entry)."""
        if not isinstance(data, dict) or "factor" not in data:
            raise ReductionError(f"absolute scale {source or 'entry'} has no 'factor'")
        try:
            return cls(factor=float(data["factor"]),
                       uncertainty=None if data.get("uncertainty") is None
                       else float(data["uncertainty"]),
                       standard=data.get("standard"),
                       reference_inv_cm=data.get("reference_inv_cm"),
                       temperature_c=data.get("temperature_c"),
                       source=source or str(data.get("source") or ""),
                       details=dict(data.get("details") or {}))
        except (TypeError, ValueError) as exc:
            raise ReductionError(f"absolute scale {source or 'entry'} is invalid: {exc}") from exc


UNCALIBRATED = AbsoluteScale()
"""Factor 1: the nominal scale (I0 counts taken as incident photons)."""


def absolute_scale_path(poni: str | Path) -> Path:
    """Where the scale factor of a geometry lives: beside its PONI file."""
    path = Path(poni)
    return path.with_name(path.stem + ABSOLUTE_SCALE_SUFFIX)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_absolute_scale(scale: AbsoluteScale, path: str | Path, *,
                        poni: str | Path | None = None) -> Path:
    """Write ``scale`` as JSON (with the sha256 of the PONI it was measured with)."""
    path = Path(path)
    doc = {"format": FORMAT, "format_version": 1, **scale.to_dict()}
    doc.pop("source", None)
    if poni is not None:
        doc["poni"] = Path(poni).name
        doc["poni_sha256"] = _sha256(Path(poni))
    path.write_text(json.dumps(doc, indent=1))
    return path


def load_absolute_scale(path: str | Path) -> AbsoluteScale:
    """Read a scale file written by :func:`save_absolute_scale`.

    Raises
    ------
    ReductionError
        Missing, unreadable or foreign file, or an invalid factor.
    """
    path = Path(path)
    if not path.is_file():
        raise ReductionError(f"absolute scale file {path} not found")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReductionError(f"absolute scale file {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ReductionError(f"{path} is not a {FORMAT} file")
    scale = AbsoluteScale.from_dict(doc, source=str(path))
    poni = path.with_name(str(doc.get("poni") or ""))
    if doc.get("poni_sha256") and poni.is_file() and _sha256(poni) != doc["poni_sha256"]:
        logger.warning("absolute scale %s was measured with another version of %s (the PONI "
                       "changed since); applying it anyway: re-measure the standard if the "
                       "detector or monitor changed", path, poni)
    return scale


def find_absolute_scale(poni: str | Path) -> AbsoluteScale | None:
    """Return the scale stored beside ``poni``, or None when there is none."""
    path = absolute_scale_path(poni)
    return load_absolute_scale(path) if path.is_file() else None


def resolve_absolute_scale(scale: AbsoluteScale | str | Path | None,
                           geometry: Any) -> AbsoluteScale:
    """Return the absolute scale a reducer applies, from what it was given.

    Parameters
    ----------
    scale
        An :class:`AbsoluteScale`; the path of a scale file; ``None`` (factor 1,
        uncalibrated); or ``"auto"``: the file beside the PONI when ``geometry`` is a PONI
        path and there is one (logged), else factor 1.
    geometry
        What the reducer's geometry came from (a PONI path, or an integrator).

    Raises
    ------
    ReductionError
        A scale file that is missing or invalid (:func:`load_absolute_scale`).
    """
    if isinstance(scale, AbsoluteScale):
        return scale
    if scale is None:
        return UNCALIBRATED
    if isinstance(scale, str) and scale == "auto":
        if isinstance(geometry, (str, Path)):
            found = find_absolute_scale(geometry)
            if found is not None:
                logger.info("absolute scale factor %.5g from %s", found.factor, found.source)
                return found
        return UNCALIBRATED
    return load_absolute_scale(scale)


def _weighted_mean(profiles: list[Profile]) -> tuple[np.ndarray, np.ndarray]:
    i = np.array([p.intensity for p in profiles])
    s = np.array([p.sigma for p in profiles])
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(np.isfinite(i) & np.isfinite(s) & (s > 0), 1.0 / s**2, 0.0)
        total = w.sum(0)
        mean = np.where(total > 0, (w * np.nan_to_num(i)).sum(0) / total, np.nan)
        sigma = np.where(total > 0, 1.0 / np.sqrt(total), np.nan)
    return mean, sigma


def _flat_level(water: list[Profile], q_range: tuple[float, float] | None
                ) -> dict[str, Any]:
    """Return the flat level of the water curves (nominal 1/cm) over ``q_range``, and its fit.

    The inverse-variance weighted mean over the usable bins, its uncertainty (inflated by
    the scatter about flat when the reduced chi-square exceeds 1, logged above 3), and the
    relative change of a weighted straight line over the range: the ``details`` of
    :func:`calibrate_with_water`'s scale.

    Raises
    ------
    ReductionError
        Fewer than 5 usable bins, or a level that is not positive.
    """
    q = water[0].q_inv_angstrom
    level, sigma = _weighted_mean(water)
    ok = np.isfinite(level) & np.isfinite(sigma) & (sigma > 0)
    if q_range is None:
        lo = 2.0 * float(q[ok].min()) if ok.any() else 0.0
        q_range = (lo, float(q[ok].max()) if ok.any() else 0.0)
    sel = ok & (q >= q_range[0]) & (q <= q_range[1])
    if sel.sum() < 5:
        raise ReductionError(f"only {int(sel.sum())} usable bins in q = {q_range[0]:.4g}.."
                             f"{q_range[1]:.4g} 1/A for the water level (need 5)")
    w = 1.0 / sigma[sel] ** 2
    mean = float(np.sum(w * level[sel]) / np.sum(w))
    if not mean > 0:
        raise ReductionError(f"the water level after subtracting the empty cell is {mean:.4g} "
                             "(not positive): check the frames, I0 and transmissions")
    err = float(1.0 / np.sqrt(np.sum(w)))
    chi2 = float(np.sum(w * (level[sel] - mean) ** 2) / max(int(sel.sum()) - 1, 1))
    slope, _intercept = np.polyfit(q[sel], level[sel], 1, w=np.sqrt(w))
    span = float(q[sel].max() - q[sel].min())
    if chi2 > 3.0:
        logger.warning("the water curve is not flat within its error bars (reduced chi2 %.2f "
                       "over q = %.4g..%.4g 1/A): check the empty-cell subtraction and the "
                       "mask; the uncertainty is inflated accordingly", chi2, *q_range)
    return {"nominal_level_inv_cm": mean,
            "nominal_level_sigma": err * math.sqrt(max(chi2, 1.0)),
            "reduced_chi2_flat": chi2,
            "relative_change_over_q_range": float(slope * span / mean),
            "q_range_inv_angstrom": [float(q_range[0]), float(q_range[1])],
            "n_bins": int(sel.sum())}


def calibrate_with_water(
    reducer: Any,
    frames: list[Any],
    *,
    i0: list[float],
    transmission: list[float],
    thickness_cm: float,
    empty_cell: Any,
    empty_cell_i0: float,
    empty_cell_transmission: float,
    reference_inv_cm: float = WATER_INV_CM_20C,
    reference_uncertainty: float = 0.0,
    temperature_c: float = 20.0,
    q_range: tuple[float, float] | None = None,
) -> AbsoluteScale:
    """Absolute scale factor from water frames measured in a cell, and the empty cell.

    Parameters
    ----------
    reducer
        A :class:`~.pipeline.Reducer` on the instrument's geometry, mask and dark.
    frames, i0, transmission
        Water frames (arrays or image paths) with their incident-photon readings and
        measured transmissions (one value each, or one for all).
    thickness_cm
        Water path length (cell inner thickness).
    empty_cell, empty_cell_i0, empty_cell_transmission
        The same cell, empty, and its readings.
    reference_inv_cm, reference_uncertainty
        dSigma/dOmega of the standard (default water at 20 C) and its 1-sigma uncertainty.
    q_range
        Bins used for the flat level; default: from 2x the lowest valid q to the highest
        (the lowest bins carry parasitic scattering near the beamstop).

    Raises
    ------
    ReductionError
        Inconsistent inputs, or too few usable bins.
    """
    n = len(frames)
    if n == 0:
        raise ReductionError("no water frames given")
    i0s = list(i0) * n if len(i0) == 1 else list(i0)
    ts = list(transmission) * n if len(transmission) == 1 else list(transmission)
    if len(i0s) != n or len(ts) != n:
        raise ReductionError(f"{n} water frame(s) but {len(i0)} I0 and {len(transmission)} "
                             "transmission value(s): give one for all or one per frame")
    if not (math.isfinite(reference_inv_cm) and reference_inv_cm > 0):
        raise ReductionError(f"reference cross-section must be > 0, got {reference_inv_cm}")
    cell = reducer.reduce_absolute(empty_cell, i0=empty_cell_i0,
                                   transmission=empty_cell_transmission, scale=UNCALIBRATED)
    water = [reducer.reduce_absolute(f, i0=a, transmission=t, thickness_cm=thickness_cm,
                                     background=cell, scale=UNCALIBRATED)
             for f, a, t in zip(frames, i0s, ts, strict=True)]
    flat = _flat_level(water, q_range)
    mean = flat["nominal_level_inv_cm"]
    factor = reference_inv_cm / mean
    rel = math.hypot(flat["nominal_level_sigma"] / mean,
                     reference_uncertainty / reference_inv_cm)
    return AbsoluteScale(
        factor=factor, uncertainty=factor * rel, standard="water",
        reference_inv_cm=reference_inv_cm, temperature_c=temperature_c,
        details={**flat, "n_frames": n, "thickness_cm": thickness_cm,
                 "i0": [float(a) for a in i0s], "transmission": [float(t) for t in ts],
                 "empty_cell_i0": float(empty_cell_i0),
                 "empty_cell_transmission": float(empty_cell_transmission),
                 "reference_uncertainty_inv_cm": reference_uncertainty})
