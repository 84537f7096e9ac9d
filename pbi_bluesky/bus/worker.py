"""A worker of the document bus (``pbi worker``): many run at once, anywhere.

Each worker has two roles, each on a thread of its own:

* scoring (:class:`~.scorer.Scorer`): per-frame work items of the shared consumer group in,
  write-once results out; reclaims a dead worker's items, dead-letters poison ones;
* coordinating (:class:`~.coordinator.Coordinator`), if it holds the lease (one worker at a
  time; another takes over within ``lease_s`` when it dies): the
  :class:`~.dispatcher.Dispatcher` and :class:`~.assembler.Assembler`.

``role`` ``"score"`` or ``"coordinate"`` keeps one of them (a coordinator on a process of
its own is the layout for high frame rates). :class:`BusWorker` builds both from a
beamline's settings and runs their loops; :func:`tiled_writer_factory` lives in
:mod:`~.coordinator` and is re-exported here.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from pbi_bluesky.bus.coordinator import Coordinator, tiled_writer_factory
from pbi_bluesky.bus.names import (
    COORDINATOR_GROUP,
    PASSWORD_ENV,
    SCORER_GROUP,
    BusNames,
    connect,
)
from pbi_bluesky.bus.scorer import Scorer
from pbi_bluesky.infra.secrets import redact_url
from pbi_bluesky.scoring.engine import FrameScorer

__all__ = ["WORKER_ROLES", "BusWorker", "ensure_groups", "tiled_writer_factory"]

logger = logging.getLogger(__name__)

WORKER_ROLES = ("both", "score", "coordinate")
"""What a worker does: score and coordinate (when it holds the lease), or one of them."""


def ensure_groups(client: Any, names: BusNames) -> None:
    """Create the streams and consumer groups if missing (idempotent).

    Parameters
    ----------
    client
        Redis client of the broker.
    names
        The beamline's key names.
    """
    import redis

    for stream, group in ((names.documents, COORDINATOR_GROUP),
                          (names.results, COORDINATOR_GROUP), (names.frames, SCORER_GROUP)):
        try:
            client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


class BusWorker:
    """One bus worker (see the module docstring).

    Parameters
    ----------
    url
        Redis URL of the broker.
    beamline
        Beamline name (selects the streams).
    core
        The frame scorer (model and reduction settings, identical on every worker).
    writer_factory, delete_partial
        For the coordinator: a fresh ``TiledWriter`` for the runs container, and a
        function deleting a run by uid. ``None``: this worker never coordinates.
    name
        Consumer name (default ``host-pid-random``).
    batch_size
        Work items read (and scored in one model pass) at a time.
    claim_idle_s, claim_every_s, max_deliveries
        Reclaiming (:class:`~.scorer.Scorer`).
    lease_s
        Coordinator lease time to live.
    retention_s
        How long a closed run's Redis keys are kept.
    stream_retention_s, idle_close_s
        Trimming of acknowledged stream entries, closing of runs without a stop
        (:class:`~.coordinator.Coordinator`).
    score
        False: a coordinator only (dispatch and Tiled writes on a process of their own, the
        layout for high frame rates).
    password_env
        Environment variable holding the broker's password (``bus.password_env``).
    """

    def __init__(self, url: str, beamline: str, core: FrameScorer, *,
                 writer_factory: Any = None, delete_partial: Any = None,
                 name: str | None = None, batch_size: int = 16, claim_idle_s: float = 10.0,
                 claim_every_s: float | None = None, max_deliveries: int = 3,
                 lease_s: float = 10.0, retention_s: float = 86400.0,
                 stream_retention_s: float = 600.0, idle_close_s: float = 3600.0,
                 score: bool = True, password_env: str | None = PASSWORD_ENV) -> None:
        if not score and writer_factory is None:
            raise ValueError("a worker that neither scores nor coordinates does nothing")
        self.url, self.names, self.core = url, BusNames(beamline), core
        self.score = bool(score)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.client = connect(url, socket_timeout=max(5.0, lease_s), password_env=password_env)
        self.scorer = Scorer(self.client, self.names, core, self.name, batch_size=batch_size,
                             claim_idle_s=claim_idle_s, claim_every_s=claim_every_s,
                             max_deliveries=max_deliveries)
        self._stop = threading.Event()
        self.coordinator = (Coordinator(connect(url, socket_timeout=max(5.0, lease_s),
                                                password_env=password_env),
                                        self.names, core, self.name, writer_factory,
                                        delete_partial, lease_s=lease_s,
                                        retention_s=retention_s,
                                        stream_retention_s=stream_retention_s,
                                        idle_close_s=idle_close_s, stopping=self._stop.is_set)
                            if writer_factory else None)
        self._threads: list[threading.Thread] = []
        self._next_beat = 0.0

    # -- what the parts hold, under the names they had before the split ----------------------
    @property
    def stats(self) -> dict[str, int]:
        """The scoring counters (scored, claimed, dead, errors, batches)."""
        return self.scorer.stats

    @property
    def batch_size(self) -> int:
        """Work items read and scored at a time."""
        return self.scorer.batch_size

    @property
    def claim_idle_ms(self) -> int:
        """How long a work item stays at a worker before others reclaim it."""
        return self.scorer.claim_idle_ms

    @property
    def lease(self) -> Any:
        """The coordinator lease (``None``: this worker never coordinates)."""
        return self.coordinator.lease if self.coordinator else None

    @property
    def dispatcher(self) -> Any:
        """The coordinator's dispatcher (``None``: this worker never coordinates)."""
        return self.coordinator.dispatcher if self.coordinator else None

    @property
    def assembler(self) -> Any:
        """The coordinator's assembler (``None``: this worker never coordinates)."""
        return self.coordinator.assembler if self.coordinator else None

    @classmethod
    def from_settings(cls, settings: Any, *, url: str | None = None, name: str | None = None,
                      role: str = "both", core: FrameScorer | None = None,
                      catalog: Any = None) -> BusWorker:
        """Return a worker configured from a beamline's settings.

        The settings are a :class:`~pbi_bluesky.config.BeamlineConfig`; they give its frame scorer
        (:meth:`FrameScorer.from_settings`), the ``bus`` section (broker, reclaiming, lease,
        retention, Tiled batch), ``scorer.batch_size``, and the ``tiled`` section for the
        analysis runs (the embedded catalog under ``data_dir`` when ``tiled.uri`` is null).

        Parameters
        ----------
        settings
            The beamline's settings.
        url
            The broker (default ``bus.url``).
        name
            Consumer name (default ``host-pid-random``).
        role
            ``"both"`` (score, and coordinate when holding the lease), ``"score"`` (never
            dispatch or write Tiled) or ``"coordinate"`` (score nothing).
        core, catalog
            A frame scorer or catalog built already (default: from ``settings``).
        """
        from pbi_bluesky.store import Catalog, data_dir

        if role not in WORKER_ROLES:
            raise ValueError(f"role must be one of {WORKER_ROLES}, got {role!r}")
        url = url or settings.bus.url
        if not url:
            raise ValueError("no broker: set bus.url in beamline.yaml or give one per worker")
        bus = settings.bus
        coordinates = role != "score"
        if coordinates and catalog is None:
            catalog = Catalog(settings.tiled.uri, api_key=settings.tiled.api_key,
                              data_dir=data_dir(settings.data_dir) / "catalog",
                              readable=settings.data_roots)
        return cls(
            url, settings.name, core if core is not None else FrameScorer.from_settings(settings),
            writer_factory=tiled_writer_factory(catalog, bus.tiled_batch) if coordinates
            else None, delete_partial=catalog.delete_partial if coordinates else None,
            name=name, batch_size=settings.scorer.batch_size, claim_idle_s=bus.claim_idle_s,
            claim_every_s=bus.claim_every_s, max_deliveries=bus.max_deliveries,
            lease_s=bus.lease_s, retention_s=bus.retention_s,
            stream_retention_s=bus.stream_retention_s, idle_close_s=bus.idle_close_s,
            score=role != "coordinate",
            password_env=bus.password_env)

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> BusWorker:
        """Start the scoring (and, if allowed, the coordinating) thread."""
        ensure_groups(self.client, self.names)
        self._heartbeat()
        self._threads = []
        if self.score:
            self.scorer.join()
            self._threads.append(threading.Thread(target=self._score_loop, daemon=True,
                                                  name=f"pbi-bus-score-{self.name}"))
        if self.coordinator is not None:
            self._threads.append(threading.Thread(target=self._coordinate_loop, daemon=True,
                                                  name=f"pbi-bus-coord-{self.name}"))
        for t in self._threads:
            t.start()
        logger.info("bus worker %s on %s (%s)%s", self.name, self.names.documents,
                    redact_url(self.url),
                    "" if self.coordinator and self.score else ", scoring only" if self.score
                    else ", coordinating only")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current batch, give the lease up, stop."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        if self.coordinator is not None:
            self.coordinator.release()

    def wait(self) -> None:
        """Block until :meth:`stop` (from a signal handler, say)."""
        while not self._stop.wait(0.5):
            pass

    # -- loops ------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        self.client.hset(self.names.workers, self.name, f"{time.time():.3f}")
        self._next_beat = time.monotonic() + 5.0

    def _score_loop(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                if time.monotonic() >= self._next_beat:
                    self._heartbeat()
                self.scorer.step()
                backoff = 0.2
            except Exception as exc:  # noqa: BLE001 - broker away, or a bug: keep going
                self.scorer.stats["errors"] += 1
                logger.warning("bus worker %s: %s: %s (retrying in %.1f s)", self.name,
                               type(exc).__name__, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(5.0, backoff * 2)

    def _coordinate_loop(self) -> None:
        coordinator = self.coordinator
        assert coordinator is not None
        backoff = 0.2
        while not self._stop.is_set():
            try:
                if not self.score and time.monotonic() >= self._next_beat:
                    self._heartbeat()
                if not coordinator.step():
                    self._stop.wait(coordinator.lease.ttl_ms / 4000.0)
                    continue
                backoff = 0.2
            except Exception as exc:  # noqa: BLE001 - broker away or a bug: keep going
                logger.warning("bus coordinator %s: %s: %s (retrying in %.1f s)", self.name,
                               type(exc).__name__, exc, backoff, exc_info=True)
                self._stop.wait(backoff)
                backoff = min(5.0, backoff * 2)
