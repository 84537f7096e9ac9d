"""The scorer is configured, not guessing: ambiguous keys and bad readings fail, named."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pbi_bluesky.live import LiveScorer
from tests.live.docs import feed, run_docs

FRAME = np.ones((8, 8), dtype=np.int32)
NUMBER = {"dtype": "number", "shape": [], "source": "sim"}
IMAGE = {"dtype": "array", "shape": [8, 8], "source": "sim", "dtype_numpy": "<i4"}


@pytest.fixture(scope="module")
def scorer(tiny_model):
    s = LiveScorer(tiny_model, poni=None)
    yield s
    s.close()


def _one(scorer, md, shots, **kw):
    uid, docs = run_docs({"composition": "50:50", "thickness_cm": 0.1, **md}, shots, **kw)
    feed(scorer, docs)
    assert scorer.flush(30)
    results = scorer.channel.results(uid)
    summary = scorer.channel.summaries[uid]
    assert summary["frames"] == len(shots) == summary["accounted"]
    return results


@pytest.mark.parametrize("extra, keys, needle", [
    ({"det2_image": IMAGE}, {}, "2 2D image keys"),
    ({"monitor": NUMBER}, {}, "2 candidate incident-flux (I0) keys"),
    ({"other_transmission": NUMBER}, {}, "2 candidate transmission keys"),
    ({}, {"i0": None}, "no incident-flux (I0) reading"),
    ({}, {"transmission": None}, "no transmission reading"),
], ids=["two-images", "two-monitors", "two-transmissions", "no-monitor", "no-transmission"])
def test_ambiguous_or_missing_keys_fail_every_frame_naming_candidates(scorer, extra, keys,
                                                                      needle):
    shots = [(FRAME, 1e9, 0.8, *([FRAME if "image" in k else 1.0 for k in extra]))] * 2
    results = _one(scorer, {}, shots, keys=keys, extra_keys=extra)
    assert [r.status for r in results] == ["failed", "failed"]
    assert all(needle in r.reason for r in results), results[0].reason
    for key in extra:
        assert key in results[0].reason  # the candidates are named


@pytest.mark.parametrize("i0, transmission, needle", [
    (1e9, 0.0, "transmission 0.0"),
    (1e9, -0.5, "transmission -0.5"),
    (1e9, math.nan, "transmission nan"),
    (1e9, 3.0, "transmission 3.0"),
    (0.0, 0.8, "I0 reading 0.0"),
    (math.nan, 0.8, "I0 reading nan"),
    (-5.0, 0.8, "I0 reading -5.0"),
], ids=["T=0", "T<0", "T=nan", "T>1.5", "I0=0", "I0=nan", "I0<0"])
def test_bad_readings_are_failed_records(scorer, i0, transmission, needle):
    results = _one(scorer, {"geometry": "Distance: 1\n"}, [(FRAME, i0, transmission)])
    assert results[0].status == "failed"
    assert needle in results[0].reason


def test_a_configured_key_that_is_absent_is_named(tiny_model):
    scorer = LiveScorer(tiny_model, monitor_key="scaler_ch2")
    try:
        results = _one(scorer, {}, [(FRAME, 1e9, 0.8)])
        assert "monitor_key='scaler_ch2'" in results[0].reason
        assert "beam_i0" in results[0].reason  # what the stream does have
    finally:
        scorer.close()


def test_configured_keys_resolve_an_otherwise_ambiguous_stream(tiny_model):
    scorer = LiveScorer(tiny_model, image_key="det_image", monitor_key="beam_i0")
    try:
        results = _one(scorer, {}, [(FRAME, 1e9, 0.8, FRAME, 1.0)],
                       extra_keys={"det2_image": IMAGE, "monitor": NUMBER})
        # past key resolution: this frame fails later, for want of geometry
        assert "geometry" in results[0].reason
    finally:
        scorer.close()


def test_streams_without_images_are_not_frames(scorer):
    uid, docs = run_docs({"composition": "50:50"}, [(1.0, 1e9, 0.8)],
                         keys={"image": "x"}, shape=[])
    feed(scorer, docs)
    assert scorer.flush(30)
    assert scorer.channel.results(uid) == []
    assert uid not in scorer.channel.summaries  # no analysis run for a run without images
