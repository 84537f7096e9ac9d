"""A scorer worker of the document bus (``pbi worker``): many run at once, anywhere.

Each worker

* scores: it reads per-frame work items from ``{beamline}.pbi.frames`` in the shared
  consumer group ``pbi-scorers`` (so the frames of one run are split between all workers),
  reduces and scores them with the same :class:`~pbi_bluesky.scoring.engine.FrameScorer` as the
  in-process scorer, explains flagged frames, and records each result with
  :data:`~.ledger.RECORD`: written once, then acknowledged, atomically (at least once
  delivery, exactly one result);
* reclaims: every ``claim_every_s`` it takes over work items another worker has held for
  more than ``claim_idle_s`` without acknowledging them (``XAUTOCLAIM``: that worker died
  or hangs). An item delivered more than ``max_deliveries`` times is poison: it is
  dead-lettered onto ``{beamline}.pbi.dead`` with the last error seen, and its frame is
  recorded as failed with that reason, so the run still completes;
* coordinates, if it holds the lease (one worker at a time; another takes over within
  ``lease_s`` when it dies): :class:`~.dispatcher.Dispatcher` and
  :class:`~.assembler.Assembler` on a thread of their own.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pbi_bluesky.bus.assembler import Assembler
from pbi_bluesky.bus.dispatcher import Dispatcher
from pbi_bluesky.bus.ledger import (
    Lease,
    Ledger,
    NotLeader,
    encode_result,
    profile_from_dict,
)
from pbi_bluesky.bus.names import (
    COORDINATOR_GROUP,
    PASSWORD_ENV,
    SCORER_GROUP,
    BusNames,
    connect,
)
from pbi_bluesky.codec import DecodeError, decode
from pbi_bluesky.infra.secrets import redact_url
from pbi_bluesky.scoring import FrameResult
from pbi_bluesky.scoring.analysis import explain_frame
from pbi_bluesky.scoring.engine import FrameInput, FrameScorer, Outcome
from pbi_bluesky.scoring.frames import AssetRegistry
from pbi_bluesky.scoring.streams import FrameParts, Roles

__all__ = ["WORKER_ROLES", "BusWorker", "ensure_groups", "tiled_writer_factory"]

logger = logging.getLogger(__name__)

WORKER_ROLES = ("both", "score", "coordinate")
"""What a worker does: score and coordinate (when it holds the lease), or one of them."""


class _Permanent(ValueError):
    """A work item that can never be scored (dead-lettered at once)."""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def ensure_groups(client: Any, names: BusNames) -> None:
    """Create the streams and consumer groups if missing (idempotent)."""
    import redis

    for stream, group in ((names.documents, COORDINATOR_GROUP),
                          (names.results, COORDINATOR_GROUP), (names.frames, SCORER_GROUP)):
        try:
            client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


@dataclass
class _Context:
    start: dict[str, Any]
    assets: AssetRegistry
    roles: dict[str, Roles | None] = field(default_factory=dict)
    core: FrameScorer | None = None  # the run's model (registry version pinned at its start)


class BusWorker:
    """One scorer worker (see the module docstring).

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
        Reclaiming (see the module docstring).
    lease_s
        Coordinator lease time to live.
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
                 score: bool = True, password_env: str | None = PASSWORD_ENV) -> None:
        if not score and writer_factory is None:
            raise ValueError("a worker that neither scores nor coordinates does nothing")
        self.url, self.names, self.core = url, BusNames(beamline), core
        self.score = bool(score)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.batch_size = max(1, int(batch_size))
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.claim_every_s = claim_every_s if claim_every_s is not None else claim_idle_s / 2
        self.max_deliveries = int(max_deliveries)
        self.initial_background = core.background
        self.client = connect(url, socket_timeout=max(5.0, lease_s), password_env=password_env)
        self.ledger = Ledger(self.client, self.names)
        self.lease = Lease(self.ledger, self.name, lease_s) if writer_factory else None
        self._coord_client = connect(url, socket_timeout=max(5.0, lease_s),
                                     password_env=password_env)
        coord_ledger = Ledger(self._coord_client, self.names)
        self.dispatcher = Dispatcher(self._coord_client, coord_ledger, core, self.name,
                                     is_leader=self._leader)
        self.assembler = (Assembler(self._coord_client, coord_ledger, core, self.name,
                                    writer_factory, delete_partial, retention_s=retention_s)
                          if writer_factory else None)
        self._contexts: dict[str, _Context] = {}
        self._backgrounds: dict[str, Any] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._next_beat = 0.0
        self.stats = {"scored": 0, "claimed": 0, "dead": 0, "errors": 0, "batches": 0}

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
            lease_s=bus.lease_s, retention_s=bus.retention_s, score=role != "coordinate",
            password_env=bus.password_env)

    def _leader(self) -> bool:
        return self.lease is not None and self.lease.held.is_set() and not self._stop.is_set()

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> BusWorker:
        """Start the scoring (and, if allowed, the coordinating) thread."""
        ensure_groups(self.client, self.names)
        self._heartbeat()
        self._threads = []
        if self.score:
            self.client.xgroup_createconsumer(self.names.frames, SCORER_GROUP, self.name)
            self._threads.append(threading.Thread(target=self._score_loop, daemon=True,
                                                  name=f"pbi-bus-score-{self.name}"))
        if self.lease is not None:
            self._threads.append(threading.Thread(target=self._coordinate_loop, daemon=True,
                                                  name=f"pbi-bus-coord-{self.name}"))
        for t in self._threads:
            t.start()
        logger.info("bus worker %s on %s (%s)%s", self.name, self.names.documents,
                    redact_url(self.url),
                    "" if self.lease and self.score else ", scoring only" if self.score
                    else ", coordinating only")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the current batch, give the lease up, stop."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        if self.lease is not None:
            self.lease.release()

    def wait(self) -> None:
        """Block until :meth:`stop` (from a signal handler, say)."""
        while not self._stop.wait(0.5):
            pass

    # -- scoring ----------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        self.client.hset(self.names.workers, self.name, f"{time.time():.3f}")
        self._next_beat = time.monotonic() + 5.0

    def _score_loop(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                if time.monotonic() >= self._next_beat:
                    self._heartbeat()
                entries = self._claim() if time.monotonic() >= self._next_claim else []
                if not entries:
                    resp = self.client.xreadgroup(SCORER_GROUP, self.name,
                                                  {self.names.frames: ">"},
                                                  count=self.batch_size, block=500)
                    entries = resp[0][1] if resp else []
                if entries:
                    self._handle(entries)
                backoff = 0.2
            except Exception as exc:  # noqa: BLE001 - broker away, or a bug: keep going
                self.stats["errors"] += 1
                logger.warning("bus worker %s: %s: %s (retrying in %.1f s)", self.name,
                               type(exc).__name__, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(5.0, backoff * 2)

    def _claim(self) -> list:
        """Work items idle too long at other (dead) workers, minus poison ones."""
        self._next_claim = time.monotonic() + self.claim_every_s
        resp = self.client.xautoclaim(self.names.frames, SCORER_GROUP, self.name,
                                      self.claim_idle_ms, self._claim_cursor,
                                      count=self.batch_size)
        self._claim_cursor = _s(resp[0])
        entries = [e for e in resp[1] if e and e[0] is not None]
        live = [e for e in entries if e[1]]
        for entry_id, _ in (e for e in entries if not e[1]):  # deleted from the stream
            self.client.xack(self.names.frames, SCORER_GROUP, entry_id)
        if not live:
            return []
        self.stats["claimed"] += len(live)
        self.client.hincrby(self.names.stats, "claimed", len(live))
        pending = self.client.xpending_range(self.names.frames, SCORER_GROUP,
                                             min=live[0][0], max=live[-1][0],
                                             count=len(live) + 100, consumername=self.name)
        delivered = {_s(p["message_id"]): int(p["times_delivered"]) for p in pending}
        keep = []
        for entry_id, fields in live:
            n = delivered.get(_s(entry_id), 1)
            if n > self.max_deliveries:
                error = self.client.hget(self.names.errors, entry_id)
                reason = (f"poison work item: delivered {n} times without a result (last "
                          f"error: {_s(error) if error else 'none recorded: a worker died'})")
                self._dead(entry_id, fields, reason)
            else:
                keep.append((entry_id, fields))
        if keep:
            logger.info("bus worker %s reclaimed %d work item(s) of other workers",
                        self.name, len(keep))
        return keep

    def _dead(self, entry_id: Any, fields: dict, reason: str) -> None:
        """Dead-letter a work item; its frame (if known) is recorded as failed."""
        run, key = _s(fields.get(b"run", b"")), _s(fields.get(b"key", b""))
        logger.warning("dead-lettered work item %s (run %s frame %s): %s", _s(entry_id),
                       run[:8], key, reason)
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.names.dead, {"source": self.names.frames, "id": entry_id,
                                    "reason": reason, "run": run, "key": key,
                                    "payload": fields.get(b"item", b"")})
        pipe.hincrby(self.names.stats, "dead_items", 1)
        if run and key and "/" in key and self.client.hexists(self.names.run(run), "start"):
            seq = int(key.rsplit("/", 1)[1]) if key.rsplit("/", 1)[1].isdigit() else -1
            blob = encode_result(FrameResult(run, seq, "failed", reason=f"dead-lettered: "
                                             f"{reason}"), None, worker=self.name)
            self.ledger.record(run, key, blob, entry_id, pipe=pipe)
        else:
            pipe.xack(self.names.frames, SCORER_GROUP, entry_id)
        pipe.hdel(self.names.errors, entry_id)
        pipe.execute()
        self.stats["dead"] += 1

    def _context(self, run: str, refresh: bool = False) -> _Context:
        ctx = self._contexts.get(run)
        if ctx is not None and not refresh:
            return ctx
        h = self.client.hgetall(self.names.run(run))
        if b"start" not in h:
            raise _Permanent(f"run {run}: no run context in the ledger (start document "
                             "never dispatched, or expired)")
        pin = h.get(b"model_version")
        ctx = _Context(decode(h[b"start"]), AssetRegistry(self.core.data_roots),
                       core=self.core if pin is None else self.core.for_version(_s(pin)))
        for k, v in h.items():
            k = _s(k)
            if k.startswith("desc:"):
                ctx.roles[k[5:]] = self.core.roles(decode(v))
            elif k.startswith("res:"):
                ctx.assets.add_resource(decode(v))
            elif k.startswith("sres:"):
                ctx.assets.add_stream_resource(decode(v))
        if len(self._contexts) > 64:
            self._contexts.pop(next(iter(self._contexts)))
        self._contexts[run] = ctx
        return ctx

    def _background(self, ref: str | None) -> Any:
        if not ref:
            return self.initial_background
        if ref not in self._backgrounds:
            run, key = ref.split("|", 1)
            blob = self.client.hget(self.names.run_results(run), key)
            record = decode(blob) if blob is not None else {}
            if "profile" not in record:
                raise _Permanent(f"background empty-cell frame {ref} has no stored profile")
            if len(self._backgrounds) > 16:
                self._backgrounds.pop(next(iter(self._backgrounds)))
            self._backgrounds[ref] = profile_from_dict(record["profile"])
        return self._backgrounds[ref]

    def _frame(self, fields: dict) -> FrameInput:
        try:
            run, item = _s(fields[b"run"]), decode(fields[b"item"])
            desc, seq, values = str(item["desc"]), int(item["seq"]), dict(item["values"])
        except (KeyError, TypeError, ValueError, DecodeError) as exc:
            raise _Permanent(f"malformed work item: {type(exc).__name__}: {exc}") from exc
        ctx = self._context(run)
        datum_ids = [v[1] for v in values.values() if v[0] == "datum"]
        refs = {v[1][0] for v in values.values() if v[0] == "stream"}
        if desc not in ctx.roles or any(r not in ctx.assets.stream_resources for r in refs):
            ctx = self._context(run, refresh=True)
        if desc not in ctx.roles:
            raise _Permanent(f"run {run}: descriptor {desc} not in the ledger")
        roles = ctx.roles[desc]
        if roles is None:
            raise _Permanent(f"run {run}: descriptor {desc} has no image stream")
        if datum_ids:
            for blob in self.client.hmget(self.names.run_datums(run), datum_ids):
                if blob is not None:
                    datum = decode(blob)
                    if datum["resource"] not in ctx.assets.resources:
                        ctx = self._context(run, refresh=True)
                    ctx.assets.add_datum(datum)
        is_cell = ctx.start.get("sample_type") == "empty_cell"
        background = None if is_cell else self._background(item.get("background"))
        return FrameInput(run, ctx.start, roles, FrameParts(seq, values), ctx.assets,
                          background=background)

    def _handle(self, entries: list) -> None:
        frames, metas = [], []
        for entry_id, fields in entries:
            try:
                frames.append(self._frame(fields))
                run = _s(fields[b"run"])
                ctx = self._contexts.get(run)
                metas.append((entry_id, run, _s(fields[b"key"]),
                              ctx.core if ctx is not None and ctx.core else self.core))
            except _Permanent as exc:
                self._dead(entry_id, fields, str(exc))
            except Exception as exc:
                self._note_error(entry_id, exc)
                raise
        if not frames:
            return
        try:
            outcomes: list[Outcome | None] = [None] * len(frames)
            for core in {id(m[3]): m[3] for m in metas}.values():  # one pass per model
                rows = [i for i, m in enumerate(metas) if m[3] is core]
                for i, outcome in zip(rows, core.process([frames[i] for i in rows]),
                                      strict=True):
                    outcomes[i] = outcome
            pipe = self.client.pipeline(transaction=False)
            for (entry_id, run, key, core), outcome in zip(metas, outcomes, strict=True):
                self.ledger.record(run, key, self._blob(outcome, core), entry_id, pipe=pipe)
            pipe.execute()
        except Exception as exc:
            for entry_id, _run, _key, _core in metas:
                self._note_error(entry_id, exc)
            raise
        self.stats["scored"] += len(frames)
        self.stats["batches"] += 1

    def _note_error(self, entry_id: Any, exc: Exception) -> None:
        try:
            self.client.hset(self.names.errors, entry_id, f"{type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001 - the broker may be what failed
            pass

    def _blob(self, outcome: Outcome, core: FrameScorer) -> bytes:
        result = outcome.result
        explanation = None
        if outcome.explain and outcome.resampled is not None and \
                getattr(core.model, "population", None) is not None:
            explanation = explain_frame(core.model, result, *outcome.resampled,
                                        result.expected_composition)
        profile = outcome.profile if result.status == "reference" else None
        return encode_result(result, outcome.resampled, profile=profile,
                             explanation=explanation, worker=self.name)

    # -- coordinating -------------------------------------------------------------------------
    def _coordinate_loop(self) -> None:
        assert self.lease is not None and self.assembler is not None
        recover, backoff = True, 0.2
        while not self._stop.is_set():
            try:
                if not self.score and time.monotonic() >= self._next_beat:
                    self._heartbeat()
                if not self.lease.held.is_set():
                    if not self.lease.try_acquire():
                        self._stop.wait(self.lease.ttl_ms / 4000.0)
                        continue
                    logger.info("bus worker %s is the coordinator", self.name)
                    recover = True
                if recover:
                    self.dispatcher.reset()
                    self.assembler.reset()
                    self.dispatcher.recover()
                    self.assembler.recover()
                    recover = False
                self.assembler.retry_dirty()
                resp = self._coord_client.xreadgroup(
                    COORDINATOR_GROUP, self.name,
                    {self.names.documents: ">", self.names.results: ">"},
                    count=self.dispatcher.batch, block=200)
                for stream, entries in resp or []:
                    if _s(stream) == self.names.documents:
                        self.dispatcher.process(entries)
                    else:
                        self.assembler.process(entries)
                backoff = 0.2
            except NotLeader:
                logger.warning("bus worker %s is no longer the coordinator", self.name)
                self.lease.held.clear()
                recover = True
            except Exception as exc:  # noqa: BLE001 - broker away or a bug: keep going
                logger.warning("bus coordinator %s: %s: %s (retrying in %.1f s)", self.name,
                               type(exc).__name__, exc, backoff, exc_info=True)
                recover = True
                self._stop.wait(backoff)
                backoff = min(5.0, backoff * 2)


def tiled_writer_factory(catalog: Any, batch_size: int = 256) -> Any:
    """Return a factory of analysis-run writers for a :class:`~pbi_bluesky.store.Catalog`.

    ``Catalog.writer`` is the one ``TiledWriter`` factory; the coordinator writes events in
    batches of ``batch_size`` and skips the normalizer (its documents are composed here).
    """
    return functools.partial(catalog.writer, batch_size, composed=True)
