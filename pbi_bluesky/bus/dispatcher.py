"""The coordinator's first half: raw documents in, per-frame work items out.

Documents of one beamline arrive in RunEngine order on one stream. The dispatcher (one at
a time: the holder of the coordinator lease) follows them like the in-process scorer does:
it stores each run's context (start, descriptors, resources, datums) in the run ledger,
joins each frame's parts (image, I0, transmission may come in one event or in separate
StreamDatum documents: :meth:`~pbi_bluesky.scoring.streams.Roles.complete`), and emits one
work item per complete frame onto ``{beamline}.pbi.frames``, which the scorer workers share.

Each batch of documents is applied in one fenced Lua call together with its
acknowledgement (:class:`~.ledger.Ops`), so a document is processed exactly once even if
the coordinator dies; duplicates that still reach the stream (the publisher refuses its
own repeats, but not a run published twice, or a repeat older than its ``dedupe_ttl_s``)
are recognised by the frame keys already seen. A document that cannot be used
(undecodable, malformed, of a run never started) is dead-lettered with the reason and does
not hold up the stream.

Empty-cell frames change the background of later frames. So that a frame is scored with
the same background as in-process, a sample frame carries a reference to the latest
empty-cell frame, before it in document order, that was reduced successfully; the
dispatcher waits for pending empty-cell results before it dispatches the next sample frame.
The empty-cell list (``….pbi.cells``) holds only the cells not yet resolved: once a sample
frame has resolved them, they are trimmed off in the same atomic batch that records the
resolved background.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from event_model import unpack_datum_page, unpack_event_page

from pbi_bluesky.bus.ledger import Ledger, NotLeader, Ops, encode_result
from pbi_bluesky.bus.names import COORDINATOR_GROUP, BusNames, frame_key
from pbi_bluesky.codec import DecodeError, decode, encode
from pbi_bluesky.scoring import FrameResult
from pbi_bluesky.scoring.engine import FrameScorer
from pbi_bluesky.scoring.streams import Roles

__all__ = ["Dispatcher", "PoisonDocument"]

logger = logging.getLogger(__name__)

_DOC_NAMES = frozenset({"start", "descriptor", "event", "event_page", "stop", "resource",
                        "datum", "datum_page", "stream_resource", "stream_datum"})


class PoisonDocument(ValueError):
    """A document that can never be processed; the message is the dead-letter reason."""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _RunState:
    uid: str
    start: dict[str, Any] | None = None
    state: str = ""
    has_frames: bool = False
    descriptors: dict[str, tuple[Roles | None, str]] = field(default_factory=dict)
    stream_keys: dict[str, str] = field(default_factory=dict)
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    emitted: set[str] = field(default_factory=set)

    @property
    def is_cell(self) -> bool:
        return bool(self.start) and self.start.get("sample_type") == "empty_cell"


class Dispatcher:
    """Raw documents -> run ledger + per-frame work items (see the module docstring)."""

    def __init__(self, client: Any, ledger: Ledger, core: FrameScorer, holder: str, *,
                 batch: int = 256, cell_wait_s: float = 600.0,
                 is_leader: Any = lambda: True, progress: Any = lambda: None) -> None:
        self.client, self.ledger, self.core, self.holder = client, ledger, core, holder
        self.names: BusNames = ledger.names
        self.batch = int(batch)
        self.cell_wait_s = float(cell_wait_s)
        self.is_leader = is_leader
        self.progress = progress
        self._touched: set[str] = set()
        self.stats = {"documents": 0, "frames": 0, "dead": 0, "duplicates": 0,
                      "closed_idle": 0}
        self.reset()

    def reset(self) -> None:
        """Forget every cache (after losing the lease, or a failed write)."""
        self._runs: dict[str, _RunState] = {}
        self._cells_len: int | None = None
        self._bg_upto = 0
        self._bg_ref: str | None = None

    # -- reading ---------------------------------------------------------------------------
    def recover(self) -> int:
        """Take over the documents a previous coordinator read but never finished."""
        n, cursor = 0, "0-0"
        while True:
            resp = self.client.xautoclaim(self.names.documents, COORDINATOR_GROUP,
                                          self.holder, 0, cursor, count=self.batch)
            cursor = _s(resp[0])
            entries = [e for e in resp[1] if e and e[0] is not None]
            if entries:
                n += self.process(entries)
            if cursor in ("0-0", "0"):
                return n

    def process(self, entries: list[tuple[Any, dict | None]]) -> int:
        """Handle entries of the documents stream; returns how many."""
        ops = Ops()
        self._touched: set[str] = set()
        for entry_id, fields in entries:
            doc_ops = Ops()
            try:
                if fields is None:  # trimmed away before it was processed
                    raise PoisonDocument("entry no longer in the stream")
                self._handle(fields, doc_ops, ops)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                # PoisonDocument, or a malformed document: dead-letter it, commit what came
                # before (consistent), and drop the caches it may have touched
                reason = (str(exc) if isinstance(exc, PoisonDocument)
                          else f"malformed document: {type(exc).__name__}: {exc}")
                self._dead(ops, entry_id, fields, reason)
                self._apply(ops)
                self.reset()
                continue
            ops.args += doc_ops.args
            ops.count += doc_ops.count
            ops.add("XACK", self.names.documents, COORDINATOR_GROUP, entry_id)
            self.stats["documents"] += 1
        now = f"{time.time():.3f}"
        for uid in sorted(self._touched):  # when each run last had a document (idle close)
            ops.add("HSET", self.names.run(uid), "seen", now)
        self._apply(ops)
        self.progress()
        return len(entries)

    def _apply(self, ops: Ops) -> None:
        try:
            self.ledger.apply(self.holder, ops)
        except Exception:
            self.reset()
            raise
        ops.args.clear()
        ops.count = 0

    def _dead(self, ops: Ops, entry_id: Any, fields: dict | None, reason: str) -> None:
        fields = fields or {}
        run = _s(fields.get(b"run", b""))
        logger.warning("dead-lettered document %s (%s of run %s): %s", _s(entry_id),
                       _s(fields.get(b"name", b"?")), run[:8] or "?", reason)
        ops.add("XADD", self.names.dead, "*", "source", self.names.documents,
                "id", entry_id, "reason", reason, "run", run,
                "name", fields.get(b"name", b""), "payload", fields.get(b"doc", b""))
        ops.add("XACK", self.names.documents, COORDINATOR_GROUP, entry_id)
        ops.add("HINCRBY", self.names.stats, "dead_documents", 1)
        if run:
            ops.add("HINCRBY", self.names.run(run), "dead_letters", 1)
        self.stats["dead"] += 1

    # -- run state ---------------------------------------------------------------------------
    def _run(self, uid: str) -> _RunState:
        st = self._runs.get(uid)
        if st is not None:
            return st
        st = _RunState(uid)
        h = self.client.hgetall(self.names.run(uid))
        if h:
            st.state = _s(h.get(b"state", b""))
            st.has_frames = h.get(b"has_frames") == b"1"
            if b"start" in h:
                st.start = decode(h[b"start"])
            for k, v in h.items():
                k = _s(k)
                if k.startswith("desc:"):
                    desc = decode(v)
                    st.descriptors[k[5:]] = (self.core.roles(desc), str(desc.get("name")))
                elif k.startswith("sres:"):
                    st.stream_keys[k[5:]] = str(decode(v).get("data_key", ""))
        self._runs[uid] = st
        return st

    def _parts(self, st: _RunState, key: str) -> dict[str, Any] | None:
        parts = st.parts.get(key)
        if parts is None:
            blob = self.client.hget(self.names.run_parts(st.uid), key)
            if blob is not None:
                parts = st.parts[key] = decode(blob)
        return parts

    def _emitted(self, st: _RunState, key: str) -> bool:
        if key in st.emitted:
            return True
        if self.client.sismember(self.names.run_emitted(st.uid), key):
            st.emitted.add(key)
            return True
        return False

    # -- documents ---------------------------------------------------------------------------
    def _handle(self, fields: dict, ops: Ops, batch_ops: Ops) -> None:
        name = _s(fields.get(b"name", b""))
        if name not in _DOC_NAMES:
            raise PoisonDocument(f"unknown document name {name!r}")
        try:
            doc = decode(fields[b"doc"])
        except DecodeError as exc:
            raise PoisonDocument(f"undecodable {name} document: {exc}") from exc
        if not isinstance(doc, dict):
            raise PoisonDocument(f"{name} document is a {type(doc).__name__}, not a mapping")
        run = _s(fields.get(b"run", b"")) or str(doc.get("run_start") or "")
        if name == "start":
            run = str(doc["uid"])
        if not run:
            raise PoisonDocument(f"{name} document names no run (no run uid in the entry)")
        st = self._run(run)
        if name != "start" and st.start is None:
            raise PoisonDocument(f"{name} document of run {run} whose start document never "
                                 "arrived")
        if st.state in ("stopped", "closed"):
            self.stats["duplicates"] += 1  # a late copy of a document
            return
        getattr(self, f"_{name}")(st, doc, ops, batch_ops)
        if st.state == "open":
            self._touched.add(run)

    def _start(self, st: _RunState, doc: dict, ops: Ops, _b: Ops) -> None:
        if st.start is not None:
            self.stats["duplicates"] += 1
            return
        st.start, st.state = doc, "open"
        ops.add("HSET", self.names.run(st.uid), "start", encode(doc), "state", "open",
                "frames", 0, "done", 0)
        pin = self.core.registry_pin()  # the registry's current model, fixed for this run
        if pin is not None:
            ops.add("HSET", self.names.run(st.uid), "model_version", pin)
        ops.add("SADD", self.names.open_runs, st.uid)

    def _descriptor(self, st: _RunState, doc: dict, ops: Ops, _b: Ops) -> None:
        roles = self.core.roles(doc)
        st.descriptors[str(doc["uid"])] = (roles, str(doc.get("name")))
        ops.add("HSET", self.names.run(st.uid), f"desc:{doc['uid']}", encode(doc))
        if roles is not None and not st.has_frames:
            st.has_frames = True
            ops.add("HSET", self.names.run(st.uid), "has_frames", 1)
            ops.add("XADD", self.names.results, "*", "kind", "begin", "run", st.uid)

    def _resource(self, st: _RunState, doc: dict, ops: Ops, _b: Ops) -> None:
        ops.add("HSET", self.names.run(st.uid), f"res:{doc['uid']}", encode(doc))

    def _stream_resource(self, st: _RunState, doc: dict, ops: Ops, _b: Ops) -> None:
        st.stream_keys[str(doc["uid"])] = str(doc.get("data_key", ""))
        ops.add("HSET", self.names.run(st.uid), f"sres:{doc['uid']}", encode(doc))

    def _datum(self, st: _RunState, doc: dict, ops: Ops, _b: Ops) -> None:
        ops.add("HSET", self.names.run_datums(st.uid), str(doc["datum_id"]), encode(doc))

    def _datum_page(self, st: _RunState, doc: dict, ops: Ops, b: Ops) -> None:
        for datum in unpack_datum_page(doc):
            self._datum(st, datum, ops, b)

    def _stream_of(self, st: _RunState, descriptor: str) -> tuple[Roles | None, str]:
        if descriptor not in st.descriptors:
            raise PoisonDocument(f"descriptor {descriptor} of run {st.uid} never arrived")
        return st.descriptors[descriptor]

    def _event(self, st: _RunState, doc: dict, ops: Ops, batch_ops: Ops) -> None:
        descriptor = str(doc["descriptor"])
        roles, stream = self._stream_of(st, descriptor)
        if roles is None:
            return
        refused = doc.get("pbi_refused") or {}
        filled = doc.get("filled") or {}
        values = {}
        for key, value in doc["data"].items():
            if key not in roles.relevant:
                continue
            if key in refused:
                values[key] = ("refused", str(refused[key]))
            elif isinstance(value, str) and key in filled:
                values[key] = ("datum", value)
            else:
                values[key] = ("inline", value)
        if values:
            self._add_parts(st, descriptor, roles, stream, int(doc["seq_num"]), values, ops,
                            batch_ops)

    def _event_page(self, st: _RunState, doc: dict, ops: Ops, b: Ops) -> None:
        refused = doc.get("pbi_refused")
        for event in unpack_event_page(doc):
            if refused:
                event["pbi_refused"] = refused
            self._event(st, event, ops, b)

    def _stream_datum(self, st: _RunState, doc: dict, ops: Ops, batch_ops: Ops) -> None:
        descriptor = str(doc["descriptor"])
        roles, stream = self._stream_of(st, descriptor)
        if roles is None:
            return
        sres = str(doc["stream_resource"])
        key = st.stream_keys.get(sres)
        if key is None:
            raise PoisonDocument(f"stream datum for stream resource {sres} that never arrived")
        if key not in roles.relevant:
            return
        seq0, idx0 = int(doc["seq_nums"]["start"]), int(doc["indices"]["start"])
        for offset in range(int(doc["indices"]["stop"]) - idx0):
            self._add_parts(st, descriptor, roles, stream, seq0 + offset,
                            {key: ("stream", (sres, idx0 + offset))}, ops, batch_ops)

    def _add_parts(self, st: _RunState, descriptor: str, roles: Roles, stream: str, seq: int,
                   values: dict[str, Any], ops: Ops, batch_ops: Ops) -> None:
        key = frame_key(stream, seq)
        if self._emitted(st, key):
            self.stats["duplicates"] += 1
            return
        background = None if st.is_cell else self._background(ops, batch_ops)
        parts = self._parts(st, key)
        if parts is None:
            parts = st.parts[key] = {"desc": descriptor, "values": {}}
            ops.add("HINCRBY", self.names.run(st.uid), "frames", 1)
        parts["values"].update(values)
        if not roles.complete(parts["values"]):
            ops.add("HSET", self.names.run_parts(st.uid), key, encode(parts))
            return
        item = {"desc": descriptor, "stream": stream, "seq": seq, "values": parts["values"],
                "background": background}
        ops.add("XADD", self.names.frames, "*", "run", st.uid, "key", key, "item", encode(item))
        ops.add("SADD", self.names.run_emitted(st.uid), key)
        ops.add("HDEL", self.names.run_parts(st.uid), key)
        del st.parts[key]
        st.emitted.add(key)
        self.stats["frames"] += 1
        if st.is_cell:
            ops.add("RPUSH", self.names.cells, f"{st.uid}|{key}")
            self._cells_len = self._cells() + 1

    def _stop(self, st: _RunState, doc: dict, ops: Ops, _b: Ops) -> None:
        run_key = self.names.run(st.uid)
        pending = {_s(k): decode(v) for k, v in
                   self.client.hgetall(self.names.run_parts(st.uid)).items()}
        pending.update(st.parts)
        for key, parts in sorted(pending.items(), key=lambda kv: _seq(kv[0])):
            roles, _ = self._stream_of(st, parts["desc"])
            missing = [k for k in roles.required if k not in parts["values"]] if roles else []
            result = FrameResult(st.uid, _seq(key), "failed",
                                 reason=f"incomplete frame: {', '.join(missing)} never arrived")
            ops.result(self.names, st.uid, key, encode_result(result, None,
                                                              worker=self.holder))
            ops.add("HDEL", self.names.run_parts(st.uid), key)
        st.parts.clear()
        st.state = "stopped"
        ops.add("HSET", run_key, "state", "stopped", "stop", encode(doc))
        ops.add("XADD", self.names.results, "*", "kind", "stop", "run", st.uid)

    # -- runs without a stop -------------------------------------------------------------------
    def close_idle(self, idle_s: float, now: float | None = None) -> list[str]:
        """Close the open runs without a document for ``idle_s`` seconds; return their uids.

        Each gets a stop document with exit status ``abort`` and the reason "no stop within
        N s", composed here and applied like a real stop (frames still incomplete are
        recorded as failed, the analysis run is then closed as usual); a late real stop or
        event of the run is a duplicate. Counted in ``stats`` (``runs_closed_idle``).

        Parameters
        ----------
        idle_s
            Seconds since the run's last document (or its start, if it has none since).
        now
            The time to compare with (default: now).
        """
        now = time.time() if now is None else float(now)
        closed = []
        for uid in sorted(_s(u) for u in self.client.smembers(self.names.open_runs)):
            state, seen, start = self.client.hmget(self.names.run(uid), "state", "seen",
                                                   "start")
            if state != b"open" or start is None:
                continue
            last = float(seen) if seen else float(decode(start).get("time") or now)
            if now - last < idle_s:
                continue
            st = self._run(uid)
            if st.state != "open" or st.start is None:
                continue
            reason = f"no stop within {idle_s:g} s (closed by bus coordinator {self.holder})"
            stop = {"run_start": uid, "time": now, "uid": str(uuid.uuid4()),
                    "exit_status": "abort", "reason": reason, "num_events": {}}
            ops = Ops()
            self._stop(st, stop, ops, ops)
            ops.add("HINCRBY", self.names.stats, "runs_closed_idle", 1)
            self._apply(ops)
            logger.warning("run %s had no document for %.0f s and no stop: closed (%s)",
                           uid[:8], now - last, reason)
            self.stats["closed_idle"] += 1
            closed.append(uid)
        return closed

    # -- background ------------------------------------------------------------------------------
    def _cells(self) -> int:
        if self._cells_len is None:
            self._cells_len = int(self.client.llen(self.names.cells))
            bg = self.client.hgetall(self.names.background)
            self._bg_upto = int(bg.get(b"upto", 0))
            self._bg_ref = _s(bg[b"ref"]) if bg.get(b"ref") else None
        return self._cells_len

    def _background(self, ops: Ops, batch_ops: Ops) -> str | None:
        """Return the latest successful empty-cell frame before now (waits for pending ones)."""
        n = self._cells()
        if self._bg_upto >= n:
            return self._bg_ref
        # commit what came before (its cell frames must reach the scorers), then wait
        if len(ops):
            raise RuntimeError("background resolution must precede a document's writes")
        self._apply(batch_ops)
        refs = [_s(r) for r in self.client.lrange(self.names.cells, self._bg_upto, n - 1)]
        deadline = time.monotonic() + self.cell_wait_s
        ref = self._bg_ref
        for cell in refs:
            run, key = cell.split("|", 1)
            while True:
                blob = self.client.hget(self.names.run_results(run), key)
                if blob is not None:
                    break
                if not self.is_leader():
                    raise NotLeader("lost the lease while waiting for an empty-cell frame")
                self.progress()  # waiting for the scorers is not being stuck
                if time.monotonic() > deadline:
                    logger.error("empty-cell frame %s not scored within %.0f s: later frames "
                                 "keep the previous background", cell, self.cell_wait_s)
                    break
                time.sleep(0.01)
            if blob is not None and decode(blob)["result"]["status"] == "reference":
                ref = cell
        # the cells now resolved are not needed any more (the background names its frame):
        # the list keeps only the cells not yet resolved, so it does not grow for ever
        ops.add("LTRIM", self.names.cells, n, -1)
        ops.add("HSET", self.names.background, "upto", 0, "ref", ref or "")
        self._cells_len = 0  # n cells were in the list, all resolved and trimmed
        self._bg_upto, self._bg_ref = 0, ref
        return ref


def _seq(key: str) -> int:
    return int(key.rsplit("/", 1)[-1])
