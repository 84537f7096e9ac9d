"""A check a candidate model must pass before it may serve: it flags gross errors.

:func:`~pbi_bluesky.models.bundle.ensure_can_flag` proves only that some p-value can reach
the flag level. A cross-conformal model trained on few normals can pass it and still flag
nothing a person would call wrong: measured on the demo's loop trained on 5 normals per
recipe (25 in all, alpha 0.1), every survey curve got p >= 2/26 against a flag level of
1/26, the mislabelled specimen (mean score 10,172, threshold 794) included, because one
fold model scored some held-out normal above it.

:func:`gross_error_misses` scores each recipe's mean training curve (the model's
``references``) scaled by 3 and by 1/3, a factor-3 error in the absolute scale,
transmission or thickness, with the normals' own spread (``scatter``) as the curve's
uncertainty. A model fit to serve flags every one of them: the shipped model and the
demo's loop at 10 normals per recipe flag all 10 (p 0.007 and 0.091); the 5-per-recipe
model above missed 5 of 10.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["GROSS_FACTORS", "gross_error_misses"]

GROSS_FACTORS = (3.0, 1.0 / 3.0)
"""Scale factors applied to each recipe's mean normal curve: each must be flagged."""


def gross_error_misses(detector: Any) -> list[str]:
    """Return the gross errors ``detector`` does not flag (empty: it flags them all).

    Parameters
    ----------
    detector
        A fitted :class:`~pbi_bluesky.models.detector.AnomalyDetector` with its
        ``references`` (mean training curve per recipe) and ``scatter`` (their spread).

    Returns
    -------
    list of str
        One line per curve not flagged: recipe, factor, score and p-value. Empty where the
        model has no reference curves to build them from (nothing to check).
    """
    refs = np.asarray(getattr(detector, "references", np.zeros((0, 0))), dtype=np.float64)
    if refs.ndim != 2 or refs.shape[0] == 0 or refs.shape[0] != len(detector.recipes):
        return []
    scatter = np.asarray(getattr(detector, "scatter", np.zeros_like(refs)), dtype=np.float64)
    if scatter.shape != refs.shape:
        scatter = np.zeros_like(refs)
    # the normals' spread as the uncertainty, never below 0.1 % of the curve
    sigma = np.maximum(np.abs(scatter), 1e-3 * np.abs(refs) + 1e-30)
    recipes = list(detector.recipes)
    misses = []
    for factor in GROSS_FACTORS:
        verdicts = detector.score_arrays(refs * factor, sigma * factor, recipes,
                                         explain="none", predict=False)
        misses += [f"{recipe} x{factor:.3g}: score {v.score:.4g}, p {v.p_value:.3g}"
                   for recipe, v in zip(recipes, verdicts, strict=True) if not v.is_anomaly]
    return misses
