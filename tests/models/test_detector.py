"""The default detector on simulated data: detection, calibration, refusals, attributions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pbi_bluesky.models import AnomalyDetector, CoverageError, QGrid, TrainingConfig
from pbi_bluesky.profile import Profile
from pbi_bluesky.simulate import (
    PS_PMMA,
    SAMPLE_ANOMALIES,
    Instrument,
    applicable_anomalies,
    apply_anomaly,
    make_geometry,
    nominal_state,
    simulate_profile,
)


def _normals(instrument, n_per_recipe, seed):
    r = np.random.default_rng(seed)
    profiles, recipes = [], []
    for recipe in PS_PMMA.recipes:
        for _ in range(n_per_recipe):
            profiles.append(simulate_profile(nominal_state(PS_PMMA, recipe, r), instrument, r))
            recipes.append(recipe)
    return profiles, recipes


@pytest.fixture(scope="module")
def fresh_normals(instrument):
    return _normals(instrument, 40, seed=777)


@pytest.fixture(scope="module")
def normal_scores(tiny_model, fresh_normals):
    profiles, recipes = fresh_normals
    return tiny_model.score(profiles, recipes, explain="none")


def test_false_positive_rate_on_fresh_normals_is_near_alpha(tiny_model, normal_scores):
    fpr = np.mean([v.is_anomaly for v in normal_scores])
    # alpha = 0.05; 200 fresh normals -> binomial sd 0.015
    assert fpr <= tiny_model.alpha + 0.05
    p = np.array([v.p_value for v in normal_scores])
    assert 0.3 < np.median(p) < 0.7  # roughly uniform under the null


@pytest.mark.parametrize("kind", SAMPLE_ANOMALIES)
def test_each_anomaly_kind_is_detected(kind, tiny_model, instrument, normal_scores):
    r = np.random.default_rng(hash(kind) % 2**32)
    recipes = [rec for rec in PS_PMMA.recipes if kind in applicable_anomalies(rec)]
    profiles, expected = [], []
    for i in range(30):
        recipe = recipes[i % len(recipes)]
        state = apply_anomaly(nominal_state(PS_PMMA, recipe, r), kind, r.uniform(0.3, 1.0), r)
        profiles.append(simulate_profile(state, instrument, r))
        expected.append(recipe)
    verdicts = tiny_model.score(profiles, expected, explain="none")
    scores = [v.score for v in normal_scores] + [v.score for v in verdicts]
    labels = [0] * len(normal_scores) + [1] * len(verdicts)
    assert roc_auc_score(labels, scores) > 0.9
    assert np.mean([v.is_anomaly for v in verdicts]) > 0.6


def test_mislabelled_sample_predicts_its_true_recipe(tiny_model, instrument):
    r = np.random.default_rng(3)
    profiles = [simulate_profile(nominal_state(PS_PMMA, "75:25", r), instrument, r)
                for _ in range(10)]
    verdicts = tiny_model.score(profiles, "25:75", explain="none")
    # 75:25 and 25:75 share phi(1-phi): the subtlest swap; the tiny model flags most
    assert sum(v.is_anomaly for v in verdicts) >= 8
    assert all(v.expected_composition == "25:75" for v in verdicts)
    assert sum(v.predicted_composition == "75:25" for v in verdicts) >= 8


def test_unknown_expected_recipe_is_refused(tiny_model, fresh_normals):
    with pytest.raises(ValueError, match="not one this model was trained on"):
        tiny_model.score(fresh_normals[0][:1], "33:67")


def test_profile_covering_too_little_q_is_refused(tiny_model):
    q = np.linspace(0.05, 0.2, 100)
    short = Profile(q, np.ones_like(q), np.full_like(q, 0.01))
    with pytest.raises(CoverageError, match="covers q = 0.05"):
        tiny_model.score([short], "50:50")


def test_buffer_subtracted_curves_with_negative_intensity_score(tiny_model, instrument):
    """Zero and negative intensities pass through: no log of a negative, no dropped bins."""
    r = np.random.default_rng(8)
    profile = simulate_profile(nominal_state(PS_PMMA, "0:100", r), instrument, r)
    shifted = Profile(profile.q_inv_angstrom, profile.intensity - 0.021, profile.sigma)
    assert (shifted.intensity < 0).sum() > 50
    verdict = tiny_model.score([shifted], "0:100")[0]
    assert np.isfinite(verdict.score)
    assert verdict.is_anomaly  # an offset background is an anomaly for this recipe


def test_other_instrument_and_q_grid(tiny_model):
    """Normals measured on another detector/distance/q grid are not flagged en masse."""
    other = Instrument(geometry=make_geometry("Pilatus1M", 2.5), npt=300,
                       q_range_inv_angstrom=(0.006, 0.22))
    profiles, recipes = _normals(other, 10, seed=55)
    verdicts = tiny_model.score(profiles, recipes, explain="none")
    assert np.mean([v.is_anomaly for v in verdicts]) <= 0.2
    drifted = [simulate_profile(apply_anomaly(nominal_state(PS_PMMA, "25:75"),
                                              "thickness_error", 1.0, np.random.default_rng(i)),
                                other, np.random.default_rng(i)) for i in range(5)]
    assert all(v.is_anomaly for v in tiny_model.score(drifted, "25:75", explain="none"))


PHYSICS = {
    # the contrast-weighted amount of scattering (phi(1-phi) drho^2, the volume-weighted
    # background) follows composition
    "composition_drift": {"invariant", "intensity_level"},
    "coarsening": {"domain_spacing_A", "porod_constant"},
    "contamination": {"porod_constant", "low_q_slope"},
    # a broader peak loses its low-q flank, which flattens the low-q slope
    "degradation": {"correlation_length_A", "low_q_slope"},
    # a wrong thickness scales every amplitude alike
    "thickness_error": {"invariant", "intensity_level", "background"},
    # another recipe: another amount of scattering and another structure
    "mislabelled": {"intensity_level", "invariant", "correlation_length_A"},
}


@pytest.mark.parametrize("kind", SAMPLE_ANOMALIES)
def test_top_attribution_names_the_right_physics(kind, tiny_model, instrument):
    """The top attribution is in the kind's physics set far more often than chance: a random
    ordering of the 7 descriptors puts one of k named ones on top with probability k/7; the
    test needs at least 70 % hits *and* a binomial tail probability under 1 % of getting
    that many by chance, so a model whose attributions were noise would fail it."""
    from scipy.stats import binom

    from pbi_bluesky.models import DESCRIPTORS

    r = np.random.default_rng(1000 + len(kind))
    recipes = [rec for rec in PS_PMMA.recipes if kind in applicable_anomalies(rec)]
    hits = 0
    n = 4 * len(recipes)
    for i in range(n):
        recipe = recipes[i % len(recipes)]
        state = apply_anomaly(nominal_state(PS_PMMA, recipe, r), kind, r.uniform(0.5, 1.0), r)
        verdict = tiny_model.score([simulate_profile(state, instrument, r)], recipe,
                                   explain="all")[0]
        attributions = verdict.details["attributions"]
        assert set(verdict.details["features"]) == set(attributions) == set(DESCRIPTORS)
        hits += next(iter(attributions)) in PHYSICS[kind]
    chance = len(PHYSICS[kind]) / len(DESCRIPTORS)
    p_random = binom.sf(hits - 1, n, chance)  # P(at least `hits` by a random ordering)
    assert hits / n >= 0.7 and p_random < 0.01, (
        f"{kind}: right physics on top in {hits}/{n} (a random ordering: {chance:.2f} per "
        f"curve, P(>= {hits}) = {p_random:.3g})")


def test_single_recipe_training_set(instrument):
    """A training set with one recipe only (say, buffer frames) trains and scores."""
    profiles, recipes = _normals(instrument, 25, seed=9)
    only = [(p, r) for p, r in zip(profiles, recipes, strict=True) if r == "0:100"]
    detector = AnomalyDetector(training=TrainingConfig(epochs=3, alpha=0.1))
    detector.fit([p for p, _ in only], [r for _, r in only], progress=False)
    assert detector.recipes == ["0:100"]
    verdict = detector.score(only[:1][0][:1], "0:100")[0]
    assert verdict.predicted_composition == "0:100"


def test_training_is_reproducible_for_a_seed(training_set):
    """Two fits with one seed give the same model, whatever used torch's RNG before."""
    import torch

    profiles, recipes = training_set[0][:60], training_set[1][:60]
    cfg = TrainingConfig(epochs=2, seed=3)
    first = AnomalyDetector(training=cfg).fit(profiles, recipes, progress=False)
    torch.rand(1000)  # disturb the global generator between the fits
    second = AnomalyDetector(training=cfg).fit(profiles, recipes, progress=False)
    np.testing.assert_array_equal(first.calibration_scores, second.calibration_scores)


def test_score_parts_are_reported_and_combined(tiny_model, fresh_normals):
    profiles, recipes = fresh_normals
    intensity, sigma = tiny_model.resample(profiles[:20])
    idx = np.array([tiny_model.recipes.index(r) for r in recipes[:20]])
    parts = tiny_model._score_parts(intensity, sigma, idx)
    cfg = tiny_model.training
    np.testing.assert_allclose(
        tiny_model._scores(intensity, sigma, idx),
        parts[:, 0] + cfg.subspace_weight * parts[:, 1] + cfg.likelihood_weight * parts[:, 2]
        + cfg.low_q_weight * np.maximum(parts[:, 3], 0.0))
    assert tiny_model.calibration_parts.shape == (len(tiny_model.calibration_scores), 4)
    # every part is standardised on the training normals: normals sit near 0
    assert np.all(np.abs(np.median(parts, axis=0)) < 1.5)


def test_recipe_with_too_few_normals_is_named(training_set):
    profiles, recipes = training_set
    a = [p for p, r in zip(profiles, recipes, strict=True) if r == "0:100"][:20]
    b = [p for p, r in zip(profiles, recipes, strict=True) if r == "50:50"][:3]
    with pytest.raises(ValueError, match=r"recipe\(s\) 50:50 \(3\)"):
        AnomalyDetector(training=TrainingConfig(epochs=1)).fit(
            a + b, ["0:100"] * len(a) + ["50:50"] * len(b), progress=False)


def test_papers_pipeline_needs_two_recipes(training_set):
    from pbi_bluesky.models import PaperPipeline

    profiles, recipes = training_set
    only = [p for p, r in zip(profiles, recipes, strict=True) if r == "0:100"]
    with pytest.raises(ValueError, match="at least 2 recipes"):
        PaperPipeline(training=TrainingConfig(epochs=1)).fit(only, ["0:100"] * len(only))


def test_too_few_profiles_is_a_clear_error(training_set):
    with pytest.raises(ValueError, match="at least 10"):
        AnomalyDetector().fit(training_set[0][:5], training_set[1][:5])


def test_grid_resample_exactly_on_grid():
    grid = QGrid(npt=64)
    q = grid.q
    i, s = grid.resample(Profile(q, q**-2, 0.01 * q**-2))
    np.testing.assert_allclose(i, q**-2, rtol=1e-12)


def _grid_profile(q, intensity=None):
    intensity = np.ones_like(q) if intensity is None else intensity
    return Profile(q, intensity, 0.01 * np.abs(intensity) + 1e-3)


def test_grid_is_never_extrapolated():
    """Covering 95 % of the grid used to pass with held end values; now it is refused."""
    grid = QGrid(q_min=0.01, q_max=0.2, npt=64)
    almost = np.geomspace(0.0117, 0.25, 300)  # misses the lowest ~5 % of the grid in log q
    with pytest.raises(CoverageError, match=r"covers q = 0.0117\.\.0.25 1/A, only 9[0-9]%.*"
                                            r"nothing is extrapolated"):
        grid.resample(_grid_profile(almost))
    grid.resample(_grid_profile(np.geomspace(0.01, 0.2, 300)))  # exactly covered: fine


def test_gap_inside_the_range_is_refused():
    grid = QGrid(q_min=0.01, q_max=0.2, npt=64)
    q = np.linspace(0.009, 0.21, 400)
    intensity = q**-2
    holed = intensity.copy()
    holed[150:160] = np.nan  # ten bins without pixels in the middle of the range
    with pytest.raises(CoverageError, match=r"gap without data.*10 invalid bin"):
        grid.resample(_grid_profile(q, holed))
    missing = np.r_[q[:150], q[170:]]  # points simply absent from the file
    with pytest.raises(CoverageError, match="gap without data"):
        grid.resample(_grid_profile(missing, missing**-2.0))
    edge = intensity.copy()
    edge[:1] = np.nan  # an invalid bin below the grid does not matter
    i, _ = grid.resample(_grid_profile(q, edge))
    assert np.all(np.isfinite(i))


def test_grid_for_profiles_shrinks_to_the_common_range():
    full = _grid_profile(np.geomspace(0.005, 0.3, 200))
    short = _grid_profile(np.geomspace(0.012, 0.25, 200))
    assert QGrid.for_profiles([full]) == QGrid()
    grid = QGrid.for_profiles([full, short])
    assert grid.q_min == pytest.approx(0.012) and grid.q_max == 0.19
    for p in (full, short):
        grid.resample(p)
    with pytest.raises(CoverageError, match="share only"):
        QGrid.for_profiles([full, _grid_profile(np.geomspace(0.1, 0.3, 50))])
