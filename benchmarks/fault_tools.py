"""Shared tools of the fault benchmark (``bench_faults.py``).

The pieces its phases (``fault_phases.py``, ``fault_bus.py``) are built from: counting the
frames a RunEngine emits (``FrameCounter``), the faults themselves (``Saboteur``,
``_bad_detector``, ``_malformed_documents``, ``_outage``, ``TmpfsDisk``, ``ConfigWorker``),
and reading the runs back from Tiled afterwards (``_read_back``, ``_raw_frames_in_tiled``,
``_unencodable_check``).
"""

from __future__ import annotations

import logging
import os
import sys
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
COUNT_KEYS = ("frames_sent", "frames_accounted", "scans_aborted", "events_lost",
              "events_duplicated")


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


def _unencodable_md() -> dict[str, Any]:
    """Start metadata msgpack (and JSON) cannot carry as they are."""
    return {"when": np.datetime64("2026-12-06T10:00"),
            "table": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
            "huge": 2 ** 64, "nested": {"ok": 1, "bad": [np.datetime64("2026-12-06")]}}


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
