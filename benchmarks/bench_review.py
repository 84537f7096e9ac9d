"""How fast ``pbi review`` answers on a big catalog: one JSON line.

A Tiled server (SQLite catalog, as ``pbi review --tiled`` reads one) holds ``--runs`` raw
runs, each with its analysis run (``--flagged`` of them flagged), loaded metadata-only by a
bulk insert into tiled's ``nodes`` table (as ``scale_catalog.py`` does), plus
``--labels`` label records and as many decision records on flagged runs, and a few analyses
scored by the shipped model and written with ``TiledWriter`` (real streams: the run pages
measured). Then ``pbi review`` is started as a process and timed over HTTP, what a browser
waits for: the index page ``/``, its poll ``/api/flagged``, a filtered index, a run's page and
its I(q) plot (median of ``--repeats``, after one warm-up request each; the first
request of the index and of the run page, which pays the server's imports and first
connection, is reported too).

    python benchmarks/bench_review.py [--runs 10000 --flagged 1000 --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

RECIPES = ("25:75", "50:50", "75:25")


def _records(n_runs: int, n_flagged: int, n_labels: int) -> list[dict[str, Any]]:
    """Start/stop metadata of raw runs, their analyses, labels and decisions."""
    step = max(1, n_runs // max(1, n_flagged))
    t0 = time.time() - 60 * n_runs
    tail = {r: {"u": 10.0, "beta": 2.0, "k": 20, "n": 200} for r in RECIPES}  # tail_fit's
    records, flagged = [], []
    for i in range(n_runs):
        recipe = RECIPES[i % 3]
        raw = {"uid": f"raw-{i:06d}", "time": t0 + 60 * i, "scan_id": i, "sample": f"s{i}",
               "slot": i % 20, "composition": recipe, "plan_name": "count"}
        is_flagged = i % step == step // 2 and len(flagged) < n_flagged
        summary = {"frames": 10, "scored": 10, "failed": 0, "flagged": 3 * is_flagged,
                   "max_score": float(i % 1000) / 100 + (20 if is_flagged else 0),
                   "min_p_value": 0.005 if is_flagged else 0.4,
                   "verdict": "anomalous" if is_flagged else "normal"}
        start = {"uid": f"ana-{i:06d}", "time": raw["time"] + 5, "pbi_analysis": True,
                 "raw_uid": raw["uid"], "sample": raw["sample"], "slot": raw["slot"],
                 "expected_composition": recipe, "model_sha256": "feedc0de" * 8,
                 "model_path": "/nowhere/model", "calibration": {"tail": tail}}
        if is_flagged:
            flagged.append(raw["uid"])
        records.append({"start": raw, "stop": {"uid": f"rs-{i}", "exit_status": "success",
                                               "time": raw["time"] + 30}})
        records.append({"start": start, "stop": {"uid": f"as-{i}", "time": start["time"] + 30,
                                                 "exit_status": "success",
                                                 "pbi_summary": summary}})
    for j, raw_uid in enumerate(flagged[:n_labels]):
        for purpose, extra in (("pbi_label", {"label": ("false-alarm", "defect")[j % 2],
                                              "labelled_by": "bench"}),
                               ("pbi_decision", {"classification": "confirmed"})):
            records.append({"start": {"uid": f"{purpose}-{j}", "time": t0 + 60 * n_runs + j,
                                      "purpose": purpose, "raw_uid": raw_uid, **extra},
                            "stop": {"uid": f"{purpose}-stop-{j}", "exit_status": "success"}})
    return records


def _real_runs(runs: Any, model: Any, n: int) -> list[str]:
    """Write ``n`` flagged analyses scored by ``model`` (streams, plots); their raw uids."""
    from pbi_bluesky.simulate import PS_PMMA, Instrument, nominal_state, simulate_profile
    from pbi_bluesky.testing.analyses import write_scored_run

    rng = np.random.default_rng(3)
    instrument = Instrument()
    recipe = model.recipes[len(model.recipes) // 2]
    profiles = [simulate_profile(nominal_state(PS_PMMA, recipe, rng), instrument, rng)
                for _ in range(10)]
    intensity, sigma = model.resample(profiles)
    bump = 1 + 2 * np.exp(-((np.arange(intensity.shape[1]) - 40) / 8.0) ** 2)
    info = {"path": model.bundle_info.get("path"), "model_sha256": "c0ffee" * 10}
    return [write_scored_run(runs, model, intensity * bump, sigma, recipe, model_info=info,
                             md={"sample": f"real-{k}"})[0] for k in range(n)]


def _get(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as reply:
        body = reply.read()
    return time.perf_counter() - t0, body


def _median(url: str, repeats: int) -> tuple[float, bytes, float]:
    first, body = _get(url)  # warm-up: imports, first connection, caches
    times = [_get(url)[0] for _ in range(repeats)]
    return statistics.median(times), body, first


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print and return its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--flagged", type=int, default=1_000)
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the catalog here; a catalog already there (same "
                             "--runs/--flagged/--labels) is reused, not rebuilt")
    args = parser.parse_args(argv)

    from scale_catalog import _bulk_sqlite

    from pbi_bluesky.infra.ports import free_port, port_open
    from pbi_bluesky.models.bundle import load_default_model
    from pbi_bluesky.store import runs_container
    from pbi_bluesky.testing.services import TiledServer

    work = args.workdir or Path(tempfile.mkdtemp(prefix="pbi-bench-review-"))
    kept = work / "bench.json"
    reuse = kept.exists() and json.loads(kept.read_text()).get("args") == \
        [args.runs, args.flagged, args.labels]
    server = TiledServer(work / "tiled", api_key="benchreviewkey")
    server._initialised = reuse  # a kept catalog is served as it is (no --init)
    server.start()
    proc = None
    try:
        records = _records(args.runs, args.flagged, args.labels)
        if reuse:
            real, load_s = json.loads(kept.read_text())["real"], None
        else:
            runs = runs_container(server.client())
            real = _real_runs(runs, load_default_model(), 3)
            t0 = time.perf_counter()
            _bulk_sqlite(work / "tiled" / "catalog.db", records)
            load_s = round(time.perf_counter() - t0, 2)
            if args.workdir:
                kept.write_text(json.dumps({"args": [args.runs, args.flagged, args.labels],
                                            "real": real}))
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "pbi_bluesky.cli", "review", "--tiled",
                                 server.uri, "--port", str(port)],
                                env={**__import__("os").environ,
                                     "TILED_API_KEY": server.api_key},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not port_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pbi review did not start: {proc.stdout.read()!r}")
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        index_s, page, first_s = _median(url + "/", args.repeats)
        shown = page.count(b"class='flag'")
        api_s, body, _ = _median(url + "/api/flagged", args.repeats)
        n_api = len(json.loads(body))
        filtered_s, _, _ = _median(url + "/api/flagged?recipe=50:50&label=defect",
                                   args.repeats)
        run_s, run_page, run_first_s = _median(f"{url}/run/{real[0]}", args.repeats)
        curve_s, svg, _ = _median(f"{url}/run/{real[0]}/curve.svg", args.repeats)
        assert b"curve.svg" in run_page and b"<svg" in svg, "the run page has no plot"
        result = {
            "bench": "review", "runs": args.runs, "analyses": args.runs + len(real),
            "flagged": args.flagged + len(real), "labels": args.labels,
            "nodes": len(records) + 2 * len(real), "bulk_load_s": load_s,
            "index_s": round(index_s, 3), "index_rows": shown,
            "index_first_s": round(first_s, 3), "run_page_first_s": round(run_first_s, 3),
            "api_flagged_s": round(api_s, 3), "api_flagged_rows": n_api,
            "api_filtered_s": round(filtered_s, 3), "run_page_s": round(run_s, 3),
            "curve_svg_s": round(curve_s, 3), "repeats": args.repeats,
            "targets": {"index_s": 1.0, "run_page_s": 0.5},
            "met": index_s < 1.0 and run_s < 0.5,
        }
    except Exception:
        if proc is not None:
            proc.terminate()
            print(proc.communicate(timeout=10)[0].decode(errors="replace")[-4000:],
                  file=sys.stderr)
            proc = None
        raise
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        server.stop()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
