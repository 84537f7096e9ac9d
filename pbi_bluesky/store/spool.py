"""A local, crash-safe spool in front of a document writer (Tiled), so nothing is lost.

Every document of a run is appended to ``<spool>/pending/<run uid>.spool`` (msgpack records,
arrays as raw bytes: :mod:`pbi_bluesky.codec`) on the caller's thread, which costs a file
append; a background thread then forwards it to the downstream writer. When the run's stop
document is written downstream, the file moves to ``<spool>/done/``.

Durability: each append is flushed to the operating system at once (a crash of this process
loses nothing); ``os.fsync`` runs at most every ``fsync_interval`` seconds (group commit)
and always after a stop document and before a file moves, so a power cut loses at most the
last ``fsync_interval`` seconds of documents.

Each run has its own downstream writer (interleaved runs never share one), so a run's
start document is forwarded ahead of other runs' waiting documents: a new run is in Tiled
at once, even behind a backlog; a run's own documents keep their order. If the writer
of a run fails (Tiled is down), the run is marked failed, its remaining documents stay
on disk only, and a replay is scheduled with exponential backoff (stamina) until the writer
answers again; a replay deletes any partial copy downstream and writes the whole run again.
A document the disk refused (a full disk) is still forwarded from memory, and its run
gets a journal (:mod:`.journal`): a replay of that run writes its documents from the
journal, the refused ones from memory, so a full disk and an outage at once lose nothing
while the process lives. A torn last record (what a crash leaves) is dropped and reported;
a run whose writer process died before its stop document is closed with a stop document
of ``exit_status="abort"``.
Replays are serialised across processes with a file lock (``spool.lock``), and a run that
another live process still writes (it holds ``<run uid>.lock``) is left alone.

Layout: this module routes and forwards; :mod:`.replay` replays and prunes (a mixin of
:class:`SpoolSink`); :mod:`.spoolfile` knows the file format; :mod:`.recordlog` appends and
scans the files (shared with the bus outbox); :mod:`.journal` keeps the runs the disk
refused documents of.
"""

from __future__ import annotations

import itertools
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from pbi_bluesky.codec import EncodeError, decode_document, encode_document, sanitize
from pbi_bluesky.infra.memory import DEFAULT_MEMORY_BUDGET
from pbi_bluesky.infra.queues import wait_drained
from pbi_bluesky.store.journal import Journals
from pbi_bluesky.store.recordlog import RecordLog, read_at
from pbi_bluesky.store.replay import ReplayOutcome, ReplayResult, SpoolReplay
from pbi_bluesky.store.spoolfile import (
    SUFFIX,
    SpoolFile,
    fsync_dir,
    read_spool_file,
    spool_stem,
)

__all__ = ["ReplayOutcome", "ReplayResult", "SpoolFile", "SpoolSink", "read_spool_file"]

logger = logging.getLogger(__name__)

Writer = Callable[[str, dict], Any]
@dataclass
class _Open:
    log: RecordLog
    lock: filelock.BaseFileLock


@dataclass(frozen=True)
class _OnDisk:
    """A queued document not kept in memory: forwarded from its record in the spool file."""

    path: Path
    offset: int
    length: int


class SpoolSink(SpoolReplay):
    """Spool documents locally, forward them to ``writer_factory()``'s writer off-thread.

    Parameters
    ----------
    spool_dir
        Folder for the spool (``pending/`` and ``done/`` inside).
    writer_factory
        Returns a fresh downstream writer (e.g. ``lambda: TiledWriter(runs)``). Each run
        gets its own writer, made when its start document is forwarded and dropped after
        its stop (or when it fails): a failure of one run never discards what the writer
        of another open run holds, and a server that comes back is picked up by the next
        run or replay. ``None``: spool only.
    delete_partial
        Called with a run uid before a replay, to remove a partial copy downstream.
    fsync_interval
        Longest time between fsyncs of an open run (the power-cut loss bound), seconds.
    auto_replay
        Replay failed runs in the background with exponential backoff.
    retention_days
        ``done/`` files older than this are deleted (``None``: keep all).
    max_queue
        Documents queued for forwarding; past it the run is left to a replay.
    max_bytes
        Bytes of documents held in memory for forwarding (estimated by their encoded
        size). Past it, documents are not kept in memory: the forwarder reads each back
        from its record in the spool file (nothing dropped, the RunEngine never waits).
        A document the disk refused is the exception: it is held whatever its size
        while it is queued, and its run's journal keeps it (journals together hold at
        most ``max_bytes``; past that the document is counted in :attr:`losses` as lost
        to a replay).
    reject_after
        A run the writer refuses this many times for something other than an outage
        (a connection or timeout error) moves to ``rejected/`` with its reason.
    """

    def __init__(
        self,
        spool_dir: str | Path,
        writer_factory: Callable[[], Writer] | None,
        *,
        delete_partial: Callable[[str], None] | None = None,
        fsync_interval: float = 0.2,
        auto_replay: bool = True,
        retention_days: float | None = 7.0,
        max_queue: int = 10_000,
        max_bytes: int = DEFAULT_MEMORY_BUDGET,
        replay_wait_initial: float = 0.5,
        replay_wait_max: float = 10.0,
        reject_after: int = 3,
    ) -> None:
        self.root = Path(spool_dir)
        self.pending_dir = self.root / "pending"
        self.done_dir = self.root / "done"
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        self.done_dir.mkdir(parents=True, exist_ok=True)
        self.writer_factory = writer_factory
        self.delete_partial = delete_partial
        self.fsync_interval = float(fsync_interval)
        self.retention_days = retention_days
        self.max_queue = int(max_queue)
        self.max_bytes = int(max_bytes)
        self.held_bytes = 0
        """Bytes of documents queued in memory now (the byte budget's counter)."""
        self.auto_replay = bool(auto_replay)
        self.replay_wait = (float(replay_wait_initial), float(replay_wait_max))
        self._writers: dict[str, Writer] = {}
        """One downstream writer per open run (a failure of one run never touches another)."""
        self._run_of: dict[str, str] = {}
        self._open: dict[str, _Open] = {}
        self._held: dict[str, filelock.BaseFileLock] = {}
        """Run locks kept after the stop is appended, until the run is downstream."""
        self._forwarding: set[str] = set()
        """Runs of this process whose documents are still on their way downstream."""
        self._failed: set[str] = set()
        self._replayed: dict[str, None] = {}
        """Runs a replay wrote whole (the last 1000): their documents still queued are stale."""
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.PriorityQueue()
        """(lane, seq, run, name, payload, size): starts in lane 0, the rest in lane 1."""
        self._seq = itertools.count()
        self._replay_due: float | None = None
        self._replay_attempt = 0
        self._closing = threading.Event()
        self.stats = {"spooled": 0, "forwarded": 0, "write_failures": 0, "replays": 0,
                      "replayed_runs": 0, "unattributed": 0, "rejected": 0,
                      "unencodable": 0, "not_spooled": 0, "from_disk": 0,
                      "peak_held_bytes": 0, "journaled": 0}
        self.losses: list[dict[str, str]] = []
        """The last 1000 documents not written to the spool file: run, name, reason."""
        self._unspooled: dict[str, int] = {}
        self._journals = Journals(self.max_bytes)
        """Runs with documents the disk refused: replayed from these (see :mod:`.journal`)."""
        self.rejected_dir = self.root / "rejected"
        self.reject_after = int(reject_after)
        self._refusals: dict[str, int] = {}
        self.prune()
        self._thread = threading.Thread(target=self._forward_loop, daemon=True,
                                        name=f"pbi-spool-{self.root.name}")
        self._thread.start()
        if self.auto_replay and self.writer_factory is not None and self.pending():
            self._schedule_replay(now=True)

    # -- appending (any thread) ----------------------------------------------------------
    def _run_uid(self, name: str, doc: dict) -> str | None:
        if name == "start":
            return doc.get("uid")
        if name in ("descriptor", "stop", "resource", "stream_resource"):
            run = doc.get("run_start")
            if name in ("descriptor", "resource", "stream_resource") and run:
                self._run_of[doc["uid"]] = run
            return run
        if name in ("event", "event_page", "stream_datum", "stream_datum_page"):
            return self._run_of.get(doc.get("descriptor", ""))
        if name in ("datum", "datum_page"):
            return self._run_of.get(doc.get("resource", ""))
        return None

    def _path(self, run: str) -> Path:
        return self.pending_dir / f"{spool_stem(run)}{SUFFIX}"

    def _open_run(self, run: str) -> _Open:
        state = self._open.get(run)
        if state is None:
            lock = filelock.FileLock(str(self.pending_dir / f"{spool_stem(run)}.lock"), timeout=0)
            lock.acquire()
            log = RecordLog(self._path(run), fsync_interval=self.fsync_interval)
            try:
                log.open()  # a new file's name is fsynced; a torn tail is cut off
            except BaseException:
                lock.release()
                raise
            state = _Open(log, lock)
            self._open[run] = state
        return state

    def __call__(self, name: str, doc: dict) -> None:
        """Append one document (durably, see the module docstring) and queue it.

        Never raises (it runs on the RunEngine thread): values the codec cannot encode are
        spooled as their ``repr()`` (listed in the document's ``pbi_unencodable``), and a
        document that cannot be written to disk (a full disk) is still forwarded, and is
        counted and listed in :attr:`losses` with its reason.
        """
        try:
            self._append(name, doc)
        except Exception as exc:  # noqa: BLE001 - the scan must never die because of the spool
            self._lose("?", name, f"{type(exc).__name__}: {exc}")
            logger.exception("spool: could not take a %s document", name)

    def _lose(self, run: str, name: str, reason: str) -> None:
        """Record a document that did not reach the spool file."""
        self.stats["not_spooled"] += 1
        self.losses.append({"run": run, "name": name, "reason": reason})
        del self.losses[:-1000]
        if run != "?":
            self._unspooled[run] = self._unspooled.get(run, 0) + 1

    def _encode(self, run: str, name: str, doc: dict) -> tuple[bytes, dict]:
        try:
            return encode_document(name, doc), doc
        except EncodeError as exc:
            clean, paths = sanitize(doc)
            if name in ("start", "stop", "descriptor"):  # documents open to extra keys
                clean["pbi_unencodable"] = paths
            self.stats["unencodable"] += 1
            logger.error("spool: %s document of run %s holds values the codec cannot encode "
                         "(%s): spooled and forwarded with %s as text", name, run[:8], exc,
                         paths)
            return encode_document(name, clean), clean

    def _write(self, run: str, name: str, data: bytes) -> int | None:
        """Append one record to the run's file; returns its byte offset.

        None on a disk error (the file cut back to its last complete record): the record
        goes to the run's journal and is listed in :attr:`losses` (see :meth:`_refused`).
        """
        try:
            state = self._open_run(run)
        except (OSError, filelock.Timeout) as exc:
            path = self._path(run)
            self._refused(run, name, data, path.stat().st_size if path.exists() else 0,
                          f"cannot open the spool file: {type(exc).__name__}: {exc}")
            return None
        try:
            offset = state.log.append(data, sync=name in ("start", "stop"))
        except OSError as exc:
            self._refused(run, name, data, state.log.size, f"{type(exc).__name__}: {exc}")
            return None
        self._journals.spooled(spool_stem(run), offset, len(data))
        return offset

    def _refused(self, run: str, name: str, data: bytes, on_disk: int, reason: str) -> None:
        """Keep a record the disk refused in its run's journal (if the budget allows)."""
        kept = self._journals.refused(spool_stem(run), self._path(run), on_disk, data)
        self.stats["journaled"] += kept.startswith("kept")
        self._lose(run, name, f"{reason} ({kept})")
        logger.error("spool: %s document of run %s not spooled (%s); it is still forwarded, "
                     "and %s", name, run[:8], reason, kept)

    def _append(self, name: str, doc: dict) -> None:
        with self._lock:
            run = self._run_uid(name, doc)
            if run is None:
                self.stats["unattributed"] += 1
                logger.warning("spool: cannot tell which run a %s document belongs to", name)
                return
            if name == "start" and spool_stem(run) != run:
                self._failed.add(run)  # never forwarded: the replay sets it aside
                logger.error("spool: run uid %r is not a safe file name; spooled as %s and "
                             "not forwarded", run, self._path(run).name)
            data, doc = self._encode(run, name, doc)
            offset = self._write(run, name, data)
            if offset is not None:
                self.stats["spooled"] += 1
            if (self.writer_factory is not None and run not in self._failed
                    and self._queue.qsize() >= self.max_queue):
                logger.warning("spool: forwarding backlog of %d documents: run %s left to a "
                               "replay", self._queue.qsize(), run[:8])
                self._failed.add(run)
                self._forwarding.discard(run)
                self._schedule_replay()
            if name == "stop":
                self._journals.close(spool_stem(run))
                state = self._open.pop(run, None)
                if state is not None:
                    state.log.close()
                    if self.writer_factory is None or run in self._failed:
                        state.lock.release()
                    else:  # still ours until it is downstream: no other replay may take it
                        self._held[run] = state.lock
            if self.writer_factory is None:
                return
            if run in self._failed:
                self._enqueue(run, name, None, 0)
                return
            self._forwarding.add(run)
            size = len(data)
            payload: dict | _OnDisk = doc
            if offset is not None and self.held_bytes + size > self.max_bytes:
                # over the byte budget: the forwarder reads it back from the spool file
                payload, size = _OnDisk(self._path(run), offset, len(data)), 0
            self.held_bytes += size
            self.stats["peak_held_bytes"] = max(self.stats["peak_held_bytes"],
                                                self.held_bytes)
            self._enqueue(run, name, payload, size)

    def _enqueue(self, run: str, name: str, payload: dict | _OnDisk | None,
                 size: int) -> None:
        # a start goes ahead of other runs' waiting documents (each run has its own
        # writer; a run's own documents keep their order): a new run is in Tiled at
        # once, even behind a backlog (the agent waits for the raw run, issue 22)
        self._queue.put((0 if name == "start" else 1, next(self._seq), run, name, payload,
                         size))

    def pending(self) -> list[str]:
        """Run uids whose documents are not (completely) downstream yet.

        Those with a file in ``pending/`` and those with a journal (see :mod:`.journal`).
        """
        return sorted({p.stem for p in self.pending_dir.glob(f"*{SUFFIX}")}
                      | set(self._journals))

    # -- forwarding (background thread) -----------------------------------------------
    def _forward_loop(self) -> None:
        while True:
            timeout = 0.2
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._forward(*item[2:])
                if self._failed and self._replay_due is None:
                    self._schedule_replay()  # a failed run is never left without a retry
                if (self._replay_due is not None and time.monotonic() >= self._replay_due
                        and not self._closing.is_set()):
                    self._background_replay()
            except Exception:  # noqa: BLE001 - the spool keeps everything anyway
                logger.exception("spool forwarder error")
            finally:
                if item is not None:
                    self._queue.task_done()
            if item is None and self._closing.is_set() and self._queue.empty():
                return

    def _mark_failed(self, run: str) -> None:
        """Leave a run to the replay: forget it is being forwarded, release its lock."""
        self._failed.add(run)
        self._forwarding.discard(run)
        with self._lock:
            held = self._held.pop(run, None)
        if held is not None:
            held.release()

    def _forward(self, run: str, name: str, doc: dict | _OnDisk | None, size: int) -> None:
        try:
            self._forward_doc(run, name, doc)
        finally:
            if size:
                with self._lock:
                    self.held_bytes -= size

    def _forward_doc(self, run: str, name: str, doc: dict | _OnDisk | None) -> None:
        if run in self._failed or doc is None:
            if name == "stop":
                self._schedule_replay()
            return
        if run in self._replayed:  # queued before a replay wrote the whole run: stale
            return
        try:
            if isinstance(doc, _OnDisk):
                name, doc = decode_document(read_at(doc.path, doc.offset, doc.length))
                self.stats["from_disk"] += 1
            writer = self._writers.get(run)
            if writer is None:
                if name != "start":
                    raise _NoStart(f"the writer never saw the start document of run {run}")
                writer = self._writers[run] = self.writer_factory()
            writer(name, doc)
        except Exception as exc:  # noqa: BLE001 - the spool keeps everything
            self._mark_failed(run)
            self._writers.pop(run, None)  # this run's writer only: other runs keep theirs
            self.stats["write_failures"] += 1
            logger.warning("spool: downstream writer failed on %s of run %s (%s: %s); the run "
                           "stays in %s and is replayed when the writer answers again", name,
                           run[:8], type(exc).__name__, exc, self.pending_dir)
            self._schedule_replay()
            return
        self.stats["forwarded"] += 1
        if name == "stop":
            self._writers.pop(run, None)
            self._move_done(run)

    def _move_done(self, run: str) -> None:
        src = self._path(run)
        if src.exists():
            shutil.move(str(src), self.done_dir / src.name)
            fsync_dir(self.done_dir)
            fsync_dir(self.pending_dir)
        self._forwarding.discard(run)
        with self._lock:
            held = self._held.pop(run, None)
            self._journals.drop(spool_stem(run))
        if held is not None:
            held.release()
        lock = self.pending_dir / f"{spool_stem(run)}.lock"
        lock.unlink(missing_ok=True)

    def _schedule_replay(self, now: bool = False) -> None:
        if not self.auto_replay or self.writer_factory is None:
            return
        if now:
            self._replay_due = time.monotonic()
            return
        if self._replay_due is None:
            lo, hi = self.replay_wait
            self._replay_due = time.monotonic() + min(hi, lo * 2 ** self._replay_attempt)

    def _background_replay(self) -> None:
        self._replay_due = None
        outcomes = self.replay()
        failed = {r: o for r, o in outcomes.items() if o.outcome is ReplayOutcome.FAILED}
        progress = any(o.progress for o in outcomes.values())
        if failed:
            # back off while nothing gets through (an outage); retry soon while it does
            self._replay_attempt = 0 if progress else self._replay_attempt + 1
            logger.warning("spool %s: %d run(s) not replayed yet (attempt %d), e.g. %s: %s",
                           self.root, len(failed), self._replay_attempt,
                           next(iter(failed))[:8], next(iter(failed.values())))
            self._schedule_replay()
        else:
            self._replay_attempt = 0

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything queued has been forwarded (or left to a replay)."""
        return wait_drained(self._queue, timeout)

    def close(self, timeout: float = 60.0) -> bool:
        """Forward what is queued, try one last replay and stop the thread.

        The last replay only with ``auto_replay``; True if nothing is left pending.
        """
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._closing.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        while (self.auto_replay and self.writer_factory is not None and self.pending()
               and time.monotonic() < deadline):
            refusals = dict(self._refusals)
            outcomes = self.replay()
            # a refusal for the run's content counts toward setting it aside (reject_after):
            # that is progress too, where an outage is not
            if not any(o.progress for o in outcomes.values()) and self._refusals == refusals:
                break  # no progress: the writer is down; the runs stay spooled
        return not self.pending()


class _NoStart(RuntimeError):
    """A document of a run whose start document its writer never saw."""
