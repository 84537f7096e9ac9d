"""The live scorer fed real event-model documents of rendered frames (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pbi_bluesky.live import ANALYSIS_STREAM, ATTRIBUTION_STREAM, LiveScorer
from pbi_bluesky.simulate import (
    PS_PMMA,
    apply_anomaly,
    expected_dark,
    nominal_state,
    render_empty_cell,
    render_frame,
)
from tests.live.docs import feed, run_docs, stream_run_docs


@pytest.fixture(scope="module")
def poni_text(instrument, tmp_path_factory):
    path = tmp_path_factory.mktemp("poni") / "geometry.poni"
    instrument.write_poni(path)
    return path.read_text()


class Collector:
    def __init__(self):
        self.docs = []

    def __call__(self, name, doc):
        self.docs.append((name, doc))

    def of(self, name):
        return [d for n, d in self.docs if n == name]


def _scorer(model, instrument, **kwargs):
    return LiveScorer(model, mask=instrument.mask, dark=expected_dark(instrument),
                      npt=instrument.npt, **kwargs)


@pytest.fixture(scope="module")
def scored(tiny_model, instrument, poni_text):
    rng = np.random.default_rng(42)
    sink = Collector()
    scorer = _scorer(tiny_model, instrument, sinks=[sink])
    cell = render_empty_cell(instrument, rng)
    base_md = {"geometry": poni_text, "thickness_cm": 0.1}
    uids = {}
    uids["cell"], docs = run_docs({**base_md, "sample_type": "empty_cell", "sample": "cell"},
                                  [(cell.frame, cell.monitor, cell.transmission)])
    feed(scorer, docs)
    shots = []
    for kind in ("normal", "contamination", "thickness_error"):
        state = nominal_state(PS_PMMA, "50:50", rng)
        if kind != "normal":
            state = apply_anomaly(state, kind, 0.8, rng)
        shot = render_frame(state, instrument, rng)
        shots.append((kind, shot))
        uids[kind], docs = run_docs({**base_md, "composition": "50:50", "sample": kind},
                                    [(shot.frame, shot.monitor, shot.transmission)])
        feed(scorer, docs)
    good = shots[0][1]
    nan_frame = good.frame.astype(np.float64)
    nan_frame[500, 100:110] = np.nan
    bad_shots = [
        (nan_frame, good.monitor, good.transmission),
        (good.frame[:100, :100], good.monitor, good.transmission),
        (good.frame, good.monitor, good.transmission),
        (good.frame, good.monitor, 0.0),
    ]
    uids["bad"], docs = run_docs({**base_md, "composition": "50:50", "sample": "bad"},
                                 bad_shots, shape=list(good.frame.shape))
    feed(scorer, docs)
    uids["no_geometry"], docs = run_docs({"composition": "50:50", "thickness_cm": 0.1},
                                         [(good.frame, good.monitor, good.transmission)])
    feed(scorer, docs)
    uids["unknown_recipe"], docs = run_docs({**base_md, "composition": "33:67"},
                                            [(good.frame, good.monitor, good.transmission)])
    feed(scorer, docs)
    assert scorer.flush(120)
    yield scorer, sink, uids
    scorer.close()


def test_normal_and_anomalous_frames(scored):
    scorer, _, uids = scored
    assert not scorer.channel.results(uids["normal"])[0].is_anomaly
    for kind in ("contamination", "thickness_error"):
        result = scorer.channel.results(uids[kind])[0]
        assert result.status == "scored"
        assert result.is_anomaly, kind
        assert result.top_attribution  # filled in by the attribution thread before finish


def test_every_frame_is_accounted_for_with_a_reason(scored):
    scorer, _, uids = scored
    results = sorted(scorer.channel.results(uids["bad"]), key=lambda r: r.raw_seq_num)
    assert [r.status for r in results] == ["failed", "failed", "scored", "failed"]
    assert "NaN" in results[0].reason
    assert "shape" in results[1].reason
    assert "transmission 0.0" in results[3].reason  # not silently 1.0
    summary = scorer.channel.summaries[uids["bad"]]
    assert summary["frames"] == 4 == summary["accounted"]
    assert summary["failed"] == 3 and summary["scored"] == 1
    assert "geometry" in scorer.channel.results(uids["no_geometry"])[0].reason
    assert "unknown to the model" in scorer.channel.results(uids["unknown_recipe"])[0].reason


def test_analysis_runs_are_valid_documents(scored):
    _, sink, uids = scored
    starts = sink.of("start")
    assert {s["raw_uid"] for s in starts} == set(uids.values())
    for start in starts:
        assert start["pbi_analysis"] is True
        assert "composition" not in start  # raw metadata is not copied wholesale
        assert "reduction" in start and "threshold" in start
    names = sorted(d["name"] for d in sink.of("descriptor"))
    assert names == sorted([ANALYSIS_STREAM, ATTRIBUTION_STREAM] * len(uids))
    stops = sink.of("stop")
    assert len(stops) == len(uids)
    by_raw = {s["raw_uid"]: s["uid"] for s in starts}
    stop_of = {s["run_start"]: s for s in stops}
    flagged = stop_of[by_raw[uids["contamination"]]]["pbi_summary"]
    assert flagged["verdict"] == "anomalous" and flagged["flagged"] == 1
    assert flagged["explained"] == 1
    verdict_desc = {d["uid"] for d in sink.of("descriptor") if d["name"] == ANALYSIS_STREAM}
    events = [e for e in sink.of("event") if e["descriptor"] in verdict_desc]
    assert len(events) == 1 + 3 + 4 + 1 + 1
    one = events[1]["data"]
    assert len(one["q"]) == len(one["intensity"]) == len(one["sigma"])
    explained = [e for e in sink.of("event") if e["descriptor"] not in verdict_desc]
    assert explained and all(e["data"]["status"] == "explained" for e in explained)
    assert json.loads(explained[0]["data"]["attributions"])
    # every analysis event comes before its run's stop document
    order = [(n, d.get("descriptor") or d.get("run_start") or d["uid"]) for n, d in sink.docs]
    assert order[-1][0] == "stop"


def test_a_raising_sink_never_escapes(tiny_model, instrument, poni_text):
    def broken(name, doc):
        raise RuntimeError("tiled is down")

    scorer = _scorer(tiny_model, instrument, sinks=[broken])
    rng = np.random.default_rng(1)
    shot = render_frame(nominal_state(PS_PMMA, "25:75", rng), instrument, rng)
    uid, docs = run_docs({"geometry": poni_text, "thickness_cm": 0.1, "composition": "25:75"},
                         [(shot.frame, shot.monitor, shot.transmission)])
    feed(scorer, docs)
    scorer("event", {"descriptor": "nonsense"})  # malformed: swallowed, logged
    scorer("descriptor", {"garbage": True})
    assert scorer.flush(60)
    assert scorer.channel.results(uid)[0].status == "scored"
    scorer.close()


def test_close_stops_both_threads(tiny_model):
    scorer = LiveScorer(tiny_model)
    assert scorer.close(10)
    assert not scorer._worker.is_alive()


def test_a_model_that_can_never_flag_is_refused(tiny_model):
    import copy

    from pbi_bluesky.models import BundleError

    never = copy.copy(tiny_model)
    never.alpha = 1e-6  # below the smallest p-value its calibration normals can give
    with pytest.raises(BundleError, match="calibration"):
        LiveScorer(never)


def test_stream_frames_with_ndattribute_readings(tiny_model, instrument, poni_text, tmp_path):
    """Frames and I0/transmission as ophyd-async writes them: datasets of one HDF5 file."""
    import h5py

    rng = np.random.default_rng(11)
    normal = render_frame(nominal_state(PS_PMMA, "50:50", rng), instrument, rng)
    bad = render_frame(apply_anomaly(nominal_state(PS_PMMA, "50:50", rng), "contamination",
                                     0.9, rng), instrument, rng)
    h5_path = tmp_path / "flyer.h5"
    with h5py.File(h5_path, "w") as fh:
        fh.create_dataset("/entry/data/data", data=np.stack([normal.frame, bad.frame]))
        attrs = fh.create_group("/entry/instrument/NDAttributes")
        attrs["i0"] = np.array([normal.monitor, bad.monitor])
        attrs["transmission"] = np.array([normal.transmission, bad.transmission])
    cell = render_empty_cell(instrument, rng)
    scorer = _scorer(tiny_model, instrument, data_roots=[tmp_path])
    try:
        md = {"geometry": poni_text, "thickness_cm": 0.1, "composition": "50:50"}
        _, docs = run_docs({"geometry": poni_text, "sample_type": "empty_cell"},
                           [(cell.frame, cell.monitor, cell.transmission)])
        feed(scorer, docs)
        uri = f"file://localhost{h5_path}"
        attributes = {"i0": "/entry/instrument/NDAttributes/i0",
                      "transmission": "/entry/instrument/NDAttributes/transmission"}
        uid, docs = stream_run_docs(md, uri, 2, list(normal.frame.shape),
                                    attributes=attributes)
        feed(scorer, docs)
        no_i0, docs = stream_run_docs(md, uri, 1, list(normal.frame.shape))
        feed(scorer, docs)
        start_i0, docs = stream_run_docs({**md, "i0": normal.monitor,
                                          "transmission": normal.transmission},
                                         uri, 1, list(normal.frame.shape))
        feed(scorer, docs)
        assert scorer.flush(120)
        results = sorted(scorer.channel.results(uid), key=lambda r: r.raw_seq_num)
        assert [r.status for r in results] == ["scored", "scored"], [r.reason for r in results]
        assert not results[0].is_anomaly and results[1].is_anomaly
        failed = scorer.channel.results(no_i0)[0]
        assert failed.status == "failed" and "I0" in failed.reason
        # the start-document stop-gap is off unless asked for
        assert scorer.channel.results(start_i0)[0].status == "failed"
    finally:
        scorer.close()
    opt_in = _scorer(tiny_model, instrument, data_roots=[tmp_path], monitor_from_start=True)
    try:
        feed(opt_in, docs)
        assert opt_in.flush(60)
        result = opt_in.channel.results(start_i0)[0]
        assert result.status == "scored", result.reason
    finally:
        opt_in.close()


def test_a_live_scorer_from_the_settings_takes_the_scorer_section(tiny_model):
    """``from_settings`` (``from_config`` is its former name) takes queue, overflow, put
    timeout and batch from the ``scorer`` section, and the image key of the file's
    ``device_api`` unless a mode is given."""
    from pbi_bluesky.config import load_config

    sim = Path(__file__).resolve().parents[2] / "profiles" / "profile_saxs" / "beamline.yaml"
    cfg = load_config(sim).with_overrides(
        device_api="async", scorer={"queue_size": 5, "overflow": "shed", "batch_size": 3,
                                    "put_timeout_s": 0.25})
    scorer = LiveScorer.from_settings(cfg, model=tiny_model)
    try:
        assert scorer.batch_size == 3 and scorer.inbox.frame_limit == 5
        assert scorer.inbox.overflow == "shed" and scorer.inbox.put_timeout == 0.25
        assert scorer.core.keys["image_key"] == "saxs"
    finally:
        scorer.close(5)
    ophyd = LiveScorer.from_config(cfg, mode="ophyd", model=tiny_model)
    try:
        assert ophyd.core.keys["image_key"] == "saxs_image"
    finally:
        ophyd.close(5)
