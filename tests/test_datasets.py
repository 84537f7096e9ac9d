"""Datasets: manifest, reproducibility, and 2D frames that reduce to the simulated physics."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from pbi_bluesky.reduction import Reducer, read_profile
from pbi_bluesky.simulate import (
    INSTRUMENT_FAULTS,
    PS_PMMA,
    expected_dark,
    expected_profile_inv_cm,
    intensity_inv_cm,
    nominal_state,
    render_empty_cell,
    render_frame,
    simulate_profile,
)
from pbi_bluesky.training.datasets import (
    MANIFEST_COLUMNS,
    generate_dataset,
    load_profiles,
    read_manifest,
)


@pytest.fixture(scope="module")
def reducer(instrument):
    return Reducer(
        instrument.geometry,
        npt=instrument.npt,
        q_range_inv_angstrom=instrument.q_range_inv_angstrom,
        mask=instrument.mask,
        dark=expected_dark(instrument),
        polarization_factor=instrument.polarization_factor,
    )


@pytest.fixture(scope="module")
def empty_cell(instrument, reducer):
    cell = render_empty_cell(instrument, np.random.default_rng(99))
    return reducer.reduce_absolute(cell.frame, i0=cell.monitor, transmission=cell.transmission)


def _reduce(shot, state, instrument, reducer, empty_cell):
    return reducer.reduce_absolute(
        shot.frame,
        i0=shot.monitor,
        transmission=shot.transmission,
        thickness_cm=state.thickness_cm,
        background=empty_cell,
    )


@pytest.mark.parametrize("recipe", ["0:100", "50:50"])
def test_rendered_frame_reduces_to_the_model_in_absolute_units(
    recipe, instrument, reducer, empty_cell
):
    """Render -> pyFAI-based reduction recovers I(q) in 1/cm within its own error bars."""
    rng = np.random.default_rng(5)
    state = nominal_state(PS_PMMA, recipe)
    # the model averaged over each bin as its pixels sample it (what integration estimates)
    reference = expected_profile_inv_cm(state, instrument)
    shot = render_frame(state, instrument, rng)
    profile = _reduce(shot, state, instrument, reducer, empty_cell)
    # above the first bins, where pixel size and bin width smear the steep Porod slope
    above = instrument.q_centers_inv_angstrom > 0.012
    z = ((profile.intensity - reference) / profile.sigma)[above]
    assert profile.metadata["units"] == "1/cm"
    # the empty cell is one shared noisy measurement, so allow a little excess scatter
    assert np.mean(z**2) < 2.0
    assert abs(np.mean(profile.intensity[above] / reference[above]) - 1) < 0.01
    # and the 1D simulator is statistically equivalent
    fast = simulate_profile(state, instrument, rng)
    zf = ((fast.intensity - reference) / fast.sigma)[above]
    assert np.mean(zf**2) == pytest.approx(1.0, abs=0.25)


@pytest.mark.parametrize("fault", INSTRUMENT_FAULTS)
def test_instrument_faults_show_in_the_reduced_data(fault, instrument, reducer, empty_cell):
    rng = np.random.default_rng(11)
    state = nominal_state(PS_PMMA, "50:50")
    reference = intensity_inv_cm(state, instrument.q_centers_inv_angstrom)
    clean = _reduce(render_frame(state, instrument, rng), state, instrument, reducer, empty_cell)
    bad = _reduce(
        render_frame(state, instrument, rng, faults={fault: 1.0}),
        state, instrument, reducer, empty_cell,
    )
    chi2_clean = np.nanmean(((clean.intensity - reference) / clean.sigma) ** 2)
    chi2_bad = np.nanmean(((bad.intensity - reference) / bad.sigma) ** 2)
    assert chi2_bad > 3 * chi2_clean, f"{fault}: chi2 {chi2_bad:.2f} vs clean {chi2_clean:.2f}"


def test_unknown_fault_is_refused(instrument, rng):
    with pytest.raises(ValueError, match="unknown fault"):
        render_frame(nominal_state(PS_PMMA, "50:50"), instrument, rng, faults={"gremlin": 1})


def test_profile_dataset_manifest_and_reproducibility(tmp_path):
    a = generate_dataset(tmp_path / "a", n_normal_per_recipe=2, n_per_anomaly_kind=2, seed=4,
                         progress=False)
    b = generate_dataset(tmp_path / "b", n_normal_per_recipe=2, n_per_anomaly_kind=2, seed=4,
                         progress=False)
    with a.open() as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == MANIFEST_COLUMNS
    rows_a, rows_b = read_manifest(a), read_manifest(b)
    assert len(rows_a) == 5 * 2 + 6 * 2
    kinds = {r["kind"] for r in rows_a}
    assert {"normal", "composition_drift", "coarsening", "contamination", "degradation",
            "thickness_error", "mislabelled"} == kinds
    assert all(r["anomaly"] == ("0" if r["kind"] == "normal" else "1") for r in rows_a)
    for ra, rb in zip(rows_a, rows_b, strict=True):
        pa, pb = read_profile(ra["path"]), read_profile(rb["path"])
        np.testing.assert_array_equal(pa.intensity, pb.intensity)
    assert (tmp_path / "a" / "geometry.poni").is_file()


def test_frame_dataset_is_reducible(tmp_path):
    import fabio

    manifest = generate_dataset(tmp_path, n_normal_per_recipe=1, n_per_anomaly_kind=0,
                                n_per_fault=1, frames=True, seed=2, progress=False)
    rows = read_manifest(manifest)
    assert {r["kind"] for r in rows} == {"normal", *INSTRUMENT_FAULTS}
    frame = fabio.open(rows[0]["frame"]).data
    assert frame.dtype == np.int32 and frame.shape == (1043, 981)
    assert (frame == -1).sum() > 0  # module gaps, as a Pilatus writes them
    for name in ("mask.edf", "dark.edf", "geometry.poni", "frames/empty_cell.cbf"):
        assert (tmp_path / name).is_file()


def test_read_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,recipe\nx.dat,50:50\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_manifest(bad)


def test_one_absolute_path_for_the_cli_the_datasets_and_the_live_scorer(tmp_path):
    """A frame of a simulated dataset reduced three ways gives the same absolute I(q):
    the profile the dataset wrote, `pbi reduce --i0 ...` on the files, and
    Reducer.reduce_absolute (the function the live scorer calls)."""
    import json as _json

    from typer.testing import CliRunner

    from pbi_bluesky.cli import app
    from pbi_bluesky.simulate import DEFAULT_Q_RANGE

    manifest = generate_dataset(tmp_path / "d", n_normal_per_recipe=1, n_per_anomaly_kind=0,
                                frames=True, seed=7, progress=False)
    root = manifest.parent
    row = read_manifest(manifest)[2]
    written = read_profile(row["path"])
    assert written.metadata["units"] == "1/cm"
    cell = _json.loads((root / "frames" / "empty_cell.json").read_text())
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [
        "reduce", row["frame"], "--poni", str(root / "geometry.poni"),
        "--mask", str(root / "mask.edf"), "--dark", str(root / "dark.edf"),
        "--npt", "400", "--qmin", str(DEFAULT_Q_RANGE[0]), "--qmax", str(DEFAULT_Q_RANGE[1]),
        "--i0", row["monitor"], "--transmission", row["transmission"],
        "--thickness", row["thickness_cm"], "--background",
        str(root / "frames" / "empty_cell.cbf"), "--background-i0", str(cell["monitor"]),
        "--background-transmission", str(cell["transmission"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "uncalibrated" in result.output  # no scale file beside this PONI
    cli = read_profile(out / (Path(row["frame"]).stem + ".dat"))
    assert cli.metadata["units"] == "1/cm"
    reducer = Reducer(root / "geometry.poni", npt=400, q_range_inv_angstrom=DEFAULT_Q_RANGE,
                      mask=root / "mask.edf", dark=root / "dark.edf")
    background = reducer.reduce_absolute(root / "frames" / "empty_cell.cbf",
                                         i0=cell["monitor"], transmission=cell["transmission"])
    live = reducer.reduce_absolute(row["frame"], i0=float(row["monitor"]),
                                   transmission=float(row["transmission"]),
                                   thickness_cm=float(row["thickness_cm"]),
                                   background=background)
    ok = written.valid
    assert ok.sum() > 350
    # the written files carry 11 significant digits; the manifest readings 7
    np.testing.assert_allclose(cli.intensity[ok], written.intensity[ok], rtol=2e-6)
    np.testing.assert_allclose(live.intensity[ok], written.intensity[ok], rtol=2e-6)
    np.testing.assert_allclose(live.sigma[ok], written.sigma[ok], rtol=2e-6)
    # and the manifest path used for training and scoring from frames (no empty cell)
    nocell = load_profiles([row], poni=root / "geometry.poni", mask=root / "mask.edf",
                           dark=root / "dark.edf")[0]
    direct = Reducer(root / "geometry.poni", mask=root / "mask.edf",
                     dark=root / "dark.edf").reduce_absolute(
        row["frame"], i0=float(row["monitor"]), transmission=float(row["transmission"]),
        thickness_cm=float(row["thickness_cm"]))
    np.testing.assert_array_equal(nocell.intensity, direct.intensity)
    assert nocell.provenance["corrections"]["normalisation"] == "absolute"
