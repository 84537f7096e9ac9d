"""Per-recipe Gaussian likelihood of a curve against normal batch scatter and its own noise.

A recipe's normal curves vary from batch to batch along a few smooth directions (a little
more or less of each phase, another domain spacing, thickness) and, per bin, by counting
noise. :class:`RecipeLikelihood` models a normal curve ``x`` (resampled, in 1/cm) as

    x = mu + S B^T a + e,    a ~ N(0, Lambda),    e_i ~ N(0, sigma_i^2 + tau_i^2)

with ``mu`` the recipe's mean curve, ``S`` the per-bin spread of its training normals
(so the principal directions ``B`` are found in standardised units), ``Lambda`` their
variances, ``sigma`` **the curve's own measurement uncertainty** and ``tau^2`` the batch
variance the ``m`` directions leave per bin (what the training normals show beyond their
mean counting noise). Two statistics follow, both using ``sigma``:

* ``log(T2 / m + SPE)`` -- Hotelling's T-squared along the ``m`` normal directions plus
  the squared residual off them, each bin taken against its batch variance ``tau^2`` plus
  the curve's own ``sigma^2``: it weighs every bin by how well it is measured and how much
  normal batches scatter there. A noisier curve (shorter exposure) is not called anomalous
  for its noise; a small coherent change in well-measured bins is.
* ``low_q`` -- a one-sided matched filter for a low-q upturn (dust, aggregates, voids,
  beam damage): the largest whitened projection of the residual onto power laws
  ``(q / q_min)^-p``, p in {2, 3, 4}, in units of its null standard deviation (a z-score:
  N(0, 1) for normal curves, large and positive for an upturn, however faint, that batch
  scatter does not produce).

Everything is plain arrays, stored in the model bundle without pickle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["RecipeLikelihood", "UPTURN_EXPONENTS"]

UPTURN_EXPONENTS = (2.0, 3.0, 4.0)


@dataclass
class RecipeLikelihood:
    """Gaussian model of one recipe's normal curves (arrays only, no pickle)."""

    mean: NDArray[np.float64]  # (npt,) mu
    spread: NDArray[np.float64]  # (npt,) S, per-bin std of the training normals
    basis: NDArray[np.float64]  # (m, npt) orthonormal directions (standardised units)
    variance: NDArray[np.float64]  # (m,) Lambda
    batch_variance: NDArray[np.float64]  # (npt,) tau^2 / S^2 (standardised units)
    templates: NDArray[np.float64]  # (k, npt) upturn shapes / S
    noise_variance: NDArray[np.float64]  # (npt,) the training normals' mean sigma^2 / S^2

    @classmethod
    def fit(cls, intensity: NDArray, sigma: NDArray, q: NDArray,
            components: int = 5) -> RecipeLikelihood:
        """Fit on one recipe's training normals, arrays (n, npt).

        Parameters
        ----------
        intensity, sigma
            The recipe's training normals and their uncertainties.
        q
            The model grid (1/angstrom), for the low-q upturn templates.
        components
            Principal directions of the standardised batch scatter kept; capped at n - 2.
        """
        x = np.asarray(intensity, dtype=np.float64)
        s = np.asarray(sigma, dtype=np.float64)
        if x.ndim != 2 or len(x) < 3:
            raise ValueError(f"need at least 3 curves of shape (n, npt), got {x.shape}")
        mean = x.mean(0)
        spread = x.std(0)
        spread = np.maximum(spread, 1e-6 * np.abs(mean).max() + 1e-30)
        z = (x - mean) / spread
        m = max(0, min(components, len(x) - 2))
        _, singular, vt = np.linalg.svd(z, full_matrices=False)
        basis = vt[:m]
        variance = np.maximum(singular[:m] ** 2 / (len(x) - 1), 1e-9)
        residual = z - z @ basis.T @ basis
        left = (residual**2).sum(0) / max(len(x) - 1 - m, 1)
        noise = np.mean(s**2, axis=0) / spread**2
        # the batch part of what the directions leave: beyond the mean counting noise, but
        # never below a tenth of it (a bin is never trusted more than the data show)
        batch = np.maximum(left - noise, 0.1 * left)
        qq = np.asarray(q, dtype=np.float64)
        templates = np.array([(qq / qq[0]) ** -p for p in UPTURN_EXPONENTS]) / spread
        return cls(mean, spread, basis, variance, batch, templates, noise)

    def _solve(self, intensity: NDArray, sigma: NDArray):
        """Standardised residuals z, noise diagonals d and C^-1 applied via Woodbury."""
        z = (np.atleast_2d(intensity) - self.mean) / self.spread
        d = (np.atleast_2d(sigma) / self.spread) ** 2 + self.batch_variance  # (n, npt)
        b = self.basis  # (m, npt)
        inv_d = 1.0 / d
        # small m x m system per curve: K = Lambda^-1 + B D^-1 B^T
        k = np.einsum("mi,ni,li->nml", b, inv_d, b) + np.diag(1.0 / self.variance)[None]
        return z, d, inv_d, k

    def _apply_inverse(self, v: NDArray, inv_d: NDArray, k: NDArray) -> NDArray:
        """C^-1 v for each curve (v: (n, npt) or (n, k, npt))."""
        b = self.basis
        if v.ndim == 2:
            w = v * inv_d
            if len(b) == 0:
                return w
            coef = np.linalg.solve(k, np.einsum("mi,ni->nm", b, w)[..., None])[..., 0]
            return w - inv_d * np.einsum("nm,mi->ni", coef, b)
        w = v * inv_d[:, None, :]
        if len(b) == 0:
            return w
        rhs = np.einsum("mi,nki->nmk", b, w)
        coef = np.linalg.solve(k, rhs)  # (n, m, k)
        return w - inv_d[:, None, :] * np.einsum("nmk,mi->nki", coef, b)

    def statistics(self, intensity: NDArray, sigma: NDArray) -> tuple[NDArray, NDArray]:
        """(``log(T2 / m + SPE)``, low-q upturn z-score) of each curve.

        T2 is the curve's Hotelling distance along the normal directions, SPE the mean
        squared residual off them, each bin against its batch variance plus the curve's
        own noise. (No log-determinant term: a noisier measurement of a normal specimen is
        not less normal, and under the null both terms do not grow with sigma.)
        """
        z, d, inv_d, k = self._solve(intensity, sigma)
        coords = z @ self.basis.T
        m = max(len(self.variance), 1)
        # a curve noisier than the training normals scatters more along every direction
        excess = np.maximum((np.atleast_2d(sigma) / self.spread) ** 2 - self.noise_variance, 0)
        t2 = (coords**2 / (self.variance + excess @ (self.basis**2).T)).sum(1) / m
        spe = ((z - coords @ self.basis) ** 2 / d).mean(1)
        stat = np.log(t2 + spe + 1e-12)
        t = np.broadcast_to(self.templates, (len(z), *self.templates.shape))
        ct = self._apply_inverse(np.array(t), inv_d, k)  # (n, k, npt)
        num = np.einsum("nki,ni->nk", ct, z)
        den = np.sqrt(np.maximum(np.einsum("nki,ki->nk", ct, self.templates), 1e-300))
        return stat, (num / den).max(1)

    def to_arrays(self, prefix: str) -> dict[str, NDArray]:
        """Return the fitted arrays, named ``<prefix>_<field>`` (for a model bundle)."""
        return {f"{prefix}_mean": self.mean, f"{prefix}_spread": self.spread,
                f"{prefix}_basis": self.basis, f"{prefix}_variance": self.variance,
                f"{prefix}_batch_variance": self.batch_variance,
                f"{prefix}_templates": self.templates,
                f"{prefix}_noise_variance": self.noise_variance}

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray], prefix: str) -> RecipeLikelihood:
        """Rebuild from the arrays :meth:`to_arrays` wrote under ``prefix``."""
        return cls(arrays[f"{prefix}_mean"], arrays[f"{prefix}_spread"],
                   arrays[f"{prefix}_basis"], arrays[f"{prefix}_variance"],
                   arrays[f"{prefix}_batch_variance"], arrays[f"{prefix}_templates"],
                   arrays[f"{prefix}_noise_variance"])
