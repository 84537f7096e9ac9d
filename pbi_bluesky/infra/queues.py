"""Waiting for a worker thread's :class:`queue.Queue` to drain, with a deadline."""

from __future__ import annotations

import queue
import time

__all__ = ["wait_drained"]


def wait_drained(q: queue.Queue, timeout: float, poll: float = 0.01) -> bool:
    """Wait until every task put on ``q`` is marked done (``task_done``).

    ``Queue.join`` has no timeout; the spool, the verdict feed and the attribution thread
    must never wait forever on a writer that hangs, so they poll ``unfinished_tasks``.

    Parameters
    ----------
    q : queue.Queue
        The worker thread's queue.
    timeout : float
        Most seconds to wait.
    poll : float
        Seconds between checks.

    Returns
    -------
    bool
        True if the queue drained, False on timeout.
    """
    deadline = time.monotonic() + timeout
    while q.unfinished_tasks:
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True
