"""Triplet loss, calibration, HyperScore and the numpy one-class SVM, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbi_bluesky.models import (
    RBFOneClass,
    benjamini_hochberg,
    conformal_p_values,
    exact_shapley,
    hyperscore,
    triplet_loss,
)


@pytest.fixture()
def four_points():
    # 1D embeddings: labels 0,0,1,1 at positions 0, 1, 1.5, 4
    emb = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    return emb, labels


def test_batch_hard_triplet_loss_by_hand(four_points):
    emb, labels = four_points
    # anchor 0: pos d=1, closest neg d=1.5 -> max(0, 1-1.5+1)=0.5
    # anchor 1: pos d=1, closest neg d=0.5 -> 1.5
    # anchor 2: pos d=2.5, closest neg d=0.5 -> 3.0
    # anchor 3: pos d=2.5, closest neg d=3.0 -> 0.5
    loss = triplet_loss(emb, labels, margin=1.0, mining="hard")
    assert float(loss) == pytest.approx((0.5 + 1.5 + 3.0 + 0.5) / 4, rel=1e-5)


def test_semi_hard_triplet_loss_by_hand(four_points):
    emb, labels = four_points
    # pairs (a,p): (0,1) d=1: negatives farther than 1: 1.5,4 -> 1.5 -> 0.5
    # (1,0) d=1: negs 0.5, 3 -> semi 3 -> max(0,1-3+1)=0
    # (2,3) d=2.5: negs 1.5, 0.5 -> none farther -> hardest 0.5 -> 3.0
    # (3,2) d=2.5: negs 4, 3 -> semi 3 -> 0.5
    loss = triplet_loss(emb, labels, margin=1.0, mining="semi-hard")
    assert float(loss) == pytest.approx((0.5 + 0.0 + 3.0 + 0.5) / 4, rel=1e-5)


def test_triplet_loss_without_negatives_is_zero_and_mining_checked():
    emb = torch.randn(5, 3)
    assert float(triplet_loss(emb, torch.zeros(5, dtype=torch.long))) == 0.0
    with pytest.raises(ValueError, match="mining"):
        triplet_loss(emb, torch.tensor([0, 0, 1, 1, 2]), mining="easy")


def test_conformal_p_values_and_bh():
    cal = np.arange(1.0, 100.0)  # 99 calibration scores
    p = conformal_p_values([0.0, 50.0, 1000.0], cal)
    np.testing.assert_allclose(p, [1.0, 51 / 100, 1 / 100])
    reject = benjamini_hochberg(np.array([0.001, 0.009, 0.04, 0.5]), alpha=0.05)
    np.testing.assert_array_equal(reject, [True, True, False, False])
    # 0.04 <= 3/4*0.05=0.0375? no -> not rejected; step-up keeps the first two


def test_hyperscore_is_the_papers_formula():
    v = np.array([1.0, 0.5, 1e-9])
    sig = 1 / (1 + np.exp(-(5 * np.log(v) - np.log(2))))
    np.testing.assert_allclose(hyperscore(v), 100 * (1 + sig**2))
    assert hyperscore(1.0) == pytest.approx(100 * (1 + (1 / 3) ** 2))  # 111.1, the maximum
    assert np.all(np.diff(hyperscore(np.linspace(0.01, 1, 50))) > 0)  # monotone


def test_numpy_ocsvm_matches_scikit_learn():
    from sklearn.svm import OneClassSVM

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    test = rng.normal(size=(50, 8)) * 1.5
    ours = RBFOneClass.fit(x, nu=0.1)
    ref = OneClassSVM(nu=0.1, gamma="scale").fit(x)
    np.testing.assert_allclose(ours.decision(test), ref.decision_function(test), atol=1e-10)


def test_exact_shapley_sums_to_the_value_and_is_symmetric():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 4))
    precision = a @ a.T + np.eye(4)
    z = rng.normal(size=4)
    phi = exact_shapley(z, precision)
    assert phi.sum() == pytest.approx(z @ precision @ z)
    # additive (diagonal) game: Shapley value is each feature's own term
    diag = np.diag([1.0, 2.0, 3.0])
    np.testing.assert_allclose(exact_shapley(np.array([1.0, 1.0, 2.0]), diag), [1, 2, 12])


def test_recipe_subspace_t2_and_spe_by_hand():
    """Normals spread along one axis; T2 counts spread along it, SPE what lies off it."""
    from pbi_bluesky.models.subspace import RecipeSubspace

    rng = np.random.default_rng(0)
    along = rng.normal(0.0, 2.0, 400)
    off = rng.normal(0.0, 0.1, (400, 2))
    normals = np.column_stack([along, off])  # 3 bins: variation mostly in bin 0
    sub = RecipeSubspace.fit(normals, components=1)
    assert abs(abs(sub.basis[0, 0]) - 1.0) < 1e-2
    var_along = sub.variance[0]
    res_var = sub.residual_variance
    point = np.array([[3.0, 0.2, 0.0]]) + sub.mean
    coord = (point - sub.mean) @ sub.basis.T
    t2 = float(coord[0, 0] ** 2 / var_along)
    resid = (point - sub.mean) - coord @ sub.basis
    spe = float(np.mean(resid[0] ** 2 / res_var))
    assert sub.statistic(point)[0] == pytest.approx(np.log(t2 + spe), rel=1e-9)
    # the same distance off the normal axis is far more anomalous than along it
    assert sub.statistic(sub.mean + [[0.0, 1.0, 0.0]])[0] > sub.statistic(
        sub.mean + [[1.0, 0.0, 0.0]])[0] + 3.0
    again = RecipeSubspace.from_arrays(sub.to_arrays("s0"), "s0")
    np.testing.assert_array_equal(again.statistic(point), sub.statistic(point))


def test_recipe_subspace_needs_three_curves():
    from pbi_bluesky.models.subspace import RecipeSubspace

    with pytest.raises(ValueError, match="at least 3"):
        RecipeSubspace.fit(np.zeros((2, 5)))


def _likelihood_population(n=300, seed=0):
    rng = np.random.default_rng(seed)
    q = np.geomspace(0.01, 0.2, 64)
    base = 10 * q**-1.5
    amp = rng.normal(1.0, 0.02, (n, 1))  # batch scatter: a 2 % scale
    sigma = 0.01 * base * np.ones((n, 1))
    curves = amp * base + rng.normal(0, 1, (n, len(q))) * sigma
    return q, base, curves, sigma


def test_likelihood_low_q_filter_is_a_z_score_and_sees_faint_upturns():
    from pbi_bluesky.models.likelihood import RecipeLikelihood

    q, base, curves, sigma = _likelihood_population()
    model = RecipeLikelihood.fit(curves[:200], sigma[:200], q, components=2)
    _, z = model.statistics(curves[200:], sigma[200:])
    # normals: about a standard normal (max over 3 correlated exponents: mean a bit above 0)
    assert -0.5 < np.mean(z) < 1.0 and 0.6 < np.std(z) < 1.6
    # an upturn of 5 % of the curve at the lowest q, a few noise sigmas spread over bins
    upturn = curves[200:] + 0.05 * base[0] * (q / q[0]) ** -3
    _, z_up = model.statistics(upturn, sigma[200:])
    assert np.mean(z_up > np.percentile(z, 99)) > 0.9
    # a dip is not an upturn (one-sided)
    _, z_dip = model.statistics(curves[200:] - 0.05 * base[0] * (q / q[0]) ** -3, sigma[200:])
    assert np.mean(z_dip) < np.mean(z)


def test_likelihood_and_subspace_take_each_curves_noise_into_account():
    """A normal curve measured with twice the noise is not pushed out of the normal region
    by the parts that use sigma; a plain residual statistic would be."""
    from pbi_bluesky.models.likelihood import RecipeLikelihood
    from pbi_bluesky.models.representation import FeatureScaler
    from pbi_bluesky.models.subspace import RecipeSubspace

    q, base, curves, sigma = _likelihood_population(seed=1)
    rng = np.random.default_rng(2)
    noisy = curves[200:] + rng.normal(0, 1, curves[200:].shape) * sigma[200:] * np.sqrt(3)
    lik = RecipeLikelihood.fit(curves[:200], sigma[:200], q, components=2)
    nll, _ = lik.statistics(curves[200:], sigma[200:])
    nll_noisy_known, _ = lik.statistics(noisy, 2 * sigma[200:])
    nll_noisy_hidden, _ = lik.statistics(noisy, sigma[200:])
    assert np.median(nll_noisy_known) < np.median(nll_noisy_hidden)
    scaler = FeatureScaler.fit(curves[:200], sigma[:200])
    feats = scaler.transform(curves)
    fsig = scaler.transform_sigma(curves, sigma)
    sub = RecipeSubspace.fit(feats[:200], 2, fsig[:200])
    plain = sub.statistic(scaler.transform(noisy))
    aware = sub.statistic(scaler.transform(noisy), scaler.transform_sigma(noisy, 2 * sigma[200:]))
    normal = sub.statistic(feats[200:], fsig[200:])
    assert np.median(aware) < np.median(plain)
    assert np.median(aware) - np.median(normal) < 0.5 * (np.median(plain) - np.median(normal))
    again = RecipeLikelihood.from_arrays(lik.to_arrays("l0"), "l0")
    np.testing.assert_array_equal(again.statistics(noisy, sigma[200:])[0], nll_noisy_hidden)


def test_evaluation_split_takes_a_count_per_recipe():
    """150 training normals over 4 recipes (38, 38, 37, 37): the split takes one count per
    recipe, 3:1 into training and calibration, the rest to the test split."""
    from pbi_bluesky.models.evaluate import _split

    recipe_idx = np.repeat(np.arange(4), 50)
    train, cal, test = _split(recipe_idx, np.random.default_rng(0), n_fit=[38, 38, 37, 37])
    fit = np.bincount(recipe_idx[np.r_[train, cal]], minlength=4)
    assert fit.tolist() == [38, 38, 37, 37]
    assert np.bincount(recipe_idx[cal], minlength=4).tolist() == [10, 10, 9, 9]
    assert np.bincount(recipe_idx[test], minlength=4).tolist() == [12, 12, 13, 13]
    assert len(set(train) | set(cal) | set(test)) == 200
    with pytest.raises(ValueError, match="leaves no test normals"):
        _split(recipe_idx, np.random.default_rng(0), n_fit=[50, 1, 1, 1])
