"""Conformal calibration.

Which normals calibrate, how p-values are computed, when a false-positive rate ``alpha``
can be reached at all.

A conformal p-value compares the score of a new curve with the scores of normal curves
the scoring model never saw: ``p = (1 + #{calibration >= s}) / (n + 1)``. Under the null
(the new curve is a normal like the calibration curves; exchangeable with them) it is
super-uniform, so flagging ``p <= alpha`` has a false-positive rate of at most ``alpha``.
The smallest p-value it can give is ``1 / (n + 1)``: with fewer than
``ceil(1 / alpha) - 1`` calibration normals (99 at alpha 0.01, 19 at 0.05) nothing can ever
be flagged. :func:`plan_calibration` therefore chooses, from the normals at hand:

``split`` (split conformal)
    One model is trained on part of the normals and scored on the rest (the calibration
    set, stratified by recipe). Used when at most :data:`MAX_CALIBRATION_FRACTION` of the
    normals hold out enough of them: at least ``ceil(1 / alpha) - 1`` and, by default,
    :data:`MIN_SPLIT_CALIBRATION`. Validity: exact,
    finite-sample: ``P(p <= alpha) <= alpha`` for a new normal, on average over
    calibration sets.
``cross`` (cross-conformal, Vovk 2015; the one-class form of CV+, Barber et al. 2021)
    When a split cannot reach alpha, every normal calibrates: the normals are cut into K
    folds (stratified by recipe), K models are trained, each without one fold, and each
    normal is scored by the model that did not see it. A new curve is scored by every
    model ``k`` and ``p = (1 + sum_k #{calibration scores of fold k >= s_k}) / (n + 1)``.
    Validity: approximate; the guarantee proven for CV+ is ``P(p <= alpha) <= 2 alpha``
    (worst case), and the rate measured here on fresh normals is near alpha
    (``benchmarks/bench_calibration.py``, ``tests/models/test_calibration.py``). It costs
    K trainings and K networks in the bundle.

Verdicts are **training-conditional**: a curve is flagged when ``p <= J / (n + 1)`` with
the largest ``J <= floor(alpha (n + 1))`` for which the false-positive rate of the trained
model exceeds ``alpha + 0.02`` with probability at most 5 % (:data:`FPR_TOLERANCE`,
:data:`FPR_RISK`). The marginal guarantee (on average over calibration sets) holds either
way; this one is about the model the user has, and it matters only below ~150
calibration normals, where the rate of one model scatters widely around alpha.

Either plan is **Mondrian** (per recipe: a curve is compared with the calibration normals
of its own recipe only, so the false-positive rate holds for every recipe, not just for
the recipe mix) when every recipe has enough calibration normals for alpha, and pooled
over recipes otherwise (then the guarantee is for the pooled rate).

``alpha=None`` means the default: 0.01 where the data reach it, otherwise the smallest of
:data:`STANDARD_ALPHAS` they reach (recorded as ``alpha_source``). An alpha given
explicitly that the data cannot reach is a :class:`CalibrationError` naming the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

# the plan (constants, reachability, split/cross sizes) lives in calibration_plan; its
# names stay importable from here, where every caller has always found them
from pbi_bluesky.models.calibration_plan import (
    CALIBRATION_METHODS as CALIBRATION_METHODS,
)
from pbi_bluesky.models.calibration_plan import DEFAULT_ALPHA as DEFAULT_ALPHA
from pbi_bluesky.models.calibration_plan import FPR_RISK as FPR_RISK
from pbi_bluesky.models.calibration_plan import FPR_TOLERANCE as FPR_TOLERANCE
from pbi_bluesky.models.calibration_plan import (
    MAX_CALIBRATION_FRACTION as MAX_CALIBRATION_FRACTION,
)
from pbi_bluesky.models.calibration_plan import (
    MIN_SPLIT_CALIBRATION as MIN_SPLIT_CALIBRATION,
)
from pbi_bluesky.models.calibration_plan import (
    MIN_TRAINING_NORMALS as MIN_TRAINING_NORMALS,
)
from pbi_bluesky.models.calibration_plan import STANDARD_ALPHAS as STANDARD_ALPHAS
from pbi_bluesky.models.calibration_plan import VALIDITY as VALIDITY
from pbi_bluesky.models.calibration_plan import CalibrationError as CalibrationError
from pbi_bluesky.models.calibration_plan import CalibrationPlan as CalibrationPlan
from pbi_bluesky.models.calibration_plan import _n_flaggable
from pbi_bluesky.models.calibration_plan import conditional_flaggable as conditional_flaggable
from pbi_bluesky.models.calibration_plan import fpr_risk as fpr_risk
from pbi_bluesky.models.calibration_plan import plan_calibration as plan_calibration
from pbi_bluesky.models.calibration_plan import required_calibration as required_calibration
from pbi_bluesky.models.tail import tail_fit, tail_p_estimate

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_ALPHA",
    "STANDARD_ALPHAS",
    "Calibration",
    "CalibrationError",
    "CalibrationPlan",
    "plan_calibration",
    "required_calibration",
    "tail_fit",
    "tail_p_estimate",
]

@dataclass
class Calibration:
    """Out-of-sample scores of calibration normals and how p-values use them.

    ``scores[i]`` is the score of calibration normal ``i`` under model ``member[i]`` (the
    one that did not train on it; always 0 for a split); ``group[i]`` is its recipe index.
    """

    method: str
    mondrian: bool
    scores: NDArray[np.float64]
    member: NDArray[np.int64]
    group: NDArray[np.int64]
    n_members: int = 1
    alpha_source: str = "given"
    tolerance: float | None = FPR_TOLERANCE
    """Training-conditional tolerance (:data:`FPR_TOLERANCE`); None: marginal rule."""
    _sorted: dict[tuple[int, int], NDArray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.member = np.asarray(self.member, dtype=np.int64)
        self.group = np.asarray(self.group, dtype=np.int64)
        if not (len(self.scores) == len(self.member) == len(self.group)):
            raise ValueError("calibration scores, members and groups differ in length")
        if len(self.scores) == 0:
            raise ValueError("no calibration scores")

    # -- the calibration sets -----------------------------------------------------------
    def _key(self, group: int) -> int:
        return int(group) if self.mondrian else -1

    def _select(self, group: int) -> NDArray[np.bool_]:
        return self.group == group if self.mondrian else np.ones(len(self.scores), bool)

    def _sorted_scores(self, group: int, member: int) -> NDArray:
        key = (self._key(group), int(member))
        if key not in self._sorted:
            sel = self._select(group) & (self.member == member)
            self._sorted[key] = np.sort(self.scores[sel])
        return self._sorted[key]

    def size(self, group: int = 0) -> int:
        """Return the number of calibration normals a curve of recipe ``group`` is compared with."""
        return int(self._select(group).sum())

    def groups(self) -> list[int]:
        """Return the calibration sets' recipe indices (``[-1]`` when pooled)."""
        return sorted(set(self.group.tolist())) if self.mondrian else [-1]

    def flaggable(self, group: int, alpha: float) -> int:
        """J of the calibration set of ``group``: flag when p <= J / (n + 1)."""
        return conditional_flaggable(alpha, self.size(group), self.tolerance)

    def levels(self, groups: NDArray, alpha: float) -> NDArray[np.float64]:
        """Return the p-value level each curve is flagged at.

        It is J / (n + 1) of the curve's calibration set (<= alpha; below it where the
        training-conditional rule lowers J).
        """
        groups = np.asarray(groups, dtype=np.int64)
        out = np.empty(len(groups))
        for g in np.unique(groups):
            out[groups == g] = self.flaggable(int(g), alpha) / (self.size(int(g)) + 1.0)
        return out

    # -- p-values and thresholds ----------------------------------------------------------
    def p_values(self, member_scores: NDArray, groups: NDArray) -> NDArray[np.float64]:
        """Return conformal p-values of curves with scores ``member_scores`` (K, m).

        The scores are under every model, compared with the calibration normals of their ``groups``
        (recipes).
        """
        s = np.atleast_2d(np.asarray(member_scores, dtype=np.float64))
        if s.shape[0] != self.n_members:
            raise ValueError(f"need scores from {self.n_members} models, got {s.shape[0]}")
        groups = np.broadcast_to(np.asarray(groups, dtype=np.int64), (s.shape[1],))
        out = np.empty(s.shape[1])
        for g in np.unique(groups):
            cols = groups == g
            count = np.zeros(int(cols.sum()))
            for k in range(self.n_members):
                cal = self._sorted_scores(int(g), k)
                count += cal.size - np.searchsorted(cal, s[k, cols], side="left")
            out[cols] = (1.0 + count) / (self.size(int(g)) + 1.0)
        return out

    def thresholds(self, member_scores: NDArray, groups: NDArray,
                   alpha: float) -> NDArray[np.float64]:
        """Per curve, the mean score above which it is flagged at ``alpha``.

        For a split this is the usual threshold, the J-th largest calibration score. For a
        cross-conformal model it is the curve's mean score plus the shift of all its model
        scores that would just reach p <= alpha, so ``score > threshold`` is the verdict
        exactly. ``inf`` where alpha is out of reach.
        """
        s = np.atleast_2d(np.asarray(member_scores, dtype=np.float64))
        groups = np.broadcast_to(np.asarray(groups, dtype=np.int64), (s.shape[1],))
        out = np.empty(s.shape[1])
        for g in np.unique(groups):
            cols = np.nonzero(groups == g)[0]
            j = self.flaggable(int(g), alpha)
            if j == 0:
                out[cols] = np.inf
                continue
            if self.n_members == 1:
                cal = self._sorted_scores(int(g), 0)
                out[cols] = cal[cal.size - j]
                continue
            cals = [self._sorted_scores(int(g), k) for k in range(self.n_members)]
            for c in cols:
                shifted = np.concatenate([cal - s[k, c] for k, cal in enumerate(cals)])
                out[c] = s[:, c].mean() + np.partition(shifted, shifted.size - j)[
                    shifted.size - j]
        return out

    def group_threshold(self, group: int, alpha: float) -> float:
        """Return the threshold on the score for recipe ``group``.

        It applies when all models agree on a score (for a split, the one threshold).
        """
        sel = self._select(group)
        j = self.flaggable(group, alpha)
        if j == 0:
            return float("inf")
        cal = np.sort(self.scores[sel])
        return float(cal[cal.size - j])

    def smallest_p(self) -> float:
        """Return the smallest p-value every calibration set can give (the worst recipe's)."""
        return max(1.0 / (self.size(g) + 1.0) for g in self.groups())

    def can_flag(self, alpha: float) -> bool:
        """Whether a curve of every recipe can reach ``p <= alpha``."""
        return all(_n_flaggable(alpha, self.size(g)) >= 1 for g in self.groups())

    def summary(self, alpha: float, recipes: list[str]) -> dict[str, Any]:
        """JSON-ready description for ``model.json`` and ``pbi train``."""
        per = {recipes[g]: int((self.group == g).sum()) for g in sorted(set(self.group.tolist()))
               if 0 <= g < len(recipes)}
        out: dict[str, Any] = {
            "method": self.method,
            "mondrian": self.mondrian,
            "folds": self.n_members if self.method == "cross" else 0,
            "n_calibration": int(len(self.scores)),
            "n_calibration_per_recipe": per,
            "alpha": alpha,
            "alpha_source": self.alpha_source,
            "smallest_p": self.smallest_p(),
            "can_flag": self.can_flag(alpha),
            "validity": VALIDITY.get(self.method, ""),
            "fpr_tolerance": self.tolerance,
            "flag_level": {("all" if g < 0 else recipes[g]): self.flaggable(g, alpha)
                           / (self.size(g) + 1.0) for g in self.groups()},
            "flag_level_marginal": {("all" if g < 0 else recipes[g]): _n_flaggable(
                alpha, self.size(g)) / (self.size(g) + 1.0) for g in self.groups()},
            "tail": {("all" if g < 0 else recipes[g]): tail_fit(self.scores[self._select(g)])
                     for g in self.groups()},
            "fpr_risk": {("all" if g < 0 else recipes[g]): fpr_risk(
                self.flaggable(g, alpha), self.size(g), alpha, self.tolerance or 0.0)
                for g in self.groups()},
        }
        if self.mondrian:
            out["threshold_per_recipe"] = {recipes[g]: self.group_threshold(g, alpha)
                                           for g in self.groups() if 0 <= g < len(recipes)}
        return out

    # -- storage --------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, NDArray]:
        """Return the calibration scores, members and groups as arrays for storage."""
        return {"calibration_scores": self.scores, "calibration_member": self.member,
                "calibration_group": self.group}

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray], *, method: str, mondrian: bool,
                    n_members: int, alpha_source: str = "given",
                    tolerance: float | None = None) -> Calibration:
        """Rebuild a calibration from the arrays of :meth:`to_arrays`."""
        scores = arrays["calibration_scores"]
        member = arrays.get("calibration_member", np.zeros(len(scores), dtype=np.int64))
        group = arrays.get("calibration_group", np.zeros(len(scores), dtype=np.int64))
        return cls(method, mondrian, scores, member, group, n_members, alpha_source,
                   tolerance)
