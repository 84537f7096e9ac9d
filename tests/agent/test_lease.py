"""The agents' lease on a real Redis server: one holder at a time, kept by renewal past its
time to live; a holder that stops renewing (a frozen or dead process) loses it to the
standby after ``lease_s``, and its fencing check then says no; a Redis outage makes the
holder let go (no agent queues while the lease cannot be checked)."""

from __future__ import annotations

import time

from pbi_bluesky.agent.lease import Lease
from pbi_bluesky.testing.services import RedisServer


def test_one_holder_renewal_expiry_and_fencing(tmp_path):
    with RedisServer(tmp_path / "redis") as redis:
        a = Lease(redis.url, "t:lease", lease_s=1.0)
        b = Lease(redis.url, "t:lease", lease_s=1.0)
        try:
            assert a.try_acquire() and not b.try_acquire()
            time.sleep(1.6)  # past the time to live: the renewals keep it
            assert a.still_held() and not b.try_acquire()
            a._stop.set()  # a freezes: no more renewals
            a._thread.join(2)
            time.sleep(1.3)
            assert b.try_acquire()  # the standby takes over
            assert a.held  # a has not noticed yet...
            assert not a.still_held() and not a.held  # ...its check before item_add has
            b.release()
            assert a.try_acquire()  # a clean release frees it at once
        finally:
            a.release()
            b.release()


def test_the_holder_lets_go_when_redis_is_down(tmp_path):
    with RedisServer(tmp_path / "redis") as redis:
        lease = Lease(redis.url, "t:lease", lease_s=0.9)
        try:
            assert lease.try_acquire()
            redis.stop()
            deadline = time.monotonic() + 5
            while lease.held and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not lease.held and not lease.still_held()
            assert not lease.try_acquire()  # cannot take it without Redis either
        finally:
            lease.release()
