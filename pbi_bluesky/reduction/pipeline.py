"""User-facing SAXS reduction: frame -> :class:`~pbi_bluesky.profile.Profile`.

:meth:`Reducer.reduce_absolute` is the one path from (frame, I0, transmission, thickness,
the instrument's absolute scale factor) to absolute I(q) in 1/cm: ``pbi reduce``, the
datasets, training and scoring from frames, and the live scorer all go through it.
:meth:`Reducer.reduce` is the low-level step it builds on (a given normalisation factor,
no claim of absolute units). Checking the inputs (numbers, frames, correction images, an
empty-cell profile) is :mod:`~pbi_bluesky.reduction.checks`'s job; finding the absolute
scale factor, :mod:`~pbi_bluesky.reduction.absolute`'s.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyFAI
from numpy.typing import ArrayLike, NDArray
from pyFAI.integrator.azimuthal import AzimuthalIntegrator

from ..profile import Profile
from .absolute import AbsoluteScale, resolve_absolute_scale
from .checks import (
    MAX_TRANSMISSION,
    check_background_profile,
    check_frame,
    check_image,
    per_frame,
    positive,
)
from .errors import ReductionError
from .geometry import absolute_monitor, geometry_provenance, load_geometry
from .integrator import UNIT, FoldedIntegrator, settle_numexpr

__all__ = ["METHODS", "PYFAI_METHOD", "Reducer", "ReductionError"]

METHODS = ("folded", "pyfai")
PYFAI_METHOD = ("bbox", "csr", "cython")

Image = str | Path | ArrayLike


class Reducer:
    """Reduce 2D SAXS frames to 1D profiles on one fixed q grid.

    Parameters
    ----------
    geometry
        PONI file path or pyFAI ``AzimuthalIntegrator``.
    npt
        Number of q bins.
    q_range_inv_angstrom
        ``(qmin, qmax)`` in 1/angstrom. Default: the q span of the unmasked pixel centres.
    mask
        Extra mask (array or image path, non-zero = masked). The detector's own mask
        (module gaps) is always added.
    dark, flat
        Dark-current and flat-field images (arrays or paths), optional.
    polarization_factor
        pyFAI polarization factor, ``None`` to skip the correction.
    correct_solid_angle
        Apply the solid-angle correction.
    method
        ``"folded"`` (fast :class:`FoldedIntegrator`) or ``"pyfai"`` (``ai.integrate1d`` with
        method ``("bbox", "csr", "cython")``, for comparison).
    absolute_scale
        The instrument's absolute-intensity factor used by :meth:`reduce_absolute`: an
        :class:`~.absolute.AbsoluteScale`, the path of a scale file, ``None`` (factor 1,
        uncalibrated) or ``"auto"`` (default: the file beside the PONI,
        ``geometry.absolute.json`` for ``geometry.poni``, when there is one).
    """

    def __init__(
        self,
        geometry: str | Path | AzimuthalIntegrator,
        *,
        npt: int = 500,
        q_range_inv_angstrom: tuple[float, float] | None = None,
        mask: Image | None = None,
        dark: Image | None = None,
        flat: Image | None = None,
        polarization_factor: float | None = 0.99,
        correct_solid_angle: bool = True,
        method: str = "folded",
        absolute_scale: AbsoluteScale | str | Path | None = "auto",
    ) -> None:
        if method not in METHODS:
            raise ReductionError(f"method must be one of {METHODS}, got {method!r}")
        settle_numexpr()  # before any numexpr formula of pyFAI's (see its docstring)
        self.ai = load_geometry(geometry)
        self.source = str(geometry) if isinstance(geometry, (str, Path)) else "AzimuthalIntegrator"
        self.shape: tuple[int, int] = tuple(int(s) for s in self.ai.detector.shape)
        self.npt = int(npt)
        self.method = method
        self.polarization_factor = polarization_factor
        self.correct_solid_angle = bool(correct_solid_angle)
        self.dark = None if dark is None else self._image("dark", dark).astype(np.float32)
        self.flat = None if flat is None else self._image("flat", flat).astype(np.float32)
        user_mask = None if mask is None else self._image("mask", mask).astype(bool)
        det_mask = self.ai.detector.mask
        combined = np.zeros(self.shape, dtype=bool)
        if det_mask is not None:
            combined |= np.asarray(det_mask).astype(bool)
        if user_mask is not None:
            combined |= user_mask
        self.q_range = self._q_range(q_range_inv_angstrom, combined)
        self._folded = FoldedIntegrator(
            self.ai, self.shape, self.npt, self.q_range, mask=combined, dark=self.dark,
            flat=self.flat, polarization_factor=polarization_factor,
            correct_solid_angle=self.correct_solid_angle,
        )
        # the integrator's mask also holds pixels with dummy dark/flat values
        self.mask = self._folded.mask
        self.q = self._folded.q
        self.count = self._folded.count
        self.absolute_scale = resolve_absolute_scale(absolute_scale, geometry)
        self._provenance: dict[str, Any] | None = None

    # -- construction helpers -------------------------------------------------------------
    def _image(self, name: str, obj: Image) -> NDArray:
        return check_image(name, obj, self.shape, self.source)

    def _q_range(self, q_range, mask) -> tuple[float, float]:
        if q_range is not None:
            lo, hi = (float(v) for v in q_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi):
                raise ReductionError(f"q range must satisfy 0 <= qmin < qmax, got {q_range}")
            return lo, hi
        q = self.ai.array_from_unit(self.shape, "center", UNIT, scale=True)
        valid = q[~mask]
        if valid.size == 0:
            raise ReductionError("every detector pixel is masked")
        return float(valid.min()), float(valid.max())

    # -- provenance -----------------------------------------------------------------------
    def provenance(self, **corrections: Any) -> dict[str, Any]:
        """Return the provenance dict common to every profile made by this reducer.

        A fresh copy each call; the parts that do not change are built once.
        """
        if self._provenance is None:
            self._provenance = {
                "package": "pbi_bluesky",
                "geometry": geometry_provenance(self.ai),
                "geometry_source": self.source,
                "npt": self.npt,
                "unit": UNIT,
                "q_range_inv_angstrom": list(self.q_range),
                "method": self.method if self.method == "folded" else f"pyfai:{PYFAI_METHOD}",
                "pyfai_version": pyFAI.version,
                "error_model": "poisson",
                "corrections": {
                    "mask_pixels": int(np.count_nonzero(self.mask)),
                    "dark": self.dark is not None,
                    "flat": self.flat is not None,
                    "solid_angle": self.correct_solid_angle,
                    "polarization_factor": self.polarization_factor,
                },
            }
        out = copy.deepcopy(self._provenance)
        out["corrections"].update(corrections)
        return out

    # -- validation -----------------------------------------------------------------------
    def check_frame(self, frame: Image) -> NDArray:
        """Return ``frame`` as an array after checking shape, size and finiteness.

        See :func:`~.checks.check_frame`; masked pixels may hold NaN or infinity.
        """
        return check_frame(frame, self.shape, self.mask, self.source)

    # -- integration ----------------------------------------------------------------------
    def integrate(self, frame: Image, monitor: float = 1.0) -> tuple[NDArray, NDArray]:
        """Integrate one validated frame: I(q) and sigma normalised by ``monitor``."""
        arr = self.check_frame(frame)
        monitor = positive("monitor", monitor)
        if self.method == "folded":
            return self._folded.integrate(arr, monitor)
        res = self.ai.integrate1d(
            arr, self.npt, unit=UNIT, method=PYFAI_METHOD, mask=self.mask, dark=self.dark,
            flat=self.flat, polarization_factor=self.polarization_factor,
            correctSolidAngle=self.correct_solid_angle, normalization_factor=monitor,
            radial_range=self.q_range, error_model="poisson",
        )
        intensity = np.array(res.intensity, dtype=np.float64)
        sigma = np.array(res.sigma, dtype=np.float64)
        empty = ~(np.asarray(res.sum_normalization) > 0)
        intensity[empty] = np.nan
        sigma[empty] = np.nan
        return intensity, sigma

    def _background_term(
        self, background: Profile | Image, monitor: float, transmission: float,
        normalisation: dict[str, Any] | None = None,
    ) -> tuple[NDArray, NDArray, dict[str, Any]]:
        if isinstance(background, Profile):
            check_background_profile(background, self.q, normalisation)
            return background.intensity, background.sigma, {"kind": "profile"}
        i_b, s_b = self.integrate(background, monitor)
        return i_b / transmission, s_b / transmission, {
            "kind": "frame", "monitor": monitor, "transmission": transmission}

    def reduce_absolute(
        self,
        frame: Image,
        *,
        i0: float,
        transmission: float = 1.0,
        thickness_cm: float | None = None,
        background: Profile | Image | None = None,
        background_i0: float | None = None,
        background_transmission: float = 1.0,
        metadata: dict[str, Any] | None = None,
        scale: AbsoluteScale | None = None,
    ) -> Profile:
        """Reduce one frame to absolute I(q): the one path every caller uses.

        ``I = F * (C / (I0 * Omega_px * T) - C_bkg / (I0_bkg * Omega_px * T_bkg)) / d``:
        counts per relative solid angle ``C`` (pyFAI), incident photons ``I0`` counted by
        the monitor, the absolute solid angle of a pixel at the PONI ``Omega_px =
        pixel1 * pixel2 / dist^2`` (:func:`~.geometry.absolute_monitor`), transmission
        ``T``, thickness ``d`` (cm) and the instrument's absolute scale factor ``F``
        (:attr:`absolute_scale`, measured with ``pbi calibrate-absolute``; 1 when none).
        With ``thickness_cm`` the result is dSigma/dOmega in 1/cm; without (an empty cell),
        scattering per incident photon per sr.

        Parameters
        ----------
        frame
            Raw 2D frame (array or image path).
        i0
            Incident-flux monitor reading of the exposure (photons, or monitor counts
            that the absolute scale factor turns into photons).
        transmission, thickness_cm
            Sample transmission in (0, 1.5] and thickness in cm.
        background
            The empty cell: a Profile made by this method (no thickness) with the same
            scale factor, or a raw frame with ``background_i0`` and
            ``background_transmission``.
        scale
            Use this factor instead of :attr:`absolute_scale` (calibration uses factor 1).
        """
        scale = self.absolute_scale if scale is None else scale
        i0 = positive("I0", i0)
        monitor = absolute_monitor(i0, self.ai) / scale.factor
        norm = {"normalisation": "absolute", "absolute_scale": scale.provenance()}
        bkg_monitor = 1.0
        if background is not None and not isinstance(background, Profile):
            if background_i0 is None:
                raise ReductionError("an empty-cell frame needs its own I0 (background_i0)")
            bkg_monitor = absolute_monitor(positive("background I0", background_i0),
                                           self.ai) / scale.factor
        units = "1/cm" if thickness_cm is not None else "1/sr (per incident photon)"
        return self._reduce(frame, monitor, transmission, thickness_cm, background,
                            bkg_monitor, background_transmission, metadata, units,
                            {**norm, "i0": i0}, norm)

    def reduce(
        self,
        frame: Image,
        *,
        monitor: float = 1.0,
        transmission: float = 1.0,
        thickness_cm: float | None = None,
        background: Profile | Image | None = None,
        background_monitor: float = 1.0,
        background_transmission: float = 1.0,
        metadata: dict[str, Any] | None = None,
    ) -> Profile:
        """Reduce one frame to a :class:`Profile`.

        ``I = (I_frame / (monitor * T) - I_bkg / (monitor_bkg * T_bkg)) / thickness``,
        uncertainties added in quadrature.

        Parameters
        ----------
        frame
            Raw 2D frame (array or image path).
        monitor
            Incident-flux normalisation of the frame.
        transmission
            Sample transmission, in (0, 1.5].
        thickness_cm
            Sample thickness in cm; when given, I is divided by it (absolute units 1/cm if
            the monitor is calibrated in absolute flux).
        background
            Empty-cell contribution: a Profile reduced by this reducer (with its own
            transmission, no thickness) or a raw frame, reduced here with
            ``background_monitor`` and ``background_transmission``.
        metadata
            Copied into the profile's metadata.

        The result is labelled ``units: "arbitrary"``: absolute units need the incident
        photons and the pixel solid angle, which :meth:`reduce_absolute` applies.
        """
        norm = {"normalisation": "monitor"}
        return self._reduce(frame, monitor, transmission, thickness_cm, background,
                            background_monitor, background_transmission, metadata,
                            "arbitrary", norm, norm)

    def _reduce(self, frame, monitor, transmission, thickness_cm, background,
                background_monitor, background_transmission, metadata, units,
                corrections, normalisation) -> Profile:
        transmission = positive("transmission", transmission, MAX_TRANSMISSION)
        if thickness_cm is not None:
            thickness_cm = positive("thickness", thickness_cm)
        intensity, sigma = self.integrate(frame, monitor)
        term = None
        if background is not None:
            term = self._background_term(
                background,
                positive("background monitor", background_monitor),
                positive("background transmission", background_transmission,
                          MAX_TRANSMISSION),
                normalisation,
            )
        return self._profile(intensity, sigma, monitor, transmission, thickness_cm, term,
                             metadata, units, corrections)

    def _profile(self, intensity, sigma, monitor, transmission, thickness_cm, term,
                 metadata, units, corrections) -> Profile:
        """Apply the corrections after integration.

        The same arithmetic for one frame or a row of a batch, so both give the same
        numbers bit for bit.
        """
        intensity = intensity / transmission
        sigma = sigma / transmission
        bkg_info: dict[str, Any] | None = None
        if term is not None:
            i_b, s_b, bkg_info = term
            intensity = intensity - i_b
            sigma = np.hypot(sigma, s_b)
        if thickness_cm is not None:
            intensity = intensity / thickness_cm
            sigma = sigma / thickness_cm
        meta = {"units": units, **(metadata or {})}
        prov = self.provenance(monitor=float(monitor), transmission=transmission,
                               thickness_cm=thickness_cm, background=bkg_info, **corrections)
        return Profile(self.q.copy(), intensity, sigma, meta, prov)

    def _stack(self, frames: ArrayLike | Sequence[Image]) -> NDArray:
        if isinstance(frames, (list, tuple)):
            return np.stack([self.check_frame(f) for f in frames])
        stack = np.asarray(frames)
        if stack.ndim != 3:
            raise ReductionError(f"frames must be a (n, ny, nx) stack, got {stack.shape}")
        for f in stack:
            self.check_frame(f)
        return stack

    def reduce_many(
        self,
        frames: ArrayLike | Sequence[Image],
        *,
        monitors: ArrayLike | float = 1.0,
        transmission: float = 1.0,
        thickness_cm: float | None = None,
        background: Profile | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[Profile]:
        """Reduce a stack of frames ``(n, ny, nx)`` with the batch integrator.

        Same corrections as :meth:`reduce`; ``background`` must be a Profile here.

        Parameters
        ----------
        frames
            Raw frames: an ``(n, ny, nx)`` array or a sequence of frames or image paths.
        monitors
            Incident-flux normalisation: one value for all frames or one per frame.
        transmission, thickness_cm
            Sample transmission and thickness in cm, shared by all frames (as for
            :meth:`reduce`).
        background
            Empty-cell Profile reduced by this reducer, shared by all frames.
        metadata
            Copied into every profile's metadata.
        """
        stack = self._stack(frames)
        n = stack.shape[0]
        mons = per_frame("monitor", monitors, n)
        if self.method != "folded" or background is not None and not isinstance(
            background, Profile
        ):
            return [self.reduce(f, monitor=m, transmission=transmission,
                                thickness_cm=thickness_cm, background=background,
                                metadata=metadata) for f, m in zip(stack, mons, strict=True)]
        transmission = positive("transmission", transmission, MAX_TRANSMISSION)
        if thickness_cm is not None:
            thickness_cm = positive("thickness", thickness_cm)
        norm = {"normalisation": "monitor"}
        term = (None if background is None
                else self._background_term(background, 1.0, 1.0, norm))
        intensity, sigma = self._folded.integrate_many(stack, mons)
        return [self._profile(intensity[k], sigma[k], mons[k], transmission, thickness_cm,
                              term, metadata, "arbitrary", norm) for k in range(n)]

    def reduce_absolute_many(
        self,
        frames: ArrayLike | Sequence[Image],
        *,
        i0: ArrayLike | float,
        transmission: ArrayLike | float = 1.0,
        thickness_cm: Sequence[float | None] | float | None = None,
        background: Profile | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> list[Profile]:
        """Run :meth:`reduce_absolute` for a stack of frames with the batch integrator.

        The same Profiles, bit for bit, faster per frame.

        Parameters
        ----------
        frames
            Raw frames: an ``(n, ny, nx)`` array or a sequence of frames or image paths.
        i0, transmission, thickness_cm
            As for :meth:`reduce_absolute`; each is one value for all frames or one per
            frame.
        background
            The empty cell: a Profile made by :meth:`reduce_absolute`, shared by all
            frames.
        metadata
            Copied into every profile's metadata.
        """
        stack = self._stack(frames)
        n = stack.shape[0]
        i0s = per_frame("I0", i0, n)
        trans = per_frame("transmission", transmission, n, MAX_TRANSMISSION)
        thick = per_frame("thickness", thickness_cm, n, optional=True)
        if self.method != "folded" or background is not None and not isinstance(
            background, Profile
        ):
            return [self.reduce_absolute(f, i0=a, transmission=t, thickness_cm=d,
                                         background=background, metadata=metadata)
                    for f, a, t, d in zip(stack, i0s, trans, thick, strict=True)]
        scale = self.absolute_scale
        norm = {"normalisation": "absolute", "absolute_scale": scale.provenance()}
        mons = [absolute_monitor(a, self.ai) / scale.factor for a in i0s]
        term = None if background is None else self._background_term(background, 1.0, 1.0,
                                                                      norm)
        intensity, sigma = self._folded.integrate_many(stack, mons)
        return [self._profile(intensity[k], sigma[k], mons[k], trans[k], thick[k], term,
                              metadata, "1/cm" if thick[k] is not None
                              else "1/sr (per incident photon)", {**norm, "i0": i0s[k]})
                for k in range(n)]

