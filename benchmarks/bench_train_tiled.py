"""Benchmark ``pbi model train --tiled``: read and reduce raw runs of Pilatus 1M frames from a
Tiled server, then train; frames/s, training time and peak memory at two selection sizes.

Usage::

    nice -n 10 python benchmarks/bench_train_tiled.py [--sizes 200 2000] [--per-run 50]

A Tiled server (SQLite, API key, the data folder readable) holds an empty-cell run and, for
each size, runs of ``--per-run`` Pilatus 1M frames written by ``TiledWriter`` from
Resource/Datum documents pointing at HDF5 files (stock ophyd's layout: the frames are
written by reference, Tiled serves them from the files), recipes 50:50 and 25:75
alternating. Each size is then read back and reduced by
:func:`pbi_bluesky.training.tiled.collect_normals` in a fresh process (so its peak memory
is its own), with the shipped geometry, mask and dark; that process then trains a detector
(``--epochs``) on what it read. Reported per size: frames, read+reduce seconds and frames/s,
the process's peak resident memory (``ru_maxrss``) after reading and its resident memory
before reading, training seconds. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import datum_run, workdir  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Read, reduce and train on one selection (run in its own process)."""
    import torch

    from pbi_bluesky.models import AnomalyDetector, QGrid, TrainingConfig
    from pbi_bluesky.scoring.engine import FrameScorer
    from pbi_bluesky.store import Catalog
    from pbi_bluesky.training.tiled import collect_normals

    torch.set_num_threads(2)
    runs = Catalog(args.uri, api_key=args.api_key).runs
    scorer = FrameScorer(reduce_only=True, mask=np.load(args.mask), dark=np.load(args.dark),
                         data_roots=[args.data_root] if args.data_root else [])
    requests: list[str] = []  # every HTTP request to Tiled while reading
    hooks = runs.context.http_client.event_hooks
    hooks["request"] = [*hooks.get("request", []), lambda r: requests.append(r.url.path)]
    runs.context.http_client.event_hooks = hooks
    before = _rss_mb()
    profile = None
    if args.profile:
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    t0 = time.perf_counter()
    normals = collect_normals(runs, scorer, query=(args.query,), chunk=args.chunk)
    read_s = time.perf_counter() - t0
    if profile is not None:
        import pstats

        profile.disable()
        with open(f"{args.profile}.{len(normals.profiles)}.txt", "w") as fh:
            pstats.Stats(profile, stream=fh).sort_stats("cumulative").print_stats(45)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"frames": len(normals.profiles), "runs_used": len(normals.used),
           "runs_refused": len(normals.refused), "read_reduce_s": round(read_s, 2),
           "frames_per_s": round(len(normals.profiles) / read_s, 1),
           "rss_before_read_mb": round(before, 1), "peak_rss_after_read_mb": round(peak, 1),
           "tiled_requests": len(requests), "reads": normals.reads.as_dict()}
    if not normals.profiles:
        raise SystemExit(f"every run refused, e.g. {normals.refused[:1]}")
    t0 = time.perf_counter()
    grid = QGrid.for_profiles(normals.profiles)
    AnomalyDetector(grid, training=TrainingConfig(epochs=args.epochs, seed=0)).fit(
        normals.profiles, normals.recipes, progress=False)
    out["train_s"] = round(time.perf_counter() - t0, 1)
    out["epochs"] = args.epochs
    return out


def cell_frames(instrument: Any, folder: Path, rng: Any) -> dict[str, Any]:
    """One empty-cell frame in an HDF5 file (the layout of make_frames)."""
    import h5py

    from pbi_bluesky.simulate import render_empty_cell

    cell = render_empty_cell(instrument, rng)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "frames.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("/entry/data/data", data=cell.frame[None])
    return {"path": path, "readings": [(cell.monitor, cell.transmission)],
            "shape": list(cell.frame.shape)}


def recipe_frames(instrument: Any, recipe: str, n: int, per_run: int, folder: Path,
                  rng: Any) -> dict:
    """An HDF5 file of ``per_run`` frames of one recipe cycling through ``n`` rendered
    ones (every run of the recipe points at its frames 0..per_run-1: TiledWriter turns a
    run's datums into one contiguous range)."""
    import h5py

    from pbi_bluesky.simulate import PS_PMMA, nominal_state, render_frame

    shots = [render_frame(nominal_state(PS_PMMA, recipe, rng), instrument, rng)
             for _ in range(n)]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "frames.h5"
    shape = shots[0].frame.shape
    with h5py.File(path, "w") as fh:
        data = fh.create_dataset("/entry/data/data", shape=(per_run, *shape),
                                 dtype=shots[0].frame.dtype, chunks=(1, *shape))
        for i in range(per_run):
            data[i] = shots[i % n].frame
    return {"path": path, "readings": [(shots[i % n].monitor, shots[i % n].transmission)
                                       for i in range(per_run)], "shape": list(shape)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bluesky_tiled_plugins import TiledWriter

    from pbi_bluesky.store import runs_container
    from pbi_bluesky.testing.services import TiledServer

    work, inst, poni = workdir("pbi-bench-train-tiled-")
    rng = np.random.default_rng(18)
    log(f"rendering {args.distinct} distinct Pilatus 1M frames per recipe ...")
    frames = {r: recipe_frames(inst, r, args.distinct, args.per_run,
                               work / "data" / r.replace(":", "_"), rng)
              for r in ("50:50", "25:75")}
    cell = cell_frames(inst, work / "data" / "cell", rng)
    server = TiledServer(work / "tiled", readable=[work / "data"]).start()
    out: dict[str, Any] = {"detector": "Pilatus 1M", "per_run": args.per_run, "sizes": {}}
    try:
        writer = TiledWriter(runs_container(server.client()))
        t0 = time.perf_counter()
        for name, doc in datum_run({"geometry": poni, "sample_type": "empty_cell",
                                    "sample": "cell", "bench": "cell"}, cell, 1)[1]:
            writer(name, doc)
        for size in args.sizes:
            for k in range(max(1, size // args.per_run)):
                recipe = ("50:50", "25:75")[k % 2]
                md = {"geometry": poni, "thickness_cm": 0.1, "composition": recipe,
                      "sample": f"n{size}-{k}", "bench_size": size}
                for name, doc in datum_run(md, frames[recipe], args.per_run)[1]:
                    writer(name, doc)
        log(f"wrote the runs in {time.perf_counter() - t0:.1f} s")
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--child", "--uri", server.uri, "--api-key",
                   server.api_key, "--query", f"bench_size={size}", "--mask",
                   str(work / "mask.npy"), "--dark", str(work / "dark.npy"), "--epochs",
                   str(args.epochs), "--chunk", str(args.chunk)]
            if args.profile:
                cmd += ["--profile", args.profile]
            if not args.through_tiled:  # frames from their files under the data root
                cmd += ["--data-root", str(work / "data")]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"size {size} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            out["sizes"][str(size)] = result
            log(f"{size} frames: {result}")
    finally:
        server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--per-run", type=int, default=50)
    parser.add_argument("--distinct", type=int, default=8,
                        help="distinct frames rendered per recipe (cycled by the datums)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--through-tiled", action="store_true",
                        help="no data root: every frame through Tiled's array endpoint")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="profile each size's read (cProfile) into PREFIX.FRAMES.txt")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--api-key", help=argparse.SUPPRESS)
    parser.add_argument("--query", help=argparse.SUPPRESS)
    parser.add_argument("--mask", help=argparse.SUPPRESS)
    parser.add_argument("--dark", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    out = run(args)
    sizes = sorted(out["sizes"], key=int)
    if len(sizes) >= 2:
        lo, hi = out["sizes"][sizes[0]], out["sizes"][sizes[-1]]
        out["peak_rss_growth_mb"] = round(hi["peak_rss_after_read_mb"]
                                          - lo["peak_rss_after_read_mb"], 1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
