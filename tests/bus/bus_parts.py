"""Driving the bus's parts directly against a real Redis (no worker processes): publish a
run, dispatch it into work items, score them with :class:`~pbi_bluesky.bus.Scorer`."""

from __future__ import annotations

import time
from typing import Any

from pbi_bluesky.bus import (
    COORDINATOR_GROUP,
    BusNames,
    BusPublisher,
    Dispatcher,
    Lease,
    Ledger,
    ensure_groups,
)
from pbi_bluesky.scoring.engine import FrameScorer
from tests.live.docs import feed


def publish(url: str, beamline: str, docs: list, outbox_dir) -> None:
    """Put a run's documents on the beamline's documents stream (the real publisher)."""
    pub = BusPublisher(url, beamline, outbox_dir=outbox_dir)
    feed(pub, docs)
    assert pub.close(timeout=20), pub.stats


def dispatch(client: Any, names: BusNames, core: FrameScorer, holder: str = "disp") -> int:
    """Dispatch every document on the stream into work items, as the coordinator does."""
    ensure_groups(client, names)
    ledger = Ledger(client, names)
    lease = Lease(ledger, holder, 30.0)
    assert lease.try_acquire(), "the coordinator lease is held by someone else"
    try:
        dispatcher = Dispatcher(client, ledger, core, holder)
        n = 0
        while True:
            resp = client.xreadgroup(COORDINATOR_GROUP, holder, {names.documents: ">"},
                                     count=256, block=50)
            if not resp:
                return n
            n += dispatcher.process(resp[0][1])
    finally:
        lease.release()


def wait_until(predicate, timeout: float, step, what: str) -> None:
    """Call ``step()`` until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        step()
