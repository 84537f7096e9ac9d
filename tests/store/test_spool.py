"""The crash-safe spool: torn records, crashed writers, locks, fsync, retention, replay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from event_model import compose_run

from pbi_bluesky.store import ReplayOutcome, ReplayResult, SpoolSink, read_spool_file
from tests.store.test_store import _analysis_run
from tests.store.writers import Memory, RefusingEvents, blocked_factory


def _wait(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_documents_reach_the_writer_and_files_move_to_done(tmp_path):
    mem = Memory()
    sink = SpoolSink(tmp_path / "spool", mem.factory, delete_partial=mem.delete)
    docs = _analysis_run("raw-1", "50:50", 1, 2.0, "S")
    for name, doc in docs:
        sink(name, doc)
    assert sink.flush(10)
    assert [n for n, _ in mem.docs] == [n for n, _ in docs]
    assert sink.pending() == []
    assert len(list((tmp_path / "spool" / "done").glob("*.spool"))) == 1
    sink.close()


def test_a_torn_last_record_does_not_stop_the_replay_of_other_runs(tmp_path):
    mem = Memory()
    mem.up = False
    sink = SpoolSink(tmp_path / "spool", mem.factory, delete_partial=mem.delete,
                     auto_replay=False)
    runs = [_analysis_run(f"raw-{i}", "50:50", 0, 1.0, f"S{i}") for i in range(3)]
    for docs in runs:
        for name, doc in docs:
            sink(name, doc)
    sink.flush(10)
    uids = [docs[0][1]["uid"] for docs in runs]
    assert sorted(sink.pending()) == sorted(uids)
    torn = tmp_path / "spool" / "pending" / f"{uids[1]}.spool"
    data = torn.read_bytes()
    torn.write_bytes(data[:-7])  # what a crash in the middle of an append leaves
    spooled = read_spool_file(torn)
    assert spooled.torn and len(spooled.docs) == len(runs[1]) - 1
    mem.up = True
    outcomes = sink.replay()
    assert all(o.outcome is ReplayOutcome.WRITTEN for o in outcomes.values()), outcomes
    assert "torn" in outcomes[uids[1]].detail and "abort" in outcomes[uids[1]].detail
    assert mem.runs() == set(uids)
    assert mem.stop_of(uids[1])["exit_status"] == "abort"
    assert mem.stop_of(uids[0])["exit_status"] == "success"
    sink.close()


_WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from pbi_bluesky.store import SpoolSink
from tests.store.test_store import _analysis_run
sink = SpoolSink({spool!r}, None)
docs = _analysis_run("raw-crash", "25:75", 1, 5.0, "C")
for name, doc in docs[:-1]:          # everything but the stop document
    sink(name, doc)
print(docs[0][1]["uid"], flush=True)
time.sleep(600)
"""


def test_a_run_whose_writer_process_dies_is_closed_as_aborted(tmp_path):
    root = Path(__file__).resolve().parents[2]
    spool = tmp_path / "spool"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(root=str(root),
                                                                   spool=str(spool))],
                            stdout=subprocess.PIPE, text=True)
    try:
        uid = proc.stdout.readline().strip()
        assert uid
        mem = Memory()
        sink = SpoolSink(spool, mem.factory, delete_partial=mem.delete, auto_replay=False)
        # the writer is alive and holds the run's lock: replay leaves the run alone
        assert sink.replay() == {uid: ReplayResult(ReplayOutcome.SKIPPED,
                                                   "being written by another process")}
        assert mem.docs == []
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        outcome = sink.replay()[uid]
        assert outcome.outcome is ReplayOutcome.WRITTEN and "abort" in outcome.detail
        stop = mem.stop_of(uid)
        assert stop["exit_status"] == "abort" and "crashed" in stop["reason"]
        assert sink.pending() == []
        sink.close()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_replay_is_automatic_once_the_writer_answers_again(tmp_path):
    mem = Memory()
    mem.up = False
    sink = SpoolSink(tmp_path / "spool", mem.factory, delete_partial=mem.delete,
                     replay_wait_initial=0.1, replay_wait_max=0.5)
    docs = _analysis_run("raw-auto", "75:25", 1, 3.0, "A")
    for name, doc in docs:
        sink(name, doc)
    sink.flush(10)
    assert sink.pending() == [docs[0][1]["uid"]]
    mem.up = True
    assert _wait(lambda: not sink.pending()), "no background replay"
    assert mem.runs() == {docs[0][1]["uid"]}
    assert sink.stats["replayed_runs"] == 1
    sink.close()


def test_stop_documents_and_moves_are_fsynced(tmp_path, monkeypatch):
    calls = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    mem = Memory()
    sink = SpoolSink(tmp_path / "spool", mem.factory, fsync_interval=3600)
    docs = _analysis_run("raw-f", "50:50", 0, 1.0, "F")
    for name, doc in docs[:-1]:
        sink(name, doc)
    before_stop = len(calls)
    sink(*docs[-1])
    assert len(calls) > before_stop  # the stop document is on disk before it is forwarded
    sink.flush(10)
    assert len(calls) >= before_stop + 2  # and the move to done/ (directory fsync)
    sink.close()


def test_done_files_are_pruned_by_age(tmp_path):
    done = tmp_path / "spool" / "done"
    done.mkdir(parents=True)
    old, new = done / "old.spool", done / "new.spool"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    ten_days = time.time() - 10 * 86400
    os.utime(old, (ten_days, ten_days))
    sink = SpoolSink(tmp_path / "spool", None, retention_days=7)
    assert not old.exists() and new.exists()
    sink.close()


def test_frames_are_spooled_as_raw_bytes_not_base64(tmp_path):
    sink = SpoolSink(tmp_path / "spool", None)
    bundle = compose_run()
    frame = np.random.default_rng(0).integers(0, 1000, (1043, 981), dtype=np.int32)
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "img": {"dtype": "array", "shape": list(frame.shape), "source": "x"}})
    sink("start", bundle.start_doc)
    sink("descriptor", desc.descriptor_doc)
    sink("event", desc.compose_event(data={"img": frame}, timestamps={"img": 0.0}, seq_num=1))
    path = tmp_path / "spool" / "pending" / f"{bundle.start_doc['uid']}.spool"
    assert path.stat().st_size < frame.nbytes * 1.01  # base64 JSON was 1.33x
    docs = read_spool_file(path).docs
    np.testing.assert_array_equal(docs[-1][1]["data"]["img"], frame)
    sink.close()


@pytest.mark.parametrize("junk", [b"", b"\x00" * 10, b"\xc1\xc1\xc1"])
def test_garbage_spool_files_are_reported_not_raised(tmp_path, junk):
    path = tmp_path / "x.spool"
    path.write_bytes(junk)
    spooled = read_spool_file(path)
    assert spooled.docs == [] and (spooled.error or not junk)


def test_a_run_the_writer_keeps_refusing_is_set_aside_not_lost(tmp_path):
    mem = RefusingEvents()
    sink = SpoolSink(tmp_path / "spool", mem.factory, delete_partial=mem.delete,
                     auto_replay=False, reject_after=2)
    docs = _analysis_run("raw-bad", "50:50", 0, 1.0, "B")
    for name, doc in docs:
        sink(name, doc)
    sink.flush(10)
    uid = docs[0][1]["uid"]
    assert str(sink.replay()[uid]).startswith("failed: ValueError")
    assert str(sink.replay()[uid]).startswith("rejected: ValueError")
    assert sink.pending() == [] and sink.rejected() == [uid]
    reason = (tmp_path / "spool" / "rejected" / f"{uid}.reason.txt").read_text()
    assert "broadcast" in reason
    assert len(read_spool_file(tmp_path / "spool" / "rejected" / f"{uid}.spool").docs) == 4
    sink.close()


def test_close_sets_aside_a_run_refused_for_its_content(tmp_path):
    """A run whose content the writer refuses is set aside by the close's last replays; the
    close stopped at the first replay without a run written (bench_faults left its fourth
    wrong-shape run pending: 'spools_drained' false), though a refusal moves the run toward
    rejected/ and an outage does not."""
    mem = RefusingEvents()
    sink = SpoolSink(tmp_path / "spool", mem.factory, delete_partial=mem.delete,
                     reject_after=3, replay_wait_initial=60, replay_wait_max=60)
    docs = _analysis_run("raw-late", "50:50", 0, 1.0, "L")
    for name, doc in docs:
        sink(name, doc)
    uid = docs[0][1]["uid"]
    assert sink.close(30) is True
    assert sink.pending() == [] and sink.rejected() == [uid]


def _locked() -> Exception:
    import sqlite3

    import sqlalchemy.exc

    return sqlalchemy.exc.OperationalError("INSERT INTO nodes", {},
                                           sqlite3.OperationalError("database is locked"))


@pytest.mark.parametrize("error", [
    pytest.param(lambda: ConnectionError("downstream is down"), id="connection"),
    pytest.param(_locked, id="database-locked"),
])
def test_outages_are_retried_forever_not_rejected(tmp_path, error):
    mem = Memory()
    mem.up = False
    mem.error = error()
    sink = SpoolSink(tmp_path / "spool", mem.factory, auto_replay=False, reject_after=1)
    docs = _analysis_run("raw-o", "50:50", 0, 1.0, "O")
    for name, doc in docs:
        sink(name, doc)
    sink.flush(10)
    for _ in range(3):
        assert str(sink.replay()[docs[0][1]["uid"]]).startswith(
            f"failed: {type(mem.error).__name__}")
    assert sink.rejected() == []
    sink.close()


def test_a_new_run_start_goes_ahead_of_other_runs_backlog(tmp_path):
    """A run's start is forwarded ahead of the documents other runs have waiting (the agent
    waits for a flagged raw run in Tiled, issue 22); each run's own documents keep their
    order."""
    mem = Memory()
    slow_factory, entered, release = blocked_factory(mem)

    sink = SpoolSink(tmp_path / "spool", slow_factory, auto_replay=False)
    first = _analysis_run("raw-1", "50:50", 1, 2.0, "S")
    second = _analysis_run("raw-2", "50:50", 1, 2.0, "S")
    sink(*first[0])
    assert entered.wait(10)  # the forwarder is inside the first run's start
    for name, doc in first[1:] + second:
        sink(name, doc)
    release.set()
    assert sink.flush(10)
    a, b = first[0][1]["uid"], second[0][1]["uid"]
    order = [(n, d.get("uid") if n == "start" else d.get("run_start") or d.get("descriptor"))
             for n, d in mem.docs]
    assert order[:2] == [("start", a), ("start", b)], order
    for docs in (first, second):
        own = [n for n, d in mem.docs if any(d is doc for _, doc in docs)]
        assert own == [n for n, _ in docs]
    assert sink.pending() == []
    sink.close()


def test_replay_outcomes_are_an_enum_that_reads_as_text(tmp_path):
    """Issue 20 (c): each run's outcome is a ReplayOutcome (str-valued) with its detail,
    not a string to match by prefix; str() and JSON stay readable."""
    import json
    from dataclasses import asdict

    mem = Memory()
    mem.up = False
    sink = SpoolSink(tmp_path / "spool", mem.factory, auto_replay=False)
    done = _analysis_run("raw-e1", "50:50", 0, 1.0, "E1")
    for name, doc in done:
        sink(name, doc)
    sink.flush(10)
    still_open = _analysis_run("raw-e2", "50:50", 0, 1.0, "E2")
    for name, doc in still_open[:-1]:  # no stop yet: in progress here
        sink(name, doc)
    sink.flush(10)  # its start meets the outage (else the forwarder may see it up: a race)
    a, b = done[0][1]["uid"], still_open[0][1]["uid"]
    first = sink.replay()
    assert first[a].outcome is ReplayOutcome.FAILED and not first[a].progress
    assert first[a].detail == "ConnectionError: downstream is down"
    assert str(first[a]) == "failed: ConnectionError: downstream is down"
    assert first[b] == ReplayResult(ReplayOutcome.OPEN, "run in progress here")
    assert str(first[b]) == "open (run in progress here)"
    mem.up = True
    second = sink.replay()
    assert second[a] == ReplayResult(ReplayOutcome.WRITTEN) and second[a].progress
    assert str(second[a]) == "written"
    assert json.loads(json.dumps(asdict(second[a]))) == {"outcome": "written", "detail": ""}
    sink(*still_open[-1])  # its start met the outage: the run is left to a replay
    sink.flush(10)
    assert sink.replay() == {b: ReplayResult(ReplayOutcome.WRITTEN)}
    assert sink.close(10) and mem.runs() == {a, b}
