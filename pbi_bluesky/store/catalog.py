"""Where runs live: a Tiled catalog, embedded (no server) by default or a real server.

* ``open_runs()`` with no URI (and no ``PBI_TILED_URI``) opens a persistent local catalog
  (SQLite + files + DuckDB tables under ``PBI_DATA_DIR``, default
  ``~/.local/share/pbi_bluesky``) served in-process: no port, no server process.
* With ``uri``/``PBI_TILED_URI`` (and ``api_key``/``PBI_TILED_API_KEY``) it connects to a real
  Tiled server, e.g. one started with
  ``tiled serve catalog --temp --api-key SECRET --host 127.0.0.1 -w DIR``.

Runs go in a container ``runs`` with the ``CatalogOfBlueskyRuns`` spec (version 3), so
``Key``/``Eq``/``In``/``Comparison``/``FullText`` searches match start-document keys.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

# keep a Tiled outage from stalling a scan for minutes (tiled reads these at import)
os.environ.setdefault("TILED_RETRY_ATTEMPTS", "2")
os.environ.setdefault("TILED_RETRY_TIMEOUT", "5")

__all__ = ["DEFAULT_DATA_DIR", "data_dir", "open_runs", "embedded_client", "runs_container"]

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "pbi_bluesky"


def data_dir(explicit: str | Path | None = None) -> Path:
    """The local data folder: ``explicit``, else ``PBI_DATA_DIR``, else the default."""
    return Path(explicit or os.environ.get("PBI_DATA_DIR") or DEFAULT_DATA_DIR)

RUNS = "runs"


def embedded_client(data_dir: str | Path) -> Any:
    """A Tiled client over a persistent local catalog served in-process."""
    from tiled.catalog import from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    root = Path(data_dir)
    (root / "data").mkdir(parents=True, exist_ok=True)
    catalog = from_uri(
        f"sqlite:///{root / 'catalog.db'}",
        writable_storage=[str(root / "data"), f"duckdb:///{root / 'tables.duckdb'}"],
        init_if_not_exists=True,
    )
    context = Context.from_app(build_app(catalog))
    return from_context(context)


def runs_container(client: Any) -> Any:
    """The ``runs`` container (created with the CatalogOfBlueskyRuns spec if missing)."""
    from tiled.structures.core import Spec

    if RUNS not in client:
        client.create_container(RUNS, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
    return client[RUNS]


_data_dir = data_dir


def open_runs(uri: str | None = None, *, api_key: str | None = None,
              data_dir: str | Path | None = None) -> Any:
    """The runs container of the configured catalog (see module docstring)."""
    uri = uri or os.environ.get("PBI_TILED_URI")
    if uri:
        from tiled.client import from_uri

        api_key = api_key or os.environ.get("PBI_TILED_API_KEY")
        logger.info("connecting to Tiled at %s", uri)
        return runs_container(from_uri(uri, api_key=api_key))
    root = _data_dir(data_dir)
    logger.info("using the embedded Tiled catalog in %s", root)
    return runs_container(embedded_client(root))
