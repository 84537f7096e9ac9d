"""Reducer: absolute scaling (I0, solid angle, transmission, thickness, scale factor),
background subtraction, provenance and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pbi_bluesky.profile import Profile
from pbi_bluesky.reduction import (
    AbsoluteScale,
    Reducer,
    ReductionError,
    absolute_monitor,
    absolute_scale_path,
    expected_frame,
    load_absolute_scale,
    make_geometry,
    save_absolute_scale,
)

I_ABS = 2.5  # sample, 1/cm
B_CELL = 7.0  # empty cell + window scattering per unit monitor (through the cell)
THICK = 0.15
T_S, T_B = 0.6, 0.9
MON_S, MON_B = 1.0e4, 2.0e4


@pytest.fixture(scope="module")
def setup():
    ai = make_geometry("Pilatus300k", distance_m=2.5, wavelength_angstrom=1.0)
    reducer = Reducer(ai, npt=120)
    sample = expected_frame(ai, lambda q: np.full_like(q, THICK * I_ABS + B_CELL),
                            flux=MON_S * T_S)
    cell = expected_frame(ai, lambda q: np.full_like(q, B_CELL), flux=MON_B * T_B)
    # the same scene as a detector sees it: counts per incident photon per absolute sr
    omega = absolute_monitor(1.0, ai)
    abs_sample = expected_frame(ai, lambda q: np.full_like(q, THICK * I_ABS + B_CELL),
                                flux=MON_S * T_S * omega)
    abs_cell = expected_frame(ai, lambda q: np.full_like(q, B_CELL), flux=MON_B * T_B * omega)
    return {"ai": ai, "reducer": reducer, "sample": sample, "cell": cell,
            "abs_sample": abs_sample, "abs_cell": abs_cell}


def test_background_frame_subtraction_gives_absolute_level(setup):
    red = setup["reducer"]
    prof = red.reduce_absolute(setup["abs_sample"], i0=MON_S, transmission=T_S,
                               thickness_cm=THICK, background=setup["abs_cell"],
                               background_i0=MON_B, background_transmission=T_B,
                               metadata={"sample": "PS/PMMA"})
    ok = prof.valid
    assert ok.sum() > 100
    # float32 rounding of the ~20x larger raw terms is amplified by the subtraction
    np.testing.assert_allclose(prof.intensity[ok], I_ABS, rtol=1e-4)
    assert prof.metadata == {"units": "1/cm", "sample": "PS/PMMA"}
    corr = prof.provenance["corrections"]
    assert corr["thickness_cm"] == THICK and corr["transmission"] == T_S
    assert corr["normalisation"] == "absolute" and corr["i0"] == MON_S
    assert corr["monitor"] == pytest.approx(absolute_monitor(MON_S, setup["ai"]))
    assert corr["absolute_scale"]["factor"] == 1.0
    assert corr["absolute_scale"]["calibrated"] is False
    assert corr["background"]["kind"] == "frame" and corr["background"]["transmission"] == T_B
    # the low-level reduce with a monitor makes no claim of absolute units
    raw = red.reduce(setup["sample"], monitor=MON_S, transmission=T_S, thickness_cm=THICK,
                     background=setup["cell"], background_monitor=MON_B,
                     background_transmission=T_B)
    np.testing.assert_allclose(raw.intensity[ok], I_ABS, rtol=1e-4)
    assert raw.metadata["units"] == "arbitrary"
    assert raw.provenance["corrections"]["normalisation"] == "monitor"


def test_absolute_scale_factor_is_applied_and_recorded(setup, tmp_path):
    poni = tmp_path / "geometry.poni"
    setup["ai"].write(str(poni))
    scale = AbsoluteScale(factor=1.25, uncertainty=0.01, standard="water",
                          reference_inv_cm=0.01632, temperature_c=20.0)
    save_absolute_scale(scale, absolute_scale_path(poni), poni=poni)
    assert absolute_scale_path(poni).name == "geometry.absolute.json"
    red = Reducer(poni, npt=120)  # finds the scale file beside the PONI
    assert red.absolute_scale.factor == 1.25
    cell = red.reduce_absolute(setup["abs_cell"], i0=MON_B, transmission=T_B)
    prof = red.reduce_absolute(setup["abs_sample"], i0=MON_S, transmission=T_S,
                               thickness_cm=THICK, background=cell)
    ok = prof.valid
    np.testing.assert_allclose(prof.intensity[ok], 1.25 * I_ABS, rtol=1e-4)
    recorded = prof.provenance["corrections"]["absolute_scale"]
    assert recorded["factor"] == 1.25 and recorded["uncertainty"] == 0.01
    assert recorded["calibrated"] and recorded["source"].endswith("geometry.absolute.json")
    assert Reducer(poni, npt=120, absolute_scale=None).absolute_scale.factor == 1.0
    # a cell reduced with another factor (or by the low-level path) is refused
    other = Reducer(poni, npt=120, absolute_scale=None).reduce_absolute(
        setup["abs_cell"], i0=MON_B, transmission=T_B)
    with pytest.raises(ReductionError, match="absolute scale factor 1.0, the frame with 1.25"):
        red.reduce_absolute(setup["abs_sample"], i0=MON_S, background=other)
    plain = red.reduce(setup["cell"], monitor=MON_B, transmission=T_B)
    with pytest.raises(ReductionError, match="monitor normalisation, the frame with absolute"):
        red.reduce_absolute(setup["abs_sample"], i0=MON_S, background=plain)
    with pytest.raises(ReductionError, match="needs its own I0"):
        red.reduce_absolute(setup["abs_sample"], i0=MON_S, background=setup["abs_cell"])


@pytest.mark.parametrize(("content", "match"), [
    ("not json", "not valid JSON"),
    ('{"format": "other"}', "is not a pbi_bluesky.absolute_scale file"),
    ('{"format": "pbi_bluesky.absolute_scale", "factor": -2}', "finite number > 0"),
    ('{"format": "pbi_bluesky.absolute_scale"}', "has no 'factor'"),
])
def test_bad_absolute_scale_files_are_clear_errors(setup, tmp_path, content, match):
    poni = tmp_path / "g.poni"
    setup["ai"].write(str(poni))
    absolute_scale_path(poni).write_text(content)
    with pytest.raises(ReductionError, match=match):
        Reducer(poni, npt=120)
    with pytest.raises(ReductionError, match="not found"):
        load_absolute_scale(tmp_path / "none.json")


def test_background_profile_subtraction_and_quadrature(setup):
    red = setup["reducer"]
    rng = np.random.default_rng(5)
    sample = rng.poisson(setup["sample"]).astype(np.int32)
    cell = rng.poisson(setup["cell"]).astype(np.int32)
    bkg = red.reduce(cell, monitor=MON_B, transmission=T_B)
    prof = red.reduce(sample, monitor=MON_S, transmission=T_S, thickness_cm=THICK,
                      background=bkg)
    raw = red.reduce(sample, monitor=MON_S, transmission=T_S)
    ok = prof.valid
    expected_sigma = np.hypot(raw.sigma, bkg.sigma) / THICK
    np.testing.assert_allclose(prof.sigma[ok], expected_sigma[ok], rtol=1e-12)
    np.testing.assert_allclose(prof.intensity[ok], (raw.intensity - bkg.intensity)[ok] / THICK,
                               rtol=1e-12)
    # noisy but unbiased: the weighted mean is the absolute level
    w = 1 / prof.sigma[ok] ** 2
    mean = np.sum(w * prof.intensity[ok]) / np.sum(w)
    assert abs(mean - I_ABS) < 5 * np.sqrt(1 / np.sum(w))
    batch = red.reduce_many(sample[None], monitors=MON_S, transmission=T_S,
                            thickness_cm=THICK, background=bkg)[0]
    np.testing.assert_allclose(batch.intensity, prof.intensity, rtol=1e-6, equal_nan=True)


def test_background_profile_on_other_grid_is_rejected(setup):
    other = Profile.from_arrays(np.linspace(0.01, 0.2, 50), np.ones(50))
    with pytest.raises(ReductionError, match="q grid"):
        setup["reducer"].reduce(setup["sample"], background=other)


def test_provenance_is_complete_and_json(setup):
    prof = setup["reducer"].reduce(setup["sample"], monitor=2.0)
    prov = prof.provenance
    json.dumps(prov)
    assert prov["package"] == "pbi_bluesky"
    assert prov["unit"] == "q_A^-1" and prov["npt"] == 120 and prov["method"] == "folded"
    assert prov["geometry"]["detector"] == "Pilatus300k"
    assert prov["geometry"]["dist"] == pytest.approx(2.5)
    assert prov["q_range_inv_angstrom"][0] < prov["q_range_inv_angstrom"][1]
    corr = prov["corrections"]
    assert corr["mask_pixels"] == int(setup["ai"].detector.mask.sum()) > 0
    assert corr["polarization_factor"] == 0.99 and corr["solid_angle"] is True
    assert corr["dark"] is False and corr["monitor"] == 2.0 and corr["background"] is None
    assert corr["normalisation"] == "monitor"
    assert "pyfai_version" in prov


def test_reducer_from_poni_file(setup, tmp_path):
    poni = tmp_path / "geom.poni"
    setup["ai"].write(str(poni))
    red = Reducer(poni, npt=120)
    a = red.reduce(setup["sample"])
    b = setup["reducer"].reduce(setup["sample"])
    np.testing.assert_allclose(a.intensity, b.intensity, rtol=1e-6, equal_nan=True)
    assert a.provenance["geometry_source"] == str(poni)


def _nan_frame(setup):
    frame = setup["sample"].copy()
    valid = np.flatnonzero(~setup["reducer"].mask.ravel())
    frame.ravel()[valid[:12]] = np.nan
    return frame


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("nan", "frame contains 12 NaN pixels"),
        ("inf", "frame contains 1 infinite pixels"),
        ("shape", r"frame shape \(100, 100\) does not match detector shape \(619, 487\)"),
        ("empty_array", "frame is empty"),
        ("empty_file", "image file .*empty.tif is empty"),
        ("missing_image", "image file .*nope.cbf not found"),
        ("neg_thickness", "thickness must be > 0, got -1"),
        ("zero_transmission", "transmission must be > 0, got 0"),
        ("neg_transmission", "transmission must be > 0, got -0.5"),
        ("big_transmission", r"transmission must be <= 1.5, got 2"),
        ("zero_monitor", "monitor must be > 0, got 0"),
    ],
)
def test_bad_frame_inputs(setup, tmp_path, case, match):
    red = setup["reducer"]
    frame = setup["sample"]
    kwargs = {}
    if case == "nan":
        frame = _nan_frame(setup)
    elif case == "inf":
        frame = frame.copy()
        frame[300, 250] = np.inf
    elif case == "shape":
        frame = np.zeros((100, 100))
    elif case == "empty_array":
        frame = np.zeros((0, 0))
    elif case == "empty_file":
        frame = tmp_path / "empty.tif"
        frame.write_bytes(b"")
    elif case == "missing_image":
        frame = tmp_path / "nope.cbf"
    elif case == "neg_thickness":
        kwargs["thickness_cm"] = -1
    elif case == "zero_transmission":
        kwargs["transmission"] = 0
    elif case == "neg_transmission":
        kwargs["transmission"] = -0.5
    elif case == "big_transmission":
        kwargs["transmission"] = 2
    elif case == "zero_monitor":
        kwargs["monitor"] = 0
    with pytest.raises(ReductionError, match=match):
        red.reduce(frame, **kwargs)


def test_bad_geometry_inputs(tmp_path):
    with pytest.raises(ReductionError, match="PONI file .*missing.poni not found"):
        Reducer(tmp_path / "missing.poni")
    empty = tmp_path / "empty.poni"
    empty.write_text("")
    with pytest.raises(ReductionError, match="PONI file .*empty.poni is empty"):
        Reducer(empty)
    shapeless = tmp_path / "shapeless.poni"
    shapeless.write_text(
        "poni_version: 2\nDetector: Detector\n"
        'Detector_config: {"pixel1": 0.0001, "pixel2": 0.0001}\n'
        "Distance: 1.0\nPoni1: 0.01\nPoni2: 0.01\nRot1: 0\nRot2: 0\nRot3: 0\n"
        "Wavelength: 1e-10\n"
    )
    with pytest.raises(ReductionError, match="has no detector shape"):
        Reducer(shapeless)
    garbage = tmp_path / "garbage.poni"
    garbage.write_bytes(b"\x00\x01 not a poni \xff")
    with pytest.raises(ReductionError, match="garbage.poni"):
        Reducer(garbage)


def test_bad_reducer_options(setup):
    with pytest.raises(ReductionError, match="method must be one of"):
        Reducer(setup["ai"], method="magic")
    with pytest.raises(ReductionError, match=r"dark shape \(10, 10\) does not match"):
        Reducer(setup["ai"], dark=np.zeros((10, 10)))
    with pytest.raises(ReductionError, match="q range"):
        Reducer(setup["ai"], q_range_inv_angstrom=(0.2, 0.1))


def test_reduce_absolute_many_equals_reduce_absolute_bit_for_bit(setup):
    """The batch path the live scorer uses gives each frame exactly the numbers (and the
    provenance) of the single-frame path, whatever its neighbours' I0, T and thickness."""
    red = setup["reducer"]
    rng = np.random.default_rng(11)
    cell = red.reduce_absolute(rng.poisson(setup["abs_cell"]).astype(np.int32), i0=MON_B,
                               transmission=T_B)
    frames = np.stack([rng.poisson(setup["abs_sample"]).astype(np.int32) for _ in range(5)])
    i0 = [MON_S, 2 * MON_S, MON_S / 3, MON_S, 5 * MON_S]
    trans = [T_S, 0.3, 1.0, T_S, 0.9]
    thick = [THICK, 0.3, None, THICK, 0.05]
    for background in (None, cell):
        many = red.reduce_absolute_many(frames, i0=i0, transmission=trans, thickness_cm=thick,
                                        background=background)
        for k, got in enumerate(many):
            one = red.reduce_absolute(frames[k], i0=i0[k], transmission=trans[k],
                                      thickness_cm=thick[k], background=background)
            assert np.array_equal(got.intensity, one.intensity, equal_nan=True)
            assert np.array_equal(got.sigma, one.sigma, equal_nan=True)
            assert got.provenance == one.provenance and got.metadata == one.metadata
    shared = red.reduce_absolute_many(list(frames[:2]), i0=MON_S, transmission=T_S,
                                      thickness_cm=THICK)
    assert np.array_equal(shared[1].intensity, red.reduce_absolute(
        frames[1], i0=MON_S, transmission=T_S, thickness_cm=THICK).intensity, equal_nan=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"i0": [MON_S]}, "1 I0 values for 2 frames"),
    ({"i0": [MON_S, 0.0]}, "I0 must be > 0"),
    ({"i0": MON_S, "transmission": [T_S, 2.0]}, "transmission must be <= 1.5"),
    ({"i0": MON_S, "thickness_cm": [THICK, -1.0]}, "thickness must be > 0"),
    ({"i0": MON_S, "thickness_cm": [THICK, float("nan")]}, "thickness must be > 0"),
], ids=["too-few-i0", "zero-i0", "transmission-above-1.5", "negative-thickness",
        "nan-thickness"])
def test_reduce_absolute_many_refuses_bad_readings(setup, kwargs, match):
    frames = np.stack([setup["abs_sample"].astype(np.int32)] * 2)
    with pytest.raises(ReductionError, match=match):
        setup["reducer"].reduce_absolute_many(frames, **kwargs)
