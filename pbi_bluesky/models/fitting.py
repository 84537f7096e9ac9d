"""Fitting a detector: calibration plan, trained models, conformal calibration, metrics.

:func:`fit_detector` (what :meth:`~.detector.AnomalyDetector.fit` runs) takes normal
profiles with their recipe labels:

1. resample them to the model grid;
2. choose the conformal calibration (:func:`~.conformal.plan_calibration`): a split of
   the normals (stratified by recipe) where it reaches ``alpha``, otherwise K-fold
   cross-conformal calibration, per recipe (Mondrian) where every recipe has enough
   calibration normals;
3. train each model (one for a split, K for cross-conformal) on its training normals
   (:func:`fit_model`: the steps of :class:`~.training.Trainer`, the network in one
   process or data-parallel, :mod:`~.distributed`);
4. score the calibration normals with the model that did not train on them: their scores
   define the conformal p-values (:class:`~.conformal.Calibration`);
5. fit the descriptor population for explanations, and record a synthetic sanity check
   and the training metrics.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pbi_bluesky.models.attribution import DescriptorPopulation
from pbi_bluesky.models.conformal import (
    MIN_TRAINING_NORMALS,
    Calibration,
    CalibrationError,
    plan_calibration,
)
from pbi_bluesky.models.descriptors import fit_descriptors
from pbi_bluesky.models.distributed import train_network_ddp
from pbi_bluesky.models.training import TRAINERS, Trainer
from pbi_bluesky.models.validation import synthetic_check
from pbi_bluesky.profile import Profile

__all__ = ["fit_detector", "fit_model"]

logger = logging.getLogger(__name__)


def fit_model(trainer: Trainer, intensity: NDArray, sigma: NDArray, labels: NDArray,
              rng: np.random.Generator, seed: int, progress: bool, nproc: int = 1) -> float:
    """Fit every part of ``trainer.model`` from training normals.

    Returns the network training time (s).

    Parameters
    ----------
    trainer
        The trainer of the model to fit.
    intensity, sigma, labels
        The training normals on the model grid and their recipe indices.
    rng
        Draws the negatives and batch orders (and the ranks' seed with ``nproc`` > 1).
    seed
        Seed of the network's initial weights.
    progress
        Show the epoch progress.
    nproc
        > 1: train the network with torch DistributedDataParallel in that many processes
        (:func:`~.distributed.train_network_ddp`); everything else is fitted here.
    """
    trainer.reset_network(seed)
    trainer.fit_references(intensity, sigma, labels)
    t0 = time.perf_counter()
    if nproc > 1:
        trainer.model.ddp_info = train_network_ddp(trainer, intensity, sigma, labels,
                                                   int(rng.integers(2**62)), nproc, progress)
    else:
        trainer.train_network(intensity, sigma, labels, rng, progress)
    elapsed = time.perf_counter() - t0
    trainer.fit_scorers(intensity, sigma, labels)
    return elapsed


def fit_detector(detector: Any, profiles: list[Profile], recipes: list[str], *,
                 progress: bool = True, nproc: int = 1) -> Any:
    """Train ``detector`` on normal profiles labelled with their recipe; returns it.

    Parameters
    ----------
    detector
        An untrained :class:`~.detector.AnomalyDetector` (or a subclass: its ``name``
        selects the trainer, :data:`~.training.TRAINERS`).
    profiles, recipes
        The normal profiles and the recipe of each.
    progress
        Show the epoch progress.
    nproc
        Processes the network trains in (> 1: data-parallel, :mod:`~.distributed`).

    Raises
    ------
    CalibrationError
        If the normals cannot calibrate the requested alpha (the message says how many
        are needed), or a recipe has too few normals to train on.
    """
    cfg = detector.training
    if len(profiles) != len(recipes):
        raise ValueError("profiles and recipes differ in length")
    if len(profiles) < 10:
        raise ValueError(f"need at least 10 normal profiles to train, got {len(profiles)}")
    rng = np.random.default_rng(cfg.seed)
    intensity, sigma = detector.resample(profiles)
    detector.recipes = sorted(set(recipes))
    labels = np.array([detector.recipes.index(r) for r in recipes])
    counts = np.bincount(labels, minlength=len(detector.recipes))
    few = [f"{detector.recipes[k]} ({counts[k]})" for k in range(len(detector.recipes))
           if counts[k] < MIN_TRAINING_NORMALS + 1]
    if few:
        raise CalibrationError(
            f"too few normal profiles for recipe(s) {', '.join(few)}: each recipe needs "
            f"{MIN_TRAINING_NORMALS} for training plus at least 1 for calibration "
            f"(give 5 or more per recipe)")
    plan = plan_calibration(labels, len(detector.recipes), alpha=cfg.alpha,
                            method=cfg.calibration, fraction=cfg.calibration_fraction,
                            n_folds=cfg.folds, rng=rng, recipe_names=detector.recipes)
    detector.alpha = plan.alpha
    if plan.alpha_source not in ("given", "default"):
        logger.warning("alpha: %s", plan.alpha_source)
    trainer_of = TRAINERS[detector.name]
    train_s = 0.0
    detector.members = []
    if plan.method == "split":
        train = plan.training_indices(0)
        train_s = fit_model(trainer_of(detector), intensity[train], sigma[train],
                            labels[train], rng, cfg.seed, progress, nproc)
    else:
        for k in range(len(plan.folds)):
            member = type(detector)(detector.grid, detector.network.config, detector.training)
            member.recipes = detector.recipes
            train = plan.training_indices(k)
            logger.info("cross-conformal calibration: model %d of %d on %d normals",
                        k + 1, len(plan.folds), len(train))
            train_s += fit_model(trainer_of(member), intensity[train], sigma[train],
                                 labels[train], rng, int(rng.integers(2**31)), progress, nproc)
            detector.members.append(member)
        # shared by every model: references for the recipe shortlist, on all normals
        trainer_of(detector).fit_references(intensity, sigma, labels)
    _calibrate(detector, plan, intensity, sigma, labels)
    detector.population = None
    if cfg.attributions:
        desc_idx = (plan.training_indices(0) if plan.method == "split"
                    else np.arange(len(labels)))
        descriptors = np.array([fit_descriptors(detector.grid.q, intensity[i], sigma[i])
                                for i in desc_idx])
        detector.population = DescriptorPopulation.fit(descriptors, labels[desc_idx],
                                                       len(detector.recipes))
    detector.history = list(detector.models[0].history)
    detector.metrics = {
        "validation": synthetic_check(detector, intensity, sigma, labels, plan.folds),
        "n_train": int(len(plan.training_indices(0))),
        "n_calibration": int(len(detector.calibration.scores)),
        "train_seconds": round(train_s, 2),
        "final_loss": float(detector.history[-1]) if detector.history else None,
    }
    if nproc > 1:  # recorded only then: a one-process model.json is unchanged
        info = detector.models[0].ddp_info
        detector.metrics["training_processes"] = {
            k: info.get(k) for k in ("processes", "backend", "device")}
    return detector


def _calibrate(detector: Any, plan: Any, intensity: NDArray, sigma: NDArray,
               labels: NDArray) -> None:
    """Calibrate the conformal threshold.

    Each calibration normal is scored by the model that did not train on it.
    """
    parts, scores, member_of, order = [], [], [], []
    for k, (model, cal) in enumerate(zip(detector.models, plan.folds, strict=True)):
        part = model._score_parts(intensity[cal], sigma[cal], labels[cal])
        parts.append(part)
        scores.append(model._combine(part))
        member_of.append(np.full(len(cal), k))
        order.append(cal)
    cal_idx = np.concatenate(order)
    detector.calibration_parts = np.concatenate(parts)
    detector.calibration = Calibration(plan.method, plan.mondrian, np.concatenate(scores),
                                       np.concatenate(member_of), labels[cal_idx],
                                       len(detector.models), plan.alpha_source)
