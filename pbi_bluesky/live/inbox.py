"""The only thing the RunEngine thread touches: a bounded, ordered inbox of documents.

Frame-carrying documents (``event``, ``event_page``, ``stream_datum``) and control documents
(everything else) share one FIFO, so the worker sees them in the RunEngine's order, but are
bounded separately:

* a frame document waits at most ``put_timeout`` seconds for room (``overflow="block"``) or
  not at all (``"shed"``); then it is replaced by a tiny *shed marker*, so the worker still
  accounts for the frame (as ``shed``);
* control documents and markers never wait: past ``control_limit`` of them (a worker stuck
  for a very long time) they are dropped, counted in :attr:`Inbox.dropped_control` and logged,
  and the affected runs report it.

So the RunEngine thread never waits longer than ``put_timeout`` per document.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

__all__ = ["FRAME_DOCS", "Inbox", "shed_marker"]

FRAME_DOCS = frozenset({"event", "event_page", "stream_datum", "stream_datum_page"})


def shed_marker(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Return what the worker needs to account for the frames of a document it never gets."""
    marker: dict[str, Any] = {"name": name, "descriptor": doc.get("descriptor")}
    if name == "event":
        marker["seq_nums"] = [doc.get("seq_num")]
    elif name == "event_page":
        marker["seq_nums"] = list(doc.get("seq_num") or [])
    else:
        seqs = doc.get("seq_nums") or {}
        marker["seq_nums"] = list(range(int(seqs.get("start", 0)), int(seqs.get("stop", 0))))
        marker["stream_resource"] = doc.get("stream_resource")
    return marker


class Inbox:
    """Bounded FIFO between the RunEngine thread (producer) and one worker (consumer).

    Parameters
    ----------
    frame_limit
        Frame documents held at most.
    overflow
        ``"block"`` (wait up to ``put_timeout`` s, then shed) or ``"shed"``.
    put_timeout
        Longest wait of the producer, seconds.
    control_limit
        Control documents and shed markers held at most.
    """

    def __init__(self, frame_limit: int = 64, *, overflow: str = "block",
                 put_timeout: float = 0.5, control_limit: int = 100_000) -> None:
        if overflow not in ("block", "shed"):
            raise ValueError("overflow must be 'block' or 'shed'")
        if frame_limit < 1:
            raise ValueError("frame_limit must be >= 1")
        self.frame_limit, self.overflow = int(frame_limit), overflow
        self.put_timeout, self.control_limit = float(put_timeout), int(control_limit)
        self._items: deque[tuple[str, dict[str, Any]]] = deque()
        self._frames = 0
        self._control = 0
        self._cond = threading.Condition()
        self.shed = 0
        """Frame documents replaced by shed markers."""
        self.dropped_control = 0
        """Control documents dropped because the worker was stuck (should stay 0)."""
        self.max_wait_s = 0.0
        """Longest time the producer waited (the bound is ``put_timeout``)."""
        self.unfinished = 0
        """Documents queued and not yet marked done by the consumer (:meth:`task_done`)."""

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, name: str, doc: dict[str, Any]) -> bool:
        """Queue one document; False if it was shed (frames) or dropped (control)."""
        with self._cond:
            if name in FRAME_DOCS:
                if self._frames >= self.frame_limit and self.overflow == "block":
                    t0 = time.monotonic()
                    deadline = t0 + self.put_timeout
                    while self._frames >= self.frame_limit:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    self.max_wait_s = max(self.max_wait_s, time.monotonic() - t0)
                if self._frames < self.frame_limit:
                    self._items.append((name, doc))
                    self._frames += 1
                    self.unfinished += 1
                    self._cond.notify_all()
                    return True
                self.shed += 1
                name, doc = "shed", shed_marker(name, doc)
            if self._control >= self.control_limit:
                self.dropped_control += 1
                return False
            self._items.append((name, doc))
            self._control += 1
            self.unfinished += 1
            self._cond.notify_all()
            return name != "shed"

    def get(self, timeout: float | None = None) -> tuple[str, dict[str, Any]] | None:
        """Return the next document (``None`` after ``timeout`` s with nothing queued)."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
                if not self._items:
                    return None
            name, doc = self._items.popleft()
            if name in FRAME_DOCS:
                self._frames -= 1
            else:
                self._control -= 1
            self._cond.notify_all()
            return name, doc

    def task_done(self) -> None:
        """Mark one document as finished by the consumer."""
        with self._cond:
            self.unfinished -= 1
            self._cond.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait until every queued document is done; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.unfinished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def put_control(self, name: str, doc: dict[str, Any]) -> None:
        """Queue an internal message (never bounded: used only by ``close``)."""
        with self._cond:
            self._items.append((name, doc))
            self._control += 1
            self.unfinished += 1
            self._cond.notify_all()

    def peek_is_frame(self) -> bool:
        """Whether a frame document is next (the worker keeps batching while it is)."""
        with self._cond:
            return bool(self._items) and self._items[0][0] in FRAME_DOCS
