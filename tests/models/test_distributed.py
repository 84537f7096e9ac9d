"""Data-parallel training (``pbi train --nproc``): torch DDP over 2 CPU processes (gloo)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pbi_bluesky.models import AnomalyDetector, TrainingConfig
from pbi_bluesky.simulate import (
    PS_PMMA,
    applicable_anomalies,
    apply_anomaly,
    nominal_state,
    simulate_profile,
)
from tests.conftest import simulated_normals


@pytest.fixture(scope="module")
def ddp_model(training_set):
    profiles, recipes = training_set
    cfg = TrainingConfig(epochs=12, alpha=0.05, seed=0, calibration="split")
    return AnomalyDetector(training=cfg).fit(profiles, recipes, progress=False, nproc=2)


def test_two_processes_stay_in_step_and_train(ddp_model):
    info = ddp_model.ddp_info
    assert info["processes"] == 2 and info["backend"] == "gloo" and info["device"] == "cpu"
    # DDP averaged the gradients: both ranks hold the same weights at the end
    assert len(set(info["rank_weights_sha256"])) == 1
    history = ddp_model.history
    assert len(history) == 12 and history[-1] < history[0]
    assert ddp_model.metrics["training_processes"]["processes"] == 2


@pytest.mark.parametrize("kind", ["thickness_error", "contamination", "mislabelled"])
def test_ddp_model_detects_like_the_one_process_model(kind, ddp_model, tiny_model, instrument):
    rng = np.random.default_rng(99)
    normals, recipes = simulated_normals(instrument, 10, rng)
    bad, bad_recipes = [], []
    for recipe in [r for r in PS_PMMA.recipes if kind in applicable_anomalies(r)]:
        for _ in range(8):
            state = apply_anomaly(nominal_state(PS_PMMA, recipe, rng), kind, 0.8, rng)
            bad.append(simulate_profile(state, instrument, rng))
            bad_recipes.append(recipe)
    labels = [0] * len(normals) + [1] * len(bad)
    aucs = {}
    for name, model in (("ddp", ddp_model), ("one process", tiny_model)):
        scores = [v.score for v in model.score(normals + bad, recipes + bad_recipes,
                                                 explain="none")]
        aucs[name] = roc_auc_score(labels, scores)
    assert aucs["ddp"] > 0.9, aucs
    assert abs(aucs["ddp"] - aucs["one process"]) < 0.1, aucs


def test_nproc_one_is_refused_by_the_parallel_trainer(tiny_model):
    from pbi_bluesky.models.distributed import train_network_ddp
    from pbi_bluesky.models.training import Trainer

    with pytest.raises(ValueError, match="nproc must be >= 2"):
        train_network_ddp(Trainer(tiny_model), np.zeros((2, 256)), np.ones((2, 256)),
                          np.zeros(2, dtype=int), 0, 1, False)


def test_the_papers_pipeline_trains_data_parallel_from_names(instrument):
    """The ranks rebuild the model's kind from names (trainer ``paper``, encoding
    ``minmax``: one input channel), not from a class sent through spawn; a rank that built
    the default kind could not load the one-channel initial weights."""
    from pbi_bluesky.models import NetworkConfig, PaperPipeline, QGrid

    profiles, recipes = simulated_normals(instrument, 8, np.random.default_rng(8))
    pipeline = PaperPipeline(QGrid(npt=64),
                             NetworkConfig(in_channels=1, length=64, channels=(8, 16),
                                           hidden=32, embedding_dim=16),
                             TrainingConfig(epochs=2, alpha=0.2, seed=0, calibration="split",
                                            subspace_weight=0.0))
    pipeline.fit(profiles, recipes, progress=False, nproc=2)
    info = pipeline.ddp_info
    assert info["processes"] == 2 and len(set(info["rank_weights_sha256"])) == 1
    assert len(pipeline.history) == 2 and pipeline.network.config.in_channels == 1
    verdicts = pipeline.score(profiles[:5], recipes[:5], explain="none")
    assert all(np.isfinite(v.score) for v in verdicts)
