"""A thread-safe channel carrying verdicts from the live scorer to plans."""

from __future__ import annotations

import threading
import time
from typing import Any

from pbi_bluesky.scoring.result import FrameResult

__all__ = ["VerdictChannel"]


class VerdictChannel:
    """Collects :class:`FrameResult` records; plans wait on them with a deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._results: dict[str, list[FrameResult]] = {}
        self._finished: set[str] = set()
        self.summaries: dict[str, dict[str, Any]] = {}
        """Per raw run: the analysis summary (frames, scored, failed, flagged, verdict)."""

    def put(self, result: FrameResult) -> None:
        """Record one frame's result and wake the waiters."""
        with self._cond:
            self._results.setdefault(result.raw_uid, []).append(result)
            self._cond.notify_all()

    def finish(self, raw_uid: str) -> None:
        """Mark a raw run as completely processed (every frame accounted for)."""
        with self._cond:
            self._finished.add(raw_uid)
            self._cond.notify_all()

    def results(self, raw_uid: str) -> list[FrameResult]:
        """Return a copy of the results recorded so far for ``raw_uid``."""
        with self._cond:
            return list(self._results.get(raw_uid, []))

    def wait_for_run(self, raw_uid: str, timeout: float) -> list[FrameResult] | None:
        """All results of a run once it is finished, or ``None`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while raw_uid not in self._finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return list(self._results.get(raw_uid, []))
