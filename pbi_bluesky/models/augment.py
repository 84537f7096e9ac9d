"""Synthetic anomaly negatives from the user's own normal profiles.

Physically meaningful transforms on resampled curves (grid ``q``): absolute scale
(thickness/transmission), a low-q power-law upturn (contamination), a peak shift
(coarsening / composition), a peak broadening (loss of order), a background offset.
They teach the embedding which directions away from a recipe matter.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter1d

__all__ = ["TRANSFORMS", "synthetic_anomaly"]

TRANSFORMS = ("scale", "upturn", "shift", "broaden", "offset")


def synthetic_anomaly(
    q: NDArray, intensity: NDArray, sigma: NDArray, kind: str, rng: np.random.Generator
) -> NDArray[np.float64]:
    """A transformed copy of one resampled curve (same grid), with fresh noise added."""
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
