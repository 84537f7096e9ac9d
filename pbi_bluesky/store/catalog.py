"""Where runs live: a Tiled catalog, embedded (no server) by default or a real server.

* ``open_runs()`` with no URI (and no ``PBI_TILED_URI``) opens a persistent local catalog
  (SQLite + files + DuckDB tables under ``PBI_DATA_DIR``, default
  ``~/.local/share/pbi_bluesky``) served in-process: no port, no server process. Its
  requests are served one at a time (see :func:`embedded_client`).
* With ``uri``/``PBI_TILED_URI`` (and ``api_key``/``PBI_TILED_API_KEY``) it connects to a real
  Tiled server, e.g. one started with
  ``tiled serve catalog --temp --api-key SECRET --host 127.0.0.1 -w DIR``.

Runs go in a container ``runs`` with the ``CatalogOfBlueskyRuns`` spec (version 3), so
``Key``/``Eq``/``In``/``Comparison``/``FullText`` searches match start-document keys.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from pbi_bluesky.infra.memory import DEFAULT_MEMORY_BUDGET, doc_nbytes
from pbi_bluesky.store.curves import CURVES_IN_TABLE

__all__ = ["DEFAULT_DATA_DIR", "Catalog", "CatalogUnavailable", "bound_tiled_retries",
           "data_dir", "embedded_client", "open_runs", "require_catalog", "runs_container"]

TILED_RETRY_ATTEMPTS = 2
"""Attempts per Tiled request made by our clients (tiled's own default is 10)."""
TILED_RETRY_TIMEOUT_S = 5.0
"""Longest time tiled retries one request (tiled's default 45 s); also the HTTP timeout."""

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "pbi_bluesky"


def data_dir(explicit: str | Path | None = None) -> Path:
    """Return the local data folder: ``explicit``, else ``PBI_DATA_DIR``, else the default."""
    return Path(explicit or os.environ.get("PBI_DATA_DIR") or DEFAULT_DATA_DIR)

RUNS = "runs"


def _metadata_clients() -> dict[str, Any]:
    """Return structure clients for metadata queries.

    Every container is a plain tiled ``Container`` (the BlueskyRun clients of bluesky-tiled-plugins
    import dask, xarray and pandas, 1.7 s
    of a 3.2 s ``pbi flagged``; a query on ``start.``/``stop.`` keys needs none of them).
    """
    from tiled.client.container import Container

    # streams (composite nodes) read as plain containers too; their arrays and tables
    # with tiled's numpy clients, imported only when a node is read (``pbi review``)
    return _PlainClients({"container": Container, "composite": Container})


class _PlainClients(dict):
    """Structure clients by family.

    ``array`` and ``table`` (tiled's numpy clients, which import pandas) are imported on
    first use.
    """

    _LAZY = {"array": ("tiled.client.array", "ArrayClient"),
             "table": ("tiled.client.dataframe", "DataFrameClient")}

    def __missing__(self, family: str) -> Any:
        if family not in self._LAZY:
            raise KeyError(family)
        import importlib

        module, name = self._LAZY[family]
        self[family] = getattr(importlib.import_module(module), name)
        return self[family]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


_EMBEDDED_LOCKS: dict[str, threading.Lock] = {}
_EMBEDDED_LOCKS_GUARD = threading.Lock()


def _embedded_lock(root: Path) -> threading.Lock:
    """Return the one lock of every in-process client of the catalog in ``root``."""
    key = str(root.resolve())
    with _EMBEDDED_LOCKS_GUARD:
        return _EMBEDDED_LOCKS.setdefault(key, threading.Lock())


class _OneAtATime:
    """An httpx transport that passes one request at a time to the wrapped one.

    The embedded catalog serves requests from several threads of this process (the raw
    and the analysis spools write while a plan or a query reads). Tiled 0.2.20 served
    in-process does not survive overlapping requests: its DuckDB tables share one
    connection across request threads (500 "Attempting to execute an unsuccessful or
    closed pending query result"), and some requests never return
    (``benchmarks/stress_catalog.py --unserialised``). A server process is not affected
    by this lock.
    """

    def __init__(self, transport: Any, lock: threading.Lock) -> None:
        self.transport, self.lock = transport, lock

    def handle_request(self, request: Any) -> Any:
        with self.lock:
            return self.transport.handle_request(request)

    def close(self) -> None:
        self.transport.close()


def embedded_client(data_dir: str | Path, readable: tuple[str, ...] = (),
                    metadata_only: bool = False) -> Any:
    """Return a Tiled client over a persistent local catalog served in-process.

    ``readable``: folders of external files (detector HDF5) it may serve; ``metadata_only``: plain
    containers (see :func:`open_runs`).

    Every client of one catalog folder in this process sends its requests one at a time
    (:class:`_OneAtATime`), whatever thread they come from.
    """
    from tiled.catalog import from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    root = Path(data_dir)
    (root / "data").mkdir(parents=True, exist_ok=True)
    # init_if_not_exists runs `tiled catalog init` in a subprocess on every call (~5 s):
    # only ask for it when there is no database yet
    new = not (root / "catalog.db").exists()
    catalog = from_uri(
        f"sqlite:///{root / 'catalog.db'}",
        writable_storage=[str(root / "data"), f"duckdb:///{root / 'tables.duckdb'}"],
        readable_storage=[str(r) for r in readable] or None,
        init_if_not_exists=new,
    )
    context = Context.from_app(build_app(catalog))
    cached = context.http_client._transport  # tiled's caching Transport around the app's
    cached.transport = _OneAtATime(cached.transport, _embedded_lock(root))
    if metadata_only:
        return from_context(context, structure_clients=_metadata_clients())
    return from_context(context)


def runs_container(client: Any) -> Any:
    """Return the ``runs`` container (created with the CatalogOfBlueskyRuns spec if missing)."""
    from tiled.structures.core import Spec

    if RUNS not in client:
        try:
            client.create_container(RUNS, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
        except Exception:  # noqa: BLE001 - another process created it first (409)
            if RUNS not in client:
                raise
    return client[RUNS]


_data_dir = data_dir


class CatalogUnavailable(ConnectionError):
    """The Tiled catalog cannot be reached (yet)."""


def bound_tiled_retries(attempts: int = TILED_RETRY_ATTEMPTS,
                        timeout_s: float = TILED_RETRY_TIMEOUT_S) -> None:
    """Bound tiled's client-side retries, whatever was imported first.

    tiled reads ``TILED_RETRY_ATTEMPTS`` / ``TILED_RETRY_TIMEOUT`` from the environment
    once, when ``tiled.client`` is first imported (bluesky-tiled-plugins may import it
    before us), into module constants that every request then reads; so the bound is set
    on those constants, each time we create a client, rather than in the environment.
    """
    import tiled.client.utils as utils

    utils.TILED_RETRY_ATTEMPTS = int(attempts)
    utils.TILED_RETRY_TIMEOUT = float(timeout_s)
    try:
        import tiled.client.stream as stream
    except ImportError:  # pragma: no cover - older tiled
        return
    stream.TILED_RETRY_ATTEMPTS = int(attempts)
    stream.TILED_RETRY_TIMEOUT = float(timeout_s)


def open_runs(uri: str | None = None, *, api_key: str | None = None,
              data_dir: str | Path | None = None,
              timeout_s: float = TILED_RETRY_TIMEOUT_S, readable: tuple[str, ...] = (),
              metadata_only: bool = False, must_exist: bool = False) -> Any:
    """Return the runs container of the configured catalog (see module docstring).

    Requests to a server fail after at most ``timeout_s`` seconds (HTTP timeout and
    retry budget both bounded, see :func:`bound_tiled_retries`). ``metadata_only``: the
    runs come back as plain tiled containers, for queries and metadata (``pbi flagged``):
    faster to import; queries must then name ``start.``/``stop.`` keys in full, as
    :mod:`~pbi_bluesky.store.queries` does. ``must_exist``: an embedded catalog folder
    that holds no catalog is a :class:`FileNotFoundError` naming the catalogs below it
    (commands that only read, such as ``pbi catalog flagged``, would otherwise create an
    empty catalog there and report nothing).
    """
    uri = uri or os.environ.get("PBI_TILED_URI")
    if uri:
        import httpx
        from tiled.client import from_uri

        bound_tiled_retries(timeout_s=timeout_s)
        api_key = api_key or os.environ.get("PBI_TILED_API_KEY")
        from pbi_bluesky.infra.secrets import redact_url

        logger.info("connecting to Tiled at %s", redact_url(uri))
        extra = {"structure_clients": _metadata_clients()} if metadata_only else {}
        return runs_container(from_uri(uri, api_key=api_key,
                                       timeout=httpx.Timeout(timeout_s), **extra))
    root = _data_dir(data_dir)
    if must_exist:
        require_catalog(root)
    logger.info("using the embedded Tiled catalog in %s", root)
    return runs_container(embedded_client(root, readable, metadata_only=metadata_only))


def require_catalog(root: str | Path) -> Path:
    """Return ``root`` if it holds an embedded catalog (``catalog.db``).

    Else raise a :class:`FileNotFoundError` saying so and naming catalogs found in its sub-folders.

    Parameters
    ----------
    root : path
        The folder given as ``--data-dir``.
    """
    root = Path(root)
    if (root / "catalog.db").is_file():
        return root
    below = sorted(str(p.parent) for depth in ("*", "*/*", "*/*/*")
                   for p in root.glob(f"{depth}/catalog.db")) if root.is_dir() else []
    hint = (f"; catalogs below it: {', '.join(below[:5])}" if below else
            "" if root.is_dir() else " (no such folder)")
    raise FileNotFoundError(f"{root} holds no pbi catalog (no catalog.db){hint}")


class Catalog:
    """A lazily connected catalog: creating it never fails, using it connects.

    ``lean_writes`` (default): its writers close only the run's own node at the stop, not
    every stream, table and array under it (see :func:`lean_tiled_writer`).
    ``writer_cache_bytes``: each writer's event cache stays under this many bytes (it writes
    its cached events early rather than hold more).

    A session that starts while Tiled is down still builds its spools and scorer; writers
    made by :meth:`writer` raise :class:`CatalogUnavailable` until the server answers, and
    the spool retries them with backoff.
    """

    def __init__(self, uri: str | None = None, *, api_key: str | None = None,
                 data_dir: str | Path | None = None,
                 timeout_s: float = TILED_RETRY_TIMEOUT_S,
                 readable: tuple[str, ...] = (), lean_writes: bool = True,
                 writer_cache_bytes: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.uri, self._api_key, self.data_dir = uri, api_key, data_dir
        self.writer_cache_bytes = int(writer_cache_bytes)
        self.lean_writes = bool(lean_writes)
        self.timeout_s = timeout_s
        self.readable = tuple(readable)
        self._runs: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        where = self.uri or f"embedded:{_data_dir(self.data_dir)}"
        return f"Catalog({where!r}, connected={self._runs is not None})"

    @property
    def runs(self) -> Any:
        """The runs container (connects on first use)."""
        with self._lock:
            if self._runs is None:
                try:
                    self._runs = open_runs(self.uri, api_key=self._api_key,
                                           data_dir=self.data_dir, timeout_s=self.timeout_s,
                                           readable=self.readable)
                except Exception as exc:  # noqa: BLE001 - one clear error type
                    raise CatalogUnavailable(f"Tiled catalog {self.uri or 'embedded'} not "
                                             f"reachable: {type(exc).__name__}: {exc}") from exc
            return self._runs

    def reset(self) -> None:
        """Forget the connection (the next use reconnects)."""
        with self._lock:
            self._runs = None

    def writer(self, batch_size: int | None = None, *, composed: bool = False,
               max_array_size: int | None = None) -> Any:
        """Return a fresh ``TiledWriter`` for the runs container: the one writer factory.

        The spools, the bus coordinator, re-scoring and the agent's records all write
        through it.

        Parameters
        ----------
        batch_size : int, optional
            Events per table write (TiledWriter's default when None).
        composed : bool
            The documents are composed by this package in the current event-model schema
            (analysis runs): skip the normalizer, whose jsonschema check of every event
            (three 400-point curves) cost ~10 ms of CPU per event; and write every array
            (the curves) as a column of the stream's table
            (:data:`~pbi_bluesky.store.curves.CURVES_IN_TABLE`) unless ``max_array_size``
            says otherwise: 7 write requests per analysis run instead of 14
            (``bench_tiled_writes.py``). :func:`~pbi_bluesky.store.curves.analysis_curves`
            reads this layout and the older one.
        max_array_size : int, optional
            Arrays of more elements are written as array nodes (two requests each), the
            others as columns of the stream's table (-1: every array in the table). When
            None: -1 for ``composed`` documents, else TiledWriter's default (16).
        """
        kwargs: dict[str, Any] = {"max_cache_bytes": self.writer_cache_bytes}
        if batch_size is not None:
            kwargs["batch_size"] = batch_size
        if composed:
            kwargs["normalizer"] = None
            if max_array_size is None:
                max_array_size = CURVES_IN_TABLE
        if max_array_size is not None:
            kwargs["max_array_size"] = max_array_size
        try:
            return lean_tiled_writer(self.runs, lean=self.lean_writes, **kwargs)
        except CatalogUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001
            self.reset()
            raise CatalogUnavailable(str(exc)) from exc

    def delete_partial(self, uid: str) -> None:
        """Remove a partial copy of a run (before a spool replay)."""
        runs = self.runs
        if uid in runs:
            runs[uid].delete(recursive=True, external_only=False)


def lean_tiled_writer(client: Any, *, lean: bool = True,
                      max_cache_bytes: int = DEFAULT_MEMORY_BUDGET, **kwargs: Any) -> Any:
    """Return a ``TiledWriter`` whose event cache is bounded in bytes, lean by default.

    Bounded: bluesky-tiled-plugins' run writer caches events until ``batch_size`` of them
    (10 000 by default) and writes them as one table and array write; with inline frames
    (a Pilatus 1M frame is 4 MB) that is tens of GB. This writer also writes a run's
    cached events (every stream's, as the stop does) as soon as holding one more event
    would take the arrays in its cache past ``max_cache_bytes`` (estimated by
    :func:`pbi_bluesky.infra.memory.doc_nbytes`), so it never holds more than that, or one
    event when a single event is larger. The writer's ``cache_stats`` says how much it
    held at most (``peak_cache_bytes``) and how often the bound wrote early
    (``byte_flushes``).

    Lean: bluesky-tiled-plugins' writer ends a run with one ``DELETE /stream/close`` per
    node it made (each table, array, stream and the run: 4.5 requests per run of ours,
    ~90 ms each inside a loaded server, ``benchmarks/bench_tiled_writes.py``). Closing a
    stream writes nothing: it tells the server's streaming subscribers and webhooks that
    no more writes come to that node. The lean writer closes the run's own container only,
    the one signal "this run is complete", after its stop metadata is written; the data
    written is the same.

    It also registers each frame-by-reference node (a StreamResource and its StreamDatums)
    with its final data source in one ``POST /register`` at the stop, where the stock
    writer registers an empty node and then sends its data source (``PUT``): one request fewer
    per raw run.

    Parameters
    ----------
    client
        The runs container.
    lean
        Close only the run's own node at the stop.
    max_cache_bytes
        Bound on the bytes of events a run writer holds before writing them.
    **kwargs
        ``TiledWriter`` arguments (``batch_size``, ``normalizer``...).
    """
    from bluesky_tiled_plugins.writing import tiled_writer as tw

    stats = {"peak_cache_bytes": 0, "byte_flushes": 0}

    class _BoundedRunWriter(tw._RunWriter):
        _cached: dict[str, int]

        def event(self, doc: dict) -> None:
            cached = self.__dict__.setdefault("_cached", {})
            size = doc_nbytes(doc)
            if cached and sum(cached.values()) + size > max_cache_bytes:
                self._write_caches()
                stats["byte_flushes"] += 1
            super().event(doc)
            stream = self._desc_nodes[doc["descriptor"]].item["id"]
            if self._internal_data_cache[stream]:
                cached[stream] = cached.get(stream, 0) + size
            else:  # the batch_size count wrote it
                cached.pop(stream, None)
            stats["peak_cache_bytes"] = max(stats["peak_cache_bytes"], sum(cached.values()))

        def _write_caches(self) -> None:
            # what stop() does with the caches of internal data, before its stop
            for stream, cache in self._internal_data_cache.items():
                if cache:
                    self._write_internal_data(cache, desc_node=self._desc_nodes[stream])
                    cache.clear()
            self.__dict__.setdefault("_cached", {}).clear()

    class _LeanRunWriter(_BoundedRunWriter):
        def _close_stream_tree(self) -> None:
            if self.root_node is not None:
                self.root_node.close_stream()

        def stop(self, doc: dict) -> None:
            # register each new StreamResource node with its final data source: one POST,
            # where the stock writer POSTs an empty node and then PUTs its data source
            for sres_uid, datum in list(self._external_data_cache.items()):
                sres = self._stream_resource_cache.get(sres_uid)
                desc_node = self._desc_nodes.get(datum["descriptor"])
                if sres_uid in self._sres_nodes or sres is None or desc_node is None:
                    continue
                full_key = f"{desc_node.item['id']}_{sres['data_key']}"
                if full_key in self._sres_nodes:
                    continue  # a further resource of one data key: the stock path
                consolidator = tw.consolidator_factory(sres, desc_node.metadata)
                consolidator.consume_stream_datum(datum)
                source = consolidator.get_data_source()
                node = desc_node.new(key=consolidator.data_key,
                                     structure_family=source.structure_family,
                                     data_sources=[source], metadata={}, specs=[],
                                     access_tags=self.access_tags)
                self._consolidators[sres_uid] = self._consolidators[full_key] = consolidator
                self._sres_nodes[sres_uid] = self._sres_nodes[full_key] = node
                del self._external_data_cache[sres_uid]
            super().stop(doc)

    run_writer = _LeanRunWriter if lean else _BoundedRunWriter

    class PbiTiledWriter(tw.TiledWriter):
        # TiledWriter._factory of bluesky-tiled-plugins 2.x with our run writer and
        # without the backup options (we never pass them: the spool is our backup)
        cache_stats = stats

        def _factory(self, name: str, doc: dict) -> Any:
            cb = writer = run_writer(
                self.client, batch_size=self._batch_size,
                max_array_size=self._max_array_size, validate=self._validate,
                ignore_errors=self.ignore_errors)
            if self._normalizer:
                cb = self._normalizer(patches=self.patches,
                                      spec_to_mimetype=self.spec_to_mimetype)
                cb.subscribe(writer)
            return [cb], []

    if kwargs.get("backup_directory") or kwargs.get("backup_dictionary") is not None:
        raise ValueError("lean_tiled_writer takes no backup options")
    return PbiTiledWriter(client, **kwargs)
