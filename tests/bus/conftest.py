"""Fixtures of the document-bus tests: a real Redis and Tiled on loopback and worker
processes (the tiny detector and its model, ``bus_instrument`` / ``bus_files``, are in
tests/conftest.py: the re-scoring tests use them too)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbi_bluesky.testing.services import RedisServer, TiledServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """Redis with its append-only file on (streams survive a restart)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiled_server(tmp_path_factory):
    server = TiledServer(tmp_path_factory.mktemp("tiled")).start()
    yield server
    server.stop()


class WorkerProcess:
    """``pbi worker`` as a subprocess (so it can be SIGKILLed)."""

    def __init__(self, name: str, beamline: str, redis: RedisServer, tiled: TiledServer,
                 files: dict, log_dir: Path, *extra: str) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        cmd = [sys.executable, "-m", "pbi_bluesky.cli", "bus", "worker", "--broker", redis.url,
               "--tiled", tiled.uri, "--api-key", tiled.api_key, "--beamline", beamline,
               "--model", str(files["model"]), "--mask", str(files["mask"]),
               "--dark", str(files["dark"]), "--npt", "64", "--data-root", str(files["data"]),
               "--name", name, "--claim-idle", "1.5", "--lease", "2", "--tiled-batch", "8",
               *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "PYTHONFAULTHANDLER": "1"}
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=env)

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_for_consumers(client, names, workers, timeout: float = 120.0) -> None:
    """Until every worker has joined the scorer group (it has read once)."""
    import redis

    from pbi_bluesky.bus import SCORER_GROUP

    deadline = time.monotonic() + timeout
    want = {w.name for w in workers}
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc.poll() is not None:
                raise AssertionError(f"worker {w.name} exited:\n{w.log_tail()}")
        try:
            consumers = client.xinfo_consumers(names.frames, SCORER_GROUP)
        except redis.ResponseError:  # the group is not created yet
            consumers = []
        have = {c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                for c in consumers}
        if want <= have:
            return
        time.sleep(0.2)
    raise AssertionError("workers did not join: " + "\n".join(w.log_tail() for w in workers))


@pytest.fixture(scope="module")
def start_workers(redis_server, tiled_server, bus_files, tmp_path_factory):
    """Start named worker processes for a beamline; all stopped at the end of the module."""
    started: list[WorkerProcess] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def start(beamline: str, *names: str, extra: tuple[str, ...] = ()) -> list[WorkerProcess]:
        from pbi_bluesky.bus import BusNames, connect

        workers = [WorkerProcess(n, beamline, redis_server, tiled_server, bus_files, logs,
                                 *extra) for n in names]
        started.extend(workers)
        wait_for_consumers(connect(redis_server.url), BusNames(beamline), workers)
        return workers

    yield start
    for w in started:
        w.stop()


@pytest.fixture(scope="module")
def runs_client(tiled_server):
    """The ``runs`` container of the test Tiled server."""
    from pbi_bluesky.store import Catalog

    return Catalog(tiled_server.uri, api_key=tiled_server.api_key).runs
