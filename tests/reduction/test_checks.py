"""The input checks of a reduction, on their own (no geometry): what passes, what is
refused and with which words."""

from __future__ import annotations

import numpy as np
import pytest

from pbi_bluesky.profile import Profile
from pbi_bluesky.reduction.checks import (
    MAX_TRANSMISSION,
    check_background_profile,
    check_frame,
    per_frame,
    positive,
)
from pbi_bluesky.reduction.errors import ReductionError

SHAPE = (4, 5)


def test_numbers_and_per_frame_values():
    assert positive("I0", "2.5") == 2.5
    assert positive("transmission", MAX_TRANSMISSION, MAX_TRANSMISSION) == MAX_TRANSMISSION
    with pytest.raises(ReductionError, match="I0 must be a number, got 'x'"):
        positive("I0", "x")
    assert per_frame("I0", 3.0, 2) == [3.0, 3.0]
    assert per_frame("thickness", [None, 0.1], 2, optional=True) == [None, 0.1]
    with pytest.raises(ReductionError, match="thickness must be a number"):
        per_frame("thickness", [None, 0.1], 2)  # None only where it is optional


def test_nan_is_allowed_only_in_masked_pixels():
    mask = np.zeros(SHAPE, bool)
    mask[0, 0] = True
    frame = np.ones(SHAPE)
    frame[0, 0] = np.nan
    assert check_frame(frame, SHAPE, mask, "here") is not None
    frame[1, 1] = np.nan
    with pytest.raises(ReductionError, match="frame contains 1 NaN pixels"):
        check_frame(frame, SHAPE, mask, "here")
    with pytest.raises(ReductionError, match="dtype <U1 is not numeric"):
        check_frame(np.full(SHAPE, "a"), SHAPE, mask, "here")
    with pytest.raises(ReductionError, match=r"detector shape \(4, 5\) of geometry from here"):
        check_frame(np.ones((5, 4)), SHAPE, mask, "here")


def test_a_background_profile_must_be_a_plain_empty_cell_on_the_same_grid():
    q = np.linspace(0.01, 0.1, 8)
    absolute = {"normalisation": "absolute", "absolute_scale": {"factor": 2.0}}

    def cell(**corrections):
        return Profile(q.copy(), np.ones(8), np.ones(8),
                       provenance={"corrections": corrections})

    check_background_profile(cell(**absolute), q, absolute)
    check_background_profile(cell(), q, None)  # no normalisation asked: not compared
    with pytest.raises(ReductionError, match=r"q grid differs .*\(8 vs 7 bins\)"):
        check_background_profile(cell(), q[:7], None)
    with pytest.raises(ReductionError, match="must not be thickness-normalised"):
        check_background_profile(cell(thickness_cm=0.1), q, None)
    with pytest.raises(ReductionError, match="reduced with monitor normalisation"):
        check_background_profile(cell(), q, absolute)
    with pytest.raises(ReductionError, match="absolute scale factor 1.0, the frame with 2.0"):
        check_background_profile(cell(normalisation="absolute",
                                      absolute_scale={"factor": 1.0}), q, absolute)
