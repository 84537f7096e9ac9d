"""Profile reading normals back from Tiled (``collect_normals``) on a demo's catalog.

Usage::

    pbi demo --out DIR            # the loop writes 5 runs of 10 normal frames
    python benchmarks/profile_train_read.py DIR [--top 35]

Reads the demo's training normals twice with the demo's reduction settings (the first
pass builds the Pilatus 1M reduction operator), profiles the second with cProfile and
prints frames/s and the top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from pathlib import Path


def main() -> None:
    """Run the profile (see the module docstring)."""
    from pbi_bluesky.config import (
        BeamlineConfig,
        ChangerConfig,
        DetectorConfig,
        GeometryConfig,
        MonitorConfig,
    )
    from pbi_bluesky.demos.loop import TRAINING_PURPOSE
    from pbi_bluesky.reduction import load_geometry
    from pbi_bluesky.scoring.engine import FrameScorer
    from pbi_bluesky.simulate import Instrument, expected_dark
    from pbi_bluesky.store import Catalog
    from pbi_bluesky.training.tiled import collect_normals

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="the folder of a `pbi demo --out` run")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--exposure", type=float, default=0.2)
    args = parser.parse_args()
    ioc, p = args.out / "ioc", "X:"
    cfg = BeamlineConfig(
        detector=DetectorConfig(prefix=p, write_path=str(ioc / "data")),
        changer=ChangerConfig(motor=f"{p}changer"),
        monitors=MonitorConfig(i0=f"{p}mon:I0", transmission=f"{p}mon:Transmission"),
        geometry=GeometryConfig(poni=str(ioc / "geometry.poni"), mask=str(ioc / "mask.edf")),
        name="profile")
    dark = expected_dark(Instrument(geometry=load_geometry(str(ioc / "geometry.poni"))),
                         args.exposure)
    runs = Catalog(None, data_dir=args.out / "data" / "catalog", readable=cfg.data_roots).runs
    scorer = FrameScorer.from_settings(cfg, reduce_only=True, dark=dark)
    query = (f"demo_step={TRAINING_PURPOSE}",)
    t0 = time.perf_counter()
    first = collect_normals(runs, scorer, query=query)
    print(f"first pass (operator built): {time.perf_counter() - t0:.2f} s, "
          f"{len(first.profiles)} frames, reads {first.reads.as_dict()}")
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    second = collect_normals(runs, scorer, query=query)
    profile.disable()
    dt = time.perf_counter() - t0
    print(f"second pass: {dt:.2f} s, {len(second.profiles) / dt:.1f} frames/s")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
