"""The labelling loop on profiles (issue 19, item 3), without a beamline or a catalog.

A recipe's new batch drifts by 6 % in domain spacing and gets flagged; a person labels N
of those flags false alarms; after recalibration that batch (and more of it) is no longer
flagged, while the confirmed defects still are.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np

from pbi_bluesky.models.recalibrate import add_calibration_normals, flag_runs, unflagged_defects
from pbi_bluesky.profile import Profile
from pbi_bluesky.simulate import PS_PMMA, nominal_state, simulate_profile
from tests.review.conftest import RECIPE, bump

DRIFT = 1.06  # domain spacing of the new batch (batch-to-batch scatter is 2 %)
N_LABELLED = 4


def _drifted(instrument, rng, n):
    out = []
    for _ in range(n):
        state = nominal_state(PS_PMMA, RECIPE, rng)
        out.append(simulate_profile(replace(state, domain_spacing_A=state.domain_spacing_A
                                            * DRIFT), instrument, rng))
    return out


def _flagged(detector, profiles) -> int:
    return sum(v.is_anomaly for v in detector.score(profiles, RECIPE, explain="none"))


def test_false_alarm_labels_unflag_a_drifted_batch_not_the_defects(tiny_model, instrument):
    rng = np.random.default_rng(5)
    batch, fresh = _drifted(instrument, rng, 20), _drifted(instrument, rng, 20)
    normals = [simulate_profile(nominal_state(PS_PMMA, RECIPE, rng), instrument, rng)
               for _ in range(4)]
    intensity, sigma = tiny_model.resample(normals)
    defects = [{"raw_uid": f"defect-{i}", "recipe": RECIPE,
                "profiles": [Profile(tiny_model.grid.q, bump(intensity[i], 0.5), sigma[i])]}
               for i in range(len(normals))]
    verdicts = tiny_model.score(batch, RECIPE, explain="none")
    flagged = [p for p, v in zip(batch, verdicts, strict=True) if v.is_anomaly]
    assert len(flagged) >= N_LABELLED, "the drifted batch should be flagged"
    before = flag_runs(tiny_model, defects)
    assert all(r["flagged"] for r in before)

    model = copy.deepcopy(tiny_model)  # the session's model stays as it is
    table = add_calibration_normals(model, flagged[:N_LABELLED], [RECIPE] * N_LABELLED)
    row = next(r for r in table if r["recipe"] == RECIPE)
    assert row["added"] == N_LABELLED and row["new_threshold"] > row["old_threshold"]
    assert _flagged(model, batch) <= 1  # was >= N_LABELLED
    assert _flagged(model, fresh) <= 2, "unseen frames of the same batch pass too"
    assert _flagged(tiny_model, fresh) >= N_LABELLED // 2  # they were flagged before
    after = flag_runs(model, defects)
    assert all(r["flagged"] for r in after) and unflagged_defects(before, after) == {}
    other = next(r for r in table if r["recipe"] != RECIPE)
    assert other["added"] == 0 and other["new_threshold"] == other["old_threshold"]
