"""Baseline detectors and the seed paper's exact pipeline, for honest comparison.

Every baseline works on curves resampled to the model grid and follows one protocol:
``fit(intensity, sigma, recipe_idx, n_recipes)`` on training normals, then
``score(intensity, sigma, recipe_idx)`` (higher = more anomalous). Thresholds come from
the same conformal calibration as the default detector (see :mod:`.evaluate`).

* ``chi2_reference``: mean squared residual to the recipe's mean curve, in units of noise
  and batch scatter.
* ``cormap``: CorMap test (freesas) of the curve against the recipe reference: score is
  -log10 P, Bonferroni-corrected over the recipes the model knows.
* ``pca_residual``: per-recipe PCA (5 components) on the standardised asinh curves;
  reconstruction error.
* ``isolation_forest`` / ``ocsvm_raw``: scikit-learn on the standardised asinh curves,
  recipe-blind (generic detectors).
* ``paper``: the seed paper taken literally: each curve scaled to [0, 1], the same 1D CNN
  trained with triplet loss on recipe labels only, one OneClassSVM on all embeddings.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from pbi_bluesky.models.ocsvm import RBFOneClass
from pbi_bluesky.models.representation import FeatureScaler, QGrid, residual_z

__all__ = ["Scorer", "BASELINES", "make_baseline"]


class Scorer(Protocol):
    """What a detector on resampled curves provides."""

    name: str

    def fit(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray,
            n_recipes: int) -> None:
        """Fit on normal curves labelled with their recipe index.

        Parameters
        ----------
        intensity, sigma
            Resampled normal curves and their uncertainties, shape (n, npt).
        recipe_idx
            Recipe index of each curve.
        n_recipes
            Number of recipes.
        """

    def score(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        """Return one anomaly score per curve under its recipe (higher: more anomalous)."""


class _RecipeReference:
    def fit(self, intensity, sigma, recipe_idx, n_recipes):
        self.ref = np.array([intensity[recipe_idx == k].mean(0) for k in range(n_recipes)])
        self.scatter = np.array([intensity[recipe_idx == k].std(0) for k in range(n_recipes)])
        self.n_recipes = n_recipes


class Chi2Reference(_RecipeReference):
    name = "chi2_reference"

    def score(self, intensity, sigma, recipe_idx):
        z = residual_z(intensity, sigma, self.ref[recipe_idx], self.scatter[recipe_idx])
        return np.mean(z**2, axis=1)


class CorMap(_RecipeReference):
    name = "cormap"

    def score(self, intensity, sigma, recipe_idx):
        from freesas.cormap import gof

        out = np.empty(len(intensity))
        for i, (curve, k) in enumerate(zip(intensity, recipe_idx, strict=True)):
            p = min(1.0, gof(self.ref[k], curve).P * self.n_recipes)  # Bonferroni
            out[i] = -np.log10(max(p, 1e-300))
        return out


class _Standardised:
    def _prepare(self, intensity, sigma):
        self.scaler = FeatureScaler.fit(intensity, sigma)
        return self.scaler.transform(intensity)


class PCAResidual(_Standardised):
    name = "pca_residual"

    def fit(self, intensity, sigma, recipe_idx, n_recipes):
        from sklearn.decomposition import PCA

        x = self._prepare(intensity, sigma)
        self.models = [PCA(n_components=min(5, int((recipe_idx == k).sum()) - 1))
                       .fit(x[recipe_idx == k]) for k in range(n_recipes)]

    def score(self, intensity, sigma, recipe_idx):
        x = self.scaler.transform(intensity)
        out = np.empty(len(x))
        for k in np.unique(recipe_idx):
            sel = recipe_idx == k
            pca = self.models[k]
            recon = pca.inverse_transform(pca.transform(x[sel]))
            out[sel] = np.mean((x[sel] - recon) ** 2, axis=1)
        return out


class IsolationForestRaw(_Standardised):
    name = "isolation_forest"

    def fit(self, intensity, sigma, recipe_idx, n_recipes):
        from sklearn.ensemble import IsolationForest

        self.model = IsolationForest(n_estimators=200, random_state=0).fit(
            self._prepare(intensity, sigma))

    def score(self, intensity, sigma, recipe_idx):
        return -self.model.score_samples(self.scaler.transform(intensity))


class OCSVMRaw(_Standardised):
    name = "ocsvm_raw"

    def fit(self, intensity, sigma, recipe_idx, n_recipes):
        self.model = RBFOneClass.fit(self._prepare(intensity, sigma), nu=0.05)

    def score(self, intensity, sigma, recipe_idx):
        return self.model.score(self.scaler.transform(intensity))


class PaperDetector:
    """The seed paper's pipeline, literally (:class:`~.paper.PaperPipeline`).

    Fitted on the evaluation's training split and scored like the other baselines.
    """

    name = "paper"

    def __init__(self, epochs: int = 30, seed: int = 0) -> None:
        self.epochs, self.seed = epochs, seed

    def fit(self, intensity, sigma, recipe_idx, n_recipes):
        from pbi_bluesky.models.paper import PaperPipeline
        from pbi_bluesky.models.training import PaperTrainer

        cfg = replace(PaperPipeline.default_training(), epochs=self.epochs, seed=self.seed)
        torch.manual_seed(self.seed)
        self.pipeline = PaperPipeline(QGrid(npt=intensity.shape[1]), training=cfg)
        self.pipeline.recipes = [str(k) for k in range(n_recipes)]
        labels = np.asarray(recipe_idx)
        trainer = PaperTrainer(self.pipeline)
        trainer.train_network(intensity, sigma, labels, np.random.default_rng(self.seed),
                              progress=False)
        trainer.fit_scorers(intensity, sigma, labels)

    def score(self, intensity, sigma, recipe_idx):
        return self.pipeline._scores(intensity, sigma, np.asarray(recipe_idx))


BASELINES = {
    cls.name: cls
    for cls in (Chi2Reference, CorMap, PCAResidual, IsolationForestRaw, OCSVMRaw, PaperDetector)
}


def make_baseline(name: str) -> Scorer:
    """Return a fresh baseline detector by name (see :data:`BASELINES`)."""
    try:
        return BASELINES[name]()
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(BASELINES)}") from None
