"""What the agent follows: finished analysis runs.

They come from the verdict feed (a Redis stream the
session publishes to, :class:`FeedFollower`) where one is configured, and from the Tiled
catalog by polling (:class:`TiledFollower`), which stays the record.

Why polling, not Tiled's streaming: in tiled 0.2.20 websocket subscriptions need a server
started with a streaming cache (Redis) and only deliver what happens after subscribing, so
a restarted agent must search the catalog anyway to rebuild its state; polling works
against any Tiled (server or embedded), needs nothing else, and its cost (one search per
poll over the last few seconds of runs) is measured in ``benchmarks/bench_queue.py``.

:class:`TiledFollower` returns each analysis run once, when its stop document (the frame
ledger ``pbi_summary``) is in the catalog. A poll searches analysis runs started since a
watermark (a few seconds behind the newest one seen, and never after a run still open);
every ``sweep_s`` a sweep searches the whole window since ``since`` again, which picks up
runs that reached Tiled late (a spool replay after an outage keeps their old start time).

:class:`FeedFollower` hears each verdict the moment the live scorer composes it (``XREAD
BLOCK`` on :mod:`pbi_bluesky.live.feed`'s stream, from the last id seen, so a Redis restart
loses nothing it still holds), and polls Tiled as well, less often (``tiled_every_s``): the
feed is a fast path, Tiled the record, and a verdict the feed missed (published while Redis
was down, or dropped) still arrives from Tiled. While the feed is down it says so once and
polls Tiled at every step, trying the feed again every ``retry_s``. Each analysis run is
returned once, whichever way it came. What the agent queues is read from the raw run in
Tiled, never from the feed: a feed entry only says which run to look at.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import stamina

from pbi_bluesky.store import Catalog, CatalogUnavailable

__all__ = ["AnalysisResult", "FeedFollower", "TiledFollower", "TILED_ERRORS"]

logger = logging.getLogger(__name__)


def _tiled_errors() -> tuple[type[BaseException], ...]:
    import httpx

    return (CatalogUnavailable, httpx.HTTPError, ConnectionError, TimeoutError, OSError)


TILED_ERRORS = _tiled_errors()
"""What a Tiled request raises when the server is down or slow (retried)."""

WATERMARK_SLACK_S = 5.0


@dataclass(frozen=True)
class AnalysisResult:
    """One finished analysis run (the live scorer's verdict on one raw run)."""

    analysis_uid: str
    raw_uid: str
    time: float
    slot: int | None
    sample: str | None
    sample_type: str | None
    purpose: str | None
    rescan_of: str | None
    composition: str | None
    frames: int
    scored: int
    flagged: int
    verdict: str | None
    max_score: float | None
    stop_time: float | None = None
    start: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_flagged(self) -> bool:
        """Return whether any frame of the run was flagged."""
        return self.flagged > 0

    @property
    def has_verdict(self) -> bool:
        """At least one frame was scored (otherwise the run says nothing)."""
        return self.scored > 0

    @classmethod
    def from_metadata(cls, uid: str, md: dict[str, Any]) -> AnalysisResult | None:
        """From an analysis run's metadata; ``None`` while it has no stop document."""
        start, stop = md.get("start") or {}, md.get("stop") or {}
        summary = stop.get("pbi_summary")
        if not stop or not isinstance(summary, dict):
            return None
        slot = start.get("slot")
        return cls(
            analysis_uid=uid, raw_uid=start.get("raw_uid") or "", time=float(start["time"]),
            slot=int(slot) if isinstance(slot, (int, float)) else None,
            sample=start.get("sample"), sample_type=start.get("sample_type"),
            purpose=start.get("purpose"), rescan_of=start.get("rescan_of"),
            composition=start.get("expected_composition"),
            frames=int(summary.get("frames") or 0), scored=int(summary.get("scored") or 0),
            flagged=int(summary.get("flagged") or 0), verdict=summary.get("verdict"),
            max_score=summary.get("max_score"), stop_time=stop.get("time"), start=dict(start))


def _retry(func):
    return stamina.retry(on=TILED_ERRORS, attempts=3, timeout=15.0, wait_initial=0.2,
                         wait_max=2.0)(func)


class TiledFollower:
    """Finished analysis runs and the agent's own records, from a Tiled catalog.

    Parameters
    ----------
    catalog
        A lazily connected :class:`~pbi_bluesky.store.Catalog` (reconnects after errors).
    since
        Epoch seconds: analyses older than this are ignored (a restarted agent picks up
        everything since then).
    sweep_s
        Seconds between full sweeps of the window.
    """

    def __init__(self, catalog: Catalog, *, since: float, sweep_s: float = 30.0) -> None:
        self.catalog = catalog
        self.since = float(since)
        self.sweep_s = float(sweep_s)
        self._seen: set[str] = set()
        self._open: dict[str, float] = {}
        self._newest = self.since
        self._last_sweep = float("-inf")
        self._raw_starts: dict[str, dict[str, Any]] = {}

    def _runs(self) -> Any:
        try:
            return self.catalog.runs
        except Exception:
            self.catalog.reset()
            raise

    def _search(self, query_since: float) -> Iterator[tuple[str, dict[str, Any]]]:
        from tiled.queries import Comparison, Key

        results = self._runs().search(Key("pbi_analysis") == True)  # noqa: E712 - a query
        results = results.search(Comparison("ge", "start.time", query_since))
        for uid, node in results.items():
            yield uid, node.metadata

    def forget(self) -> None:
        """Return every analysis since ``since`` again (see :meth:`Agent.forget`)."""
        self._seen.clear()
        self._open.clear()
        self._newest = self.since
        self._last_sweep = float("-inf")

    def mark_seen(self, uid: str) -> bool:
        """Note an analysis run that arrived another way (the feed).

        Polls will not return it. True if it was not seen before.
        """
        if uid in self._seen:
            return False
        self._seen.add(uid)
        self._open.pop(uid, None)
        return True

    @_retry
    def poll(self, wait_s: float | None = None) -> list[AnalysisResult]:
        """Analysis runs finished since the last poll (each returned once), oldest first.

        ``wait_s`` is not used (a Tiled poll never waits); it is :class:`FeedFollower`'s.
        """
        now = time.monotonic()
        sweep = now - self._last_sweep >= self.sweep_s
        if sweep:
            query_since = self.since
        else:
            query_since = min([*self._open.values(), self._newest - WATERMARK_SLACK_S])
            query_since = max(query_since, self.since)
        try:
            found = list(self._search(query_since))
        except Exception:
            self.catalog.reset()
            raise
        if sweep:
            self._last_sweep = now
        out = []
        for uid, md in found:
            if uid in self._seen:
                continue
            start_time = float((md.get("start") or {}).get("time") or 0.0)
            result = AnalysisResult.from_metadata(uid, md)
            if result is None:
                self._open[uid] = start_time
                continue
            self._open.pop(uid, None)
            self._seen.add(uid)
            self._newest = max(self._newest, start_time)
            out.append(result)
        return sorted(out, key=lambda r: r.time)

    @_retry
    def raw_start(self, raw_uid: str) -> dict[str, Any] | None:
        """Return a raw run's start document (cached), ``None`` if it is not in the catalog."""
        if raw_uid in self._raw_starts:
            return self._raw_starts[raw_uid]
        runs = self._runs()
        if raw_uid not in runs:
            return None
        start = dict(runs[raw_uid].metadata.get("start") or {})
        self._raw_starts[raw_uid] = start
        return start

    @_retry
    def records(self, purpose: str) -> list[dict[str, Any]]:
        """Return start documents of the agent's records since ``since``, oldest first.

        Records are those with ``purpose`` ``pbi_decision`` or ``pbi_agent_request``.
        """
        from tiled.queries import Comparison, Key

        results = self._runs().search(Key("purpose") == purpose)
        results = results.search(Comparison("ge", "start.time", self.since))
        out = [dict(node.metadata.get("start") or {}) for _, node in results.items()]
        return sorted(out, key=lambda s: s.get("time") or 0.0)


class FeedFollower:
    """Follow finished analysis runs on the verdict feed, with Tiled behind it.

    See the module docstring; the same interface as :class:`TiledFollower`.

    Parameters
    ----------
    tiled
        The Tiled follower (records, raw runs, and the verdicts the feed missed).
    reader
        A :class:`~pbi_bluesky.live.feed.FeedReader` (started at ``tiled.since``).
    block_s
        Longest wait for a feed entry per poll (the agent's poll period).
    tiled_every_s
        Seconds between Tiled polls while the feed works.
    retry_s
        Seconds between attempts to reach the feed while it is down.
    """

    def __init__(self, tiled: TiledFollower, reader: Any, *, block_s: float = 0.5,
                 tiled_every_s: float = 5.0, retry_s: float = 5.0) -> None:
        self.tiled, self.reader = tiled, reader
        self.block_s, self.tiled_every_s = float(block_s), float(tiled_every_s)
        self.retry_s = float(retry_s)
        self.feed_ok: bool | None = None  # None: not tried yet
        self.from_feed = 0
        self.from_tiled = 0
        self._retry_at = float("-inf")
        self._last_tiled = float("-inf")
        self._pending: list[AnalysisResult] = []

    @property
    def since(self) -> float:
        """Return the start time (epoch s) the Tiled follower reads from."""
        return self.tiled.since

    @property
    def catalog(self) -> Catalog:
        """Return the catalog the Tiled follower reads."""
        return self.tiled.catalog

    def raw_start(self, raw_uid: str) -> dict[str, Any] | None:
        """See :meth:`TiledFollower.raw_start`."""
        return self.tiled.raw_start(raw_uid)

    def records(self, purpose: str) -> list[dict[str, Any]]:
        """See :meth:`TiledFollower.records`."""
        return self.tiled.records(purpose)

    def forget(self) -> None:
        """Return every analysis since ``since`` again (see :meth:`Agent.forget`)."""
        self.tiled.forget()
        self._pending.clear()
        self._last_tiled = float("-inf")
        self.reader.last_id = f"{int(self.since * 1000)}-0"

    def _read_feed(self, block_s: float) -> None:
        now = time.monotonic()
        if self.feed_ok is False and now < self._retry_at:
            return
        try:
            entries = self.reader.read(block_s)
        except Exception as exc:  # noqa: BLE001 - the feed is optional; Tiled is not
            self._retry_at = now + self.retry_s
            if self.feed_ok is not False:
                logger.warning("pbi agent: verdict feed %s unreachable (%s: %s); polling "
                               "Tiled every step, trying the feed every %g s",
                               self.reader.stream, type(exc).__name__, exc, self.retry_s)
            self.feed_ok = False
            return
        if self.feed_ok is not True:
            logger.info("pbi agent: following the verdict feed %s at %s%s", self.reader.stream,
                        self.reader.url, " again" if self.feed_ok is False else "")
        self.feed_ok = True
        for entry in entries:
            uid = str(entry.start.get("uid") or "")
            try:
                result = AnalysisResult.from_metadata(uid, {
                    "start": entry.start,
                    "stop": {"time": entry.stop_time, "pbi_summary": entry.summary}})
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("pbi agent: feed entry %s unreadable (%s); ignored", entry.id,
                               exc)
                continue
            if result is None or not uid or result.time < self.since:
                continue
            if self.tiled.mark_seen(uid):
                self._pending.append(result)
                self.from_feed += 1

    def poll(self, wait_s: float | None = None) -> list[AnalysisResult]:
        """Return analysis runs finished since the last poll (each once), oldest first.

        Waits up to ``block_s`` (or ``wait_s``, when given) on the feed when it has nothing
        yet.
        """
        block = self.block_s if wait_s is None else min(self.block_s, float(wait_s))
        self._read_feed(0.0 if self._pending else block)
        now = time.monotonic()
        if self.feed_ok is not True or now - self._last_tiled >= self.tiled_every_s:
            found = self.tiled.poll()  # raises with the catalog down: pending stays
            self._last_tiled = now
            self.from_tiled += len(found)
            self._pending.extend(found)
        out, self._pending = self._pending, []
        return sorted(out, key=lambda r: r.time)
