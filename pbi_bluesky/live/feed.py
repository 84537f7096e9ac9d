"""The verdict feed: each analysis run's verdict on a Redis stream, the moment it is known.

The session subscribes a :class:`VerdictFeed` as a sink of the live scorer: when an analysis
run's stop document (its frame ledger ``pbi_summary``) is composed, one entry is appended to
the stream (``XADD ... MAXLEN ~ maxlen``). Publishing happens on a thread of its own behind a
bounded queue: the sink only puts a small dict (never blocks: a full queue drops the entry
and counts it), and a Redis that is down or slow costs the scorer nothing; failures are
counted and logged once per outage. The feed is a fast path, not the record: the analysis
run is written to Tiled all the same, and the agent falls back to polling Tiled (which it
also does, less often, while following the feed), so a lost entry delays a verdict, it never
loses one.

An entry has flat fields for people (``raw_uid``, ``analysis_uid``, ``sample``, ``slot``,
``verdict``, ``score`` (the run's maximum), ``flagged``, ``model_sha256``, ``time``) and two
JSON fields the agent reads: ``start`` (the analysis start metadata the agent uses) and
``summary`` (the stop's ``pbi_summary``), with ``stop_time``.

:class:`FeedReader` follows the stream from the last id it saw (``XREAD BLOCK``); after a
Redis restart it resumes from that id, and a reader started with ``since`` replays entries
from then on (stream ids are millisecond timestamps).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pbi_bluesky.infra.queues import wait_drained

__all__ = ["FEED_START_KEYS", "FeedEntry", "FeedReader", "VerdictFeed", "connect_feed"]

logger = logging.getLogger(__name__)

FEED_START_KEYS = ("uid", "time", "raw_uid", "raw_scan_id", "sample", "slot", "sample_type",
                   "purpose", "rescan_of", "expected_composition", "model_sha256",
                   "pbi_analysis", "pbi_agent")
"""Analysis start keys an entry carries (what :class:`~pbi_bluesky.agent.AnalysisResult`
reads)."""


def connect_feed(url: str, *, password: str | None = None, socket_timeout: float = 2.0,
                 connect_timeout: float = 1.0) -> Any:
    """Return a Redis client (text replies) with bounded timeouts.

    A server that is down is an error within ``connect_timeout`` seconds, never a hang.
    """
    import redis

    return redis.Redis.from_url(url, password=password, socket_timeout=socket_timeout,
                                socket_connect_timeout=connect_timeout,
                                decode_responses=True)


@dataclass
class FeedStats:
    """What the publisher did."""

    published: int = 0
    failed: int = 0
    dropped: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class VerdictFeed:
    """Sink of the live scorer that publishes each analysis run's verdict.

    See the module docstring.

    Parameters
    ----------
    url
        Redis URL (no password in it).
    stream
        Stream name.
    maxlen
        Approximate length bound of the stream.
    password
        Redis password, if the server needs one.
    queue_size
        Entries waiting to be published at most; beyond it entries are dropped (counted).
    retries
        Attempts per entry (0.2 s apart) before it is counted failed and dropped.
    """

    def __init__(self, url: str, stream: str = "pbi:verdicts", *, maxlen: int = 10000,
                 password: str | None = None, queue_size: int = 1000,
                 retries: int = 3) -> None:
        self.url, self.stream, self.maxlen = url, stream, int(maxlen)
        self.retries = max(1, int(retries))
        self.stats = FeedStats()
        self._password = password
        self._client: Any = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._starts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._down = False
        self._thread = threading.Thread(target=self._work, name="pbi-verdict-feed",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Any) -> VerdictFeed | None:
        """Return the feed of a beamline's ``feed`` section (``None`` when it names no URL)."""
        feed = getattr(settings, "feed", settings)
        if not feed.url:
            return None
        return cls(feed.url, feed.stream, maxlen=feed.maxlen, password=feed.password)

    def __repr__(self) -> str:
        return f"VerdictFeed({self.url!r}, {self.stream!r})"

    # -- sink (the scorer's threads) -------------------------------------------------------
    def __call__(self, name: str, doc: dict) -> None:
        """Queue the verdict of an analysis run at its stop document (never blocks)."""
        if name == "start" and doc.get("pbi_analysis"):
            self._starts[doc["uid"]] = {k: doc[k] for k in FEED_START_KEYS if k in doc}
            while len(self._starts) > 1000:  # runs whose stop never came
                self._starts.popitem(last=False)
        elif name == "stop":
            start = self._starts.pop(doc.get("run_start", ""), None)
            summary = doc.get("pbi_summary")
            if start is None or not isinstance(summary, dict):
                return
            try:
                self._queue.put_nowait(self.entry(start, summary, doc.get("time")))
            except queue.Full:
                self.stats.dropped += 1
                if self.stats.dropped == 1:
                    logger.warning("verdict feed: publishing queue full, entries dropped "
                                   "(the agent still finds them in Tiled)")

    @staticmethod
    def entry(start: dict[str, Any], summary: dict[str, Any], stop_time: float | None
              ) -> dict[str, str]:
        """Return the stream entry of one analysis run (all values strings)."""
        score = summary.get("max_score")
        return {
            "raw_uid": str(start.get("raw_uid") or ""),
            "analysis_uid": str(start.get("uid") or ""),
            "sample": str(start.get("sample") or ""),
            "slot": "" if start.get("slot") is None else str(start["slot"]),
            "verdict": str(summary.get("verdict") or ""),
            "score": "" if score is None else repr(float(score)),
            "flagged": str(int(summary.get("flagged") or 0)),
            "model_sha256": str(start.get("model_sha256") or ""),
            "time": repr(float(start.get("time") or 0.0)),
            "stop_time": repr(float(stop_time or time.time())),
            "start": json.dumps(start, default=str),
            "summary": json.dumps(summary, default=str),
        }

    # -- publishing thread -----------------------------------------------------------------
    def _work(self) -> None:
        while True:
            entry = self._queue.get()
            try:
                if entry is None:
                    return
                self._publish(entry)
            finally:
                self._queue.task_done()

    def _publish(self, entry: dict[str, str]) -> None:
        for attempt in range(self.retries):
            try:
                if self._client is None:
                    self._client = connect_feed(self.url, password=self._password)
                self._client.xadd(self.stream, entry, maxlen=self.maxlen, approximate=True)
                self.stats.published += 1
                if self._down:
                    logger.info("verdict feed: publishing to %s again", self.stream)
                    self._down = False
                return
            except Exception as exc:  # noqa: BLE001 - never raised into the scorer
                self._client = None
                self.stats.last_error = f"{type(exc).__name__}: {exc}"[:300]
                if attempt + 1 < self.retries:
                    time.sleep(0.2)
        self.stats.failed += 1
        if not self._down:
            self._down = True
            logger.warning("verdict feed: cannot publish to %s (%s); verdicts reach the "
                           "agent through Tiled until it is back", self.stream,
                           self.stats.last_error)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued entry is published or given up (True if none is left)."""
        return wait_drained(self._queue, timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Publish what is queued (up to ``timeout``), then stop the thread."""
        ok = self.flush(timeout)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(1.0)
        return ok


@dataclass
class FeedEntry:
    """One entry read from the feed."""

    id: str
    fields: dict[str, str]
    start: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def stop_time(self) -> float | None:
        """Return the run's stop time (epoch seconds), or ``None`` if absent or unparsable."""
        try:
            return float(self.fields["stop_time"])
        except (KeyError, ValueError):
            return None


class FeedReader:
    """Follows the verdict stream from the last id seen (see the module docstring).

    Parameters
    ----------
    url, stream, password
        Where the feed is.
    since
        Epoch seconds: the first read starts at entries published from then on.
    """

    def __init__(self, url: str, stream: str = "pbi:verdicts", *,
                 password: str | None = None, since: float | None = None) -> None:
        self.url, self.stream, self._password = url, stream, password
        self.last_id = f"{int(since * 1000)}-0" if since is not None else "$"
        self._client: Any = None

    def client(self) -> Any:
        """Return the Redis client, connecting on first use (and after a failure)."""
        if self._client is None:
            self._client = connect_feed(self.url, password=self._password,
                                        socket_timeout=10.0)
        return self._client

    def read(self, block_s: float, count: int = 500) -> list[FeedEntry]:
        """Return the entries after the last id seen, waiting up to ``block_s`` for the first.

        Raises the client's error when Redis cannot be reached (the next call reconnects
        and resumes from the same id).
        """
        try:
            client = self.client()
            if self.last_id == "$":  # pin the position, so nothing is missed between reads
                info = client.xinfo_stream(self.stream) if client.exists(self.stream) \
                    else None
                self.last_id = info["last-generated-id"] if info else "0-0"
            reply = client.xread({self.stream: self.last_id}, count=count,
                                 block=max(1, int(block_s * 1000)))
        except Exception:
            self._client = None
            raise
        out = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.last_id = entry_id
                try:
                    start = json.loads(fields.get("start") or "{}")
                    summary = json.loads(fields.get("summary") or "{}")
                except ValueError:
                    logger.warning("verdict feed: entry %s is not valid JSON; ignored",
                                   entry_id)
                    continue
                out.append(FeedEntry(entry_id, dict(fields), start, summary))
        return out

    def close(self) -> None:
        """Close the Redis client, if any (the next read reconnects)."""
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self._client = None
