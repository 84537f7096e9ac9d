"""How a profile becomes model input: a fixed log-spaced q grid and noise-aware features.

* Any profile is resampled (linear interpolation in log q) onto the model's own grid; a
  profile that covers too little of the grid is refused with :class:`CoverageError`.
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

import numpy as np
from numpy.typing import NDArray

from pbi_bluesky.profile import Profile

__all__ = ["CoverageError", "QGrid", "FeatureScaler"]


class CoverageError(ValueError):
    """A profile covers too little of the model's q grid."""


@dataclass(frozen=True)
class QGrid:
    """The model's fixed, log-spaced q grid (1/angstrom)."""

    q_min: float = 0.008
    q_max: float = 0.19
    npt: int = 256
    min_coverage: float = 0.9

    @property
    def q(self) -> NDArray[np.float64]:
        """Grid points."""
        return np.geomspace(self.q_min, self.q_max, self.npt)

    def resample(self, profile: Profile) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Intensity and sigma of ``profile`` on the grid.

        Raises
        ------
        CoverageError
            If the profile's valid q range covers less than ``min_coverage`` of the grid
            (in log q), or any grid point lies in a gap without data.
        """
        ok = profile.valid
        if ok.sum() < 2:
            raise CoverageError("profile has fewer than 2 valid bins")
        q_src = profile.q_inv_angstrom[ok]
        lo, hi = q_src[0], q_src[-1]
        grid = self.q
        inside = (grid >= lo * (1 - 1e-9)) & (grid <= hi * (1 + 1e-9))
        coverage = inside.mean()
        if coverage < self.min_coverage:
            raise CoverageError(
                f"profile covers q = {lo:.4g}..{hi:.4g} 1/A, only {100 * coverage:.0f}% of the "
                f"model grid {self.q_min:.4g}..{self.q_max:.4g} 1/A "
                f"(needs {100 * self.min_coverage:.0f}%)"
            )
        log_src, log_grid = np.log(q_src), np.log(grid)
        intensity = np.interp(log_grid, log_src, profile.intensity[ok])
        sigma = np.interp(log_grid, log_src, profile.sigma[ok])
        # outside the measured range (at most 1 - min_coverage of the grid) hold the end
        # values but flag them as very uncertain so they carry no weight
        big = 1e3 * (np.nanmax(np.abs(profile.intensity[ok])) + 1.0)
        sigma = np.where(inside, sigma, big)
        return intensity, sigma


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


def residual_z(
    intensity: NDArray, sigma: NDArray, reference: NDArray, scatter: NDArray
) -> NDArray[np.float64]:
    """Residual to a reference curve in units of the combined noise and batch scatter."""
    return (np.asarray(intensity) - reference) / np.sqrt(np.asarray(sigma) ** 2 + scatter**2)
