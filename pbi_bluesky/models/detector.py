"""The default detector: triplet-trained CNN embedding + recipe-aware one-class scoring.

:class:`AnomalyDetector` is the fitted scorer: one :class:`~.fitted.FittedModel` (a split
calibration) or K of them (``members``, cross-conformal calibration, :mod:`~.conformal`),
with the calibration that turns scores into conformal p-values and verdicts, and the
descriptor population that explains flagged curves. :meth:`AnomalyDetector.fit` trains it
(:func:`~.fitting.fit_detector`: calibration plan, :class:`~.training.Trainer` per model,
calibration scores).

The anomaly score of a curve under its recipe is the weighted sum of standardised parts
(:data:`~.fitted.PART_NAMES`): the one-class SVM of the network embedding (plus the
residual chi-square), the recipe subspace (PCA: Hotelling T-squared + SPE), the recipe
likelihood and the low-q upturn. Why several parts: measured by ``make bench-models``, the
embedding part alone is best on shape changes (contamination upturns, thickness) but
weaker on a few wt% of composition drift, which the subspace part catches; the ablations
are reported by :func:`~.evaluate.evaluate_arrays`.

Scoring a profile against its expected recipe gives a score (higher = more anomalous; the
mean over the models of a cross-conformal detector), its conformal p-value, a verdict at
``alpha``, the threshold the score had to pass, the HyperScore and the predicted recipe
(nearest class when each candidate recipe in turn is assumed).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pbi_bluesky.models.attribution import DescriptorPopulation
from pbi_bluesky.models.calibration import benjamini_hochberg, hyperscore
from pbi_bluesky.models.conformal import MIN_TRAINING_NORMALS, Calibration, CalibrationError
from pbi_bluesky.models.descriptors import fit_descriptors
from pbi_bluesky.models.fitted import EMBED_CHUNK, RESIDUAL_WEIGHT, FittedModel
from pbi_bluesky.models.fitting import fit_detector
from pbi_bluesky.models.network import NetworkConfig
from pbi_bluesky.models.representation import QGrid
from pbi_bluesky.models.settings import TrainingConfig, Verdict
from pbi_bluesky.profile import Profile

__all__ = ["AnomalyDetector", "CalibrationError", "EMBED_CHUNK", "MIN_TRAINING_NORMALS",
           "RESIDUAL_WEIGHT"]

logger = logging.getLogger(__name__)


class AnomalyDetector(FittedModel):
    """Recipe-aware SAXS anomaly detector (see module docstring).

    Parameters
    ----------
    grid, network_config, training
        As for :class:`~.fitted.FittedModel`.
    """

    name = "pbi"
    preprocessing = {
        "resample": "linear interpolation in log q onto q_grid (every grid point measured)",
        "channels": ["standardised asinh(I / noise_scale)",
                     "asinh(residual to expected recipe reference / 3)"],
    }

    def __init__(
        self,
        grid: QGrid | None = None,
        network_config: NetworkConfig | None = None,
        training: TrainingConfig | None = None,
    ) -> None:
        super().__init__(grid, network_config, training)
        self.alpha = self.training.alpha if self.training.alpha is not None else 0.01
        self.calibration: Calibration | None = None
        self.metrics: dict[str, Any] = {}
        self.population: DescriptorPopulation | None = None
        # calibration normals' score parts (fitted.PART_NAMES), for ablations
        self.calibration_parts = np.zeros((0, 4))
        # cross-conformal calibration: the K models, each trained without one fold
        self.members: list[AnomalyDetector] = []
        # where the model came from (load_bundle): path, model_sha256, origin ("bundle",
        # "shipped" or "registry" with registry and registry_version)...
        self.bundle_info: dict[str, Any] = {}
        self.inference: dict[str, Any] = {"precision": "float32"}

    # -- calibration ----------------------------------------------------------------------
    @property
    def calibration_scores(self) -> NDArray:
        """Scores of the calibration normals (out of sample for the model scoring them)."""
        return self.calibration.scores if self.calibration is not None else np.zeros(0)

    @property
    def models(self) -> list[AnomalyDetector]:
        """The scoring models: the K members of a cross-conformal detector, else itself."""
        return self.members or [self]

    @property
    def threshold(self) -> float:
        """Score above which p <= alpha.

        Exact for a pooled split (one threshold). With per-recipe (Mondrian) calibration it
        is the largest of the recipes' thresholds, and for cross-conformal models the
        threshold when all models agree on a score; every :class:`Verdict` carries its own
        exact threshold. ``inf`` when some recipe can never be flagged.
        """
        if self.calibration is None:
            return float("inf")
        return max(self.calibration.group_threshold(g, self.alpha)
                   for g in self.calibration.groups())

    @property
    def can_flag(self) -> bool:
        """Whether a curve of every recipe can reach p <= alpha."""
        return self.calibration is not None and self.calibration.can_flag(self.alpha)

    def calibration_summary(self) -> dict[str, Any]:
        """Return method, sizes, smallest reachable p and threshold (for model.json, pbi train)."""
        if self.calibration is None:
            return {}
        return {**self.calibration.summary(self.alpha, self.recipes),
                "threshold": self.threshold}

    # -- inputs -------------------------------------------------------------------------
    def resample(self, profiles: list[Profile]) -> tuple[NDArray, NDArray]:
        """Resample profiles onto the grid: arrays (n, npt) of intensity and sigma."""
        pairs = [self.grid.resample(p) for p in profiles]
        return np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])

    def _recipe_index(self, recipe: str) -> int:
        try:
            return self.recipes.index(recipe)
        except ValueError:
            raise ValueError(
                f"recipe {recipe!r} is not one this model was trained on: {self.recipes}"
            ) from None

    # -- training -----------------------------------------------------------------------
    def fit(
        self, profiles: list[Profile], recipes: list[str], *, progress: bool = True,
        nproc: int = 1,
    ) -> AnomalyDetector:
        """Train on normal profiles labelled with their recipe; return self.

        See :func:`~.fitting.fit_detector`.

        Parameters
        ----------
        profiles, recipes
            The normal profiles and the recipe of each.
        progress
            Show the epoch progress.
        nproc
            > 1: train the embedding network data-parallel with torch
            DistributedDataParallel in that many local processes (gloo on CPU, nccl when
            there is a CUDA device per process; :mod:`~.distributed`).

        Raises
        ------
        CalibrationError
            If the normals cannot calibrate the requested alpha (the message says how
            many are needed), or a recipe has too few normals to train on.
        """
        fit_detector(self, profiles, recipes, progress=progress, nproc=nproc)
        return self

    # -- scores of the models ---------------------------------------------------------------
    def member_scores(self, intensity: NDArray, sigma: NDArray,
                      recipe_idx: NDArray) -> NDArray:
        """Score of each curve under its recipe by every model, shape (K, n)."""
        return np.array([m._single_scores(intensity, sigma, recipe_idx) for m in self.models])

    def _scores(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        """Anomaly score of each curve under its recipe (the mean over the models)."""
        return self.member_scores(intensity, sigma, recipe_idx).mean(0)

    def score_parts(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        """Return the score parts (embedding, subspace), averaged over the models, shape (n, 2)."""
        return np.mean([m._score_parts(intensity, sigma, recipe_idx) for m in self.models],
                       axis=0)

    def _embed(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        if self.members:  # cross-conformal: the first model's embedding (for maps)
            return self.members[0]._embed(intensity, sigma, recipe_idx)
        return super()._embed(intensity, sigma, recipe_idx)

    # -- prediction and verdicts ----------------------------------------------------------
    def _shortlist(self, intensity: NDArray, sigma: NDArray, expected_idx: NDArray,
                   size: int) -> list[list[int]]:
        """Return candidate recipes per curve.

        The ``size`` recipes whose reference curves are nearest in residual chi-square, plus
        the expected recipe (when given).
        """
        nearest = np.argsort(self._reference_chi2(intensity, sigma), axis=1)[:, :size]
        out = []
        for row, exp in zip(nearest, expected_idx, strict=True):
            cands = [int(k) for k in row]
            if exp >= 0 and exp not in cands:
                cands.append(int(exp))
            out.append(cands)
        return out

    def _candidate_scores(self, intensity: NDArray, sigma: NDArray,
                          candidates: list[list[int]]) -> list[dict[int, NDArray]]:
        """Return every model's score of each curve under each of its candidate recipes.

        One pass; values are arrays of shape (K,).
        """
        rows = np.array([i for i, c in enumerate(candidates) for _ in c], dtype=np.int64)
        idx = np.array([k for c in candidates for k in c], dtype=np.int64)
        scores = self.member_scores(intensity[rows], sigma[rows], idx)
        out: list[dict[int, NDArray]] = [{} for _ in candidates]
        for j, (r, k) in enumerate(zip(rows, idx, strict=True)):
            out[r][int(k)] = scores[:, j]
        return out

    @staticmethod
    def _best(candidates: dict[int, NDArray]) -> int:
        return min(candidates, key=lambda k: float(candidates[k].mean()))

    def predict_recipe(self, intensity: NDArray, sigma: NDArray,
                       shortlist: int | None = None) -> NDArray[np.int64]:
        """Return the index of the most plausible recipe for each curve.

        That is the nearest class in embedding space.

        Each candidate recipe is assumed in turn; the curve's embedding under that
        assumption is scored by that recipe's one-class SVM, and the recipe whose normal
        region lies nearest (lowest score) wins. Candidates are all recipes, or with
        ``shortlist=k`` the k recipes whose reference curves are nearest in chi-square.
        """
        size = len(self.recipes) if shortlist is None else shortlist
        none = np.full(len(intensity), -1)
        cand = self._candidate_scores(intensity, sigma,
                                      self._shortlist(intensity, sigma, none, size))
        return np.array([self._best(c) for c in cand], dtype=np.int64)

    def explain(self, intensity: NDArray, sigma: NDArray, recipe: str) -> dict[str, Any]:
        """Fitted descriptors with z-scores and exact Shapley attributions (one curve)."""
        if self.population is None:
            raise ValueError("this model has no descriptor population (trained without it)")
        values = fit_descriptors(self.grid.q, intensity, sigma)
        return self.population.explain(values, self._recipe_index(recipe))

    def verdicts_from_member_scores(self, member_scores: NDArray, recipe_idx: NDArray, *,
                                    fdr: bool = False) -> tuple[NDArray, NDArray, NDArray]:
        """p-values, flags and per-curve thresholds from every model's scores (K, n)."""
        if self.calibration is None:
            raise ValueError("this detector is not trained (no calibration)")
        p = self.calibration.p_values(member_scores, recipe_idx)
        level = self.calibration.levels(recipe_idx, self.alpha)
        flagged = benjamini_hochberg(p, self.alpha) if fdr else p <= level * (1 + 1e-12)
        thr = self.calibration.thresholds(member_scores, recipe_idx, self.alpha)
        return p, flagged, thr

    def score_arrays(
        self, intensity: NDArray, sigma: NDArray, expected: list[str | None],
        *, fdr: bool = False, explain: str = "flagged", predict: bool = True,
        shortlist: int | None = None,
    ) -> list[Verdict]:
        """Score resampled curves; ``expected=None`` rows are scored as the predicted recipe.

        The predicted recipe is the nearest class in embedding space among the expected
        recipe and the ``shortlist`` (default 1) recipes whose reference curves are nearest
        in chi-square (:meth:`predict_recipe` can search all). ``predict=False`` skips the
        prediction: ``predicted_composition`` is then empty; every expected recipe must be
        given. With per-recipe (Mondrian) calibration a curve is compared with the
        calibration normals of its expected recipe (the predicted one where none is given).

        Parameters
        ----------
        intensity, sigma
            Curves on the model grid and their uncertainties, shape (n, npt).
        expected
            Expected recipe of each curve, or None where unknown.
        fdr
            Flag by Benjamini-Hochberg at ``alpha`` over the batch instead of each p-value
            against ``alpha``.
        explain
            As for :meth:`score`.
        predict
            Predict each curve's recipe.
        shortlist
            Number of chi-square-nearest recipes tried as the predicted recipe.
        """
        exp_idx = np.array([-1 if e is None else self._recipe_index(e) for e in expected],
                           dtype=np.int64)
        n = len(exp_idx)
        if predict and (exp_idx >= 0).all() and shortlist in (None, 1):
            # fast path: expected recipe vs the chi-square-nearest one, one network pass
            # for every curve plus one for each curve whose nearest recipe is another
            nearest = self._reference_chi2(intensity, sigma).argmin(1)
            other = np.nonzero(nearest != exp_idx)[0]
            both = self.member_scores(np.concatenate([intensity, intensity[other]]),
                                      np.concatenate([sigma, sigma[other]]),
                                      np.concatenate([exp_idx, nearest[other]]))
            members = both[:, :n]
            predicted = exp_idx.copy()
            better = both[:, n:].mean(0) < members[:, other].mean(0)
            predicted[other[better]] = nearest[other[better]]
            idx = exp_idx
        elif predict or (exp_idx < 0).any():
            # candidates: the expected recipe plus the chi-square-nearest one(s); a normal
            # curve usually has one candidate, so this costs one network pass
            size = shortlist if shortlist is not None else 1
            cands = self._shortlist(intensity, sigma, exp_idx, size)
            for c, e in zip(cands, exp_idx, strict=True):
                if e < 0 and len(c) < 2 <= len(self.recipes):
                    c.extend(k for k in range(len(self.recipes)) if k not in c)
            cand_scores = self._candidate_scores(intensity, sigma, cands)
            predicted = np.array([self._best(c) for c in cand_scores], dtype=np.int64)
            idx = np.where(exp_idx >= 0, exp_idx, predicted)
            members = (np.array([c[int(k)] for c, k in zip(cand_scores, idx, strict=True)]).T
                       if n else np.zeros((len(self.models), 0)))
        else:
            idx = exp_idx
            members = self.member_scores(intensity, sigma, idx)
            predicted = None
        scores = members.mean(0)
        p, flagged, thr = self.verdicts_from_member_scores(members, idx, fdr=fdr)
        hs = hyperscore(1.0 - p)
        verdicts = []
        for i in range(n):
            recipe = expected[i] if expected[i] is not None else self.recipes[idx[i]]
            verdict = Verdict(float(scores[i]), float(thr[i]), bool(flagged[i]), float(p[i]),
                              float(hs[i]),
                              self.recipes[predicted[i]] if predicted is not None else "",
                              recipe)
            if self.population is not None and (
                explain == "all" or (explain == "flagged" and flagged[i])
            ):
                table = self.explain(intensity[i], sigma[i], recipe)
                verdict.details["features"] = {k: {"value": v["value"], "z": v["z"]}
                                               for k, v in table.items()}
                verdict.details["attributions"] = {k: v["shapley"] for k, v in table.items()}
            verdicts.append(verdict)
        return verdicts

    def score(
        self, profiles: list[Profile], expected: list[str | None] | str | None = None,
        *, fdr: bool = False, explain: str = "flagged",
    ) -> list[Verdict]:
        """Score profiles against their expected recipes (a list, one recipe, or None).

        Parameters
        ----------
        profiles
            Reduced profiles, resampled here onto the model grid.
        expected
            One recipe per profile, one recipe for all, or None (predicted).
        fdr
            As for :meth:`score_arrays`.
        explain
            ``"flagged"`` (default) adds features and Shapley attributions to flagged
            profiles, ``"all"`` to every profile, ``"none"`` to none.
        """
        if isinstance(expected, str) or expected is None:
            expected = [expected] * len(profiles)
        intensity, sigma = self.resample(profiles)
        return self.score_arrays(intensity, sigma, list(expected), fdr=fdr, explain=explain)
