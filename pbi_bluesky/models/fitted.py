"""One fitted scoring model: what a set of training normals determines, and how it scores.

:class:`FittedModel` holds the feature scaler, each recipe's reference curve and batch
scatter, the embedding network (and its int8 copy, :mod:`~.quantize`), the per-recipe
one-class SVMs, PCA subspaces and likelihood models, and the per-recipe standardisation of
the score parts; it turns curves into network inputs, embeddings and score parts, and
stores itself as plain arrays. It fits nothing: :class:`~.training.Trainer` fits it.

A split-calibrated :class:`~.detector.AnomalyDetector` is one such model; a cross-conformal
one holds K of them (``members``), each trained without one fold of the normals
(:mod:`~.conformal`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from pbi_bluesky.models.likelihood import RecipeLikelihood
from pbi_bluesky.models.network import EmbeddingCNN, NetworkConfig
from pbi_bluesky.models.ocsvm import RBFOneClass
from pbi_bluesky.models.representation import FeatureScaler, QGrid, residual_z
from pbi_bluesky.models.settings import TrainingConfig
from pbi_bluesky.models.subspace import RecipeSubspace

__all__ = ["EMBED_CHUNK", "ENCODINGS", "PART_NAMES", "RESIDUAL_WEIGHT", "FittedModel"]

RESIDUAL_WEIGHT = 1.0
"""Scale of the residual-chi-square feature: this many mean cluster radii per std."""
EMBED_CHUNK = 256
"""Curves per network forward pass when embedding (see :meth:`FittedModel._embed`)."""
PART_NAMES = ("embedding", "subspace", "likelihood", "low_q")
"""The parts of the anomaly score, in the column order of ``_score_parts``."""
ENCODINGS = {"residual": 2, "minmax": 1}
"""How curves become network inputs, with the number of input channels:

* ``residual``: the standardised ``asinh(I / noise_scale)`` and ``asinh(z / 3)`` of the
  residual to the expected recipe's reference (the default detector);
* ``minmax``: each curve scaled to [0, 1] (the seed paper's pipeline).
"""


class FittedModel:
    """The fitted parts of one scoring model (see the module docstring).

    Parameters
    ----------
    grid
        The q grid curves are resampled onto (default :class:`~.representation.QGrid`).
    network_config
        The embedding network's architecture (default: the encoding's channels on the
        grid's length).
    training
        The training settings (the score's part weights come from them).
    encoding
        One of :data:`ENCODINGS` (default: the class's ``encoding``).
    """

    name = "pbi"
    """The model kind, recorded in bundles (``detector`` in ``model.json``)."""
    encoding = "residual"

    def __init__(self, grid: QGrid | None = None, network_config: NetworkConfig | None = None,
                 training: TrainingConfig | None = None, *, encoding: str | None = None
                 ) -> None:
        self.encoding = encoding or type(self).encoding
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {self.encoding!r}; known: {list(ENCODINGS)}")
        self.grid = grid or QGrid()
        self.training = training or self.default_training()
        cfg = network_config or NetworkConfig(in_channels=self.in_channels,
                                              length=self.grid.npt)
        if cfg.length != self.grid.npt:
            raise ValueError(f"network length {cfg.length} != grid npt {self.grid.npt}")
        self.network = EmbeddingCNN(cfg)
        self.inference_network: torch.nn.Module | None = None
        """An int8 copy of the network when the bundle asks for one (:mod:`~.quantize`)."""
        self.recipes: list[str] = []
        self.scaler: FeatureScaler | None = None
        self.references = np.zeros((0, self.grid.npt))
        self.scatter = np.zeros((0, self.grid.npt))
        self.svms: list[RBFOneClass] = []
        self.centroids = np.zeros((0, cfg.embedding_dim))
        # per recipe: mean and std of log chi-square to the reference, and its weight
        self.residual_stats = np.zeros((0, 3))
        # per recipe: PCA model of its normal curves (T2 + SPE)
        self.subspaces: list[RecipeSubspace] = []
        # per recipe: Gaussian model of its normals with their noise (likelihood, low-q)
        self.likelihoods: list[RecipeLikelihood] = []
        # per recipe: median and interquartile range of each score part on its normals
        self.score_scale = np.zeros((0, 4))
        self.history: list[float] = []
        """Triplet loss per training epoch."""
        self.ddp_info: dict[str, Any] = {}
        """How the network was trained data-parallel (:mod:`~.distributed`), if it was."""

    @property
    def in_channels(self) -> int:
        """Network input channels of this model's encoding."""
        return ENCODINGS[self.encoding]

    @classmethod
    def default_training(cls) -> TrainingConfig:
        """Return the training settings this kind of model uses unless told otherwise."""
        return TrainingConfig()

    # -- inputs -------------------------------------------------------------------------
    def _inputs(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> torch.Tensor:
        """Network inputs of curves under their recipes, shape (n, channels, npt)."""
        if self.encoding == "minmax":
            lo = intensity.min(1, keepdims=True)
            span = np.maximum(intensity.max(1, keepdims=True) - lo, 1e-30)
            return torch.from_numpy(((intensity - lo) / span).astype(np.float32)[:, None, :])
        assert self.scaler is not None
        ch0 = self.scaler.transform(intensity)
        z = residual_z(intensity, sigma, self.references[recipe_idx], self.scatter[recipe_idx])
        ch1 = np.arcsinh(z / 3.0).astype(np.float32)
        return torch.from_numpy(np.stack([ch0, ch1], axis=1))

    @torch.no_grad()
    def _embed(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        # an int8 copy when the bundle asks for one (models.quantize), else the network
        net = self.network if self.inference_network is None else self.inference_network
        net.eval()
        out = []
        # chunks of 256: measured 2.3x faster per profile than 1024 on a 2-core CPU (the
        # activations of a chunk stay in cache)
        for start in range(0, len(intensity), EMBED_CHUNK):
            sl = slice(start, start + EMBED_CHUNK)
            out.append(net(self._inputs(intensity[sl], sigma[sl], recipe_idx[sl])))
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, 0))

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
        """Return the parts of the anomaly score under each curve's recipe, shape (n, 4).

        The parts, in the order of :data:`PART_NAMES`:

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
        assert self.scaler is not None
        features = self.scaler.transform(intensity) if self.subspaces else None
        feature_sigma = (self.scaler.transform_sigma(intensity, sigma) if self.subspaces
                         else None)
        out = np.zeros((len(intensity), len(PART_NAMES)))
        scale = self.score_scale
        for k in np.unique(recipe_idx):
            sel = recipe_idx == k
            raw = np.zeros((int(sel.sum()), len(PART_NAMES)))
            raw[:, 0] = self.svms[k].score(emb[sel])
            if features is not None and feature_sigma is not None:
                raw[:, 1] = self.subspaces[k].statistic(features[sel], feature_sigma[sel])
            if self.likelihoods:
                raw[:, 2], raw[:, 3] = self.likelihoods[k].statistics(intensity[sel],
                                                                      sigma[sel])
            n = min(scale.shape[1] // 2, len(PART_NAMES))
            out[sel, :n] = (raw[:, :n] - scale[k, 0:2 * n:2]) / scale[k, 1:2 * n:2]
        return out

    def part_weights(self) -> NDArray:
        """Weight of each part in the score (0 for parts this model does not have)."""
        cfg = self.training
        has_lik = bool(self.likelihoods)
        return np.array([1.0, cfg.subspace_weight if self.subspaces else 0.0,
                         cfg.likelihood_weight if has_lik else 0.0,
                         cfg.low_q_weight if has_lik else 0.0])

    def _combine(self, parts: NDArray, weights: NDArray | None = None) -> NDArray:
        """Return the anomaly score from its parts: their weighted sum.

        The low-q part counts one-sided (only an upturn counts, a dip below normal is the
        likelihood part's business).
        """
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
        for k, lik in enumerate(self.likelihoods):
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
