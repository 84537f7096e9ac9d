"""Frames of a raw run read back from Tiled, as the scorer's inputs.

Tiled serves every frame as an array, whatever the run recorded: inline in the events,
Resource/Datum files (stock ophyd) or StreamResource files (ophyd-async) under the server's
readable folders. :func:`run_frames` turns a run's image streams into batches of
:class:`~pbi_bluesky.scoring.reader.FrameInput` for
:meth:`~pbi_bluesky.scoring.engine.FrameScorer.process`: re-scoring (:mod:`pbi_bluesky.rescore`),
training from Tiled and scoring a selection (:mod:`pbi_bluesky.training.tiled`) read frames
the same way.

Frames written by reference are read from their files, as the live scorer reads them
(:class:`~pbi_bluesky.scoring.reads.ReadCache`: each file opened once a batch, consecutive
frames in one read), not through Tiled's array endpoint (measured: 10.6-11.6 frames/s for
Pilatus 1M frames over HTTP): Tiled's data source of the image array names the HDF5 file
and dataset. The file must lie under the scorer's data roots (``data_roots``, the
confinement and HDF5-escape checks of the live scorer apply). Inline frames, a data source
with a slice or several files, and files outside the data roots are read through Tiled's
array endpoint; :class:`FrameReads` counts both and says why.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pbi_bluesky.reduction import hdf5_dataset, open_hdf5
from pbi_bluesky.scoring.frames import AssetRegistry, confine, path_from_uri
from pbi_bluesky.scoring.reader import FrameInput
from pbi_bluesky.scoring.streams import FrameParts

__all__ = ["FrameReads", "OpenedRun", "OpenedStream", "RunOpener", "StreamColumns", "open_run",
           "run_frames", "run_streams", "stream_columns"]

logger = logging.getLogger(__name__)

HDF5_MIMETYPES = ("application/x-hdf5", "application/x-hdf5-swmr")


@dataclass
class FrameReads:
    """How the frames of a selection were read.

    Attributes
    ----------
    from_files
        Frames read from their HDF5 files under the data roots.
    through_tiled
        Frames read through Tiled's array endpoint.
    why_tiled
        Reason -> number of image streams read through Tiled for it.
    """

    from_files: int = 0
    through_tiled: int = 0
    why_tiled: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the counts, for a summary."""
        return {"from_files": self.from_files, "through_tiled": self.through_tiled,
                "why_tiled": dict(self.why_tiled)}


def file_source(image: Any, roots: tuple[str, ...], raw_uid: str, key: str
                ) -> tuple[AssetRegistry, str] | str:
    """Find the HDF5 file behind a Tiled image array, as a registry of one stream resource.

    Returns the registry and the stream resource's uid (row ``i`` of the array is entry
    ``i`` of its dataset), or the reason the array is to be read through Tiled.
    """
    if not roots:
        return "no data roots configured (scorer.data_roots in beamline.yaml)"
    try:
        sources = image.data_sources()
    except Exception as exc:  # noqa: BLE001 - e.g. a server that does not say: read via Tiled
        return f"data sources not available: {type(exc).__name__}"
    if not sources:
        return "inline data (no data source)"
    if len(sources) != 1:
        return "several data sources"
    src = sources[0]
    get = (lambda name: src.get(name)) if isinstance(src, dict) else \
        (lambda name: getattr(src, name, None))
    mimetype = get("mimetype")
    if mimetype not in HDF5_MIMETYPES:
        return f"data source mimetype {mimetype!r} is not HDF5 (inline or other format)"
    assets = list(get("assets") or [])
    if len(assets) != 1:
        return f"{len(assets)} files behind one array"
    asset = assets[0]
    uri = asset.get("data_uri") if isinstance(asset, dict) else getattr(asset, "data_uri", None)
    params = dict(get("parameters") or {})
    if params.get("slice") or params.get("squeeze"):
        return "data source slices its dataset"
    dataset = params.get("dataset")
    if not isinstance(dataset, str) or not uri:
        return "data source names no dataset or file"
    try:
        path = confine(path_from_uri(str(uri)), roots)
    except Exception as exc:  # noqa: BLE001 - PathNotAllowed: not ours to read
        return f"file not under a data root: {exc}"
    try:  # the file's stack must be the array Tiled serves (rows, frame shape)
        with open_hdf5(path) as fh:
            node = hdf5_dataset(fh, dataset)
            shape = tuple(int(s) for s in node.shape)
    except Exception as exc:  # noqa: BLE001 - the escape checks or an unreadable file
        return f"file {path} not read directly: {type(exc).__name__}: {exc}"
    want = tuple(int(s) for s in image.shape)
    # one frame a row: Tiled's (n, 1, ny, nx) of one frame per point is the file's (n, ny, nx)
    inner = want[1:]
    while len(inner) > len(shape) - 1 and inner and inner[0] == 1:
        inner = inner[1:]
    if len(shape) < 2 or shape[1:] != inner or shape[0] < want[0]:
        return f"file dataset shape {shape} does not match the array's {want}"
    uid = f"tiled:{raw_uid}:{key}"
    registry = AssetRegistry(roots)
    registry.add_stream_resource({"uid": uid, "uri": str(uri), "mimetype": mimetype,
                                  "parameters": {"dataset": dataset}})
    return registry, uid


def _is_event_stream(node: Any) -> bool:
    return "BlueskyEventStream" in {getattr(spec, "name", spec)
                                    for spec in (getattr(node, "specs", None) or ())}


def run_streams(raw: Any) -> list[tuple[str, Any]]:
    """Return a raw run's event streams as (name, node), sorted by name, in one request.

    The run's streams are listed with their metadata (descriptors' data keys) by one
    request to its container, not one to list them and one per stream. A run of another
    layout (a ``streams`` namespace, a child that is no event stream) or a client that
    cannot list its base container is read stream by stream through the run client.
    """
    base = getattr(raw, "base", None)
    items = None
    if base is not None:
        try:
            items = [(name, node) for name, node in base.items()]  # list() asks len: 2 requests
        except Exception:  # noqa: BLE001 - e.g. another client: the run's own accessors
            items = None
    if items is None or not all(_is_event_stream(node) for _name, node in items):
        return [(name, raw[name]) for name in list(raw)]
    return sorted(items, key=lambda item: item[0])


@dataclass
class StreamColumns:
    """What a stream holds for the scorer: its image array and its scalar columns.

    Attributes
    ----------
    image
        The image array's client (``None``: no image key), with its data sources.
    seq_nums
        The events' sequence numbers (``None``: the stream records none).
    scalars
        Data key -> one value per event, for the I0 and transmission keys.
    """

    image: Any
    seq_nums: list[int] | None
    scalars: dict[str, np.ndarray]


def _key_by_key(stream: Any, image_key: str | None, keys: list[str]) -> StreamColumns:
    """Read a stream's columns one key at a time (streams that are not composite nodes)."""
    image = stream[image_key] if image_key else None
    seq_nums = ([int(s) for s in np.asarray(stream["seq_num"].read())]
                if "seq_num" in stream else None)
    scalars = {k: np.asarray(stream[k].read()) for k in keys}
    return StreamColumns(image, seq_nums, scalars)


def _table_columns(table: Any, columns: list[str]) -> dict[str, np.ndarray]:
    """Read columns of a Tiled table in one request, as Arrow.

    No dask graph to import and run, as ``read`` builds one; ``read`` if the server will
    not export Arrow.
    """
    import io

    import pyarrow as pa

    buffer = io.BytesIO()
    try:
        table.export(buffer, columns=columns, format="application/vnd.apache.arrow.file")
        data = pa.ipc.open_file(pa.BufferReader(buffer.getvalue())).read_all()
        return {c: data.column(c).to_numpy() for c in columns}
    except Exception:  # noqa: BLE001 - e.g. another server's formats: tiled's reader
        logger.debug("Arrow export of %s failed; reading through dask", columns, exc_info=True)
        frame = table.read(columns=columns)
        return {c: np.asarray(frame[c]) for c in columns}


def stream_columns(stream: Any, image_key: str | None, keys: list[str]) -> StreamColumns:
    """Find a stream's image array and read its scalar columns, in as few requests as can be.

    A stream written by ``TiledWriter`` is a composite node: its scalars are columns of
    one table (``internal``), its image an array beside it. One request lists the parts
    with their data sources (so the image's file needs no request of its own) and one per
    table reads every wanted column at once (``seq_num`` included), where reading key by
    key cost two requests a key and one listing per lookup. A stream that is no composite
    node (another Tiled layout) is read key by key.

    Parameters
    ----------
    stream
        The stream's Tiled node.
    image_key
        The image's data key (``None``: none).
    keys
        The scalar data keys to read (I0, transmission).

    Returns
    -------
    StreamColumns
        The image client, the sequence numbers and the scalars.

    Raises
    ------
    KeyError
        A wanted key is neither a column of the stream's tables nor one of its arrays.
    """
    if not callable(getattr(stream, "get_contents", None)) or \
            not callable(getattr(stream, "new_variation", None)):
        return _key_by_key(stream, image_key, keys)
    from tiled.client.utils import client_for_item

    parts = stream.new_variation(include_data_sources=True).get_contents()

    def client(item: dict) -> Any:
        return client_for_item(stream.context, stream.structure_clients, item,
                               include_data_sources=True)

    tables = {name: list(item["attributes"]["structure"].get("columns") or [])
              for name, item in parts.items()
              if item["attributes"]["structure_family"] == "table"}
    wanted = [*keys, "seq_num"]
    by_table: dict[str, list[str]] = {}
    alone: list[str] = []
    for key in wanted:
        table = next((t for t, cols in tables.items() if key in cols), None)
        if table is not None:
            by_table.setdefault(table, []).append(key)
        elif key in parts:
            alone.append(key)
        elif key != "seq_num":
            raise KeyError(f"data key {key!r} is neither a column nor an array of the stream")
    values: dict[str, np.ndarray] = {}
    for table, cols in by_table.items():
        values.update(_table_columns(client(parts[table]), cols))
    for key in alone:
        values[key] = np.asarray(client(parts[key]).read())
    image = None
    if image_key:
        if image_key in parts and parts[image_key]["attributes"]["structure_family"] != "table":
            image = client(parts[image_key])
        else:  # a column or a key of another layout: the stream's own lookup
            image = stream[image_key]
    seq = values.pop("seq_num", None)
    return StreamColumns(image, None if seq is None else [int(s) for s in seq], values)


@dataclass
class OpenedStream:
    """One image stream of a run, found and its scalars read (:func:`open_run`)."""

    name: str
    roles: Any
    columns: StreamColumns
    seq_nums: list[int]
    source: tuple[AssetRegistry, str] | str | None
    """The frames' file (registry, stream resource uid), or why they go through Tiled."""


@dataclass
class OpenedRun:
    """A raw run with everything but its frames read from Tiled (:func:`open_run`)."""

    uid: str
    start: dict[str, Any]
    streams: list[OpenedStream]


def open_run(core: Any, raw: Any, raw_uid: str) -> OpenedRun:
    """Read what a run's frames need, except the frames: streams, scalars, files.

    The run's streams are listed in one request (:func:`run_streams`); each image
    stream's parts in one more and its scalars in one per table (:func:`stream_columns`);
    the file behind each image array is checked (:func:`file_source`). Frames are left
    for :func:`run_frames`, so opening the next run while this one is reduced
    (:class:`RunOpener`) holds no frame.

    Parameters
    ----------
    core
        A :class:`~pbi_bluesky.scoring.engine.FrameScorer` (key roles, data roots).
    raw
        The run's Tiled node.
    raw_uid
        Its uid.

    Returns
    -------
    OpenedRun
        The start document and the image streams, in order.
    """
    start = dict(raw.metadata["start"])
    roots = tuple(getattr(core, "data_roots", ()) or ())
    streams = []
    for stream_name, stream in run_streams(raw):
        roles = core.roles({"data_keys": dict(stream.metadata.get("data_keys") or {})})
        if roles is None:
            continue
        keys = [k for k in (roles.monitor, roles.transmission) if k and k != roles.image]
        columns = stream_columns(stream, roles.image, keys)
        if columns.seq_nums is not None:
            seq_nums = columns.seq_nums
        elif columns.image is not None:  # StreamDatum only (no event): frames count from 1
            seq_nums = list(range(1, int(columns.image.shape[0]) + 1))
        else:
            continue
        source: tuple[AssetRegistry, str] | str | None = None
        if columns.image is not None:
            source = file_source(columns.image, roots, raw_uid, f"{stream_name}/{roles.image}")
        streams.append(OpenedStream(stream_name, roles, columns, seq_nums, source))
    return OpenedRun(raw_uid, start, streams)


class RunOpener:
    """Open runs (:func:`open_run`) one ahead, on a thread, while the current is reduced.

    A run's requests to Tiled (its lookup, its streams, its scalars) wait on the server,
    not on this process: made for the next run while this one's frames are reduced, they
    cost no time. At most one run is opened ahead and no frame is read ahead, so memory
    does not grow with the selection.

    Parameters
    ----------
    core
        A :class:`~pbi_bluesky.scoring.engine.FrameScorer`.
    runs
        The catalog's runs container (``runs[uid]`` is a run).
    order
        The uids that will be asked for, in order: the first is opened at once, and asking
        for the ``k``-th starts opening the ``k+1``-th. A uid out of this order is opened
        when asked; one skipped is dropped.

    Examples
    --------
    >>> with RunOpener(core, runs, uids) as opener:  # doctest: +SKIP
    ...     for uid in uids:
    ...         for batch in run_frames(core, opener.get(uid), uid, 16, None):
    ...             core.process(batch)
    """

    def __init__(self, core: Any, runs: Any, order: list[str]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.core, self.runs = core, runs
        self._next = {a: b for a, b in zip(order, order[1:], strict=False)}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pbi-tiled-open")
        self._ahead: dict[str, Any] = {}
        if order:  # the first run opens while the caller prepares (e.g. its background)
            self._ahead[order[0]] = self._pool.submit(self._open, order[0])

    def _open(self, uid: str) -> OpenedRun:
        return open_run(self.core, self.runs[uid], uid)

    def get(self, uid: str) -> OpenedRun:
        """Return the opened run (raising what opening it raised); start the next one."""
        future = self._ahead.pop(uid, None)
        for stale in list(self._ahead):  # skipped: not needed any more
            self._ahead.pop(stale).cancel()
        nxt = self._next.get(uid)
        if nxt is not None:
            self._ahead[nxt] = self._pool.submit(self._open, nxt)
        return future.result() if future is not None else self._open(uid)

    def close(self) -> None:
        """Stop opening runs ahead (waits for the one being opened)."""
        for future in self._ahead.values():
            future.cancel()
        self._ahead.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> RunOpener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_frames(core: Any, raw: Any, raw_uid: str, chunk: int,
               background: Any, reads: FrameReads | None = None
               ) -> Iterator[list[FrameInput]]:
    """Yield the raw run's frames as FrameInputs, ``chunk`` at a time, read from Tiled.

    The run is opened first (:func:`open_run`: streams, scalars, files) unless ``raw`` is
    an :class:`OpenedRun` already; frames by reference are then read from their files,
    the others through Tiled's array endpoint, one batch at a time.

    Parameters
    ----------
    core
        A :class:`~pbi_bluesky.scoring.engine.FrameScorer` (its key roles pick the image,
        I0 and transmission of each stream; its ``data_roots`` the files read directly).
    raw
        The run's Tiled node, or the run opened already (:class:`RunOpener`).
    raw_uid
        Its uid.
    chunk
        Frames per batch (only one batch of images is held at a time).
    background
        The empty-cell profile to subtract (``None``: none).
    reads
        Counts of frames read from files and through Tiled, updated here.

    Yields
    ------
    list of FrameInput
        One batch of frames, in order.
    """
    opened = raw if isinstance(raw, OpenedRun) else open_run(core, raw, raw_uid)
    start = opened.start
    for opened_stream in opened.streams:
        roles, source, seq_nums = opened_stream.roles, opened_stream.source, opened_stream.seq_nums
        image, scalars = opened_stream.columns.image, opened_stream.columns.scalars
        if isinstance(source, str):
            logger.debug("run %s stream %s: frames through Tiled: %s", raw_uid[:8],
                         opened_stream.name, source)
            if reads is not None:
                reads.why_tiled[source.split(":")[0]] = \
                    reads.why_tiled.get(source.split(":")[0], 0) + 1
        for lo in range(0, len(seq_nums), chunk):
            hi = min(lo + chunk, len(seq_nums))
            direct = image is not None and not isinstance(source, str)
            block = np.asarray(image[lo:hi]) if image is not None and not direct else None
            assets = source[0] if direct else AssetRegistry()
            batch = []
            for i in range(lo, hi):
                values = {k: ("inline", v[i]) for k, v in scalars.items()}
                if direct:
                    values[roles.image] = ("stream", (source[1], i))
                elif block is not None:
                    values[roles.image] = ("inline", block[i - lo])
                batch.append(FrameInput(raw_uid, start, roles, FrameParts(seq_nums[i], values),
                                        assets, background=background))
            if reads is not None and image is not None:
                if direct:
                    reads.from_files += hi - lo
                else:
                    reads.through_tiled += hi - lo
            yield batch
