"""From scores to verdicts: conformal p-values, Benjamini-Hochberg, the paper's HyperScore.

A conformal p-value compares a new score with the scores of held-out normal profiles
(never used for training): ``p = (1 + #{calibration >= s}) / (n + 1)``. Under the null
(the profile is normal) it is super-uniform, so flagging ``p <= alpha`` has a false-
positive rate of at most alpha.

The HyperScore is the seed paper's display scale,
``100 * [1 + sigmoid(beta * ln V + gamma) ** kappa]`` with beta = 5, gamma = -ln 2,
kappa = 2, applied to the calibrated confidence ``V = 1 - p``. It is a monotone
relabelling of V into [100, 111.1]; it is not a probability.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["conformal_p_values", "benjamini_hochberg", "hyperscore"]


def conformal_p_values(scores: ArrayLike, calibration: ArrayLike) -> NDArray[np.float64]:
    """Conformal p-values of ``scores`` (higher = more anomalous) against calibration scores."""
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    s = np.atleast_1d(np.asarray(scores, dtype=np.float64))
    if cal.size == 0:
        raise ValueError("no calibration scores")
    n_ge = cal.size - np.searchsorted(cal, s, side="left")
    return (1.0 + n_ge) / (cal.size + 1.0)


def benjamini_hochberg(p_values: ArrayLike, alpha: float) -> NDArray[np.bool_]:
    """Discoveries at false-discovery rate ``alpha`` (Benjamini-Hochberg step-up)."""
    p = np.asarray(p_values, dtype=np.float64)
    n = p.size
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p)
    thresholds = alpha * np.arange(1, n + 1) / n
    below = p[order] <= thresholds
    reject = np.zeros(n, dtype=bool)
    if below.any():
        k = np.max(np.nonzero(below)[0])
        reject[order[: k + 1]] = True
    return reject


def hyperscore(
    confidence: ArrayLike, beta: float = 5.0, gamma: float = -np.log(2.0), kappa: float = 2.0
) -> NDArray[np.float64]:
    """Return the paper's HyperScore of a confidence V in (0, 1].

    A display scale in [100, 111.1]: ``100 * (1 + sigmoid(beta * ln V + gamma) ** kappa)``.

    Parameters
    ----------
    confidence
        V, clipped to [1e-12, 1].
    beta, gamma, kappa
        The paper's constants.
    """
    v = np.clip(np.asarray(confidence, dtype=np.float64), 1e-12, 1.0)
    sig = 1.0 / (1.0 + np.exp(-(beta * np.log(v) + gamma)))
    return 100.0 * (1.0 + sig**kappa)
