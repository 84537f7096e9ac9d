"""``pbi index-catalog``: indexes for the keys ``pbi flagged`` compares.

They are made on a Tiled catalog in PostgreSQL.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pbi_bluesky.cli.app import catalog_app, command


@command(catalog_app, "index", old="index-catalog")
def index_catalog(
    database: Annotated[str, typer.Argument(
        help="The catalog database tiled serves, postgresql://... or "
             "postgresql+asyncpg://... (not the HTTP URI).")],
) -> None:
    """Create the B-tree expression indexes that serve ``pbi flagged`` comparisons.

    For a Tiled catalog in PostgreSQL; idempotent. Restart tiled afterwards so its
    connections pick up plan_cache_mode. SQLite catalogs need none.
    """
    from pbi_bluesky.store import catalog_indexes, create_catalog_indexes

    try:
        names = create_catalog_indexes(database)
    except Exception as exc:  # noqa: BLE001 - said plainly, never with the password
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from exc
    defs = catalog_indexes(database)
    for name in names:
        typer.echo(f"{name}: {defs.get(name, '?')}")
