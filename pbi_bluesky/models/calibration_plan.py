"""Conformal calibration plans: which normals calibrate, and whether ``alpha`` is reachable.

A conformal p-value's smallest value is ``1 / (n + 1)`` for ``n`` calibration normals, so
with fewer than ``ceil(1 / alpha) - 1`` of them (99 at alpha 0.01, 19 at 0.05) nothing can
ever be flagged. :func:`plan_calibration` chooses from the normals at hand a ``split`` or a
``cross`` (cross-conformal) plan, Mondrian (per recipe) where every recipe has enough
calibration normals, and the training-conditional flagging level; the methods and their
validity are described in :mod:`pbi_bluesky.models.conformal`, which computes the
p-values (:class:`~pbi_bluesky.models.conformal.Calibration`) and re-exports this module's
names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_ALPHA",
    "FPR_RISK",
    "FPR_TOLERANCE",
    "MAX_CALIBRATION_FRACTION",
    "MIN_SPLIT_CALIBRATION",
    "MIN_TRAINING_NORMALS",
    "STANDARD_ALPHAS",
    "VALIDITY",
    "CalibrationError",
    "CalibrationPlan",
    "conditional_flaggable",
    "fpr_risk",
    "plan_calibration",
    "required_calibration",
]

DEFAULT_ALPHA = 0.01
STANDARD_ALPHAS = (0.01, 0.02, 0.05, 0.1)
"""Levels the default alpha tries, in order, when 0.01 is out of reach."""
MAX_CALIBRATION_FRACTION = 0.5
"""Largest share of the normals a split may hold out for calibration."""
MIN_TRAINING_NORMALS = 3
"""Fewest training normals per recipe any one model needs."""
FPR_TOLERANCE = 0.02
FPR_RISK = 0.05
"""Training-conditional calibration: the flagging level is lowered (never raised) until the
false-positive rate of *this* trained model exceeds ``alpha + FPR_TOLERANCE`` with
probability at most ``FPR_RISK`` over calibration sets (the rate of a split-calibrated
model is Beta(J, n + 1 - J)-distributed when it flags p <= J / (n + 1); Vovk 2012). It
only bites below ~150 calibration normals; where even J = 1 cannot meet it, J = 1 is used
and the achieved risk is recorded."""
MIN_SPLIT_CALIBRATION = 100
"""With ``auto``, a split is used only when it holds out at least this many normals
(and enough for alpha). The false-positive rate of *one* split-calibrated model scatters
around alpha like a Beta(J, n + 1 - J) variable (n calibration normals, J = floor(alpha
(n + 1))): with 19 of them at alpha 0.05 it exceeds 0.07 for one model in four; with 100,
its spread is about 0.02. Below that, cross-conformal calibration (every normal calibrates)
gives the steadier rate."""
CALIBRATION_METHODS = ("auto", "split", "cross")

VALIDITY = {
    "split": "split conformal: exact finite-sample guarantee P(p <= alpha) <= alpha for a "
             "new normal (exchangeable with the calibration normals); the flagging level is "
             "lowered where needed so that this model's rate exceeds alpha + 0.02 with "
             "probability <= 5 % (training-conditional)",
    "cross": "cross-conformal (CV+ for one-class scores): approximate; proven bound "
             "P(p <= alpha) <= 2 alpha, measured within alpha + 0.02 on fresh normals "
             "(benchmarks/bench_calibration.py); flagging level lowered as for a split",
}


class CalibrationError(ValueError):
    """The normals given cannot calibrate the detector at the requested alpha."""


def required_calibration(alpha: float) -> int:
    """Fewest calibration normals whose smallest p-value ``1/(n+1)`` is <= ``alpha``."""
    if not 0.0 < alpha < 1.0:
        raise CalibrationError(f"alpha must be in (0, 1), got {alpha}")
    return max(int(math.ceil(1.0 / alpha - 1e-9)) - 1, 1)


def _n_flaggable(alpha: float, n: int) -> int:
    """Return how many of ``n`` calibration scores a flagged curve may lie at or below.

    That is the J with p <= alpha  <=>  #{calibration >= s} <= J - 1 (J = 0: nothing can be
    flagged).
    """
    return int(math.floor(alpha * (n + 1) + 1e-9))


def fpr_risk(j: int, n: int, alpha: float, tolerance: float = FPR_TOLERANCE) -> float:
    """P(false-positive rate > alpha + tolerance) of a model flagging p <= j / (n + 1)."""
    from scipy.stats import beta

    if j <= 0:
        return 0.0
    return float(beta.sf(alpha + tolerance, j, n + 1 - j))


def conditional_flaggable(alpha: float, n: int, tolerance: float | None = FPR_TOLERANCE,
                          risk: float = FPR_RISK) -> int:
    """Return the J used for flagging.

    It is the largest j <= floor(alpha (n + 1)) whose false-positive rate exceeds ``alpha +
    tolerance`` with probability <= ``risk``; at least 1 where alpha is reachable.
    ``tolerance=None``: the marginal rule, J = floor(alpha (n + 1)).
    """
    j = _n_flaggable(alpha, n)
    if tolerance is None:
        return j
    while j > 1 and fpr_risk(j, n, alpha, tolerance) > risk:
        j -= 1
    return j


@dataclass(frozen=True)
class CalibrationPlan:
    """Which normals calibrate which model (indices into the training normals)."""

    method: str
    mondrian: bool
    alpha: float
    alpha_source: str
    folds: list[NDArray[np.int64]]
    """Calibration indices of each model: one entry for ``split``, K for ``cross``; model
    k is trained on every normal not in ``folds[k]``."""
    n_normals: int

    def training_indices(self, k: int) -> NDArray[np.int64]:
        """Return the indices of the normals that fold ``k`` trains on (all but its held-out)."""
        held = np.zeros(self.n_normals, dtype=bool)
        held[self.folds[k]] = True
        return np.nonzero(~held)[0]


def _split_sizes(counts: NDArray, alpha: float, fraction: float, mondrian: bool,
                 floor: int) -> NDArray | None:
    """Return per-recipe calibration sizes of a split, or None.

    The split holds out at least ``floor`` calibration normals (per recipe when
    ``mondrian``); None where the normals do not allow it.
    """
    n = int(counts.sum())
    if mondrian:
        sizes = np.maximum(np.round(fraction * counts), floor)
    else:
        share = max(fraction, floor / n)
        sizes = np.maximum(np.round(share * counts), 1)
        while sizes.sum() < floor:  # rounding fell short: add to the largest recipes
            k = int(np.argmax(counts - sizes))
            sizes[k] += 1
    sizes = sizes.astype(np.int64)
    if np.any(sizes > np.floor(MAX_CALIBRATION_FRACTION * counts)):
        return None
    if np.any(counts - sizes < MIN_TRAINING_NORMALS):
        return None
    return sizes


def _split(counts: NDArray, alpha: float, fraction: float,
           floor: int) -> tuple[str, bool, NDArray | None] | None:
    if len(counts) > 1:
        sizes = _split_sizes(counts, alpha, fraction, True, floor)
        if sizes is not None:
            return "split", True, sizes
    sizes = _split_sizes(counts, alpha, fraction, False, floor)
    return ("split", False, sizes) if sizes is not None else None


def _cross(counts: NDArray, alpha: float,
           n_folds: int) -> tuple[str, bool, NDArray | None] | None:
    need = required_calibration(alpha)
    fold_ok = np.all(counts - np.ceil(counts / n_folds) >= MIN_TRAINING_NORMALS)
    if not fold_ok or counts.sum() < need:
        return None
    return "cross", bool(len(counts) > 1 and np.all(counts >= need)), None


def _feasible(counts: NDArray, alpha: float, method: str, fraction: float,
              n_folds: int) -> tuple[str, bool, NDArray | None] | None:
    """Return (method, mondrian, split sizes) that reach alpha, or None.

    ``auto`` prefers a split only when it holds out at least
    :data:`MIN_SPLIT_CALIBRATION` normals (the false-positive rate of one trained model
    then stays within about +-0.02 of alpha); otherwise every normal calibrates
    (cross-conformal), and a smaller split is the last resort.
    """
    need = required_calibration(alpha)
    if method == "split":
        return _split(counts, alpha, fraction, need)
    if method == "cross":
        return _cross(counts, alpha, n_folds)
    return (_split(counts, alpha, fraction, max(need, MIN_SPLIT_CALIBRATION))
            or _cross(counts, alpha, n_folds) or _split(counts, alpha, fraction, need))


def plan_calibration(
    labels: NDArray, n_recipes: int, *, alpha: float | None, method: str = "auto",
    fraction: float = 0.3, n_folds: int = 5, rng: np.random.Generator,
    recipe_names: list[str] | None = None,
) -> CalibrationPlan:
    """Choose the calibration of a detector trained on normals with recipe ``labels``.

    Raises
    ------
    CalibrationError
        If ``alpha`` (given explicitly) cannot be reached with these normals; the message
        names the normals, the calibration size, the smallest reachable p and what to do.
    """
    if method not in CALIBRATION_METHODS:
        raise CalibrationError(f"calibration must be one of {CALIBRATION_METHODS}, "
                               f"got {method!r}")
    if n_folds < 2:
        raise CalibrationError(f"cross-conformal calibration needs >= 2 folds, got {n_folds}")
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=n_recipes)
    names = recipe_names or [str(k) for k in range(n_recipes)]
    if alpha is None:
        choice, chosen = None, None
        for level in STANDARD_ALPHAS:
            choice = _feasible(counts, level, method, fraction, n_folds)
            if choice is not None:
                chosen = level
                break
        if choice is None or chosen is None:
            raise CalibrationError(_unreachable_message(counts, names, STANDARD_ALPHAS[-1],
                                                        method, n_folds, explicit=False))
        source = ("default" if chosen == DEFAULT_ALPHA else
                  f"default {DEFAULT_ALPHA} is out of reach of {int(counts.sum())} normals "
                  f"(smallest p {1 / (counts.sum() + 1):.4g}); raised to {chosen}")
        alpha = chosen
    else:
        alpha = float(alpha)
        choice = _feasible(counts, alpha, method, fraction, n_folds)
        if choice is None:
            raise CalibrationError(_unreachable_message(counts, names, alpha, method,
                                                        n_folds, explicit=True))
        source = "given"
    kind, mondrian, sizes = choice
    if kind == "split":
        cal = []
        for k in range(n_recipes):
            idx = rng.permutation(np.nonzero(labels == k)[0])
            cal.extend(idx[: int(sizes[k])])
        folds = [np.array(sorted(cal), dtype=np.int64)]
    else:
        fold_of = np.empty(len(labels), dtype=np.int64)
        for k in range(n_recipes):
            idx = rng.permutation(np.nonzero(labels == k)[0])
            fold_of[idx] = np.arange(len(idx)) % n_folds
        folds = [np.nonzero(fold_of == f)[0].astype(np.int64) for f in range(n_folds)]
    return CalibrationPlan(kind, mondrian, alpha, source, folds, len(labels))


def _unreachable_message(counts: NDArray, names: list[str], alpha: float, method: str,
                         n_folds: int, *, explicit: bool) -> str:
    n = int(counts.sum())
    need = required_calibration(alpha)
    best_split = int(np.floor(MAX_CALIBRATION_FRACTION * counts).sum())
    if method == "split":
        what = (f"a split holds out at most {best_split} of them for calibration (half of "
                f"each recipe), smallest p-value 1/{best_split + 1} = "
                f"{1 / (best_split + 1):.4g}")
        todo = (f"give at least {2 * need} normals, use --calibration cross (every normal "
                f"calibrates), or use --alpha {_reachable_level(n)} or larger")
    else:
        what = (f"even cross-conformal calibration on all {n} gives a smallest p-value of "
                f"1/{n + 1} = {1 / (n + 1):.4g}")
        todo = (f"give at least {need} normals ({max(need - n, 0)} more)"
                + (f", or use --alpha {_reachable_level(n)} or larger" if explicit
                   and _reachable_level(n) is not None else ""))
        small = [f"{names[k]} ({counts[k]})" for k in range(len(counts))
                 if counts[k] - math.ceil(counts[k] / n_folds) < MIN_TRAINING_NORMALS]
        if small:
            what += (f"; and recipe(s) {', '.join(small)} leave fewer than "
                     f"{MIN_TRAINING_NORMALS} training normals per fold")
            todo = f"give at least {MIN_TRAINING_NORMALS + 2} normals per recipe, or " + todo
    head = (f"alpha {alpha:g} cannot be reached" if explicit else
            f"no false-positive rate of {', '.join(map(str, STANDARD_ALPHAS))} can be reached")
    return (f"{head} with {n} normal profiles: {what} > {alpha:g}, so no curve could ever "
            f"be flagged (alpha {alpha:g} needs at least {need} calibration normals). "
            f"What to do: {todo}.")


def _reachable_level(n: int) -> str | None:
    """Return a round alpha >= 1/(n+1) to suggest, for n normals all calibrating."""
    smallest = 1.0 / (n + 1)
    for level in (0.01, 0.02, 0.03, 0.05, 0.1, 0.2):
        if level + 1e-12 >= smallest:
            return f"{level:g}"
    return None
