"""Checks of what a reduction is given, before any arithmetic runs.

Every number a user or a document hands the :class:`~.pipeline.Reducer` (I0, monitor,
transmission, thickness), every image (frame, mask, dark, flat) and every empty-cell
profile passes through here, and is refused with a :class:`~.errors.ReductionError` that
names it and says what was wrong: a reduction never turns a bad input into a plausible
curve. The reduction itself (integration, corrections, provenance) is
:mod:`~pbi_bluesky.reduction.pipeline`'s job.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..profile import Profile
from .errors import ReductionError
from .images import as_frame

__all__ = ["MAX_TRANSMISSION", "check_background_profile", "check_frame", "check_image",
           "per_frame", "positive"]

MAX_TRANSMISSION = 1.5
"""Largest transmission accepted (above 1 only by monitor noise)."""


def positive(name: str, value: Any, upper: float | None = None) -> float:
    """Return ``value`` as a finite float > 0 (and <= ``upper``).

    Parameters
    ----------
    name
        What the value is, for the error message (``"I0"``, ``"transmission"``...).
    value
        The value given.
    upper
        Largest value accepted, if any.

    Raises
    ------
    ReductionError
        Not a number, not finite, not > 0, or above ``upper``.
    """
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ReductionError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(v) or v <= 0:
        raise ReductionError(f"{name} must be > 0, got {value}")
    if upper is not None and v > upper:
        raise ReductionError(f"{name} must be <= {upper}, got {value}")
    return v


def per_frame(name: str, values: Any, n: int, upper: float | None = None,
              optional: bool = False) -> list[float | None]:
    """Return one checked value per frame of a batch of ``n``.

    Parameters
    ----------
    name, upper
        As for :func:`positive`.
    values
        One value for every frame, or a sequence of ``n`` values.
    n
        Number of frames.
    optional
        Let ``None`` through (a thickness that is not known: no thickness division).

    Raises
    ------
    ReductionError
        A sequence of the wrong length, or a value :func:`positive` refuses.
    """
    if values is None or np.ndim(values) == 0:
        values = [values] * n
    values = list(values)
    if len(values) != n:
        raise ReductionError(f"{len(values)} {name} values for {n} frames")
    return [None if optional and v is None else positive(name, v, upper) for v in values]


def check_image(name: str, obj: Any, shape: tuple[int, int], source: str) -> NDArray:
    """Return a correction image (mask, dark, flat) as an array of the detector's shape.

    Parameters
    ----------
    name
        What the image is, for the error message.
    obj
        An array or an image path (:func:`~.images.as_frame`).
    shape
        The detector's shape.
    source
        Where the geometry came from, for the error message.

    Raises
    ------
    ReductionError
        The image's shape is not the detector's.
    """
    arr = as_frame(obj)
    if arr.shape != shape:
        raise ReductionError(f"{name} shape {arr.shape} does not match detector shape "
                             f"{shape} of geometry from {source}")
    return arr


def check_frame(frame: Any, shape: tuple[int, int], mask: NDArray, source: str) -> NDArray:
    """Return a raw frame as an array after checking shape, size, dtype and finiteness.

    Parameters
    ----------
    frame
        An array or an image path.
    shape
        The detector's shape.
    mask
        Masked pixels (``True``): NaN or infinite values there are allowed.
    source
        Where the geometry came from, for the error message.

    Raises
    ------
    ReductionError
        An empty frame, another shape, a non-numeric dtype, or NaN or infinite values in
        unmasked pixels.
    """
    arr = np.asarray(frame) if not isinstance(frame, (str, Path)) else as_frame(frame)
    if arr.size == 0:
        raise ReductionError("frame is empty (0 pixels)")
    if arr.shape != shape:
        raise ReductionError(f"frame shape {arr.shape} does not match detector shape "
                             f"{shape} of geometry from {source}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ReductionError(f"frame dtype {arr.dtype} is not numeric")
    if np.issubdtype(arr.dtype, np.floating):
        valid = ~mask
        n_nan = int(np.count_nonzero(np.isnan(arr[valid])))
        n_inf = int(np.count_nonzero(np.isinf(arr[valid])))
        if n_nan:
            raise ReductionError(f"frame contains {n_nan} NaN pixels")
        if n_inf:
            raise ReductionError(f"frame contains {n_inf} infinite pixels")
    return arr


def check_background_profile(background: Profile, q: NDArray,
                             normalisation: dict[str, Any] | None) -> None:
    """Check that an empty-cell profile may be subtracted from a frame's profile.

    Parameters
    ----------
    background
        The empty cell's profile.
    q
        The q grid of the reducer (1/angstrom).
    normalisation
        The frame's normalisation (``{"normalisation": "monitor"}``, or ``"absolute"``
        with its ``absolute_scale`` provenance); ``None`` skips that check.

    Raises
    ------
    ReductionError
        Another q grid; a background that is thickness-normalised or
        background-subtracted itself; another normalisation or absolute scale factor.
    """
    if background.npt != len(q) or not np.allclose(background.q_inv_angstrom, q,
                                                   rtol=1e-6, atol=0):
        raise ReductionError("background profile q grid differs from this reducer's "
                             f"({background.npt} vs {len(q)} bins)")
    corr = background.provenance.get("corrections", {})
    if corr.get("thickness_cm") is not None or corr.get("background"):
        raise ReductionError("background profile must not be thickness-normalised or "
                             "background-subtracted itself")
    if normalisation is None:
        return
    have = corr.get("normalisation", "monitor")
    if have != normalisation["normalisation"]:
        raise ReductionError(
            f"background profile was reduced with {have} normalisation, the frame with "
            f"{normalisation['normalisation']}: reduce the empty cell the same way (with "
            "reduce_absolute and its I0 for absolute profiles)")
    if have == "absolute":
        a = corr.get("absolute_scale", {}).get("factor")
        b = normalisation["absolute_scale"]["factor"]
        if a is None or not np.isclose(a, b, rtol=1e-12, atol=0):
            raise ReductionError(f"background profile was reduced with absolute scale factor "
                                 f"{a}, the frame with {b}: reduce both with one factor")
