"""The live scorer fed real event-model documents of rendered frames (no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from event_model import compose_run

from pbi_bluesky.live import ANALYSIS_STREAM, LiveScorer
from pbi_bluesky.simulate import (
    PS_PMMA,
    apply_anomaly,
    expected_dark,
    nominal_state,
    render_empty_cell,
    render_frame,
)


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


def _run(callback, metadata, shots, *, image_key="det_image", shape=None):
    """Emit one raw run with the given (frame, i0, transmission) shots; returns its uid."""
    bundle = compose_run(metadata=metadata)
    callback("start", bundle.start_doc)
    shape = shape or list(shots[0][0].shape)
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={
            image_key: {"dtype": "array", "shape": shape, "source": "sim", "dtype_numpy": "<i4"},
            "beam_i0": {"dtype": "number", "shape": [], "source": "sim"},
            "beam_transmission": {"dtype": "number", "shape": [], "source": "sim"},
        },
    )
    callback("descriptor", desc.descriptor_doc)
    for seq, (frame, i0, trans) in enumerate(shots, start=1):
        data = {image_key: frame, "beam_i0": i0, "beam_transmission": trans}
        callback("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0),
                                             seq_num=seq, validate=False))
    callback("stop", bundle.compose_stop())
    return bundle.start_doc["uid"]


@pytest.fixture(scope="module")
def scored(tiny_model, instrument, poni_text):
    rng = np.random.default_rng(42)
    sink = Collector()
    scorer = LiveScorer(tiny_model, sinks=[sink], mask=instrument.mask,
                        dark=expected_dark(instrument), npt=instrument.npt)
    cell = render_empty_cell(instrument, rng)
    base_md = {"geometry": poni_text, "thickness_cm": 0.1}
    cell_uid = _run(scorer, {**base_md, "sample_type": "empty_cell", "sample": "cell"},
                    [(cell.frame, cell.monitor, cell.transmission)])
    uids = {"cell": cell_uid}
    shots = []
    for kind in ("normal", "contamination", "thickness_error"):
        state = nominal_state(PS_PMMA, "50:50", rng)
        if kind != "normal":
            state = apply_anomaly(state, kind, 0.8, rng)
        shot = render_frame(state, instrument, rng)
        shots.append((kind, shot))
        uids[kind] = _run(scorer, {**base_md, "composition": "50:50", "sample": kind},
                          [(shot.frame, shot.monitor, shot.transmission)])
    good = shots[0][1]
    nan_frame = good.frame.astype(np.float64)
    nan_frame[500, 100:110] = np.nan
    bad_shots = [
        (nan_frame, good.monitor, good.transmission),
        (good.frame[:100, :100], good.monitor, good.transmission),
        (good.frame, good.monitor, good.transmission),
    ]
    uids["bad"] = _run(scorer, {**base_md, "composition": "50:50", "sample": "bad"},
                       bad_shots, shape=list(good.frame.shape))
    uids["no_geometry"] = _run(scorer, {"composition": "50:50", "thickness_cm": 0.1},
                               [(good.frame, good.monitor, good.transmission)])
    uids["unknown_recipe"] = _run(scorer, {**base_md, "composition": "33:67"},
                                  [(good.frame, good.monitor, good.transmission)])
    assert scorer.flush(120)
    return scorer, sink, uids


def test_normal_and_anomalous_frames(scored):
    scorer, _, uids = scored
    assert not scorer.channel.results(uids["normal"])[0].is_anomaly
    for kind in ("contamination", "thickness_error"):
        result = scorer.channel.results(uids[kind])[0]
        assert result.status == "scored"
        assert result.is_anomaly, kind
        assert result.top_attribution


def test_every_frame_is_accounted_for_with_a_reason(scored):
    scorer, _, uids = scored
    results = scorer.channel.results(uids["bad"])
    assert [r.status for r in results] == ["failed", "failed", "scored"]
    assert "NaN" in results[0].reason
    assert "shape" in results[1].reason
    summary = scorer.channel.summaries[uids["bad"]]
    assert summary["frames"] == 3 == summary["accounted"]
    assert summary["failed"] == 2 and summary["scored"] == 1
    assert "geometry" in scorer.channel.results(uids["no_geometry"])[0].reason
    assert "unknown to the model" in scorer.channel.results(uids["unknown_recipe"])[0].reason


def test_analysis_runs_are_valid_documents(scored):
    _, sink, uids = scored
    starts = sink.of("start")
    assert {s["raw_uid"] for s in starts} == set(uids.values())
    for start in starts:
        assert start["pbi_analysis"] is True
        assert "model_sha256" in start or start.get("model_path") is None
        assert "composition" not in start  # raw metadata is not copied wholesale
    descriptors = sink.of("descriptor")
    assert all(d["name"] == ANALYSIS_STREAM for d in descriptors)
    stops = sink.of("stop")
    assert len(stops) == len(uids)
    by_raw = {s["raw_uid"]: s["uid"] for s in starts}
    stop_of = {s["run_start"]: s for s in stops}
    flagged = stop_of[by_raw[uids["contamination"]]]["pbi_summary"]
    assert flagged["verdict"] == "anomalous" and flagged["flagged"] == 1
    events = sink.of("event")
    assert len(events) == 1 + 3 + 3 + 1 + 1
    one = events[1]["data"]
    assert len(one["q"]) == len(one["intensity"]) == len(one["sigma"])
    json.loads(one["attributions"])


def test_a_raising_sink_never_escapes(tiny_model, instrument, poni_text):
    def broken(name, doc):
        raise RuntimeError("tiled is down")

    scorer = LiveScorer(tiny_model, sinks=[broken], mask=instrument.mask)
    rng = np.random.default_rng(1)
    shot = render_frame(nominal_state(PS_PMMA, "25:75", rng), instrument, rng)
    uid = _run(scorer, {"geometry": poni_text, "thickness_cm": 0.1, "composition": "25:75"},
               [(shot.frame, shot.monitor, shot.transmission)])
    scorer("event", {"descriptor": "nonsense"})  # malformed: swallowed, logged
    assert scorer.flush(60)
    assert scorer.channel.results(uid)[0].status == "scored"


def test_close_stops_the_worker(tiny_model):
    scorer = LiveScorer(tiny_model)
    assert scorer.close(10)
    assert not scorer._worker.is_alive()


def _stream_run(callback, metadata, h5_path, n_frames, shape):
    """A run whose frames are StreamResource/StreamDatum references into an HDF5 file,
    as ophyd-async flyers emit them."""
    bundle = compose_run(metadata=metadata)
    callback("start", bundle.start_doc)
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys={"det_image": {"dtype": "array", "shape": [1, *shape], "source": "sim",
                                 "dtype_numpy": "<i4", "external": "STREAM:"}},
    )
    callback("descriptor", desc.descriptor_doc)
    res = bundle.compose_stream_resource(
        mimetype="application/x-hdf5", uri=f"file://localhost{h5_path}", data_key="det_image",
        parameters={"dataset": "/entry/data/data"})
    callback("stream_resource", res.stream_resource_doc)
    callback("stream_datum", res.compose_stream_datum(
        indices={"start": 0, "stop": n_frames}, seq_nums={"start": 1, "stop": n_frames + 1},
        descriptor=desc.descriptor_doc))
    callback("stop", bundle.compose_stop())
    return bundle.start_doc["uid"]


def test_stream_resource_frames_are_read_from_hdf5_and_scored(tiny_model, instrument,
                                                              poni_text, tmp_path):
    import h5py

    rng = np.random.default_rng(11)
    normal = render_frame(nominal_state(PS_PMMA, "50:50", rng), instrument, rng)
    bad = render_frame(apply_anomaly(nominal_state(PS_PMMA, "50:50", rng), "contamination",
                                     0.9, rng), instrument, rng)
    h5_path = tmp_path / "flyer.h5"
    with h5py.File(h5_path, "w") as fh:
        fh.create_dataset("/entry/data/data", data=np.stack([normal.frame, bad.frame]))
    cell = render_empty_cell(instrument, rng)
    scorer = LiveScorer(tiny_model, mask=instrument.mask, dark=expected_dark(instrument),
                        npt=instrument.npt)
    try:
        md = {"geometry": poni_text, "thickness_cm": 0.1, "composition": "50:50"}
        _run(scorer, {"geometry": poni_text, "sample_type": "empty_cell"},
             [(cell.frame, cell.monitor, cell.transmission)])
        uid = _stream_run(scorer, {**md, "i0": normal.monitor,
                                   "transmission": normal.transmission},
                          h5_path, 2, list(normal.frame.shape))
        no_i0 = _stream_run(scorer, md, h5_path, 1, list(normal.frame.shape))
        assert scorer.flush(120)
        results = scorer.channel.results(uid)
        assert [r.status for r in results] == ["scored", "scored"]
        assert [r.raw_seq_num for r in results] == [1, 2]
        assert not results[0].is_anomaly and results[1].is_anomaly
        failed = scorer.channel.results(no_i0)
        assert failed[0].status == "failed" and "I0" in failed[0].reason
    finally:
        scorer.close()
