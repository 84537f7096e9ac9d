"""How a profile becomes model input: a fixed log-spaced q grid and noise-aware features.

* Any profile is resampled (linear interpolation in log q) onto the model's own grid. Every
  grid point must be measured: a profile that does not cover the whole grid, or has a gap
  without data inside it, is refused with :class:`CoverageError` (nothing is extrapolated
  or bridged, so no invented value reaches any part of the score).
* Intensities are compressed with ``asinh(I / s_q)``, ``s_q`` being the typical noise of
  the training set in that q bin: log-like where the signal is strong, linear around zero,
  so background-subtracted data with zero or negative intensities pass unchanged (no log of
  a negative number, no clipping, no dropped bins). The result is standardised per bin with
  training statistics. Absolute intensity is kept: nothing is scaled to [0, 1].
* With an expected recipe, the residual to that recipe's reference curve, divided by the
  measurement noise and the recipe's batch-to-batch scatter, is a second input channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from pbi_bluesky.profile import Profile

__all__ = ["CoverageError", "QGrid", "FeatureScaler"]


class CoverageError(ValueError):
    """A profile does not cover the model's q grid, or has a gap without data inside it."""


@dataclass(frozen=True)
class QGrid:
    """The model's fixed, log-spaced q grid (1/angstrom).

    Every grid point must be measured: :meth:`resample` interpolates between measured
    bins and never extrapolates or bridges a gap. ``min_coverage`` is kept for bundles
    written before format 3, which stored 0.9 and held the end values of a profile that
    covered 90 % of the grid; such profiles are now refused (use :meth:`for_profiles` to
    choose a grid the training data cover).
    """

    q_min: float = 0.008
    q_max: float = 0.19
    npt: int = 256
    min_coverage: float = 1.0

    @cached_property
    def q(self) -> NDArray[np.float64]:
        """Grid points (computed once; read-only)."""
        q = np.geomspace(self.q_min, self.q_max, self.npt)
        q.flags.writeable = False
        return q

    @cached_property
    def _log_q(self) -> NDArray[np.float64]:
        log_q = np.log(self.q)
        log_q.flags.writeable = False
        return log_q

    @classmethod
    def for_profiles(cls, profiles: list[Profile], *, npt: int = 256,
                     preferred: tuple[float, float] = (0.008, 0.19),
                     min_span: float = 4.0) -> QGrid:
        """Return a grid every profile covers.

        The ``preferred`` grid if every profile covers it, else the widest range inside it
        that every profile covers (at least a factor ``min_span`` in q).

        Parameters
        ----------
        profiles
            The profiles to cover.
        npt
            Number of grid points.
        preferred
            The q range wanted (1/angstrom).
        min_span
            Smallest acceptable ratio of the range's ends.

        Raises
        ------
        CoverageError
            If the profiles share no q range of that span.
        """
        lo, hi = preferred
        for p in profiles:
            ok = p.valid
            if ok.sum() < 2:
                raise CoverageError("a profile has fewer than 2 valid bins")
            q = p.q_inv_angstrom[ok]
            # a hair inside a shrunk end, so every grid point is bracketed by data
            if q[0] > lo:
                lo = float(q[0]) * (1 + 1e-9)
            if q[-1] < hi:
                hi = float(q[-1]) * (1 - 1e-9)
        if not hi > min_span * lo:
            raise CoverageError(
                f"the profiles share only q = {lo:.4g}..{hi:.4g} 1/A inside the preferred "
                f"{preferred[0]:.4g}..{preferred[1]:.4g} 1/A (need a factor {min_span:g} in q)")
        return cls(q_min=lo, q_max=hi, npt=npt)

    def resample(self, profile: Profile) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Intensity and sigma of ``profile`` on the grid (linear interpolation in log q).

        Raises
        ------
        CoverageError
            If the profile's measured q range does not cover the whole grid, or a grid
            point lies in a gap without data inside it: invalid (NaN) bins between the
            measured points that bracket it, or a step between measured points much wider
            than the steps around it. Nothing is extrapolated or bridged.
        """
        ok = profile.valid
        if ok.sum() < 2:
            raise CoverageError("profile has fewer than 2 valid bins")
        q_all = profile.q_inv_angstrom
        q_src = q_all[ok]
        lo, hi = q_src[0], q_src[-1]
        grid = self.q
        tol = 1e-9
        if grid[0] < lo * (1 - tol) or grid[-1] > hi * (1 + tol):
            inside = (grid >= lo * (1 - tol)) & (grid <= hi * (1 + tol))
            raise CoverageError(
                f"profile covers q = {lo:.4g}..{hi:.4g} 1/A, only {100 * inside.mean():.0f}% "
                f"of the model grid {self.q_min:.4g}..{self.q_max:.4g} 1/A; every grid point "
                "must be measured (nothing is extrapolated): measure the full range or train "
                "a model on a grid this data covers (pbi train --qmin/--qmax)")
        self._check_gaps(q_all, ok, grid)
        log_src, log_grid = np.log(q_src), self._log_q
        intensity = np.interp(log_grid, log_src, profile.intensity[ok])
        sigma = np.interp(log_grid, log_src, profile.sigma[ok])
        return intensity, sigma

    @staticmethod
    def _check_gaps(q_all: NDArray, ok: NDArray, grid: NDArray) -> None:
        """Refuse grid points bracketed by measured bins with a gap between them."""
        valid_pos = np.nonzero(ok)[0]
        q_src = q_all[valid_pos]
        # the measured interval holding each grid point: src[j] <= g <= src[j + 1]
        j = np.clip(np.searchsorted(q_src, grid, side="right") - 1, 0, len(q_src) - 2)
        used = np.unique(j)
        # invalid source bins strictly between the two bracketing measured bins
        holes = valid_pos[used + 1] - valid_pos[used] > 1
        # or a step much wider than its neighbours (points simply absent from the file)
        step = np.diff(np.log(q_src))
        prev = np.r_[step[0], step[:-1]]
        nxt = np.r_[step[1:], step[-1]]
        grid_step = float(np.log(grid[1] / grid[0])) if len(grid) > 1 else 0.0
        wide = (step[used] > 3.0 * np.maximum(prev[used], nxt[used])) & (
            step[used] > grid_step)
        bad = used[holes | wide]
        if bad.size:
            k = int(bad[0])
            n_missing = int(np.sum(valid_pos[bad + 1] - valid_pos[bad] - 1))
            raise CoverageError(
                f"profile has a gap without data inside the model's q range at q = "
                f"{q_src[k]:.4g}..{q_src[k + 1]:.4g} 1/A ({len(bad)} gap(s), {n_missing} "
                "invalid bin(s)); grid points there would be invented, so the curve is "
                "refused")


@dataclass
class FeatureScaler:
    """Training statistics that turn resampled curves into standardised model input.

    Attributes are plain arrays so a model bundle stores them without pickle.
    """

    noise_scale: NDArray[np.float64]
    mean: NDArray[np.float64]
    std: NDArray[np.float64]

    @classmethod
    def fit(cls, intensity: NDArray, sigma: NDArray) -> FeatureScaler:
        """Fit on training arrays of shape (n, npt)."""
        noise = np.median(sigma, axis=0)
        floor = 1e-6 * np.max(np.abs(intensity)) + 1e-30
        noise = np.maximum(noise, floor)
        x = np.arcsinh(intensity / noise)
        std = x.std(axis=0)
        return cls(noise, x.mean(axis=0), np.maximum(std, 1e-3))

    def transform(self, intensity: NDArray) -> NDArray[np.float32]:
        """Standardised asinh intensity, shape (n, npt)."""
        x = np.arcsinh(np.asarray(intensity) / self.noise_scale)
        return ((x - self.mean) / self.std).astype(np.float32)

    def transform_sigma(self, intensity: NDArray, sigma: NDArray) -> NDArray[np.float64]:
        """Measurement uncertainty in the units of :meth:`transform` (first order)."""
        i = np.asarray(intensity, dtype=np.float64)
        return np.asarray(sigma) / (self.std * np.sqrt(self.noise_scale**2 + i**2))


def residual_z(
    intensity: NDArray, sigma: NDArray, reference: NDArray, scatter: NDArray
) -> NDArray[np.float64]:
    """Residual to a reference curve in units of the combined noise and batch scatter."""
    return (np.asarray(intensity) - reference) / np.sqrt(np.asarray(sigma) ** 2 + scatter**2)
