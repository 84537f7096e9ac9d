"""Per-recipe linear model of normal variation: PCA with Hotelling T-squared and SPE.

Batch-to-batch variation of a recipe (a little more or less of each phase, a slightly
different domain spacing, thickness) moves its curves along a few smooth directions.
A principal-component model of the recipe's training normals, in the standardised
model-input space (:class:`~.representation.FeatureScaler`), captures them:

* ``T2`` -- Hotelling's T-squared: how far along the known directions of variation a
  curve lies, in units of the normal spread in each direction;
* ``SPE`` -- squared prediction error: what is left outside those directions, per bin in
  units of the normals' own left-over variance.

The statistic is ``log(T2 / m + SPE)``, the classical pair of multivariate process
control, pooled into one number; with the curves' measurement uncertainties the SPE of a
curve noisier than the training normals is taken against its own noise. It complements
the CNN embedding: the embedding is good at *shape* changes (an upturn, a broadened
peak), the subspace model at small coherent shifts that normal scatter never produces (a
few wt% of composition drift). Everything is plain arrays, stored in the model bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["RecipeSubspace"]


@dataclass
class RecipeSubspace:
    """PCA model of one recipe's normal curves (arrays only, no pickle)."""

    mean: NDArray[np.float64]
    basis: NDArray[np.float64]  # (m, npt), orthonormal rows
    variance: NDArray[np.float64]  # (m,) variance of the normals along each row
    residual_variance: NDArray[np.float64]  # (npt,) left-over variance per bin
    noise_variance: NDArray[np.float64] | None = None  # (npt,) mean counting noise, if known

    @classmethod
    def fit(cls, features: NDArray, components: int = 3,
            feature_sigma: NDArray | None = None) -> RecipeSubspace:
        """Fit on standardised curves of shape (n, npt); ``components`` is capped at n - 2.

        ``feature_sigma`` (same shape): each curve's measurement uncertainty in feature
        units; with it, :meth:`statistic` counts a curve noisier than the training normals
        against its own noise, not as an anomaly.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or len(x) < 3:
            raise ValueError(f"need at least 3 curves of shape (n, npt), got {x.shape}")
        m = max(0, min(components, len(x) - 2))
        mean = x.mean(0)
        _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
        basis = vt[:m]
        variance = np.maximum(singular[:m] ** 2 / (len(x) - 1), 1e-12)
        centred = x - mean
        residual = centred - centred @ basis.T @ basis
        residual_variance = np.maximum((residual**2).mean(0), 1e-9)
        noise = None if feature_sigma is None else np.mean(np.asarray(feature_sigma) ** 2, 0)
        return cls(mean, basis, variance, residual_variance, noise)

    def statistic(self, features: NDArray,
                  feature_sigma: NDArray | None = None) -> NDArray[np.float64]:
        """``log(T2 / m + SPE)`` of each curve (higher = further from normal).

        With ``feature_sigma`` (and a model fitted with it), the curve's noise beyond the
        training normals' mean noise is added to the variance of each bin (SPE) and, as
        projected, of each direction (T2): a short exposure of a normal sample is not an
        anomaly.
        """
        centred = np.atleast_2d(np.asarray(features, dtype=np.float64)) - self.mean
        coords = centred @ self.basis.T
        m = max(len(self.variance), 1)
        var, along = self.residual_variance, self.variance
        if feature_sigma is not None and self.noise_variance is not None:
            excess = np.maximum(
                np.atleast_2d(np.asarray(feature_sigma)) ** 2 - self.noise_variance, 0.0)
            var = var + excess
            along = along + excess @ (self.basis**2).T  # the extra noise along each direction
        t2 = (coords**2 / along).sum(1) / m
        spe = ((centred - coords @ self.basis) ** 2 / var).mean(1)
        return np.log(t2 + spe + 1e-12)

    def to_arrays(self, prefix: str) -> dict[str, NDArray]:
        """Arrays for a bundle, names starting with ``prefix``."""
        out = {f"{prefix}_mean": self.mean, f"{prefix}_basis": self.basis,
               f"{prefix}_variance": self.variance,
               f"{prefix}_residual_variance": self.residual_variance}
        if self.noise_variance is not None:
            out[f"{prefix}_noise_variance"] = self.noise_variance
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray], prefix: str) -> RecipeSubspace:
        """Inverse of :meth:`to_arrays`."""
        return cls(arrays[f"{prefix}_mean"], arrays[f"{prefix}_basis"],
                   arrays[f"{prefix}_variance"], arrays[f"{prefix}_residual_variance"],
                   arrays.get(f"{prefix}_noise_variance"))
