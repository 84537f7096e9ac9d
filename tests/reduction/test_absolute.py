"""Absolute intensity from a measured standard: the simulator renders water in a cell on an
instrument whose I0 monitor has an unknown gain; the calibration recovers it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pbi_bluesky.reduction import (
    Reducer,
    ReductionError,
    absolute_scale_path,
    calibrate_with_water,
    load_absolute_scale,
    save_absolute_scale,
)
from pbi_bluesky.simulate import (
    PS_PMMA,
    WATER_INV_CM,
    Instrument,
    expected_dark,
    expected_profile_inv_cm,
    make_geometry,
    nominal_state,
    render_empty_cell,
    render_frame,
    render_standard,
)

GAIN = 0.8  # I0 monitor counts per photon on the sample: unknown to the reduction
EXPOSURE = 10.0


@pytest.fixture(scope="module")
def bench():
    inst = Instrument(geometry=make_geometry("Pilatus300k", 1.5), npt=120,
                      q_range_inv_angstrom=(0.012, 0.18), monitor_counts_per_photon=GAIN)
    rng = np.random.default_rng(42)
    reducer = Reducer(inst.geometry, npt=inst.npt, q_range_inv_angstrom=inst.q_range_inv_angstrom,
                      mask=inst.mask, dark=expected_dark(inst, EXPOSURE),
                      polarization_factor=inst.polarization_factor)
    waters = [render_standard(inst, rng, thickness_cm=0.1, exposure_s=EXPOSURE)
              for _ in range(2)]
    cell = render_empty_cell(inst, rng, exposure_s=EXPOSURE)
    return {"inst": inst, "rng": rng, "reducer": reducer, "waters": waters, "cell": cell}


def _calibrate(bench, **kw):
    return calibrate_with_water(
        bench["reducer"], [w.frame for w in bench["waters"]],
        i0=[w.monitor for w in bench["waters"]],
        transmission=[w.transmission for w in bench["waters"]], thickness_cm=0.1,
        empty_cell=bench["cell"].frame, empty_cell_i0=bench["cell"].monitor,
        empty_cell_transmission=bench["cell"].transmission, **kw)


def test_water_recovers_the_instrument_factor_within_two_percent(bench):
    scale = _calibrate(bench)
    assert scale.factor == pytest.approx(GAIN, rel=0.02)
    assert scale.uncertainty < 0.02 * scale.factor
    assert abs(scale.factor - GAIN) < 4 * scale.uncertainty + 0.005 * GAIN
    d = scale.details
    assert d["nominal_level_inv_cm"] == pytest.approx(WATER_INV_CM / GAIN, rel=0.02)
    assert d["reduced_chi2_flat"] < 2.0 and d["n_frames"] == 2


def test_the_factor_makes_a_sample_absolute(bench):
    """A PS/PMMA frame reduced with the factor matches its model in 1/cm (2 %); without
    it, it is off by the monitor gain."""
    scale = _calibrate(bench)
    inst, rng, reducer = bench["inst"], bench["rng"], bench["reducer"]
    state = nominal_state(PS_PMMA, "50:50")
    shot = render_frame(state, inst, rng, exposure_s=EXPOSURE)
    cell = reducer.reduce_absolute(bench["cell"].frame, i0=bench["cell"].monitor,
                                   transmission=bench["cell"].transmission, scale=scale)
    prof = reducer.reduce_absolute(shot.frame, i0=shot.monitor, transmission=shot.transmission,
                                   thickness_cm=state.thickness_cm, background=cell,
                                   scale=scale)
    reference = expected_profile_inv_cm(state, inst)
    above = inst.q_centers_inv_angstrom > 0.02
    assert np.mean(prof.intensity[above] / reference[above]) == pytest.approx(1.0, abs=0.02)
    assert prof.provenance["corrections"]["absolute_scale"]["standard"] == "water"
    nominal = reducer.reduce_absolute(shot.frame, i0=shot.monitor,
                                      transmission=shot.transmission,
                                      thickness_cm=state.thickness_cm,
                                      background=reducer.reduce_absolute(
                                          bench["cell"].frame, i0=bench["cell"].monitor,
                                          transmission=bench["cell"].transmission))
    ratio = np.mean(nominal.intensity[above] / reference[above])
    assert ratio == pytest.approx(1 / GAIN, rel=0.02)


def test_scale_file_round_trip(bench, tmp_path):
    scale = _calibrate(bench)
    poni = tmp_path / "geometry.poni"
    bench["inst"].write_poni(poni)
    path = save_absolute_scale(scale, absolute_scale_path(poni), poni=poni)
    doc = json.loads(path.read_text())
    assert doc["format"] == "pbi_bluesky.absolute_scale" and doc["standard"] == "water"
    assert doc["poni"] == "geometry.poni" and len(doc["poni_sha256"]) == 64
    again = load_absolute_scale(path)
    assert (again.factor, again.uncertainty) == (scale.factor, scale.uncertainty)
    assert Reducer(poni, npt=50).absolute_scale.factor == scale.factor


def test_bad_calibration_inputs(bench):
    with pytest.raises(ReductionError, match="2 water frame.*3 I0"):
        calibrate_with_water(bench["reducer"], [w.frame for w in bench["waters"]],
                             i0=[1.0, 2.0, 3.0], transmission=[0.7], thickness_cm=0.1,
                             empty_cell=bench["cell"].frame, empty_cell_i0=1.0,
                             empty_cell_transmission=0.9)
    with pytest.raises(ReductionError, match="usable bins"):
        _calibrate(bench, q_range=(0.5, 0.6))
    with pytest.raises(ReductionError, match="not positive"):
        # the cell taken for the water: nothing left after subtraction
        calibrate_with_water(bench["reducer"], [bench["cell"].frame],
                             i0=[bench["cell"].monitor * 1.5],
                             transmission=[bench["cell"].transmission], thickness_cm=0.1,
                             empty_cell=bench["cell"].frame,
                             empty_cell_i0=bench["cell"].monitor,
                             empty_cell_transmission=bench["cell"].transmission)
