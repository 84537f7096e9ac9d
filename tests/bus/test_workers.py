"""Two ``pbi worker`` processes share the frames of each run through a real Redis, write one
analysis run per raw run to a real Tiled server, and score exactly as the in-process
LiveScorer does."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from pbi_bluesky.bus import SCORER_GROUP, BusNames, BusPublisher, connect, decode_result
from pbi_bluesky.live import LiveScorer
from tests.bus.runs import (
    cell_run,
    datum_run,
    frame_table,
    sample_md,
    shots,
    stream_run,
    wait_for_analysis,
)
from tests.live.docs import feed, run_docs

BEAMLINE = "two"
NAMES = BusNames(BEAMLINE)


@pytest.fixture(scope="module")
def pair(start_workers):
    return start_workers(BEAMLINE, "w1", "w2", extra=("--batch-size", "2"))


@pytest.fixture(scope="module")
def client(redis_server):
    return connect(redis_server.url)


@pytest.fixture()
def publisher(redis_server, tmp_path):
    pub = BusPublisher(redis_server.url, BEAMLINE, outbox_dir=tmp_path / "outbox")
    yield pub
    pub.close(10)


def _diagnose(workers):
    return lambda: "\n".join(f"--- {w.name}\n{w.log_tail(1500)}" for w in workers)


def _signals(frames):
    from ophyd.sim import SynSignal

    state = {"i": -1}

    def image():
        state["i"] += 1
        return frames[state["i"]][0]

    signals = [SynSignal(func=image, name="det_image"),
               SynSignal(func=lambda: float(frames[state["i"]][1]), name="beam_i0"),
               SynSignal(func=lambda: float(frames[state["i"]][2]), name="beam_transmission")]
    state["i"] = -1  # SynSignal calls func once when it is made
    return signals


def _assert_same(bus_rows: dict, live_results: list, uid: str) -> None:
    live = {r.raw_seq_num: r for r in live_results}
    assert sorted(bus_rows) == sorted(live), uid
    for seq, row in bus_rows.items():
        ref = live[seq]
        assert row["count"] == 1, f"frame {seq} of {uid} written {row['count']} times"
        assert row["status"] == ref.status and row["reason"] == ref.reason, (seq, row, ref)
        for key in ("score", "threshold", "p_value", "hyperscore"):
            a, b = float(row[key]), float(getattr(ref, key))
            assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-9, (seq, key, a, b)
        assert bool(row["is_anomaly"]) == ref.is_anomaly
        assert row["predicted_composition"] == ref.predicted_composition


def _warm_both(publisher, client, pair, bus_instrument, rng, poni) -> None:
    """Small runs until each worker has scored a frame of this geometry: a worker builds
    its reducer on its first frame (seconds on a loaded machine), and meanwhile a warm one
    can take every frame of a short run, which would say nothing about splitting."""
    want = {w.name for w in pair}
    seen: set[str] = set()
    for _ in range(12):
        uid, docs = run_docs(sample_md(poni, sample="warm-up"), shots(bus_instrument, rng, 4))
        feed(publisher, docs)
        assert publisher.flush(30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(client.hvals(NAMES.run_results(uid))) < 4:
            time.sleep(0.1)
        seen |= {decode_result(b)["worker"] for b in client.hvals(NAMES.run_results(uid))}
        if want <= seen:
            return
    raise AssertionError(f"only {seen} of {want} scored warm-up frames")


def test_two_workers_split_the_frames_and_match_the_live_scorer(
        pair, client, publisher, runs_client, bus_instrument, bus_files, core_kwargs):
    """A real RunEngine publishes; both workers score frames of the same run; every frame
    is written once, with the in-process scorer's verdict (scores to 1e-9), for inline,
    Resource/Datum and StreamResource frames, broken frames and an empty cell."""
    from bluesky import RunEngine
    from bluesky.plans import count

    rng = np.random.default_rng(2)
    poni = bus_files["poni_text"]
    live = LiveScorer(**core_kwargs)
    try:
        runs = [cell_run(bus_instrument, rng, poni)]
        for _uid, docs in runs:
            feed(publisher, docs)
            feed(live, docs)
        _warm_both(publisher, client, pair, bus_instrument, rng, poni)
        frames = shots(bus_instrument, rng, 36)
        RE = RunEngine({})
        RE.subscribe(publisher)
        RE.subscribe(live)
        (raw_uid,) = RE(count(_signals(frames), num=len(frames)), **sample_md(poni))
        runs.append((raw_uid, None))
        good = frames[0]
        nan_frame = good[0].astype(np.float64)
        nan_frame[60, 10:20] = np.nan
        bad = [(nan_frame, good[1], good[2]), (good[0][:50, :50], good[1], good[2]),
               (good[0], good[1], 0.0), good]
        extra = [run_docs(sample_md(poni, sample="bad"), bad, shape=list(good[0].shape)),
                 datum_run(sample_md(poni, sample="datum"), frames[:5], bus_files["data"]),
                 stream_run(sample_md(poni, sample="stream"), frames[5:10], bus_files["data"])]
        for uid, docs in extra:
            feed(publisher, docs)
            feed(live, docs)
            runs.append((uid, docs))
        assert publisher.flush(30)
        assert live.flush(120)
        workers_seen: dict[str, int] = {}
        for uid, _ in runs:
            (analysis,) = wait_for_analysis(runs_client, uid, 120, diagnose=_diagnose(pair))
            rows = frame_table(analysis)
            _assert_same(rows, live.channel.results(uid), uid)
            summary = analysis.metadata["stop"]["pbi_summary"]
            ref = live.channel.summaries[uid]
            for key in ("frames", "scored", "failed", "flagged", "accounted", "verdict"):
                assert summary[key] == ref[key], (uid, key, summary, ref)
            assert analysis.metadata["start"]["model_sha256"] == \
                live.model_info["model_sha256"]
            for blob in client.hvals(NAMES.run_results(uid)):
                who = decode_result(blob)["worker"]
                workers_seen[who] = workers_seen.get(who, 0) + 1
        big = {decode_result(b)["worker"] for b in client.hvals(NAMES.run_results(raw_uid))}
        assert {"w1", "w2"} <= big, f"one run's frames were not split: {big}"
        assert sum(workers_seen.values()) == 1 + 36 + 4 + 5 + 5
        flagged = [r for r in live.channel.results(raw_uid) if r.is_anomaly]
        assert flagged and any(not r.is_anomaly for r in live.channel.results(raw_uid))
        explained = analysis_attributions(runs_client, raw_uid)
        assert explained == len(flagged)
    finally:
        live.close()


def analysis_attributions(runs, raw_uid: str) -> int:
    from tests.bus.runs import analysis_runs

    (run,) = analysis_runs(runs, raw_uid)
    table = run["pbi_attribution"].read()
    return len(table["raw_seq_num"])


def test_redelivered_frames_and_repeated_documents_are_written_once(
        pair, client, publisher, runs_client, bus_instrument, bus_files):
    """At-least-once delivery: every document sent twice (as a publisher resend would), and
    a finished frame's work item delivered again, give no second analysis event."""
    rng = np.random.default_rng(3)
    uid, docs = run_docs(sample_md(bus_files["poni_text"], sample="twice"),
                         shots(bus_instrument, rng, 6))
    doubled = [d for pair_ in zip(docs, docs, strict=True) for d in pair_]
    feed(publisher, doubled)
    assert publisher.flush(30)
    (analysis,) = wait_for_analysis(runs_client, uid, 90, diagnose=_diagnose(pair))
    rows = frame_table(analysis)
    assert sorted(rows) == list(range(1, 7)) and all(r["count"] == 1 for r in rows.values())
    assert analysis.metadata["stop"]["pbi_summary"]["frames"] == 6
    # the same work item again (a worker that was slow, not dead, acks late)
    items = [(i, f) for i, f in client.xrange(NAMES.frames) if f[b"run"] == uid.encode()]
    before = int(client.hget(NAMES.stats, "duplicates") or 0)
    client.xadd(NAMES.frames, items[0][1])
    deadline = time.monotonic() + 30
    while int(client.hget(NAMES.stats, "duplicates") or 0) == before:
        assert time.monotonic() < deadline, "the redelivered item was never processed"
        time.sleep(0.1)
    assert int(client.hget(NAMES.run(uid), "done")) == 6
    assert client.xpending(NAMES.frames, SCORER_GROUP)["pending"] == 0
    rows = frame_table(wait_for_analysis(runs_client, uid, 120)[0])
    assert all(r["count"] == 1 for r in rows.values()) and len(rows) == 6


def test_poison_is_dead_lettered_with_its_reason_and_does_not_block(
        pair, client, publisher, runs_client, bus_instrument, bus_files):
    from pbi_bluesky.bus import COORDINATOR_GROUP

    rng = np.random.default_rng(4)
    dead_before = client.xlen(NAMES.dead)
    # a pickle where a msgpack document belongs, an unknown document name, junk work
    client.xadd(NAMES.documents, {"run": "", "name": "event",
                                  "doc": pickle.dumps({"data": {}})})
    client.xadd(NAMES.documents, {"run": "x", "name": "bogus", "doc": b"\x80"})
    client.xadd(NAMES.frames, {"run": "nope", "key": "primary/1", "item": b"\xc1junk"})
    # a work item some worker keeps dying on: delivered 5 times already, never acknowledged
    uid, docs = run_docs(sample_md(bus_files["poni_text"], sample="after-poison"),
                         shots(bus_instrument, rng, 3))
    feed(publisher, docs)
    assert publisher.flush(30)
    wait_for_analysis(runs_client, uid, 90, diagnose=_diagnose(pair))
    template = next(f for _i, f in client.xrange(NAMES.frames) if f[b"run"] == uid.encode())
    last = client.xinfo_stream(NAMES.frames)["last-generated-id"].decode()
    ms, seq = (int(x) for x in last.split("-"))
    victim = f"{ms}-{seq + 1}"
    pipe = client.pipeline(transaction=True)  # no worker can read it before "ghost" does
    pipe.hset(NAMES.errors, victim, "RuntimeError: segfault in a C extension")
    pipe.xadd(NAMES.frames, {**template, b"key": b"primary/777"}, id=victim)
    pipe.xreadgroup(SCORER_GROUP, "ghost", {NAMES.frames: ">"}, count=1)
    pipe.xclaim(NAMES.frames, SCORER_GROUP, "ghost", 0, [victim], idle=60_000, retrycount=5,
                force=True)
    read = pipe.execute()[2]
    assert read[0][1][0][0].decode() == victim
    # and the stream is not blocked: a run published after all of it is scored
    uid2, docs2 = run_docs(sample_md(bus_files["poni_text"], sample="later"),
                           shots(bus_instrument, rng, 3))
    feed(publisher, docs2)
    assert publisher.flush(30)
    (later,) = wait_for_analysis(runs_client, uid2, 90, diagnose=_diagnose(pair))
    assert later.metadata["stop"]["pbi_summary"]["scored"] == 3
    deadline = time.monotonic() + 30
    while client.xlen(NAMES.dead) < dead_before + 4:
        assert time.monotonic() < deadline, client.xrange(NAMES.dead)
        time.sleep(0.1)
    reasons = [f[b"reason"].decode() for _i, f in client.xrange(NAMES.dead)][dead_before:]
    assert any("undecodable event document" in r for r in reasons), reasons
    assert any("unknown document name 'bogus'" in r for r in reasons), reasons
    assert any("malformed work item" in r for r in reasons), reasons
    poison = [r for r in reasons if "delivered 6 times" in r]
    assert poison and "segfault in a C extension" in poison[0], reasons
    record = decode_result(client.hget(NAMES.run_results(uid), "primary/777"))
    assert record["result"].status == "failed" and "dead-lettered" in record["result"].reason
    assert client.xpending(NAMES.frames, SCORER_GROUP)["pending"] == 0
    assert client.xpending(NAMES.documents, COORDINATOR_GROUP)["pending"] == 0


def test_inline_frames_over_the_limit_are_refused_and_accounted_for(
        pair, redis_server, runs_client, bus_instrument, bus_files, tmp_path):
    rng = np.random.default_rng(6)
    pub = BusPublisher(redis_server.url, BEAMLINE, outbox_dir=tmp_path / "o",
                       inline_limit_bytes=4096)
    try:
        uid, docs = run_docs(sample_md(bus_files["poni_text"], sample="big"),
                             shots(bus_instrument, rng, 3))
        feed(pub, docs)
        assert pub.flush(30)
        assert pub.stats["refused"] == 3
    finally:
        pub.close(10)
    (analysis,) = wait_for_analysis(runs_client, uid, 90, diagnose=_diagnose(pair))
    rows = frame_table(analysis)
    assert [r["status"] for r in rows.values()] == ["failed"] * 3
    assert all("by reference" in r["reason"] and "65536 bytes" in r["reason"]
               for r in rows.values())
    assert analysis.metadata["stop"]["pbi_summary"]["accounted"] == 3


def test_broker_restart_the_outbox_delivers_after_reconnect(
        pair, redis_server, runs_client, bus_instrument, bus_files, tmp_path):
    rng = np.random.default_rng(8)
    pub = BusPublisher(redis_server.url, BEAMLINE, outbox_dir=tmp_path / "o",
                       retry_initial_s=0.1, retry_max_s=0.5)
    try:
        uid, docs = run_docs(sample_md(bus_files["poni_text"], sample="outage"),
                             shots(bus_instrument, rng, 5))
        redis_server.stop()
        feed(pub, docs)  # the scan goes on while the broker is away
        assert not pub.flush(2)
        assert pub.stats["outboxed"] == len(docs) and not pub.connected
        assert len(pub.outbox) == len(docs)
        redis_server.start()
        assert pub.flush(60)
        assert pub.stats["from_outbox"] == len(docs) and pub.connected
        assert not pub.outbox.path.exists()
    finally:
        pub.close(10)
    (analysis,) = wait_for_analysis(runs_client, uid, 120, diagnose=_diagnose(pair))
    rows = frame_table(analysis)
    assert sorted(rows) == list(range(1, 6)) and all(r["count"] == 1 for r in rows.values())
    assert all(w.proc.poll() is None for w in pair)
