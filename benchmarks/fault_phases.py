"""Session-side phases of the fault benchmark (``bench_faults.py``).

``session_scan`` (a RunEngine session scanning the sim IOC, with the session kinds:
``nan_frame``, ``wrong_shape``, ``missing_hdf5``, ``corrupt_hdf5``, ``tiled_down``,
``malformed_document``, ``unencodable_metadata``), and the phases built on it or on a spool:
``disk_full_phase``, ``disk_full_outage_phase`` (``disk_full_tiled_down``) and
``interleaved_phase`` (``interleaved_outage``). Each returns the phase's counts, read back
from Tiled.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_tools import (  # noqa: E402 - benchmarks/fault_tools.py
    COUNT_KEYS,
    FRAMES_PER_RUN,
    FrameCounter,
    Saboteur,
    TmpfsDisk,
    _bad_detector,
    _inject_malformed,
    _malformed_documents,
    _outage,
    _raw_frames_in_tiled,
    _read_back,
    _sim_config,
    _spool_run,
    _unencodable_check,
    _unencodable_md,
    _wait,
    _watch_recovery,
)

log = logging.getLogger("bench_faults")


def session_scan(args: argparse.Namespace, kinds: tuple[str, ...], ioc: Any, server: Any,
                 data_root: Path, n_frames: int, counts: Counter,
                 on_frame: Any = None, cfg: Any = None, subscribe: tuple = (),
                 after_scan: Any = None) -> tuple[dict[str, Any], Any, FrameCounter]:
    """A RunEngine session scanning the sim IOC with the session kinds among ``kinds``.

    ``cfg``: the beamline's settings (default: the sim IOC's, with this Tiled server);
    ``subscribe``: more callbacks for its RunEngine (e.g. a bus publisher); ``after_scan``:
    called when the scan has ended, before the session closes. Returns the
    phase's counts (read back from Tiled; only the session's own analysis runs, those of
    its analysis spool), the closed session and the frames it sent.
    """
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp

    from pbi_bluesky.reduction import load_geometry
    from pbi_bluesky.session import build_session
    from pbi_bluesky.simulate import Instrument, expected_dark
    from sim_iocs.tray import default_tray

    cfg = cfg or _sim_config(ioc, server)
    instrument = Instrument(geometry=load_geometry(str(ioc.poni_path)))
    session = build_session(cfg, data_root=data_root, plots=False, live_table=False,
                            persistent_md=False,
                            scorer_kwargs={"dark": expected_dark(instrument, args.exposure),
                                           "queue_size": 256})
    RE, bl, scorer = session.RE, session.beamline, session.scorer
    counter = FrameCounter()
    counter.on_frame = on_frame
    RE.subscribe(counter)
    for callback in subscribe:
        RE.subscribe(callback)
    sabotage = tuple(k for k in ("missing_hdf5", "corrupt_hdf5") if k in kinds)
    saboteur = Saboteur(every=args.sabotage_every, kinds=sabotage)
    if sabotage:
        RE.subscribe(saboteur)
    bad_kinds = tuple(k for k in ("nan_frame", "wrong_shape") if k in kinds)
    bad = _bad_detector(instrument.shape, bad_kinds) if bad_kinds else None
    n_runs = max(1, n_frames // FRAMES_PER_RUN)
    slots = [s.slot for s in default_tray()]
    bl.detector.cam.acquire_time.put(args.exposure)
    bl.detector.cam.acquire_period.put(args.exposure)
    special: dict[str, str] = {}

    def scan():
        yield from bps.mv(bl.changer, 0)
        yield from bp.count(bl.readables, num=1, md={"sample_type": "empty_cell", "slot": 0})
        for i in range(n_runs):
            slot = slots[i % len(slots)]
            tray = next(s for s in default_tray() if s.slot == slot)
            md = {"slot": slot, "sample": tray.sample, "composition": tray.composition,
                  "thickness_cm": tray.thickness_cm, "purpose": "fault benchmark"}
            yield from bps.mv(bl.changer, slot)
            if "unencodable_metadata" in kinds and i == n_runs // 2:
                special["unencodable"] = yield from bp.count(
                    bl.readables, num=FRAMES_PER_RUN, md={**md, **_unencodable_md()})
                counts["unencodable_metadata"] += 1
            else:
                yield from bp.count(bl.readables, num=FRAMES_PER_RUN, md=md)
            if bad is not None and i % max(1, n_runs // 4) == 0:
                yield from bp.count([bad, *bl.monitors], num=2,
                                    md={**md, "sample": "bad frames"})
                for k in bad_kinds:
                    counts[k] += 1

    stop = threading.Event()
    injector = outage = watcher = None
    if "malformed_document" in kinds:
        junk = _malformed_documents(args.malformed)
        injector = threading.Thread(target=_inject_malformed, daemon=True,
                                    args=(scorer, junk, stop, counts))
    marks: dict[str, float] = {}
    if "tiled_down" in kinds:
        outage = threading.Thread(target=_outage, daemon=True,
                                  args=(server, args.outage_at, args.outage, counts, marks))
        watcher = threading.Thread(target=_watch_recovery, daemon=True, args=(
            [session.raw_spool, session.analysis_spool], marks, stop))
    threads = [t for t in (injector, outage, watcher) if t is not None]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    aborted = 0
    try:
        RE(scan())
    except Exception as exc:  # noqa: BLE001 - a scan killed by our code is the finding
        aborted += 1
        log.error("scan aborted: %s", exc)
    scan_s = time.monotonic() - t0
    if outage is not None:
        outage.join(args.outage + args.outage_at + 60)
    if after_scan is not None:
        after_scan()
    scorer.flush(300)
    if watcher is not None:
        watcher.join(300)
    stop.set()
    t_drain = time.monotonic()
    ok = session.close(300)
    drained = time.monotonic()
    counts.update(saboteur.done)
    runs = session.catalog.runs
    spool = session.analysis_spool
    ours = {p.stem for d in (spool.done_dir, spool.pending_dir, spool.rejected_dir)
            for p in d.glob("*.spool")}
    back = _read_back(runs, counter, keep=ours.__contains__)
    recovered = marks.get("recovered_at", drained)
    result = {
        "frames_sent": len(counter.frames),
        "frames_accounted": back["frames_accounted"],
        "scans_aborted": aborted + counter.exit_status.get("abort", 0)
        + counter.exit_status.get("fail", 0),
        "events_lost": back["events_lost"],
        "events_duplicated": back["events_duplicated"],
        "recovery_s": round(recovered - marks.get("up_at", t_drain), 1)
        if "tiled_down" in kinds else None,
        "scan_s": round(scan_s, 1),
        "spools_drained": ok,
        "runs_rejected_by_tiled": len(session.raw_spool.rejected())
        + len(session.analysis_spool.rejected()),
        "inbox_shed": scorer.inbox.shed,
        "control_documents_dropped": scorer.inbox.dropped_control,
    }
    if "tiled_down" in kinds:
        result["outage_s"] = args.outage
    if "unencodable" in special:
        result["unencodable_run"] = _unencodable_check(runs, special["unencodable"], counter)
    return result, session, counter


# -- disk_full ------------------------------------------------------------------------------
def disk_full_phase(args: argparse.Namespace, ioc: Any, server: Any, tmp: Path,
                    counts: Counter) -> dict[str, Any]:
    root = tmp / "data-disk"
    disk = TmpfsDisk(root / "spool", args.disk_mib * 1024 * 1024)
    if not disk.mount():
        log.error("disk_full skipped: %s", disk.error)
        return {"skipped": disk.error, **dict.fromkeys(COUNT_KEYS, 0)}
    try:
        half = args.disk_frames // 2

        def trigger(frames: int) -> None:
            if frames >= half:
                disk.fill(frames)

        result, session, _ = session_scan(args, ("disk_full",), ioc, server, root,
                                       args.disk_frames, counts, on_frame=trigger)
        counts["disk_full"] += int(disk.filled_at is not None)
        losses = session.raw_spool.losses + session.analysis_spool.losses
        result.update({
            "disk": f"tmpfs of {args.disk_mib} MiB (mount -t tmpfs), filled after frame "
                    f"{disk.filled_at}",
            "documents_not_spooled": session.raw_spool.stats["not_spooled"]
            + session.analysis_spool.stats["not_spooled"],
            "not_spooled_by_spool": {"raw": session.raw_spool.stats["not_spooled"],
                                     "analysis": session.analysis_spool.stats["not_spooled"]},
            "loss_reasons": sorted({loss["reason"].split(":")[0] + ": "
                                    + loss["reason"].split(":", 1)[-1].strip()[:60]
                                    for loss in losses})[:5],
        })
        return result
    finally:
        disk.umount()


def disk_full_outage_phase(args: argparse.Namespace, ioc: Any, server: Any, tmp: Path,
                           counts: Counter) -> dict[str, Any]:
    """``disk_full`` while the Tiled server is down: nothing may be lost (spool journals)."""
    root = tmp / "data-disk-outage"
    disk = TmpfsDisk(root / "spool", args.disk_mib * 1024 * 1024)
    if not disk.mount():
        log.error("disk_full_tiled_down skipped: %s", disk.error)
        return {"skipped": disk.error, **dict.fromkeys(COUNT_KEYS, 0)}
    marks: dict[str, float] = {}
    outage = threading.Thread(target=_outage, daemon=True,
                              args=(server, 0.0, args.combined_outage, counts, marks))
    try:
        half = args.disk_frames // 2

        def trigger(frames: int) -> None:
            if frames >= half and disk.filled_at is None:
                disk.fill(frames)
                outage.start()  # Tiled stops as the disk fills

        def after_scan() -> None:  # Tiled back before the session's last replay
            if outage.is_alive() or disk.filled_at is not None:
                outage.join(args.combined_outage + 120)

        result, session, counter = session_scan(
            args, ("disk_full",), ioc, server, root, args.disk_frames, counts,
            on_frame=trigger, after_scan=after_scan)
        counts["disk_full_tiled_down"] += int(disk.filled_at is not None)
        losses = session.raw_spool.losses + session.analysis_spool.losses
        runs = session.catalog.runs
        raw = _raw_frames_in_tiled(runs, counter)
        result.update({
            "disk": f"tmpfs of {args.disk_mib} MiB, filled after frame {disk.filled_at}",
            "tiled_down_s": args.combined_outage,
            "documents_not_spooled": session.raw_spool.stats["not_spooled"]
            + session.analysis_spool.stats["not_spooled"],
            "not_spooled_by_spool": {"raw": session.raw_spool.stats["not_spooled"],
                                     "analysis": session.analysis_spool.stats["not_spooled"]},
            "documents_journaled": session.raw_spool.stats["journaled"]
            + session.analysis_spool.stats["journaled"],
            "write_failures": session.raw_spool.stats["write_failures"]
            + session.analysis_spool.stats["write_failures"],
            "replayed_runs": session.raw_spool.stats["replayed_runs"]
            + session.analysis_spool.stats["replayed_runs"],
            "loss_reasons": sorted({loss["reason"].split(":")[0] for loss in losses})[:5],
            **raw,
        })
        return result
    finally:
        if outage.is_alive():
            outage.join(args.combined_outage + 120)
        disk.umount()


# -- interleaved_outage ---------------------------------------------------------------------
def interleaved_phase(args: argparse.Namespace, server: Any, tmp: Path,
                      counts: Counter) -> dict[str, Any]:
    """Pairs of runs open together in one SpoolSink while the Tiled server is stopped."""
    from pbi_bluesky.store import Catalog, SpoolSink

    catalog = Catalog(server.uri, api_key=server.api_key)
    sink = SpoolSink(tmp / "spool-interleaved", catalog.writer,
                     delete_partial=catalog.delete_partial, replay_wait_initial=0.2,
                     replay_wait_max=2.0)
    n = FRAMES_PER_RUN
    sent: dict[str, int] = {}
    t0 = time.monotonic()
    recovery = []
    for p in range(args.interleaved_pairs):
        a, b = _spool_run(n, pair=p, role="A"), _spool_run(n, pair=p, role="B")
        sent[a[0][1]["uid"]] = sent[b[0][1]["uid"]] = n
        # even pairs: B starts before the outage; odd pairs: B's start meets the outage
        b_early = 2 if p % 2 == 0 else 0
        for doc in a[:2 + n // 2]:  # A: start, descriptor, half its events
            sink(*doc)
        for doc in b[:b_early]:
            sink(*doc)
        if not sink.flush(60):
            raise RuntimeError("interleaved_outage: the spool did not forward the first half")
        failures = sink.stats["write_failures"]
        server.stop()  # both open (or B about to start): Tiled goes down
        counts["interleaved_outage"] += 1
        rest_a, rest_b = a[2 + n // 2:], b[b_early:-1]
        for i in range(max(len(rest_a), len(rest_b))):  # the two runs interleaved
            for part in (rest_b, rest_a):
                if i < len(part):
                    sink(*part[i])
        # the forwarder must have met the outage before Tiled comes back (A's stop at least)
        met = _wait(lambda before=failures: sink.stats["write_failures"] > before, 60)
        if not met:
            log.warning("interleaved_outage pair %d: no writer failed during the outage", p)
        server.start()
        up = time.monotonic()
        sink(*b[-1])  # B's stop after the outage
        _wait(lambda: sink.backlog == 0 and not sink.pending(), 120, 0.1)
        recovery.append(time.monotonic() - up)
    drained = sink.close(120)
    runs = catalog.runs
    accounted = lost = duplicated = aborted = 0
    per_run = {}
    for uid, n_sent in sent.items():
        try:
            run = runs[uid]
            seqs = [int(x) + 1 for x in np.asarray(run["primary"].read()["x"])] \
                if "primary" in run else []
            status = (run.metadata.get("stop") or {}).get("exit_status")
        except KeyError:
            seqs, status = [], None
        accounted += len(set(seqs))
        lost += len(set(range(1, n_sent + 1)) - set(seqs))
        duplicated += len(seqs) - len(set(seqs))
        aborted += int(status != "success")
        per_run[uid[:8]] = {"events": len(seqs), "exit_status": status}
    return {"frames_sent": sum(sent.values()), "frames_accounted": accounted,
            "scans_aborted": aborted, "events_lost": lost, "events_duplicated": duplicated,
            "runs": len(sent), "runs_whole_in_tiled": sum(
                1 for r in per_run.values() if r["events"] == n and r["exit_status"]
                == "success"),
            "write_failures": sink.stats["write_failures"],
            "replayed_runs": sink.stats["replayed_runs"], "spool_drained": drained,
            "runs_rejected_by_tiled": len(sink.rejected()),
            "recovery_s": round(max(recovery), 1) if recovery else None,
            "phase_s": round(time.monotonic() - t0, 1)}
