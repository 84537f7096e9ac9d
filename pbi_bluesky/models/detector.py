"""The default detector: triplet-trained CNN embedding + recipe-aware one-class SVM.

Training (:meth:`AnomalyDetector.fit`) takes normal profiles with their recipe labels:

1. resample to the model grid;
2. choose the conformal calibration (:func:`~.conformal.plan_calibration`): a split of
   the normals (stratified by recipe) where it reaches ``alpha``, otherwise K-fold
   cross-conformal calibration, per recipe (Mondrian) where every recipe has enough
   calibration normals;
3. for each model (one for a split, K for cross-conformal), on its training normals
   (:class:`~.core.ScoringCore`): fit the feature scaler and each recipe's reference curve
   (mean) and batch-to-batch scatter (std); train :class:`~.network.EmbeddingCNN` with
   triplet loss on two input channels (the standardised asinh intensity, and the residual
   to the expected recipe's reference); labels are the recipes plus synthetic negatives
   (:mod:`~.augment`), each kind per recipe its own class; fit one
   :class:`~.ocsvm.RBFOneClass` per recipe on the embeddings of its normals (plus the
   standardised log residual chi-square) and one :class:`~.subspace.RecipeSubspace` (PCA
   of its normal curves, Hotelling T-squared + SPE); standardise both parts per recipe on
   the training normals (median, interquartile range); the anomaly score is
   ``svm part + subspace_weight * subspace part``;
4. score the calibration normals with the model that did not train on them: their scores
   define the conformal p-values (:class:`~.conformal.Calibration`).

Why two parts: measured by ``make bench-models``, the embedding part alone is best on
shape changes (contamination upturns, thickness) but weaker on a few wt% of composition
drift, which the subspace part catches; both ablations are reported by
:func:`~.evaluate.evaluate_arrays`.

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
from pbi_bluesky.models.conformal import (
    MIN_TRAINING_NORMALS,
    Calibration,
    CalibrationError,
    plan_calibration,
)
from pbi_bluesky.models.core import EMBED_CHUNK, RESIDUAL_WEIGHT, ScoringCore
from pbi_bluesky.models.descriptors import fit_descriptors
from pbi_bluesky.models.network import EmbeddingCNN, NetworkConfig
from pbi_bluesky.models.ocsvm import RBFOneClass
from pbi_bluesky.models.representation import FeatureScaler, QGrid
from pbi_bluesky.models.settings import TrainingConfig, Verdict
from pbi_bluesky.models.subspace import RecipeSubspace
from pbi_bluesky.models.validation import synthetic_check
from pbi_bluesky.profile import Profile

__all__ = ["AnomalyDetector", "CalibrationError", "EMBED_CHUNK", "MIN_TRAINING_NORMALS",
           "RESIDUAL_WEIGHT"]

logger = logging.getLogger(__name__)


class AnomalyDetector(ScoringCore):
    """Recipe-aware SAXS anomaly detector (see module docstring)."""

    name = "pbi"
    in_channels = 2
    """Network input channels (see :meth:`_inputs`)."""
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
        self.grid = grid or QGrid()
        self.training = training or self.default_training()
        cfg = network_config or NetworkConfig(in_channels=self.in_channels,
                                              length=self.grid.npt)
        if cfg.length != self.grid.npt:
            raise ValueError(f"network length {cfg.length} != grid npt {self.grid.npt}")
        self.network = EmbeddingCNN(cfg)
        self.recipes: list[str] = []
        self.scaler: FeatureScaler | None = None
        self.references = np.zeros((0, self.grid.npt))
        self.scatter = np.zeros((0, self.grid.npt))
        self.svms: list[RBFOneClass] = []
        self.centroids = np.zeros((0, cfg.embedding_dim))
        self.alpha = self.training.alpha if self.training.alpha is not None else 0.01
        self.calibration: Calibration | None = None
        self.history: list[float] = []
        self.metrics: dict[str, Any] = {}
        self.population: DescriptorPopulation | None = None
        # per recipe: mean and std of log chi-square to the reference, and its weight
        self.residual_stats = np.zeros((0, 3))
        # per recipe: PCA model of its normal curves (T2 + SPE)
        self.subspaces: list[RecipeSubspace] = []
        # per recipe: median and interquartile range of the one-class score and of the
        # subspace statistic over its training normals
        self.score_scale = np.zeros((0, 4))
        # per recipe: Gaussian model of its normals with their noise (likelihood, low-q)
        self.likelihoods: list = []
        # calibration normals' score parts (core.PART_NAMES), for ablations
        self.calibration_parts = np.zeros((0, 4))
        # cross-conformal calibration: the K models, each trained without one fold
        self.members: list[AnomalyDetector] = []
        self.bundle_info: dict[str, Any] = {}

    @classmethod
    def default_training(cls) -> TrainingConfig:
        """The training settings this detector uses unless told otherwise."""
        return TrainingConfig()

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
        """Method, sizes, smallest reachable p and threshold (for model.json, pbi train)."""
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
        """Train on normal profiles labelled with their recipe; returns self.

        ``nproc`` > 1 trains the embedding network data-parallel with torch
        DistributedDataParallel in that many local processes (gloo on CPU, nccl when
        there is a CUDA device per process; :mod:`~.distributed`).

        Raises
        ------
        CalibrationError
            If the normals cannot calibrate the requested alpha (the message says how
            many are needed), or a recipe has too few normals to train on.
        """
        cfg = self.training
        if len(profiles) != len(recipes):
            raise ValueError("profiles and recipes differ in length")
        if len(profiles) < 10:
            raise ValueError(f"need at least 10 normal profiles to train, got {len(profiles)}")
        rng = np.random.default_rng(cfg.seed)
        intensity, sigma = self.resample(profiles)
        self.recipes = sorted(set(recipes))
        labels = np.array([self.recipes.index(r) for r in recipes])
        counts = np.bincount(labels, minlength=len(self.recipes))
        few = [f"{self.recipes[k]} ({counts[k]})" for k in range(len(self.recipes))
               if counts[k] < MIN_TRAINING_NORMALS + 1]
        if few:
            raise CalibrationError(
                f"too few normal profiles for recipe(s) {', '.join(few)}: each recipe needs "
                f"{MIN_TRAINING_NORMALS} for training plus at least 1 for calibration "
                f"(give 5 or more per recipe)")
        plan = plan_calibration(labels, len(self.recipes), alpha=cfg.alpha,
                                method=cfg.calibration, fraction=cfg.calibration_fraction,
                                n_folds=cfg.folds, rng=rng, recipe_names=self.recipes)
        self.alpha = plan.alpha
        if plan.alpha_source not in ("given", "default"):
            logger.warning("alpha: %s", plan.alpha_source)
        train_s = 0.0
        if plan.method == "split":
            self.members = []
            train = plan.training_indices(0)
            train_s = self._fit_core(intensity[train], sigma[train], labels[train], rng,
                                     cfg.seed, progress, nproc)
        else:
            self.members = []
            for k in range(len(plan.folds)):
                member = type(self)(self.grid, self.network.config, self.training)
                member.recipes = self.recipes
                train = plan.training_indices(k)
                logger.info("cross-conformal calibration: model %d of %d on %d normals",
                            k + 1, len(plan.folds), len(train))
                train_s += member._fit_core(intensity[train], sigma[train], labels[train],
                                            rng, int(rng.integers(2**31)), progress, nproc)
                self.members.append(member)
            # shared by every model: references for the recipe shortlist, on all normals
            self._fit_references(intensity, sigma, labels)
        parts, scores, member_of, order = [], [], [], []
        for k, (model, cal) in enumerate(zip(self.models, plan.folds, strict=True)):
            part = model._score_parts(intensity[cal], sigma[cal], labels[cal])
            parts.append(part)
            scores.append(model._combine(part))
            member_of.append(np.full(len(cal), k))
            order.append(cal)
        cal_idx = np.concatenate(order)
        self.calibration_parts = np.concatenate(parts)
        self.calibration = Calibration(plan.method, plan.mondrian, np.concatenate(scores),
                                       np.concatenate(member_of), labels[cal_idx],
                                       len(self.models), plan.alpha_source)
        self.population = None
        if cfg.attributions:
            desc_idx = (plan.training_indices(0) if plan.method == "split"
                        else np.arange(len(labels)))
            descriptors = np.array([fit_descriptors(self.grid.q, intensity[i], sigma[i])
                                    for i in desc_idx])
            self.population = DescriptorPopulation.fit(descriptors, labels[desc_idx],
                                                       len(self.recipes))
        self.history = list(self.models[0].history)
        self.metrics = {
            "validation": self._validate(intensity, sigma, labels, plan.folds),
            "n_train": int(len(plan.training_indices(0))),
            "n_calibration": int(len(cal_idx)),
            "train_seconds": round(train_s, 2),
            "final_loss": float(self.history[-1]) if self.history else None,
        }
        if nproc > 1:  # recorded only then: a one-process model.json is unchanged
            info = getattr(self.models[0], "ddp_info", {})
            self.metrics["training_processes"] = {
                k: info.get(k) for k in ("processes", "backend", "device")}
        return self

    def _validate(self, intensity: NDArray, sigma: NDArray, labels: NDArray,
                  folds: list[NDArray]) -> dict[str, Any]:
        """A sanity check on synthetic anomalies (:func:`~.validation.synthetic_check`)."""
        return synthetic_check(self, intensity, sigma, labels, folds)

    # -- scores of the models ---------------------------------------------------------------
    def member_scores(self, intensity: NDArray, sigma: NDArray,
                      recipe_idx: NDArray) -> NDArray:
        """Score of each curve under its recipe by every model, shape (K, n)."""
        return np.array([m._single_scores(intensity, sigma, recipe_idx) for m in self.models])

    def _scores(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        """Anomaly score of each curve under its recipe (the mean over the models)."""
        return self.member_scores(intensity, sigma, recipe_idx).mean(0)

    def score_parts(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        """The score parts (embedding, subspace), averaged over the models, shape (n, 2)."""
        return np.mean([m._score_parts(intensity, sigma, recipe_idx) for m in self.models],
                       axis=0)

    def _embed(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        if self.members:  # cross-conformal: the first model's embedding (for maps)
            return self.members[0]._embed(intensity, sigma, recipe_idx)
        return super()._embed(intensity, sigma, recipe_idx)

    # -- prediction and verdicts ----------------------------------------------------------
    def _shortlist(self, intensity: NDArray, sigma: NDArray, expected_idx: NDArray,
                   size: int) -> list[list[int]]:
        """Candidate recipes per curve: the ``size`` recipes whose reference curves are
        nearest in residual chi-square, plus the expected recipe (when given)."""
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
        """Every model's score of each curve under each of its candidate recipes (one
        pass); values are arrays of shape (K,)."""
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
        """Index of the most plausible recipe for each curve (nearest class in embedding
        space).

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

        ``explain``: ``"flagged"`` (default) adds features and Shapley attributions to
        flagged profiles, ``"all"`` to every profile, ``"none"`` to none.
        """
        if isinstance(expected, str) or expected is None:
            expected = [expected] * len(profiles)
        intensity, sigma = self.resample(profiles)
        return self.score_arrays(intensity, sigma, list(expected), fdr=fdr, explain=explain)
