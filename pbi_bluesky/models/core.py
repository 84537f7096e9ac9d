"""One scoring model: everything fitted from a set of training normals.

:class:`ScoringCore` holds the parts of :class:`~.detector.AnomalyDetector` that one
training set determines: the feature scaler, each recipe's reference curve and batch
scatter, the triplet-trained network, the per-recipe one-class SVMs and PCA subspaces,
and the per-recipe standardisation of the score parts. A split-calibrated detector is one
such model; a cross-conformal one holds K of them (``members``), each trained without one
fold of the normals (:mod:`~.conformal`).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm import tqdm

from pbi_bluesky.models.augment import NEGATIVES, training_negatives
from pbi_bluesky.models.likelihood import RecipeLikelihood
from pbi_bluesky.models.network import EmbeddingCNN
from pbi_bluesky.models.ocsvm import RBFOneClass
from pbi_bluesky.models.representation import FeatureScaler, residual_z
from pbi_bluesky.models.subspace import RecipeSubspace
from pbi_bluesky.models.triplet import triplet_loss

__all__ = ["ScoringCore", "EMBED_CHUNK", "PART_NAMES", "RESIDUAL_WEIGHT", "epoch_progress"]

logger = logging.getLogger(__name__)

RESIDUAL_WEIGHT = 1.0
"""Scale of the residual-chi-square feature: this many mean cluster radii per std."""
EMBED_CHUNK = 256
"""Curves per network forward pass when embedding (see :meth:`ScoringCore._embed`)."""
PART_NAMES = ("embedding", "subspace", "likelihood", "low_q")
"""The parts of the anomaly score, in the column order of ``_score_parts``."""


class epoch_progress:
    """Progress over training epochs: a tqdm bar on a terminal (redrawn at most once a
    second), otherwise one log line every ``max(1, epochs // 10)`` epochs, so a log file
    gets about ten lines per training rather than one per update."""

    def __init__(self, epochs: int, *, enabled: bool, desc: str = "training") -> None:
        self.epochs, self.desc = epochs, desc
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.enabled = enabled
        self.bar = tqdm(total=epochs, desc=desc, unit="epoch", mininterval=1.0,
                        disable=not self.tty)
        self.every = max(1, epochs // 10)
        self.t0 = time.perf_counter()

    def update(self, epoch: int, loss: float) -> None:
        if self.tty:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.enabled and ((epoch + 1) % self.every == 0 or epoch + 1 == self.epochs):
            logger.info("%s: epoch %d/%d, triplet loss %.4f (%.1f s)", self.desc, epoch + 1,
                        self.epochs, loss, time.perf_counter() - self.t0)

    def close(self) -> None:
        self.bar.close()


class ScoringCore:
    """The fitted parts of one scoring model (mixed into ``AnomalyDetector``)."""

    # set by AnomalyDetector.__init__
    network: EmbeddingCNN
    recipes: list[str]
    scaler: FeatureScaler | None
    references: NDArray
    scatter: NDArray
    svms: list[RBFOneClass]
    centroids: NDArray
    history: list[float]
    residual_stats: NDArray
    subspaces: list[RecipeSubspace]
    likelihoods: list[RecipeLikelihood]
    score_scale: NDArray

    # -- inputs -------------------------------------------------------------------------
    def _inputs(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> torch.Tensor:
        assert self.scaler is not None
        ch0 = self.scaler.transform(intensity)
        z = residual_z(intensity, sigma, self.references[recipe_idx], self.scatter[recipe_idx])
        ch1 = np.arcsinh(z / 3.0).astype(np.float32)
        return torch.from_numpy(np.stack([ch0, ch1], axis=1))

    @torch.no_grad()
    def _embed(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        # an int8 copy when the bundle asks for one (models.quantize), else the network
        net = getattr(self, "inference_network", None)
        net = self.network if net is None else net
        net.eval()
        out = []
        # chunks of 256: measured 2.3x faster per profile than 1024 on a 2-core CPU (the
        # activations of a chunk stay in cache)
        for start in range(0, len(intensity), EMBED_CHUNK):
            sl = slice(start, start + EMBED_CHUNK)
            out.append(net(self._inputs(intensity[sl], sigma[sl], recipe_idx[sl])))
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, 0))

    # -- fitting ------------------------------------------------------------------------
    def _fit_references(self, intensity: NDArray, sigma: NDArray, labels: NDArray) -> None:
        """Feature scaler, and each recipe's reference (mean) curve and batch scatter."""
        self.scaler = FeatureScaler.fit(intensity, sigma)
        n_rec = len(self.recipes)
        self.references = np.array([intensity[labels == k].mean(0) for k in range(n_rec)])
        self.scatter = np.array([intensity[labels == k].std(0) for k in range(n_rec)])

    def _fit_core(self, intensity: NDArray, sigma: NDArray, labels: NDArray,
                  rng: np.random.Generator, seed: int, progress: bool,
                  nproc: int = 1) -> float:
        """Fit every part from training normals; returns the network training time (s).

        ``nproc`` > 1 trains the network with torch DistributedDataParallel in that many
        processes (:mod:`~.distributed`); everything else is fitted here.
        """
        torch.manual_seed(seed)
        # fresh weights drawn under the seed: the constructor's draw depends on whatever
        # used torch's global generator before, so refitting was not reproducible
        self.network = EmbeddingCNN(self.network.config)
        self.inference_network = None  # an int8 copy of old weights would be stale
        self._fit_references(intensity, sigma, labels)
        t0 = time.perf_counter()
        if nproc > 1:
            from pbi_bluesky.models.distributed import train_network_ddp

            self.ddp_info = train_network_ddp(self, intensity, sigma, labels,
                                              int(rng.integers(2**62)), nproc, progress)
        else:
            self._train_network(intensity, sigma, labels, rng, progress)
        elapsed = time.perf_counter() - t0
        self._fit_scorers(intensity, sigma, labels)
        return elapsed

    def _training_set(
        self, intensity: NDArray, sigma: NDArray, labels: NDArray, rng: np.random.Generator
    ) -> tuple[NDArray, NDArray, NDArray, NDArray]:
        """Normals + synthetic negatives with triplet labels (:func:`~.augment.
        training_negatives`, kinds from ``TrainingConfig.negatives``)."""
        cfg = self.training  # type: ignore[attr-defined]
        kinds = tuple(cfg.negatives) if cfg.negatives is not None else NEGATIVES
        return training_negatives(self.grid.q, intensity, sigma, labels,  # type: ignore
                                  self.references, self._nearest_other_recipe(), kinds,
                                  cfg.synthetic_per_normal, rng)

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
        progress: bool, *, network: torch.nn.Module | None = None,
        shard: tuple[int, int] = (0, 1), device: torch.device | None = None,
        mean_loss: Any = None,
    ) -> None:
        """Triplet training of the embedding network.

        One process: ``network`` is ``self.network``. Data-parallel (:mod:`~.distributed`):
        every rank draws the same training set and order from an identically seeded
        ``rng``, takes its ``shard = (rank, world)`` of each batch, and ``network`` is the
        DistributedDataParallel wrapper that averages the gradients; ``mean_loss`` averages
        the epoch loss over the ranks.
        """
        cfg = self.training  # type: ignore[attr-defined]
        net = self.network if network is None else network
        rank, world = shard
        opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
        # cosine decay to zero over the run: the last epochs settle instead of bouncing
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
        self.history = []
        bar = epoch_progress(cfg.epochs, enabled=progress)
        try:
            for epoch in range(cfg.epochs):
                x, s, r, tl = self._training_set(intensity, sigma, labels, rng)
                inputs = self._inputs(x, s, r)
                targets = torch.from_numpy(tl)
                order = torch.from_numpy(rng.permutation(len(x)))
                net.train()
                losses = []
                for start in range(0, len(x), cfg.batch_size):
                    idx = order[start : start + cfg.batch_size]
                    if world > 1:
                        if len(idx) < 2 * world:  # the same decision on every rank
                            continue
                        idx = idx[rank::world]
                    batch, batch_targets = inputs[idx], targets[idx]
                    if device is not None:
                        batch, batch_targets = batch.to(device), batch_targets.to(device)
                    loss = triplet_loss(net(batch), batch_targets, cfg.margin, cfg.mining)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    losses.append(float(loss.detach()))
                schedule.step()
                epoch_loss = float(np.mean(losses))
                self.history.append(epoch_loss if mean_loss is None else mean_loss(epoch_loss))
                bar.update(epoch, self.history[-1])
        finally:
            bar.close()

    def _fit_scorers(self, intensity: NDArray, sigma: NDArray, labels: NDArray) -> None:
        """Everything after the network: centroids, one-class SVMs, subspaces, scales."""
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
        features = self.scaler.transform(intensity)
        feature_sigma = self.scaler.transform_sigma(intensity, sigma)
        fitted = [self._fit_recipe(feats[labels == k], features[labels == k],
                                   feature_sigma[labels == k], intensity[labels == k],
                                   sigma[labels == k]) for k in range(len(self.recipes))]
        self.svms = [f[0] for f in fitted]
        self.subspaces = [f[1] for f in fitted]
        self.likelihoods = [f[2] for f in fitted]
        # standardise each part by the spread it has on normals the recipe's models did not
        # see (5-fold inside the training normals; in-sample spreads are too narrow, which
        # would let the most flexible part dominate the sum); in-sample below 10 normals
        n_parts = len(PART_NAMES)
        self.score_scale = np.tile([0.0, 1.0], (len(self.recipes), n_parts))
        for k in range(len(self.recipes)):
            sel = np.nonzero(labels == k)[0]
            raw = self._out_of_fold(k, feats[sel], features[sel], feature_sigma[sel],
                                    intensity[sel], sigma[sel])
            for j in range(n_parts):
                q25, q50, q75 = np.percentile(raw[:, j], [25, 50, 75])
                self.score_scale[k, 2 * j : 2 * j + 2] = (q50, max(q75 - q25, 1e-6))

    def _fit_recipe(self, feats, features, feature_sigma, intensity, sigma):
        """One recipe's one-class SVM, subspace and likelihood models."""
        cfg = self.training  # type: ignore[attr-defined]
        return (RBFOneClass.fit(feats, nu=cfg.nu),
                RecipeSubspace.fit(features, cfg.subspace_components, feature_sigma),
                RecipeLikelihood.fit(intensity, sigma, self.grid.q,  # type: ignore
                                     cfg.likelihood_components))

    def _out_of_fold(self, k: int, feats, features, feature_sigma, intensity,
                     sigma) -> NDArray:
        """Unstandardised score parts of recipe ``k``'s training normals, each from models
        fitted without it (5 folds), or in-sample for fewer than 10 normals."""
        n = len(feats)
        raw = np.zeros((n, len(PART_NAMES)))
        folds = [np.arange(n)] if n < 10 else [np.arange(f, n, 5) for f in range(5)]
        for held in folds:
            keep = np.setdiff1d(np.arange(n), held) if len(folds) > 1 else held
            svm, sub, lik = (self._fit_recipe(feats[keep], features[keep],
                                              feature_sigma[keep], intensity[keep], sigma[keep])
                             if len(folds) > 1 else
                             (self.svms[k], self.subspaces[k], self.likelihoods[k]))
            raw[held, 0] = svm.score(feats[held])
            raw[held, 1] = sub.statistic(features[held], feature_sigma[held])
            raw[held, 2], raw[held, 3] = lik.statistics(intensity[held], sigma[held])
        return raw

    # -- scoring ------------------------------------------------------------------------
    def _log_chi2(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        z = residual_z(intensity, sigma, self.references[recipe_idx], self.scatter[recipe_idx])
        return np.log(np.mean(z**2, axis=1) + 1e-12)

    def _augment(self, emb: NDArray, log_chi2: NDArray, recipe_idx: NDArray) -> NDArray:
        """Embedding plus the standardised log residual chi-square, scaled to the cluster.

        The network's unit-norm embedding cannot express *how far* a curve is from its
        recipe once it is far; the residual statistic can. Scaled to the recipe's mean
        cluster radius per standard deviation, it leaves normals where they are and pushes
        grossly different curves (an offset, a wrong scale) out of the boundary.
        """
        stats = self.residual_stats[recipe_idx]
        extra = (log_chi2 - stats[:, 0]) / stats[:, 1] * stats[:, 2]
        return np.hstack([emb, extra[:, None]])

    def _score_parts(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        """The parts of the anomaly score under each curve's recipe, shape (n, 4)
        (:data:`PART_NAMES`).

        0. ``embedding``: the one-class SVM score of the (augmented) embedding;
        1. ``subspace``: the recipe subspace statistic (:mod:`~.subspace`, T2 + SPE of the
           standardised curves);
        2. ``likelihood``: T2 + noise-weighted SPE of the recipe's Gaussian model, each bin
           against its batch scatter and the curve's own sigma (:mod:`~.likelihood`);
        3. ``low_q``: the low-q upturn matched filter (:mod:`~.likelihood`).

        Each is centred on the median of the recipe's training normals and divided by
        their interquartile range, so the parts are commensurate and recipes can share a
        pooled calibration set. Parts a model does not have (older bundles, the paper's
        pipeline) are 0.
        """
        emb = self._augment(self._embed(intensity, sigma, recipe_idx),
                            self._log_chi2(intensity, sigma, recipe_idx), recipe_idx)
        features = self.scaler.transform(intensity) if self.subspaces else None
        feature_sigma = (self.scaler.transform_sigma(intensity, sigma) if self.subspaces
                         else None)
        likelihoods = getattr(self, "likelihoods", [])
        out = np.zeros((len(intensity), len(PART_NAMES)))
        scale = self.score_scale
        for k in np.unique(recipe_idx):
            sel = recipe_idx == k
            raw = np.zeros((int(sel.sum()), len(PART_NAMES)))
            raw[:, 0] = self.svms[k].score(emb[sel])
            if features is not None:
                raw[:, 1] = self.subspaces[k].statistic(features[sel], feature_sigma[sel])
            if likelihoods:
                raw[:, 2], raw[:, 3] = likelihoods[k].statistics(intensity[sel], sigma[sel])
            n = min(scale.shape[1] // 2, len(PART_NAMES))
            out[sel, :n] = (raw[:, :n] - scale[k, 0:2 * n:2]) / scale[k, 1:2 * n:2]
        return out

    def part_weights(self) -> NDArray:
        """Weight of each part in the score (0 for parts this model does not have)."""
        cfg = self.training  # type: ignore[attr-defined]
        has_lik = bool(getattr(self, "likelihoods", []))
        return np.array([1.0, cfg.subspace_weight if self.subspaces else 0.0,
                         cfg.likelihood_weight if has_lik else 0.0,
                         cfg.low_q_weight if has_lik else 0.0])

    def _combine(self, parts: NDArray, weights: NDArray | None = None) -> NDArray:
        """Anomaly score from its parts: the weighted sum, the low-q part one-sided (only
        an upturn counts, a dip below normal is the likelihood part's business)."""
        w = self.part_weights() if weights is None else np.asarray(weights, dtype=np.float64)
        p = np.zeros((len(parts), len(PART_NAMES)))
        p[:, : parts.shape[1]] = parts[:, : len(PART_NAMES)]
        p[:, 3] = np.maximum(p[:, 3], 0.0)
        return p @ w

    def _single_scores(self, intensity: NDArray, sigma: NDArray,
                       recipe_idx: NDArray) -> NDArray:
        """Anomaly score of each curve under its recipe by this one model."""
        return self._combine(self._score_parts(intensity, sigma, recipe_idx))

    def _reference_chi2(self, intensity: NDArray, sigma: NDArray) -> NDArray:
        """Mean squared residual to every recipe's reference, shape (n, n_recipes)."""
        var = sigma**2
        out = np.empty((len(intensity), len(self.recipes)))
        for k in range(len(self.recipes)):
            out[:, k] = np.mean((intensity - self.references[k]) ** 2
                                / (var + self.scatter[k] ** 2), axis=1)
        return out

    # -- storage ------------------------------------------------------------------------
    def core_arrays(self) -> dict[str, NDArray]:
        """Plain arrays of this model (network weights excluded)."""
        assert self.scaler is not None
        arrays: dict[str, NDArray] = {
            "noise_scale": self.scaler.noise_scale,
            "feature_mean": self.scaler.mean,
            "feature_std": self.scaler.std,
            "references": self.references,
            "scatter": self.scatter,
            "centroids": self.centroids,
            "extra_residual_stats": self.residual_stats,
            "extra_score_scale": self.score_scale,
        }
        for k, svm in enumerate(self.svms):
            arrays[f"svm{k}_support_vectors"] = svm.support_vectors
            arrays[f"svm{k}_dual_coef"] = svm.dual_coef
            arrays[f"svm{k}_intercept_gamma"] = np.array([svm.intercept, svm.gamma])
        for k, sub in enumerate(self.subspaces):
            arrays.update({f"extra_{n}": v for n, v in sub.to_arrays(f"subspace{k}").items()})
        for k, lik in enumerate(getattr(self, "likelihoods", [])):
            arrays.update({f"extra_{n}": v for n, v in lik.to_arrays(f"likelihood{k}").items()})
        return arrays

    def load_core_arrays(self, arrays: dict[str, Any]) -> None:
        """Inverse of :meth:`core_arrays` (raises KeyError naming a missing array)."""
        self.scaler = FeatureScaler(arrays["noise_scale"], arrays["feature_mean"],
                                    arrays["feature_std"])
        self.references = arrays["references"]
        self.scatter = arrays["scatter"]
        self.centroids = arrays["centroids"]
        self.svms = []
        for k in range(len(self.recipes)):
            intercept, gamma = arrays[f"svm{k}_intercept_gamma"]
            self.svms.append(RBFOneClass(arrays[f"svm{k}_support_vectors"],
                                         arrays[f"svm{k}_dual_coef"], float(intercept),
                                         float(gamma)))
        self.residual_stats = arrays["extra_residual_stats"]
        k = len(self.residual_stats)
        self.score_scale = arrays.get("extra_score_scale",
                                      np.tile([0.0, 1.0, 0.0, 1.0], (k, 1)))
        extras = {n[len("extra_"):]: v for n, v in arrays.items() if n.startswith("extra_")}
        self.subspaces = [RecipeSubspace.from_arrays(extras, f"subspace{j}")
                          for j in range(k) if f"subspace{j}_mean" in extras]
        self.likelihoods = [RecipeLikelihood.from_arrays(extras, f"likelihood{j}")
                            for j in range(k) if f"likelihood{j}_mean" in extras]
