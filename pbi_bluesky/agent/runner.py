"""The agent process: ``pbi agent`` builds an :class:`~pbi_bluesky.agent.core.Agent` and
calls its step every ``poll_s`` until SIGTERM/SIGINT; a failing step is logged and retried
at the next poll, never fatal."""

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

from pbi_bluesky.agent.core import Agent
from pbi_bluesky.agent.policy import AgentPolicy
from pbi_bluesky.agent.records import RecordWriter
from pbi_bluesky.agent.rescans import RescanQueue
from pbi_bluesky.agent.source import TiledFollower
from pbi_bluesky.store import Catalog

__all__ = ["build_agent", "run_agent"]

logger = logging.getLogger(__name__)


def build_agent(*, zmq_control_addr: str, tiled_uri: str | None, api_key: str | None,
                policy: AgentPolicy, since: float, data_dir: str | Path | None = None,
                sweep_s: float = 30.0, verdict_timeout_s: float = 120.0) -> Agent:
    """An agent following the catalog at ``tiled_uri`` (``None``: the embedded catalog in
    ``data_dir``, for a single-process setup) and queueing on ``zmq_control_addr``."""
    catalog = Catalog(tiled_uri, api_key=api_key, data_dir=data_dir)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "policy_file": policy.source,
            "queue": zmq_control_addr}
    return Agent(TiledFollower(catalog, since=since, sweep_s=sweep_s),
                 RescanQueue(zmq_control_addr, user=policy.user, user_group=policy.user_group),
                 RecordWriter(catalog, info), policy, verdict_timeout_s=verdict_timeout_s)


def _write_status(path: Path, agent: Agent, state: str) -> None:
    data: dict[str, Any] = {"state": state, "pid": os.getpid(), **agent.stats.as_dict(),
                            "requests": len(agent.requests()),
                            "decided": len(agent.decisions)}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def run_agent(agent: Agent, *, poll_s: float = 0.5, stop: threading.Event | None = None,
              status_file: str | Path | None = None, max_steps: int | None = None) -> None:
    """Step until ``stop`` is set (SIGTERM/SIGINT set it in the main thread)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    status = Path(status_file) if status_file else None
    last_error = ""
    logger.info("pbi agent: following analyses, polling every %g s; policy %s", poll_s,
                agent.policy.as_dict())
    try:
        while not stop.is_set():
            t0 = time.monotonic()
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
            stop.wait(max(0.0, poll_s - (time.monotonic() - t0)))
    finally:
        agent.queue.close()
        if status is not None:
            try:
                _write_status(status, agent, "stopped")
            except OSError:
                pass
        logger.info("pbi agent: stopped after %d step(s); %d rescan(s) queued, decisions %s",
                    agent.stats.steps, agent.stats.rescans_queued,
                    dict(agent.stats.decisions))
