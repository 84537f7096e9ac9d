"""Tiled's catalog on PostgreSQL: indexes for the keys ``pbi flagged`` compares.

What tiled 0.2.20 does on PostgreSQL (read in ``tiled/catalog/orm.py`` and ``adapter.py``):

* metadata lives in one JSONB column, ``nodes.metadata``; tiled creates a GIN index on it
  (``ix_nodes_metadata``, ``jsonb_path_ops``) and a tsvector GIN index for full text;
* an equality query (``Key("pbi_analysis") == True``, ``Key("raw_uid") == uid``) is emitted
  as containment, ``metadata @> '{"start": {...}}'``, which that GIN index serves;
* a comparison (``Comparison("gt", "stop.pbi_summary.flagged", 0)``, ``start.time >= t``,
  ``stop.pbi_summary.max_score >= s``) is emitted as ``(metadata #> $path) > $value::jsonb``,
  which no tiled index serves: every analysis run is read and compared.

:func:`create_catalog_indexes` adds B-tree expression indexes on exactly those
expressions, ``((metadata #> '{stop,pbi_summary,flagged}'::text[]))`` and so on, and sets
``plan_cache_mode = force_custom_plan`` on the database: tiled sends the path as a bound
parameter, and only a custom plan (parameters folded into constants, PostgreSQL's default
for the first five executions of a prepared statement) can match an expression index.
Both are idempotent; tiled's own schema is not changed. SQLite, the embedded default, needs
none of this.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["COMPARED_KEYS", "catalog_indexes", "create_catalog_indexes", "index_name"]

COMPARED_KEYS = ("stop.pbi_summary.flagged", "stop.pbi_summary.max_score", "start.time")
"""Metadata keys :func:`~pbi_bluesky.store.flagged_runs` compares (not equality)."""


def index_name(key: str) -> str:
    """Return the name of the index on one metadata key."""
    return "pbi_ix_" + key.replace(".", "_")


def _plain_uri(uri: str) -> str:
    """Return a ``postgresql://`` URI for asyncpg.

    SQLAlchemy's ``+asyncpg`` is dropped; with a ``?host=`` socket the host in the netloc
    is dropped, as asyncpg would prefer it.
    """
    from urllib.parse import parse_qs, urlparse, urlunparse

    for prefix in ("postgresql+asyncpg://", "postgres+asyncpg://", "postgres://"):
        if uri.startswith(prefix):
            uri = "postgresql://" + uri[len(prefix):]
    if not uri.startswith("postgresql://"):
        raise ValueError(f"not a PostgreSQL URI: {uri.split('@')[-1]!r}")
    parsed = urlparse(uri)
    if "host" in parse_qs(parsed.query) and parsed.hostname:
        user = parsed.netloc.rsplit("@", 1)[0] if "@" in parsed.netloc else ""
        uri = urlunparse(parsed._replace(netloc=f"{user}@" if user else ""))
    return uri


def _path_literal(key: str) -> str:
    parts = key.split(".")
    if not all(p.replace("_", "").isalnum() for p in parts):
        raise ValueError(f"metadata key {key!r}: letters, digits, _ and . only")
    return "'{" + ",".join(parts) + "}'::text[]"


async def _run(uri: str, work: Any) -> Any:
    import asyncpg

    conn = await asyncpg.connect(_plain_uri(uri))
    try:
        return await work(conn)
    finally:
        await conn.close()


def create_catalog_indexes(uri: str, keys: tuple[str, ...] = COMPARED_KEYS, *,
                           analyze: bool = True) -> list[str]:
    """Create the expression indexes (if missing) on Tiled's catalog database.

    Parameters
    ----------
    uri
        The catalog database (``postgresql://`` or ``postgresql+asyncpg://``), the one
        ``tiled serve catalog`` was given. Tiled must have initialised it.
    keys
        Metadata keys compared by queries (dotted, as in tiled queries).
    analyze
        Refresh the planner's statistics of ``nodes`` afterwards.

    Returns
    -------
    list of str
        The index names (created now or already there).
    """
    names = [index_name(k) for k in keys]

    async def work(conn: Any) -> None:
        if not await conn.fetchval("SELECT to_regclass('nodes') IS NOT NULL"):
            raise RuntimeError("no tiled catalog in this database (table 'nodes' missing): "
                               "start tiled on it with --init first")
        for key, name in zip(keys, names, strict=True):
            await conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON nodes "
                               f"((metadata #> {_path_literal(key)}))")
        db = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{db}" SET plan_cache_mode = force_custom_plan')
        if analyze:
            await conn.execute("ANALYZE nodes")

    asyncio.run(_run(uri, work))
    return names


def catalog_indexes(uri: str) -> dict[str, str]:
    """Index name -> definition, of every index on Tiled's ``nodes`` table."""

    async def work(conn: Any) -> dict[str, str]:
        rows = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes "
                                "WHERE tablename = 'nodes' ORDER BY indexname")
        return {r["indexname"]: r["indexdef"] for r in rows}

    return asyncio.run(_run(uri, work))
