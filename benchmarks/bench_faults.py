"""Fault injection: a real scan keeps going, and every frame is accounted for afterwards.

Kinds (``--kinds`` runs a subset; default all), grouped in phases that each count their
frames back from Tiled:

Session scan (a RunEngine session built from the sim IOC's beamline.yaml: stock ophyd
devices over Channel Access, the live scorer, crash-safe spools, a real Tiled server
process, >= 200 frames):

* ``nan_frame`` / ``wrong_shape`` - frames from a second (ophyd.sim) detector in the same
  RunEngine: NaN pixels, a frame of the wrong size;
* ``missing_hdf5`` / ``corrupt_hdf5`` - the detector's HDF5 file deleted or overwritten with
  garbage after it was written and before the scorer reads it;
* ``tiled_down`` - the Tiled server stopped for ``--outage`` s mid-scan, then restarted;
* ``malformed_document`` - hypothesis-generated documents (missing keys, wrong types, huge
  strings, unknown descriptor uids) pushed into the scorer from another thread;
* ``unencodable_metadata`` - one run whose start metadata holds a datetime64, a structured
  array and an int >= 2**64: it must reach Tiled (the values as text, listed in
  ``pbi_unencodable``) with all its frames scored.

Other phases:

* ``disk_full`` - a second session whose spool folder is a small tmpfs (``mount -t tmpfs``,
  which needs root; the kind is reported as skipped, with the reason, where the mount is
  refused); halfway through the scan the rest of the tmpfs is filled: the scan goes on,
  Tiled still gets every document, and the documents the spools could not keep are counted
  (``documents_not_spooled``, with their reasons);
* ``disk_full_tiled_down`` - ``disk_full`` and a Tiled outage at once: the tmpfs fills
  halfway through the scan and the Tiled server stops at that moment for
  ``--combined-outage`` s. The documents the disk refused are kept in their runs' journals
  (``documents_journaled``), so the replays after the outage write every run whole: every
  raw frame and analysis event must be in Tiled exactly once, and no raw run closed with an
  ``abort`` stop;
* ``interleaved_outage`` - pairs of runs open at the same time in one ``SpoolSink`` (an
  analysis run still taking attributions while the next raw run starts) while the Tiled
  server is stopped; each run must reach Tiled whole exactly once;
* ``session_redis_outage`` - a RunEngine session scanning the sim IOC publishes every
  document to the bus (a ``BusPublisher`` subscribed to its RunEngine, as a beamline would)
  while one ``pbi worker`` (started from the session's beamline.yaml) scores the frames by
  reference; mid-scan Redis is stopped for ``--redis-down`` s and started again: the scan
  goes on, the publisher keeps the documents in its outbox and sends them when Redis is
  back, and every frame must be in the bus's analysis run of its raw run exactly once
  (counted from Tiled, apart from the session's own live analysis runs);
* ``scorer_killed`` / ``redis_restart`` - the document bus: a Redis server (append-only
  file, password from the environment) and one ``pbi worker`` process scoring frames by
  reference; mid-scan the worker is SIGKILLed and started again, or Redis is stopped for
  ``--redis-down`` s and started again. Every frame must be in the run's one analysis run
  exactly once, scored or failed with its reason.

It reports frames sent and accounted for, scans aborted by our code, analysis events lost
and duplicated after recovery (read back from Tiled), and seconds to recover. The last line
is JSON with ``frames_sent``, ``frames_accounted``, ``scans_aborted``, ``events_lost``,
``events_duplicated``, ``recovery_s`` and ``faults`` (totals over the phases run), and
``phases`` (the same counts per phase, plus what each phase checks).

Usage::

    python benchmarks/bench_faults.py [--frames 200] [--outage 30] [--exposure 0.05]
        [--kinds KIND ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
log = logging.getLogger("bench_faults")

FRAMES_PER_RUN = 10


def _configure_env() -> dict[str, str]:
    from pbi_bluesky.testing.iocs import loopback_epics_env

    env = loopback_epics_env()
    os.environ.update(env)
    return env


class FrameCounter:
    """Counts the frames the RunEngine emitted (events of streams with an image key)."""

    def __init__(self) -> None:
        self._run_of: dict[str, str] = {}
        self.image_descriptors: set[str] = set()
        self.frames: set[tuple[str, int]] = set()
        self.runs: set[str] = set()
        self.exit_status: Counter = Counter()
        self.on_frame: Any = None
        """Called with the number of frames so far after each frame (a fault's trigger)."""

    def __call__(self, name: str, doc: dict) -> None:
        from pbi_bluesky.scoring import image_keys

        if name == "descriptor" and image_keys(doc):
            self.image_descriptors.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self.image_descriptors:
            run = self._run_of.get(doc["descriptor"], "?")
            self.frames.add((run, int(doc["seq_num"])))
            if self.on_frame is not None:
                self.on_frame(len(self.frames))
        if name == "start":
            self.runs.add(doc["uid"])
        elif name == "descriptor":
            self._run_of[doc["uid"]] = doc["run_start"]
        elif name == "stop":
            self.exit_status[doc.get("exit_status")] += 1


class Saboteur:
    """Deletes or corrupts the detector's HDF5 file of chosen frames right after the
    RunEngine emits their event (the file exists; the scorer has not read it yet)."""

    def __init__(self, every: int, kinds: tuple[str, ...] = ("missing_hdf5", "corrupt_hdf5")
                 ) -> None:
        self.every = int(every)
        self.kinds = kinds
        self.resources: dict[str, dict] = {}
        self.datums: dict[str, dict] = {}
        self.count = 0
        self.done: Counter = Counter()

    def __call__(self, name: str, doc: dict) -> None:
        if name == "resource":
            self.resources[doc["uid"]] = doc
        elif name == "datum":
            self.datums[doc["datum_id"]] = doc
        elif name == "event" and isinstance(doc["data"].get("saxs_image"), str):
            self.count += 1
            if self.count % self.every:
                return
            datum = self.datums.get(doc["data"]["saxs_image"])
            if datum is None:
                return
            res = self.resources[datum["resource"]]
            path = Path(res["root"]) / res["resource_path"]
            kind = self.kinds[(self.count // self.every - 1) % len(self.kinds)]
            try:
                if kind == "missing_hdf5":
                    path.rename(path.with_suffix(".moved"))
                else:
                    path.write_bytes(os.urandom(4096))
                self.done[kind] += 1
            except OSError as exc:
                log.warning("saboteur could not %s %s: %s", kind, path, exc)


def _bad_detector(shape: tuple[int, int], kinds: tuple[str, ...] = ("nan_frame", "wrong_shape")):
    """An ophyd.sim detector publishing under the real detector's image key whose frames
    are NaN-laced (odd reads) or of the wrong size (even reads): a float pipeline gone
    wrong upstream of the scorer."""
    from ophyd.sim import SynSignal

    state = {"n": 0}

    def frame():
        state["n"] += 1
        if kinds[(state["n"] - 1) % len(kinds)] == "nan_frame":
            arr = np.full(shape, 5.0)
            arr[100:110, 200:210] = np.nan
            return arr
        return np.ones((32, 32))

    return SynSignal(func=frame, name="saxs_image", labels={"detectors"})


def _malformed_documents(n: int) -> list[tuple[str, Any]]:
    """Hypothesis-generated junk: missing keys, wrong types, huge strings, unknown uids."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    names = st.sampled_from(["start", "descriptor", "event", "event_page", "stop", "resource",
                             "datum", "stream_resource", "stream_datum", "bogus"])
    leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                     st.text(max_size=50),
                     st.integers(10_000, 200_000).map(lambda n: "x" * n))  # huge strings
    docs = st.dictionaries(st.sampled_from(["uid", "run_start", "descriptor", "data",
                                            "seq_num", "time", "resource", "datum_id",
                                            "stream_resource", "seq_nums", "indices",
                                            "data_keys", "filled"]),
                           st.recursive(leaf, lambda c: st.dictionaries(st.text(max_size=8), c,
                                                                        max_size=4),
                                        max_leaves=8), max_size=8)
    out: list[tuple[str, Any]] = []

    @settings(max_examples=n, database=None, suppress_health_check=list(HealthCheck),
              deadline=None)
    @given(names, docs)
    def collect(name, doc):
        out.append((name, doc))

    collect()
    return out[:n]


def _inject_malformed(scorer: Any, docs: list, stop: threading.Event, counts: Counter) -> None:
    for name, doc in docs:
        if stop.is_set():
            return
        scorer(name, doc)
        counts["malformed_document"] += 1
        time.sleep(0.05)


def _outage(server: Any, at_s: float, for_s: float, counts: Counter, marks: dict) -> None:
    time.sleep(at_s)
    server.stop()
    counts["tiled_down"] += 1
    marks["down_at"] = time.monotonic()
    time.sleep(for_s)
    server.start()
    marks["up_at"] = time.monotonic()


def _watch_recovery(spools: list, marks: dict, stop: threading.Event) -> None:
    """The first moment after Tiled is back at which no spool has a backlog."""
    while not stop.is_set():
        if "up_at" in marks and all(s.backlog == 0 for s in spools):
            marks["recovered_at"] = time.monotonic()
            return
        time.sleep(0.1)


def _read_back(runs: Any, counter: FrameCounter,
               keep: Any = None) -> dict[str, int]:
    """Analysis events in Tiled per (raw uid, seq_num), and the ledgers.

    ``keep``: a test of an analysis run's uid (default: every analysis run of the raw runs).
    """
    from tiled.queries import Key

    seen: Counter = Counter()
    accounted = 0
    for uid in list(runs.search(Key("pbi_analysis") == True)):  # noqa: E712
        if keep is not None and not keep(uid):
            continue
        run = runs[uid]
        md = run.metadata
        raw = md["start"]["raw_uid"]
        if raw not in counter.runs:
            continue  # another phase's run
        accounted += int((md.get("stop") or {}).get("pbi_summary", {}).get("accounted", 0))
        if "pbi_anomaly" not in run:
            continue
        table = run["pbi_anomaly"].read()
        for seq in np.asarray(table["raw_seq_num"]).tolist():
            seen[(raw, int(seq))] += 1
    lost = sum(1 for key in counter.frames if seen.get(key, 0) == 0)
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    return {"frames_accounted": accounted, "events_lost": lost,
            "events_duplicated": duplicated, "events_in_tiled": sum(seen.values())}


SESSION_KINDS = ("nan_frame", "wrong_shape", "missing_hdf5", "corrupt_hdf5", "tiled_down",
                 "malformed_document", "unencodable_metadata")
BUS_KINDS = ("scorer_killed", "redis_restart")
KINDS = (*SESSION_KINDS, "disk_full", "disk_full_tiled_down", "interleaved_outage",
         "session_redis_outage", *BUS_KINDS)
MEASURED_ONLY: tuple[str, ...] = ()
"""Kinds that measure a known loss (docs/known-gaps.md): run only when named in --kinds.
None now: ``disk_full_tiled_down`` lost 40 of 61 frames before the spool's journals."""
DEFAULT_KINDS = tuple(k for k in KINDS if k not in MEASURED_ONLY)
COUNT_KEYS = ("frames_sent", "frames_accounted", "scans_aborted", "events_lost",
              "events_duplicated")


def _unencodable_md() -> dict[str, Any]:
    """Start metadata msgpack (and JSON) cannot carry as they are."""
    return {"when": np.datetime64("2026-12-06T10:00"),
            "table": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
            "huge": 2 ** 64, "nested": {"ok": 1, "bad": [np.datetime64("2026-12-06")]}}


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


def _sim_config(ioc: Any, server: Any, **sections: Any) -> Any:
    """The sim IOC's beamline settings, writing to this benchmark's Tiled server."""
    from pbi_bluesky.demos.beamline import sim_beamline_config

    return sim_beamline_config(ioc, connection_timeout_s=15.0).with_overrides(
        tiled={"uri": server.uri, "api_key_env": "PBI_BENCH_TILED_KEY"}, **sections)


def _unencodable_check(runs: Any, uid: str, counter: FrameCounter) -> dict[str, Any]:
    """The run with unencodable metadata as Tiled holds it, and its analysis run."""
    from tiled.queries import Key

    try:
        start = runs[uid].metadata["start"]
        stop = runs[uid].metadata.get("stop") or {}
    except KeyError:
        return {"raw_run_in_tiled": False}
    sent = sorted(seq for run, seq in counter.frames if run == uid)
    scored = []
    for key in list(runs.search(Key("raw_uid") == uid)):
        run = runs[key]
        if "pbi_anomaly" in run:
            scored += [int(s) for s in np.asarray(run["pbi_anomaly"].read()["raw_seq_num"])]
    return {"raw_run_in_tiled": True, "exit_status": stop.get("exit_status"),
            "listed_as_text": sorted(start.get("pbi_unencodable", [])),
            "when": start.get("when"), "frames_sent": len(sent),
            "frames_in_analysis": len(set(scored))}


# -- disk_full ------------------------------------------------------------------------------
class TmpfsDisk:
    """A folder on its own tmpfs of ``size`` bytes (``mount`` needs root), filled on demand."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, int(size)
        self.mounted = False
        self.error = ""
        self.filled_at: int | None = None
        self.filler_bytes = 0

    def mount(self) -> bool:
        import subprocess

        self.path.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs",
                                   str(self.path)], capture_output=True, text=True)
        except OSError as exc:
            self.error = f"mount: {exc}"
            return False
        self.mounted = done.returncode == 0
        if not self.mounted:
            self.error = f"mount -t tmpfs refused: {done.stderr.strip() or done.returncode}"
        return self.mounted

    def fill(self, frames: int) -> None:
        """Write a filler file until the tmpfs is full (ENOSPC)."""
        if self.filled_at is not None:
            return
        self.filled_at = frames
        chunk = b"\0" * 65536
        with open(self.path / "filler", "wb", buffering=0) as fh:
            while True:
                try:
                    self.filler_bytes += fh.write(chunk)
                except OSError:
                    break
        log.warning("disk_full: %s filled after frame %d (%d bytes of filler)", self.path,
                    frames, self.filler_bytes)

    def umount(self) -> None:
        import subprocess

        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            self.mounted = False


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


def _raw_frames_in_tiled(runs: Any, counter: FrameCounter) -> dict[str, Any]:
    """The raw runs as Tiled holds them: frames (image-stream seq_nums) and exit statuses."""
    in_tiled: set[tuple[str, int]] = set()
    statuses: Counter = Counter()
    missing_runs = 0
    for uid in sorted(counter.runs):
        try:
            run = runs[uid]
        except KeyError:
            missing_runs += 1
            continue
        statuses[str((run.metadata.get("stop") or {}).get("exit_status"))] += 1
        for stream_name in list(run):
            stream = run[stream_name]
            if "seq_num" in stream:
                in_tiled.update((uid, int(s)) for s in np.asarray(stream["seq_num"].read()))
    sent = counter.frames
    return {"raw_runs_missing_in_tiled": missing_runs,
            "raw_frames_in_tiled": len(sent & in_tiled),
            "raw_frames_lost": len(sent - in_tiled),
            "raw_exit_status_in_tiled": dict(statuses)}


# -- interleaved_outage ---------------------------------------------------------------------
def _spool_run(n_events: int, **md: Any) -> list[tuple[str, dict]]:
    """A run with a 64x64 float32 frame and a number per event."""
    from event_model import compose_run

    bundle = compose_run(metadata={"purpose": "fault benchmark: interleaved outage", **md})
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "x": {"dtype": "number", "shape": [], "source": "bench"},
        "frame": {"dtype": "array", "shape": [64, 64], "source": "bench",
                  "dtype_numpy": "<f4"}})
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    rng = np.random.default_rng(len(docs) + n_events)
    for i in range(n_events):
        data = {"x": float(i), "frame": rng.random((64, 64), dtype=np.float32)}
        docs.append(("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0),
                                                 seq_num=i + 1)))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def _wait(predicate: Any, timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return bool(predicate())


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


# -- session_redis_outage -------------------------------------------------------------------
class ConfigWorker:
    """A ``pbi bus worker`` process started from a beamline.yaml (as a beamline runs it)."""

    def __init__(self, name: str, config: Path, broker: str, logs: Path) -> None:
        import subprocess

        self.name = name
        self.log = logs / f"{name}.log"
        cmd = [sys.executable, "-m", "pbi_bluesky.cli", "bus", "worker", "--config",
               str(config), "--broker", broker, "--name", name, "--threads", "1"]
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO,
                                         env={**os.environ, "OMP_NUM_THREADS": "1",
                                              "NUMBA_NUM_THREADS": "1",
                                              "PYTHONFAULTHANDLER": "1"})

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pbi_bluesky.plans import use_tray
    from pbi_bluesky.testing.iocs import start_sim_ioc, stop_sim_ioc
    from pbi_bluesky.testing.services import PostgresServer, TiledServer
    from sim_iocs.tray import default_tray

    kinds = tuple(args.kinds)
    session_kinds = tuple(k for k in SESSION_KINDS if k in kinds)
    need_ioc = bool(session_kinds) or bool(
        {"disk_full", "disk_full_tiled_down", "session_redis_outage"} & set(kinds))
    env = _configure_env()
    counts: Counter = Counter()
    tmp = Path(tempfile.mkdtemp(prefix="pbi-faults-"))
    ioc = start_sim_ioc(tmp / "ioc", default_tray(), detector="Pilatus1M", seed=5,
                        env=env) if need_ioc else None
    pg = None
    backend: dict[str, str] = {}
    if args.tiled_backend == "postgresql":
        # a Tiled server on SQLite + DuckDB tables locked up after a restart ("database is
        # locked" until restarted again, duckdb/duckdb#21384): PostgreSQL for both
        pg = PostgresServer(tmp / "pg").start()
        backend = {"database": pg.asyncpg_uri, "tables": pg.tables_uri("pbi_tables")}
    server = TiledServer(tmp / "tiled", readable=[str(ioc.data_root)] if ioc else [],
                         **backend).start()
    os.environ["PBI_BENCH_TILED_KEY"] = server.api_key
    phases: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()
    try:
        if session_kinds:
            phases["session_scan"], _, _ = session_scan(args, session_kinds, ioc, server,
                                                     tmp / "data", args.frames, counts)
        if "disk_full" in kinds:
            phases["disk_full"] = disk_full_phase(args, ioc, server, tmp, counts)
        if "disk_full_tiled_down" in kinds:
            phases["disk_full_tiled_down"] = disk_full_outage_phase(args, ioc, server, tmp,
                                                                    counts)
        if "interleaved_outage" in kinds:
            phases["interleaved_outage"] = interleaved_phase(args, server, tmp, counts)
        if "session_redis_outage" in kinds:
            phases["session_redis_outage"] = session_bus_phase(args, ioc, server, tmp, counts)
        bus_kinds = tuple(k for k in BUS_KINDS if k in kinds)
        if bus_kinds:
            phases.update(bus_phase(args, bus_kinds, server, tmp, counts))
    finally:
        use_tray(None)
        server.stop()
        if pg is not None:
            pg.stop()
        if ioc is not None:
            stop_sim_ioc(ioc)
    totals = {k: sum(int(p.get(k) or 0) for p in phases.values()) for k in COUNT_KEYS}
    scan = phases.get("session_scan", {})
    result = {"benchmark": "bench_faults", **totals,
              "recovery_s": scan.get("recovery_s") if scan.get("recovery_s") is not None
              else max((p.get("recovery_s") or 0.0 for p in phases.values()), default=0.0),
              "faults": dict(counts), "kinds": list(kinds),
              "tiled_backend": args.tiled_backend, "total_s": round(
                  time.monotonic() - t0, 1),
              # the session scan's own keys, as before the phases
              **{k: scan[k] for k in ("scan_s", "outage_s", "spools_drained",
                                      "runs_rejected_by_tiled", "inbox_shed",
                                      "control_documents_dropped") if k in scan},
              "phases": phases}
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="detector frames (>= 200)")
    parser.add_argument("--exposure", type=float, default=0.05)
    parser.add_argument("--outage", type=float, default=30.0, help="Tiled down for this long")
    parser.add_argument("--outage-at", type=float, default=10.0, help="s into the scan")
    parser.add_argument("--sabotage-every", type=int, default=37,
                        help="delete/corrupt the HDF5 file of every Nth frame")
    parser.add_argument("--malformed", type=int, default=150, help="junk documents")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(DEFAULT_KINDS),
                        metavar="KIND", help=f"fault kinds to inject (default all"
                                             f"{' but ' if MEASURED_ONLY else ''}"
                                             f"{', '.join(MEASURED_ONLY)}): {', '.join(KINDS)}")
    parser.add_argument("--tiled-backend", choices=("postgresql", "sqlite"),
                        default="postgresql", help="the Tiled server's catalog and tables: "
                        "PostgreSQL, or SQLite + DuckDB (tiled's default)")
    parser.add_argument("--disk-frames", type=int, default=60,
                        help="frames of the disk_full scan (the disk fills halfway)")
    parser.add_argument("--disk-mib", type=int, default=16, help="size of its tmpfs")
    parser.add_argument("--combined-outage", type=float, default=10.0,
                        help="disk_full_tiled_down: Tiled down this long as the disk fills")
    parser.add_argument("--interleaved-pairs", type=int, default=3,
                        help="pairs of interleaved runs, one Tiled outage each")
    parser.add_argument("--bus-runs", type=int, default=3, help="runs per bus fault")
    parser.add_argument("--bus-rate", type=float, default=10.0,
                        help="frames per second published to the bus")
    parser.add_argument("--redis-down", type=float, default=5.0, help="Redis down for this long")
    parser.add_argument("--bus-session-frames", type=int, default=60,
                        help="frames of the session_redis_outage scan (Redis stops after a "
                             "third of them)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    result = run(args)
    for name, phase in result["phases"].items():
        print(f"{name}: frames sent {phase['frames_sent']}, accounted "
              f"{phase['frames_accounted']}; scans aborted {phase['scans_aborted']}; events "
              f"lost {phase['events_lost']}, duplicated {phase['events_duplicated']}"
              + (f"; skipped: {phase['skipped']}" if phase.get("skipped") else ""))
    print(f"frames sent {result['frames_sent']}, accounted {result['frames_accounted']}; "
          f"scans aborted {result['scans_aborted']}; analysis events lost "
          f"{result['events_lost']}, duplicated {result['events_duplicated']}; recovered "
          f"{result['recovery_s']} s after the fault ended; faults {result['faults']}")
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
