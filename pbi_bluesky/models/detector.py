"""The default detector: triplet-trained CNN embedding + recipe-aware one-class SVM.

Training (:meth:`AnomalyDetector.fit`) takes normal profiles with their recipe labels:

1. resample to the model grid, fit the feature scaler and each recipe's reference curve
   (mean) and batch-to-batch scatter (std);
2. split off a calibration set of normals (stratified by recipe);
3. train :class:`~.network.EmbeddingCNN` with triplet loss on two input channels (the
   standardised asinh intensity, and the residual to the expected recipe's reference);
   labels are the recipes, plus synthetic anomaly negatives (:mod:`~.augment`), each
   kind per recipe its own class, and one "looks like a neighbouring recipe" class per
   recipe (a curve of recipe A presented as recipe B, or a curve of B moved 30-80 % of
   the way towards A's reference), so the embedding learns the directions that matter;
4. fit one :class:`~.ocsvm.RBFOneClass` per recipe on the embeddings of its training
   normals (plus the standardised log residual chi-square), and keep the recipe
   centroids;
5. fit one :class:`~.subspace.RecipeSubspace` per recipe (PCA of its normal curves,
   Hotelling T-squared + SPE): the directions batch-to-batch scatter moves a curve in;
6. standardise both parts per recipe on the training normals (median, interquartile
   range); the anomaly score is ``svm part + subspace_weight * subspace part``;
7. score the calibration normals: their pooled scores define conformal p-values.

Why two parts: measured by ``make bench-models``, the embedding part alone is best on
shape changes (contamination upturns, thickness) but weaker on a few wt% of composition
drift, which the subspace part catches; the sum beats either alone (both ablations are
reported by :func:`~.evaluate.evaluate_arrays`).

Scoring a profile against its expected recipe gives a score (higher = more anomalous),
its conformal p-value, a verdict at ``alpha``, the HyperScore and the predicted recipe
(nearest centroid when each recipe in turn is assumed).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm import tqdm

from pbi_bluesky.models.attribution import DescriptorPopulation
from pbi_bluesky.models.augment import TRANSFORMS, synthetic_anomaly
from pbi_bluesky.models.calibration import benjamini_hochberg, conformal_p_values, hyperscore
from pbi_bluesky.models.descriptors import fit_descriptors
from pbi_bluesky.models.network import EmbeddingCNN, NetworkConfig
from pbi_bluesky.models.ocsvm import RBFOneClass
from pbi_bluesky.models.representation import FeatureScaler, QGrid, residual_z
from pbi_bluesky.models.subspace import RecipeSubspace
from pbi_bluesky.models.triplet import triplet_loss
from pbi_bluesky.profile import Profile

__all__ = ["TrainingConfig", "Verdict", "AnomalyDetector", "RESIDUAL_WEIGHT"]

RESIDUAL_WEIGHT = 1.0
"""Scale of the residual-chi-square feature: this many mean cluster radii per std."""
EMBED_CHUNK = 256
"""Curves per network forward pass when embedding (see :meth:`AnomalyDetector._embed`)."""
MIN_TRAINING_NORMALS = 3
"""Fewest training normals per recipe (after the calibration split) a model can use."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of :meth:`AnomalyDetector.fit` (stored in the bundle)."""

    epochs: int = 80
    batch_size: int = 128
    learning_rate: float = 1e-3
    margin: float = 0.3
    mining: str = "semi-hard"
    synthetic_per_normal: float = 1.0
    calibration_fraction: float = 0.3
    nu: float = 0.05
    alpha: float = 0.01
    seed: int = 0
    subspace_components: int = 3
    subspace_weight: float = 3.0


@dataclass
class Verdict:
    """The result of scoring one profile."""

    score: float
    threshold: float
    is_anomaly: bool
    p_value: float
    hyperscore: float
    predicted_composition: str
    expected_composition: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class AnomalyDetector:
    """Recipe-aware SAXS anomaly detector (see module docstring)."""

    name = "pbi"
    in_channels = 2
    """Network input channels (see :meth:`_inputs`)."""
    preprocessing = {
        "resample": "linear interpolation in log q onto q_grid",
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
        self.calibration_scores = np.zeros(0)
        self.alpha = self.training.alpha
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
        # calibration normals' (embedding, subspace) score parts, for ablations
        self.calibration_parts = np.zeros((0, 2))
        self.bundle_info: dict[str, Any] = {}

    @classmethod
    def default_training(cls) -> TrainingConfig:
        """The training settings this detector uses unless told otherwise."""
        return TrainingConfig()

    # -- bundle hooks -------------------------------------------------------------------
    def extra_arrays(self) -> dict[str, NDArray]:
        """Arrays beyond the core ones that a bundle must store."""
        arrays: dict[str, NDArray] = {"residual_stats": self.residual_stats,
                                      "score_scale": self.score_scale,
                                      "calibration_parts": self.calibration_parts}
        for k, sub in enumerate(self.subspaces):
            arrays.update(sub.to_arrays(f"subspace{k}"))
        if self.population is not None:
            arrays.update({"desc_mean": self.population.mean, "desc_std": self.population.std,
                           "desc_precision": self.population.precision})
        return arrays

    def load_extra_arrays(self, arrays: dict[str, NDArray]) -> None:
        """Inverse of :meth:`extra_arrays`."""
        self.residual_stats = arrays["residual_stats"]
        k = len(self.residual_stats)
        self.score_scale = arrays.get("score_scale", np.tile([0.0, 1.0, 0.0, 1.0], (k, 1)))
        self.calibration_parts = arrays.get("calibration_parts", np.zeros((0, 2)))
        self.subspaces = [RecipeSubspace.from_arrays(arrays, f"subspace{j}")
                          for j in range(k) if f"subspace{j}_mean" in arrays]
        if "desc_mean" in arrays:
            self.population = DescriptorPopulation(
                arrays["desc_mean"], arrays["desc_std"], arrays["desc_precision"]
            )

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

    def _inputs(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> torch.Tensor:
        assert self.scaler is not None
        ch0 = self.scaler.transform(intensity)
        z = residual_z(intensity, sigma, self.references[recipe_idx], self.scatter[recipe_idx])
        ch1 = np.arcsinh(z / 3.0).astype(np.float32)
        return torch.from_numpy(np.stack([ch0, ch1], axis=1))

    @torch.no_grad()
    def _embed(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        self.network.eval()
        out = []
        # chunks of 256: measured 2.3x faster per profile than 1024 on a 2-core CPU (the
        # activations of a chunk stay in cache)
        for start in range(0, len(intensity), EMBED_CHUNK):
            sl = slice(start, start + EMBED_CHUNK)
            out.append(self.network(self._inputs(intensity[sl], sigma[sl], recipe_idx[sl])))
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, 0))

    # -- training -----------------------------------------------------------------------
    def fit(
        self, profiles: list[Profile], recipes: list[str], *, progress: bool = True
    ) -> AnomalyDetector:
        """Train on normal profiles labelled with their recipe; returns self."""
        cfg = self.training
        if len(profiles) != len(recipes):
            raise ValueError("profiles and recipes differ in length")
        if len(profiles) < 10:
            raise ValueError(f"need at least 10 normal profiles to train, got {len(profiles)}")
        rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        # fresh weights drawn under the seed: the constructor's draw depends on whatever
        # used torch's global generator before, so refitting was not reproducible
        self.network = EmbeddingCNN(self.network.config)
        intensity, sigma = self.resample(profiles)
        self.recipes = sorted(set(recipes))
        labels = np.array([self.recipes.index(r) for r in recipes])
        train_idx, cal_idx = self._split(labels, rng)
        counts = np.bincount(labels[train_idx], minlength=len(self.recipes))
        few = [f"{self.recipes[k]} ({counts[k]})" for k in range(len(self.recipes))
               if counts[k] < MIN_TRAINING_NORMALS]
        if few:
            raise ValueError(
                f"too few normal profiles for recipe(s) {', '.join(few)} after holding out "
                f"calibration curves: each recipe needs {MIN_TRAINING_NORMALS} for training "
                f"plus at least 1 for calibration (give 5 or more per recipe)")
        self.scaler = FeatureScaler.fit(intensity[train_idx], sigma[train_idx])
        self.references = np.array(
            [intensity[train_idx][labels[train_idx] == k].mean(0) for k in range(len(self.recipes))]
        )
        self.scatter = np.array(
            [intensity[train_idx][labels[train_idx] == k].std(0) for k in range(len(self.recipes))]
        )
        t0 = time.perf_counter()
        self._train_network(intensity[train_idx], sigma[train_idx], labels[train_idx], rng,
                            progress)
        train_s = time.perf_counter() - t0
        self._fit_scorers(intensity[train_idx], sigma[train_idx], labels[train_idx])
        self.calibration_parts = self._score_parts(intensity[cal_idx], sigma[cal_idx],
                                                   labels[cal_idx])
        self.calibration_scores = self._combine(self.calibration_parts)
        self.alpha = cfg.alpha
        t1 = time.perf_counter()
        descriptors = np.array([fit_descriptors(self.grid.q, a, b)
                                for a, b in zip(intensity[train_idx], sigma[train_idx],
                                                strict=True)])
        self.population = DescriptorPopulation.fit(descriptors, labels[train_idx],
                                                   len(self.recipes))
        descriptor_s = time.perf_counter() - t1
        self.metrics = {
            "validation": self._validate(intensity[cal_idx], sigma[cal_idx], labels[cal_idx]),
            "n_train": int(len(train_idx)),
            "n_calibration": int(len(cal_idx)),
            "train_seconds": round(train_s, 2),
            "descriptor_seconds": round(descriptor_s, 2),
            "final_loss": float(self.history[-1]) if self.history else None,
        }
        return self

    def _fit_scorers(self, intensity: NDArray, sigma: NDArray, labels: NDArray) -> None:
        """Everything after the network: centroids, one-class SVMs, subspaces, scales."""
        cfg = self.training
        emb = self._embed(intensity, sigma, labels)
        log_chi2 = self._log_chi2(intensity, sigma, labels)
        self.residual_stats = np.zeros((len(self.recipes), 3))
        centroids = []
        for k in range(len(self.recipes)):
            sel = labels == k
            centroids.append(emb[sel].mean(0))
            radius = float(np.mean(np.linalg.norm(emb[sel] - centroids[-1], axis=1)))
            self.residual_stats[k] = (log_chi2[sel].mean(), max(log_chi2[sel].std(), 1e-3),
                                      RESIDUAL_WEIGHT * max(radius, 1e-3))
        self.centroids = np.array(centroids)
        feats = self._augment(emb, log_chi2, labels)
        self.svms = [RBFOneClass.fit(feats[labels == k], nu=cfg.nu)
                     for k in range(len(self.recipes))]
        features = self.scaler.transform(intensity)
        self.subspaces = [RecipeSubspace.fit(features[labels == k],
                                             cfg.subspace_components)
                          for k in range(len(self.recipes))]
        self.score_scale = np.tile([0.0, 1.0, 0.0, 1.0], (len(self.recipes), 1))
        raw = self._score_parts(intensity, sigma, labels)
        for k in range(len(self.recipes)):
            for j in range(2):
                q25, q50, q75 = np.percentile(raw[labels == k, j], [25, 50, 75])
                self.score_scale[k, 2 * j : 2 * j + 2] = (q50, max(q75 - q25, 1e-6))

    def _validate(self, intensity: NDArray, sigma: NDArray, labels: NDArray) -> dict[str, Any]:
        """Held-out check: calibration normals against transformed copies of themselves.

        The copies get the physically meaningful transforms of :mod:`~.augment` with a
        different seed than training; the network never saw these curves.
        """
        from sklearn.metrics import roc_auc_score

        rng = np.random.default_rng(self.training.seed + 1)
        q = self.grid.q
        fake = np.array([synthetic_anomaly(q, a, b, TRANSFORMS[j % len(TRANSFORMS)], rng)
                         for j, (a, b) in enumerate(zip(intensity, sigma, strict=True))])
        fake_scores = self._scores(fake, sigma, labels)
        flagged = conformal_p_values(fake_scores, self.calibration_scores) <= self.alpha
        y = np.r_[np.zeros(len(self.calibration_scores)), np.ones(len(fake_scores))]
        auc = roc_auc_score(y, np.r_[self.calibration_scores, fake_scores])
        return {"what": "calibration normals vs transformed copies (scale, upturn, shift, "
                        "broaden, offset)",
                "n": int(len(fake_scores)), "auc_roc": round(float(auc), 4),
                "recall_at_alpha": round(float(flagged.mean()), 4)}

    def _split(self, labels: NDArray, rng: np.random.Generator) -> tuple[NDArray, NDArray]:
        train, cal = [], []
        for k in np.unique(labels):
            idx = rng.permutation(np.nonzero(labels == k)[0])
            n_cal = int(round(self.training.calibration_fraction * len(idx)))
            n_cal = min(max(n_cal, 1), len(idx) - 2)
            cal.extend(idx[:n_cal])
            train.extend(idx[n_cal:])
        return np.array(sorted(train)), np.array(sorted(cal))

    def _training_set(
        self, intensity: NDArray, sigma: NDArray, labels: NDArray, rng: np.random.Generator
    ) -> tuple[NDArray, NDArray, NDArray, NDArray]:
        """Normals + synthetic anomaly and wrong-recipe negatives, with triplet labels.

        With several recipes two recipe-level negatives join the transforms of
        :mod:`~.augment`: a curve of another recipe presented as this one, and a curve moved
        part of the way (30-80 %) towards the nearest other recipe's reference -- the
        direction composition drift moves a curve in. (Steps of 15 % and less were tried:
        they overlap normal scatter, and one seed's training then stalled at a high loss.)
        """
        n_rec = len(self.recipes)
        q = self.grid.q
        xs, ss, recipe_idx, tl = [intensity], [sigma], [labels], [labels]
        n_syn = int(self.training.synthetic_per_normal * len(intensity))
        picks = rng.integers(0, len(intensity), n_syn)
        n_kinds = len(TRANSFORMS) + (2 if n_rec > 1 else 0)
        kinds = rng.integers(0, n_kinds, n_syn)
        nearest = self._nearest_other_recipe()
        syn, syn_s, syn_r, syn_l = [], [], [], []
        for j, kind in zip(picks, kinds, strict=True):
            r = labels[j]
            if kind == len(TRANSFORMS):  # a curve of another recipe, labelled as r
                r = int(rng.choice([k for k in range(n_rec) if k != labels[j]]))
                curve = intensity[j]
            elif kind == len(TRANSFORMS) + 1:  # part of the way to the nearest recipe
                step = self.references[nearest[r]] - self.references[r]
                curve = intensity[j] + rng.uniform(0.3, 0.8) * step
            else:
                curve = synthetic_anomaly(q, intensity[j], sigma[j], TRANSFORMS[kind], rng)
            syn.append(curve)
            syn_s.append(sigma[j])
            syn_r.append(r)
            # drift and wrong-recipe negatives share one class: both are "looks like a
            # neighbouring recipe"; separate classes for near-identical inputs stall training
            syn_l.append(n_rec + r * n_kinds + min(kind, len(TRANSFORMS)))
        if syn:
            xs.append(np.array(syn))
            ss.append(np.array(syn_s))
            recipe_idx.append(np.array(syn_r))
            tl.append(np.array(syn_l))
        return (np.concatenate(xs), np.concatenate(ss), np.concatenate(recipe_idx),
                np.concatenate(tl))

    def _nearest_other_recipe(self) -> NDArray[np.int64]:
        """For each recipe, the other recipe whose reference curve is nearest (chi-square)."""
        n_rec = len(self.recipes)
        if n_rec < 2:
            return np.zeros(n_rec, dtype=np.int64)
        chi2 = self._reference_chi2(self.references, self.scatter.mean(0, keepdims=True)
                                    .repeat(n_rec, 0))
        np.fill_diagonal(chi2, np.inf)
        return chi2.argmin(1).astype(np.int64)

    def _train_network(
        self, intensity: NDArray, sigma: NDArray, labels: NDArray, rng: np.random.Generator,
        progress: bool,
    ) -> None:
        cfg = self.training
        opt = torch.optim.Adam(self.network.parameters(), lr=cfg.learning_rate)
        # cosine decay to zero over the run: the last epochs settle instead of bouncing
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
        self.history = []
        bar = tqdm(range(cfg.epochs), desc="training", unit="epoch", disable=not progress)
        for _ in bar:
            x, s, r, tl = self._training_set(intensity, sigma, labels, rng)
            inputs = self._inputs(x, s, r)
            targets = torch.from_numpy(tl)
            order = torch.from_numpy(rng.permutation(len(x)))
            self.network.train()
            losses = []
            for start in range(0, len(x), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                loss = triplet_loss(self.network(inputs[idx]), targets[idx], cfg.margin,
                                    cfg.mining)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            schedule.step()
            self.history.append(float(np.mean(losses)))
            bar.set_postfix(loss=f"{self.history[-1]:.4f}")

    # -- scoring ------------------------------------------------------------------------
    def _log_chi2(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        z = residual_z(intensity, sigma, self.references[recipe_idx], self.scatter[recipe_idx])
        return np.log(np.mean(z**2, axis=1) + 1e-12)

    def _augment(self, emb: NDArray, log_chi2: NDArray, recipe_idx: NDArray) -> NDArray:
        """Embedding plus the standardised log residual chi-square, scaled to the cluster.

        The network's unit-norm embedding cannot express *how far* a curve is from its
        recipe once it is far; the residual statistic can. Scaled to half the recipe's
        mean cluster radius per standard deviation, it leaves normals where they are and
        pushes grossly different curves (an offset, a wrong scale) out of the boundary.
        """
        stats = self.residual_stats[recipe_idx]
        extra = (log_chi2 - stats[:, 0]) / stats[:, 1] * stats[:, 2]
        return np.hstack([emb, extra[:, None]])

    def _score_parts(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        """The two parts of the anomaly score under each curve's recipe, shape (n, 2).

        Column 0: the one-class SVM score of the (augmented) embedding; column 1: the
        recipe subspace statistic (:mod:`~.subspace`). Each is centred on the median of
        the recipe's training normals and divided by their interquartile range, so the
        parts are commensurate and the recipes can share one pooled calibration set (its
        false-positive guarantee is for the pooled rate, not per recipe).
        """
        emb = self._augment(self._embed(intensity, sigma, recipe_idx),
                            self._log_chi2(intensity, sigma, recipe_idx), recipe_idx)
        features = self.scaler.transform(intensity) if self.subspaces else None
        out = np.zeros((len(intensity), 2))
        for k in np.unique(recipe_idx):
            sel = recipe_idx == k
            svm_loc, svm_spread, sub_loc, sub_spread = self.score_scale[k]
            out[sel, 0] = (self.svms[k].score(emb[sel]) - svm_loc) / svm_spread
            if features is not None:
                out[sel, 1] = (self.subspaces[k].statistic(features[sel]) - sub_loc) / sub_spread
        return out

    def _combine(self, parts: NDArray) -> NDArray:
        """Anomaly score from its parts: embedding part + weight x subspace part."""
        weight = self.training.subspace_weight if self.subspaces else 0.0
        return parts[:, 0] + weight * parts[:, 1]

    def _scores(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        """Anomaly score of each curve under its recipe (higher = more anomalous)."""
        return self._combine(self._score_parts(intensity, sigma, recipe_idx))

    @property
    def threshold(self) -> float:
        """Score above which p <= alpha (the calibrated decision threshold)."""
        cal = np.sort(self.calibration_scores)
        n = cal.size
        k = int(np.floor(self.alpha * (n + 1))) - 1  # need (1 + n_ge)/(n+1) <= alpha
        if k < 0:
            return float("inf")
        return float(cal[n - 1 - k])

    def _reference_chi2(self, intensity: NDArray, sigma: NDArray) -> NDArray:
        """Mean squared residual to every recipe's reference, shape (n, n_recipes)."""
        var = sigma**2
        out = np.empty((len(intensity), len(self.recipes)))
        for k in range(len(self.recipes)):
            out[:, k] = np.mean((intensity - self.references[k]) ** 2
                                / (var + self.scatter[k] ** 2), axis=1)
        return out

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
                          candidates: list[list[int]]) -> list[dict[int, float]]:
        """One-class scores of each curve under each of its candidate recipes (one pass)."""
        rows = np.array([i for i, c in enumerate(candidates) for _ in c], dtype=np.int64)
        idx = np.array([k for c in candidates for k in c], dtype=np.int64)
        scores = self._scores(intensity[rows], sigma[rows], idx)
        out: list[dict[int, float]] = [{} for _ in candidates]
        for r, k, value in zip(rows, idx, scores, strict=True):
            out[r][int(k)] = float(value)
        return out

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
        return np.array([min(c, key=c.get) for c in cand], dtype=np.int64)

    def explain(self, intensity: NDArray, sigma: NDArray, recipe: str) -> dict[str, Any]:
        """Fitted descriptors with z-scores and exact Shapley attributions (one curve)."""
        if self.population is None:
            raise ValueError("this model has no descriptor population (trained without it)")
        values = fit_descriptors(self.grid.q, intensity, sigma)
        return self.population.explain(values, self._recipe_index(recipe))

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
        given.
        """
        exp_idx = np.array([-1 if e is None else self._recipe_index(e) for e in expected],
                           dtype=np.int64)
        if predict and (exp_idx >= 0).all() and shortlist in (None, 1):
            # fast path: expected recipe vs the chi-square-nearest one, one network pass
            # for every curve plus one for each curve whose nearest recipe is another
            nearest = self._reference_chi2(intensity, sigma).argmin(1)
            other = np.nonzero(nearest != exp_idx)[0]
            both = self._scores(np.concatenate([intensity, intensity[other]]),
                                np.concatenate([sigma, sigma[other]]),
                                np.concatenate([exp_idx, nearest[other]]))
            scores = both[: len(exp_idx)]
            predicted = exp_idx.copy()
            better = both[len(exp_idx):] < scores[other]
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
            predicted = np.array([min(c, key=c.get) for c in cand_scores], dtype=np.int64)
            idx = np.where(exp_idx >= 0, exp_idx, predicted)
            scores = np.array([c[int(k)] for c, k in zip(cand_scores, idx, strict=True)])
        else:
            idx = exp_idx
            scores = self._scores(intensity, sigma, idx)
            predicted = None
        p = conformal_p_values(scores, self.calibration_scores)
        flagged = benjamini_hochberg(p, self.alpha) if fdr else p <= self.alpha
        hs = hyperscore(1.0 - p)
        thr = self.threshold
        verdicts = []
        for i in range(len(scores)):
            recipe = expected[i] if expected[i] is not None else self.recipes[idx[i]]
            verdict = Verdict(float(scores[i]), thr, bool(flagged[i]), float(p[i]),
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
