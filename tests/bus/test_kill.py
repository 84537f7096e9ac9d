"""SIGKILL the coordinating worker mid-run, mid-frame: nothing is lost or duplicated."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np

from pbi_bluesky.bus import SCORER_GROUP, BusNames, BusPublisher, connect
from tests.bus.runs import analysis_runs, frame_table, sample_md, shots, wait_for_analysis
from tests.live.docs import run_docs

BEAMLINE = "kill"
NAMES = BusNames(BEAMLINE)
FRAMES = 48


def _pending(client, consumer: str) -> int:
    return len(client.xpending_range(NAMES.frames, SCORER_GROUP, "-", "+", 1000,
                                     consumername=consumer))


def test_sigkill_a_worker_mid_run_loses_and_duplicates_nothing(
        start_workers, redis_server, runs_client, bus_instrument, bus_files, tmp_path):
    workers = start_workers(BEAMLINE, "k1", "k2", extra=("--batch-size", "4"))
    client = connect(redis_server.url)
    deadline = time.monotonic() + 30
    while client.get(NAMES.lease) is None:
        assert time.monotonic() < deadline, "no coordinator"
        time.sleep(0.05)
    leader = client.get(NAMES.lease).decode()
    victim = next(w for w in workers if w.name == leader)
    survivor = next(w for w in workers if w.name != leader)

    rng = np.random.default_rng(9)
    uid, docs = run_docs(sample_md(bus_files["poni_text"], sample="kill"),
                         shots(bus_instrument, rng, FRAMES))
    pub = BusPublisher(redis_server.url, BEAMLINE, outbox_dir=tmp_path / "o")

    def scan():  # bursts of 8 frames, as a detector's frames come in
        for name, doc in docs:
            pub(name, doc)
            if name == "event" and doc["seq_num"] % 8 == 0:
                time.sleep(0.25)

    thread = threading.Thread(target=scan)
    thread.start()
    # freeze the coordinator while it holds frames it has not acknowledged, then kill it
    killed_with = 0
    deadline = time.monotonic() + 60
    while not killed_with:
        assert time.monotonic() < deadline, "never caught the victim holding frames"
        if int(client.hget(NAMES.run(uid), "done") or 0) >= 8 and _pending(client, leader):
            os.kill(victim.proc.pid, signal.SIGSTOP)
            killed_with = _pending(client, leader)
            if killed_with:
                victim.kill()
            else:
                os.kill(victim.proc.pid, signal.SIGCONT)
        time.sleep(0.002)
    done_at_kill = int(client.hget(NAMES.run(uid), "done") or 0)
    thread.join()
    assert pub.flush(30)
    pub.close(10)

    def diagnose():
        return f"--- {survivor.name}\n{survivor.log_tail(3000)}"

    (analysis,) = wait_for_analysis(runs_client, uid, 120, diagnose=diagnose)
    assert done_at_kill < FRAMES, "the run was over before the kill"
    rows = frame_table(analysis)
    lost = sorted(set(range(1, FRAMES + 1)) - set(rows))
    duplicated = sorted(s for s, r in rows.items() if r["count"] > 1)
    assert lost == [] and duplicated == [], (lost, duplicated)
    assert all(r["status"] == "scored" for r in rows.values())
    summary = analysis.metadata["stop"]["pbi_summary"]
    assert summary["frames"] == summary["accounted"] == summary["scored"] == FRAMES
    assert len(analysis_runs(runs_client, uid)) == 1  # the partial copy was replaced
    assert int(client.hget(NAMES.stats, "claimed") or 0) >= killed_with
    assert client.get(NAMES.lease).decode() == survivor.name
    assert client.xpending(NAMES.frames, SCORER_GROUP)["pending"] == 0
