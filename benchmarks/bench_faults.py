"""Fault injection: a real scan keeps going, and every frame is accounted for afterwards.

A RunEngine session built from the sim IOC's beamline.yaml (stock ophyd devices over Channel
Access, the live scorer, crash-safe spools, a real Tiled server process) measures >= 200
frames while faults are injected:

* ``nan_frame`` / ``wrong_shape`` - frames from a second (ophyd.sim) detector in the same
  RunEngine: NaN pixels, a frame of the wrong size;
* ``missing_hdf5`` / ``corrupt_hdf5`` - the detector's HDF5 file deleted or overwritten with
  garbage after it was written and before the scorer reads it;
* ``tiled_down`` - the Tiled server stopped for ``--outage`` s mid-scan, then restarted;
* ``malformed_document`` - hypothesis-generated documents (missing keys, wrong types, huge
  strings, unknown descriptor uids) pushed into the scorer from another thread.

It reports frames sent and accounted for, scans aborted by our code, analysis events lost
and duplicated after recovery (read back from Tiled), and seconds to recover. The last line
is JSON with ``frames_sent``, ``frames_accounted``, ``scans_aborted``, ``events_lost``,
``events_duplicated``, ``recovery_s`` and ``faults``.

Usage::

    python benchmarks/bench_faults.py [--frames 200] [--outage 30] [--exposure 0.05]
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
        self.exit_status: Counter = Counter()

    def __call__(self, name: str, doc: dict) -> None:
        from pbi_bluesky.scoring import image_keys

        if name == "descriptor" and image_keys(doc):
            self.image_descriptors.add(doc["uid"])
        elif name == "event" and doc["descriptor"] in self.image_descriptors:
            run = self._run_of.get(doc["descriptor"], "?")
            self.frames.add((run, int(doc["seq_num"])))
        if name == "descriptor":
            self._run_of[doc["uid"]] = doc["run_start"]
        elif name == "stop":
            self.exit_status[doc.get("exit_status")] += 1


class Saboteur:
    """Deletes or corrupts the detector's HDF5 file of chosen frames right after the
    RunEngine emits their event (the file exists; the scorer has not read it yet)."""

    def __init__(self, every: int) -> None:
        self.every = int(every)
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
            kind = "missing_hdf5" if (self.count // self.every) % 2 else "corrupt_hdf5"
            try:
                if kind == "missing_hdf5":
                    path.rename(path.with_suffix(".moved"))
                else:
                    path.write_bytes(os.urandom(4096))
                self.done[kind] += 1
            except OSError as exc:
                log.warning("saboteur could not %s %s: %s", kind, path, exc)


def _bad_detector(shape: tuple[int, int]):
    """An ophyd.sim detector publishing under the real detector's image key whose frames
    are NaN-laced (odd reads) or of the wrong size (even reads): a float pipeline gone
    wrong upstream of the scorer."""
    from ophyd.sim import SynSignal

    state = {"n": 0}

    def frame():
        state["n"] += 1
        if state["n"] % 2:
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


def _read_back(runs: Any, counter: FrameCounter) -> dict[str, int]:
    """Analysis events in Tiled per (raw uid, seq_num), and the ledgers."""
    from tiled.queries import Key

    seen: Counter = Counter()
    accounted = 0
    for uid in list(runs.search(Key("pbi_analysis") == True)):  # noqa: E712
        run = runs[uid]
        md = run.metadata
        raw = md["start"]["raw_uid"]
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp

    from pbi_bluesky.demos.beamline import sim_beamline_config
    from pbi_bluesky.plans import use_tray
    from pbi_bluesky.reduction import load_geometry
    from pbi_bluesky.session import build_session
    from pbi_bluesky.simulate import Instrument, expected_dark
    from pbi_bluesky.testing.iocs import start_sim_ioc, stop_sim_ioc
    from pbi_bluesky.testing.services import TiledServer
    from sim_iocs.tray import default_tray

    env = _configure_env()
    counts: Counter = Counter()
    tmp = Path(tempfile.mkdtemp(prefix="pbi-faults-"))
    ioc = start_sim_ioc(tmp / "ioc", default_tray(), detector="Pilatus1M", seed=5, env=env)
    server = TiledServer(tmp / "tiled", readable=[str(ioc.data_root)]).start()
    os.environ["PBI_BENCH_TILED_KEY"] = server.api_key
    try:
        cfg = sim_beamline_config(ioc, connection_timeout_s=15.0).with_overrides(
            tiled={"uri": server.uri, "api_key_env": "PBI_BENCH_TILED_KEY"})
        instrument = Instrument(geometry=load_geometry(str(ioc.poni_path)))
        session = build_session(cfg, data_root=tmp / "data", plots=False, live_table=False,
                                persistent_md=False,
                                scorer_kwargs={"dark": expected_dark(instrument,
                                                                     args.exposure),
                                               "queue_size": 256})
        RE, bl, scorer = session.RE, session.beamline, session.scorer
        counter = FrameCounter()
        saboteur = Saboteur(every=args.sabotage_every)
        RE.subscribe(counter)
        RE.subscribe(saboteur)
        bad = _bad_detector(instrument.shape)
        n_runs = max(1, args.frames // FRAMES_PER_RUN)
        slots = [s.slot for s in default_tray()]
        bl.detector.cam.acquire_time.put(args.exposure)
        bl.detector.cam.acquire_period.put(args.exposure)

        def scan():
            yield from bps.mv(bl.changer, 0)
            yield from bp.count(bl.readables, num=1, md={"sample_type": "empty_cell",
                                                         "slot": 0})
            for i in range(n_runs):
                slot = slots[i % len(slots)]
                tray = next(s for s in default_tray() if s.slot == slot)
                md = {"slot": slot, "sample": tray.sample, "composition": tray.composition,
                      "thickness_cm": tray.thickness_cm, "purpose": "fault benchmark"}
                yield from bps.mv(bl.changer, slot)
                yield from bp.count(bl.readables, num=FRAMES_PER_RUN, md=md)
                if i % max(1, n_runs // 4) == 0:
                    yield from bp.count([bad, *bl.monitors], num=2,
                                        md={**md, "sample": "bad frames"})
                    counts["nan_frame"] += 1
                    counts["wrong_shape"] += 1

        stop = threading.Event()
        junk = _malformed_documents(args.malformed)
        injector = threading.Thread(target=_inject_malformed, args=(scorer, junk, stop, counts),
                                    daemon=True)
        marks: dict[str, float] = {}
        outage = threading.Thread(target=_outage, daemon=True,
                                  args=(server, args.outage_at, args.outage, counts, marks))
        watcher = threading.Thread(target=_watch_recovery, daemon=True,
                                   args=([session.raw_spool, session.analysis_spool], marks,
                                         stop))
        t0 = time.monotonic()
        injector.start()
        outage.start()
        watcher.start()
        aborted = 0
        try:
            RE(scan())
        except Exception as exc:  # noqa: BLE001 - a scan killed by our code is the finding
            aborted += 1
            log.error("scan aborted: %s", exc)
        scan_s = time.monotonic() - t0
        outage.join(args.outage + args.outage_at + 60)
        scorer.flush(300)
        watcher.join(300)
        stop.set()
        t_drain = time.monotonic()
        ok = session.close(300)
        drained = time.monotonic()
        counts.update(saboteur.done)
        runs = session.catalog.runs
        back = _read_back(runs, counter)
        recovered = marks.get("recovered_at", drained)
        recovery_s = recovered - marks.get("up_at", t_drain)
        result = {
            "benchmark": "bench_faults",
            "frames_sent": len(counter.frames),
            "frames_accounted": back["frames_accounted"],
            "scans_aborted": aborted + counter.exit_status.get("abort", 0)
            + counter.exit_status.get("fail", 0),
            "events_lost": back["events_lost"],
            "events_duplicated": back["events_duplicated"],
            "recovery_s": round(recovery_s, 1),
            "faults": dict(counts),
            "scan_s": round(scan_s, 1),
            "outage_s": args.outage,
            "spools_drained": ok,
            "runs_rejected_by_tiled": len(session.raw_spool.rejected())
            + len(session.analysis_spool.rejected()),
            "inbox_shed": scorer.inbox.shed,
            "control_documents_dropped": scorer.inbox.dropped_control,
        }
        return result
    finally:
        use_tray(None)
        server.stop()
        stop_sim_ioc(ioc)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="detector frames (>= 200)")
    parser.add_argument("--exposure", type=float, default=0.05)
    parser.add_argument("--outage", type=float, default=30.0, help="Tiled down for this long")
    parser.add_argument("--outage-at", type=float, default=10.0, help="s into the scan")
    parser.add_argument("--sabotage-every", type=int, default=37,
                        help="delete/corrupt the HDF5 file of every Nth frame")
    parser.add_argument("--malformed", type=int, default=150, help="junk documents")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    result = run(args)
    print(f"frames sent {result['frames_sent']}, accounted {result['frames_accounted']}; "
          f"scans aborted {result['scans_aborted']}; analysis events lost "
          f"{result['events_lost']}, duplicated {result['events_duplicated']}; recovered "
          f"{result['recovery_s']} s after Tiled came back; faults {result['faults']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
