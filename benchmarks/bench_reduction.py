"""Benchmark SAXS 2D->1D reduction: pyFAI integrate1d vs the folded sparse integrator.

Usage::

    python benchmarks/bench_reduction.py [--frames N] [--npt 500]

All methods run in one process, on the same seeded Poisson int32 frames, with the same
corrections (detector mask + beamstop, dark, solid angle, polarization 0.99, monitor).
Methods are timed round-robin (interleaved) and the median per frame is reported, with the
minimum and the median of same-round speed-ups against ``integrate1d`` bbox/csr.
``folded_*`` rows use the default engine (the fused numba kernel when numba is importable);
``scipy_*`` rows force ``engine="scipy"`` (two concurrent scipy mat-vecs), interleaved in the
same rounds for a direct numba vs scipy comparison.
The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import pyFAI
from threadpoolctl import threadpool_limits

from pbi_bluesky.reduction import FoldedIntegrator, Reducer, expected_frame, make_geometry

THREADS = 2
POL = 0.99
DETECTORS = ("Pilatus1M", "Eiger4M")


def render(name: str, n_frames: int, seed: int = 0) -> dict:
    """Geometry, dark, mask and ``n_frames`` Poisson int32 frames for one detector."""
    ai = make_geometry(name, distance_m=3.0, wavelength_angstrom=1.0)
    shape = ai.detector.shape
    rng = np.random.default_rng(seed)
    dark = rng.uniform(0.0, 2.0, shape).astype(np.float32)
    rows, cols = np.indices(shape)
    cy, cx = int(ai.getFit2D()["centerY"]), int(ai.getFit2D()["centerX"])
    beamstop = (rows - cy) ** 2 + (cols - cx) ** 2 < 25**2
    expected = expected_frame(ai, lambda q: 1e3 / (1 + (q * 100) ** 2) + 2.0, flux=10.0,
                              polarization_factor=POL, dark=dark)
    frames = rng.poisson(expected, size=(n_frames, *shape)).astype(np.int32)
    monitors = rng.uniform(0.9, 1.1, n_frames) * 10.0
    return {"ai": ai, "dark": dark, "beamstop": beamstop, "frames": frames,
            "monitors": monitors}


def time_interleaved(methods: dict[str, Callable[[], object]], n_frames: int,
                     repeats: int) -> dict[str, list[float]]:
    """Wall time per frame (ms) of every method, ``repeats`` rounds run round-robin.

    Interleaving makes every method see the same (noisy, shared) machine state; one
    warm-up call per method first.
    """
    for fn in methods.values():
        fn()
    runs: dict[str, list[float]] = {key: [] for key in methods}
    for _ in range(repeats):
        for key, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            runs[key].append((time.perf_counter() - t0) * 1e3 / n_frames)
    return runs


def bench_detector(name: str, n_frames: int, npt: int, repeats: int) -> dict:
    scene = render(name, n_frames)
    ai, dark, frames, monitors = scene["ai"], scene["dark"], scene["frames"], scene["monitors"]
    t0 = time.perf_counter()
    reducer = Reducer(ai, npt=npt, mask=scene["beamstop"], dark=dark, polarization_factor=POL)
    setup_ms = (time.perf_counter() - t0) * 1e3
    exact64 = FoldedIntegrator(ai, reducer.shape, npt, reducer.q_range, mask=reducer.mask,
                               dark=dark, polarization_factor=POL, accumulate="float64")
    serial = FoldedIntegrator(ai, reducer.shape, npt, reducer.q_range, mask=reducer.mask,
                              dark=dark, polarization_factor=POL, threads=1)
    scipy2 = FoldedIntegrator(ai, reducer.shape, npt, reducer.q_range, mask=reducer.mask,
                              dark=dark, polarization_factor=POL, engine="scipy")
    scipy1 = FoldedIntegrator(ai, reducer.shape, npt, reducer.q_range, mask=reducer.mask,
                              dark=dark, polarization_factor=POL, engine="scipy", threads=1)
    mask = reducer.mask

    def pyfai(method):
        def run():
            return [ai.integrate1d(f, npt, unit="q_A^-1", method=method, mask=mask, dark=dark,
                                   polarization_factor=POL, correctSolidAngle=True,
                                   normalization_factor=m, radial_range=reducer.q_range,
                                   error_model="poisson")
                    for f, m in zip(frames, monitors, strict=True)]
        return run

    methods: dict[str, Callable[[], object]] = {
        "pyfai_bbox_csr": pyfai(("bbox", "csr", "cython")),
        "pyfai_no_csc": pyfai(("no", "csc", "cython")),
        "reducer_single": lambda: [reducer.reduce(f, monitor=m)
                                   for f, m in zip(frames, monitors, strict=True)],
        "folded_single": lambda: [reducer._folded.integrate(f, m)
                                  for f, m in zip(frames, monitors, strict=True)],
        "folded_single_1thread": lambda: [serial.integrate(f, m)
                                          for f, m in zip(frames, monitors, strict=True)],
        "folded_single_f64": lambda: [exact64.integrate(f, m)
                                      for f, m in zip(frames, monitors, strict=True)],
        "folded_batch": lambda: reducer._folded.integrate_many(frames, monitors),
        "scipy_single": lambda: [scipy2.integrate(f, m)
                                 for f, m in zip(frames, monitors, strict=True)],
        "scipy_single_1thread": lambda: [scipy1.integrate(f, m)
                                         for f, m in zip(frames, monitors, strict=True)],
        "scipy_batch": lambda: scipy2.integrate_many(frames, monitors),
        "reducer_batch": lambda: reducer.reduce_many(frames, monitors=monitors),
    }
    out: dict = {"shape": list(reducer.shape), "npt": npt, "frames": n_frames,
                 "engine": reducer._folded.engine,
                 "folded_setup_ms": round(setup_ms, 1), "methods": {}}
    runs = time_interleaved(methods, n_frames, repeats)
    ref = runs["pyfai_bbox_csr"]
    for key, times in runs.items():
        ms = statistics.median(times)
        out["methods"][key] = {
            "ms_per_frame": round(ms, 3), "frames_per_s": round(1e3 / ms, 1),
            "min_ms_per_frame": round(min(times), 3),
            "speedup_vs_pyfai_bbox_csr": round(statistics.median(ref) / ms, 2),
            # same-round ratios: robust to load changing between rounds
            "median_paired_speedup": round(statistics.median(
                r / t for r, t in zip(ref, times, strict=True)), 2),
        }

    # accuracy vs integrate1d bbox/csr on every filled bin of every frame
    refs = methods["pyfai_bbox_csr"]()
    batch_i, batch_s = reducer._folded.integrate_many(frames, monitors)
    f64 = [exact64.integrate(f, m) for f, m in zip(frames, monitors, strict=True)]
    worst = {key: [0.0, 0.0] for key in ("folded_single", "folded_batch", "folded_single_1thread",
                                         "folded_single_f64", "scipy_single")}
    vs_scipy = [0.0, 0.0]

    def rel(a, b, ok):
        return float(np.max(np.abs(a[ok] / b[ok] - 1)))

    for k, ref in enumerate(refs):
        ok = np.asarray(ref.count) > 0
        single = reducer._folded.integrate(frames[k], monitors[k])
        one = serial.integrate(frames[k], monitors[k])
        sci = scipy2.integrate(frames[k], monitors[k])
        for key, (i, s) in (("folded_single", single), ("folded_batch", (batch_i[k], batch_s[k])),
                            ("folded_single_1thread", one), ("folded_single_f64", f64[k]),
                            ("scipy_single", sci)):
            worst[key][0] = max(worst[key][0], rel(i, ref.intensity, ok))
            worst[key][1] = max(worst[key][1], rel(s, ref.sigma, ok))
        vs_scipy[0] = max(vs_scipy[0], rel(single[0], sci[0], ok))
        vs_scipy[1] = max(vs_scipy[1], rel(single[1], sci[1], ok))
    out["max_rel_diff_vs_pyfai_bbox_csr"] = {
        k: {"intensity": float(f"{v[0]:.3g}"), "sigma": float(f"{v[1]:.3g}")}
        for k, v in worst.items()
    }
    out["max_rel_diff_folded_vs_scipy"] = {"intensity": float(f"{vs_scipy[0]:.3g}"),
                                           "sigma": float(f"{vs_scipy[1]:.3g}")}
    return out


def print_table(results: dict) -> None:
    header = (f"{'detector':<10} {'method':<22} {'ms/frame':>9} {'min ms':>8} {'frames/s':>9} "
              f"{'speed-up':>9} {'paired':>7}")
    print(header)
    print("-" * len(header))
    for det, res in results["detectors"].items():
        for key, m in res["methods"].items():
            print(f"{det:<10} {key:<22} {m['ms_per_frame']:>9.2f} {m['min_ms_per_frame']:>8.2f} "
                  f"{m['frames_per_s']:>9.1f} {m['speedup_vs_pyfai_bbox_csr']:>8.2f}x "
                  f"{m['median_paired_speedup']:>6.2f}x")
        for key, d in res["max_rel_diff_vs_pyfai_bbox_csr"].items():
            print(f"{det:<10} max rel diff {key:<22} I {d['intensity']:.2e}  "
                  f"sigma {d['sigma']:.2e}")
        d = res["max_rel_diff_folded_vs_scipy"]
        print(f"{det:<10} max rel diff {res['engine']} vs scipy engine    I {d['intensity']:.2e}  "
              f"sigma {d['sigma']:.2e}")
        print(f"{det:<10} folded integrator setup {res['folded_setup_ms']:.0f} ms "
              f"(shape {tuple(res['shape'])}, npt {res['npt']})")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5, help="frames per detector")
    parser.add_argument("--npt", type=int, default=500, help="number of q bins")
    parser.add_argument("--repeats", type=int, default=15,
                        help="timed round-robin rounds (median reported)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with threadpool_limits(THREADS):
        results = {
            "threads": THREADS,
            "pyfai_version": pyFAI.version,
            "numpy_version": np.__version__,
            "python": platform.python_version(),
            "detectors": {name: bench_detector(name, args.frames, args.npt, args.repeats)
                          for name in DETECTORS},
        }
    print_table(results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
