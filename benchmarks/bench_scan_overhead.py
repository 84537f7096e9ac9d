"""Scan overhead of the live scorer on a real (simulated) beamline, paced by exposure.

Starts the caproto IOC with a Pilatus 1M, builds the stock ophyd devices from its
beamline.yaml (HDF5 frames, Resource/Datum) over loopback Channel Access, and times the
same N-frame ``bp.count`` scan (exposure ``--exposure`` s) with and
without the :class:`~pbi_bluesky.live.LiveScorer` subscribed (default model), alternating
the order over ``--repeats``. Reports the ratio of medians (target <= 1.05x) and the time
the scorer needed after the scan to drain its queue. The last line is JSON.

Usage: ``python benchmarks/bench_scan_overhead.py [--frames 100] [--exposure 0.1]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--exposure", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from pbi_bluesky.testing.iocs import loopback_epics_env, start_sim_ioc, stop_sim_ioc

    env = loopback_epics_env()
    os.environ.update(env)
    tray = [{"slot": 1, "sample": "bench-50", "composition": "50:50"}]
    ioc = start_sim_ioc(Path(tempfile.mkdtemp()), tray, detector="Pilatus1M", seed=1, env=env)
    try:
        import bluesky.plans as bp
        from bluesky import RunEngine
        from threadpoolctl import threadpool_limits

        from pbi_bluesky.demos.beamline import sim_beamline_config
        from pbi_bluesky.devices import make_ophyd_beamline
        from pbi_bluesky.live import LiveScorer

        threadpool_limits(2)
        cfg = sim_beamline_config(ioc, connection_timeout_s=15.0)
        RE = RunEngine({})
        line = make_ophyd_beamline(cfg)
        line.detector.cam.acquire_time.set(args.exposure).wait(5)
        line.detector.cam.acquire_period.set(args.exposure).wait(5)
        scorer = LiveScorer.from_config(cfg)
        md = {"composition": "50:50", "thickness_cm": 0.1}
        dets = line.readables
        RE(bp.count(dets, 2, md=md))  # warm up CA and the detector
        bare, scored, drain = [], [], []
        for repeat in range(args.repeats):
            for with_scorer in ((False, True) if repeat % 2 == 0 else (True, False)):
                token = RE.subscribe(scorer) if with_scorer else None
                t0 = time.perf_counter()
                RE(bp.count(dets, args.frames, md=md))
                elapsed = time.perf_counter() - t0
                if with_scorer:
                    t1 = time.perf_counter()
                    scorer.flush(300)
                    drain.append(time.perf_counter() - t1)
                    RE.unsubscribe(token)
                    scored.append(elapsed)
                else:
                    bare.append(elapsed)
                print(f"repeat {repeat} {'with' if with_scorer else 'without'} scorer: "
                      f"{elapsed:.2f} s for {args.frames} frames")
        summaries = list(scorer.channel.summaries.values())
        accounted = all(s["frames"] == s["accounted"] for s in summaries)
        scored_frames = sum(s["scored"] for s in summaries)
        ratio = statistics.median(scored) / statistics.median(bare)
        print(f"\nexposure {args.exposure} s, {args.frames} frames, Pilatus 1M over CA")
        print(f"scan without scorer (median): {statistics.median(bare):.2f} s")
        print(f"scan with scorer (median):    {statistics.median(scored):.2f} s")
        print(f"ratio: {ratio:.3f}x (target <= 1.05x); queue drained {max(drain):.2f} s "
              f"after the scan; frames scored {scored_frames}, all accounted: {accounted}")
        print(json.dumps({"frames": args.frames, "exposure_s": args.exposure,
                          "bare_s": bare, "scored_s": scored, "ratio": round(ratio, 3),
                          "drain_s": drain, "scored_frames": scored_frames,
                          "all_accounted": accounted}))
    finally:
        stop_sim_ioc(ioc)


if __name__ == "__main__":
    main()
