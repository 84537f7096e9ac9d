"""Issue 20, the harness: a hypothesis state machine drives the spool against a flaky
in-process writer (down, refusing single documents, refusing starts) with interleaved runs,
a full disk (ENOSPC on every append and file creation) and restarts (a new SpoolSink on the
same folder). Invariant: every document of every run reaches the writer exactly once and in
order, or the run sits in rejected/ with a reason."""

from __future__ import annotations

import shutil
import tempfile
import threading
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
)

from pbi_bluesky.store import SpoolSink
from tests.store.writers import FullDisk

pytestmark = pytest.mark.harness


class Downstream:
    """What a Tiled server would hold: per run, the documents written, in order."""

    def __init__(self) -> None:
        self.runs: dict[str, list[tuple[str, str]]] = {}
        self.up = True
        self.refuse_next = 0  # refuse this many documents (an outage blip), then answer
        # refuse the next start document once, but only while another run is open downstream
        # (started, not stopped: its events sit in a writer's buffer), as in issue 20's bug
        self.refuse_start = False
        self.lock = threading.Lock()
        self.descriptors: dict[str, str] = {}

    def _check(self) -> None:
        if not self.up:
            raise ConnectionError("downstream is down")
        if self.refuse_next:
            self.refuse_next -= 1
            raise ConnectionError("503 from downstream")

    def factory(self):
        """A writer that behaves as ``TiledWriter`` does (NOTES.md): it holds a run's events
        until its stop, raises ``KeyError`` for an event or descriptor of a run it never
        saw, and silently ignores the stop of a run it never saw."""
        with self.lock:
            self._check()
        seen: set[str] = set()
        held: dict[str, list[tuple[str, str]]] = {}

        def write(name: str, doc: dict) -> None:
            with self.lock:
                self._check()
                run = self._run_of(name, doc)
                if name == "start" and self.refuse_start and any(
                        docs[-1][0] != "stop" for r, docs in self.runs.items() if r != run):
                    self.refuse_start = False
                    raise ConnectionError("503 from downstream for a start")
                if name == "start":
                    seen.add(run)
                    held[run] = []
                    self.runs[run] = [(name, doc["uid"])]
                elif run not in seen:
                    if name == "stop":
                        return  # what TiledWriter does: nothing, no error
                    raise KeyError(f"unknown descriptor or run for a {name} document")
                elif name == "event":
                    held[run].append((name, doc["uid"]))
                elif name == "stop":
                    self.runs[run].extend(held.pop(run))
                    self.runs[run].append((name, doc["uid"]))
                else:
                    self.runs[run].append((name, doc["uid"]))

        return write

    def _run_of(self, name: str, doc: dict) -> str:
        if name == "start":
            return doc["uid"]
        if name in ("descriptor", "stop"):
            return doc["run_start"]
        return self.descriptors[doc["descriptor"]]

    def delete(self, uid: str) -> None:
        with self.lock:
            self.runs.pop(uid, None)


class SpoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.disk = FullDisk()
        self.dir = Path(tempfile.mkdtemp(prefix="pbi-spool-harness-"))
        self.down = Downstream()
        self.sink = self._sink()
        self.open: dict[str, tuple] = {}  # run -> (bundle, descriptor bundle, seq)
        self.expected: dict[str, list[tuple[str, str]]] = {}

    def _sink(self) -> SpoolSink:
        return SpoolSink(self.dir, self.down.factory, delete_partial=self.down.delete,
                         replay_wait_initial=0.01, replay_wait_max=0.05, reject_after=3)

    def _emit(self, run: str, name: str, doc: dict) -> None:
        self.expected[run].append((name, doc["uid"]))
        self.sink(name, doc)

    @precondition(lambda self: len(self.open) < 3)
    @rule(refused=st.booleans())
    def start_run(self, refused) -> None:
        """Start a run; ``refused``: the writer refuses its start once (a 503) if another run
        is open, and the spool then makes a new writer, which must not cost the open run its
        buffered events (issue 20, the interleaved-run hole)."""
        if refused:
            with self.down.lock:
                self.down.refuse_start = True
        bundle = compose_run()
        run = bundle.start_doc["uid"]
        self.expected[run] = []
        self._emit(run, "start", bundle.start_doc)
        desc = bundle.compose_descriptor(name="primary", data_keys={
            "x": {"dtype": "number", "shape": [], "source": "h"}})
        self.down.descriptors[desc.descriptor_doc["uid"]] = run
        self._emit(run, "descriptor", desc.descriptor_doc)
        self.open[run] = [bundle, desc, 0]

    @initialize()
    def first_run(self) -> None:
        """Every example begins with a run open, so that the next start interleaves."""
        self.start_run(refused=False)

    @precondition(lambda self: self.open and len(self.open) < 3)
    @rule()
    def start_refused_while_open(self) -> None:
        """The issue 20 pattern, made likely: a start refused once while a run is open."""
        self.start_run(refused=True)

    @precondition(lambda self: self.open)
    @rule(data=st.data(), n=st.integers(1, 3))
    def events(self, data, n) -> None:
        run = data.draw(st.sampled_from(sorted(self.open)))
        bundle, desc, seq = self.open[run]
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

    @rule(up=st.booleans())
    def writer_up_or_down(self, up) -> None:
        self.down.up = up

    @rule(n=st.integers(1, 3))
    def writer_refuses_some(self, n) -> None:
        with self.down.lock:
            self.down.refuse_next = n

    @rule(full=st.booleans())
    def disk_full_or_not(self, full) -> None:
        """The disk refuses every write (or takes them again): the refused documents are
        forwarded and kept in their runs' journals for a replay."""
        self.disk.full = full

    @precondition(lambda self: not self.open and not list(self.sink._journals))
    @rule()
    def restart(self) -> None:
        """The process ends (what it could not forward stays pending) and a new one starts
        on the same folder. Not while a journal holds documents the disk refused: those
        live in memory only and a restart loses them (docs/known-gaps.md, Faults)."""
        self.sink.close(timeout=0.5)
        self.sink = self._sink()

    @invariant()
    def nothing_written_twice(self) -> None:
        with self.down.lock:
            for run, docs in self.down.runs.items():
                assert len(docs) == len(set(docs)), f"duplicates in {run[:8]}"

    def teardown(self) -> None:
        try:
            for run in list(self.open):  # end what is still open
                bundle, _d, _s = self.open.pop(run)
                self._emit(run, "stop", bundle.compose_stop())
            self.down.up, self.down.refuse_next = True, 0
            assert self.sink.close(timeout=30), self.sink.pending()
            rejected = set(self.sink.rejected())
            for run, docs in self.expected.items():
                if run in rejected:
                    assert (self.dir / "rejected" / f"{run}.reason.txt").read_text().strip()
                    continue
                assert self.down.runs.get(run) == docs, (
                    f"run {run[:8]}: expected {len(docs)} documents in order, got "
                    f"{self.down.runs.get(run)}")
        finally:
            self.disk.restore()
            shutil.rmtree(self.dir, ignore_errors=True)


SpoolMachine.TestCase.settings = settings(max_examples=12, stateful_step_count=8,
                                          deadline=None, database=None,
                                          suppress_health_check=list(HealthCheck))
TestSpoolHarness = SpoolMachine.TestCase
