"""Issue 20, the harness for the bus outbox: a hypothesis state machine drives
:class:`~pbi_bluesky.bus.BusPublisher` against the real Redis of the bus tests, reached
through a relay that makes the broker refuse connections, lose replies (the request ran,
the answer never came) or hang (time out), with interleaved runs, publisher restarts (a new
object on the same outbox folder), spilling past a small byte budget and torn outbox tails
(what a crash mid-append leaves).

Invariant, after every step: on the broker, each run's documents appear at most once and in
the order they were emitted. At the end (broker up, the last publisher closed): every
document of every run is on the broker exactly once, in order, except the documents of a
torn outbox record, which the outbox drops and reports (a crash cut them off)."""

from __future__ import annotations

import itertools
import select
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from event_model import compose_run
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pbi_bluesky.bus import BusNames, BusPublisher
from pbi_bluesky.codec import decode
from pbi_bluesky.store.recordlog import Scan

pytestmark = pytest.mark.harness

MODES = ("up", "refuse", "lose_reply", "hang")


class FlakyLink:
    """A TCP relay in front of the real broker whose behaviour the machine switches.

    ``up`` relays both ways; ``refuse`` closes connections before a request reaches the
    broker; ``lose_reply`` lets requests run on the broker and cuts the connection before
    their reply (a broker or network dying mid-call); ``hang`` runs them and swallows the
    reply (the client times out).
    """

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.mode = "up"
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True, name="flaky-link").start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.mode == "refuse":
                conn.close()
                continue
            try:
                up = socket.create_connection(self.target, timeout=2)
            except OSError:
                conn.close()
                continue
            with self.lock:
                self.conns += [conn, up]
            threading.Thread(target=self._relay, args=(conn, up), daemon=True).start()

    def _relay(self, client: socket.socket, broker: socket.socket) -> None:
        try:
            while not self.closed:
                ready, _, _ = select.select([client, broker], [], [], 0.05)
                for sock in ready:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    if sock is client:
                        if self.mode == "refuse":
                            return  # the request never reaches the broker
                        broker.sendall(data)
                    elif self.mode == "lose_reply":
                        return  # the request ran; its reply is lost with the connection
                    elif self.mode == "up":
                        client.sendall(data)
                    # hang: swallowed, the client times out
        except OSError:
            return
        finally:
            for sock in (client, broker):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.server.close()
        with self.lock:
            for sock in self.conns:
                try:
                    sock.close()
                except OSError:
                    pass


_beamlines = itertools.count()


class OutboxMachine(RuleBasedStateMachine):
    server = None  # the real Redis, set by the test

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="pbi-outbox-harness-"))
        self.names = BusNames(f"harness{next(_beamlines)}")
        self.client = self.server.client()
        self.client.delete(self.names.documents)
        self.link = FlakyLink(self.server.port)
        self.pub = self._publisher()
        self.open: dict[str, list] = {}  # run -> [bundle, descriptor bundle, seq]
        self.expected: dict[str, list[str]] = {}  # run -> uids in emitted order
        self.lost: dict[str, str] = {}  # uid -> why the outbox could not keep it
        self.runs_of: dict[str, str] = {}  # uid -> run

    def _publisher(self) -> BusPublisher:
        return BusPublisher(self.link.url, self.names.beamline, outbox_dir=self.dir,
                            retry_initial_s=0.01, retry_max_s=0.05, socket_timeout=0.1,
                            max_bytes=3000)  # a few small documents: the rest spill

    def _emit(self, run: str, name: str, doc: dict) -> None:
        self.expected[run].append(doc["uid"])
        self.runs_of[doc["uid"]] = run
        self.pub(name, doc)

    def _delivered(self) -> dict[str, list[str]]:
        runs: dict[str, list[str]] = {}
        for _id, fields in self.client.xrange(self.names.documents):
            run = fields[b"run"].decode()
            runs.setdefault(run, []).append(decode(fields[b"doc"])["uid"])
        return runs

    # -- the scan ----------------------------------------------------------------------
    @precondition(lambda self: len(self.open) < 3)
    @rule()
    def start_run(self) -> None:
        bundle = compose_run()
        run = bundle.start_doc["uid"]
        self.expected[run] = []
        self._emit(run, "start", bundle.start_doc)
        desc = bundle.compose_descriptor(name="primary", data_keys={
            "x": {"dtype": "number", "shape": [], "source": "h"}})
        self._emit(run, "descriptor", desc.descriptor_doc)
        self.open[run] = [bundle, desc, 0]

    @initialize()
    def first_run(self) -> None:
        self.start_run()

    @precondition(lambda self: self.open)
    @rule(data=st.data(), n=st.integers(1, 6))
    def events(self, data, n) -> None:
        run = data.draw(st.sampled_from(sorted(self.open)))
        _bundle, desc, seq = self.open[run]
        for _ in range(n):
            seq += 1
            self._emit(run, "event", desc.compose_event(data={"x": float(seq)},
                                                        timestamps={"x": 0.0}, seq_num=seq))
        self.open[run][2] = seq

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def stop_run(self, data) -> None:
        run = data.draw(st.sampled_from(sorted(self.open)))
        bundle, _desc, _seq = self.open.pop(run)
        self._emit(run, "stop", bundle.compose_stop())

    # -- the broker and the process ----------------------------------------------------------
    @rule(mode=st.sampled_from(MODES))
    def broker(self, mode) -> None:
        self.link.mode = mode

    @rule()
    def let_it_send(self) -> None:
        self.pub.flush(0.1)

    @precondition(lambda self: not self.open)
    @rule(tear=st.booleans(), cut=st.integers(1, 1 << 20))
    def restart(self, tear, cut) -> None:
        """The publishing process ends (what it could not send stays in the outbox) and a
        new one starts on the same folder; ``tear``: it died mid-append instead, leaving a
        torn last record in the outbox. (Between runs: a new process does not carry on the
        runs of the one that ended.)"""
        self.pub.close(timeout=0.1)
        self.pub._thread.join(2)
        assert not self.pub._thread.is_alive(), "a closed publisher still sends"
        if tear:
            self._tear(cut)
        self.pub = self._publisher()

    @rule()
    def crash(self) -> None:
        """The publishing process dies: its files stay as they are at that instant (copied
        while the sender is held; the copy may catch an append half-written), what it held
        in memory is lost, and its runs end with it. A new process starts on the copy."""
        old, old_dir = self.pub, self.dir
        self.link.mode = "refuse"  # nothing more from the dying process reaches the broker
        self.dir = Path(tempfile.mkdtemp(prefix="pbi-outbox-harness-"))
        with old._cond:
            shutil.copytree(old_dir, self.dir, dirs_exist_ok=True)
        old.close(timeout=0.05)
        old._thread.join(2)
        assert not old._thread.is_alive(), "a closed publisher still sends"
        shutil.rmtree(old_dir, ignore_errors=True)
        on_broker = {u for uids in self._delivered().values() for u in uids}
        kept = set()
        box = self.dir / old.outbox.path.name
        sent = old.outbox.sent_path.name
        done = int((self.dir / sent).read_text() or 0) if (self.dir / sent).exists() else 0
        for i, (_o, _n, record) in enumerate(Scan(box)):
            if i >= done:
                kept.add(decode(record["doc"])["uid"])
        for _o, _n, record in Scan(self.dir / old.spill.path.name):
            kept.add(record["doc"]["uid"])
        for uids in self.expected.values():
            for u in uids:
                if u not in on_broker and u not in kept:
                    self.lost.setdefault(u, "in the memory of a process that died")
        self.open.clear()  # the RunEngine died too: its runs never get a stop
        self.pub = self._publisher()

    def _tear(self, cut: int) -> None:
        path = self.pub.outbox.path
        records = list(Scan(path))
        if not records:
            return
        offset, length, record = records[-1]
        keep = offset + cut % length  # 0 < bytes cut < the record's length
        with open(path, "r+b") as fh:
            fh.truncate(keep if keep > offset else offset + 1)
        # dropped by the next publisher; it may be on the broker all the same, if it was
        # sent by a call whose reply was lost
        self.lost[decode(record["doc"])["uid"]] = "torn outbox record"

    # -- the invariant -----------------------------------------------------------------------
    @invariant()
    def at_most_once_in_order(self) -> None:
        for run, uids in self._delivered().items():
            assert len(uids) == len(set(uids)), f"run {run[:8]}: duplicates on the broker"
            order = {u: i for i, u in enumerate(self.expected[run])}
            idx = [order[u] for u in uids]
            assert idx == sorted(idx), f"run {run[:8]}: out of order on the broker"

    def teardown(self) -> None:
        try:
            for run in list(self.open):
                bundle, _d, _s = self.open.pop(run)
                self._emit(run, "stop", bundle.compose_stop())
            self.link.mode = "up"
            assert self.pub.close(timeout=20), self.pub.stats
            delivered = self._delivered()
            on_broker = {u for uids in delivered.values() for u in uids}
            for run, uids in self.expected.items():
                want = [u for u in uids if u not in self.lost or u in on_broker]
                assert delivered.get(run, []) == want, (
                    f"run {run[:8]}: expected {len(want)} documents once, in order, got "
                    f"{len(delivered.get(run, []))}")
            # nothing left (a crash may leave an empty outbox file: created, not written)
            assert not list(Scan(self.pub.outbox.path)) and not self.pub.spill.path.exists()
        finally:
            self.pub.close(timeout=1)
            self.link.close()
            self.client.delete(self.names.documents)
            shutil.rmtree(self.dir, ignore_errors=True)


def test_outbox_harness(redis_server):
    """Every document reaches the broker once, in order, through refusals, lost replies,
    timeouts, restarts and torn outbox tails (see the module docstring)."""
    OutboxMachine.server = redis_server
    run_state_machine_as_test(
        OutboxMachine,
        settings=settings(max_examples=20, stateful_step_count=12, deadline=None,
                          database=None, suppress_health_check=list(HealthCheck)))


def test_a_lost_reply_or_a_timeout_sends_nothing_twice(redis_server, tmp_path):
    """Issue 20: the publisher sent at least once. A call that ran on the broker but whose
    reply was lost (the connection cut, or a timeout) went to the outbox and was sent
    again: 6 stream entries for 4 documents here. Now each record carries the publisher's
    identity and sequence number and the broker adds only those past the last it took."""
    link = FlakyLink(redis_server.port)
    names = BusNames("lostreply")
    client = redis_server.client()
    client.delete(names.documents)
    pub = BusPublisher(link.url, names.beamline, outbox_dir=tmp_path, retry_initial_s=0.01,
                       retry_max_s=0.05, socket_timeout=0.3)
    try:
        bundle = compose_run()
        docs = [("start", bundle.start_doc)]
        pub(*docs[0])
        assert pub.flush(5)
        for mode in ("lose_reply", "hang"):
            link.mode = mode
            desc = bundle.compose_descriptor(name=mode, data_keys={
                "x": {"dtype": "number", "shape": [], "source": "h"}})
            docs.append(("descriptor", desc.descriptor_doc))
            pub(*docs[-1])
            deadline = time.monotonic() + 5
            while pub.connected and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not pub.connected  # the call failed as far as the publisher knows
            link.mode = "up"
            assert pub.flush(5)
        docs.append(("stop", bundle.compose_stop()))
        pub(*docs[-1])
        assert pub.close(5)
    finally:
        link.close()
    uids = [decode(f[b"doc"])["uid"] for _i, f in client.xrange(names.documents)]
    assert uids == [d["uid"] for _n, d in docs]
    assert pub.stats["resent_skipped"] == 2


def test_a_crash_after_a_full_drain_leaves_no_stale_sent_count(tmp_path):
    """Issue 20 harness follow-up: after a full drain the outbox file was removed before its
    ``.sent`` count; a crash between the two left a count that the next outbox (new
    records) took as already sent: they were skipped, lost. Now the count goes first (a
    crash between then resends, and the broker refuses the repeats by their numbers) and a
    count without its outbox is dropped."""
    from pbi_bluesky.bus import Outbox

    box = Outbox(tmp_path / "bl.outbox")
    box.append([{"run": "r", "name": "event", "doc": bytes([i])} for i in range(3)])
    sent: list = []
    box.drain(sent.extend)
    assert len(sent) == 3 and not box.path.exists() and not box.sent_path.exists()
    box.sent_path.write_text("3")  # what the crash between the two removals left
    box = Outbox(tmp_path / "bl.outbox")  # the next process
    box.append([{"run": "r", "name": "event", "doc": b"new"}])
    rest: list = []
    assert box.drain(rest.extend) == 1 and [r["doc"] for r in rest] == [b"new"]


def test_the_spill_file_of_a_dead_process_keeps_the_runs_of_its_events(
        redis_server, tmp_path):
    """Issue 20 harness follow-up: the sender found an event's run from the descriptors it
    had seen. A process that died with events in its spill file left them to the next
    process, which had never seen their descriptor: they went out naming no run, and the
    coordinator dead-letters such documents. Now the run is found on the RunEngine thread
    and kept in the spill record."""
    link = FlakyLink(redis_server.port)
    link.mode = "refuse"
    crashed = tmp_path / "crashed"
    names = BusNames("spillrun")
    client = redis_server.client()
    client.delete(names.documents)
    a = BusPublisher(link.url, names.beamline, outbox_dir=tmp_path / "a",
                     retry_initial_s=0.01, retry_max_s=0.05, max_bytes=1)
    bundle = compose_run()
    desc = bundle.compose_descriptor(name="primary", data_keys={
        "x": {"dtype": "number", "shape": [], "source": "h"}})
    docs = [("start", bundle.start_doc), ("descriptor", desc.descriptor_doc)]
    for name, doc in docs:
        a(name, doc)
    deadline = time.monotonic() + 5
    while a.outbox.appended < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.outbox.appended == 2  # start and descriptor wait in the outbox
    try:
        with a._cond:  # the sender takes nothing more: the process dies here
            for i in range(3):
                docs.append(("event", desc.compose_event(
                    data={"x": float(i)}, timestamps={"x": 0.0}, seq_num=i + 1)))
                a(*docs[-1])
            a.outbox.close()
            shutil.copytree(tmp_path / "a", crashed)  # its files as the crash left them
        assert len(list(Scan(crashed / a.spill.path.name))) == 3  # the events, spilled
        b = BusPublisher(redis_server.url, names.beamline, outbox_dir=crashed)
        assert b.close(10), b.stats
    finally:
        a.close(0.5)
        link.close()
    entries = client.xrange(names.documents)
    assert [decode(f[b"doc"])["uid"] for _i, f in entries] == [d["uid"] for _n, d in docs]
    assert {f[b"run"].decode() for _i, f in entries} == {bundle.start_doc["uid"]}


def test_spilled_documents_sent_before_a_crash_are_not_sent_again(redis_server, tmp_path):
    """Issue 20 harness follow-up: the spill file is removed only once nothing in it is
    queued, so a process that died after sending some of it left them in the file and the
    next process sent them again (new records, new numbers). Now a document is numbered
    when it is queued and the spill record keeps its number: the broker refuses repeats."""
    names = BusNames("spillagain")
    client = redis_server.client()
    client.delete(names.documents)
    crashed = tmp_path / "crashed"
    a = BusPublisher(redis_server.url, names.beamline, outbox_dir=tmp_path / "a",
                     max_bytes=1)
    bundle = compose_run()
    docs = [("start", bundle.start_doc), ("stop", bundle.compose_stop())]
    with a._cond:
        for name, doc in docs:
            a(name, doc)
        # the spill file as it is while the sender works through it; the crash comes
        # after the documents reached the broker, before the file was removed
        shutil.copytree(tmp_path / "a", crashed)
    assert a.close(10), a.stats
    assert client.xlen(names.documents) == 2
    b = BusPublisher(redis_server.url, names.beamline, outbox_dir=crashed)
    assert b.close(10), b.stats
    assert b.stats["resent_skipped"] == 2 and not b.spill.path.exists()
    uids = [decode(f[b"doc"])["uid"] for _i, f in client.xrange(names.documents)]
    assert uids == [d["uid"] for _n, d in docs]
