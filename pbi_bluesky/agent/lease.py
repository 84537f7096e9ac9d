"""The agents' lease: only one of several ``pbi queue agent`` processes queues.

Of several ``pbi queue agent`` processes on one queue server, only the one holding the
lease queues; the others stand by and take over when it dies.

The lease is a ``redis.lock.Lock`` on the feed's Redis (the queue server's), named after the
feed's stream, with a short timeout (``feed.lease_s``, 3 s by default). The holder renews it
from a thread every third of that, so a step that takes long (a Tiled outage) does not lose
it; a holder that dies (SIGKILL) stops renewing and the key expires: a standby, trying every
``poll_s``, holds it within ``lease_s + poll_s``. The new holder starts from the catalog and
the queue, as a restarted agent does, so it adopts every item the old one queued and queues
no duplicate.

Fencing: the agent asks :meth:`Lease.still_held` (a round trip comparing the lock's token)
right before every ``item_add``. Limit: the queue server does not check the token itself, so
a holder frozen for longer than the lease between that check and its request (milliseconds
apart) could still add one item; the new holder then adopts it from the queue listing rather
than queueing another for the same round.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["Lease"]

logger = logging.getLogger(__name__)


class Lease:
    """A renewed Redis lock (see the module docstring).

    Parameters
    ----------
    url
        Redis URL (the feed's).
    name
        Key of the lock.
    lease_s
        Time to live of the lock; renewed every ``lease_s / 3``.
    password
        Redis password, if the server needs one.
    """

    def __init__(self, url: str, name: str, *, lease_s: float = 3.0,
                 password: str | None = None) -> None:
        from redis.lock import Lock

        from pbi_bluesky.live.feed import connect_feed

        self.url, self.name, self.lease_s = url, name, float(lease_s)
        self.client = connect_feed(url, password=password,
                                   socket_timeout=max(0.5, self.lease_s / 3))
        self._lock = Lock(self.client, name, timeout=self.lease_s, blocking=False,
                          thread_local=False)
        self._held = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="pbi-agent-lease",
                                        daemon=True)
        self._thread.start()

    @property
    def held(self) -> bool:
        """Return whether this process held the lease at its last renewal."""
        return self._held.is_set()

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it (never waits); True if this process holds it."""
        if self.held:
            return True
        try:
            if self._lock.acquire(blocking=False):
                self._held.set()
        except Exception as exc:  # noqa: BLE001 - Redis down: stand by
            logger.debug("lease %s: cannot reach Redis: %s", self.name, exc)
        return self.held

    def still_held(self) -> bool:
        """Fencing check before acting: the lock still carries this process's token."""
        if not self.held:
            return False
        try:
            owned = bool(self._lock.owned())
        except Exception:  # noqa: BLE001 - cannot tell: act as if lost
            owned = False
        if not owned:
            self._lost("the lock no longer carries this agent's token")
        return owned

    def _lost(self, why: str) -> None:
        if self._held.is_set():
            self._held.clear()
            logger.warning("pbi agent: lease %s lost (%s); standing by", self.name, why)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            if not self.held:
                continue
            try:
                self._lock.reacquire()
            except Exception as exc:  # noqa: BLE001 - LockNotOwnedError, Redis down
                self._lost(f"{type(exc).__name__}: {exc}")

    def release(self) -> None:
        """Give the lease up now (a clean stop: the standby takes over at once)."""
        self._stop.set()
        if self._held.is_set():
            self._held.clear()
            try:
                self._lock.release()
            except Exception:  # noqa: BLE001 - expired or Redis down: nothing to give up
                pass
        self._thread.join(2.0)

    def info(self) -> dict[str, Any]:
        """Return the lease's name and whether this process holds it."""
        return {"lease": self.name, "held": self.held}
