"""The coordinating role of a bus worker: one at a time, by lease.

The worker holding the coordinator lease (another takes over within ``lease_s`` when it
dies) runs :class:`~.dispatcher.Dispatcher` (documents in, per-frame work items out) and
:class:`~.assembler.Assembler` (results in, analysis runs in Tiled). After taking the lease
over it recovers what the previous holder left unfinished. :func:`tiled_writer_factory`
gives the assembler its writers (``TiledWriter``).
"""

from __future__ import annotations

import functools
import logging
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
    retention_s
        How long a closed run's Redis keys are kept.
    stopping
        Returns True once the worker is stopping (the lease then counts as lost).
    """

    def __init__(self, client: Any, names: BusNames, core: FrameScorer, name: str,
                 writer_factory: Any, delete_partial: Any, *, lease_s: float = 10.0,
                 retention_s: float = 86400.0, stopping: Any = lambda: False) -> None:
        self.client, self.names, self.name = client, names, name
        self.ledger = Ledger(client, names)
        self.lease = Lease(self.ledger, name, lease_s)
        self._stopping = stopping
        self.dispatcher = Dispatcher(client, self.ledger, core, name, is_leader=self.leader)
        self.assembler = Assembler(client, self.ledger, core, name, writer_factory,
                                   delete_partial, retention_s=retention_s)
        self._recover = True

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
            for stream, entries in resp or []:
                if _s(stream) == self.names.documents:
                    self.dispatcher.process(entries)
                else:
                    self.assembler.process(entries)
        except NotLeader:
            logger.warning("bus worker %s is no longer the coordinator", self.name)
            self.lease.held.clear()
            self._recover = True
        except Exception:
            self._recover = True
            raise
        return True

    def release(self) -> None:
        """Give the lease up."""
        self.lease.release()


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

