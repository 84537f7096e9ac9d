r"""``RE.subscribe(BusPublisher(...))``: bluesky documents onto the beamline's Redis stream.

The RunEngine thread only finds the run uid of each document (the entry's key; a dict
look-up) and numbers it (see below), keeps both with the document also when it spills to
the file (so that a process that sends a dead one's spill file still knows the run of its
events, and the broker refuses those the dead one had sent), and appends it to an
in-memory queue (no I/O, no lock held for longer than an append, never an exception): the
scan never waits for the broker. A sender thread then, in document order,

* refuses inline arrays above ``inline_limit_bytes`` (:func:`~.wire.refuse_large`): the
  array is removed from the event and the refusal recorded in it (``pbi_refused``: key ->
  reason), so the frame still reaches the scorers and is accounted for as failed, with a
  reason that says to publish large frames by reference (Resource/Datum or
  StreamResource/StreamDatum pointing at HDF5 on shared storage); :attr:`stats`
  ``["refused"]`` counts them;
* encodes it (:mod:`pbi_bluesky.codec`, msgpack, never pickle) and ``XADD``\ s it to
  ``{beamline}.bluesky.runengine.documents`` with fields ``run``, ``name``, ``doc``.

While the broker is unreachable, documents go to the local :class:`~.outbox.Outbox` file
instead; the sender retries the broker with exponential backoff and, once it answers,
sends the outbox first (in order, resuming after a partial attempt), then carries on. An
outbox left by a previous process is sent the same way at start.

Delivery is exactly once, also when a call ran on the broker but its reply was lost (a
connection cut mid-call, a timeout): each record carries its publisher's identity (a
random token per :class:`BusPublisher`, kept in the outbox with the record) and a sequence
number, and one Lua script adds a batch to the stream atomically, skipping the records at
or below the last number the broker took from that publisher
(``{beamline}.pbi.publisher.<token>``, expiring ``dedupe_ttl_s`` after its last use).
:attr:`~BusPublisher.stats` ``["resent_skipped"]`` counts the repeats so refused.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

from pbi_bluesky.bus.names import PASSWORD_ENV, BusNames, connect
from pbi_bluesky.bus.outbox import Outbox
from pbi_bluesky.bus.wire import DEFAULT_INLINE_LIMIT, SEND_SCRIPT, refuse_large
from pbi_bluesky.codec import EncodeError, decode_document, encode, sanitize
from pbi_bluesky.infra.memory import DEFAULT_MEMORY_BUDGET, doc_nbytes
from pbi_bluesky.infra.secrets import redact_url
from pbi_bluesky.store.recordlog import RecordLog, Scan, read_at
from pbi_bluesky.store.spoolfile import is_spool_record

__all__ = ["DEFAULT_INLINE_LIMIT", "BusPublisher"]

logger = logging.getLogger(__name__)

_RUN_OF_UID = ("descriptor", "resource", "stream_resource")
_FRAME_DOCS = ("event", "event_page", "stream_datum", "stream_datum_page")


_Meta = tuple[str, str, int]
"""A queued document's run uid, publisher token and sequence number."""

DEFAULT_DEDUPE_TTL = 7 * 24 * 3600
"""Seconds the broker remembers a publisher's last sequence number after its last send."""


class BusPublisher:
    """Publish a RunEngine's documents to the beamline's document stream.

    Parameters
    ----------
    url
        Redis URL, e.g. ``redis://broker:6379/0``.
    beamline
        Beamline name: the stream is ``{beamline}.bluesky.runengine.documents``.
    outbox_dir
        Folder of the local outbox file (``{beamline}.outbox``).
    inline_limit_bytes
        Largest inline array; larger ones are refused (see the module docstring).
    maxlen
        Approximate cap on the stream's length (``None``: no trimming).
    retry_initial_s, retry_max_s
        Backoff between attempts to reach the broker.
    socket_timeout
        Seconds a broker call may take before the documents go to the outbox.
    password_env
        Environment variable holding the broker's password (``bus.password_env``; default
        ``PBI_REDIS_PASSWORD``). The URL is only ever logged with its password redacted.
    max_bytes
        Bytes of documents held in memory before they spill to a file.
    dedupe_ttl_s
        Seconds the broker remembers the last sequence number it took from this publisher
        (a record whose reply was lost longer ago than that could be added twice).
    """

    def __init__(self, url: str, beamline: str, *, outbox_dir: str | Path,
                 inline_limit_bytes: int = DEFAULT_INLINE_LIMIT, maxlen: int | None = None,
                 retry_initial_s: float = 0.2, retry_max_s: float = 5.0,
                 socket_timeout: float = 2.0, password_env: str | None = PASSWORD_ENV,
                 max_bytes: int = DEFAULT_MEMORY_BUDGET,
                 dedupe_ttl_s: int = DEFAULT_DEDUPE_TTL) -> None:
        self.url, self.names = url, BusNames(beamline)
        self.inline_limit = int(inline_limit_bytes)
        self.maxlen = maxlen
        self.retry = (float(retry_initial_s), float(retry_max_s))
        self.outbox = Outbox(Path(outbox_dir) / f"{beamline}.outbox")
        self._client = connect(url, socket_timeout=socket_timeout,
                               connect_timeout=min(1.0, socket_timeout),
                               password_env=password_env)
        self._send_script = self._client.register_script(SEND_SCRIPT)
        self.token = uuid.uuid4().hex
        """This publisher's identity on the broker (its records' sequence numbers)."""
        self._seq = 0
        self.dedupe_ttl = int(dedupe_ttl_s)
        self._queue: deque[tuple[str, dict | None, int, int, _Meta]] = deque()
        """``(name, doc, bytes held, 0, meta)``, or ``(name, None, offset, length, meta)`` of
        a document kept in the spill file; meta is ``(run, publisher token, sequence)``."""
        self.max_bytes = int(max_bytes)
        self.held_bytes = 0
        """Bytes of documents queued in memory now (the byte budget's counter)."""
        self.spill = RecordLog(Path(outbox_dir) / f"{beamline}.spill", fsync_interval=3600.0)
        self._spilled = 0
        """Queued entries that live in the spill file."""
        for offset, length, record in Scan(self.spill.path, valid=is_spool_record):
            # a spill file left by a process that ended before sending it: sent first
            self._queue.append((record["name"], None, offset, length,
                                (str(record.get("run") or ""), str(record.get("pub") or ""),
                                 int(record.get("seq") or 0))))
            self._spilled += 1
        if self._spilled:
            logger.warning("bus publisher: %d document(s) left in %s by an earlier process "
                           "are sent first", self._spilled, self.spill.path)
        self._cond = threading.Condition()
        self._run_of: dict[str, str] = {}
        self._busy = False
        self._closing = False
        self._down_since: float | None = None
        self._next_try = 0.0
        self._attempt = 0
        self.stats = {"queued": 0, "published": 0, "outboxed": 0, "refused": 0,
                      "from_outbox": 0, "reconnects": 0, "unencodable": 0,
                      "send_errors": 0, "spilled": 0, "peak_held_bytes": 0,
                      "resent_skipped": 0}
        self._stalled: list[dict[str, Any]] | None = None
        """Records that could neither be sent nor written to the outbox (retried first)."""
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f"pbi-bus-publisher-{beamline}")
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Any, *, outbox_dir: str | Path, url: str | None = None,
                      **kwargs: Any) -> BusPublisher:
        """Return a publisher for a beamline's settings (``bus.url``, ``bus.password_env``).

        Parameters
        ----------
        settings
            The beamline's :class:`~pbi_bluesky.config.BeamlineConfig`.
        outbox_dir
            Folder of the local outbox file.
        url
            The broker (default ``bus.url``).
        **kwargs
            More :class:`BusPublisher` parameters.
        """
        url = url or settings.bus.url
        if not url:
            raise ValueError("no broker: set bus.url in beamline.yaml")
        kwargs.setdefault("password_env", settings.bus.password_env)
        return cls(url, settings.name, outbox_dir=outbox_dir, **kwargs)

    # -- RunEngine thread ---------------------------------------------------------------
    def __call__(self, name: str, doc: dict, *args: Any) -> None:
        """Queue one document; returns at once, never raises.

        Past ``max_bytes`` of queued documents in memory, the document is appended to the
        spill file instead (encoded, one write, no fsync: it only has to outlive the queue)
        and the sender reads it back in its turn.
        """
        try:
            size = doc_nbytes(doc)
            with self._cond:
                self._seq += 1
                meta = (self._run_uid(name, doc), self.token, self._seq)
                if self.held_bytes + size > self.max_bytes:
                    entry = self._spill(name, doc, meta)
                    if entry is not None:
                        self._queue.append(entry)
                        self.stats["queued"] += 1
                        self._cond.notify()
                        return
                self._queue.append((name, doc, size, 0, meta))
                self.held_bytes += size
                self.stats["peak_held_bytes"] = max(self.stats["peak_held_bytes"],
                                                    self.held_bytes)
                self.stats["queued"] += 1
                self._cond.notify()
        except Exception:  # noqa: BLE001 - the scan must never die because of us
            logger.exception("bus publisher could not queue a %r document", name)

    def _spill(self, name: str, doc: dict, meta: _Meta
               ) -> tuple[str, None, int, int, _Meta] | None:
        """Append a document to the spill file; None (keep it in memory) if that fails.

        The record is the spool's ``{"name", "doc"}`` with the document's ``run``, ``pub``
        (publisher token) and ``seq`` beside.
        """
        run, pub, seq = meta
        try:
            try:
                data = encode({"name": name, "doc": doc, "run": run, "pub": pub, "seq": seq})
            except EncodeError:
                clean, paths = sanitize(doc)
                data = encode({"name": name, "doc": {**clean, "pbi_unencodable": paths},
                               "run": run, "pub": pub, "seq": seq})
            offset = self.spill.append(data)
        except Exception:  # noqa: BLE001 - held in memory instead: nothing dropped
            logger.exception("bus publisher: could not spill a %s document to %s; held in "
                             "memory", name, self.spill.path)
            return None
        self._spilled += 1
        self.stats["spilled"] += 1
        return (name, None, offset, len(data), meta)

    def _take(self, entry: tuple[str, dict | None, int, int, _Meta]
              ) -> tuple[str, dict, _Meta]:
        """Return a popped entry's document and meta (read back from the spill file if there)."""
        name, doc, a, b, meta = entry
        if doc is None:
            name, doc = decode_document(read_at(self.spill.path, a, b))
        return name, doc, meta

    # -- control ----------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether the last attempt to reach the broker succeeded."""
        return self._down_since is None

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued document is on the broker.

        False on timeout (what is not sent is in the outbox).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify()
        while time.monotonic() < deadline:
            with self._cond:
                idle = not self._queue and not self._busy and self._stalled is None
            if idle and not self.outbox.pending:
                return True
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 30.0) -> bool:
        """Send what can be sent within ``timeout``, keep the rest in the outbox, stop."""
        ok = self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        self.outbox.close()
        if self._stalled:
            logger.error("bus publisher: %d document(s) could be neither sent nor kept in %s "
                         "before closing: lost", len(self._stalled), self.outbox.path)
        return ok

    # -- sender thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not (
                        (self._queue and self._stalled is None)
                        or ((self._stalled is not None or self.outbox.pending)
                            and time.monotonic() >= self._next_try)):
                    self._cond.wait(0.1)
                if self._closing and not self._queue and self._stalled is None:
                    return
                batch = ([] if self._stalled is not None else
                         [self._queue.popleft() for _ in range(min(len(self._queue), 256))])
                self._busy = True
            records = self._stalled
            try:
                if records is None:
                    records = []
                    for entry in batch:
                        records.append(self._safe_record(*self._take(entry)))
                        self._done_with(entry)
                    batch = []
                self._send(records)
                self._stalled = None
            except Exception as exc:  # noqa: BLE001 - never let the sender die, drop nothing
                # e.g. the outbox's disk is full while the broker is down: keep the records
                # in memory, in order, and try them again first after a backoff
                self._stalled = records
                self.stats["send_errors"] += 1
                self._went_down(exc, backoff_only=True)
                logger.error("bus publisher: %d document(s) neither sent nor written to %s "
                             "(%s: %s); kept in memory and retried", len(records or ()),
                             self.outbox.path, type(exc).__name__, exc)
                if self._closing:
                    return  # one last try when closing; close() reports what is left
            finally:
                for entry in batch:  # a document that broke even its record: accounted
                    self._done_with(entry)
                with self._cond:
                    self._busy = False

    def _done_with(self, entry: tuple[str, dict | None, int, int, _Meta]) -> None:
        """Release a queue entry's memory; empty the spill file once nothing is in it."""
        with self._cond:
            if entry[1] is not None:
                self.held_bytes -= entry[2]
                return
            self._spilled -= 1
            if self._spilled == 0:
                self.spill.close()
                self.spill.path.unlink(missing_ok=True)

    def _safe_record(self, name: str, doc: dict, meta: _Meta) -> dict[str, Any]:
        run, pub, seq = meta
        record = self._unnumbered_record(name, doc, run)
        if pub:
            record["pub"], record["seq"] = pub, seq
        return record

    def _unnumbered_record(self, name: str, doc: dict, run: str) -> dict[str, Any]:
        try:
            return self._record(name, doc, run)
        except Exception as exc:  # noqa: BLE001 - a document that breaks us still goes out
            self.stats["unencodable"] += 1
            logger.exception("bus publisher: %s document could not be prepared (%s); "
                             "published with its values as text", name, exc)
            clean, paths = sanitize(doc)
            return {"run": run, "name": name,
                    "doc": encode({**clean, "pbi_unencodable": paths})}

    def _send(self, records: list[dict[str, Any]]) -> None:
        if self.outbox.pending or self._down_since is not None:
            self.outbox.append(records)
            self.stats["outboxed"] += len(records)
            if time.monotonic() >= self._next_try:
                self._drain_outbox()
            return
        try:
            self._xadd(records)
            self.stats["published"] += len(records)
        except Exception as exc:  # noqa: BLE001 - the broker is unreachable: keep locally
            self._went_down(exc)
            self.outbox.append(records)
            self.stats["outboxed"] += len(records)

    def _drain_outbox(self) -> None:
        try:
            n = self.outbox.drain(self._xadd)
        except Exception as exc:  # noqa: BLE001 - still down: back off
            self._went_down(exc)
            return
        if self._down_since is not None:
            logger.warning("bus publisher: broker %s reachable again after %.1f s; %d "
                           "document(s) sent from the outbox", redact_url(self.url),
                           time.monotonic() - self._down_since, n)
            self.stats["reconnects"] += 1
        self.stats["from_outbox"] += n
        self.stats["published"] += n
        self._down_since, self._attempt = None, 0

    def _went_down(self, exc: Exception, backoff_only: bool = False) -> None:
        if self._down_since is None and not backoff_only:
            self._down_since = time.monotonic()
            logger.warning("bus publisher: broker %s unreachable (%s: %s); documents go to "
                           "the outbox %s until it answers", redact_url(self.url),
                           type(exc).__name__, exc,
                           self.outbox.path)
        lo, hi = self.retry
        self._next_try = time.monotonic() + min(hi, lo * 2 ** self._attempt)
        self._attempt += 1

    def _xadd(self, records: list[dict[str, Any]]) -> None:
        """Add records to the stream, each once (see :data:`~.wire.SEND_SCRIPT`), in order.

        Records of one publisher go in one atomic call; records of an outbox written by an
        earlier version carry no number and are added as they come.
        """
        i = 0
        while i < len(records):
            token = records[i].get("pub") or ""
            j = i
            args: list[Any] = [self.maxlen or 0, self.dedupe_ttl]
            while j < len(records) and (records[j].get("pub") or "") == token:
                r = records[j]
                args += [int(r.get("seq") or 0) if token else 0, r["run"], r["name"],
                         r["doc"]]
                j += 1
            key = self.names.publisher(token or "unnumbered")
            added = int(self._send_script(keys=[self.names.documents, key], args=args))
            self.stats["resent_skipped"] += (j - i) - added
            i = j

    # -- documents --------------------------------------------------------------------------
    def _run_uid(self, name: str, doc: dict) -> str:
        """Return the run of a document ("" if it names none); on the RunEngine thread."""
        try:
            return self._find_run(name, doc)
        except Exception:  # noqa: BLE001 - a malformed document still goes out
            return ""

    def _find_run(self, name: str, doc: dict) -> str:
        if name == "start":
            return str(doc.get("uid", ""))
        if name in _RUN_OF_UID or name == "stop":
            run = str(doc.get("run_start") or "")
            if name in _RUN_OF_UID and doc.get("uid"):
                self._run_of[doc["uid"]] = run
            if name == "stop":
                self._run_of = {k: v for k, v in self._run_of.items() if v != run}
            return run
        if name in _FRAME_DOCS:
            return self._run_of.get(doc.get("descriptor", ""), "")
        if name in ("datum", "datum_page"):
            return self._run_of.get(doc.get("resource", ""), "")
        return ""

    def _refuse_large(self, name: str, doc: dict) -> dict:
        doc, refused, count = refuse_large(name, doc, self.inline_limit)
        if count:
            self.stats["refused"] += count
            if self.stats["refused"] <= 3 or self.stats["refused"] % 100 == 0:
                logger.warning("bus publisher: %s (%d refused so far)",
                               next(iter(refused.values())), self.stats["refused"])
        return doc

    def _record(self, name: str, doc: dict, run: str) -> dict[str, Any]:
        doc = self._refuse_large(name, doc)
        try:
            payload = encode(doc)
        except EncodeError as exc:
            # still published, so the consumers see it: values the wire cannot carry become
            # their repr(), listed in "pbi_unencodable"
            self.stats["unencodable"] += 1
            clean, paths = sanitize(doc)
            doc = {**clean, "pbi_unencodable": paths}
            logger.error("bus publisher: %s document of run %s holds values the wire cannot "
                         "carry (%s): published with %s as text", name, run[:8], exc, paths)
            payload = encode(doc)
        return {"run": run, "name": name, "doc": payload}

