"""Benchmark the live scorer inside a real bluesky RunEngine (Pilatus 1M frames).

Usage::

    python benchmarks/bench_live.py [--frames N] [--stream-frames M] [--repeats R]

Everything runs in one process, one RunEngine, with an ophyd.sim detector (``PoolDetector``:
``SynSignal`` components for the image, I0 and transmission) that returns pre-rendered
int32 Pilatus 1M frames (1043 x 981) of simulated PS/PMMA 50:50 specimens from a pool. Each
trigger hands out a *fresh copy* of a pool frame, as a real detector delivers a new buffer,
so the memory held by the scorer's queue is real.

Four measurements:

1. **Latency** at 10 frames/s (``--frames``, default 100): for each event the time the
   RunEngine dispatched the event document (a spy callback subscribed before the scorer)
   and the time its ``FrameResult`` was put in the channel (a ``VerdictChannel`` subclass
   that timestamps ``put``), both ``time.perf_counter``. Also the latency from the event
   document's own ``time`` field (wall clock, includes the RunEngine's bundling).
2. **Scan overhead**: the same scan with no sleep, without and with the scorer subscribed,
   interleaved (order alternated every repeat). The scorer's worker shares the same
   cores, so the time until its queue drained (all results in) is reported as well.
   Before each scan the previous run is fully drained so scans never overlap with work.
3. **Sustained stream** (``--stream-frames``, default 1000) at the highest rate the RunEngine
   reaches (no sleep), bounded queue, ``overflow="block"``; then the same with
   ``overflow="shed"`` and a small queue to show shedding is counted. Peak RSS growth is
   measured with ``/proc/self/status`` VmHWM after resetting it via
   ``/proc/self/clear_refs`` (falls back to a 20 ms VmRSS sampler).

4. **Sustained HDF5 chain** (``--hdf5-frames``, default 400 Pilatus 1M and 120 Eiger 4M):
   frames written once to an areaDetector-layout HDF5 file and referenced by
   StreamResource/StreamDatum, pushed into a ``LiveScorer`` as fast as possible
   (:mod:`live_hdf5`): frames/s from the first document to the last verdict of the second of
   two identical scans (the first scan's rate is reported beside it), every frame accounted
   for, and paced (10 Hz) document-to-verdict latency. JSON keys
   ``sustained_hdf5_frames_per_s`` ``{"Pilatus1M": x, "Eiger4M": y}`` and ``latency_ms``
   ``{"p50", "p95"}`` (from measurement 1).

Threads: ``threadpool_limits(2)`` (BLAS/OpenMP) and ``torch.set_num_threads(1)`` (the model
is a small 1D network; intra-op threads do not help it and would compete with the
RunEngine thread and the reducer's helper thread on a 2-core machine).

A readable table is printed, then one final JSON line with every figure.
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
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import live_hdf5  # noqa: E402 - benchmarks/live_hdf5.py

THREADS_BLAS = 2
THREADS_TORCH = 1
FRAME_SHAPE = [1043, 981]


# -- memory helpers ---------------------------------------------------------------------
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); True if it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") <= _status_kb("VmRSS") + 1024


class RssSampler:
    """Peak VmRSS seen by a background thread (fallback when VmHWM cannot be reset)."""

    def __init__(self, period: float = 0.02) -> None:
        self.period, self.peak = period, _status_kb("VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.peak = max(self.peak, _status_kb("VmRSS"))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kb("VmRSS"))


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


# -- the benchmark ----------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100, help="frames per scan (1, 2)")
    parser.add_argument("--rate", type=float, default=10.0, help="frames/s for latency")
    parser.add_argument("--stream-frames", type=int, default=1000, help="frames (3)")
    parser.add_argument("--repeats", type=int, default=9, help="overhead scan pairs (2)")
    parser.add_argument("--queue-size", type=int, default=32, help="queue bound (3, block)")
    parser.add_argument("--shed-queue-size", type=int, default=8, help="queue bound (3, shed)")
    parser.add_argument("--pool", type=int, default=12, help="pre-rendered frames")
    parser.add_argument("--hdf5-frames", type=int, nargs=2, default=[400, 120],
                        metavar=("PILATUS1M", "EIGER4M"),
                        help="frames of the sustained HDF5 chain per detector (4); 0 skips")
    args = parser.parse_args()

    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    torch.set_num_threads(THREADS_TORCH)
    threadpool_limits(THREADS_BLAS)  # process-wide, kept for the whole run

    import bluesky
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp
    import ophyd
    from bluesky import RunEngine
    from ophyd import Component as Cpt
    from ophyd import Device
    from ophyd.sim import SynSignal

    from pbi_bluesky.live import LiveScorer
    from pbi_bluesky.live.channel import VerdictChannel
    from pbi_bluesky.models.bundle import load_default_model
    from pbi_bluesky.simulate import (
        PS_PMMA,
        Instrument,
        apply_anomaly,
        expected_dark,
        nominal_state,
        render_frame,
    )

    # per-frame warnings (shed frames, anomalies) would flood stderr in the stream phases;
    # every one of them is counted in the channel summaries instead
    logging.getLogger("pbi_bluesky").setLevel(logging.ERROR)

    t_setup = time.perf_counter()
    instrument = Instrument()
    with tempfile.TemporaryDirectory() as tmp:
        poni_path = Path(tmp) / "pilatus1m.poni"
        instrument.write_poni(poni_path)
        poni_text = poni_path.read_text()
    mask, dark = instrument.mask, expected_dark(instrument)
    model = load_default_model()

    rng = np.random.default_rng(20260101)
    pool = []  # (frame, i0, transmission, anomalous)
    n_anom = max(1, args.pool // 12)  # ~1 in 12 frames is anomalous (Shapley path)
    for i in range(args.pool):
        state = nominal_state(PS_PMMA, "50:50", rng)
        anomalous = i % (args.pool // n_anom) == args.pool // n_anom - 1
        if anomalous:
            state = apply_anomaly(state, "contamination", 0.8, rng)
        shot = render_frame(state, instrument, rng)
        assert shot.frame.dtype == np.int32 and list(shot.frame.shape) == FRAME_SHAPE
        pool.append((shot.frame, float(shot.monitor), float(shot.transmission), anomalous))
    thickness = float(PS_PMMA.thickness_cm)
    setup_s = time.perf_counter() - t_setup

    # -- ophyd.sim detector ---------------------------------------------------------------
    class ImageSignal(SynSignal):
        """SynSignal whose description carries the image shape and ``dtype_numpy`` ('<i4')."""

        def describe(self):
            res = super().describe()
            value = np.asarray(self.get())
            res[self.name].update(dtype="array", shape=list(value.shape),
                                  dtype_numpy=value.dtype.str)
            return res

    class PoolDetector(Device):
        """Pilatus 1M stand-in: each trigger takes the next pool frame (a fresh copy)."""

        image = Cpt(ImageSignal, kind="hinted")
        i0 = Cpt(SynSignal, kind="normal")
        transmission = Cpt(SynSignal, kind="normal")

        def __init__(self, *a, pool, **kw):
            super().__init__(*a, **kw)
            self._pool, self._index, self._shot = pool, -1, pool[0]
            self.image.sim_set_func(lambda: self._shot[0].copy())
            self.i0.sim_set_func(lambda: self._shot[1])
            self.transmission.sim_set_func(lambda: self._shot[2])
            self.image.put(pool[0][0].copy())
            self.i0.put(pool[0][1])
            self.transmission.put(pool[0][2])

        def trigger(self):
            self._index = (self._index + 1) % len(self._pool)
            self._shot = self._pool[self._index]
            self.i0.trigger()
            self.transmission.trigger()
            return self.image.trigger()

    det = PoolDetector(name="pilatus", pool=pool)
    desc = det.describe()
    assert desc["pilatus_image"]["shape"] == FRAME_SHAPE, desc["pilatus_image"]
    assert desc["pilatus_image"]["dtype_numpy"] == "<i4", desc["pilatus_image"]
    assert {"pilatus_i0", "pilatus_transmission"} <= set(desc)

    # -- timing hooks ---------------------------------------------------------------------
    class EmitSpy:
        """Subscribed before the scorer: when the RunEngine dispatched each event."""

        def __init__(self):
            self.desc_run: dict[str, str] = {}
            self.emitted: dict[tuple[str, int], tuple[float, float]] = {}

        def __call__(self, name, doc):
            if name == "event":
                run = self.desc_run.get(doc["descriptor"])
                self.emitted[(run, doc["seq_num"])] = (time.perf_counter(), doc["time"])
            elif name == "descriptor":
                self.desc_run[doc["uid"]] = doc["run_start"]

    class TimedChannel(VerdictChannel):
        """A VerdictChannel stamping when each FrameResult arrives."""

        def __init__(self):
            super().__init__()
            self.arrived: dict[tuple[str, int], tuple[float, float]] = {}

        def put(self, result):
            self.arrived[(result.raw_uid, result.raw_seq_num)] = (time.perf_counter(),
                                                                  time.time())
            super().put(result)

    def make_scorer(**kw):
        return LiveScorer(model, channel=TimedChannel(), mask=mask, dark=dark,
                          npt=instrument.npt, **kw)

    RE = RunEngine({})
    uids: list[str] = []
    RE.subscribe(lambda name, doc: uids.append(doc["uid"]) if name == "start" else None)

    md = {"geometry": poni_text, "thickness_cm": thickness, "composition": "50:50",
          "sample": "PS/PMMA 50:50 (bench)"}

    def scan(n, period=None, sample=None):
        @bpp.run_decorator(md={**md, "sample": sample or md["sample"], "num_points": n})
        def inner():
            t0 = time.monotonic()
            for i in range(n):
                if period:
                    wait = t0 + i * period - time.monotonic()
                    if wait > 0:
                        yield from bps.sleep(wait)
                yield from bps.trigger_and_read([det])
        return (yield from inner())

    def run_scan(n, period=None, sample=None):
        t0 = time.perf_counter()
        RE(scan(n, period, sample))
        return uids[-1], time.perf_counter() - t0

    def drain(scorer, uid, timeout=300.0):
        t0 = time.perf_counter()
        ok = scorer.channel.wait_for_run(uid, timeout) is not None and scorer.flush(timeout)
        return ok, time.perf_counter() - t0

    def counts(scorer, uid):
        s = scorer.channel.summaries.get(uid, {})
        return {k: s.get(k) for k in ("frames", "scored", "failed", "shed", "flagged",
                                      "accounted", "verdict")}

    figures: dict = {
        "python": platform.python_version(), "bluesky": bluesky.__version__,
        "ophyd": ophyd.__version__, "torch": torch.__version__,
        "cpus": len(os.sched_getaffinity(0)), "threads_blas": THREADS_BLAS,
        "threads_torch": THREADS_TORCH, "threadpools": [
            {k: p[k] for k in ("user_api", "internal_api", "num_threads")}
            for p in threadpool_info()],
        "frame_shape": FRAME_SHAPE, "frame_dtype": "<i4",
        "frame_mb": round(pool[0][0].nbytes / 1e6, 2), "pool_frames": len(pool),
        "pool_anomalous": sum(p[3] for p in pool), "setup_s": round(setup_s, 2),
    }

    # -- 1. latency at 10 frames/s ------------------------------------------------------------
    print(f"[1] latency: {args.frames} frames at {args.rate:g} frames/s ...", flush=True)
    spy = EmitSpy()
    lat_scorer = make_scorer(queue_size=64)
    RE.subscribe(spy)
    tok = RE.subscribe(lat_scorer)
    # warm-up run: builds the reducer (pyFAI geometry -> sparse integrator) on first frame
    w_uid, _ = run_scan(5, 1.0 / args.rate, sample="warm-up")
    drain(lat_scorer, w_uid)
    cold = [lat_scorer.channel.arrived[(w_uid, s)][0] - spy.emitted[(w_uid, s)][0]
            for s in range(1, 6)]
    uid, scan_s = run_scan(args.frames, 1.0 / args.rate, sample="latency")
    ok, drain_s = drain(lat_scorer, uid)
    RE.unsubscribe(tok)
    lat, lat_doc, lat_flag = [], [], []
    flagged_seq = {r.raw_seq_num for r in lat_scorer.channel.results(uid) if r.is_anomaly}
    for seq in range(1, args.frames + 1):
        emitted, doc_time = spy.emitted[(uid, seq)]
        arrived, arrived_wall = lat_scorer.channel.arrived[(uid, seq)]
        lat.append((arrived - emitted) * 1e3)
        lat_doc.append((arrived_wall - doc_time) * 1e3)
        if seq in flagged_seq:
            lat_flag.append(lat[-1])
    c1 = counts(lat_scorer, uid)
    figures["latency"] = {
        "frames": args.frames, "rate_hz": args.rate, "scan_s": round(scan_s, 3),
        "achieved_hz": round(args.frames / scan_s, 2), "drained": ok,
        "emit_to_result_ms": {"median": round(pct(lat, 50), 2), "p95": round(pct(lat, 95), 2),
                              "max": round(max(lat), 2), "min": round(min(lat), 2)},
        "doc_time_to_result_ms": {"median": round(pct(lat_doc, 50), 2),
                                  "p95": round(pct(lat_doc, 95), 2)},
        "flagged_frames_ms": {"n": len(lat_flag), "median": round(pct(lat_flag, 50), 2),
                              "max": round(max(lat_flag), 2) if lat_flag else None},
        "cold_first_frame_ms": round(cold[0] * 1e3, 1),
        "warmup_next4_ms_median": round(statistics.median(cold[1:]) * 1e3, 2),
        "counts": c1,
        "target_median_ms": 30, "target_p95_ms": 100,
        "meets_median": pct(lat, 50) <= 30, "meets_p95": pct(lat, 95) <= 100,
    }

    # -- 2. scan overhead -------------------------------------------------------------------
    print(f"[2] overhead: {args.repeats} x ({args.frames}-frame scan without / with scorer)"
          " ...", flush=True)
    ov_scorer = make_scorer(queue_size=64)
    tok = RE.subscribe(ov_scorer)  # warm-up (reducer build, caches), then unsubscribe
    w_uid, _ = run_scan(5, sample="warm-up")
    drain(ov_scorer, w_uid)
    RE.unsubscribe(tok)
    run_scan(args.frames, sample="warm-up bare")
    bare, scored, drains, pair_ratio, pair_ratio_done, ov_counts = [], [], [], [], [], []
    for r in range(args.repeats):
        order = ("bare", "scored") if r % 2 == 0 else ("scored", "bare")
        t = {}
        for kind in order:
            if kind == "bare":
                _, t["bare"] = run_scan(args.frames, sample="overhead bare")
            else:
                tok = RE.subscribe(ov_scorer)
                uid, t["scored"] = run_scan(args.frames, sample="overhead scored")
                RE.unsubscribe(tok)
                ok, t["drain"] = drain(ov_scorer, uid)
                ov_counts.append(counts(ov_scorer, uid))
        bare.append(t["bare"])
        scored.append(t["scored"])
        drains.append(t["drain"])
        pair_ratio.append(t["scored"] / t["bare"])
        pair_ratio_done.append((t["scored"] + t["drain"]) / t["bare"])
    ratio = statistics.median(scored) / statistics.median(bare)
    figures["overhead"] = {
        "frames": args.frames, "repeats": args.repeats,
        "bare_scan_s": {"median": round(statistics.median(bare), 4),
                        "min": round(min(bare), 4), "max": round(max(bare), 4)},
        "scored_scan_s": {"median": round(statistics.median(scored), 4),
                          "min": round(min(scored), 4), "max": round(max(scored), 4)},
        "ratio_of_medians": round(ratio, 3),
        "ratio_paired_median": round(statistics.median(pair_ratio), 3),
        "ratio_paired_max": round(max(pair_ratio), 3),
        "drain_after_scan_s": {"median": round(statistics.median(drains), 4),
                               "max": round(max(drains), 4)},
        "scan_plus_drain_over_bare_paired_median": round(statistics.median(pair_ratio_done), 3),
        "bare_frames_per_s": round(args.frames / statistics.median(bare), 1),
        "all_accounted": all(c["accounted"] == c["frames"] == args.frames for c in ov_counts),
        "shed_total": sum(c["shed"] for c in ov_counts),
        "failed_total": sum(c["failed"] for c in ov_counts),
        "target_ratio": 1.05, "meets_ratio": ratio <= 1.05,
    }

    # -- 3. sustained stream ----------------------------------------------------------------
    def stream(overflow, queue_size):
        scorer = make_scorer(queue_size=queue_size, overflow=overflow)
        tok = RE.subscribe(scorer)
        w_uid, _ = run_scan(3, sample="warm-up")
        drain(scorer, w_uid)
        spy_s = EmitSpy()
        tok_spy = RE.subscribe(spy_s)
        rss0 = _status_kb("VmRSS")
        hwm_reset = _reset_hwm()
        with RssSampler() as sampler:
            t0 = time.perf_counter()
            uid, scan_s = run_scan(args.stream_frames, sample=f"stream {overflow}")
            ok, drain_s = drain(scorer, uid)
            total_s = time.perf_counter() - t0
        hwm = _status_kb("VmHWM")
        RE.unsubscribe(tok)
        RE.unsubscribe(tok_spy)
        c = counts(scorer, uid)
        arrived = [v[0] for (u, _), v in scorer.channel.arrived.items() if u == uid]
        emitted = [v[0] for (u, _), v in spy_s.emitted.items() if u == uid]
        span = max(arrived) - min(emitted)
        done = c["scored"] + c["failed"]
        lat = [(scorer.channel.arrived[k][0] - spy_s.emitted[k][0]) * 1e3
               for k in spy_s.emitted if k[0] == uid and k in scorer.channel.arrived]
        return {
            "overflow": overflow, "queue_size": queue_size,
            "frames": args.stream_frames, "received": c["frames"], "scored": c["scored"],
            "failed": c["failed"], "shed": c["shed"], "flagged": c["flagged"],
            "accounted": c["accounted"],
            "zero_lost": c["frames"] == args.stream_frames == c["accounted"]
            == c["scored"] + c["failed"] + c["shed"],
            "results_in_channel": len(arrived), "drained": ok,
            "scan_s": round(scan_s, 3), "drain_after_scan_s": round(drain_s, 3),
            "total_s": round(total_s, 3),
            "events_per_s": round(args.stream_frames / scan_s, 1),
            "processed_per_s": round(done / span, 1),
            "latency_ms": {"median": round(pct(lat, 50), 1), "p95": round(pct(lat, 95), 1)},
            "rss_before_mb": round(rss0 / 1024, 1),
            "peak_rss_growth_mb_vmhwm": round((hwm - rss0) / 1024, 1) if hwm_reset else None,
            "peak_rss_growth_mb_sampled": round((sampler.peak - rss0) / 1024, 1),
            "vmhwm_reset": hwm_reset,
            "queue_bound_mb": round(queue_size * pool[0][0].nbytes / 1e6, 1),
        }

    print(f"[3] sustained: {args.stream_frames} frames, no sleep, overflow=block, "
          f"queue {args.queue_size} ...", flush=True)
    figures["stream_block"] = stream("block", args.queue_size)
    print(f"[3b] sustained: {args.stream_frames} frames, no sleep, overflow=shed, "
          f"queue {args.shed_queue_size} ...", flush=True)
    figures["stream_shed"] = stream("shed", args.shed_queue_size)
    # -- 4. sustained HDF5 chain (StreamResource/StreamDatum, as ophyd-async writes) --------
    figures["sustained_hdf5"] = {}
    for det, n in zip(("Pilatus1M", "Eiger4M"), args.hdf5_frames, strict=True):
        if n <= 0:
            continue
        print(f"[4] sustained HDF5 chain: {n} {det} frames ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="pbi-bench-hdf5-") as tmp:
            figures["sustained_hdf5"][det] = live_hdf5.measure(det, n, Path(tmp))
    figures["sustained_hdf5_frames_per_s"] = {
        k: v["frames_per_s"] for k, v in figures["sustained_hdf5"].items()}
    figures["sustained_hdf5_targets"] = {"Pilatus1M": 250, "Eiger4M": 60}
    figures["latency_ms"] = {"p50": figures["latency"]["emit_to_result_ms"]["median"],
                             "p95": figures["latency"]["emit_to_result_ms"]["p95"]}
    figures["final_rss_mb"] = round(_status_kb("VmRSS") / 1024, 1)
    figures["final_vmhwm_mb"] = round(_status_kb("VmHWM") / 1024, 1)

    # -- table ----------------------------------------------------------------------------
    L, OV, B, S = (figures[k] for k in ("latency", "overhead", "stream_block", "stream_shed"))
    yes = {True: "MET", False: "NOT MET"}
    rows = [
        ("1 latency", "frames @ rate (achieved)",
         f"{L['frames']} @ {L['rate_hz']:g}/s ({L['achieved_hz']}/s)", ""),
        ("", "emit->result median", f"{L['emit_to_result_ms']['median']} ms",
         f"<= 30 ms: {yes[L['meets_median']]}"),
        ("", "emit->result p95", f"{L['emit_to_result_ms']['p95']} ms",
         f"<= 100 ms: {yes[L['meets_p95']]}"),
        ("", "emit->result min / max",
         f"{L['emit_to_result_ms']['min']} / {L['emit_to_result_ms']['max']} ms", ""),
        ("", "doc.time->result median / p95",
         f"{L['doc_time_to_result_ms']['median']} / {L['doc_time_to_result_ms']['p95']} ms", ""),
        ("", "flagged frames (n, median)",
         f"{L['flagged_frames_ms']['n']}, {L['flagged_frames_ms']['median']} ms", ""),
        ("", "cold first frame (warm-up run)", f"{L['cold_first_frame_ms']} ms",
         "reducer built"),
        ("", "frames/scored/failed/shed",
         f"{L['counts']['frames']}/{L['counts']['scored']}/{L['counts']['failed']}/"
         f"{L['counts']['shed']}", f"flagged {L['counts']['flagged']}"),
        ("2 overhead", "bare scan median", f"{OV['bare_scan_s']['median']:.3f} s",
         f"{OV['bare_frames_per_s']} frames/s"),
        ("", "scored scan median", f"{OV['scored_scan_s']['median']:.3f} s", ""),
        ("", "ratio (medians / paired med)",
         f"{OV['ratio_of_medians']} / {OV['ratio_paired_median']}x",
         f"<= 1.05x: {yes[OV['meets_ratio']]}"),
        ("", "queue drain after scan", f"{OV['drain_after_scan_s']['median']:.3f} s",
         f"(scan+drain)/bare {OV['scan_plus_drain_over_bare_paired_median']}x"),
        ("", "all accounted / shed / failed",
         f"{OV['all_accounted']} / {OV['shed_total']} / {OV['failed_total']}", ""),
    ]
    for tag, r in (("3 stream block", B), ("3 stream shed", S)):
        rows += [
            (tag, "queue / received",
             f"{r['queue_size']} / {r['received']}", f"bound {r['queue_bound_mb']} MB"),
            ("", "scored+failed+shed", f"{r['scored']}+{r['failed']}+{r['shed']}"
             f" = {r['accounted']}", f"zero lost: {r['zero_lost']}"),
            ("", "events/s (scan) / processed/s",
             f"{r['events_per_s']} / {r['processed_per_s']}", ""),
            ("", "scan / drain / total", f"{r['scan_s']} / {r['drain_after_scan_s']} / "
             f"{r['total_s']} s", ""),
            ("", "latency median / p95", f"{r['latency_ms']['median']} / "
             f"{r['latency_ms']['p95']} ms", "under load"),
            ("", "peak RSS growth (VmHWM / sampled)",
             f"{r['peak_rss_growth_mb_vmhwm']} / {r['peak_rss_growth_mb_sampled']} MB",
             f"RSS before {r['rss_before_mb']} MB"),
        ]
    rows += live_hdf5.table_rows(figures["sustained_hdf5"], figures["sustained_hdf5_targets"])
    w = [max(len(str(row[i])) for row in rows) for i in range(4)]
    print()
    print(f"pbi_bluesky live scorer, Pilatus 1M {FRAME_SHAPE} int32, {figures['cpus']} CPUs, "
          f"threadpool_limits({THREADS_BLAS}), torch.set_num_threads({THREADS_TORCH})")
    for row in rows:
        print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(row)).rstrip())
    print()
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
