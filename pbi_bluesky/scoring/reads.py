"""Reading the frames of one batch: files opened once, frames into reused memory.

The live scorer works in batches (:meth:`~pbi_bluesky.scoring.engine.FrameScorer.process`).
Reading a batch frame by frame cost more than reducing it (measured on a Pilatus 1M stack:
``dataset[i]`` 2.8-3.9 ms a frame, mostly the page faults of a fresh 4 MB array, and three
file opens a frame for image, I0 and transmission). Here:

* :class:`ReadCache` opens each file once for the batch (an SWMR dataset is refreshed once),
  reads a 1D NDAttribute dataset whole once, and keeps the prefetched rows;
* :func:`read_rows` reads runs of consecutive frames of a stack into rows of one array taken
  from :class:`FrameBuffers` (memory reused from batch to batch, so it is not faulted in
  again): with h5py's ``read_direct_chunk`` when each frame is one unfiltered chunk (as
  areaDetector writes it; 0.35 ms a Pilatus 1M frame, the cost of one pass over it), else
  with ``read_direct`` (HDF5 decodes the chunks: compression, other layouts). The rows of a
  run are consecutive, so the batch reducer gets them as one stack without a copy.

Rows are valid until the next batch of the same thread reuses the memory: nothing that
outlives a batch (profiles, results) refers to them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pbi_bluesky.reduction import frame_stored, hdf5_dataset, hdf5_entry, open_hdf5

__all__ = ["FrameBuffers", "ReadCache", "read_rows", "stack_rows"]

logger = logging.getLogger(__name__)

KEEP_BYTES = 512 * 2**20
"""Most memory :class:`FrameBuffers` keeps between batches (per thread)."""


class FrameBuffers:
    """Memory for the frames of a batch, reused by the next batch of the same thread."""

    def __init__(self, keep_bytes: int = KEEP_BYTES) -> None:
        self.keep_bytes = int(keep_bytes)
        self._local = threading.local()

    def _state(self) -> tuple[dict, dict]:
        st = self._local
        if not hasattr(st, "arrays"):
            st.arrays, st.used = {}, {}
        return st.arrays, st.used

    def reset(self) -> None:
        """Start a new batch of this thread: the rows handed out before may be overwritten."""
        arrays, used = self._state()
        used.clear()
        for key in [k for k, a in arrays.items() if a.nbytes > self.keep_bytes]:
            del arrays[key]

    def take(self, n: int, shape: tuple[int, ...], dtype: Any) -> NDArray:
        """``n`` consecutive rows ``(n, *shape)`` not handed out since :meth:`reset`."""
        arrays, used = self._state()
        key = (tuple(int(s) for s in shape), np.dtype(dtype).str)
        arr, start = arrays.get(key), used.get(key, 0)
        if arr is None or arr.shape[0] < start + n:
            rows = max(start + n, 2 * (0 if arr is None else arr.shape[0]), 8)
            arr, start = np.empty((rows, *key[0]), dtype=key[1]), 0
            arrays[key] = arr
        used[key] = start + n
        return arr[start:start + n]


class ReadCache:
    """Files and entries read for one batch of frames.

    :meth:`close` (or ``with``) closes the files. Used by one thread. Files are opened when
    first needed, after every document of the batch arrived, so they show each frame the
    batch refers to.
    """

    def __init__(self, buffers: FrameBuffers | None = None) -> None:
        self.buffers = buffers or FrameBuffers(keep_bytes=0)
        self.buffers.reset()
        self._files: dict[Path, Any] = {}
        self._nodes: dict[tuple[Path, str], Any] = {}
        self._columns: dict[tuple[Path, str], NDArray] = {}
        self.rows: dict[tuple[Path, str, int], NDArray] = {}
        self.locations: dict[tuple[int, str], tuple[Path, str]] = {}
        """Confined (file, dataset) of each stream resource, resolved once a batch."""

    def node(self, path: Path, dataset: str) -> Any:
        """Return the dataset, its file opened (and an SWMR dataset refreshed) once per batch."""
        key = (path, dataset)
        if key not in self._nodes:
            fh = self._files.get(path)
            if fh is None:
                fh = self._files[path] = open_hdf5(path)
            self._nodes[key] = hdf5_dataset(fh, dataset)
        return self._nodes[key]

    def entry(self, path: Path, dataset: str, index: int) -> NDArray:
        """Return entry ``index`` of a dataset.

        The entry is a prefetched row, a value of a 1D dataset (read whole once), or one
        read now.
        """
        row = self.rows.get((path, dataset, index))
        if row is not None:
            return row
        node = self.node(path, dataset)
        if node.ndim == 1:
            column = self._columns.get((path, dataset))
            if column is None:
                column = self._columns[(path, dataset)] = np.asarray(node[()])
            if 0 <= index < column.shape[0]:
                return column[index]
        return hdf5_entry(node, index)

    def close(self) -> None:
        """Close the batch's files and drop what was read from them."""
        for fh in self._files.values():
            try:
                fh.close()
            except Exception:  # noqa: BLE001 - closing what was read; nothing is lost
                logger.debug("closing an HDF5 file failed", exc_info=True)
        self._files.clear()
        self._nodes.clear()
        self._columns.clear()
        self.rows.clear()
        self.locations.clear()

    def __enter__(self) -> ReadCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_chunk_per_frame(node: Any) -> bool:
    """Each frame of the stack is one chunk stored as is (no filter)."""
    return (node.chunks is not None and tuple(node.chunks) == (1, *node.shape[1:])
            and node.id.get_create_plist().get_nfilters() == 0)


def read_rows(cache: ReadCache, path: Path, dataset: str, indices: list[int]) -> None:
    """Read frames ``indices`` (sorted) of a ``(n, ny, nx)`` stack into ``cache.rows``.

    One block of consecutive rows is read per run of consecutive indices. Indices out of
    range and frames whose chunk is not stored yet (an SWMR writer extended the dataset
    first: :func:`~pbi_bluesky.reduction.frame_stored`) are left out; their frame-by-frame
    read reports it.

    Parameters
    ----------
    cache
        The batch's cache: its open file, its reused buffers, and ``rows`` filled here.
    path
        The HDF5 file (already confined to the data roots).
    dataset
        The ``(n, ny, nx)`` dataset in it; any other shape reads nothing.
    indices
        Frame numbers to read, sorted.
    """
    node = cache.node(path, dataset)
    if node.ndim != 3:
        return
    runs: list[list[int]] = []
    for i in indices:
        if not 0 <= i < node.shape[0] or not frame_stored(node, i):
            continue
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    direct = _one_chunk_per_frame(node)
    for run in runs:
        rows = cache.buffers.take(len(run), node.shape[1:], node.dtype)
        done = False
        if direct:
            try:
                for k, i in enumerate(run):
                    mask, _ = node.id.read_direct_chunk(
                        (i, 0, 0), out=rows[k].reshape(-1).view(np.uint8))
                    if mask:
                        raise ValueError(f"chunk {i} stored with filter mask {mask}")
                done = True
            except Exception:  # noqa: BLE001 - e.g. a chunk not written yet: HDF5 decides
                logger.debug("direct chunk read of %s:%s failed", path, dataset,
                             exc_info=True)
        if not done:
            node.read_direct(rows, np.s_[run[0]:run[-1] + 1])
        for k, i in enumerate(run):
            cache.rows[(path, dataset, i)] = rows[k]


def stack_rows(images: list[np.ndarray]) -> np.ndarray:
    """Return the frames as one ``(n, ny, nx)`` array.

    It is a view when they are consecutive rows of one stack (as :func:`read_rows` reads
    them), else a copy.
    """
    first = images[0]
    base = first.base
    if (isinstance(base, np.ndarray) and base.ndim == 3 and base.flags.c_contiguous
            and base.shape[1:] == first.shape and base.dtype == first.dtype
            and first.nbytes):
        size = first.nbytes
        origin = base.__array_interface__["data"][0]
        offset = first.__array_interface__["data"][0] - origin
        row0, rest = divmod(offset, size)
        if not rest and row0 + len(images) <= base.shape[0] and all(
            im.base is base and im.shape == first.shape and im.flags.c_contiguous
            and im.__array_interface__["data"][0] == origin + (row0 + k) * size
            for k, im in enumerate(images)
        ):
            return base[row0:row0 + len(images)]
    return np.stack(images)
