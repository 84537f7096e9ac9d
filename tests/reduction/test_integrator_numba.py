"""The fused numba engine of FoldedIntegrator against pyFAI and against the scipy engine."""

from __future__ import annotations

import numpy as np
import pytest

from pbi_bluesky.reduction import FoldedIntegrator, ReductionError
from pbi_bluesky.reduction.integrator import numba_available

from .scenes import NPT, POL, RTOL, pyfai_reference

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not importable")

SAME = 1e-6  # numba engine vs scipy engine


@pytest.fixture(scope="module")
def engines(scene):
    red = scene["reducer"]
    kwargs = {"mask": red.mask, "dark": scene["dark"], "flat": scene["flat"],
              "polarization_factor": POL}
    return {name: FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range, engine=name,
                                   **kwargs)
            for name in ("numba", "scipy")}


def assert_same(a, b, rtol=SAME):
    np.testing.assert_allclose(a[0], b[0], rtol=rtol, equal_nan=True)
    np.testing.assert_allclose(a[1], b[1], rtol=rtol, equal_nan=True)


def test_numba_is_the_default_engine(scene, engines):
    assert scene["reducer"]._folded.engine == "numba"
    assert engines["numba"].engine == "numba" and engines["scipy"].engine == "scipy"
    with pytest.raises(ReductionError, match="engine must be one of"):
        FoldedIntegrator(scene["ai"], scene["reducer"].shape, NPT, scene["reducer"].q_range,
                         engine="cuda")


@pytest.mark.parametrize("monitor", [1.0, 1234.5])
def test_numba_matches_pyfai_integrate1d(scene, engines, monitor):
    intensity, sigma = engines["numba"].integrate(scene["frame"], monitor=monitor)
    ref = pyfai_reference(scene, scene["frame"], monitor)
    filled = np.asarray(ref.count) > 0
    assert filled.sum() > 0.9 * NPT
    np.testing.assert_allclose(intensity[filled], ref.intensity[filled], rtol=RTOL)
    np.testing.assert_allclose(sigma[filled], ref.sigma[filled], rtol=RTOL)
    assert np.all(np.isnan(intensity[~filled])) and np.all(np.isnan(sigma[~filled]))


def test_numba_dummy_pixels_match_pyfai(scene, engines):
    """Dummy values in the gaps are ignored, dummy pixels in the active area are dropped."""
    frame = scene["frame"].copy()
    frame[scene["mask"]] = -1
    valid = np.flatnonzero(~scene["mask"].ravel())
    frame.ravel()[np.random.default_rng(5).choice(valid, 500, replace=False)] = -2
    got = engines["numba"].integrate(frame, monitor=3.0)
    ref = pyfai_reference(scene, frame, 3.0)
    filled = np.asarray(ref.count) > 0
    np.testing.assert_allclose(got[0][filled], ref.intensity[filled], rtol=RTOL)
    np.testing.assert_allclose(got[1][filled], ref.sigma[filled], rtol=RTOL)
    assert_same(got, engines["scipy"].integrate(frame, monitor=3.0))
    # only gap dummies: bit-identical to the clean frame
    gaps = scene["frame"].copy()
    gaps[scene["mask"]] = -1
    a = engines["numba"].integrate(gaps, 3.0)
    b = engines["numba"].integrate(scene["frame"], 3.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64, np.uint16, np.float32,
                                   np.float64, ">i4"])
def test_numba_equals_scipy_for_frame_dtypes(scene, engines, dtype):
    frame = np.clip(scene["frame"], 0, 60000).astype(dtype)
    assert_same(engines["numba"].integrate(frame, 2.5), engines["scipy"].integrate(frame, 2.5))


def test_numba_equals_scipy_with_dummy_in_unsigned_and_float_frames(scene, engines):
    """The dummy value follows the frame dtype (-2 as uint32 is 4294967294), as in pyFAI."""
    valid = np.flatnonzero(~scene["mask"].ravel())
    bad = np.random.default_rng(9).choice(valid, 300, replace=False)
    for dtype in (np.int32, np.uint32, np.float32):
        frame = scene["frame"].astype(dtype)
        frame.ravel()[bad] = np.array(-2).astype(dtype)
        assert_same(engines["numba"].integrate(frame, 1.5),
                    engines["scipy"].integrate(frame, 1.5))


def test_numba_masked_pixels_and_nan_have_no_influence(scene, engines):
    nb = engines["numba"]
    base = nb.integrate(scene["frame"])
    hot = scene["frame"].copy()
    hot[scene["mask"]] = 10**9
    np.testing.assert_array_equal(nb.integrate(hot)[0], base[0])
    ffloat = scene["frame"].astype(np.float32)
    ffloat[scene["mask"]] = np.nan
    np.testing.assert_allclose(nb.integrate(ffloat)[0], base[0], rtol=1e-6, equal_nan=True)
    # a non-contiguous view is accepted
    wide = np.zeros((scene["frame"].shape[0], 2 * scene["frame"].shape[1]), np.int32)
    wide[:, ::2] = scene["frame"]
    np.testing.assert_array_equal(nb.integrate(wide[:, ::2])[0], base[0])


def test_numba_thread_counts_and_batch_chunks_agree_bit_for_bit(scene):
    red = scene["reducer"]
    kwargs = {"mask": red.mask, "dark": scene["dark"], "flat": scene["flat"],
              "polarization_factor": POL, "engine": "numba"}
    one = FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range, threads=1, **kwargs)
    two = FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range, threads=2, **kwargs)
    a = one.integrate(scene["frame"], monitor=4.0)
    b = two.integrate(scene["frame"], monitor=4.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    stack = np.stack([scene["frame"]] * 5)
    for chunk in (1, 2, 4, 8):
        two._engine.chunk = chunk
        many = two.integrate_many(stack, 4.0)
        np.testing.assert_array_equal(many[0], np.broadcast_to(a[0], many[0].shape))
        np.testing.assert_array_equal(many[1], np.broadcast_to(a[1], many[1].shape))


def test_numba_two_integrators_used_concurrently(scene, engines):
    """Two threads reducing at once share the one helper thread: both stay correct."""
    from concurrent.futures import ThreadPoolExecutor

    red = scene["reducer"]
    frames = [np.roll(scene["frame"], k, axis=1) for k in range(6)]
    expected = [engines["numba"].integrate(f, 2.0) for f in frames]
    other = FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range, mask=red.mask,
                             dark=scene["dark"], flat=scene["flat"], polarization_factor=POL)

    def reduce_all(integrator):
        return [integrator.integrate(f, 2.0) for f in frames for _ in range(3)]

    with ThreadPoolExecutor(2) as pool:
        got_a, got_b = pool.map(reduce_all, [engines["numba"], other])
    for k, (i, s) in enumerate(got_a):
        np.testing.assert_array_equal(i, expected[k // 3][0])
        np.testing.assert_array_equal(s, expected[k // 3][1])
    for k, (i, _) in enumerate(got_b):
        np.testing.assert_array_equal(i, expected[k // 3][0])


def test_run_units_propagates_errors_from_either_thread():
    from pbi_bluesky.reduction.kernels import run_units

    seen = []

    def unit(u):
        seen.append(u)
        if u == 5:
            raise ValueError("unit 5 failed")

    with pytest.raises(ValueError, match="unit 5"):
        run_units(16, unit, 2)
    assert 5 in seen


def test_numba_batch_equals_single(scene, engines):
    rng = np.random.default_rng(17)
    frames = rng.poisson(scene["expected"], size=(3, *scene["frame"].shape)).astype(np.int32)
    frames[1].ravel()[np.flatnonzero(~scene["mask"].ravel())[::997]] = -2
    monitors = np.array([1.0, 2.0, 30.0])
    many_i, many_s = engines["numba"].integrate_many(frames, monitors)
    sci_i, sci_s = engines["scipy"].integrate_many(frames, monitors)
    for k in range(3):
        single = engines["numba"].integrate(frames[k], monitors[k])
        np.testing.assert_array_equal(many_i[k], single[0])
        np.testing.assert_array_equal(many_s[k], single[1])
        assert_same((many_i[k], many_s[k]), (sci_i[k], sci_s[k]))


def test_numba_float64_accumulation_matches_pyfai(scene):
    red = scene["reducer"]
    exact = FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range, mask=red.mask,
                             dark=scene["dark"], flat=scene["flat"], polarization_factor=POL,
                             accumulate="float64", engine="numba")
    intensity, sigma = exact.integrate(scene["frame"], monitor=2.0)
    ref = pyfai_reference(scene, scene["frame"], 2.0)
    filled = np.asarray(ref.count) > 0
    np.testing.assert_allclose(intensity[filled], ref.intensity[filled], rtol=RTOL)
    np.testing.assert_allclose(sigma[filled], ref.sigma[filled], rtol=RTOL)
