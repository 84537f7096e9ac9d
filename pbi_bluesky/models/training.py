"""Training one model: the steps that fit a :class:`~.fitted.FittedModel` from normals.

:class:`Trainer` fits, on one set of training normals (on the model grid, with recipe
indices):

1. the feature scaler and each recipe's reference (mean) curve and batch scatter (std)
   (:meth:`Trainer.fit_references`);
2. the embedding network, with triplet loss (:meth:`Trainer.train_network`), on the
   normals plus synthetic negatives (:meth:`Trainer.training_set`, :mod:`~.augment`: each
   kind per recipe its own class); in one process here, or data-parallel in several
   (:mod:`~.distributed` calls :meth:`Trainer.train_network` in every rank with its share
   of each batch);
3. everything after the network (:meth:`Trainer.fit_scorers`): the per-recipe one-class
   SVM on the embeddings (plus the standardised log residual chi-square), PCA subspace and
   likelihood model, and the standardisation of each score part on normals the recipe's
   models did not see.

:class:`PaperTrainer` trains the seed paper's pipeline (recipe labels only, one pooled
SVM). :data:`TRAINERS` names both, so a training process rebuilds the right one from a
name (:mod:`~.distributed`), never from a class sent to it. How a detector is assembled
from trained models (calibration, cross-conformal members) is :mod:`~.fitting`'s job.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm import tqdm

from pbi_bluesky.models.augment import NEGATIVES, training_negatives
from pbi_bluesky.models.fitted import PART_NAMES, RESIDUAL_WEIGHT, FittedModel
from pbi_bluesky.models.likelihood import RecipeLikelihood
from pbi_bluesky.models.network import EmbeddingCNN
from pbi_bluesky.models.ocsvm import RBFOneClass
from pbi_bluesky.models.representation import FeatureScaler
from pbi_bluesky.models.subspace import RecipeSubspace
from pbi_bluesky.models.triplet import triplet_loss

__all__ = ["TRAINERS", "PaperTrainer", "Trainer", "epoch_progress"]

logger = logging.getLogger(__name__)


class epoch_progress:
    """Progress over training epochs.

    A tqdm bar on a terminal (redrawn at most once a second), otherwise one log line every
    ``max(1, epochs // 10)`` epochs, so a log file gets about ten lines per training rather
    than one per update.
    """

    def __init__(self, epochs: int, *, enabled: bool, desc: str = "training") -> None:
        self.epochs, self.desc = epochs, desc
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        self.enabled = enabled
        self.bar = tqdm(total=epochs, desc=desc, unit="epoch", mininterval=1.0,
                        disable=not self.tty)
        self.every = max(1, epochs // 10)
        self.t0 = time.perf_counter()

    def update(self, epoch: int, loss: float) -> None:
        """Record epoch ``epoch`` (0-based) with its mean loss."""
        if self.tty:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif self.enabled and ((epoch + 1) % self.every == 0 or epoch + 1 == self.epochs):
            logger.info("%s: epoch %d/%d, triplet loss %.4f (%.1f s)", self.desc, epoch + 1,
                        self.epochs, loss, time.perf_counter() - self.t0)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


class Trainer:
    """Fits the parts of one :class:`~.fitted.FittedModel` (see the module docstring).

    Parameters
    ----------
    model
        The model to fit (its grid, network architecture, training settings and recipes
        are set; everything else is fitted here).
    """

    name = "pbi"
    """The model kind this trainer fits (:data:`TRAINERS`)."""

    def __init__(self, model: FittedModel) -> None:
        self.model = model

    def reset_network(self, seed: int) -> None:
        """Draw fresh network weights under ``seed``; any int8 copy of the old ones is dropped.

        The constructor's draw depends on whatever used torch's global generator before,
        so refitting was not reproducible.
        """
        torch.manual_seed(seed)
        self.model.network = EmbeddingCNN(self.model.network.config)
        self.model.inference_network = None

    def fit_references(self, intensity: NDArray, sigma: NDArray, labels: NDArray) -> None:
        """Feature scaler, and each recipe's reference (mean) curve and batch scatter."""
        m = self.model
        m.scaler = FeatureScaler.fit(intensity, sigma)
        n_rec = len(m.recipes)
        m.references = np.array([intensity[labels == k].mean(0) for k in range(n_rec)])
        m.scatter = np.array([intensity[labels == k].std(0) for k in range(n_rec)])

    # -- the network ----------------------------------------------------------------------
    def training_set(
        self, intensity: NDArray, sigma: NDArray, labels: NDArray, rng: np.random.Generator
    ) -> tuple[NDArray, NDArray, NDArray, NDArray]:
        """Return normals + synthetic negatives with triplet labels.

        See :func:`~.augment.training_negatives`; kinds come from
        ``TrainingConfig.negatives``.

        Parameters
        ----------
        intensity, sigma, labels
            The training normals on the model grid and their recipe indices.
        rng
            Draws the synthetic negatives.
        """
        m = self.model
        cfg = m.training
        kinds = tuple(cfg.negatives) if cfg.negatives is not None else NEGATIVES
        return training_negatives(m.grid.q, intensity, sigma, labels, m.references,
                                  self.nearest_other_recipe(), kinds,
                                  cfg.synthetic_per_normal, rng)

    def nearest_other_recipe(self) -> NDArray[np.int64]:
        """For each recipe, the other recipe whose reference curve is nearest (chi-square)."""
        m = self.model
        n_rec = len(m.recipes)
        if n_rec < 2:
            return np.zeros(n_rec, dtype=np.int64)
        chi2 = m._reference_chi2(m.references, m.scatter.mean(0, keepdims=True)
                                 .repeat(n_rec, 0))
        np.fill_diagonal(chi2, np.inf)
        return chi2.argmin(1).astype(np.int64)

    def train_network(
        self, intensity: NDArray, sigma: NDArray, labels: NDArray, rng: np.random.Generator,
        progress: bool, *, network: torch.nn.Module | None = None,
        shard: tuple[int, int] = (0, 1), device: torch.device | None = None,
        mean_loss: Callable[[float], float] | None = None,
    ) -> None:
        """Train the embedding network on triplets.

        The epoch losses go to ``model.history``.

        Parameters
        ----------
        intensity, sigma, labels
            The training normals on the model grid and their recipe indices.
        rng
            Draws the synthetic negatives and the batch order of every epoch.
        progress
            Show the epoch progress (:class:`epoch_progress`).
        network
            What to train: ``model.network`` (default), or in a data-parallel rank the
            DistributedDataParallel wrapper that averages the gradients.
        shard
            ``(rank, world)``: every rank draws the same training set and order from an
            identically seeded ``rng`` and takes its share of each batch.
        device
            Where the batches go (None: where they are, the CPU).
        mean_loss
            Averages an epoch's loss over the ranks (None: one process).
        """
        m = self.model
        cfg = m.training
        net = m.network if network is None else network
        rank, world = shard
        opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
        # cosine decay to zero over the run: the last epochs settle instead of bouncing
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
        m.history = []
        bar = epoch_progress(cfg.epochs, enabled=progress)
        try:
            for epoch in range(cfg.epochs):
                x, s, r, tl = self.training_set(intensity, sigma, labels, rng)
                inputs = m._inputs(x, s, r)
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
                m.history.append(epoch_loss if mean_loss is None else mean_loss(epoch_loss))
                bar.update(epoch, m.history[-1])
        finally:
            bar.close()

    # -- after the network ------------------------------------------------------------------
    def fit_scorers(self, intensity: NDArray, sigma: NDArray, labels: NDArray) -> None:
        """Everything after the network: centroids, one-class SVMs, subspaces, scales."""
        m = self.model
        assert m.scaler is not None
        emb = m._embed(intensity, sigma, labels)
        log_chi2 = m._log_chi2(intensity, sigma, labels)
        m.residual_stats = np.zeros((len(m.recipes), 3))
        centroids = []
        for k in range(len(m.recipes)):
            sel = labels == k
            centroids.append(emb[sel].mean(0))
            radius = float(np.mean(np.linalg.norm(emb[sel] - centroids[-1], axis=1)))
            m.residual_stats[k] = (log_chi2[sel].mean(), max(log_chi2[sel].std(), 1e-3),
                                   RESIDUAL_WEIGHT * max(radius, 1e-3))
        m.centroids = np.array(centroids)
        feats = m._augment(emb, log_chi2, labels)
        features = m.scaler.transform(intensity)
        feature_sigma = m.scaler.transform_sigma(intensity, sigma)
        fitted = [self.fit_recipe(feats[labels == k], features[labels == k],
                                  feature_sigma[labels == k], intensity[labels == k],
                                  sigma[labels == k]) for k in range(len(m.recipes))]
        m.svms = [f[0] for f in fitted]
        m.subspaces = [f[1] for f in fitted]
        m.likelihoods = [f[2] for f in fitted]
        # standardise each part by the spread it has on normals the recipe's models did not
        # see (5-fold inside the training normals; in-sample spreads are too narrow, which
        # would let the most flexible part dominate the sum); in-sample below 10 normals
        n_parts = len(PART_NAMES)
        m.score_scale = np.tile([0.0, 1.0], (len(m.recipes), n_parts))
        for k in range(len(m.recipes)):
            sel = np.nonzero(labels == k)[0]
            raw = self.out_of_fold(k, feats[sel], features[sel], feature_sigma[sel],
                                   intensity[sel], sigma[sel])
            for j in range(n_parts):
                q25, q50, q75 = np.percentile(raw[:, j], [25, 50, 75])
                m.score_scale[k, 2 * j : 2 * j + 2] = (q50, max(q75 - q25, 1e-6))

    def fit_recipe(self, feats: NDArray, features: NDArray, feature_sigma: NDArray,
                   intensity: NDArray, sigma: NDArray
                   ) -> tuple[RBFOneClass, RecipeSubspace, RecipeLikelihood]:
        """One recipe's one-class SVM, subspace and likelihood models.

        Parameters
        ----------
        feats
            Augmented embeddings (:meth:`~.fitted.FittedModel._augment`).
        features, feature_sigma
            Standardised curves and their standardised sigma (the feature scaler).
        intensity, sigma
            The curves on the model grid.
        """
        cfg = self.model.training
        return (RBFOneClass.fit(feats, nu=cfg.nu),
                RecipeSubspace.fit(features, cfg.subspace_components, feature_sigma),
                RecipeLikelihood.fit(intensity, sigma, self.model.grid.q,
                                     cfg.likelihood_components))

    def out_of_fold(self, k: int, feats: NDArray, features: NDArray, feature_sigma: NDArray,
                    intensity: NDArray, sigma: NDArray) -> NDArray:
        """Return out-of-fold, unstandardised score parts of recipe ``k``'s training normals.

        Each comes from models fitted without it (5 folds), or in-sample for fewer than 10
        normals.

        Parameters
        ----------
        k
            The recipe's index.
        feats, features, feature_sigma, intensity, sigma
            The recipe's training normals, as for :meth:`fit_recipe`.
        """
        m = self.model
        n = len(feats)
        raw = np.zeros((n, len(PART_NAMES)))
        folds = [np.arange(n)] if n < 10 else [np.arange(f, n, 5) for f in range(5)]
        for held in folds:
            keep = np.setdiff1d(np.arange(n), held) if len(folds) > 1 else held
            svm, sub, lik = (self.fit_recipe(feats[keep], features[keep],
                                             feature_sigma[keep], intensity[keep], sigma[keep])
                             if len(folds) > 1 else
                             (m.svms[k], m.subspaces[k], m.likelihoods[k]))
            raw[held, 0] = svm.score(feats[held])
            raw[held, 1] = sub.statistic(features[held], feature_sigma[held])
            raw[held, 2], raw[held, 3] = lik.statistics(intensity[held], sigma[held])
        return raw


class PaperTrainer(Trainer):
    """The seed paper's training.

    Triplets on recipe labels only (no synthetic negatives), then one OneClassSVM on the
    embeddings of all normals (not per recipe).
    """

    name = "paper"

    def training_set(self, intensity: NDArray, sigma: NDArray, labels: NDArray,
                     rng: np.random.Generator) -> tuple[NDArray, NDArray, NDArray, NDArray]:
        """Return the normals themselves, their recipes as triplet labels."""
        return intensity, sigma, labels, labels

    def fit_scorers(self, intensity: NDArray, sigma: NDArray, labels: NDArray) -> None:
        """Recipe centroids and one pooled SVM (stored once per recipe slot)."""
        m = self.model
        emb = m._embed(intensity, sigma, labels)
        m.centroids = np.array([emb[labels == k].mean(0) for k in range(len(m.recipes))])
        pooled = RBFOneClass.fit(emb, nu=m.training.nu)
        m.svms = [pooled] * len(m.recipes)
        m.subspaces = []
        m.likelihoods = []
        m.residual_stats = np.zeros((len(m.recipes), 3))
        m.score_scale = np.tile([0.0, 1.0, 0.0, 1.0], (len(m.recipes), 1))


TRAINERS: dict[str, type[Trainer]] = {t.name: t for t in (Trainer, PaperTrainer)}
"""The trainer of each model kind, by name (a training process gets the name)."""
