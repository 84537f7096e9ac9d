"""Benchmark SAXS 2D->1D reduction: pyFAI integrate1d vs the folded integrator's engines.

Usage::

    python benchmarks/bench_reduction.py [--frames N] [--npt 500] [--repeats R]

All methods run in one process, on the same seeded Poisson int32 frames, with the same
corrections (detector mask + beamstop, dark, solid angle, polarization 0.99, monitor).
Methods are timed round-robin (interleaved, one warm-up call each) and the median per frame
is reported, with the minimum and *paired* ratios: each round's time divided by the same
round's time of the reference (``pyfai_no_csc``, pyFAI's fastest CPU method here, and the
read-once ``floor``), then the median over rounds -- robust to load changing between rounds.

Methods (``ms_per_frame`` each, under ``detectors.<name>.methods``):

``floor``
    ``np.add.reduce`` over each int32 frame: reading the frame once (one thread).
``pyfai_bbox_csr`` / ``pyfai_no_csc``
    ``ai.integrate1d`` with ``("bbox", "csr", "cython")`` / ``("no", "csc", "cython")``.
``reducer_single`` / ``reducer_batch``
    :class:`Reducer` ``reduce`` per frame / ``reduce_many`` on the stack (Profiles with
    provenance; default engine).
``folded_single`` / ``folded_single_1thread`` / ``folded_batch``
    :class:`FoldedIntegrator` alone (I and sigma arrays), 2 threads / 1 thread / batch.
``scipy_single``
    The scipy fallback engine.
``torch_batch``
    The torch engine's ``integrate_many`` on the device it picked (``torch_device``).
``torch_device_batch``
    The torch engine's device-side ``integrate_tensor`` on frames already uploaded (what a
    GPU pipeline does); on a GPU it is compared with pyFAI's published OpenCL record.
``torch_device_chain``
    The same plus the model half on the same device (:class:`DeviceEmbedder`: resampling
    onto the model grid, input channels, the shipped default model's CNN): frames to
    embeddings without leaving the device.

Also per detector: accuracy against ``integrate1d`` (max relative difference on every filled
bin of every frame), bytes moved per frame (frame, compact operator, pyFAI's CSR) with the
bandwidth each method achieves, the folded operator set-up time cold / first build with the
cache / warm from the cache, and the targets of issue 14 as measured ratios.

The last line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pyFAI
from threadpoolctl import threadpool_limits

from pbi_bluesky.reduction import FoldedIntegrator, Reducer, expected_frame, make_geometry

THREADS = 2
POL = 0.99
DETECTORS = ("Pilatus1M", "Eiger4M")
CORE_METHODS = ("floor", "pyfai_bbox_csr", "pyfai_no_csc", "reducer_single", "reducer_batch",
                "folded_single", "folded_batch")
PYFAI_OPENCL_EIGER4M_FPS = 1300.0
"""pyFAI's published record: about 1300 Eiger 4M frames/s integrated on one workstation GPU
(OpenCL CSR), the figure issue 14 compares a GPU run against."""


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


def paired(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a / b`` (same-round ratio)."""
    return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 2)


def setup_times(name: str, npt: int, mask, dark, q_range, shape) -> dict:
    """Folded operator set-up (ms): no cache, first build into an empty cache, warm hit.

    Each from a fresh geometry (pyFAI caches its pixel arrays inside the geometry object),
    in this process (numba already compiled; ``bench_startup.py`` measures fresh processes).
    """
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-opcache-") as folder:
        for label, cache in (("cold_no_cache_ms", False), ("first_build_with_cache_ms", folder),
                             ("warm_from_cache_ms", folder)):
            ai = make_geometry(name, distance_m=3.0, wavelength_angstrom=1.0)
            t0 = time.perf_counter()
            fi = FoldedIntegrator(ai, shape, npt, q_range, mask=mask, dark=dark,
                                  polarization_factor=POL, cache=cache)
            out[label] = round((time.perf_counter() - t0) * 1e3, 1)
            out[label.replace("_ms", "_status")] = fi.setup_info["cache"]
        out["cache_file_mb"] = round(os.path.getsize(fi.setup_info["path"]) / 2**20, 1)
    return out


def device_chain(engine, folded):
    """Frames -> I(q) -> model grid -> CNN embeddings on the torch engine's device, with the
    shipped default model (``None`` if it cannot be loaded or its grid is not covered)."""
    import torch

    from pbi_bluesky.models.bundle import load_default_model
    from pbi_bluesky.models.torch_head import DeviceEmbedder

    try:
        det = load_default_model()
        core = det.members[0] if getattr(det, "members", None) else det
        head = DeviceEmbedder(core, det.grid, folded.q, folded.count > 0, device=engine.device)
    except Exception as exc:  # noqa: BLE001 - report, do not fail the benchmark
        logging.warning("no device chain: %s", exc)
        return None
    recipes = np.zeros(1, dtype=np.int64)

    def run(uploaded, monitors):
        intensity, sigma = engine.integrate_tensor(uploaded, monitors)
        emb = head(intensity, sigma, np.broadcast_to(recipes, (len(monitors),)))[0]
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        return emb
    return run


def bench_detector(name: str, n_frames: int, npt: int, repeats: int,
                   only: list[str] | None = None) -> dict:
    scene = render(name, n_frames)
    ai, dark, frames, monitors = scene["ai"], scene["dark"], scene["frames"], scene["monitors"]
    t0 = time.perf_counter()
    reducer = Reducer(ai, npt=npt, mask=scene["beamstop"], dark=dark, polarization_factor=POL)
    reducer_setup_ms = (time.perf_counter() - t0) * 1e3
    folded = reducer._folded
    mask, q_range, shape = reducer.mask, reducer.q_range, reducer.shape

    def variant(**kw) -> FoldedIntegrator:
        return FoldedIntegrator(ai, shape, npt, q_range, mask=mask, dark=dark,
                                polarization_factor=POL, **kw)

    serial = variant(threads=1)
    scipy2 = variant(engine="scipy")
    torch_fi = variant(engine="torch")
    torch_engine = torch_fi._engine
    uploaded = torch_engine.upload(frames)

    def pyfai(method):
        def run():
            return [ai.integrate1d(f, npt, unit="q_A^-1", method=method, mask=mask, dark=dark,
                                   polarization_factor=POL, correctSolidAngle=True,
                                   normalization_factor=m, radial_range=q_range,
                                   error_model="poisson")
                    for f, m in zip(frames, monitors, strict=True)]
        return run

    def device_batch():
        i, s = torch_engine.integrate_tensor(uploaded, monitors)
        if torch_engine.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        return i, s

    # the default model's grid starts at q = 0.008 1/A, inside this beamstop's shadow: the
    # chain gets its own torch integrator with the detector's gaps as the only mask
    chain_fi = FoldedIntegrator(ai, shape, npt, (0.004, q_range[1]), mask=ai.detector.mask,
                                dark=dark, polarization_factor=POL, engine="torch")
    chain = device_chain(chain_fi._engine, chain_fi)

    pairs = list(zip(frames, monitors, strict=True))
    methods: dict[str, Callable[[], object]] = {
        "floor": lambda: [np.add.reduce(f, axis=None) for f in frames],
        "pyfai_bbox_csr": pyfai(("bbox", "csr", "cython")),
        "pyfai_no_csc": pyfai(("no", "csc", "cython")),
        "reducer_single": lambda: [reducer.reduce(f, monitor=m) for f, m in pairs],
        "reducer_batch": lambda: reducer.reduce_many(frames, monitors=monitors),
        "folded_single": lambda: [folded.integrate(f, m) for f, m in pairs],
        "folded_single_1thread": lambda: [serial.integrate(f, m) for f, m in pairs],
        "folded_batch": lambda: folded.integrate_many(frames, monitors),
        "scipy_single": lambda: [scipy2.integrate(f, m) for f, m in pairs],
        "torch_batch": lambda: torch_fi.integrate_many(frames, monitors),
        "torch_device_batch": device_batch,
    }
    if chain is not None:
        chain_frames = chain_fi._engine.upload(frames)
        methods["torch_device_chain"] = lambda: chain(chain_frames, monitors)
    if only:
        keep = {*CORE_METHODS, *only}
        methods = {k: v for k, v in methods.items() if k in keep}
    load_before = os.getloadavg()[0]
    runs = time_interleaved(methods, n_frames, repeats)
    load_after = os.getloadavg()[0]
    out: dict = {"shape": list(shape), "npt": npt, "frames": n_frames,
                 "engine": folded.engine, "threads": folded.threads,
                 "torch_device": str(torch_engine.device),
                 "reducer_setup_ms": round(reducer_setup_ms, 1),
                 "load_average": [round(load_before, 2), round(load_after, 2)],
                 "methods": {}}
    for key, times in runs.items():
        ms = statistics.median(times)
        out["methods"][key] = {
            "ms_per_frame": round(ms, 3), "frames_per_s": round(1e3 / ms, 1),
            "min_ms_per_frame": round(min(times), 3),
            "x_floor": paired(times, runs["floor"]),
            "speedup_vs_pyfai_no_csc": paired(runs["pyfai_no_csc"], times),
            "speedup_vs_pyfai_bbox_csr": paired(runs["pyfai_bbox_csr"], times),
        }

    # bytes per frame and achieved bandwidth
    op = folded.op
    csr_nnz = int(op.to_csr().nnz)
    frame_bytes = int(frames[0].nbytes)
    out["memory"] = {
        "frame_mb": round(frame_bytes / 2**20, 2),
        "compact_operator_mb": round(op.nbytes / 2**20, 2),
        "pyfai_csr_mb": round((csr_nnz * 8 + (npt + 1) * 8) / 2**20, 2),
        "exception_pixels": int(op.ex_pixel.size),
        "floor_gb_per_s": round(frame_bytes / (out["methods"]["floor"]["ms_per_frame"] * 1e6),
                                2),
        "folded_single_gb_per_s": round(
            (frame_bytes + op.nbytes) / (out["methods"]["folded_single"]["ms_per_frame"] * 1e6),
            2),
        "folded_batch_gb_per_s": round(
            (frame_bytes + op.nbytes / min(n_frames, folded._engine.chunk)
             if folded.engine == "numba" else frame_bytes + op.nbytes)
            / (out["methods"]["folded_batch"]["ms_per_frame"] * 1e6), 2),
    }
    m = out["methods"]
    out["targets"] = {
        "reducer_single_vs_no_csc": m["reducer_single"]["speedup_vs_pyfai_no_csc"],
        "reducer_batch_vs_no_csc": m["reducer_batch"]["speedup_vs_pyfai_no_csc"],
        "reducer_single_x_floor": m["reducer_single"]["x_floor"],
        "reducer_batch_x_floor": m["reducer_batch"]["x_floor"],
        "batch_faster_than_single": paired(runs["reducer_single"], runs["reducer_batch"]),
        "goal": ">= 3x pyfai_no_csc and <= 4x floor; batch/single speed-up > 1",
    }
    if torch_engine.device.type == "cuda" and name == "Eiger4M" and "torch_device_batch" in m:
        fps = m["torch_device_batch"]["frames_per_s"]
        out["gpu_vs_pyfai_opencl_record"] = {"frames_per_s": fps,
                                             "pyfai_opencl_record": PYFAI_OPENCL_EIGER4M_FPS,
                                             "ratio": round(fps / PYFAI_OPENCL_EIGER4M_FPS, 2)}

    # accuracy vs integrate1d bbox/csr on every filled bin of every frame
    refs = methods["pyfai_bbox_csr"]()
    results = {
        "folded_single": [folded.integrate(f, mo) for f, mo in pairs],
        "folded_single_1thread": [serial.integrate(f, mo) for f, mo in pairs],
        "scipy_single": [scipy2.integrate(f, mo) for f, mo in pairs],
    }
    for key, stack in (("folded_batch", folded.integrate_many(frames, monitors)),
                       ("torch_batch", torch_fi.integrate_many(frames, monitors))):
        results[key] = list(zip(stack[0], stack[1], strict=True))
    worst = {key: [0.0, 0.0] for key in results}
    for k, ref in enumerate(refs):
        ok = np.asarray(ref.count) > 0
        for key, res in results.items():
            i, s = res[k]
            worst[key][0] = max(worst[key][0], float(np.max(np.abs(i[ok] / ref.intensity[ok]
                                                                    - 1))))
            worst[key][1] = max(worst[key][1], float(np.max(np.abs(s[ok] / ref.sigma[ok] - 1))))
    out["max_rel_diff_vs_pyfai_bbox_csr"] = {
        k: {"intensity": float(f"{v[0]:.3g}"), "sigma": float(f"{v[1]:.3g}")}
        for k, v in worst.items()}
    out["setup"] = setup_times(name, npt, mask, dark, q_range, shape)
    return out


def print_table(results: dict) -> None:
    header = (f"{'detector':<10} {'method':<22} {'ms/frame':>9} {'min ms':>8} {'frames/s':>9} "
              f"{'x floor':>8} {'vs no/csc':>9} {'vs csr':>7}")
    print(header)
    print("-" * len(header))
    for det, res in results["detectors"].items():
        for key, m in res["methods"].items():
            print(f"{det:<10} {key:<22} {m['ms_per_frame']:>9.2f} {m['min_ms_per_frame']:>8.2f} "
                  f"{m['frames_per_s']:>9.1f} {m['x_floor']:>7.2f}x "
                  f"{m['speedup_vs_pyfai_no_csc']:>8.2f}x {m['speedup_vs_pyfai_bbox_csr']:>6.2f}x")
        for key, d in res["max_rel_diff_vs_pyfai_bbox_csr"].items():
            print(f"{det:<10} max rel diff {key:<22} I {d['intensity']:.2e}  "
                  f"sigma {d['sigma']:.2e}")
        mem = res["memory"]
        print(f"{det:<10} bytes/frame: frame {mem['frame_mb']} MiB, compact operator "
              f"{mem['compact_operator_mb']} MiB (pyFAI CSR {mem['pyfai_csr_mb']} MiB); "
              f"floor {mem['floor_gb_per_s']} GB/s, folded single "
              f"{mem['folded_single_gb_per_s']} GB/s, batch {mem['folded_batch_gb_per_s']} GB/s")
        st = res["setup"]
        print(f"{det:<10} operator set-up: no cache {st['cold_no_cache_ms']:.0f} ms, first "
              f"build with cache {st['first_build_with_cache_ms']:.0f} ms, warm "
              f"{st['warm_from_cache_ms']:.0f} ms ({st['cache_file_mb']} MiB file)")
        print(f"{det:<10} targets: {res['targets']}  (engine {res['engine']}, torch on "
              f"{res['torch_device']}, load {res['load_average']})")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="frames per detector")
    parser.add_argument("--npt", type=int, default=500, help="number of q bins")
    parser.add_argument("--repeats", type=int, default=15,
                        help="timed round-robin rounds (median reported)")
    parser.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    parser.add_argument("--methods", nargs="+", default=None,
                        help="time these besides the core rows (floor, pyFAI, reducer_*, "
                             "folded_single/batch), e.g. --methods torch_batch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from pbi_bluesky.reduction.torch_engine import default_device

    with threadpool_limits(THREADS):
        torch.set_num_threads(THREADS)
        results = {
            "threads": THREADS,
            "pyfai_version": pyFAI.version,
            "numpy_version": np.__version__,
            "torch_version": torch.__version__,
            "device": default_device(),
            "cpu": platform.processor() or platform.machine(),
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "command": " ".join(["python", *sys.argv]),
            "detectors": {name: bench_detector(name, args.frames, args.npt, args.repeats,
                                               args.methods)
                          for name in args.detectors},
        }
    print_table(results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
