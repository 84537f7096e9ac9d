"""The agent process: step an agent every ``poll_s`` until SIGTERM/SIGINT.

``pbi agent`` builds an :class:`~pbi_bluesky.agent.core.Agent` and
calls its step every ``poll_s`` until SIGTERM/SIGINT; a failing step is logged and retried
at the next poll, never fatal. With a verdict feed the step itself waits on the feed (up to
``poll_s``), so a verdict is acted on as soon as it is published.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from pbi_bluesky.agent.core import RAW_RECHECK_S, Agent
from pbi_bluesky.agent.lease import Lease
from pbi_bluesky.agent.policy import AgentPolicy
from pbi_bluesky.agent.records import RecordWriter
from pbi_bluesky.agent.rescans import RescanQueue
from pbi_bluesky.agent.source import FeedFollower, TiledFollower
from pbi_bluesky.store import Catalog

__all__ = ["build_agent", "run_agent"]

logger = logging.getLogger(__name__)


def build_agent(*, zmq_control_addr: str, tiled_uri: str | None, api_key: str | None,
                policy: AgentPolicy, since: float, data_dir: str | Path | None = None,
                sweep_s: float = 30.0, verdict_timeout_s: float = 120.0,
                feed_url: str | None = None, feed_stream: str = "pbi:verdicts",
                feed_password: str | None = None, poll_s: float = 0.5,
                tiled_every_s: float = 5.0, raw_wait_s: float = 120.0,
                may_queue: Any = None) -> Agent:
    """Build an agent over a catalog, a verdict feed and a queue server.

    It follows the catalog at ``tiled_uri`` (``None``: the embedded catalog in
    ``data_dir``, for a single-process setup), and the verdict feed at ``feed_url`` when
    one is given, queueing on ``zmq_control_addr``.

    Parameters
    ----------
    zmq_control_addr, tiled_uri, api_key, data_dir
        The queue server and the catalog.
    policy, since
        What the agent may do; where its memory starts (epoch seconds).
    sweep_s, verdict_timeout_s, raw_wait_s
        See :class:`~pbi_bluesky.agent.source.TiledFollower` and
        :class:`~pbi_bluesky.agent.core.Agent`.
    feed_url, feed_stream, feed_password
        The verdict feed (``None``: poll Tiled only).
    poll_s, tiled_every_s
        Longest wait on the feed per step; seconds between Tiled polls while it works.
    may_queue
        The lease's guard (``None``: no lease).
    """
    catalog = Catalog(tiled_uri, api_key=api_key, data_dir=data_dir)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "policy_file": policy.source,
            "queue": zmq_control_addr, "feed": feed_stream if feed_url else None}
    follower: TiledFollower | FeedFollower = TiledFollower(catalog, since=since,
                                                           sweep_s=sweep_s)
    if feed_url:
        from pbi_bluesky.live.feed import FeedReader

        reader = FeedReader(feed_url, feed_stream, password=feed_password, since=since)
        follower = FeedFollower(follower, reader, block_s=poll_s,
                                tiled_every_s=tiled_every_s)
    return Agent(follower,
                 RescanQueue(zmq_control_addr, user=policy.user, user_group=policy.user_group),
                 RecordWriter(catalog, info), policy, verdict_timeout_s=verdict_timeout_s,
                 raw_wait_s=raw_wait_s, may_queue=may_queue)


def _write_status(path: Path, agent: Agent, state: str) -> None:
    data: dict[str, Any] = {"state": state, "pid": os.getpid(), "time": time.time(),
                            **agent.stats.as_dict(),
                            "requests": len(agent.requests()),
                            "decided": len(agent.decisions),
                            "from_feed": getattr(agent.follower, "from_feed", None),
                            "from_tiled": getattr(agent.follower, "from_tiled", None)}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def _stand_by(agent: Agent, lease: Lease, status: Path | None, was_active: bool) -> bool:
    """Take one standby turn: True once this process holds the lease.

    Then the agent starts over from the catalog and the queue, as a restarted one does).
    """
    if lease.try_acquire():
        if was_active:
            agent.forget()
        logger.info("pbi agent: holding the lease %s: active", lease.name)
        return True
    if not was_active:
        try:
            agent.warm_up()
        except Exception as exc:  # noqa: BLE001 - the step will connect (and say why not)
            logger.debug("pbi agent: catalog not reachable yet: %s", exc)
    if status is not None:
        try:
            _write_status(status, agent, "standby")
        except OSError:
            pass
    return False


def run_agent(agent: Agent, *, poll_s: float = 0.5, stop: threading.Event | None = None,
              status_file: str | Path | None = None, max_steps: int | None = None,
              lease: Lease | None = None) -> None:
    """Step until ``stop`` is set (SIGTERM/SIGINT set it in the main thread).

    Parameters
    ----------
    agent : Agent
        The agent to step.
    poll_s : float
        Seconds between steps (``RAW_RECHECK_S`` while a flagged run waits for its raw run
        to reach Tiled).
    stop : threading.Event, optional
        Set to stop (SIGTERM/SIGINT set it in the main thread).
    status_file : str or Path, optional
        A JSON status file rewritten after every step.
    max_steps : int, optional
        Stop after this many steps.
    lease : Lease, optional
        With a :class:`~pbi_bluesky.agent.lease.Lease` the agent steps only while it holds
        it, and otherwise stands by, trying to take it every ``poll_s``.
    """
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    status = Path(status_file) if status_file else None
    last_error = ""
    active = ever_active = False
    logger.info("pbi agent: following analyses, polling every %g s; policy %s", poll_s,
                agent.policy.as_dict())
    if lease is not None:
        logger.info("pbi agent: lease %s (%g s); standing by until it is free", lease.name,
                    lease.lease_s)
    try:
        while not stop.is_set():
            t0 = time.monotonic()
            if lease is not None and not lease.held:
                if active:
                    logger.warning("pbi agent: lease lost; standing by")
                if not _stand_by(agent, lease, status, ever_active):
                    active = False
                    stop.wait(poll_s)
                    continue
            active = ever_active = True
            try:
                agent.step()
                if last_error:
                    logger.info("pbi agent: working again")
                last_error = ""
            except Exception as exc:  # noqa: BLE001 - the agent never dies of one step
                agent.stats.failed_steps += 1
                text = f"{type(exc).__name__}: {exc}"
                agent.stats.last_error = text[:500]
                if text != last_error:  # log each new problem once, not every poll
                    logger.warning("pbi agent: step failed (retrying every %g s): %s",
                                   poll_s, text)
                last_error = text
            if status is not None:
                try:
                    _write_status(status, agent, "running")
                except OSError as exc:
                    logger.warning("pbi agent: cannot write %s: %s", status, exc)
            if max_steps is not None and agent.stats.steps + agent.stats.failed_steps \
                    >= max_steps:
                break
            period = min(poll_s, RAW_RECHECK_S) if agent.waiting_for_raw else poll_s
            stop.wait(max(0.0, period - (time.monotonic() - t0)))
    finally:
        agent.queue.close()
        if lease is not None:
            lease.release()
        reader = getattr(agent.follower, "reader", None)
        if reader is not None:
            reader.close()
        if status is not None:
            try:
                _write_status(status, agent, "stopped")
            except OSError:
                pass
        logger.info("pbi agent: stopped after %d step(s); %d rescan(s) queued, decisions %s",
                    agent.stats.steps, agent.stats.rescans_queued,
                    dict(agent.stats.decisions))
