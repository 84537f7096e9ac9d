"""Benchmark: from a flagged frame to the start of its rescan, through the agent and the
queue server, next to the in-plan ``survey_and_rescan`` on the same tray.

Usage::

    python benchmarks/bench_queue.py [--exposure 0.2] [--out build/bench_queue]

Both paths run the demo tray (14 PS/PMMA specimens, 8 flagged: 7 defects and a one-shot
beam dump; Pilatus 1M frames from the simulated IOC over loopback Channel Access), one after
the other, in this run:

* **in-plan**: ``pbi demo``'s path: one RunEngine in this process runs
  ``survey_and_rescan`` (measure every slot, then rescan each flagged one), the live scorer
  writes to an embedded Tiled catalog;
* **queue**: ``pbi demo --queue``'s path: Redis, a Tiled server and ``start-re-manager``
  running the profile's startup file; the tray is queued as one ``measure_tray`` item per
  slot; ``pbi agent`` (its own process, polling Tiled every 0.5 s) queues each rescan at the
  front of the queue.

The time measured, per flagged sample, is the flagged frame's event time to its first
rescan run's start document, both read back from the catalog with the same function
(:func:`pbi_bluesky.demos.queue.rescan_latencies`), so the two paths are timed alike.
For the queue path it is split into: the analysis run's stop document (composed by the
scorer in the worker), the agent's request record (written right after its ``item_add``,
so the time the agent had the verdict from Tiled), and the rescan's start. The decisions
of the two paths are compared slot by slot. A table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _in_plan(out: Path, exposure: float) -> dict:
    from pbi_bluesky.demos.beamline import run_live_demo
    from pbi_bluesky.demos.queue import rescan_latencies
    from pbi_bluesky.store import open_runs

    t0 = time.perf_counter()
    report = run_live_demo(out, exposure_s=exposure)
    wall = time.perf_counter() - t0
    runs = open_runs(None, data_dir=out / "data" / "catalog")
    return {"wall_s": round(wall, 1), "latency": rescan_latencies(runs),
            "decisions": {r["slot"]: r["classification"] for r in report.rows},
            "precision": report.precision, "recall": report.recall,
            "transient_correct": report.transient_correct}


def _queue(out: Path, exposure: float) -> dict:
    from pbi_bluesky.demos.queue import run_queue_demo

    t0 = time.perf_counter()
    report = run_queue_demo(out, exposure_s=exposure)
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 1), "latency": report.latency_s,
            "decisions": {r["slot"]: r["classification"] for r in report.rows},
            "precision": report.precision, "recall": report.recall,
            "transient_correct": report.transient_correct,
            "rescans_queued": report.rescans_queued, "queue_items": report.queue_items}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exposure", type=float, default=0.2, help="survey exposure (s)")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "bench_queue")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    in_plan = _in_plan(args.out / "in_plan", args.exposure)
    queue = _queue(args.out / "queue", args.exposure)
    a, b = in_plan["latency"], queue["latency"]
    agree = in_plan["decisions"] == queue["decisions"]
    print(f"{'path':10} {'n':>3} {'median s':>9} {'p95 s':>7} {'wall s':>7}  decisions")
    for name, r in (("in-plan", in_plan), ("queue", queue)):
        lat = r["latency"]
        print(f"{name:10} {lat['n']:>3} {lat['median_s']!s:>9} {lat['p95_s']!s:>7} "
              f"{r['wall_s']:>7}  precision {r['precision']:.2f} recall {r['recall']:.2f} "
              f"transient {'yes' if r['transient_correct'] else 'NO'}")
    print(f"queue path, median (p95) from the flagged frame: analysis done "
          f"{b['analysis_done_median_s']} s ({b['analysis_done_p95_s']}), agent request "
          f"{b['requested_median_s']} s ({b['requested_p95_s']}), rescan start "
          f"{b['median_s']} s ({b['p95_s']})")
    print(f"decisions agree slot by slot: {agree}")
    ratio = (round(b["median_s"] / a["median_s"], 3)
             if a.get("median_s") and b.get("median_s") else None)
    result = {"benchmark": "bench_queue", "exposure_s": args.exposure, "detector": "Pilatus1M",
              "slots": len(in_plan["decisions"]), "in_plan": in_plan, "queue": queue,
              "median_ratio_queue_over_in_plan": ratio, "decisions_agree": agree}
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
