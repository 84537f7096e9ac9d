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

__all__ = ["FrameReads", "run_frames"]

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


def run_frames(core: Any, raw: Any, raw_uid: str, chunk: int,
               background: Any, reads: FrameReads | None = None
               ) -> Iterator[list[FrameInput]]:
    """Yield the raw run's frames as FrameInputs, ``chunk`` at a time, read from Tiled.

    Parameters
    ----------
    core
        A :class:`~pbi_bluesky.scoring.engine.FrameScorer` (its key roles pick the image,
        I0 and transmission of each stream; its ``data_roots`` the files read directly).
    raw
        The run's Tiled node.
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
    start = dict(raw.metadata["start"])
    roots = tuple(getattr(core, "data_roots", ()) or ())
    for stream_name in list(raw):
        stream = raw[stream_name]
        roles = core.roles({"data_keys": dict(stream.metadata.get("data_keys") or {})})
        if roles is None:
            continue
        keys = [k for k in (roles.image, roles.monitor, roles.transmission) if k]
        image = stream[roles.image] if roles.image else None
        if "seq_num" in stream:
            seq_nums = [int(s) for s in np.asarray(stream["seq_num"].read())]
        elif image is not None:  # StreamDatum only (no event): frames count from 1
            seq_nums = list(range(1, int(image.shape[0]) + 1))
        else:
            continue
        scalars = {k: np.asarray(stream[k].read()) for k in keys if k != roles.image}
        source: tuple[AssetRegistry, str] | str | None = None
        if image is not None:
            source = file_source(image, roots, raw_uid, f"{stream_name}/{roles.image}")
            if isinstance(source, str):
                logger.debug("run %s stream %s: frames through Tiled: %s", raw_uid[:8],
                             stream_name, source)
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
