"""Channel Access throughput of the simulated SAXS beamline, and RunEngine overhead.

Starts ``python -m sim_iocs.saxs_beamline`` on loopback (free port, random prefix) for a
Pilatus 300K and a Pilatus 1M, then measures

* ``ca_read_fps``        - frames/s of ``image1:ArrayData`` reads alone (transfer + reshape),
* ``trigger_read_fps``   - frames/s of ophyd ``trigger()`` + ``read()`` at a short exposure,
* ``re_overhead_ms``     - per-frame wall time of ``RE(bp.count([saxs], num=N))`` minus the
  exposure (RunEngine + ophyd + CA + rendering not hidden behind the exposure),
* ``hdf5_re_overhead_ms`` - the same with :class:`SAXSDetectorHDF5` (IOC writes one HDF5
  file per frame; events carry Resource/Datum references instead of pixels).

Usage::

    python benchmarks/bench_ca.py [--frames 20] [--exposure 0.1]

The last line of the output is one JSON object with all numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _configure_env() -> None:
    """Loopback CA on free ports; must run before ophyd is imported."""
    from sim_iocs.launch import loopback_epics_env

    os.environ.update(loopback_epics_env())


def _start_ioc(detector: str, workdir: Path):
    """The sim IOC (default tray) on this process's loopback ports; returns a SimIOC."""
    from sim_iocs.launch import start_sim_ioc
    from sim_iocs.tray import default_tray

    epics = {k: v for k, v in os.environ.items() if k.startswith("EPICS_")}
    return start_sim_ioc(workdir / detector, default_tray(), detector=detector, seed=1,
                         env=epics)


def _bench_detector(detector: str, n_frames: int, exposure: float,
                    workdir: Path) -> dict[str, Any]:
    import bluesky.plans as bp
    from bluesky import RunEngine

    from pbi_bluesky.devices import connect_beamline

    ioc = _start_ioc(detector, workdir)
    proc, prefix = ioc.process, ioc.prefix
    try:
        bl = connect_beamline(prefix, timeout=10)
        det = bl.detector
        ny, nx = det.image.image_shape
        det.cam.acquire_time.set(0.01).wait(5)
        det.trigger().wait(10)  # warm-up
        t0 = time.perf_counter()
        for _ in range(n_frames):
            det.image.get()
        ca_read = n_frames / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for _ in range(n_frames):
            det.trigger().wait(10)
            det.read()
        trig_read = n_frames / (time.perf_counter() - t0)

        det.cam.acquire_time.set(exposure).wait(5)
        RE = RunEngine({})
        RE(bp.count([det], num=1))  # warm-up (descriptor, staging)
        t0 = time.perf_counter()
        RE(bp.count([det], num=n_frames))
        per_frame = (time.perf_counter() - t0) / n_frames
        overhead_ms = 1000 * (per_frame - exposure)

        # HDF5 mode: the IOC writes a file per frame, events carry datum ids
        from pbi_bluesky.devices import SAXSDetectorHDF5

        hdf = workdir / f"h5_{detector}"
        hdf.mkdir(exist_ok=True)
        h5det = SAXSDetectorHDF5(prefix, name="saxs_h5", write_path=str(hdf))
        h5det.wait_for_connection(timeout=10)
        RE(bp.count([h5det], num=1))
        t0 = time.perf_counter()
        RE(bp.count([h5det], num=n_frames))
        h5_per_frame = (time.perf_counter() - t0) / n_frames
        n_files = len(list(hdf.glob("*.h5")))
        return {
            "detector": detector,
            "shape": [ny, nx],
            "mbytes_per_frame": round(ny * nx * 4 / 1e6, 3),
            "ca_read_fps": round(ca_read, 1),
            "trigger_read_fps_at_10ms": round(trig_read, 1),
            "re_count_s_per_frame": round(per_frame, 4),
            "re_overhead_ms_per_frame": round(overhead_ms, 1),
            "exposure_s": exposure,
            "hdf5_re_count_s_per_frame": round(h5_per_frame, 4),
            "hdf5_re_overhead_ms_per_frame": round(1000 * (h5_per_frame - exposure), 1),
            "hdf5_files_written": n_files,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print one JSON line at the end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--exposure", type=float, default=0.1)
    parser.add_argument("--detectors", nargs="+", default=["Pilatus300k", "Pilatus1M"])
    args = parser.parse_args(argv)
    _configure_env()
    sys.path.insert(0, str(REPO))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for detector in args.detectors:
            res = _bench_detector(detector, args.frames, args.exposure, Path(tmp))
            results.append(res)
            print(f"{detector:12s} {res['shape']} {res['mbytes_per_frame']} MB: "
                  f"CA read {res['ca_read_fps']} fr/s, trigger+read(10 ms) "
                  f"{res['trigger_read_fps_at_10ms']} fr/s, RE count {res['exposure_s']} s "
                  f"exposure: {res['re_count_s_per_frame']} s/frame "
                  f"(+{res['re_overhead_ms_per_frame']} ms); HDF5 mode "
                  f"{res['hdf5_re_count_s_per_frame']} s/frame "
                  f"(+{res['hdf5_re_overhead_ms_per_frame']} ms)", flush=True)
    summary = {"benchmark": "bench_ca", "cpus": os.cpu_count(), "results": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
