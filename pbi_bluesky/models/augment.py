"""Synthetic anomaly negatives from the user's own normal profiles.

Physically meaningful transforms on resampled curves (grid ``q``): absolute scale
(thickness/transmission), a low-q power-law upturn (contamination), a peak shift
(coarsening / composition), a peak broadening (loss of order), a background offset.
With several recipes, two recipe-level negatives join them (:data:`RECIPE_NEGATIVES`).
They teach the embedding which directions away from a recipe matter.

These transforms mirror the simulator's anomaly catalogue closely (scale 10-50 % against
thickness errors of 15-50 %, upturn exponents 3-4 in both, drift towards the nearest
recipe): ``benchmarks/bench_models.py`` therefore also reports leave-one-kind-out
retraining and a second, independently written physics family whose anomaly kinds have
no counterpart here.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter1d

__all__ = ["NEGATIVES", "RECIPE_NEGATIVES", "TRANSFORMS", "synthetic_anomaly",
           "training_negatives"]

TRANSFORMS = ("scale", "upturn", "shift", "broaden", "offset")
RECIPE_NEGATIVES = ("wrong_recipe", "drift")
"""Negatives that need a second recipe: a curve of another recipe presented as this one,
and a curve moved part of the way towards the nearest other recipe's reference."""
NEGATIVES = (*TRANSFORMS, *RECIPE_NEGATIVES)
"""Every kind of synthetic negative training can use (``TrainingConfig.negatives``)."""


def synthetic_anomaly(
    q: NDArray, intensity: NDArray, sigma: NDArray, kind: str, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Return a transformed copy of one resampled curve (same grid), with fresh noise added.

    Parameters
    ----------
    q
        The model grid (1/angstrom).
    intensity, sigma
        One curve and its uncertainty on that grid; the added noise is half of ``sigma``.
    kind
        One of :data:`TRANSFORMS`.
    rng
        Draws the transform's size and the noise.

    Raises
    ------
    ValueError
        For a kind not in :data:`TRANSFORMS`.
    """
    i = np.asarray(intensity, dtype=np.float64)
    level = np.median(np.abs(i[-len(i) // 8 :])) + 1e-12
    if kind == "scale":
        out = i * (1 + rng.choice([-1, 1]) * rng.uniform(0.1, 0.5))
    elif kind == "upturn":
        p = rng.uniform(3.0, 4.0)
        out = i + rng.uniform(0.2, 3.0) * abs(i[0]) * (q / q[0]) ** (-p)
    elif kind == "shift":
        factor = 1 + rng.choice([-1, 1]) * rng.uniform(0.05, 0.35)
        out = np.interp(np.log(q * factor), np.log(q), i)
    elif kind == "broaden":
        out = gaussian_filter1d(i, rng.uniform(3.0, 12.0), mode="nearest")
    elif kind == "offset":
        out = i + rng.choice([-1, 1]) * rng.uniform(0.1, 0.5) * level
    else:
        raise ValueError(f"unknown transform {kind!r}; known: {', '.join(TRANSFORMS)}")
    return out + rng.normal(0.0, 1.0, i.shape) * sigma * 0.5


def training_negatives(
    q: NDArray, intensity: NDArray, sigma: NDArray, labels: NDArray, references: NDArray,
    nearest: NDArray, kinds: tuple[str, ...], per_normal: float, rng: np.random.Generator,
) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """Return normals plus synthetic negatives, with triplet labels.

    Returns curves, sigmas, the recipe each curve is presented as, and triplet labels:
    normals carry their recipe index ``r``; a negative of kind ``j`` presented as recipe
    ``r`` carries ``n_recipes + r * len(NEGATIVES) + j``, except that the two recipe-level
    negatives share one class ("looks like a neighbouring recipe": separate classes for
    near-identical inputs stalled training). Recipe-level kinds are skipped with one
    recipe. Drift steps of 15 % and less were tried: they overlap normal scatter and one
    seed's training then stalled at a high loss; 30-80 % is used.

    Parameters
    ----------
    q
        The model grid (1/angstrom).
    intensity, sigma, labels
        The training normals on that grid and their recipe indices.
    references
        Reference curve of each recipe, shape (n_recipes, npt).
    nearest
        Index of the nearest other recipe of each recipe (the target of ``drift``).
    kinds
        Negative kinds to draw from (:data:`NEGATIVES`).
    per_normal
        Synthetic negatives per normal curve.
    rng
        Draws which curves are transformed, the kinds and the transforms.
    """
    n_rec = len(references)
    usable = [k for k in kinds if k in TRANSFORMS or n_rec > 1]
    xs, ss, recipe_idx, tl = [intensity], [sigma], [labels], [labels]
    n_syn = int(per_normal * len(intensity)) if usable else 0
    picks = rng.integers(0, len(intensity), n_syn)
    chosen = rng.integers(0, max(len(usable), 1), n_syn)
    syn, syn_s, syn_r, syn_l = [], [], [], []
    for j, c in zip(picks, chosen, strict=True):
        kind = usable[c]
        r = int(labels[j])
        if kind == "wrong_recipe":  # a curve of another recipe, labelled as r
            r = int(rng.choice([k for k in range(n_rec) if k != labels[j]]))
            curve = intensity[j]
        elif kind == "drift":  # part of the way to the nearest recipe
            step = references[nearest[r]] - references[r]
            curve = intensity[j] + rng.uniform(0.3, 0.8) * step
        else:
            curve = synthetic_anomaly(q, intensity[j], sigma[j], kind, rng)
        syn.append(curve)
        syn_s.append(sigma[j])
        syn_r.append(r)
        cls = NEGATIVES.index("wrong_recipe" if kind in RECIPE_NEGATIVES else kind)
        syn_l.append(n_rec + r * len(NEGATIVES) + cls)
    if syn:
        xs.append(np.array(syn))
        ss.append(np.array(syn_s))
        recipe_idx.append(np.array(syn_r))
        tl.append(np.array(syn_l))
    return (np.concatenate(xs), np.concatenate(ss), np.concatenate(recipe_idx),
            np.concatenate(tl))
