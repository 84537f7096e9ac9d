"""The RunEngine thread only queues; the worker owns the state; every frame is accounted."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pbi_bluesky.live import Inbox, LiveScorer
from tests.live.docs import feed, run_docs

FRAME = np.ones((8, 8), dtype=np.int32)


def _interleaved(n_runs: int, n_frames: int):
    """Documents of many runs, interleaved the way concurrent RunEngines/streams do."""
    runs = [run_docs({"composition": "50:50", "thickness_cm": 0.1},
                     [(FRAME, 1e9, 0.8)] * n_frames) for _ in range(n_runs)]
    streams = [list(docs) for _, docs in runs]
    out = []
    while any(streams):
        for s in streams:
            if s:
                out.append(s.pop(0))
    return [uid for uid, _ in runs], out


def test_interleaved_runs_from_another_thread_are_all_accounted(tiny_model):
    scorer = LiveScorer(tiny_model, queue_size=8, overflow="block", put_timeout=5.0)
    uids, docs = _interleaved(30, 12)
    producer = threading.Thread(target=feed, args=(scorer, docs))
    producer.start()
    producer.join(120)
    try:
        assert scorer.flush(120)
        for uid in uids:
            summary = scorer.channel.summaries[uid]
            assert summary["frames"] == 12 == summary["accounted"], summary
            assert summary["shed"] == 0
        assert scorer.inbox.dropped_control == 0
    finally:
        scorer.close()


def test_shed_mode_never_waits_and_counts_every_shed_frame(tiny_model):
    scorer = LiveScorer(tiny_model, queue_size=2, overflow="shed")
    uids, docs = _interleaved(4, 50)
    feed(scorer, docs)
    try:
        assert scorer.flush(120)
        shed = 0
        for uid in uids:
            summary = scorer.channel.summaries[uid]
            assert summary["frames"] == 50 == summary["accounted"], summary
            shed += summary["shed"]
        assert shed == scorer.inbox.shed > 0
        assert scorer.inbox.max_wait_s == 0.0
    finally:
        scorer.close()


def test_a_stuck_sink_costs_the_scan_at_most_put_timeout_per_frame(tiny_model):
    """A sink that hangs (a dead server without timeouts) stalls the worker, not the scan."""
    release = threading.Event()

    def hanging(name, doc):
        release.wait(60)

    scorer = LiveScorer(tiny_model, sinks=[hanging], queue_size=4, overflow="block",
                        put_timeout=0.05)
    uids, docs = _interleaved(1, 40)
    fed = threading.Event()

    def scan():
        feed(scorer, docs)
        fed.set()

    threading.Thread(target=scan, daemon=True).start()
    # the scan gets through all its documents while the sink still hangs (a scan blocked
    # by the sink would wait for the release, 60 s per document): frames past the full
    # inbox are shed after put_timeout, counted; no wall-clock bound is asserted
    assert fed.wait(120), "the scan waited on the hung sink"
    assert not release.is_set() and scorer.inbox.shed > 0
    release.set()
    try:
        assert scorer.flush(120)
        summary = scorer.channel.summaries[uids[0]]
        assert summary["accounted"] == summary["frames"] == 40
        assert summary["shed"] > 0
    finally:
        scorer.close()


def test_inbox_keeps_order_and_bounds_frames_and_control_separately():
    inbox = Inbox(2, overflow="shed", control_limit=3)
    assert inbox.put("start", {"uid": "a"})
    assert inbox.put("event", {"descriptor": "d", "seq_num": 1})
    assert inbox.put("event", {"descriptor": "d", "seq_num": 2})
    assert not inbox.put("event", {"descriptor": "d", "seq_num": 3})  # -> a shed marker
    assert inbox.put("stop", {"run_start": "a"})
    assert not inbox.put("stop", {"run_start": "b"})  # control bound reached: dropped
    assert inbox.dropped_control == 1 and inbox.shed == 1
    names = [inbox.get(0)[0] for _ in range(5)]
    assert names == ["start", "event", "event", "shed", "stop"]
    assert inbox.get(0) is None


@pytest.mark.parametrize("bad", [
    ("event", {}), ("descriptor", {"run_start": "nope"}), ("stop", {}),
    ("stream_datum", {"descriptor": "x", "seq_nums": {"start": 1, "stop": 3}}),
    ("datum", {"resource": "r", "datum_id": "r/1"}), ("resource", {"uid": "r"}),
    ("start", {}), ("event_page", {"descriptor": "x"}), ("bogus", {"a": 1}),
], ids=lambda b: b[0] if isinstance(b, tuple) else None)
def test_malformed_documents_never_reach_the_caller(tiny_model, bad):
    scorer = LiveScorer(tiny_model)
    try:
        scorer(*bad)  # must not raise
        uid, docs = run_docs({"composition": "50:50"}, [(FRAME, 1e9, 0.8)])
        feed(scorer, docs)
        assert scorer.flush(30)
        assert scorer.channel.summaries[uid]["accounted"] == 1  # still working
    finally:
        scorer.close()
