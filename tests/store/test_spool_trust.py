"""Issue 20: nothing the spool holds is silently lost (interleaved runs, unencodable
values, a full disk, oversized files, locks, runs without a start, unsafe uids)."""

from __future__ import annotations

import os

import httpx
import numpy as np
from event_model import compose_run

from pbi_bluesky.store import Catalog, SpoolSink, read_spool_file
from tests.store.writers import FullDisk, Memory, blocked_factory


def _run(n_events: int, **md):
    """A raw-like run: start, descriptor, ``n_events`` events, stop."""
    bundle = compose_run(metadata={"purpose": "spool trust test", **md})
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "x": {"dtype": "number", "shape": [], "source": "test"},
        "y": {"dtype": "array", "shape": [4], "source": "test", "dtype_numpy": "<f8"}})
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    for i in range(n_events):
        data = {"x": float(i), "y": np.arange(4.0) + i}
        docs.append(("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0),
                                                 seq_num=i + 1)))
    docs.append(("stop", bundle.compose_stop()))
    return docs


def _http_503(url: str) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", url)
    return httpx.HTTPStatusError("503 Service Unavailable", request=request,
                                 response=httpx.Response(503, request=request))


class RefuseStartOnce:
    """Writer factory around the real one: each writer it makes refuses the start document
    of run ``victim`` the first time any writer sees it (a 503 from Tiled)."""

    def __init__(self, factory, victim: str) -> None:
        self.factory, self.victim, self.refused = factory, victim, 0
        self.made = 0

    def __call__(self):
        self.made += 1
        inner = self.factory()

        def write(name, doc):
            if name == "start" and doc["uid"] == self.victim and not self.refused:
                self.refused += 1
                raise _http_503("http://tiled/api/v1/metadata/runs")
            return inner(name, doc)

        return write


def test_interleaved_runs_survive_a_refused_start(tmp_path):
    """Issue 20, checked 1: run B's start is refused while run A is open; A must arrive in
    Tiled complete (4 events and its stop) exactly once, and B too after its replay."""
    catalog = Catalog(data_dir=tmp_path / "tiled")
    a, b = _run(4, sample="A"), _run(2, sample="B")
    ua, ub = a[0][1]["uid"], b[0][1]["uid"]
    flaky = RefuseStartOnce(catalog.writer, ub)
    sink = SpoolSink(tmp_path / "spool", flaky, delete_partial=catalog.delete_partial,
                     replay_wait_initial=0.05, replay_wait_max=0.2)
    for doc in a[:-1]:  # A: start, descriptor, 4 events
        sink(*doc)
    sink(*b[0])  # B starts while A is still open: refused once
    sink(*a[-1])  # A's stop
    for doc in b[1:]:
        sink(*doc)
    assert sink.close(60), sink.pending()
    assert flaky.refused == 1
    runs = catalog.runs
    for uid, n in ((ua, 4), (ub, 2)):
        run = runs[uid]
        assert run.metadata["stop"] is not None, f"run {uid[:8]} has no stop in Tiled"
        assert run.metadata["stop"]["exit_status"] == "success"
        ds = run["primary"].read()
        assert ds.sizes["time"] == n
        assert sorted(np.asarray(ds["x"]).tolist()) == [float(i) for i in range(n)]
    assert sink.stats["replayed_runs"] == 1  # B only: A went straight through
    assert sorted(p.stem for p in (tmp_path / "spool" / "done").glob("*.spool")) == sorted(
        [ua, ub])


# -- the raw spool on the RunEngine thread --------------------------------------------------

def _unencodable_md() -> dict:
    return {"when": np.datetime64("2026-12-06"),
            "table": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
            "huge": 2 ** 64, "nested": {"ok": 1, "bad": [np.datetime64("2026-12-06")]}}


def test_unencodable_metadata_never_aborts_a_scan(tmp_path):
    """A plan whose metadata holds datetime64, a structured array and an int >= 2**64: the
    scan completes and the run reaches Tiled, the values as text and listed."""
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import det

    catalog = Catalog(data_dir=tmp_path / "tiled")
    sink = SpoolSink(tmp_path / "spool", catalog.writer,
                     delete_partial=catalog.delete_partial)
    RE = RunEngine({})
    RE.subscribe(sink)
    (uid,) = RE(count([det], num=3, md=_unencodable_md()))
    assert sink.close(60), sink.pending()
    assert sink.stats["unencodable"] == 1 and sink.stats["not_spooled"] == 0
    run = catalog.runs[uid]
    start = run.metadata["start"]
    assert sorted(start["pbi_unencodable"]) == ["huge", "nested.bad[0]", "table", "when"]
    assert "2026-12-06" in start["when"] and start["nested"]["ok"] == 1
    assert run.metadata["stop"]["exit_status"] == "success"
    assert run["primary"].read().sizes["time"] == 3


class SmallDisk:
    """A folder that runs out of space after ``size`` bytes: a tmpfs of that size when this
    process may mount one, else the same folder under an ``RLIMIT_FSIZE`` of ``size`` (the
    kernel then refuses writes past it with EFBIG)."""

    def __init__(self, path, size: int) -> None:
        self.path, self.size = path, size
        self.mounted = False
        self.old_limit = None

    def __enter__(self):
        import resource
        import signal
        import subprocess

        self.path.mkdir(parents=True, exist_ok=True)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs",
                                   str(self.path)], capture_output=True)
            self.mounted = done.returncode == 0
        if not self.mounted:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            self.old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, self.old_limit[1]))
        return self

    def grow(self) -> None:
        """Give the folder room again (a tmpfs remounted 64 MiB, or the limit lifted)."""
        import resource
        import subprocess

        if self.mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(self.path)], check=True)
        elif self.old_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, self.old_limit)

    def __exit__(self, *exc):
        import resource
        import subprocess

        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, self.old_limit)


def test_a_full_disk_never_aborts_a_scan_and_the_loss_is_counted(tmp_path):
    from bluesky import RunEngine
    from bluesky.plans import count
    from ophyd.sim import SynSignal

    frame = SynSignal(func=lambda: np.ones((128, 128), dtype=np.float32), name="frame")
    mem = Memory()
    with SmallDisk(tmp_path / "disk", 256 * 1024) as disk:
        sink = SpoolSink(disk.path / "spool", mem.factory, auto_replay=False)
        RE = RunEngine({})
        RE.subscribe(sink)
        (uid,) = RE(count([frame], num=10))  # 10 x 64 KiB into 256 KiB: the disk fills
        assert sink.flush(30)
        # nothing raised into the RunEngine; every document still went downstream
        assert [n for n, _ in mem.docs] == ["start", "descriptor"] + ["event"] * 10 + ["stop"]
        assert sink.stats["not_spooled"] >= 6
        assert len(sink.losses) == sink.stats["not_spooled"]
        assert all(loss["run"] == uid and ("No space" in loss["reason"]
                                           or "too large" in loss["reason"])
                   for loss in sink.losses), sink.losses
        # what is on disk is whole: complete records only, no torn one in the middle
        spooled = read_spool_file(disk.path / "spool" / "done" / f"{uid}.spool")
        assert not spooled.torn and spooled.error == ""
        assert len(spooled.docs) == 13 - sink.stats["not_spooled"]
        sink.close(10)


# -- replay ------------------------------------------------------------------------------

def _small_unpacker(limit):
    import msgpack

    from pbi_bluesky import codec

    return lambda: msgpack.Unpacker(ext_hook=codec._ext_hook, raw=False,
                                    strict_map_key=False, max_buffer_size=limit)


def test_a_spool_file_over_the_reader_buffer_is_read_not_raised(tmp_path, monkeypatch):
    """The reader's buffer bounds one record, not the file (the 2 GiB case, scaled down to
    a 64 KiB buffer): a 230 KiB run is read and replayed whole; a single record over the
    buffer is reported, never raised."""
    import pbi_bluesky.store.recordlog as recordlog

    monkeypatch.setattr(recordlog, "unpacker", _small_unpacker(64 * 1024))
    monkeypatch.setattr(recordlog, "READ_CHUNK", 16 * 1024)
    docs = _run(1000)  # ~230 bytes per event
    sink = SpoolSink(tmp_path / "spool", None)
    for doc in docs:
        sink(*doc)
    path = tmp_path / "spool" / "pending" / f"{docs[0][1]['uid']}.spool"
    assert path.stat().st_size > 3 * 64 * 1024
    spooled = read_spool_file(path)
    assert spooled.error == "" and [n for n, _ in spooled.docs] == [n for n, _ in docs]
    mem = Memory()
    replayer = SpoolSink(tmp_path / "spool", mem.factory, auto_replay=False)
    assert str(replayer.replay()[docs[0][1]["uid"]]) == "written"
    assert len(mem.docs) == len(docs)
    replayer.close(10)
    big = _run(1)
    big[2][1]["data"]["y"] = np.zeros(20_000)  # one 160 KiB record
    for doc in big:
        sink(*doc)
    spooled = read_spool_file(tmp_path / "spool" / "pending" / f"{big[0][1]['uid']}.spool")
    assert spooled.torn and "larger than the reader's buffer" in spooled.error
    assert [n for n, _ in spooled.docs] == ["start", "descriptor"]
    sink.close(10)


def test_a_stop_crossing_the_backlog_threshold_releases_its_lock(tmp_path):
    """The backlog threshold crossed on a stop document left the run's lock held by this
    process, so no replay could ever take the run."""
    mem = Memory()
    slow_factory, entered, release = blocked_factory(mem)

    sink = SpoolSink(tmp_path / "spool", slow_factory, auto_replay=False, max_queue=2)
    docs = _run(1)  # start, descriptor, event, stop
    sink(*docs[0])
    assert entered.wait(10)  # the forwarder is busy with the start
    for doc in docs[1:]:  # descriptor (0 queued), event (1), stop (2: over the threshold)
        sink(*doc)
    release.set()
    assert sink.flush(10)
    uid = docs[0][1]["uid"]
    assert sink.backlog == 1
    assert str(sink.replay()[uid]) == "written"
    assert [n for n, _ in mem.docs[-4:]] == ["start", "descriptor", "event", "stop"]
    assert sink.pending() == [] and sink.backlog == 0
    sink.close(10)


def test_a_pending_file_without_a_start_is_set_aside_with_its_reason(tmp_path):
    from pbi_bluesky.codec import encode_document

    docs = _run(1)
    pending = tmp_path / "spool" / "pending"
    pending.mkdir(parents=True)
    uid = docs[0][1]["uid"]
    (pending / f"{uid}.spool").write_bytes(b"".join(encode_document(*d) for d in docs[1:]))
    mem = Memory()
    sink = SpoolSink(tmp_path / "spool", mem.factory, auto_replay=False)
    outcome = sink.replay()[uid]
    assert str(outcome).startswith("rejected: no start document"), outcome
    assert sink.pending() == [] and sink.rejected() == [uid] and mem.docs == []
    reason = (tmp_path / "spool" / "rejected" / f"{uid}.reason.txt").read_text()
    assert "no start document" in reason
    assert sink.replay() == {}  # not retried
    sink.close(10)


def test_the_start_record_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    sink = SpoolSink(tmp_path / "spool", None, fsync_interval=3600)
    docs = _run(1)
    before = len(synced)
    sink(*docs[0])
    assert len(synced) > before  # the start is on disk before the scan goes on
    sink.close(10)


def test_a_uid_that_is_not_a_safe_file_name_stays_inside_the_spool(tmp_path):
    mem = Memory()
    root = tmp_path / "a" / "spool"
    sink = SpoolSink(root, mem.factory, auto_replay=False)
    bundle = compose_run(uid="../../../evil")
    sink("start", bundle.start_doc)
    sink("stop", bundle.compose_stop())
    assert sink.flush(10)
    assert not list(tmp_path.rglob("evil*")), list(tmp_path.rglob("evil*"))
    assert mem.docs == []  # not forwarded under that name
    (stem,) = sink.pending()
    outcome = sink.replay()[stem]
    assert str(outcome).startswith(
        "rejected: run uid '../../../evil' is not a safe file name")
    assert sink.rejected() == [stem] and sink.backlog == 0
    assert read_spool_file(root / "rejected" / f"{stem}.spool").docs[0][1]["uid"] == (
        "../../../evil")
    sink.close(10)


def test_documents_queued_before_a_replay_do_not_leave_a_phantom_backlog(tmp_path):
    """Found by bench_faults (the raw spool's backlog never went back to 0 after the Tiled
    outage): a run's start is refused while its other documents are already queued; a
    replay writes the run whole; the stale queued documents then met no writer (_NoStart),
    marked the run failed again, and it stayed in the backlog with no file to replay."""
    import threading

    catalog = Catalog(data_dir=tmp_path / "tiled")
    docs = _run(3, sample="stale")
    uid = docs[0][1]["uid"]
    entered, release = threading.Event(), threading.Event()
    refused = []

    def factory():
        inner = catalog.writer()

        def write(name, doc):
            if name == "start" and not refused:
                entered.set()
                release.wait(30)
                refused.append(doc["uid"])
                raise _http_503("http://tiled/api/v1/metadata/runs")
            return inner(name, doc)

        return write

    sink = SpoolSink(tmp_path / "spool", factory, delete_partial=catalog.delete_partial,
                     replay_wait_initial=0.0, replay_wait_max=0.0)
    sink(*docs[0])
    assert entered.wait(10)  # the forwarder holds the start
    for doc in docs[1:]:  # queued (with their documents) before the refusal is known
        sink(*doc)
    release.set()
    assert sink.flush(30)
    assert _wait_for(lambda: not sink.pending(), 30), sink.pending()
    assert sink.stats["replayed_runs"] == 1
    assert sink.stats["write_failures"] == 1, sink.stats  # the refused start only
    assert sink.backlog == 0
    run = catalog.runs[uid]
    assert run.metadata["stop"]["exit_status"] == "success"
    assert run["primary"].read().sizes["time"] == 3
    sink.close(10)


def _wait_for(predicate, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_a_full_disk_while_setting_a_run_aside_does_not_stop_the_replay(tmp_path, monkeypatch):
    """Found by bench_faults' disk_full_tiled_down: a pending file with no start record (the
    disk was full when it was appended) is set aside, but writing its reason file raised
    ENOSPC out of replay(): the runs after it were not replayed, and the run stayed in the
    backlog with its file already moved (replays scheduled for it forever)."""
    import errno
    import pathlib

    from pbi_bluesky.codec import encode_document
    from pbi_bluesky.store import ReplayOutcome

    good = _run(2, sample="after")
    pending = tmp_path / "spool" / "pending"
    pending.mkdir(parents=True)
    (pending / "0-no-start.spool").write_bytes(b"")  # sorts first: its start never fit
    uid = good[0][1]["uid"]
    (pending / f"{uid}.spool").write_bytes(b"".join(encode_document(*d) for d in good))
    real_write_text = pathlib.Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name.endswith(".reason.txt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full_disk)
    mem = Memory()
    sink = SpoolSink(tmp_path / "spool", mem.factory, auto_replay=False)
    sink._failed.add("0-no-start")  # as the forwarder leaves a run whose start it lost
    outcomes = sink.replay()
    assert outcomes["0-no-start"].outcome is ReplayOutcome.REJECTED
    assert outcomes[uid].outcome is ReplayOutcome.WRITTEN  # the replay went on
    assert mem.runs() == {uid}
    assert sink.rejected() == ["0-no-start"] and sink.pending() == []
    assert sink.backlog == 0 and sink.stats["rejected"] == 1
    sink.close(10)


def test_a_full_disk_and_an_outage_at_once_lose_nothing(tmp_path, monkeypatch):
    """Issue 20 (bench_faults' disk_full_tiled_down): two interleaved runs; the disk refuses
    records (run B's start, before its file exists, among them) while the writer is down;
    the disk and the writer come back. Every document of both runs must be downstream
    exactly once and in order (the file replay missed the refused ones: B had no start)."""
    disk = FullDisk(monkeypatch)
    mem = Memory()
    sink = SpoolSink(tmp_path / "spool", mem.factory, delete_partial=mem.delete_run,
                     auto_replay=False)
    a, b = _run(3, sample="A"), _run(3, sample="B")

    def send(doc, **state):
        for key, value in state.items():
            setattr(disk if key == "full" else mem, key, value)
        sink(*doc)
        assert sink.flush(10)

    send(a[0]), send(a[1]), send(a[2])           # A start, descriptor, event 1 spooled
    send(b[0], full=True), send(b[1])            # B's start and descriptor: refused
    send(a[3])                                   # A event 2 refused, forwarded
    send(b[2], up=False)                         # Tiled down: B fails
    send(a[4])                                   # A event 3: refused and A fails
    send(b[3], full=False), send(a[5])           # the disk takes writes again: A stop
    send(b[4], up=True), send(b[5])              # Tiled back; B's last event and stop
    assert sink.stats["not_spooled"] == 5 and sink.stats["write_failures"] == 2
    assert sink.pending() == sorted([a[0][1]["uid"], b[0][1]["uid"]])
    outcomes = sink.replay()
    assert {str(o) for o in outcomes.values()} == {"written"}, outcomes
    for run in (a, b):
        assert mem.of_run(run[0][1]["uid"]) == [(n, d["uid"]) for n, d in run]
    assert sink.pending() == [] and sink.backlog == 0
    assert sink.close(10)


def test_refused_records_past_the_memory_budget_are_counted_lost_with_the_reason(
        tmp_path, monkeypatch):
    """The journals hold at most ``max_bytes``: past it a refused record is a counted loss
    (its reason says so) and the run is replayed from its file, as before journals."""
    disk = FullDisk(monkeypatch)
    mem = Memory()
    docs = _run(2, sample="budget")
    size = len(__import__("pbi_bluesky.codec").codec.encode_document(*docs[2]))
    sink = SpoolSink(tmp_path / "spool", mem.factory, delete_partial=mem.delete_run,
                     auto_replay=False, max_bytes=size + 10)
    for i, doc in enumerate(docs):
        disk.full = i in (2, 3)  # both events refused: only the first fits the budget
        mem.up = i < 3
        sink(*doc)
        assert sink.flush(10)
    assert sink.stats["journaled"] == 1 and sink.stats["not_spooled"] == 2
    assert "kept in memory" in sink.losses[-2]["reason"]
    assert ("not kept: journals over the memory budget" in sink.losses[-1]["reason"]
            and "the 1 refused before it" in sink.losses[-1]["reason"])
    assert sink.pending() == [docs[0][1]["uid"]]  # the journal is gone; its file remains
    mem.up = True
    (outcome,) = sink.replay().values()
    assert str(outcome) == ("written (2 document(s) never reached the spool file (disk "
                            "errors, see losses))")
    assert [n for n, _ in mem.of_run(docs[0][1]["uid"])] == ["start", "descriptor", "stop"]
    assert sink.close(10)


def test_a_refused_run_known_only_to_its_journal_is_set_aside_whole(tmp_path, monkeypatch):
    """A run whose start (and more) the disk refused, then refused by the writer for its
    content: ``rejected/`` gets the whole run from the journal, not the start-less file."""
    disk = FullDisk(monkeypatch)
    docs = _run(2, sample="refused")
    uid = docs[0][1]["uid"]

    def refusing():
        def write(name, doc):
            raise ValueError("422 Unprocessable Entity")  # content, not an outage
        return write

    sink = SpoolSink(tmp_path / "spool", refusing, auto_replay=False, reject_after=1)
    for i, doc in enumerate(docs):
        disk.full = i < 2  # start and descriptor refused (no file yet)
        sink(*doc)
    assert sink.flush(10) and sink.stats["journaled"] == 2
    assert str(sink.replay()[uid]) == "rejected: ValueError: 422 Unprocessable Entity"
    kept = read_spool_file(tmp_path / "spool" / "rejected" / f"{uid}.spool")
    assert [(n, d["uid"]) for n, d in kept.docs] == [(n, d["uid"]) for n, d in docs]
    assert sink.pending() == [] and sink.backlog == 0 and sink.rejected() == [uid]
    assert sink.close(10)
