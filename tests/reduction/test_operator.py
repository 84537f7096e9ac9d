"""The compact pixel-major operator: encoding, exceptions, unfolding, validation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pbi_bluesky.reduction import ReductionError
from pbi_bluesky.reduction.kernels import dummy_bounds
from pbi_bluesky.reduction.operator import (
    FRACTION_SCALE,
    SKIP,
    CompactOperator,
    compact_from_csr,
    unfold,
)


def handmade_csr() -> sp.csr_matrix:
    """6 bins x 9 pixels covering every case of the encoding."""
    cols = {
        0: [(0, 1.0)],                      # one bin
        1: [(1, 0.25), (2, 0.75)],          # two adjacent bins
        2: [(2, 0.5), (3, 0.2), (4, 0.3)],  # three bins: exception
        3: [],                              # masked
        4: [(1, 0.4), (3, 0.6)],            # not adjacent: exception
        5: [(4, 0.5), (5, 0.3)],            # cut by the q range (sum 0.8): exception
        6: [(5, 1.0)],                      # the last bin
        7: [(3, 0.6)],                      # one bin, partial: exception
        8: [(0, 1e-7), (1, 1.0 - 1e-7)],    # tiny first fraction
    }
    rows, cs, vals = [], [], []
    for col, entries in cols.items():
        for row, val in entries:
            rows.append(row)
            cs.append(col)
            vals.append(val)
    return sp.csr_matrix((np.array(vals, np.float32), (rows, cs)), shape=(6, 9))


def test_encoding_of_every_pixel_kind():
    op = compact_from_csr(handmade_csr())
    bins = op.code & 0xFFFF
    assert list(bins[[0, 1, 6, 8]]) == [0, 1, 5, 0]
    assert all(bins[[2, 3, 4, 5, 7]] == SKIP)
    assert list(op.ex_pixel) == [2, 4, 5, 7]
    assert list(np.diff(op.ex_ptr)) == [3, 2, 2, 1]
    assert op.fraction[0] == 1.0 and op.fraction[6] == 1.0  # exact
    assert abs(op.fraction[1] - 0.25) <= 0.5 / FRACTION_SCALE
    assert op.nbytes < 9 * 4 + 200


def test_to_csr_and_dot_agree_and_stay_within_the_quantisation():
    csr = handmade_csr()
    op = compact_from_csr(csr)
    quant = op.to_csr()
    dense, qdense = csr.toarray().astype(np.float64), quant.toarray()
    assert np.max(np.abs(dense - qdense)) <= 0.5 / FRACTION_SCALE + 1e-7
    v = np.random.default_rng(0).uniform(0, 10, 9)
    np.testing.assert_allclose(op.dot(v), qdense @ v, rtol=1e-12)
    np.testing.assert_allclose(op.dot(v, squared=True), (qdense**2) @ v, rtol=1e-12)


def test_unfold_gives_signal_and_variance_of_the_regular_pixels():
    rng = np.random.default_rng(1)
    npt, size = 7, 400
    first = rng.integers(0, npt - 1, size)
    frac = np.round(rng.uniform(0, 1, size) * FRACTION_SCALE) / FRACTION_SCALE
    x = rng.poisson(3.0, size).astype(np.float64)
    m = np.maximum(x, 1)
    sums = np.zeros((npt + 1, 5))
    for col in range(size):
        sums[first[col]] += [x[col], frac[col] * x[col], m[col], frac[col] * m[col],
                             frac[col] ** 2 * m[col]]
    c = np.zeros((npt, size))
    c[first, np.arange(size)] = frac
    c[first + 1, np.arange(size)] += 1 - frac
    signal, var = unfold(sums)
    np.testing.assert_allclose(signal, c @ x, rtol=1e-12)
    np.testing.assert_allclose(var, (c**2) @ m, rtol=1e-12)


def test_operator_arrays_roundtrip_and_validation():
    op = compact_from_csr(handmade_csr())
    again = CompactOperator.from_arrays(op.to_arrays())
    np.testing.assert_array_equal(again.code, op.code)

    def broken(**change):
        arrays = {**op.to_arrays(), **change}
        with pytest.raises(ReductionError):
            CompactOperator.from_arrays(arrays)

    code = op.code.copy()
    code[0] = 6  # bin out of range
    broken(code=code)
    code = op.code.copy()
    code[6] = 5 | (3 << 16)  # last bin must be a one-bin pixel
    broken(code=code)
    broken(code=op.code.astype(np.int64))
    broken(code=op.code[:-1])
    broken(ex_bin=np.full_like(op.ex_bin, 99))
    broken(ex_pixel=op.ex_pixel + 100)
    broken(ex_pixel=np.array([0, 4, 5, 7]))  # pixel 0 is regular
    broken(ex_coef=np.full_like(op.ex_coef, np.nan))
    broken(ex_ptr=op.ex_ptr[::-1].copy())
    arrays = op.to_arrays()
    del arrays["ex_bin"]
    with pytest.raises(ReductionError, match="incomplete"):
        CompactOperator.from_arrays(arrays)


def test_too_many_bins_is_a_clear_error():
    with pytest.raises(ReductionError, match="at most"):
        compact_from_csr(sp.csr_matrix((SKIP + 1, 4)))


@pytest.mark.parametrize("value, delta", [(-2, 1.5), (-1, 0.0), (4294967294, 1.5),
                                          (65534, 1.5), (-2, 1.1920929e-07), (1e6, 0.1),
                                          (0.0, 0.5)])
def test_dummy_bounds_equal_pyfai_float32_test(value, delta):
    lo, hi = dummy_bounds(value, delta)
    d, dd = np.float32(value), np.float32(delta)
    # every float32 within 300 ulps of both ends (and of the dummy) must agree
    probes = [d]
    for edge in (lo, hi, np.float32(np.float64(d) - dd), np.float32(np.float64(d) + dd)):
        v = edge
        for _ in range(300):
            v = np.nextafter(v, np.float32(-np.inf))
        for _ in range(600):
            probes.append(v)
            v = np.nextafter(v, np.float32(np.inf))
    probes = np.array(probes, dtype=np.float32)
    expected = np.abs(probes - d) <= dd
    got = (probes >= lo) & (probes <= hi)
    np.testing.assert_array_equal(got, expected)
    assert not ((np.float32(np.nan) >= lo) and (np.float32(np.nan) <= hi))
