"""The coordinating role of a bus worker: one at a time, by lease.

The worker holding the coordinator lease (another takes over within ``lease_s`` when it
dies) runs :class:`~.dispatcher.Dispatcher` (documents in, per-frame work items out) and
:class:`~.assembler.Assembler` (results in, analysis runs in Tiled). After taking the lease
over it recovers what the previous holder left unfinished. Every ``housekeeping_s`` it
closes runs that had no document for ``idle_close_s`` and no stop
(:meth:`~.dispatcher.Dispatcher.close_idle`) and trims the streams
(:meth:`Coordinator.trim`). :func:`tiled_writer_factory` gives the assembler its writers
(``TiledWriter``).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from pbi_bluesky.bus.assembler import Assembler
from pbi_bluesky.bus.dispatcher import Dispatcher
from pbi_bluesky.bus.ledger import Lease, Ledger, NotLeader
from pbi_bluesky.bus.names import COORDINATOR_GROUP, BusNames
from pbi_bluesky.scoring.engine import FrameScorer

__all__ = ["Coordinator", "tiled_writer_factory"]

logger = logging.getLogger(__name__)


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Coordinator:
    """The coordinating role of one bus worker (see the module docstring).

    Parameters
    ----------
    client
        Redis client of the broker (its own connection: its calls block).
    names
        The beamline's key names.
    core
        The frame scorer (its settings shape the work items and analysis runs).
    name
        The worker's name: the lease holder and consumer name.
    writer_factory, delete_partial
        A fresh ``TiledWriter`` for the runs container, and a function deleting a run by
        uid.
    lease_s
        Coordinator lease time to live.
    stuck_s
        Without progress for this long the coordinator stops renewing its lease (default
        ``3 * lease_s``, :class:`~.ledger.Lease`).
    retention_s
        How long a closed run's Redis keys, dead letters and silent workers' heartbeats are
        kept.
    stream_retention_s
        How long acknowledged stream entries are kept before :meth:`trim` removes them.
    idle_close_s
        Runs without a document for this long and no stop are closed.
    housekeeping_s
        How often idle runs are closed and the streams trimmed (default
        ``min(30, idle_close_s / 4)``).
    stopping
        Returns True once the worker is stopping (the lease then counts as lost).
    """

    def __init__(self, client: Any, names: BusNames, core: FrameScorer, name: str,
                 writer_factory: Any, delete_partial: Any, *, lease_s: float = 10.0,
                 stuck_s: float | None = None,
                 retention_s: float = 86400.0, stream_retention_s: float = 600.0,
                 idle_close_s: float = 3600.0, housekeeping_s: float | None = None,
                 stopping: Any = lambda: False) -> None:
        self.client, self.names, self.name = client, names, name
        self.ledger = Ledger(client, names)
        self.lease = Lease(self.ledger, name, lease_s, stuck_s=stuck_s)
        self._stopping = stopping
        self.dispatcher = Dispatcher(client, self.ledger, core, name, is_leader=self.leader,
                                     progress=self.lease.progress)
        self.assembler = Assembler(client, self.ledger, core, name, writer_factory,
                                   delete_partial, retention_s=retention_s,
                                   is_leader=self.leader, progress=self.lease.progress)
        self._recover = True
        self.retention_s = float(retention_s)
        self.stream_retention_s = float(stream_retention_s)
        self.idle_close_s = float(idle_close_s)
        self.housekeeping_s = (float(housekeeping_s) if housekeeping_s is not None
                               else min(30.0, self.idle_close_s / 4))
        self._next_housekeeping = 0.0

    def leader(self) -> bool:
        """Return whether this worker holds the lease (and is not stopping)."""
        return self.lease.held.is_set() and not self._stopping()

    def step(self, block_ms: int = 200) -> bool:
        """Take the lease if free, recover if newly taken, handle one batch of entries.

        Returns False when the lease is held by another worker (nothing was done).

        Parameters
        ----------
        block_ms
            How long to wait for new entries when there are none.
        """
        if not self.lease.held.is_set():
            if not self.lease.try_acquire():
                return False
            logger.info("bus worker %s is the coordinator", self.name)
            self._recover = True
        try:
            if self._recover:
                self.dispatcher.reset()
                self.assembler.reset()
                self.dispatcher.recover()
                self.assembler.recover()
                self._recover = False
            self.assembler.retry_dirty()
            resp = self.client.xreadgroup(
                COORDINATOR_GROUP, self.name,
                {self.names.documents: ">", self.names.results: ">"},
                count=self.dispatcher.batch, block=block_ms)
            self.lease.progress()
            for stream, entries in resp or []:
                if _s(stream) == self.names.documents:
                    self.dispatcher.process(entries)
                else:
                    self.assembler.process(entries)
                self.lease.progress()
            if time.monotonic() >= self._next_housekeeping:
                self._next_housekeeping = time.monotonic() + self.housekeeping_s
                self.dispatcher.close_idle(self.idle_close_s)
                self.trim()
                self.lease.progress()
        except NotLeader:
            logger.warning("bus worker %s is no longer the coordinator", self.name)
            self.lease.held.clear()
            self._recover = True
        except Exception:
            self._recover = True
            raise
        return True

    def trim(self, now: float | None = None) -> dict[str, int]:
        """Remove what the bus no longer needs; return how many entries per stream.

        * entries of the documents, frames and results streams that every consumer group
          has acknowledged (below the oldest pending entry, or the last delivered one) and
          that are older than ``stream_retention_s`` (``XTRIM MINID``);
        * dead letters older than ``retention_s``, and heartbeats of workers silent for as
          long.

        Parameters
        ----------
        now
            The time (default: now).
        """
        now = time.time() if now is None else float(now)
        n = self.names
        horizon = (int((now - self.stream_retention_s) * 1000), 0)
        removed = {}
        for stream in (n.documents, n.frames, n.results):
            acked = self._acked_below(stream)
            if acked is None:
                continue
            cut = min(acked, horizon)
            removed[stream] = int(self.client.xtrim(stream, minid=f"{cut[0]}-{cut[1]}",
                                                    approximate=False))
        old = int((now - self.retention_s) * 1000)
        removed[n.dead] = int(self.client.xtrim(n.dead, minid=f"{old}-0", approximate=False))
        silent = [w for w, t in self.client.hgetall(n.workers).items()
                  if float(t) < now - self.retention_s]
        if silent:
            self.client.hdel(n.workers, *silent)
        if any(removed.values()):
            logger.info("bus coordinator %s trimmed %s", self.name,
                        ", ".join(f"{k}: {v}" for k, v in removed.items() if v))
        return removed

    def _acked_below(self, stream: str) -> tuple[int, int] | None:
        """Return the id below which every group has acknowledged ``stream`` (None: no group)."""
        import redis

        try:
            groups = self.client.xinfo_groups(stream)
        except redis.ResponseError:  # no such stream
            return None
        cut = None
        for group in groups:
            if int(group["pending"]):
                low = _id(self.client.xpending(stream, group["name"])["min"])
            else:
                ms, seq = _id(group["last-delivered-id"])
                low = (ms, seq + 1)
            cut = low if cut is None else min(cut, low)
        return cut

    def release(self) -> None:
        """Give the lease up."""
        self.lease.release()


def _id(entry_id: Any) -> tuple[int, int]:
    ms, _, seq = _s(entry_id).partition("-")
    return int(ms), int(seq or 0)


def tiled_writer_factory(catalog: Any, batch_size: int = 256) -> Any:
    """Return a factory of analysis-run writers for a :class:`~pbi_bluesky.store.Catalog`.

    ``Catalog.writer`` is the one ``TiledWriter`` factory; the coordinator writes events in
    batches of ``batch_size`` and skips the normalizer (its documents are composed here).

    Parameters
    ----------
    catalog
        The catalog the analysis runs go to.
    batch_size
        Events per ``TiledWriter`` batch.
    """
    return functools.partial(catalog.writer, batch_size, composed=True)

