"""Channel Access throughput of the simulated SAXS beamline with the stock device classes.

Starts ``python -m sim_iocs.saxs_beamline`` on loopback (free port, random prefix) per
detector and measures, with the devices ``beamline.yaml`` builds (stock ophyd and stock
ophyd-async, :mod:`pbi_bluesky.devices`):

* ``ca_read_fps``          - frames/s of ``image1:ArrayData`` reads (stock ``ImagePlugin``);
* ``ophyd_overhead_ms``    - per-frame wall time of ``RE(bp.count([saxs, i0, T], num=N))``
  minus the exposure, stock ophyd (``SingleTrigger`` + ``PilatusDetector`` + HDF5 file store,
  Resource/Datum);
* ``async_step_overhead_ms`` - the same with the ophyd-async ``PilatusDetector`` (step scan,
  StreamResource/StreamDatum, I0/transmission as NDAttributes);
* ``fly_frame_fps`` / ``fly_requested_fps`` - an ophyd-async fly scan of N frames at a set
  period (:func:`~pbi_bluesky.plans.fly_slot`): frames/s between the first and last frame
  (the IOC's ``NDArrayTimeStamp``) vs asked; ``fly_fps`` counts the whole run (arming,
  file set-up) as well;
* ``fly_scored_fps``        - the same fly scan with the live scorer subscribed: frames/s from
  kickoff to the last verdict (every frame accounted for).

Usage::

    python benchmarks/bench_ca.py [--frames 20] [--exposure 0.1] [--fly-frames 40]

The last line of the output is one JSON object with all numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _configure_env() -> dict[str, str]:
    """Loopback CA on free ports; must run before ophyd is imported."""
    from pbi_bluesky.testing.iocs import loopback_epics_env

    env = loopback_epics_env()
    os.environ.update(env)
    return env


def _fly_model(instrument):
    """A small model fitted to this detector's q range (seconds), for the scored fly scan."""
    import numpy as np

    from pbi_bluesky.models import AnomalyDetector, NetworkConfig, QGrid, TrainingConfig
    from pbi_bluesky.simulate import PS_PMMA, nominal_state, simulate_profile

    rng = np.random.default_rng(3)
    profiles, recipes = [], []
    for recipe in PS_PMMA.recipes:
        for _ in range(40):
            profiles.append(simulate_profile(nominal_state(PS_PMMA, recipe, rng), instrument,
                                             rng, exposure_s=0.02))
            recipes.append(recipe)
    model = AnomalyDetector(QGrid(q_min=0.008, q_max=0.08, npt=128), NetworkConfig(length=128),
                            TrainingConfig(epochs=4, alpha=0.05, seed=0, calibration="split"))
    return model.fit(profiles, recipes, progress=False)


def _frame_rate(resources: list[dict]) -> float | None:
    """Frames/s between the first and last frame, from the IOC's NDArrayTimeStamp."""
    import h5py
    import numpy as np

    image = next((r for r in resources if r.get("data_key") == "saxs"), None)
    if image is None:
        return None
    path = image["uri"].removeprefix("file://localhost")
    with h5py.File(path, "r", locking=False) as fh:
        stamps = np.asarray(fh["/entry/instrument/NDAttributes/NDArrayTimeStamp"][()])
    if stamps.size < 2 or stamps[-1] <= stamps[0]:
        return None
    return round((stamps.size - 1) / float(stamps[-1] - stamps[0]), 1)


def _bench_detector(detector: str, args: argparse.Namespace, env: dict[str, str],
                    workdir: Path) -> dict[str, Any]:
    import bluesky.plans as bp
    from bluesky import RunEngine

    from pbi_bluesky.demos.beamline import sim_beamline_config
    from pbi_bluesky.devices import make_async_beamline, make_ophyd_beamline
    from pbi_bluesky.live import LiveScorer
    from pbi_bluesky.plans import fly_slot, use_tray
    from pbi_bluesky.reduction import load_geometry
    from pbi_bluesky.simulate import Instrument
    from pbi_bluesky.testing.iocs import start_sim_ioc, stop_sim_ioc
    from sim_iocs.tray import default_tray

    ioc = start_sim_ioc(workdir / detector, default_tray(), detector=detector, seed=1, env=env)
    try:
        cfg = sim_beamline_config(ioc, connection_timeout_s=15.0)
        use_tray(cfg.tray)
        RE = RunEngine({})
        bl = make_ophyd_beamline(cfg)
        det = bl.detector
        det.cam.acquire_time.put(0.01)
        det.image1.array_data.get()
        t0 = time.perf_counter()
        for _ in range(args.frames):
            det.image1.array_data.get()
        ca_read = args.frames / (time.perf_counter() - t0)
        det.cam.acquire_time.put(args.exposure)
        det.cam.acquire_period.put(args.exposure)
        RE(bp.count(bl.readables, num=1))  # warm-up (descriptor, staging)
        t0 = time.perf_counter()
        RE(bp.count(bl.readables, num=args.frames))
        ophyd_per_frame = (time.perf_counter() - t0) / args.frames

        abl = make_async_beamline(cfg)
        from pbi_bluesky.plans.tray import set_exposure

        def step(n):
            from pbi_bluesky.devices.epics_async import setup_monitor_ndattributes

            yield from setup_monitor_ndattributes(abl.detector, abl.monitors)
            yield from set_exposure(abl.detector, args.exposure)
            yield from bp.count([abl.detector], num=n)

        RE(step(1))
        t0 = time.perf_counter()
        RE(step(args.frames))
        async_per_frame = (time.perf_counter() - t0) / args.frames

        period = args.fly_period
        resources: list[dict] = []
        grab = RE.subscribe(lambda n, d: resources.append(d) if n == "stream_resource" else None)
        t0 = time.perf_counter()
        RE(fly_slot(abl.detector, abl.changer, 1, args.fly_frames, period * 0.8, period=period,
                    monitors=abl.monitors))
        fly_wall = time.perf_counter() - t0
        RE.unsubscribe(grab)
        frame_fps = _frame_rate(resources)

        instrument = Instrument(geometry=load_geometry(str(ioc.poni_path)))
        scorer = LiveScorer(_fly_model(instrument), mask=str(ioc.mask_path),
                            poni=str(ioc.poni_path), data_roots=[str(ioc.data_root)],
                            queue_size=256)
        token = RE.subscribe(scorer)
        uid_box: list[str] = []
        RE.subscribe(lambda n, d: uid_box.append(d["uid"]) if n == "start" else None)
        t0 = time.perf_counter()
        RE(fly_slot(abl.detector, abl.changer, 1, args.fly_frames, period * 0.8, period=period,
                    monitors=abl.monitors))
        assert scorer.flush(300)
        scored_wall = time.perf_counter() - t0
        summary = scorer.channel.summaries.get(uid_box[-1], {})
        RE.unsubscribe(token)
        scorer.close()
        return {
            "detector": detector,
            "shape": [int(det.cam.array_size.array_size_y.get()),
                      int(det.cam.array_size.array_size_x.get())],
            "ca_read_fps": round(ca_read, 1),
            "exposure_s": args.exposure,
            "ophyd_s_per_frame": round(ophyd_per_frame, 4),
            "ophyd_overhead_ms": round(1000 * (ophyd_per_frame - args.exposure), 1),
            "async_step_s_per_frame": round(async_per_frame, 4),
            "async_step_overhead_ms": round(1000 * (async_per_frame - args.exposure), 1),
            "fly_frames": args.fly_frames,
            "fly_requested_fps": round(1 / period, 1),
            "fly_fps": round(args.fly_frames / fly_wall, 1),
            "fly_frame_fps": frame_fps,
            "fly_scored_fps": round(args.fly_frames / scored_wall, 1),
            "fly_scored_accounted": summary.get("accounted"),
            "fly_scored_frames": summary.get("frames"),
        }
    finally:
        use_tray(None)
        stop_sim_ioc(ioc)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print one JSON line at the end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--exposure", type=float, default=0.1)
    parser.add_argument("--fly-frames", type=int, default=40)
    parser.add_argument("--fly-period", type=float, default=0.05, help="s between frames")
    parser.add_argument("--detectors", nargs="+", default=["Pilatus300k", "Pilatus1M"])
    args = parser.parse_args(argv)
    env = _configure_env()
    sys.path.insert(0, str(REPO))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for detector in args.detectors:
            res = _bench_detector(detector, args, env, Path(tmp))
            results.append(res)
            print(f"{detector:12s}: CA image read {res['ca_read_fps']} fr/s; RE count at "
                  f"{res['exposure_s']} s: stock ophyd +{res['ophyd_overhead_ms']} ms/frame, "
                  f"ophyd-async +{res['async_step_overhead_ms']} ms/frame; fly scan "
                  f"{res['fly_frame_fps']} fr/s between frames, {res['fly_fps']} fr/s for the "
                  f"whole run (asked {res['fly_requested_fps']}), with the live "
                  f"scorer {res['fly_scored_fps']} fr/s to the last verdict "
                  f"({res['fly_scored_accounted']}/{res['fly_scored_frames']} accounted)",
                  flush=True)
    summary = {"benchmark": "bench_ca", "cpus": os.cpu_count(), "results": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
