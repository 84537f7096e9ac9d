"""FoldedIntegrator / Reducer(method="folded") against pyFAI's integrate1d."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pbi_bluesky.reduction import (
    FoldedIntegrator,
    Reducer,
    ReductionError,
    expected_frame,
    make_geometry,
)

from .scenes import NPT, POL, RTOL, iq, pyfai_reference


def test_reducer_mask_is_detector_plus_user(scene):
    np.testing.assert_array_equal(scene["reducer"].mask, scene["mask"])


@pytest.mark.parametrize("monitor", [1.0, 1234.5])
def test_folded_matches_pyfai_integrate1d(scene, monitor):
    red = scene["reducer"]
    intensity, sigma = red.integrate(scene["frame"], monitor=monitor)
    ref = pyfai_reference(scene, scene["frame"], monitor)
    filled = np.asarray(ref.count) > 0
    assert filled.sum() > 0.9 * NPT
    np.testing.assert_allclose(red.q, ref.radial, rtol=1e-6)
    np.testing.assert_allclose(intensity[filled], ref.intensity[filled], rtol=RTOL)
    np.testing.assert_allclose(sigma[filled], ref.sigma[filled], rtol=RTOL)
    np.testing.assert_allclose(red.count[filled], ref.count[filled], rtol=RTOL)
    assert np.all(np.isnan(intensity[~filled]))


def test_pyfai_method_agrees_with_folded(scene):
    red = scene["reducer"]
    ref_red = Reducer(scene["ai"], npt=NPT, mask=scene["beamstop"], dark=scene["dark"],
                      flat=scene["flat"], polarization_factor=POL, method="pyfai")
    a = red.reduce(scene["frame"], monitor=7.0)
    b = ref_red.reduce(scene["frame"], monitor=7.0)
    ok = a.valid & b.valid
    np.testing.assert_allclose(a.intensity[ok], b.intensity[ok], rtol=RTOL)
    np.testing.assert_allclose(a.sigma[ok], b.sigma[ok], rtol=RTOL)
    assert b.provenance["method"].startswith("pyfai")


def test_recovers_input_intensity(scene):
    """Monitor = flux: the reduced curve is the analytic I(q) within noise."""
    prof = scene["reducer"].reduce(scene["frame"], monitor=20.0)
    ok = prof.valid
    truth = iq(prof.q_inv_angstrom[ok])
    pull = (prof.intensity[ok] - truth) / prof.sigma[ok]
    # bin averaging of a curved I(q) adds a small bias at the lowest q; stay loose
    assert np.median(np.abs(pull)) < 1.5
    np.testing.assert_allclose(prof.intensity[ok], truth, rtol=0.05)


def test_batch_equals_single(scene):
    red = scene["reducer"]
    rng = np.random.default_rng(7)
    frames = rng.poisson(scene["expected"], size=(3, *scene["frame"].shape)).astype(np.int32)
    monitors = np.array([1.0, 2.5, 10.0])
    batch = red.reduce_many(frames, monitors=monitors)
    for frame, mon, prof in zip(frames, monitors, batch, strict=True):
        single = red.reduce(frame, monitor=mon)
        np.testing.assert_allclose(prof.intensity, single.intensity, rtol=1e-6, equal_nan=True)
        np.testing.assert_allclose(prof.sigma, single.sigma, rtol=1e-6, equal_nan=True)


def test_masked_pixels_have_no_influence(scene):
    red = scene["reducer"]
    frame = scene["frame"].copy()
    base = red.integrate(frame)
    frame[scene["mask"]] = 10**9
    hot = red.integrate(frame)
    np.testing.assert_array_equal(base[0], hot[0])
    np.testing.assert_array_equal(base[1], hot[1])
    # also NaN under the mask of a float frame is accepted and ignored
    ffloat = scene["frame"].astype(np.float32)
    ffloat[scene["mask"]] = np.nan
    np.testing.assert_allclose(red.integrate(ffloat)[0], base[0], rtol=1e-6, equal_nan=True)


def test_detector_dummy_pixels_match_pyfai(scene):
    """Pilatus flags bad pixels with -1/-2: pyFAI drops them per frame, so do we."""
    frame = scene["frame"].copy()
    valid = np.flatnonzero(~scene["mask"].ravel())
    bad = np.random.default_rng(3).choice(valid, 500, replace=False)
    frame.ravel()[bad] = -2
    intensity, sigma = scene["reducer"].integrate(frame, monitor=3.0)
    ref = pyfai_reference(scene, frame, 3.0)
    filled = np.asarray(ref.count) > 0
    np.testing.assert_allclose(intensity[filled], ref.intensity[filled], rtol=RTOL)
    np.testing.assert_allclose(sigma[filled], ref.sigma[filled], rtol=RTOL)
    many = scene["reducer"]._folded.integrate_many(frame[None], [3.0])
    np.testing.assert_allclose(many[0][0], intensity, rtol=1e-6, equal_nan=True)


def test_uint32_frame_matches_int32(scene):
    red = scene["reducer"]
    a = red.integrate(scene["frame"])
    b = red.integrate(np.clip(scene["frame"], 0, None).astype(np.uint32))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6, equal_nan=True)


def test_no_split_variant_matches_pyfai_no_csr():
    ai = make_geometry("Pilatus100k", distance_m=2.0)
    shape = ai.detector.shape
    frame = np.random.default_rng(0).poisson(expected_frame(ai, iq, flux=5.0)).astype(np.int32)
    q = ai.array_from_unit(shape, "center", "q_A^-1", scale=True)
    q_range = (float(q.min()), float(q.max()))
    folded = FoldedIntegrator(ai, shape, 100, q_range, split="no")
    ref = ai.integrate1d(frame, 100, unit="q_A^-1", method=("no", "csr", "cython"),
                         polarization_factor=0.99, radial_range=q_range, error_model="poisson")
    intensity, sigma = folded.integrate(frame)
    filled = np.asarray(ref.count) > 0
    np.testing.assert_allclose(intensity[filled], ref.intensity[filled], rtol=RTOL)
    np.testing.assert_allclose(sigma[filled], ref.sigma[filled], rtol=RTOL)


def test_float64_accumulation_option_matches_pyfai(scene):
    red = scene["reducer"]
    fast = FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range, mask=red.mask,
                            dark=scene["dark"], flat=scene["flat"], polarization_factor=POL,
                            accumulate="float64")
    intensity, sigma = fast.integrate(scene["frame"], monitor=2.0)
    ref = pyfai_reference(scene, scene["frame"], 2.0)
    filled = np.asarray(ref.count) > 0
    np.testing.assert_allclose(intensity[filled], ref.intensity[filled], rtol=RTOL)
    np.testing.assert_allclose(sigma[filled], ref.sigma[filled], rtol=RTOL)


def test_serial_and_threaded_paths_agree(scene):
    """threads=1 (both products in the caller) and threads=2 give identical results."""
    red = scene["reducer"]
    kwargs = {"mask": red.mask, "dark": scene["dark"], "flat": scene["flat"],
              "polarization_factor": POL}
    one = FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range, threads=1, **kwargs)
    two = FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range, threads=2, **kwargs)
    a = one.integrate(scene["frame"], monitor=4.0)
    b = two.integrate(scene["frame"], monitor=4.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    ref = pyfai_reference(scene, scene["frame"], 4.0)
    filled = np.asarray(ref.count) > 0
    np.testing.assert_allclose(a[0][filled], ref.intensity[filled], rtol=RTOL)
    np.testing.assert_allclose(a[1][filled], ref.sigma[filled], rtol=RTOL)
    with pytest.raises(ReductionError, match="threads must be 1 or 2"):
        FoldedIntegrator(scene["ai"], red.shape, NPT, red.q_range, threads=3, **kwargs)


def test_dummy_values_in_masked_gaps_are_ignored(scene):
    """A real Pilatus frame holds -1 in its module gaps: they must not change anything."""
    red = scene["reducer"]
    frame = scene["frame"].copy()
    frame[scene["mask"]] = -1
    intensity, sigma = red.integrate(frame, monitor=2.0)
    base = red.integrate(scene["frame"], monitor=2.0)
    np.testing.assert_array_equal(intensity, base[0])
    np.testing.assert_array_equal(sigma, base[1])
    ref = pyfai_reference(scene, frame, 2.0)
    filled = np.asarray(ref.count) > 0
    np.testing.assert_allclose(intensity[filled], ref.intensity[filled], rtol=RTOL)
    np.testing.assert_allclose(sigma[filled], ref.sigma[filled], rtol=RTOL)
    # gaps plus dummy pixels in the active area: the dynamic path, in single and batch
    valid = np.flatnonzero(~scene["mask"].ravel())
    frame.ravel()[np.random.default_rng(11).choice(valid, 200, replace=False)] = -2
    intensity, sigma = red.integrate(frame, monitor=2.0)
    ref = pyfai_reference(scene, frame, 2.0)
    np.testing.assert_allclose(intensity[filled], ref.intensity[filled], rtol=RTOL)
    np.testing.assert_allclose(sigma[filled], ref.sigma[filled], rtol=RTOL)
    stack = np.stack([scene["frame"], frame])
    many_i, many_s = red._folded.integrate_many(stack, [2.0, 2.0])
    np.testing.assert_array_equal(many_i[0], base[0])
    np.testing.assert_array_equal(many_i[1], intensity)
    np.testing.assert_array_equal(many_s[1], sigma)


def test_split_rows_preserves_the_product():
    from pbi_bluesky.reduction.integrator import _split_rows

    rng = np.random.default_rng(1)
    dense = rng.random((6, 700)) * (rng.random((6, 700)) < np.array([[0.0, 0.01, 0.5, 1.0,
                                                                      0.2, 0.0]]).T)
    csr = sp.csr_matrix(dense)
    split, starts = _split_rows(csr, 64)
    assert np.all(np.diff(split.indptr) <= 64)
    assert np.all(np.diff(starts) > 0) and starts.size == 6
    x = rng.random(700)
    np.testing.assert_allclose(np.add.reduceat(split @ x, starts), dense @ x, rtol=1e-12)
