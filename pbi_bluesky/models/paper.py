"""The seed paper's detector, taken literally, as a trainable and loadable pipeline.

``pbi train --detector paper`` builds it; ``pbi score`` and the live callback load it like
any other bundle. What it does (and why it loses to the default, see ``make bench-models``):

* every curve is scaled to [0, 1] (min-max) and fed as one channel: absolute intensity,
  thickness/transmission and background level are erased;
* the same 1D CNN is trained with triplet loss on recipe labels only (no synthetic
  anomaly negatives), so within-recipe variation is what it learns to ignore;
* one OneClassSVM is fitted on the embeddings of all normal training curves (not per
  recipe); the expected recipe plays no part in the score;
* the predicted recipe is the nearest recipe centroid in embedding space.

For a fair comparison, verdicts use the same conformal p-values at ``alpha`` from a
held-out calibration split as the default detector, and the same HyperScore display. Its
training steps are :class:`~.training.PaperTrainer`; its input encoding is ``"minmax"``
(:data:`~.fitted.ENCODINGS`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pbi_bluesky.models.detector import AnomalyDetector
from pbi_bluesky.models.settings import TrainingConfig, Verdict

__all__ = ["PaperPipeline"]


class PaperPipeline(AnomalyDetector):
    """Min-max scaled curves -> triplet CNN on recipe labels -> one pooled OneClassSVM."""

    name = "paper"
    preprocessing = {
        "resample": "linear interpolation in log q onto q_grid",
        "channels": ["(I - min I) / (max I - min I) per curve (the paper's scaling)"],
    }
    encoding = "minmax"

    @classmethod
    def default_training(cls) -> TrainingConfig:
        """30 epochs (as benchmarked) and no subspace part."""
        return TrainingConfig(epochs=30, subspace_weight=0.0)

    def fit(self, profiles: list, recipes: list[str], *, progress: bool = True,
            nproc: int = 1) -> PaperPipeline:
        """Train as the paper does; needs at least two recipes (its triplets are recipes).

        Parameters
        ----------
        profiles, recipes
            The normal profiles and the recipe of each.
        progress
            Show the epoch progress.
        nproc
            > 1: train the network data-parallel, as for the default detector.
        """
        if len(set(recipes)) < 2:
            raise ValueError("the paper's pipeline learns from recipe labels only and needs "
                             "at least 2 recipes; with one recipe it has no negatives (use "
                             "the default detector)")
        super().fit(profiles, recipes, progress=progress, nproc=nproc)
        return self

    def _score_parts(self, intensity: NDArray, sigma: NDArray, recipe_idx: NDArray) -> NDArray:
        out = np.zeros((len(intensity), 4))
        if len(intensity):
            out[:, 0] = self.svms[0].score(self._embed(intensity, sigma, recipe_idx))
        return out

    def predict_recipe(self, intensity: NDArray, sigma: NDArray,
                       shortlist: int | None = None) -> NDArray[np.int64]:
        """Nearest recipe centroid in embedding space (``shortlist`` is ignored)."""
        model = self.models[0]  # a cross-conformal pipeline: its first model's centroids
        emb = model._embed(intensity, sigma, np.zeros(len(intensity), dtype=np.int64))
        dist = ((emb[:, None, :] - model.centroids[None, :, :]) ** 2).sum(-1)
        return dist.argmin(1).astype(np.int64)

    def score_arrays(
        self, intensity: NDArray, sigma: NDArray, expected: list[str | None],
        *, fdr: bool = False, explain: str = "flagged", predict: bool = True,
        shortlist: int | None = None,
    ) -> list[Verdict]:
        """As :meth:`AnomalyDetector.score_arrays`; the score ignores the expected recipe."""
        if not predict and all(e is not None for e in expected):
            return super().score_arrays(intensity, sigma, expected, fdr=fdr, explain=explain,
                                        predict=False)
        predicted = self.predict_recipe(intensity, sigma)
        filled = [e if e is not None else self.recipes[k]
                  for e, k in zip(expected, predicted, strict=True)]
        verdicts = super().score_arrays(intensity, sigma, filled, fdr=fdr, explain=explain,
                                        predict=False)
        if predict:
            for verdict, k in zip(verdicts, predicted, strict=True):
                verdict.predicted_composition = self.recipes[k]
        return verdicts
