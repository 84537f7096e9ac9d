"""Bus phases of the fault benchmark (``bench_faults.py``).

``session_bus_phase`` (``session_redis_outage``: a RunEngine session publishing to the bus
while Redis is stopped mid-scan) and ``bus_phase`` (``scorer_killed``, ``redis_restart``:
one ``pbi worker`` on a password-protected Redis, a fault per kind mid-scan). Each returns
the phase's counts, read back from Tiled.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_phases import session_scan  # noqa: E402 - benchmarks/fault_phases.py
from fault_tools import (  # noqa: E402 - benchmarks/fault_tools.py
    COUNT_KEYS,
    FRAMES_PER_RUN,
    ConfigWorker,
    _read_back,
    _sim_config,
    _wait,
)


# -- session_redis_outage -------------------------------------------------------------------
def session_bus_phase(args: argparse.Namespace, ioc: Any, server: Any, tmp: Path,
                      counts: Counter) -> dict[str, Any]:
    """A session publishing to the bus while Redis is stopped mid-scan (its outbox)."""
    import secrets

    import redis as redis_py

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_scale

    from pbi_bluesky.bus import BusNames, BusPublisher, connect
    from pbi_bluesky.reduction import load_geometry
    from pbi_bluesky.simulate import Instrument, expected_dark
    from pbi_bluesky.testing.services import RedisServer

    os.environ.setdefault("PBI_REDIS_PASSWORD", secrets.token_hex(16))
    redis = RedisServer(tmp / "redis-session", appendonly=True,
                        password_env="PBI_REDIS_PASSWORD").start()
    work = tmp / "session-bus"
    work.mkdir(exist_ok=True)
    # the worker gets the session's dark through the beamline file, as a beamline would
    instrument = Instrument(geometry=load_geometry(str(ioc.poni_path)))
    np.save(work / "dark.npy", expected_dark(instrument, args.exposure))
    base = _sim_config(ioc, server)
    cfg = base.with_overrides(bus={"url": redis.url}, geometry={"dark": str(work / "dark.npy")})
    config = cfg.to_yaml(work / "beamline.yaml")
    names = BusNames(cfg.name)
    client = connect(redis.url)
    worker = ConfigWorker("faults-session-w1", config, redis.url, work)
    pub = BusPublisher.from_settings(cfg, outbox_dir=work / "outbox", retry_initial_s=0.1,
                                     retry_max_s=1.0)
    marks: dict[str, Any] = {}
    scanning = threading.Event()

    def outage() -> None:
        marks["scan_running_at_fault"] = scanning.is_set()
        redis.stop()
        counts["session_redis_outage"] += 1
        marks["down_at"] = time.monotonic()
        time.sleep(args.redis_down)
        redis.start()
        marks["up_at"] = time.monotonic()
        marks["scan_running_after_fault"] = scanning.is_set()

    fault = threading.Thread(target=outage, daemon=True)

    def trigger(frames: int) -> None:
        scanning.set()
        if frames >= args.bus_session_frames // 3 and "down_at" not in marks \
                and not fault.is_alive():
            marks["frames_at_fault"] = frames
            fault.start()

    t0 = time.monotonic()
    try:
        bench_scale.wait_ready(client, names, [worker])
        result, session, counter = session_scan(
            args, (), ioc, server, tmp / "data-session-bus", args.bus_session_frames, counts,
            on_frame=trigger, cfg=cfg, subscribe=(pub,))
        scanning.clear()
        fault.join(args.redis_down + 60)
        flushed = pub.flush(120)
        pub.close(10)

        def closed() -> bool:
            try:
                return all(client.hget(names.run(uid), "state") == b"closed"
                           for uid in counter.runs)
            except redis_py.RedisError:
                return False

        all_closed = _wait(closed, 300, 0.2)
        closed_at = time.monotonic()
        bus_uids = {}
        for uid in counter.runs:
            try:
                found = client.hget(names.run(uid), "analysis_uid")
            except redis_py.RedisError:
                found = None
            if found:
                bus_uids[uid] = found.decode()
        runs = session.catalog.runs
        spool = session.analysis_spool
        live = {p.stem for d in (spool.done_dir, spool.pending_dir, spool.rejected_dir)
                for p in d.glob("*.spool")}
        # every analysis run of these raw runs that the session did not write is the bus's
        back = _read_back(runs, counter, keep=lambda uid: uid not in live)
        statuses: Counter = Counter()
        bus_runs = _bus_analysis_runs(runs, counter.runs, live, statuses)
    finally:
        worker.stop()
        redis.stop()
    lost = back["events_lost"]
    return {"frames_sent": len(counter.frames), "frames_accounted": back["frames_accounted"],
            "scans_aborted": result["scans_aborted"], "events_lost": lost,
            "events_duplicated": back["events_duplicated"],
            "bus_analysis_runs": len(bus_runs), "raw_runs": len(counter.runs),
            "statuses": dict(statuses),
            "analysis_runs_as_in_redis": sum(1 for raw, uid in bus_runs
                                             if bus_uids.get(raw) == uid),
            "analysis_runs_closed": all_closed,
            "outbox_flushed": flushed, "outboxed": pub.stats.get("outboxed", 0),
            "from_outbox": pub.stats.get("from_outbox", 0),
            "published": pub.stats.get("published", 0),
            "reconnects": pub.stats.get("reconnects", 0),
            "redis_down_s": args.redis_down,
            "frames_at_fault": marks.get("frames_at_fault"),
            "scan_running_at_fault": marks.get("scan_running_at_fault"),
            "scan_running_after_fault": marks.get("scan_running_after_fault"),
            "recovery_s": round(closed_at - marks["up_at"], 1) if "up_at" in marks else None,
            "session_live_path": {k: result[k] for k in COUNT_KEYS},
            "phase_s": round(time.monotonic() - t0, 1)}


def _bus_analysis_runs(runs: Any, raw_uids: set[str], live: set[str],
                       statuses: Counter) -> list[tuple[str, str]]:
    """(raw uid, analysis uid) of every analysis run in Tiled not written by the session;
    adds its frames' statuses (scored, failed, reference...) to ``statuses``."""
    from tiled.queries import Key

    out = []
    for uid in list(runs.search(Key("pbi_analysis") == True)):  # noqa: E712
        if uid in live:
            continue
        run = runs[uid]
        raw = run.metadata["start"].get("raw_uid")
        if raw in raw_uids:
            out.append((raw, uid))
            if "pbi_anomaly" in run:
                statuses.update(str(x) for x in np.asarray(run["pbi_anomaly"].read()["status"]))
    return out


# -- bus: scorer_killed, redis_restart ------------------------------------------------------
def bus_phase(args: argparse.Namespace, kinds: tuple[str, ...], server: Any, tmp: Path,
              counts: Counter) -> dict[str, Any]:
    """One ``pbi worker`` on a password-protected Redis; a fault per kind mid-scan."""
    import secrets
    import signal

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_scale

    from pbi_bluesky.bus import BusNames, connect
    from pbi_bluesky.testing.services import RedisServer

    os.environ["PBI_REDIS_PASSWORD"] = secrets.token_hex(16)
    os.environ["PBI_TILED_API_KEY"] = server.api_key
    redis = RedisServer(tmp / "redis", appendonly=True,
                        password_env="PBI_REDIS_PASSWORD").start()
    work, instrument, poni = bench_scale.workdir("pbi-faults-bus-")
    frames = bench_scale.make_frames(instrument, 8, work / "data", np.random.default_rng(3))
    logs = tmp / "worker-logs"
    logs.mkdir(exist_ok=True)
    env = {"redis": redis, "tiled": server, "mask": work / "mask.npy",
           "dark": work / "dark.npy", "data": work / "data", "logs": logs, "work": work}
    beamline = "faults"
    names = BusNames(beamline)
    client = connect(redis.url)
    workers = [bench_scale.Worker("faults-w1", beamline, env, logs)]
    out: dict[str, Any] = {}
    try:
        bench_scale.wait_ready(client, names, workers)
        for kind in kinds:
            out[kind] = _bus_kind(args, kind, beamline, names, redis, server, env, frames,
                                  poni, workers, counts, bench_scale, signal)
    finally:
        for w in workers:
            w.stop()
        redis.stop()
    return out


def _bus_kind(args, kind, beamline, names, redis, server, env, frames, poni, workers, counts,
              bench_scale, signal) -> dict[str, Any]:
    import redis as redis_py

    from pbi_bluesky.bus import BusPublisher, connect
    from pbi_bluesky.store import Catalog

    client = connect(redis.url)
    n_runs, per_run = args.bus_runs, FRAMES_PER_RUN * 2
    md = {"geometry": poni, "thickness_cm": 0.1, "composition": "50:50", "sample": kind}
    scans = [bench_scale.datum_run({**md, "scan": i}, frames, per_run) for i in range(n_runs)]
    total = n_runs * per_run
    pub = BusPublisher(redis.url, beamline, outbox_dir=env["work"] / f"outbox-{kind}",
                       retry_initial_s=0.1, retry_max_s=1.0)
    published = threading.Event()

    def scan() -> None:
        for _uid, docs in scans:
            for name, doc in docs:
                pub(name, doc)
                if name == "event":
                    time.sleep(1.0 / args.bus_rate)
        published.set()

    def done() -> int:
        try:
            return sum(int(client.hget(names.run(uid), "done") or 0) for uid, _ in scans)
        except redis_py.RedisError:
            return -1

    t0 = time.monotonic()
    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    fault: dict[str, Any] = {}
    if not _wait(lambda: done() >= total // 4, 120, 0.01):
        raise RuntimeError(f"{kind}: the worker scored {done()} of {total // 4} frames in 120 s"
                           f"; log:\n{workers[0].log.read_text()[-2000:]}")
    fault["done_at_fault"] = done()
    fault["scan_running_at_fault"] = not published.is_set()
    if kind == "scorer_killed":
        victim = workers[0]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        counts["scorer_killed"] += 1
        time.sleep(1.0)
        workers[0] = bench_scale.Worker(victim.name, beamline, env, env["logs"])
        fault["restarted_as"] = victim.name
    else:
        redis.stop()
        counts["redis_restart"] += 1
        time.sleep(args.redis_down)
        redis.start()
        fault["redis_down_s"] = args.redis_down
    up = time.monotonic()
    thread.join(300)
    flushed = pub.flush(120)
    pub.close(10)

    def closed() -> bool:
        try:
            return all(client.hget(names.run(uid), "state") == b"closed" for uid, _ in scans)
        except redis_py.RedisError:
            return False

    all_closed = _wait(closed, 300, 0.1)
    recovery_s = time.monotonic() - up
    runs = Catalog(server.uri, api_key=server.api_key).runs
    sent = accounted = lost = duplicated = aborted = extra_runs = 0
    statuses: Counter = Counter()
    reasons: Counter = Counter()
    for uid, _docs in scans:
        sent += per_run
        found = [r for r in _analysis_runs(runs, uid) if r.metadata.get("stop")]
        extra_runs += max(0, len(found) - 1)
        if not found:
            lost += per_run
            aborted += 1
            continue
        seqs: list[int] = []
        for run in found:
            table = run["pbi_anomaly"].read() if "pbi_anomaly" in run else None
            if table is not None:
                for seq, status, reason in zip(np.asarray(table["raw_seq_num"]).tolist(),
                                               np.asarray(table["status"]).tolist(),
                                               np.asarray(table["reason"]).tolist(),
                                               strict=True):
                    seqs.append(int(seq))
                    statuses[str(status)] += 1
                    if status != "scored":
                        reasons[str(reason)[:60]] += 1
            stop = run.metadata["stop"]
            accounted += int(stop.get("pbi_summary", {}).get("accounted", 0))
            aborted += int(stop.get("exit_status") != "success")
        lost += len(set(range(1, per_run + 1)) - set(seqs))
        duplicated += len(seqs) - len(set(seqs))
    return {"frames_sent": sent, "frames_accounted": accounted, "scans_aborted": aborted,
            "events_lost": lost, "events_duplicated": duplicated,
            "duplicate_analysis_runs": extra_runs, "statuses": dict(statuses),
            "not_scored_reasons": dict(reasons), "published": published.is_set(),
            "outbox_flushed": flushed, "outboxed": pub.stats.get("outboxed", 0),
            "analysis_runs_closed": all_closed, "recovery_s": round(recovery_s, 1),
            "claimed": int(client.hget(names.stats, "claimed") or 0),
            "phase_s": round(time.monotonic() - t0, 1), **fault}


def _analysis_runs(runs: Any, raw_uid: str) -> list:
    """Every analysis run in Tiled for a raw run (one listed then deleted is skipped)."""
    from tiled.queries import Key

    results = runs.search(Key("raw_uid") == raw_uid)
    found = []
    for key in list(results):
        try:
            found.append(results[key])
        except KeyError:
            continue
    return found
