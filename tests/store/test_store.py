"""Embedded Tiled catalog, spool, and flagged-run queries with real TiledWriter writes."""

from __future__ import annotations

import numpy as np
import pytest
from event_model import compose_run

from pbi_bluesky.store import (
    SpoolSink,
    analysis_of,
    embedded_client,
    flagged_runs,
    runs_container,
)


@pytest.fixture()
def runs(tmp_path):
    return runs_container(embedded_client(tmp_path / "tiled"))


def _analysis_run(raw_uid, composition, flagged, max_score, sample):
    bundle = compose_run(metadata={"pbi_analysis": True, "raw_uid": raw_uid,
                                   "expected_composition": composition, "sample": sample})
    desc = bundle.compose_descriptor(name="pbi_anomaly", data_keys={
        "score": {"dtype": "number", "shape": [], "source": "pbi"},
        "is_anomaly": {"dtype": "boolean", "shape": [], "source": "pbi"},
        "status": {"dtype": "string", "shape": [], "source": "pbi"},
        "intensity": {"dtype": "array", "shape": [16], "source": "pbi", "dtype_numpy": "<f8"},
    })
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    data = {"score": max_score, "is_anomaly": bool(flagged), "status": "scored",
            "intensity": np.linspace(0, 1, 16)}
    docs.append(("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0),
                                             seq_num=1)))
    stop = bundle.compose_stop()
    docs.append(("stop", {**stop, "pbi_summary": {"flagged": flagged, "max_score": max_score,
                                                   "verdict": "anomalous" if flagged else
                                                   "normal", "frames": 1}}))
    return docs


def test_flagged_runs_query(runs, tmp_path):
    from bluesky_tiled_plugins import TiledWriter

    sink = SpoolSink(tmp_path / "spool", lambda: TiledWriter(runs))
    for raw, comp, flagged, score, sample in [
        ("raw-a", "25:75", 1, 4.0, "A"), ("raw-b", "25:75", 0, 0.1, "B"),
        ("raw-c", "50:50", 1, 9.0, "C"),
    ]:
        for name, doc in _analysis_run(raw, comp, flagged, score, sample):
            sink(name, doc)
    assert sink.flush(30)
    assert sink.pending() == []
    assert [r["raw_uid"] for r in flagged_runs(runs)] == ["raw-a", "raw-c"]
    assert [r["raw_uid"] for r in flagged_runs(runs, composition="25:75")] == ["raw-a"]
    assert [r["raw_uid"] for r in flagged_runs(runs, min_score=5.0)] == ["raw-c"]
    assert flagged_runs(runs, since="2100-01-01T00:00:00") == []
    run = analysis_of(runs, "raw-b")
    assert run.metadata["stop"]["pbi_summary"]["verdict"] == "normal"
    table = run["pbi_anomaly"].read()
    assert len(table["score"]) == 1
    # `pbi flagged` opens the catalog with plain containers (no BlueskyRun clients): the
    # same queries give the same rows
    from tiled.client.container import Container

    light = runs_container(embedded_client(tmp_path / "tiled", metadata_only=True))
    assert type(light) is Container and type(runs) is not Container
    for kwargs in ({}, {"composition": "25:75"}, {"min_score": 5.0}):
        assert flagged_runs(light, **kwargs) == flagged_runs(runs, **kwargs)
    assert analysis_of(light, "raw-b").metadata == run.metadata


def test_spool_keeps_everything_while_the_writer_is_down_then_replays(runs, tmp_path):
    from bluesky_tiled_plugins import TiledWriter

    state = {"up": False}

    def factory():
        if not state["up"]:
            raise ConnectionError("tiled is down")
        return TiledWriter(runs)

    def delete_partial(uid):
        if uid in runs:
            runs[uid].delete(recursive=True, external_only=False)

    sink = SpoolSink(tmp_path / "spool", factory, delete_partial=delete_partial,
                     auto_replay=False)
    docs = _analysis_run("raw-z", "75:25", 1, 3.0, "Z")
    for name, doc in docs:
        sink(name, doc)
    sink.flush(10)
    uid = docs[0][1]["uid"]
    assert sink.pending() == [uid]
    assert flagged_runs(runs) == []
    state["up"] = True
    assert {u: str(o) for u, o in sink.replay().items()} == {uid: "written"}
    assert sink.pending() == []
    assert [r["raw_uid"] for r in flagged_runs(runs)] == ["raw-z"]


def test_wire_encoding_is_lossless_and_refuses_objects():
    from pbi_bluesky.codec import EncodeError, decode_document, encode_document

    frame = np.arange(12, dtype=np.int32).reshape(3, 4)
    name, doc = decode_document(encode_document(
        "event", {"data": {"img": frame, "x": np.float64(2.5)}}))
    assert name == "event"
    np.testing.assert_array_equal(doc["data"]["img"], frame)
    assert doc["data"]["img"].dtype == np.int32
    assert doc["data"]["x"] == 2.5
    with pytest.raises(EncodeError):
        encode_document("event", {"data": {"x": np.array([object()], dtype=object)}})
