"""Benchmark ``pbi rescore``: an archive re-scored on a Dask LocalCluster of 1 and 2 workers.

Usage::

    nice -n 10 python benchmarks/bench_rescore.py [--runs 8] [--frames 32]

A Tiled server (SQLite, API key, the data folder readable) holds ``--runs`` raw runs of
``--frames`` Pilatus 1M frames each, written by ``TiledWriter`` from Resource/Datum
documents pointing at an HDF5 file (as stock ophyd writes them), so the re-scoring tasks
read every frame back through Tiled from the HDF5 file. For 1 and then 2 worker processes
(one thread each) the same archive is re-scored with the shipped model (the analysis runs
of the first pass are deleted before the second); each worker loads the model and builds
its reducer before the clock starts (``client.run``). Reported: runs/s and frames/s, and
the 2-worker / 1-worker ratio. On this 2-core machine the Tiled server, the scheduler and
this process share the cores with the workers. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import datum_run, make_frames, workdir  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


def _warm(job: Any) -> str:
    from pbi_bluesky.rescore import _scorer_and_runs

    core, catalog = _scorer_and_runs(job)
    _ = catalog.runs
    return "ok"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bluesky_tiled_plugins import TiledWriter
    from distributed import Client, LocalCluster
    from tiled.queries import Key

    from pbi_bluesky.rescore import RescoreJob, rescore
    from pbi_bluesky.store import runs_container
    from pbi_bluesky.testing.services import TiledServer

    work, inst, poni = workdir("pbi-bench-rescore-")
    log(f"rendering {args.frames} Pilatus 1M frames ...")
    frames = make_frames(inst, args.frames, work / "data", np.random.default_rng(3))
    server = TiledServer(work / "tiled", readable=[work / "data"]).start()
    out: dict[str, Any] = {"runs": args.runs, "frames_per_run": args.frames}
    try:
        runs = runs_container(server.client())
        writer = TiledWriter(runs)
        md = {"geometry": poni, "thickness_cm": 0.1, "composition": "50:50",
              "sample": "archive"}
        for _ in range(args.runs):
            _uid, docs = datum_run(md, frames, args.frames)
            for name, doc in docs:
                writer(name, doc)
        job = RescoreJob("pbi_bluesky/data/default_model", server.uri, server.api_key,
                         {"mask": str(work / "mask.npy"), "dark": str(work / "dark.npy")})
        out["frames_per_s"], out["runs_per_s"] = {}, {}
        for n in (1, 2):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address="127.0.0.1:0")
            client = Client(cluster)
            try:
                client.run(_warm, job)
                t0 = time.perf_counter()
                summary = rescore(job, client, progress=False)
                dt = time.perf_counter() - t0
            finally:
                client.close()
                cluster.close()
            done = len(summary["rescored"])
            if done != args.runs or summary["failed"]:
                raise RuntimeError(f"{n} worker(s): {done} of {args.runs} runs re-scored, "
                                   f"failures {summary['failed']}")
            frames_done = sum(r["frames"] for r in summary["rescored"])
            out["runs_per_s"][str(n)] = done / dt
            out["frames_per_s"][str(n)] = frames_done / dt
            log(f"{n} worker(s): {done} runs, {frames_done} frames in {dt:.1f} s: "
                f"{done / dt:.2f} runs/s, {frames_done / dt:.1f} frames/s")
            for uid in list(runs.search(Key("pbi_rescore") == True)):  # noqa: E712
                runs[uid].delete(recursive=True, external_only=False)
        out["scaling_2_over_1"] = out["frames_per_s"]["2"] / out["frames_per_s"]["1"]
    finally:
        server.stop()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--frames", type=int, default=32)
    result = run(parser.parse_args(argv))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
