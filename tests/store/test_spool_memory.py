"""Issue 20: memory held for forwarding is bounded in bytes, not in document counts."""

from __future__ import annotations

import threading
import time

import numpy as np
from event_model import compose_run

from pbi_bluesky.store import SpoolSink

FRAME = (1043, 981)  # a Pilatus 1M frame, int32: 4.1 MB inline in each event


class SlowWriter:
    """A downstream writer that takes its time, so documents pile up in the spool's queue."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.docs: list[tuple[str, dict]] = []

    def __call__(self, name: str, doc: dict) -> None:
        self.gate.wait(30)
        self.docs.append((name, doc))


def _frame_run(n: int):
    run = compose_run()
    docs = [("start", run.start_doc)]
    desc = run.compose_descriptor(
        name="primary",
        data_keys={"img": {"source": "sim", "dtype": "array", "shape": list(FRAME),
                           "dtype_numpy": "<i4"}})
    docs.append(("descriptor", desc.descriptor_doc))
    for i in range(n):
        frame = np.full(FRAME, i, dtype=np.int32)
        docs.append(("event", desc.compose_event(data={"img": frame},
                                                 timestamps={"img": time.time()})))
    docs.append(("stop", run.compose_stop()))
    return docs


def test_inline_frames_past_the_byte_budget_are_forwarded_from_the_file(tmp_path):
    budget = 10 << 20  # two and a bit frames
    gate = threading.Event()
    writer = SlowWriter(gate)
    sink = SpoolSink(tmp_path, lambda: writer, max_bytes=budget, auto_replay=False)
    docs = _frame_run(12)  # 49 MB of frames
    for name, doc in docs:
        sink(name, doc)  # the writer is blocked: everything queues
    # the queue's own counter, not the RSS: under the budget while 12 frames wait
    assert 0 < sink.held_bytes <= budget
    gate.set()
    assert sink.flush(60)
    assert sink.stats["peak_held_bytes"] <= budget
    assert sink.stats["from_disk"] >= 9  # at most two 4 MB frames fit in 10 MiB
    assert sink.held_bytes == 0
    # every document arrived once, in order, with its frame intact
    assert [n for n, _ in writer.docs] == [n for n, _ in docs]
    assert [d["uid"] for _, d in writer.docs] == [d["uid"] for _, d in docs]
    for (_, sent), (_, got) in zip(docs[2:-1], writer.docs[2:-1], strict=True):
        np.testing.assert_array_equal(got["data"]["img"], sent["data"]["img"])
    assert sink.pending() == []  # the run is downstream: its file moved to done/
    sink.close(5)


def test_under_the_budget_documents_stay_in_memory(tmp_path):
    gate = threading.Event()
    gate.set()
    writer = SlowWriter(gate)
    sink = SpoolSink(tmp_path, lambda: writer, auto_replay=False)  # default 256 MiB
    docs = _frame_run(3)
    for name, doc in docs:
        sink(name, doc)
    assert sink.flush(30)
    assert sink.stats["from_disk"] == 0
    assert [d["uid"] for _, d in writer.docs] == [d["uid"] for _, d in docs]
    sink.close(5)


def test_a_spool_file_of_the_previous_version_still_replays(tmp_path):
    """The record log kept the spool's framing: a file written the old way (records of
    codec.encode_document appended back to back, a torn tail from a crash) replays."""
    from pbi_bluesky.codec import encode_document

    docs = _frame_run(2)
    uid = docs[0][1]["uid"]
    pending = tmp_path / "pending"
    pending.mkdir(parents=True)
    data = b"".join(encode_document(n, d) for n, d in docs)
    (pending / f"{uid}.spool").write_bytes(data + encode_document(*docs[2])[:100])
    gate = threading.Event()
    gate.set()
    writer = SlowWriter(gate)
    sink = SpoolSink(tmp_path, lambda: writer, auto_replay=False)
    outcome = sink.replay()[uid]
    assert str(outcome).startswith("written (") and "torn" in outcome.detail
    assert [d["uid"] for _, d in writer.docs] == [d["uid"] for _, d in docs]
    sink.close(5)


class Tally:
    """A downstream writer that keeps only what it needs to check the replay: names,
    uids and each frame's first value (not the frames themselves)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int | None]] = []

    def __call__(self, name: str, doc: dict) -> None:
        img = doc.get("data", {}).get("img") if name == "event" else None
        self.seen.append((name, doc["uid"], None if img is None else int(img.flat[0])))


def test_a_pending_run_larger_than_the_budget_replays_in_bounded_memory(tmp_path):
    """Issue 20 (a): the replay streams a pending run's records instead of reading the
    whole file into memory first (the old code held all 32 MiB of frames at once)."""
    import tracemalloc

    from pbi_bluesky.codec import encode_document

    frame = (512, 128)  # 256 KiB of int32 per event
    run = compose_run()
    desc = run.compose_descriptor(
        name="primary",
        data_keys={"img": {"source": "sim", "dtype": "array", "shape": list(frame),
                           "dtype_numpy": "<i4"}})
    uid = run.start_doc["uid"]
    pending = tmp_path / "pending"
    pending.mkdir(parents=True)
    expected = [("start", uid, None), ("descriptor", desc.descriptor_doc["uid"], None)]
    n = 128  # 32 MiB of frames, four times the budget below
    with open(pending / f"{uid}.spool", "wb") as fh:
        fh.write(encode_document("start", run.start_doc))
        fh.write(encode_document("descriptor", desc.descriptor_doc))
        for i in range(n):
            event = desc.compose_event(data={"img": np.full(frame, i, dtype=np.int32)},
                                       timestamps={"img": 0.0})
            fh.write(encode_document("event", event))
            expected.append(("event", event["uid"], i))
        stop = run.compose_stop()
        fh.write(encode_document("stop", stop))
        expected.append(("stop", stop["uid"], None))
    budget = 8 << 20
    assert (pending / f"{uid}.spool").stat().st_size > 4 * budget
    tally = Tally()
    sink = SpoolSink(tmp_path, lambda: tally, max_bytes=budget, auto_replay=False)
    tracemalloc.start()
    try:
        outcome = sink.replay()[uid]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sink.close(5)
    assert str(outcome) == "written"
    assert tally.seen == expected  # every document once, in order, each frame its own
    assert sink.pending() == []
    # one record and one read chunk at a time, not the file: the old code peaked > 32 MiB
    assert peak < budget, f"replay peaked at {peak / 2**20:.1f} MiB"
