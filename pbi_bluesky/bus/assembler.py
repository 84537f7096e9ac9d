"""The coordinator's second half: frame results in, one analysis run per raw run in Tiled.

Results are written by many workers, but each analysis run has one writer: the
coordinator, through one :class:`bluesky_tiled_plugins.TiledWriter`. (Measured/read in
bluesky-tiled-plugins 2.0: ``TiledWriter`` creates the run container on ``start`` and the
stream's table on its first batch, so a second writer of the same run gets a conflict, and
``append_partition`` has no key a repeated append could be recognised by. Idempotency is
therefore enforced before Tiled, in Redis: a frame's result is written once, keyed by
(raw run uid, stream, seq_num), and the coordinator turns each result into exactly one
event.)

The analysis run is composed as in-process (:meth:`FrameScorer.begin_analysis`,
:class:`~pbi_bluesky.scoring.analysis.AnalysisRun`): start with provenance, stream
``pbi_anomaly`` (one event per frame) and ``pbi_attribution`` (flagged frames), and the stop
document with the frame ledger, written once, when the raw run has stopped and every frame
has a result.

A coordinator that takes over (the previous one died), or one that could not write to
Tiled, rewrites each open run from Redis: it deletes the partial copy and writes start,
every result (sorted by frame) and, if the run is complete, the stop; nothing is lost or
duplicated. Tiled being down only delays the analysis runs: results stay in Redis and the
rewrite is retried with backoff.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pbi_bluesky.bus.ledger import Ledger, Ops, decode_result
from pbi_bluesky.bus.names import COORDINATOR_GROUP, BusNames
from pbi_bluesky.codec import decode
from pbi_bluesky.scoring.analysis import AnalysisRun
from pbi_bluesky.scoring.engine import FrameScorer

__all__ = ["Assembler"]

logger = logging.getLogger(__name__)

def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _order(key: str) -> tuple[str, int]:
    stream, seq = key.rsplit("/", 1)
    return stream, int(seq)


@dataclass
class _Analysis:
    uid: str
    run: AnalysisRun
    written: set[str] = field(default_factory=set)


class Assembler:
    """Frame results -> analysis runs in Tiled (see the module docstring).

    Parameters
    ----------
    writer_factory
        Returns a fresh document writer (``TiledWriter``) for the runs container.
    delete_partial
        Removes an analysis run from the catalog, by uid (before a rewrite).
    retention_s
        Redis keys of a closed run expire after this long (the Tiled copy stays).
    """

    def __init__(self, client: Any, ledger: Ledger, core: FrameScorer, holder: str,
                 writer_factory: Any, delete_partial: Any, *, retention_s: float = 86400.0,
                 retry_initial_s: float = 0.5, retry_max_s: float = 30.0) -> None:
        self.client, self.ledger, self.core, self.holder = client, ledger, core, holder
        self.names: BusNames = ledger.names
        self.writer_factory, self.delete_partial = writer_factory, delete_partial
        self.retention_s = int(retention_s)
        self.retry = (float(retry_initial_s), float(retry_max_s))
        self.stats = {"events": 0, "runs_closed": 0, "rewrites": 0, "write_failures": 0}
        self.reset()

    def reset(self) -> None:
        """Forget the writer and the in-memory runs (before :meth:`recover` rebuilds them)."""
        self._writer: Any = None
        self._runs: dict[str, _Analysis] = {}
        self._dirty: set[str] = set()
        self._next_retry = 0.0
        self._attempt = 0

    # -- writing ----------------------------------------------------------------------------
    def _emit(self, name: str, doc: dict) -> None:
        if self._writer is None:
            self._writer = self.writer_factory()
        self._writer(name, doc)

    def _failed(self, uid: str, exc: Exception) -> None:
        self.stats["write_failures"] += 1
        if not self._dirty:
            logger.warning("analysis runs not written to Tiled (%s: %s); results stay in "
                           "Redis and the runs are rewritten when Tiled answers",
                           type(exc).__name__, exc)
        self._writer = None
        self._dirty.update(self._runs)
        self._dirty.add(uid)
        lo, hi = self.retry
        self._next_retry = time.monotonic() + min(hi, lo * 2 ** self._attempt)
        self._attempt += 1

    # -- recovery ---------------------------------------------------------------------------
    def recover(self) -> None:
        """Rewrite every open run, then take over unacknowledged notifications.

        Called after taking the lease over: the notifications are those a previous
        coordinator left unacknowledged.
        """
        for uid in sorted(_s(u) for u in self.client.smembers(self.names.open_runs)):
            self._rewrite(uid)
        cursor = "0-0"
        while True:
            resp = self.client.xautoclaim(self.names.results, COORDINATOR_GROUP, self.holder,
                                          0, cursor, count=500)
            cursor = _s(resp[0])
            entries = [e for e in resp[1] if e and e[0] is not None]
            if entries:
                self.process(entries)
            if cursor in ("0-0", "0"):
                return

    def retry_dirty(self) -> None:
        """Rewrite runs whose writing failed, with backoff."""
        if not self._dirty or time.monotonic() < self._next_retry:
            return
        for uid in sorted(self._dirty):
            if not self._rewrite(uid):
                return
        self._attempt = 0

    def _rewrite(self, uid: str) -> bool:
        h = self.client.hgetall(self.names.run(uid))
        self._dirty.discard(uid)
        self._runs.pop(uid, None)
        if not h or b"start" not in h or h.get(b"state") == b"closed":
            return True  # closed: its analysis run is complete in Tiled, leave it
        if h.get(b"has_frames") != b"1":
            self._maybe_close(uid, h)
            return True
        try:
            old = _s(h.get(b"analysis_uid", b""))
            if old:
                self.delete_partial(old)
            self.stats["rewrites"] += 1
            analysis = self._begin(uid, decode(h[b"start"]))
            results = self.client.hgetall(self.names.run_results(uid))
            for key in sorted((_s(k) for k in results), key=_order):
                self._add(analysis, key, results[key.encode()])
        except Exception as exc:  # noqa: BLE001 - Tiled down or refusing: retry later
            self._failed(uid, exc)
            return False
        self._maybe_close(uid)
        return True

    # -- notifications ---------------------------------------------------------------------------
    def process(self, entries: list[tuple[Any, dict | None]]) -> int:
        """Handle entries of the results stream; returns how many."""
        touched: set[str] = set()
        ops = Ops()
        blobs = self._prefetch(entries)
        for entry_id, fields in entries:
            ops.add("XACK", self.names.results, COORDINATOR_GROUP, entry_id)
            if not fields:
                continue
            kind, uid = _s(fields.get(b"kind", b"")), _s(fields.get(b"run", b""))
            touched.add(uid)
            if uid in self._dirty:
                continue
            try:
                if kind == "begin" and uid not in self._runs:
                    h = self.client.hgetall(self.names.run(uid))
                    if h.get(b"state", b"") != b"closed":
                        self._begin(uid, decode(h[b"start"]))
                elif kind == "result":
                    analysis = self._runs.get(uid)
                    if analysis is None:
                        if not self._rewrite(uid):
                            continue
                        analysis = self._runs.get(uid)
                    key = _s(fields[b"key"])
                    if analysis is not None and key not in analysis.written:
                        blob = blobs.get((uid, key))
                        if blob is None:
                            blob = self.client.hget(self.names.run_results(uid), key)
                        if blob is not None:
                            self._add(analysis, key, blob)
            except Exception as exc:  # noqa: BLE001 - Tiled down: rewrite later
                self._failed(uid, exc)
        for uid in sorted(touched - self._dirty):
            self._maybe_close(uid)
        self.ledger.apply(self.holder, ops)
        return len(entries)

    def _prefetch(self, entries: list) -> dict[tuple[str, str], bytes]:
        """Return the result records a batch of notifications points at, one HMGET per run."""
        wanted: dict[str, list[str]] = {}
        for _entry_id, fields in entries:
            if fields and fields.get(b"kind") == b"result":
                wanted.setdefault(_s(fields[b"run"]), []).append(_s(fields[b"key"]))
        if not wanted:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for uid, keys in wanted.items():
            pipe.hmget(self.names.run_results(uid), keys)
        out = {}
        for (uid, keys), blobs in zip(wanted.items(), pipe.execute(), strict=True):
            out.update({(uid, k): b for k, b in zip(keys, blobs, strict=True) if b is not None})
        return out

    def _begin(self, uid: str, start: dict[str, Any]) -> _Analysis:
        pin = self.client.hget(self.names.run(uid), "model_version")
        core = self.core if pin is None else self.core.for_version(_s(pin))
        run = core.begin_analysis(start)
        analysis = self._runs[uid] = _Analysis(str(run.bundle.start_doc["uid"]), run)
        self.ledger.apply(self.holder, Ops().add("HSET", self.names.run(uid), "analysis_uid",
                                                 analysis.uid))
        self._emit("start", run.bundle.start_doc)
        self._emit("descriptor", run.verdicts.descriptor_doc)
        self._emit("descriptor", run.explanations.descriptor_doc)
        return analysis

    def _add(self, analysis: _Analysis, key: str, blob: bytes) -> None:
        record = decode_result(blob)
        result = record["result"]
        self._emit("event", analysis.run.record(result, record["resampled"]))
        explanation = record.get("explanation")
        if explanation is not None:
            self._emit("event", analysis.run.explained(result, str(explanation["status"]),
                                                       dict(explanation["features"])))
        analysis.written.add(key)
        self.stats["events"] += 1

    def _maybe_close(self, uid: str, h: dict | None = None) -> None:
        """Write the stop document once the raw run stopped and every frame has a result."""
        h = h if h is not None else self.client.hgetall(self.names.run(uid))
        if not h or h.get(b"state") != b"stopped":
            return
        frames, done = int(h.get(b"frames", 0)), int(h.get(b"done", 0))
        analysis = self._runs.get(uid)
        if h.get(b"has_frames") == b"1":
            if analysis is None or done < frames or len(analysis.written) < done:
                return
            raw_stop = decode(h[b"stop"]) if b"stop" in h else {}
            stop = analysis.run.stop_doc(frames, raw_stop, 0, extra={
                "dead_lettered_documents": int(h.get(b"dead_letters", 0)),
                "bus": self.names.documents})
            try:
                self._emit("stop", stop)
            except Exception as exc:  # noqa: BLE001
                self._failed(uid, exc)
                return
            self._runs.pop(uid, None)
            self.stats["runs_closed"] += 1
        ops = Ops().add("HSET", self.names.run(uid), "state", "closed")
        ops.add("SREM", self.names.open_runs, uid)
        for key in self.names.run_keys(uid):
            ops.add("EXPIRE", key, self.retention_s)
        self.ledger.apply(self.holder, ops)
