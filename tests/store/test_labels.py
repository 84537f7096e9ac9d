"""Labels (`pbi catalog label`, ``pbi_label`` records) and the ranking p-value estimate in
`pbi catalog flagged`, on the embedded catalog and on a real Tiled server."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from event_model import compose_run
from typer.testing import CliRunner

from pbi_bluesky.cli import app
from pbi_bluesky.infra.ports import free_port
from pbi_bluesky.models.conformal import Calibration, tail_fit, tail_p_estimate
from pbi_bluesky.store import (
    embedded_client,
    flagged_runs,
    label_run,
    labels_of,
    open_runs,
    runs_container,
)
from pbi_bluesky.store.labels import LabelError

CAL_SCORES = np.random.default_rng(0).exponential(1.0, 199)  # n=199: floor p = 0.005


def _write(runs, metadata, stop_extra=None, uid=None):
    from bluesky_tiled_plugins import TiledWriter

    bundle = compose_run(metadata=metadata, **({"uid": uid} if uid else {}))
    writer = TiledWriter(runs)
    writer("start", bundle.start_doc)
    writer("stop", {**bundle.compose_stop(), **(stop_extra or {})})
    return bundle.start_doc["uid"]


def _analysis(runs, raw, score, flagged=1, recipe="PS-PMMA 50:50"):
    cal = Calibration("split", True, CAL_SCORES, np.zeros(199, int), np.zeros(199, int))
    summary = cal.summary(0.01, [recipe])
    _write(runs, {"pbi_analysis": True, "raw_uid": raw, "sample": raw, "slot": 1,
                  "expected_composition": recipe, "model_sha256": "abc123def",
                  "model_path": "/models/m1", "calibration": summary},
           {"pbi_summary": {"flagged": flagged, "max_score": score, "verdict": "anomalous"
                            if flagged else "normal", "frames": 2, "min_p_value": 0.005}})


def _fill(runs):
    # two flags far beyond the calibration floor, one just flagged, one normal, one raw only
    _analysis(runs, "raw-a", 12.0)
    _analysis(runs, "raw-b", 9.0)
    _analysis(runs, "raw-c", float(np.sort(CAL_SCORES)[-1]) + 0.01)
    _analysis(runs, "raw-normal", 0.5, flagged=0)
    _write(runs, {"plan_name": "count"}, uid="raw-only")


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labels") / "cat"
    _fill(runs_container(embedded_client(folder)))
    return folder


@pytest.fixture()
def catalog(filled, tmp_path):
    # a copy per test (labels change it); cheaper than a new catalog (its init takes ~5 s)
    folder = tmp_path / "cat"
    shutil.copytree(filled, folder)
    return runs_container(embedded_client(folder)), folder


def test_tail_estimate_ranks_flags_beyond_the_floor(catalog):
    runs, _ = catalog
    fit = tail_fit(CAL_SCORES)
    assert fit["k"] == 40 and fit["n"] == 199 and fit["beta"] > 0
    rows = {r["raw_uid"]: r for r in flagged_runs(runs)}
    a, b, c = (rows[k]["p_estimate"] for k in ("raw-a", "raw-b", "raw-c"))
    # the exact p-value is the same floor for all three; the estimate ranks them
    assert {rows[k]["p_value"] for k in ("raw-a", "raw-b", "raw-c")} == {0.005}
    assert a < b < c < 1 / 200 * 2, (a, b, c)
    assert a == pytest.approx(tail_p_estimate(fit, 12.0))
    assert tail_p_estimate(fit, fit["u"] - 1) is None
    assert tail_fit(np.ones(50)) is None and tail_fit(np.arange(4.0)) is None


def test_label_records_filters_and_history(catalog):
    runs, folder = catalog
    record = label_run(runs, "raw-a", "false-alarm", note="beam wobble", by="ana")
    assert record["analysis_uid"] and record["model_sha256"] == "abc123def"
    label_run(runs, "raw-b", "defect", by="ben")
    # relabelled: the newest label counts, the first one stays in the catalog
    label_run(runs, "raw-b", "false-alarm", by="ben", note="second look")
    assert labels_of(runs)["raw-b"]["note"] == "second look"
    rows = {r["raw_uid"]: r for r in flagged_runs(runs)}
    assert rows["raw-a"]["label"] == "false-alarm" and rows["raw-a"]["label_by"] == "ana"
    assert rows["raw-c"]["label"] is None
    assert [r["raw_uid"] for r in flagged_runs(runs, label="false-alarm")] == ["raw-a", "raw-b"]
    assert [r["raw_uid"] for r in flagged_runs(runs, label="none")] == ["raw-c"]
    assert flagged_runs(runs, label="defect") == []
    assert len(flagged_runs(runs, model="abc1")) == 3 and flagged_runs(runs, model="ff") == []
    # the analysis runs are untouched and label records are not analyses
    assert len(flagged_runs(runs)) == 3
    with pytest.raises(LabelError, match="one of"):
        label_run(runs, "raw-a", "maybe")


def test_cli_label_and_flagged(catalog):
    _, folder = catalog
    cli = CliRunner()
    out = cli.invoke(app, ["catalog", "label", "raw-c", "--defect", "--note", "crack",
                           "--by", "cy", "--data-dir", str(folder), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["label"] == "defect"
    res = cli.invoke(app, ["catalog", "flagged", "--data-dir", str(folder), "--json",
                           "--label", "defect"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)
    assert row["raw_uid"] == "raw-c" and row["label_note"] == "crack" and row["p_estimate"]
    text = cli.invoke(app, ["catalog", "flagged", "--data-dir", str(folder)])
    assert "label=defect" in text.output and "p_est~" in text.output
    # bad input: each a clear message and a non-zero exit
    cases = {
        ("raw-nope", "--false-alarm"): "no run 'raw-nope'",
        ("raw-normal", "--false-alarm"): "never flagged",
        ("raw-only", "--false-alarm"): "never flagged",
        ("raw-a", "--false-alarm", "--defect"): "exactly one",
        ("raw-a",): "exactly one",
    }
    for args, message in cases.items():
        bad = cli.invoke(app, ["catalog", "label", *args, "--data-dir", str(folder)])
        assert bad.exit_code != 0 and message in bad.output, (args, bad.output)
    bad = cli.invoke(app, ["catalog", "flagged", "--data-dir", str(folder), "--label", "x"])
    assert bad.exit_code == 2 and "false-alarm" in bad.output


def test_folder_without_catalog_and_catalog_down(catalog, tmp_path):
    _, folder = catalog
    cli = CliRunner()
    for cmd in (["catalog", "flagged"], ["catalog", "label", "raw-a", "--defect"]):
        # the parent of the catalog: today's silent [] is now an error naming the catalog
        out = cli.invoke(app, [*cmd, "--data-dir", str(tmp_path)])
        assert out.exit_code == 2, out.output
        assert "holds no pbi catalog" in out.output and str(folder) in out.output
        assert not (tmp_path / "catalog.db").exists()
        down = cli.invoke(app, [*cmd, "--tiled", f"http://127.0.0.1:{free_port()}/api/v1"])
        assert down.exit_code == 2 and "cannot open the Tiled catalog" in down.output


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from pbi_bluesky.testing.services import TiledServer

    s = TiledServer(tmp_path_factory.mktemp("tiled-labels")).start()
    yield s
    s.stop()


def test_labels_on_a_tiled_server_need_its_key(server):
    _fill(open_runs(server.uri, api_key=server.api_key))
    cli = CliRunner()
    base = ["--tiled", server.uri]
    no_key = cli.invoke(app, ["catalog", "label", "raw-a", "--false-alarm", *base],
                        env={"PBI_TILED_API_KEY": "", "TILED_API_KEY": ""})
    assert no_key.exit_code == 2, no_key.output
    ok = cli.invoke(app, ["catalog", "label", "raw-a", "--false-alarm", "--by", "dee",
                          *base, "--api-key", server.api_key])
    assert ok.exit_code == 0, ok.output
    assert server.api_key not in ok.output
    res = cli.invoke(app, ["catalog", "flagged", *base, "--api-key", server.api_key,
                           "--json", "--label", "false-alarm"])
    assert [r["raw_uid"] for r in json.loads(res.output)] == ["raw-a"]
    assert json.loads(res.output)[0]["label_by"] == "dee"


def test_queries_read_metadata_pages_and_stop_at_the_limit(catalog):
    from tiled.queries import Key

    from pbi_bluesky.store.search import search_metadata

    runs, _ = catalog
    sent = []
    runs.context.http_client.event_hooks["request"].append(sent.append)
    analyses = runs.search(Key("start.pbi_analysis") == True).sort(("start.time", 1))  # noqa: E712
    paged = list(search_metadata(analyses, page_size=3))  # 4 analyses: two pages
    pages = [r for r in sent if "/search/" in r.url.path]
    assert len(pages) == 2
    assert all(r.url.params.get("fields") == "metadata" for r in pages)
    assert [md["start"]["raw_uid"] for _, md in paged] == [
        "raw-a", "raw-b", "raw-c", "raw-normal"]
    assert dict(paged) == {uid: node.metadata for uid, node in analyses.items()}
    # the newest two flags: one page of two, never the page after it
    sent.clear()
    assert [r["raw_uid"] for r in flagged_runs(runs, limit=2)] == ["raw-b", "raw-c"]
    flags = [r for r in sent if "stop.pbi_summary.flagged" in str(r.url)]
    assert len(flags) == 1, [str(r.url) for r in flags]


def test_curves_of_both_layouts_read_through_one_function(server, tiny_model, instrument):
    """Analysis runs with the curves as table columns (the session's writer now) and as
    array nodes (catalogs of older versions) read the same through analysis_frames,
    analysis_curves and labelled_frames, from BlueskyRun and plain-container clients."""
    from bluesky_tiled_plugins import TiledWriter

    from pbi_bluesky.simulate import PS_PMMA, nominal_state, simulate_profile
    from pbi_bluesky.store import Catalog, analysis_curves, analysis_frames, labelled_frames
    from pbi_bluesky.testing.analyses import write_scored_run
    from tests.review.conftest import bump

    runs = open_runs(server.uri, api_key=server.api_key)
    rng = np.random.default_rng(3)
    intensity, sigma = tiny_model.resample(
        [simulate_profile(nominal_state(PS_PMMA, "50:50", rng), instrument, rng)
         for _ in range(2)])
    intensity = bump(intensity, 0.8)  # flagged: it can be labelled
    session_writer = Catalog(server.uri, api_key=server.api_key).writer(composed=True)
    written = {}
    for name, writer in (("old", TiledWriter(runs)), ("session", session_writer)):
        written[name] = write_scored_run(runs, tiny_model, intensity, sigma, "50:50",
                                         md={"sample": f"curves-{name}"}, writer=writer)
    plain = open_runs(server.uri, api_key=server.api_key, metadata_only=True)
    layouts = {"old": "arrays", "session": "table"}
    for client in (runs, plain):
        for name, (_, analysis_uid) in written.items():
            stream = client[analysis_uid]["pbi_anomaly"]
            frames = analysis_frames(stream)
            assert frames.layout == layouts[name], (name, frames.layout)
            assert list(frames.table["raw_seq_num"]) == [1, 2]
            assert not {"q", "intensity", "sigma"} & set(frames.table.columns)
            for got in (frames.curves, analysis_curves(stream)):
                assert got["q"].shape == got["intensity"].shape == (2, tiny_model.grid.npt)
                np.testing.assert_array_equal(got["intensity"], intensity)
                np.testing.assert_array_equal(got["sigma"], sigma)
                np.testing.assert_array_equal(got["q"][1], tiny_model.grid.q)
    for raw_uid, _ in written.values():
        label_run(runs, raw_uid, "defect", by="curves")
    rows = {r["raw_uid"]: r for r in labelled_frames(runs, "defect")}
    for raw_uid, _ in written.values():
        profiles = rows[raw_uid]["profiles"]
        assert len(profiles) == 2, rows[raw_uid].get("skipped")
        np.testing.assert_array_equal(profiles[1].intensity, intensity[1])
