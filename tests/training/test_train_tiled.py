"""``pbi model train --tiled`` and ``pbi model score --tiled`` against a real Tiled server:
raw runs with inline frames, Resource/Datum HDF5 (stock ophyd's layout) and
StreamResource HDF5 (ophyd-async's), written by TiledWriter; broken runs refused with
their reason; the bundle records the selection and the runs it learnt from."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pbi_bluesky.testing.services import TiledServer
from tests.bus.runs import cell_run, datum_run, sample_md, shots, stream_run
from tests.live.docs import feed, run_docs

NORMAL = ("normal",)


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiled-train-frames")


@pytest.fixture(scope="module")
def server(tmp_path_factory, frames_dir):
    s = TiledServer(tmp_path_factory.mktemp("tiled-train"), readable=[frames_dir]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def archive(server, bus_instrument, bus_files, frames_dir):
    """An empty cell, normals of two recipes (inline, Resource/Datum, StreamResource), a
    run without thickness, a run without geometry and a run of another proposal."""
    from bluesky_tiled_plugins import TiledWriter

    from pbi_bluesky.store import runs_container

    runs = runs_container(server.client())
    writer = TiledWriter(runs)
    rng = np.random.default_rng(18)
    poni = bus_bluesky_poni = bus_files["poni_text"]
    md = {"proposal": "p18"}
    made = {"cell": cell_run(bus_instrument, rng, poni)}
    made["cell"][1][0][1].update(md)
    made["inline"] = run_docs(sample_md(poni, sample="a", **md),
                              shots(bus_instrument, rng, 10, kinds=NORMAL))
    made["datum"] = datum_run(sample_md(poni, sample="b", composition="25:75", **md),
                              shots(bus_instrument, rng, 10, recipe="25:75", kinds=NORMAL),
                              frames_dir)
    made["stream"] = stream_run(sample_md(poni, sample="c", composition="25:75", **md),
                                shots(bus_instrument, rng, 4, recipe="25:75", kinds=NORMAL),
                                frames_dir)
    made["inline2"] = run_docs(sample_md(poni, sample="d", **md),
                               shots(bus_instrument, rng, 4, kinds=NORMAL))
    no_thickness = sample_md(poni, sample="thin", **md)
    del no_thickness["thickness_cm"]
    made["no_thickness"] = run_docs(no_thickness, shots(bus_instrument, rng, 2, kinds=NORMAL))
    no_geometry = sample_md(bus_bluesky_poni, sample="lost", **md)
    del no_geometry["geometry"]
    made["no_geometry"] = run_docs(no_geometry, shots(bus_instrument, rng, 2, kinds=NORMAL))
    made["other"] = run_docs(sample_md(poni, sample="x", proposal="other"),
                             shots(bus_instrument, rng, 2, kinds=NORMAL))
    for _uid, docs in made.values():
        feed(writer, docs)
    return runs, {k: uid for k, (uid, _docs) in made.items()}


def _app():
    from pbi_bluesky.cli import app

    return app


def _common(server, bus_files, bus_instrument):
    return ["--tiled", server.uri, "--query", "proposal=p18", "--mask", str(bus_files["mask"]),
            "--dark", str(bus_files["dark"]), "--npt", str(bus_instrument.npt)]


def test_train_from_tiled_refuses_broken_runs_and_records_the_selection(
        server, archive, bus_files, bus_instrument, tmp_path, monkeypatch):
    runs, uids = archive
    out = tmp_path / "model"
    monkeypatch.setenv("TILED_API_KEY", server.api_key)  # tiled's own variable
    result = CliRunner().invoke(_app(), [
        "model", "train", "--out", str(out), *_common(server, bus_files, bus_instrument),
        "--qmin", "0.02", "--qmax", "0.06", "--epochs", "3", "--alpha", "0.1"])
    assert result.exit_code == 0, result.output
    assert f"refused run {uids['no_thickness']}" in result.output
    assert "no sample thickness" in result.output
    assert f"refused run {uids['no_geometry']}" in result.output
    assert "no geometry" in result.output
    assert "runs: 7 selected, 4 used, 2 refused, 1 empty cells; 28 normal frames" \
        in result.output
    # no beamline file, so no data roots: every frame through Tiled, and the summary says so
    assert "frames read: 0 from their files under the data roots" in result.output
    assert "no data roots configured" in result.output
    doc = json.loads((out / "model.json").read_text())
    assert doc["training_source"] == {"tiled": server.uri, "query": ["proposal=p18"],
                                      "since": None, "until": None}
    assert doc["training_runs"] == [uids[k] for k in ("inline", "datum", "stream", "inline2")]
    assert doc["recipes"] == ["25:75", "50:50"] or sorted(doc["recipes"]) == ["25:75", "50:50"]
    summary = doc["training_summary"]
    assert summary["per_recipe"] == {"25:75": 14, "50:50": 14}
    assert {r["uid"] for r in summary["refused_runs"]} == {uids["no_thickness"],
                                                          uids["no_geometry"]}
    assert server.api_key not in (out / "model.json").read_text()
    # the training report a person reads before promoting
    report = json.loads((out / "report.json").read_text())
    assert report["frames_per_recipe"] == {"25:75": 14, "50:50": 14}
    assert {r["uid"] for r in report["refused_runs"]} == {uids["no_thickness"],
                                                         uids["no_geometry"]}
    assert set(report["curves"]) == {"25:75", "50:50"}
    assert report["embedding"]["dimensions"] == doc["network"]["embedding_dim"]
    assert report["calibration"]["n_calibration"] > 0
    fpr = report["false_positive_rate"]
    assert fpr and all(0 <= r["expected_fpr"] <= 0.1 <= r["fpr_upper_95"] + 0.1 for r in fpr)
    page = (out / "report.html").read_text()
    assert "no sample thickness" in page and "embedding.png" in page
    for name in ("curves.png", "embedding.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the candidate judges the same runs, frame by frame, writing nothing back
    before = sorted(runs)
    scored = CliRunner().invoke(_app(), [
        "model", "score", "--model", str(out), *_common(server, bus_files, bus_instrument),
        "--api-key", server.api_key, "--json"])
    assert sorted(runs) == before
    lines = [json.loads(line) for line in scored.output.splitlines() if line.startswith("{")]
    by_run: dict[str, list] = {}
    for line in lines:
        by_run.setdefault(line["raw_uid"], []).append(line)
    assert [r["seq_num"] for r in by_run[uids["inline"]]] == list(range(1, 11))
    good = [r for k in ("inline", "datum", "stream", "inline2") for r in by_run[uids[k]]]
    assert len(good) == 28 and all(r["status"] == "scored" for r in good)
    assert all(set(r) >= {"sample", "composition", "score", "p_value", "is_anomaly"}
               for r in good)
    assert by_run[uids["datum"]][0]["composition"] == "25:75"
    assert "no sample thickness" in by_run[uids["no_thickness"]][0]["error"]
    assert scored.exit_code == 1  # frames that could not be scored: said, and the exit code


def test_train_from_tiled_refuses_a_run_that_does_not_cover_the_grid(
        server, archive, bus_files, bus_instrument, tmp_path):
    out = tmp_path / "model"
    result = CliRunner().invoke(_app(), [
        "model", "train", "--out", str(out), *_common(server, bus_files, bus_instrument),
        "--api-key", server.api_key, "--qmin", "0.005", "--qmax", "0.06", "--epochs", "1"])
    assert result.exit_code == 2, result.output
    assert "does not cover the q grid 0.005..0.06" in result.output
    assert "no usable normal frames" in result.output
    assert not (out / "model.json").exists()


def test_frames_by_reference_are_read_from_their_files_under_the_data_roots(
        server, archive, bus_files, bus_instrument, frames_dir, tmp_path):
    """Resource/Datum and StreamResource frames come from their HDF5 files (Tiled's data
    source names them) when they lie under the data roots, giving the profiles Tiled's
    array endpoint gives; inline frames and files outside the roots go through Tiled."""
    from pbi_bluesky.scoring.engine import FrameScorer
    from pbi_bluesky.training.tiled import collect_normals

    runs, uids = archive
    kwargs = {"mask": np.load(bus_files["mask"]), "dark": np.load(bus_files["dark"]),
              "npt": bus_instrument.npt}
    picked = {}
    for name, roots in (("tiled", ()), ("files", (str(frames_dir),)),
                        ("elsewhere", (str(tmp_path),))):
        scorer = FrameScorer(reduce_only=True, data_roots=roots, **kwargs)
        picked[name] = collect_normals(runs, scorer, query=("proposal=p18",), chunk=3)
    via_tiled, via_files, elsewhere = picked["tiled"], picked["files"], picked["elsewhere"]
    # 10 datum + 4 stream frames by reference; inline frames (incl. the cell and the two
    # refused runs' first frames) always through Tiled
    assert via_files.reads.from_files == 14
    assert via_tiled.reads.from_files == 0 and elsewhere.reads.from_files == 0
    assert via_tiled.reads.through_tiled == via_files.reads.through_tiled + 14
    assert any(k.startswith("no data roots") for k in via_tiled.reads.why_tiled)
    assert any(k.startswith("file not under a data root") for k in elsewhere.reads.why_tiled)
    assert any(k.startswith("inline data") or "not HDF5" in k
               for k in via_files.reads.why_tiled)
    assert via_files.summary()["reads"]["from_files"] == 14
    assert via_files.run_uids == via_tiled.run_uids
    assert len(via_files.profiles) == len(via_tiled.profiles) == 28
    for a, b in zip(via_files.profiles, via_tiled.profiles, strict=True):
        np.testing.assert_allclose(a.intensity, b.intensity, rtol=1e-6, atol=0)


def test_a_stream_is_read_in_one_listing_and_one_request_per_table(
        server, archive, bus_files, bus_instrument):
    """The streams' scalars (I0, transmission, seq_num) come from one read of their table,
    the image array with its data sources from one listing of the stream's parts: the same
    values and file as reading key by key, in a fixed handful of requests."""
    from pbi_bluesky.scoring.engine import FrameScorer
    from pbi_bluesky.scoring.tiled import _key_by_key, run_streams, stream_columns

    runs, uids = archive
    scorer = FrameScorer(reduce_only=True, npt=bus_instrument.npt)
    http = runs.context.http_client
    sent: list[str] = []
    hooks = dict(http.event_hooks)
    http.event_hooks = {**hooks, "request": [*hooks.get("request", []),
                                             lambda request: sent.append(request.url.path)]}
    try:
        for kind, table_reads in (("inline", 1), ("datum", 1), ("stream", 2)):
            raw = runs[uids[kind]]
            sent.clear()
            streams = run_streams(raw)
            assert len(sent) == 1, sent  # the run's streams listed once, with metadata
            assert [name for name, _node in streams] == sorted(raw)
            (stream,) = [node for _name, node in streams]
            roles = scorer.roles({"data_keys": dict(stream.metadata["data_keys"])})
            keys = [k for k in (roles.monitor, roles.transmission) if k]
            sent.clear()
            fast = stream_columns(stream, roles.image, keys)
            # one listing of the parts, then the table's columns in one read (the ophyd-async
            # run keeps I0 and transmission in arrays of their own: one read each)
            assert len(sent) == 1 + table_reads, (kind, sent)
            slow = _key_by_key(stream, roles.image, keys)
            assert len(sent) > 2 + table_reads, (kind, sent)  # what it replaced
            assert fast.seq_nums == slow.seq_nums
            if kind != "stream":
                assert fast.seq_nums == list(range(1, len(fast.seq_nums) + 1))
            assert set(fast.scalars) == set(slow.scalars) == set(keys)
            for key in keys:
                np.testing.assert_array_equal(fast.scalars[key], slow.scalars[key])
                assert len(fast.scalars[key]) == fast.image.shape[0]
            assert fast.image.shape == slow.image.shape
            assert [s.assets[0].data_uri for s in fast.image.data_sources()] == \
                [s.assets[0].data_uri for s in slow.image.data_sources()]
    finally:
        http.event_hooks = hooks


def test_runs_are_opened_one_ahead_and_a_failure_reaches_its_own_run(
        server, archive, bus_instrument, frames_dir):
    """RunOpener opens the next run on its thread while the caller works on this one (never
    more than one ahead), gives each run its own streams, and raises a run's failure when
    that run is asked for, not earlier and not for its neighbours."""
    from pbi_bluesky.scoring.engine import FrameScorer
    from pbi_bluesky.scoring.tiled import OpenedRun, RunOpener

    runs, uids = archive
    scorer = FrameScorer(reduce_only=True, npt=bus_instrument.npt, data_roots=(str(frames_dir),))
    order = [uids["inline"], "no-such-run", uids["datum"], uids["inline2"]]
    with RunOpener(scorer, runs, order) as opener:
        assert list(opener._ahead) == [uids["inline"]]  # the first opens at once
        first = opener.get(uids["inline"])
        assert list(opener._ahead) == ["no-such-run"]  # one ahead, no more
        assert isinstance(first, OpenedRun) and first.uid == uids["inline"]
        assert [s.seq_nums for s in first.streams] == [list(range(1, 11))]
        with pytest.raises(KeyError):
            opener.get("no-such-run")
        datum = opener.get(uids["datum"])
        assert datum.start["sample"] == "b" and len(datum.streams[0].seq_nums) == 10
        assert not isinstance(datum.streams[0].source, str)  # the HDF5 file was found
        last = opener.get(uids["inline2"])  # asked past a skipped run: opened when asked
        assert last.start["sample"] == "d" and len(last.streams[0].seq_nums) == 4
        assert not opener._ahead
