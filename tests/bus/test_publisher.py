"""The publisher's outbox: nothing is lost while the broker is unreachable, or across a
crash of the publishing process."""

from __future__ import annotations

import time

import numpy as np

from pbi_bluesky.bus import BusNames, BusPublisher, Outbox, connect
from pbi_bluesky.codec import decode
from pbi_bluesky.testing import free_port
from tests.live.docs import feed, run_docs


def _docs(n=4):
    rng = np.random.default_rng(0)
    shots = [(rng.integers(0, 100, (8, 8), dtype=np.int32), 1e6, 0.7) for _ in range(n)]
    return run_docs({"sample": "x"}, shots)


def test_outbox_resumes_after_a_partial_send_and_drops_a_torn_tail(tmp_path):
    box = Outbox(tmp_path / "bl.outbox")
    box.append([{"run": "r", "name": "event", "doc": bytes([i])} for i in range(5)])
    sent: list = []

    def flaky(batch):
        if sent:
            raise ConnectionError("broker went away again")
        sent.extend(batch)

    try:
        box.drain(flaky, chunk=2)
    except ConnectionError:
        pass
    assert len(sent) == 2 and len(box) == 3
    box.close()
    with open(box.path, "ab") as fh:  # what a crash while appending leaves
        fh.write(b"\x83\xa3run")
    box = Outbox(tmp_path / "bl.outbox")  # the next process appends after the crash
    box.append([{"run": "r", "name": "stop", "doc": b"end"}])
    rest: list = []
    assert box.drain(rest.extend) == 4
    assert [r["doc"] for r in rest] == [bytes([i]) for i in (2, 3, 4)] + [b"end"]
    assert box.torn == 1 and not box.path.exists()


def test_a_publisher_that_never_reaches_its_broker_keeps_everything(tmp_path, redis_server):
    uid, docs = _docs()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    pub = BusPublisher(dead, "pub", outbox_dir=tmp_path, retry_initial_s=0.05,
                       retry_max_s=0.1)
    feed(pub, docs)  # returns at once, raises nothing
    assert not pub.close(timeout=1.0)
    assert pub.stats["outboxed"] == len(docs) and pub.stats["published"] == 0
    # the next process publishing for this beamline (same outbox) sends it first, in order
    names = BusNames("pub")
    client = connect(redis_server.url)
    client.delete(names.documents)
    pub2 = BusPublisher(redis_server.url, "pub", outbox_dir=tmp_path)
    try:
        assert pub2.flush(30)
        assert pub2.stats["from_outbox"] == len(docs)
    finally:
        pub2.close()
    entries = client.xrange(names.documents)
    assert [f[b"name"].decode() for _i, f in entries] == [n for n, _ in docs]
    assert {f[b"run"].decode() for _i, f in entries} == {uid}
    last_event = decode(entries[-2][1][b"doc"])
    np.testing.assert_array_equal(last_event["data"]["det_image"],
                                  docs[-2][1]["data"]["det_image"])


def test_a_full_outbox_disk_drops_nothing(tmp_path):
    """Issue 20: with the broker down and the outbox's disk full, a batch was popped, failed
    to append and was dropped while the log said it was kept. Now it stays in memory and is
    written once the disk has room: every document in the outbox, in order, once."""
    from tests.store.test_spool_trust import SmallDisk

    rng = np.random.default_rng(1)
    shots = [(rng.integers(0, 100, (64, 64), dtype=np.int32), 1e6, 0.7) for _ in range(8)]
    _uid, docs = run_docs({"sample": "x"}, shots)  # 8 x 16 KiB frames
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with SmallDisk(tmp_path / "disk", 64 * 1024) as disk:
        pub = BusPublisher(dead, "full", outbox_dir=disk.path, retry_initial_s=0.05,
                           retry_max_s=0.1)
        for name, doc in docs:
            pub(name, doc)
            time.sleep(0.01)  # several batches
        deadline = time.monotonic() + 5
        while not pub.stats.get("send_errors") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        send_errors = pub.stats.get("send_errors", 0)
        disk.grow()
        deadline = time.monotonic() + 10
        while pub.stats["outboxed"] < len(docs) and time.monotonic() < deadline:
            time.sleep(0.05)
        pub.close(timeout=1.0)
        box = Outbox(disk.path / "full.outbox")
        records = box._records()
    assert [r["name"] for r in records] == [n for n, _ in docs]
    assert box.torn == 0
    assert send_errors > 0  # the disk did fill before it grew


def test_publisher_takes_the_password_variable_from_the_settings(tmp_path, monkeypatch):
    """Issue 20: the publisher read only PBI_REDIS_PASSWORD, whatever ``bus.password_env``
    said, so a broker whose password sits in another variable refused it."""
    import secrets
    from pathlib import Path

    from pbi_bluesky.config import load_config
    from pbi_bluesky.testing.services import RedisServer

    password = secrets.token_hex(12)
    monkeypatch.delenv("PBI_REDIS_PASSWORD", raising=False)
    monkeypatch.setenv("PBI_BUS_PW_OF_THIS_TEST", password)
    server = RedisServer(tmp_path / "redis", appendonly=False,
                         password_env="PBI_BUS_PW_OF_THIS_TEST").start()
    try:
        sim = Path(__file__).resolve().parents[2] / "profiles" / "profile_saxs" / "beamline.yaml"
        settings = load_config(sim).with_overrides(
            name="pwenv", bus={"url": server.url, "password_env": "PBI_BUS_PW_OF_THIS_TEST"})
        _uid, docs = _docs(2)
        pub = BusPublisher.from_settings(settings, outbox_dir=tmp_path / "o")
        feed(pub, docs)
        assert pub.close(timeout=20), pub.stats
        assert pub.stats["published"] == len(docs) and pub.stats["outboxed"] == 0, pub.stats
        entries = server.client().xrange(BusNames("pwenv").documents)
        assert [f[b"name"].decode() for _i, f in entries] == [n for n, _ in docs]
    finally:
        server.stop()


def test_publisher_logs_its_broker_url_without_the_password(tmp_path, caplog):
    """Issue 20: "broker ... unreachable" logged the URL as given, password included."""
    import logging

    url = f"redis://:Sw0rdfish-in-url@127.0.0.1:{free_port()}/0"
    _uid, docs = _docs(1)
    with caplog.at_level(logging.INFO, logger="pbi_bluesky.bus"):
        pub = BusPublisher(url, "redact", outbox_dir=tmp_path, retry_initial_s=0.05,
                           retry_max_s=0.1)
        feed(pub, docs)
        assert not pub.close(timeout=0.5)
    text = caplog.text
    assert "unreachable" in text  # the line that used to carry the URL was written
    assert "Sw0rdfish-in-url" not in text
    assert "redis://:***@127.0.0.1" in text


def test_queued_frames_past_the_byte_budget_wait_in_the_spill_file(tmp_path):
    """Issue 20: the publisher's queue was bounded by nothing; with inline frames a scan
    faster than the broker piles up GBs. Past max_bytes the RunEngine thread appends the
    document to the spill file instead (one write), and the sender reads it back in turn:
    the queue's own counter stays under the budget and every document goes out once, in
    order (here into the outbox, the broker being down)."""
    from event_model import compose_run

    run = compose_run()
    desc = run.compose_descriptor(name="primary", data_keys={
        "img": {"source": "sim", "dtype": "array", "shape": [512, 256], "dtype_numpy": "<i4"}})
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    docs += [("event", desc.compose_event(data={"img": np.full((512, 256), i, np.int32)},
                                          timestamps={"img": 0.0})) for i in range(12)]
    docs.append(("stop", run.compose_stop()))
    budget = 2 << 20  # three 512 KiB frames and change
    dead = f"redis://127.0.0.1:{free_port()}/0"
    pub = BusPublisher(dead, "big", outbox_dir=tmp_path, retry_initial_s=0.05,
                       retry_max_s=0.1, max_bytes=budget)
    with pub._cond:  # the sender cannot take anything meanwhile: the worst case backlog
        for name, doc in docs:
            pub(name, doc)
        assert 0 < pub.held_bytes <= budget
    assert pub.stats["spilled"] >= 8 and pub.stats["peak_held_bytes"] <= budget
    assert not pub.close(timeout=2.0)
    assert pub.held_bytes == 0 and not pub.spill.path.exists()
    out: list = []
    Outbox(tmp_path / "big.outbox").drain(out.extend)
    assert [r["name"] for r in out] == [n for n, _ in docs]
    got = [decode(r["doc"]) for r in out]
    assert [d["uid"] for d in got] == [d["uid"] for _, d in docs]
    assert [int(np.asarray(d["data"]["img"])[0, 0]) for d in got[2:-1]] == list(range(12))


def test_the_outbox_is_the_spool_record_log_bounded_in_bytes(tmp_path):
    """Issue 20 item 1, one record log: the outbox appends through RecordLog (bounded by
    max_bytes: past it nothing is written and LogFull raised) and reads through its Scan."""
    import pytest

    from pbi_bluesky.store.recordlog import LogFull, Scan

    box = Outbox(tmp_path / "bl.outbox", max_bytes=200)
    box.append([{"run": "r", "name": "event", "doc": bytes(50)}])
    size = box.path.stat().st_size
    with pytest.raises(LogFull):
        box.append([{"run": "r", "name": "event", "doc": bytes(50)} for _ in range(3)])
    assert box.path.stat().st_size == size and len(box) == 1
    assert [r["doc"] for _, _, r in Scan(box.path)] == [bytes(50)]
