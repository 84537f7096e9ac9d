"""Many run records into a Tiled catalog quickly.

Metadata only, through tiled's own catalog adapter (no HTTP), concurrently.

For benchmarks of catalog queries at scale (``benchmarks/bench_scale.py``) and for loading
old run metadata. Each record becomes a container in ``runs`` with the ``BlueskyRun`` spec
and the given metadata (``{"start": ..., "stop": ...}``), exactly what ``TiledWriter``
makes of a run's start and stop documents, without its streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["bulk_create_runs"]


def bulk_create_runs(database_uri: str, records: Iterable[dict[str, Any]], *,
                     container: str = "runs", concurrency: int = 16) -> int:
    """Create one run container per record (key: ``record["start"]["uid"]``).

    Parameters
    ----------
    database_uri
        The catalog database: ``sqlite:///path/catalog.db`` or
        ``postgresql+asyncpg://...`` (tiled must have initialised it).
    records
        Run metadata, ``{"start": {...}, "stop": {...}}``.
    container
        The runs container (created with the ``CatalogOfBlueskyRuns`` spec if missing).
    concurrency
        Records written at once (PostgreSQL; on SQLite one at a time: concurrent
        writers get 'database is locked').

    Returns
    -------
    int
        How many were created.
    """
    from tiled.catalog import from_uri
    from tiled.structures.core import Spec, StructureFamily

    async def main() -> int:
        catalog = from_uri(database_uri)
        await catalog.startup()
        try:
            if container not in [k async for k in _keys(catalog)]:
                await catalog.create_node(StructureFamily.container, {}, key=container,
                                          specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
            runs = await catalog.lookup_adapter([container])
            sqlite = database_uri.startswith("sqlite")
            sem = asyncio.Semaphore(1 if sqlite else max(1, int(concurrency)))

            async def one(md: dict[str, Any]) -> None:
                async with sem:
                    await runs.create_node(StructureFamily.container, md,
                                           key=str(md["start"]["uid"]),
                                           specs=[Spec("BlueskyRun", version="3.0")])

            tasks = [one(md) for md in records]
            await asyncio.gather(*tasks)
            return len(tasks)
        finally:
            await catalog.shutdown()

    return asyncio.run(main())


async def _keys(catalog: Any):
    for key in await catalog.keys_range(0, 10_000):
        yield key
