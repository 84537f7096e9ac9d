"""The scoring role of a bus worker: per-frame work items in, write-once results out.

A :class:`Scorer`

* reads per-frame work items from ``{beamline}.pbi.frames`` in the shared consumer group
  ``pbi-scorers`` (so the frames of one run are split between all workers), reduces and
  scores them with the same :class:`~pbi_bluesky.scoring.engine.FrameScorer` as the
  in-process scorer, explains flagged frames, and records each result with
  :data:`~.ledger.RECORD`: written once, then acknowledged, atomically (at least once
  delivery, exactly one result);
* reclaims: every ``claim_every_s`` it takes over work items another worker has held for
  more than ``claim_idle_s`` without acknowledging them (``XAUTOCLAIM``: that worker died
  or hangs), one at a time. An item delivered more than ``max_deliveries`` times is
  poison: it is dead-lettered onto ``{beamline}.pbi.dead`` with the last error seen, and
  its frame is recorded as failed with that reason, so the run still completes;
* isolates poison: a batch that fails is scored again frame by frame, and reclaimed items
  (perhaps of a batch that killed its worker) are scored alone, so only the poison frame
  reaches ``max_deliveries``; the innocent frames of its batch are scored.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pbi_bluesky.bus.ledger import Ledger, encode_result, profile_from_dict
from pbi_bluesky.bus.names import SCORER_GROUP, BusNames
from pbi_bluesky.codec import DecodeError, decode
from pbi_bluesky.scoring import FrameResult
from pbi_bluesky.scoring.analysis import explain_frame
from pbi_bluesky.scoring.engine import FrameInput, FrameScorer, Outcome
from pbi_bluesky.scoring.frames import AssetRegistry
from pbi_bluesky.scoring.streams import FrameParts, Roles

__all__ = ["Scorer"]

logger = logging.getLogger(__name__)


class _Permanent(ValueError):
    """A work item that can never be scored (dead-lettered at once)."""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _broker_error(exc: BaseException) -> bool:
    """Whether the broker failed (retry the whole batch later), not one of its frames."""
    import redis

    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError))


@dataclass
class _Context:
    start: dict[str, Any]
    assets: AssetRegistry
    roles: dict[str, Roles | None] = field(default_factory=dict)
    core: FrameScorer | None = None  # the run's model (registry version pinned at its start)


class Scorer:
    """The scoring role of one bus worker (see the module docstring).

    Parameters
    ----------
    client
        Redis client of the broker.
    names
        The beamline's key names.
    core
        The frame scorer (model and reduction settings, identical on every worker).
    name
        Consumer name in the scorer group.
    batch_size
        Work items read (and scored in one model pass) at a time.
    claim_idle_s, claim_every_s, max_deliveries
        Reclaiming (see the module docstring); ``claim_every_s`` defaults to half of
        ``claim_idle_s``.
    """

    def __init__(self, client: Any, names: BusNames, core: FrameScorer, name: str, *,
                 batch_size: int = 16, claim_idle_s: float = 10.0,
                 claim_every_s: float | None = None, max_deliveries: int = 3) -> None:
        self.client, self.names, self.core, self.name = client, names, core, name
        self.ledger = Ledger(client, names)
        self.batch_size = max(1, int(batch_size))
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.claim_every_s = claim_every_s if claim_every_s is not None else claim_idle_s / 2
        self.max_deliveries = int(max_deliveries)
        self.initial_background = core.background
        self._contexts: dict[str, _Context] = {}
        self._backgrounds: dict[str, Any] = {}
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self.stats = {"scored": 0, "claimed": 0, "dead": 0, "errors": 0, "batches": 0,
                      "isolations": 0, "item_errors": 0}

    def join(self) -> None:
        """Join the scorer group (creates this consumer)."""
        self.client.xgroup_createconsumer(self.names.frames, SCORER_GROUP, self.name)

    def step(self, block_ms: int = 500) -> int:
        """Reclaim or read one batch of work items and score it; return how many.

        Parameters
        ----------
        block_ms
            How long to wait for new work items when there are none.
        """
        entries = self._claim() if time.monotonic() >= self._next_claim else []
        if not entries:
            resp = self.client.xreadgroup(SCORER_GROUP, self.name, {self.names.frames: ">"},
                                          count=self.batch_size, block=block_ms)
            entries = resp[0][1] if resp else []
        if entries:
            self._handle(entries)
        return len(entries)

    def _claim(self) -> list:
        """Return a work item idle too long at another (dead) worker, unless it is poison.

        One at a time, scored alone: the items of a batch that killed its worker are
        retried apart, so the one that kills again is delivered more than
        ``max_deliveries`` times and dead-lettered, and the others are scored.
        """
        self._next_claim = time.monotonic() + self.claim_every_s
        resp = self.client.xautoclaim(self.names.frames, SCORER_GROUP, self.name,
                                      self.claim_idle_ms, self._claim_cursor, count=1)
        self._claim_cursor = _s(resp[0])
        entries = [e for e in resp[1] if e and e[0] is not None]
        if entries:
            self._next_claim = 0.0  # there may be more: claim the next one right after
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
        """Score a batch; if it fails, its frames one by one (only the poison one fails)."""
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
                if _broker_error(exc):
                    raise
                self._item_failed(entry_id, exc)  # this item only: retried, then dead
        if not frames:
            return
        try:
            self._score(frames, metas)
            return
        except Exception as exc:
            if _broker_error(exc):
                for meta in metas:
                    self._note_error(meta[0], exc)
                raise
            if len(frames) == 1:
                self._note_error(metas[0][0], exc)
                self._item_failed(metas[0][0], exc)
                return
            logger.warning("bus worker %s: a batch of %d frames failed (%s: %s): scoring "
                           "them one by one", self.name, len(frames), type(exc).__name__, exc)
            self.stats["isolations"] += 1
        for frame, meta in zip(frames, metas, strict=True):
            try:
                self._score([frame], [meta])
            except Exception as exc:
                self._note_error(meta[0], exc)
                if _broker_error(exc):
                    raise
                self._item_failed(meta[0], exc)

    def _score(self, frames: list[FrameInput],
               metas: list[tuple[Any, str, str, FrameScorer]]) -> None:
        """Score frames, one pass per run's model; record their results (acknowledged)."""
        outcomes: list[Outcome | None] = [None] * len(frames)
        for core in {id(m[3]): m[3] for m in metas}.values():  # one pass per model
            rows = [i for i, m in enumerate(metas) if m[3] is core]
            for i, outcome in zip(rows, core.process([frames[i] for i in rows]), strict=True):
                outcomes[i] = outcome
        pipe = self.client.pipeline(transaction=False)
        for (entry_id, run, key, core), outcome in zip(metas, outcomes, strict=True):
            self.ledger.record(run, key, self._blob(outcome, core), entry_id, pipe=pipe)
        pipe.hdel(self.names.errors, *[m[0] for m in metas])  # errors of earlier tries
        pipe.execute()
        self.stats["scored"] += len(frames)
        self.stats["batches"] += 1

    def _item_failed(self, entry_id: Any, exc: Exception) -> None:
        """One work item failed: left pending, it is reclaimed, retried, then dead-lettered."""
        self.stats["item_errors"] += 1
        logger.warning("bus worker %s: work item %s failed (%s: %s); retried after %.1f s, "
                       "dead-lettered after %d deliveries", self.name, _s(entry_id),
                       type(exc).__name__, exc, self.claim_idle_ms / 1000,
                       self.max_deliveries)

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
