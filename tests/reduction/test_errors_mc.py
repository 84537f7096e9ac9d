"""Propagated Poisson sigma vs the scatter of independent Poisson realisations."""

from __future__ import annotations

import numpy as np

from pbi_bluesky.reduction import Reducer, expected_frame, make_geometry

N_REAL = 200


def test_sigma_matches_poisson_monte_carlo():
    ai = make_geometry("Pilatus100k", distance_m=2.0, wavelength_angstrom=1.0)
    shape = ai.detector.shape
    rng = np.random.default_rng(2024)
    dark = np.full(shape, 2.0, dtype=np.float32)
    expected = expected_frame(ai, lambda q: 400.0 / (1 + (q * 50) ** 2) + 20.0, flux=1.0,
                              dark=dark)
    reducer = Reducer(ai, npt=80, dark=dark)
    frames = rng.poisson(expected, size=(N_REAL, *shape)).astype(np.int32)
    profiles = reducer.reduce_many(frames, monitors=1.0)
    intensity = np.array([p.intensity for p in profiles])
    sigma = np.array([p.sigma for p in profiles])
    ok = np.all(np.isfinite(intensity), axis=0) & (reducer.count > 20)
    assert ok.sum() > 60
    scatter = intensity[:, ok].std(axis=0, ddof=1)
    ratio = scatter / sigma[:, ok].mean(axis=0)
    # std of a 200-sample std estimate is ~5 %; bins are independent estimates
    assert abs(np.median(ratio) - 1.0) < 0.05
    assert np.mean(np.abs(ratio - 1.0) < 0.15) > 0.95
    # and the mean over realisations is unbiased wrt the single-frame sigma
    mean_i = intensity[:, ok].mean(axis=0)
    ref = reducer.integrate(expected.astype(np.float32))[0][ok]
    np.testing.assert_allclose(mean_i, ref, rtol=0.01)
