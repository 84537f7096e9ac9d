"""Real measured curves: read, resample, train and score (sasdata's example files, BSD-3).

The ISIS LOQ polymer-blend standards RT2 and TK49 are absolute-scale SANS curves of two
different polymer-blend standard samples. There is no population of repeated real
measurements of one sample to train on, so the training "normals" are replicates of the
real RT2 curve (its own measured Idev as noise, 2 % scale scatter). What is scored is real:
TK49, a different blend, must be flagged against RT2; RT2 itself must not be; RT2 with the
wrong thickness (1.3 mm instead of 1.1 mm) must be, with an amplitude descriptor on top
of its attributions.
"""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest

from pbi_bluesky.models import AnomalyDetector, NetworkConfig, QGrid, TrainingConfig
from pbi_bluesky.profile import Profile
from pbi_bluesky.reduction import read_cansas_xml, read_profile

DATA = files("sasdata") / "example_data" / "1d_data"
RT2 = DATA / "ISIS_Polymer_Blend_RT2.xml"
TK49 = DATA / "ISIS_Polymer_Blend_TK49.xml"


def _replicate(profile: Profile, rng: np.random.Generator) -> Profile:
    scale = 1.0 + rng.normal(0.0, 0.02)
    noise = rng.normal(0.0, 1.0, profile.intensity.shape) * profile.sigma
    noisy = profile.intensity * scale + noise
    return Profile(profile.q_inv_angstrom, noisy, profile.sigma, dict(profile.metadata))


XML_FILES = sorted(p for p in DATA.iterdir() if p.name.endswith(".xml"))


@pytest.mark.parametrize("path", XML_FILES, ids=[p.name for p in XML_FILES])
def test_cansas_xml_reader_matches_sasdatas_own_loader(path):
    """Every canSAS 1D XML example of sasdata reads as sasdata reads it; rows that share
    one Q (merged banks) are merged into one row, so there we compare the Q values."""
    from sasdata.dataloader.loader import Loader

    ours = read_cansas_xml(str(path))
    theirs = Loader().load(str(path))[0]
    q, i, s = (np.asarray(v, dtype=float) for v in (theirs.x, theirs.y, theirs.dy))
    if len(np.unique(q)) == len(q):
        order = np.argsort(q)
        np.testing.assert_allclose(ours.q_inv_angstrom, q[order], rtol=1e-12)
        np.testing.assert_allclose(ours.intensity, i[order], rtol=1e-12)
        np.testing.assert_allclose(ours.sigma, s[order], rtol=1e-12)
    else:
        np.testing.assert_allclose(ours.q_inv_angstrom, np.unique(q), rtol=1e-12)
    assert np.all(np.diff(ours.q_inv_angstrom) > 0)
    assert read_profile(str(path)).intensity.shape == ours.intensity.shape


def test_merged_banks_with_repeated_q_are_merged():
    """sasdata's latex_smeared.xml repeats two Q values: one row each, weighted mean."""
    ours = read_cansas_xml(str(DATA / "latex_smeared.xml"))
    assert len(ours.q_inv_angstrom) == 299


def test_rt2_thickness_is_read_in_cm():
    assert read_cansas_xml(str(RT2)).metadata["thickness_cm"] == pytest.approx(0.11)


def test_corrupt_cansas_xml_is_a_clear_error(tmp_path):
    from pbi_bluesky.reduction import ReductionError

    bad = tmp_path / "bad.xml"
    bad.write_text("<SASroot><SASentry><SASdata></SASdata></SASentry>")
    with pytest.raises(ReductionError, match="not valid XML"):
        read_cansas_xml(bad)
    units = tmp_path / "units.xml"
    units.write_text('<SASroot><SASentry><SASdata><Idata><Q unit="furlong">0.1</Q><I>1</I>'
                     '</Idata></SASdata></SASentry></SASroot>')
    with pytest.raises(ReductionError, match="unsupported Q units"):
        read_cansas_xml(units)
    empty = tmp_path / "empty.xml"
    empty.write_text("<SASroot><SASentry><SASdata></SASdata></SASentry></SASroot>")
    with pytest.raises(ReductionError, match="no Idata"):
        read_cansas_xml(empty)


@pytest.fixture(scope="module")
def rt2_model():
    import torch

    torch.set_num_threads(2)
    rt2 = read_cansas_xml(str(RT2))
    rng = np.random.default_rng(0)
    grid = QGrid(q_min=0.01, q_max=0.2, npt=64)
    detector = AnomalyDetector(grid, NetworkConfig(length=64),
                               TrainingConfig(epochs=8, alpha=0.05, seed=0))
    normals = [_replicate(rt2, rng) for _ in range(80)]
    detector.fit(normals, ["RT2"] * len(normals), progress=False)
    return detector, rt2


def test_real_curves_scored_against_a_model_of_rt2(rt2_model):
    detector, rt2 = rt2_model
    rng = np.random.default_rng(1)
    fresh = detector.score([_replicate(rt2, rng) for _ in range(40)], "RT2", explain="none")
    false_positive_rate = np.mean([v.is_anomaly for v in fresh])
    assert false_positive_rate <= 0.15  # alpha 0.05 on 40 replicates
    measured = detector.score([rt2], "RT2", explain="none")[0]
    assert not measured.is_anomaly, measured
    tk49 = detector.score([read_cansas_xml(str(TK49))], "RT2", explain="none")[0]
    assert tk49.is_anomaly and tk49.p_value <= detector.alpha
    wrong_thickness = Profile(rt2.q_inv_angstrom, rt2.intensity * 1.1 / 1.3, rt2.sigma * 1.1 / 1.3)
    verdict = detector.score([wrong_thickness], "RT2", explain="all")[0]
    assert verdict.is_anomaly
    assert verdict.score > max(v.score for v in fresh)
    # the explanation names the physics of a wrong thickness: an amplitude (the level, the
    # invariant, or the flat background, which a wrong thickness scales alike), not a shape
    assert next(iter(verdict.details["attributions"])) in ("intensity_level", "invariant",
                                                            "background")
