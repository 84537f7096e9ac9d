"""The frame core shared by the live scorer and the bus workers: batch-invariant scores."""

from __future__ import annotations

import numpy as np
import pytest

from pbi_bluesky.live.core import FrameInput, FrameScorer
from pbi_bluesky.live.frames import AssetRegistry
from pbi_bluesky.live.streams import FrameParts, Roles
from pbi_bluesky.simulate import (
    PS_PMMA,
    apply_anomaly,
    expected_dark,
    nominal_state,
    render_frame,
)


@pytest.fixture(scope="module")
def frames(instrument, tmp_path_factory):
    path = tmp_path_factory.mktemp("poni") / "geometry.poni"
    instrument.write_poni(path)
    start = {"uid": "raw", "geometry": path.read_text(), "thickness_cm": 0.1,
             "composition": "50:50"}
    rng = np.random.default_rng(31)
    roles = Roles("det_image", "beam_i0", "beam_transmission")
    out = []
    for seq in range(1, 8):
        state = nominal_state(PS_PMMA, "50:50", rng)
        if seq % 3 == 0:
            state = apply_anomaly(state, "contamination", 0.8, rng)
        shot = render_frame(state, instrument, rng)
        parts = FrameParts(seq, {"det_image": ("inline", shot.frame),
                                 "beam_i0": ("inline", shot.monitor),
                                 "beam_transmission": ("inline", shot.transmission)})
        out.append(FrameInput("raw", start, roles, parts, AssetRegistry(), background=None))
    return out


def test_a_frame_scores_the_same_in_any_batch(tiny_model, instrument, frames):
    """The same frame, scored alone or beside others, gets the same score to 1e-12 (the
    model is padded to a fixed minimum batch; without it float32 kernels differ ~1e-6)."""
    core = FrameScorer(tiny_model, mask=instrument.mask, dark=expected_dark(instrument),
                       npt=instrument.npt)
    whole = {o.result.raw_seq_num: o.result for o in core.process(frames)}
    alone = {}
    for size in (1, 2, 3):
        for i in range(0, len(frames), size):
            for o in core.process(frames[i:i + size]):
                alone.setdefault(size, {})[o.result.raw_seq_num] = o.result
    assert {r.status for r in whole.values()} == {"scored"}
    for size, results in alone.items():
        for seq, r in results.items():
            assert abs(r.score - whole[seq].score) <= 1e-12, (size, seq)
            assert r.p_value == whole[seq].p_value and r.is_anomaly == whole[seq].is_anomaly


def test_a_bad_frame_fails_alone_with_its_reason(tiny_model, instrument, frames):
    core = FrameScorer(tiny_model, mask=instrument.mask, dark=expected_dark(instrument),
                       npt=instrument.npt)
    bad = FrameInput(frames[0].raw_uid, frames[0].start, frames[0].roles,
                     FrameParts(99, {**frames[0].parts.values,
                                     "beam_transmission": ("refused", "too big for the bus")}),
                     frames[0].assets, background=None)
    outcomes = core.process([frames[0], bad, frames[1]])
    assert [o.result.status for o in outcomes] == ["scored", "failed", "scored"]
    assert "too big for the bus" in outcomes[1].result.reason


def test_analysis_documents_follow_the_event_model_schema(tiny_model, instrument, frames):
    """Events are composed without event_model's per-event jsonschema check (8 ms of CPU
    per frame); the layout is checked here instead, with event_model's own validators."""
    from event_model import DocumentNames, schema_validators

    core = FrameScorer(tiny_model, mask=instrument.mask, dark=expected_dark(instrument),
                       npt=instrument.npt)
    outcomes = core.process(frames[:3])
    run = core.begin_analysis(frames[0].start)
    docs = [("start", run.bundle.start_doc), ("descriptor", run.verdicts.descriptor_doc),
            ("descriptor", run.explanations.descriptor_doc)]
    for o in outcomes:
        docs.append(("event", run.record(o.result, o.resampled)))
    docs.append(("event", run.record(core.base_result(frames[0], "failed", "why"), None)))
    docs.append(("event", run.explained(outcomes[0].result, "explained",
                                        {"peak": {"value": 1.0, "z": 2.0}})))
    docs.append(("stop", run.stop_doc(4, {"exit_status": "success"}, 0)))
    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(
            {k: v for k, v in doc.items() if k != "pbi_summary"})
    assert docs[-1][1]["pbi_summary"]["accounted"] == 4
