"""Ranking flags past the conformal floor: an exponential tail fitted to calibration scores.

The exact conformal p-value of :mod:`pbi_bluesky.models.conformal` stops at ``1 / (n + 1)``;
:func:`tail_fit` and :func:`tail_p_estimate` give an *estimate* beyond it, labelled as such
wherever it is shown (``pbi catalog flagged``, the review page).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["TAIL_FRACTION", "TAIL_MIN_EXCEEDANCES", "tail_fit", "tail_p_estimate"]

TAIL_MIN_EXCEEDANCES = 5
"""Fewest top calibration scores a tail fit uses (below that no estimate is made)."""
TAIL_FRACTION = 0.2
"""Share of the calibration scores (at least :data:`TAIL_MIN_EXCEEDANCES`) the tail fit
uses: the top ``k`` scores, as excesses over the ``k+1``-th largest."""


def tail_fit(scores: NDArray) -> dict[str, Any] | None:
    """Fit an exponential tail to the top calibration scores, for ranking p-value estimates.

    The exact conformal p-value stops at ``1 / (n + 1)``: every curve scoring above all
    calibration normals gets the same number. To rank such curves, the top ``k`` scores
    (:data:`TAIL_FRACTION` of them, at least :data:`TAIL_MIN_EXCEEDANCES`) are taken as
    excesses over ``u``, the ``k+1``-th largest score, and fitted by an exponential law of
    mean ``beta`` (its maximum-likelihood fit; the peaks-over-threshold method with a
    generalized Pareto shape fixed at 0). It is an **estimate**: it assumes that law beyond
    the largest calibration score, where no data checks it.

    Parameters
    ----------
    scores : array
        Calibration scores of one calibration set (one recipe, or all when pooled).

    Returns
    -------
    dict or None
        ``{"model": "exponential", "u", "beta", "k", "n"}``; ``None`` when there are too
        few scores or their top ``k`` are all equal.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    s = s[np.isfinite(s)]
    n = int(s.size)
    k = max(TAIL_MIN_EXCEEDANCES, int(math.ceil(TAIL_FRACTION * n)))
    if n < k + 1:
        return None
    u = float(s[n - k - 1])
    beta = float(np.mean(s[n - k:] - u))
    if not beta > 0:
        return None
    return {"model": "exponential", "u": u, "beta": beta, "k": k, "n": n}


def tail_p_estimate(fit: dict[str, Any] | None, score: float) -> float | None:
    """Estimated p-value of ``score`` from a :func:`tail_fit` (an estimate, see there).

    At or below the fit's threshold ``u`` it is ``(k + 1) / (n + 1)`` or more and the
    exact conformal p-value is the better number (returned as ``None``); above it,
    ``(k + 1) / (n + 1) * exp(-(score - u) / beta)``, strictly decreasing in ``score``,
    so flags beyond the calibration floor still rank.
    """
    if fit is None or score is None or not np.isfinite(score):
        return None
    u, beta, k, n = fit["u"], fit["beta"], fit["k"], fit["n"]
    if score <= u:
        return None
    return float((k + 1.0) / (n + 1.0) * math.exp(-(score - u) / beta))
