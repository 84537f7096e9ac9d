"""Recalibration with labelled false alarms (issue 19, item 3)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from pbi_bluesky.models.recalibrate import add_calibration_normals
from pbi_bluesky.profile import Profile
from tests.conftest import simulated_normals


def _drifted(profiles, factor):
    """Normals of a batch whose intensity drifted by ``factor`` (thickness, transmission).

    A 4 % shift in q (domain spacing) flags only 2 of 12 with this tiny model, too few."""
    return [Profile(p.q_inv_angstrom, p.intensity * factor, p.sigma, dict(p.metadata))
            for p in profiles]


def test_false_alarms_join_the_calibration_and_stop_being_flagged(tiny_model, instrument):
    n_before = tiny_model.calibration.scores.size
    model = copy.deepcopy(tiny_model)
    normals, recipes = simulated_normals(instrument, 12, np.random.default_rng(77))
    recipe = recipes[0]
    batch = _drifted(normals[:12], 1.1)
    flagged = [v.is_anomaly for v in model.score(batch, recipe)]
    assert sum(flagged) >= 6, "the drifted batch should be flagged before recalibration"
    labelled = batch[:8]  # a person labels 8 of them false alarms
    table = add_calibration_normals(model, labelled, [recipe] * len(labelled))
    row = next(r for r in table if r["recipe"] == recipe)
    assert row["added"] == 8 and row["new_n"] == row["old_n"] + 8
    assert row["new_threshold"] > row["old_threshold"]
    after = [v.is_anomaly for v in model.score(batch[8:], recipe)]
    assert sum(after) <= 1, "the rest of the batch is still flagged"
    # obvious catalogue defects of that recipe are still flagged
    from pbi_bluesky.simulate import PS_PMMA, nominal_state, simulate_profile
    from pbi_bluesky.simulate.anomalies import applicable_anomalies, apply_anomaly

    rng = np.random.default_rng(5)
    defects = [simulate_profile(apply_anomaly(nominal_state(PS_PMMA, recipe, rng), kind, 1.0,
                                              rng), instrument, rng)
               for kind in applicable_anomalies(recipe)]
    assert defects and all(v.is_anomaly for v in model.score(defects, recipe))
    # the original model is unchanged, and an unknown recipe is refused
    assert tiny_model.calibration.scores.size == n_before
    assert model.calibration.scores.size == n_before + 8
    with pytest.raises(ValueError, match="not one this model"):
        add_calibration_normals(model, labelled[:1], ["nope"])
