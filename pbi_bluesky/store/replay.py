"""Replay and retention of a spool (:class:`~pbi_bluesky.store.spool.SpoolSink`).

A run whose downstream writer failed, or that a dead process left behind, waits in
``pending/``; :meth:`SpoolReplay.replay` writes each such run downstream again from its
spool file (deleting any partial copy first), sets aside in ``rejected/`` a run the writer
keeps refusing for its content, and :meth:`SpoolReplay.prune` deletes ``done/`` files past
their retention. A run with a journal (documents the disk refused, :mod:`.journal`) is
replayed from its journal instead of its file. :mod:`.spool` routes and forwards; this
module only replays.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import filelock

from pbi_bluesky.infra.retry import should_retry
from pbi_bluesky.store.journal import JournalError
from pbi_bluesky.store.recordlog import Scan
from pbi_bluesky.store.spoolfile import SUFFIX, abort_stop, fsync_dir, is_spool_record

__all__ = ["ReplayOutcome", "ReplayResult", "SpoolReplay"]

logger = logging.getLogger("pbi_bluesky.store.spool")


class ReplayOutcome(enum.StrEnum):
    """What a replay did with one pending run (str-valued: logs and JSON stay readable)."""

    WRITTEN = "written"
    """Written downstream whole (or found written by another replay); moved to ``done/``."""
    FAILED = "failed"
    """Not written this time (an outage, a refusal not yet ``reject_after`` times, no
    writer, or another process replaying the spool): retried later."""
    REJECTED = "rejected"
    """Refused for its content (or unreadable): moved to ``rejected/`` with its reason."""
    SKIPPED = "skipped"
    """Another process holds the run's lock (it is still writing the run)."""
    OPEN = "open"
    """The run is still in progress in this process."""
    FORWARDING = "forwarding"
    """The run's documents are on their way downstream in this process."""


_COLON = (ReplayOutcome.FAILED, ReplayOutcome.REJECTED, ReplayOutcome.SKIPPED)


@dataclass(frozen=True)
class ReplayResult:
    """One run's replay outcome and its detail (the reason, or notes on what was written).

    ``str()`` gives the line logged and printed by ``pbi catalog replay-spool``, e.g.
    ``"failed: ConnectionError: ..."`` or ``"written (torn last record dropped)"``.
    """

    outcome: ReplayOutcome
    detail: str = ""

    @property
    def progress(self) -> bool:
        """Whether the run left ``pending/`` (written or rejected): the spool moved on."""
        return self.outcome in (ReplayOutcome.WRITTEN, ReplayOutcome.REJECTED)

    def __str__(self) -> str:
        if not self.detail:
            return self.outcome.value
        if self.outcome in _COLON:
            return f"{self.outcome.value}: {self.detail}"
        return f"{self.outcome.value} ({self.detail})"


class SpoolReplay:
    """The replay and retention half of :class:`~pbi_bluesky.store.spool.SpoolSink`.

    A mixin: the routing half sets the attributes it uses (folders, writer factory, run
    state) in its ``__init__``.
    """

    # -- replay ----------------------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Runs waiting for a replay (failed downstream, not yet written or rejected)."""
        return len(self._failed)

    def replay(self, lock_timeout: float = 30.0) -> dict[str, ReplayResult]:
        """Write every pending run downstream again; returns {run uid: its result}.

        Runs still being written by this process are skipped; a run whose lock another
        process holds is skipped ("being written elsewhere"); a run whose writer died
        before its stop document is closed with an ``abort`` stop document.
        """
        outcomes: dict[str, ReplayResult] = {}
        try:
            big_lock = filelock.FileLock(str(self.root / "spool.lock"), timeout=lock_timeout)
            big_lock.acquire()
        except filelock.Timeout:
            return {run: ReplayResult(ReplayOutcome.FAILED,
                                      "another process is replaying this spool")
                    for run in self.pending()}
        try:
            self.stats["replays"] += 1
            for run in self.pending():
                path = self.pending_dir / f"{run}{SUFFIX}"
                with self._lock:
                    journal = self._journals.get(run)
                    if run in self._open or (journal is not None and not journal.closed):
                        outcomes[run] = ReplayResult(ReplayOutcome.OPEN, "run in progress here")
                        continue
                    if run in self._forwarding and run not in self._failed:
                        outcomes[run] = ReplayResult(ReplayOutcome.FORWARDING,
                                                     "on its way downstream here")
                        continue
                outcomes[run] = self._replay_one(run, path)
                if outcomes[run].outcome is ReplayOutcome.FAILED:
                    logger.info("spool %s: replay of %s %s", self.root.name, run[:8],
                                outcomes[run])
        finally:
            big_lock.release()
        self.prune()
        return outcomes

    def _replay_one(self, run: str, path: Path) -> ReplayResult:
        journal = self._journals.get(run)
        run_lock = filelock.FileLock(str(self.pending_dir / f"{run}.lock"), timeout=0)
        try:
            run_lock.acquire()
        except filelock.Timeout:
            return ReplayResult(ReplayOutcome.SKIPPED, "being written by another process")
        except OSError as exc:  # a full disk: a run known only here needs no lock
            if journal is None or path.exists():
                return ReplayResult(ReplayOutcome.FAILED, f"cannot take the run's lock: {exc}")
            run_lock = None
        try:
            if not path.exists() and journal is None:
                return ReplayResult(ReplayOutcome.WRITTEN, "by another replay")
            # streamed: one record in memory at a time, whatever the file's size
            scan = Scan(path, valid=is_spool_record)
            records = journal.records() if journal else (_doc(r) for _, _, r in scan)
            try:
                first = next(records, None)
            except JournalError as exc:
                return self._journal_broken(run, exc)
            if first is None or first[0] != "start" or first[1].get("uid") != run:
                records.close()  # the file is set aside below: let go of it first
            notes: list[str] = []
            if first is None or first[0] != "start":
                # retrying cannot help: set it aside with its reason
                return self._reject(run, path, "no start document in the spool file ("
                                    f"{scan.error or 'empty' if first is None else first[0]})")
            start = first[1]
            uid = str(start.get("uid"))
            if uid != run:
                self._failed.discard(uid)
                return self._reject(run, path, f"run uid {uid!r} is not a safe file name "
                                    "(path separators, '..' or odd characters)")
            if self.writer_factory is None:
                return ReplayResult(ReplayOutcome.FAILED, "no downstream writer configured")
            last = "start"
            try:
                if self.delete_partial is not None:
                    self.delete_partial(run)
                writer = self.writer_factory()
                writer("start", start)
                del first
                for name, doc in records:
                    writer(name, doc)
                    last = name
                if scan.error:
                    notes.append(scan.error)
                    logger.warning("spool %s: %s", path.name, scan.error)
                if self._unspooled.get(run) and journal is None:
                    notes.append(f"{self._unspooled[run]} document(s) never reached the "
                                 "spool file (disk errors, see losses)")
                if last != "stop":
                    writer("stop", abort_stop(start))
                    notes.append("closed with an abort stop document (its writer ended "
                                 "without a stop)")
            except Exception as exc:  # noqa: BLE001
                reason = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, JournalError):
                    return self._journal_broken(run, exc)
                if not _transient(exc):
                    self._refusals[run] = self._refusals.get(run, 0) + 1
                    if self._refusals[run] >= self.reject_after:
                        return self._reject(run, path, reason)
                return ReplayResult(ReplayOutcome.FAILED, reason)
            self._failed.discard(run)
            self._replayed[run] = None
            while len(self._replayed) > 1000:
                del self._replayed[next(iter(self._replayed))]
            self.stats["replayed_runs"] += 1
            self._move_done(run)
            return ReplayResult(ReplayOutcome.WRITTEN, "; ".join(notes))
        finally:
            if run_lock is not None:
                run_lock.release()
            if not path.exists():
                (self.pending_dir / f"{run}.lock").unlink(missing_ok=True)

    def _reject(self, run: str, path: Path, reason: str) -> ReplayResult:
        """Move a run the writer keeps refusing to ``rejected/``.

        Refused means bad data, not an outage; it is moved with its reason: kept on disk, no longer
        retried, counted. Never raises: a file that cannot be moved (a disk error) stays in
        ``pending/`` and the outcome is ``FAILED`` (retried); a reason file that cannot be
        written (a full disk) is only logged.
        """
        target = self.rejected_dir / path.name
        journal = self._journals.get(run)
        try:
            self.rejected_dir.mkdir(exist_ok=True)
            if journal is None:
                shutil.move(str(path), target)
            else:  # the whole run (the refused records too), not the file's part of it
                partial = target.with_name(target.name + ".part")
                with open(partial, "wb") as fh:
                    for chunk in journal.raw():
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(partial, target)
                path.unlink(missing_ok=True)
                with self._lock:
                    self._journals.drop(run)
        except OSError as exc:
            if journal is not None:  # a half-written copy (a full disk) must not fill it more
                target.with_name(target.name + ".part").unlink(missing_ok=True)
            logger.error("spool %s: run %s cannot be set aside (%s): %s; it stays in %s",
                         self.root.name, run[:8], reason, exc, self.pending_dir)
            return ReplayResult(ReplayOutcome.FAILED, f"cannot be set aside in rejected/ "
                                f"({type(exc).__name__}: {exc}); {reason}")
        try:
            (self.rejected_dir / f"{run}.reason.txt").write_text(reason + "\n")
        except OSError as exc:  # e.g. the disk is full: the reason is in the log below
            logger.error("spool %s: reason file of run %s not written: %s", self.root.name,
                         run[:8], exc)
        fsync_dir(self.rejected_dir)
        self._failed.discard(run)
        self.stats["rejected"] += 1
        logger.error("spool %s: run %s set aside (%s); kept in %s, not retried",
                     self.root.name, run[:8], reason, target)
        return ReplayResult(ReplayOutcome.REJECTED, reason)

    def _journal_broken(self, run: str, exc: JournalError) -> ReplayResult:
        """Drop a journal its spool file no longer matches: replay the file from now on."""
        with self._lock:
            self._journals.drop(run)
        logger.error("spool %s: journal of run %s dropped (%s); the run is replayed from its "
                     "file, without the documents the disk refused", self.root.name, run[:8],
                     exc)
        return ReplayResult(ReplayOutcome.FAILED, f"journal dropped: {exc}")

    def rejected(self) -> list[str]:
        """Return the runs the writer refused for their content (kept in ``rejected/``)."""
        return sorted(p.stem for p in self.rejected_dir.glob(f"*{SUFFIX}"))

    def prune(self) -> int:
        """Delete ``done/`` files older than ``retention_days``; returns how many."""
        if self.retention_days is None:
            return 0
        cutoff = time.time() - self.retention_days * 86400.0
        removed = 0
        for p in self.done_dir.glob(f"*{SUFFIX}"):
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
            except OSError:
                continue
        return removed


def _doc(record: dict) -> tuple[str, dict]:
    return record["name"], record["doc"]


def _transient(exc: BaseException) -> bool:
    """Tell an outage (retry) from refused content.

    The test is the project's one policy,
    :func:`pbi_bluesky.infra.retry.should_retry` (tiled's own for HTTP), plus any other
    ``OSError`` of the writer's transport.
    """
    return bool(should_retry(exc)) or isinstance(exc, OSError)
