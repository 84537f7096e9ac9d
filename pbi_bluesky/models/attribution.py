"""Shapley attributions of an anomaly over physical descriptors.

For a profile of expected recipe r, each descriptor is standardised against r's normal
population, ``z = (f - mu_r) / s_r``. The explained quantity is the descriptor-space
Mahalanobis distance ``g(z) = z^T R_r^-1 z`` (R_r the descriptors' correlation matrix in
r's normals, shrunk towards identity), and the value of a coalition S is g with the
descriptors outside S held at their normal mean (z = 0). With 7 descriptors the Shapley
values are computed exactly over all 128 coalitions; they sum to g(z). Each descriptor
is reported with its z-score too, so the numbers can be read without the game theory.
"""

from __future__ import annotations

from itertools import combinations
from math import factorial

import numpy as np
from numpy.typing import NDArray

from pbi_bluesky.models.descriptors import DESCRIPTORS

__all__ = ["DescriptorPopulation", "exact_shapley"]


def exact_shapley(z: NDArray, precision: NDArray) -> NDArray[np.float64]:
    """Exact Shapley values of ``v(S) = z_S^T P_SS z_S`` for a precision matrix ``P``."""
    n = len(z)
    phi = np.zeros(n)
    weights = [factorial(k) * factorial(n - k - 1) / factorial(n) for k in range(n)]
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for subset in combinations(others, k):
                s = list(subset)
                with_i = s + [i]
                v_with = z[with_i] @ precision[np.ix_(with_i, with_i)] @ z[with_i]
                v_without = z[s] @ precision[np.ix_(s, s)] @ z[s] if s else 0.0
                phi[i] += weights[k] * (v_with - v_without)
    return phi


class DescriptorPopulation:
    """Per-recipe descriptor statistics of normal profiles (plain arrays)."""

    def __init__(self, mean: NDArray, std: NDArray, precision: NDArray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)  # (n_recipes, n_desc)
        self.std = np.asarray(std, dtype=np.float64)
        self.precision = np.asarray(precision, dtype=np.float64)  # (n_recipes, n, n)

    @classmethod
    def fit(cls, descriptors: NDArray, recipe_idx: NDArray, n_recipes: int,
            shrinkage: float = 0.3) -> DescriptorPopulation:
        """Fit each recipe's descriptor mean, spread and shrunk correlation precision.

        Parameters
        ----------
        descriptors
            Descriptors of the normal profiles, shape (n, n_desc).
        recipe_idx
            Recipe index of each profile.
        n_recipes
            Number of recipes; one with fewer than 3 profiles keeps mean 0, std 1 and an
            identity precision.
        shrinkage
            Weight of the identity in the correlation matrix before it is inverted.
        """
        n_desc = descriptors.shape[1]
        mean = np.zeros((n_recipes, n_desc))
        std = np.ones((n_recipes, n_desc))
        precision = np.tile(np.eye(n_desc), (n_recipes, 1, 1))
        for k in range(n_recipes):
            f = descriptors[recipe_idx == k]
            if len(f) < 3:
                continue
            mean[k] = f.mean(0)
            std[k] = f.std(0)
            corr = np.corrcoef(((f - mean[k]) / std[k]).T)
            corr = np.nan_to_num(corr)
            corr = (1 - shrinkage) * corr + shrinkage * np.eye(n_desc)
            precision[k] = np.linalg.inv(corr)
        # a descriptor that is pinned in one recipe (the Porod constant of a pure polymer
        # sits at zero) must not turn every change into an astronomic z-score: floor each
        # std at 1 % of the descriptor's typical magnitude across recipes
        floor = 0.01 * np.median(np.abs(mean), axis=0) + 1e-30
        std = np.maximum(std, floor)
        return cls(mean, std, precision)

    def explain(self, descriptors: NDArray, recipe: int) -> dict[str, dict[str, float]]:
        """Value, z-score and Shapley value of every descriptor, largest |Shapley| first."""
        z = (descriptors - self.mean[recipe]) / self.std[recipe]
        phi = exact_shapley(z, self.precision[recipe])
        order = np.argsort(-np.abs(phi))
        return {
            DESCRIPTORS[i]: {"value": float(descriptors[i]), "z": float(z[i]),
                             "shapley": float(phi[i])}
            for i in order
        }
