"""Reading detector images (TIFF, EDF, CBF via fabio; HDF5/NeXus via h5py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import fabio
import h5py
import numpy as np
from numpy.typing import NDArray

from .errors import ReductionError

__all__ = ["DEFAULT_HDF5_DATASET", "HDF5_SUFFIXES", "as_frame", "frame_stored", "hdf5_dataset",
           "refuse_escapes",
           "hdf5_entry", "open_hdf5", "read_hdf5_frame", "read_image"]

logger = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf5", ".nxs", ".nx5", ".hdf")
DEFAULT_HDF5_DATASET = "/entry/data/data"


def _split_dataset(path: str | Path) -> tuple[Path, str | None]:
    text = str(path)
    if "::" in text:
        file_part, dataset = text.split("::", 1)
        return Path(file_part), dataset or None
    return Path(text), None


def _read_hdf5(path: Path, dataset: str | None) -> NDArray:
    name = dataset or DEFAULT_HDF5_DATASET
    try:
        with h5py.File(path, "r") as h5:
            if name not in h5:
                raise ReductionError(f"image file {path} has no dataset {name}")
            node = h5[name]
            if not isinstance(node, h5py.Dataset):
                raise ReductionError(f"{name} in image file {path} is not a dataset")
            if node.ndim == 3:
                data = node[0]
            elif node.ndim == 2:
                data = node[()]
            else:
                raise ReductionError(
                    f"dataset {name} in image file {path} has {node.ndim} dimensions, "
                    "expected 2 or 3"
                )
    except OSError as exc:
        raise ReductionError(f"image file {path} is not a readable HDF5 file: {exc}") from exc
    return np.asarray(data)


def read_image(path: str | Path) -> NDArray:
    """Read one 2D detector frame.

    Parameters
    ----------
    path
        TIFF/EDF/CBF (anything fabio reads) or HDF5/NeXus file. For HDF5 the dataset
        ``/entry/data/data`` is read (first frame if 3D) unless a dataset is given as
        ``"file.h5::/path/to/data"``.

    Returns
    -------
    numpy.ndarray
        The 2D frame, in the file's own dtype.

    Raises
    ------
    ReductionError
        If the file is missing, empty (0 bytes), unreadable or not 2D.
    """
    file_path, dataset = _split_dataset(path)
    if not file_path.is_file():
        raise ReductionError(f"image file {file_path} not found")
    if file_path.stat().st_size == 0:
        raise ReductionError(f"image file {file_path} is empty")
    if file_path.suffix.lower() in HDF5_SUFFIXES:
        data = _read_hdf5(file_path, dataset)
    else:
        try:
            with fabio.open(str(file_path)) as img:
                data = np.asarray(img.data)
        except Exception as exc:  # fabio raises many types for unknown formats
            raise ReductionError(
                f"image file {file_path} could not be read (unknown or corrupt format): {exc}"
            ) from exc
    if data is None or data.ndim != 2 or data.size == 0:
        shape = None if data is None else data.shape
        raise ReductionError(f"image file {file_path} does not hold a 2D frame (shape {shape})")
    logger.debug("read %s: shape %s dtype %s", file_path, data.shape, data.dtype)
    return data


def as_frame(obj: str | Path | NDArray) -> NDArray:
    """Return a 2D array from a path (read with :func:`read_image`) or an array."""
    if isinstance(obj, (str, Path)):
        return read_image(obj)
    arr = np.asarray(obj)
    if arr.ndim != 2:
        raise ReductionError(f"frame must be 2D, got shape {arr.shape}")
    if arr.size == 0:
        raise ReductionError("frame is empty (0 pixels)")
    return arr


def open_hdf5(path: str | Path) -> h5py.File:
    """Open ``path`` read-only without HDF5 file locking.

    SWMR mode is used when the writer uses it, so frames can be read while a detector's
    HDF5 writer still holds the file.

    A plain open is tried first: SWMR mode only where a writer holds the file in SWMR mode
    (HDF5 refuses the plain open then). Measured with HDF5 2.0 / h5py 3.16: two SWMR-mode
    handles on one file in one process, one of them refreshing a dataset, corrupt each
    other (reads fail with "can't retrieve B-tree's shared ref. count object", closing
    crashed the process), so SWMR mode is never used where it is not needed.

    Raises
    ------
    ReductionError
        File missing or not readable as HDF5.
    """
    path = Path(path)
    if not path.is_file():
        raise ReductionError(f"HDF5 file {path} not found")
    try:
        try:
            return h5py.File(path, "r", locking=False)
        except (OSError, ValueError):  # open by a writer in SWMR mode: read it so
            return h5py.File(path, "r", locking=False, swmr=True)
    except OSError as exc:
        raise ReductionError(f"cannot read {path}: {exc}") from exc


def refuse_escapes(fh: h5py.File, dataset: str, node: h5py.Dataset | None = None) -> None:
    """Refuse a dataset whose values may come from outside the file that was checked.

    A file inside a data root can still point elsewhere: an HDF5 external link (to a dataset
    of another file), a virtual dataset (mapped from other files) or external storage (raw
    bytes in other files). The file's path was confined to the data roots, the data would not
    be, so each is refused.

    Parameters
    ----------
    fh, dataset
        The open file and the dataset's path in it (its links are checked).
    node
        The dataset, once opened (its storage is checked); ``None``: links only.

    Raises
    ------
    ReductionError
        Naming the file, the dataset and which of the three it is.
    """
    where = f"{fh.filename}:{dataset}"
    parts = [p for p in dataset.split("/") if p]
    for i in range(1, len(parts) + 1):
        try:
            link = fh.get("/" + "/".join(parts[:i]), getlink=True)
        except (KeyError, OSError):
            break  # missing: said by the caller
        if isinstance(link, h5py.ExternalLink):
            raise ReductionError(f"{where} goes through an HDF5 external link to "
                                 f"{link.filename}:{link.path}: refused (data must lie in "
                                 "the file named by the document)")
        if link is None:
            break
    if node is None:
        return
    if os.path.realpath(node.file.filename) != os.path.realpath(fh.filename):
        raise ReductionError(f"{where} resolves into another file ({node.file.filename}): "
                             "refused")
    if node.is_virtual:
        raise ReductionError(f"{where} is an HDF5 virtual dataset (its data may lie in other "
                             "files): refused")
    if node.external:
        raise ReductionError(f"{where} keeps its data in external files "
                             f"({[e[0] for e in node.external]}): refused")


def hdf5_dataset(fh: h5py.File, dataset: str = DEFAULT_HDF5_DATASET) -> h5py.Dataset:
    """Return dataset ``dataset`` of an open file (refreshed first in SWMR mode).

    External links, virtual datasets and external storage are refused
    (:func:`refuse_escapes`).
    """
    refuse_escapes(fh, dataset)  # links first: a dangling external link is "not in" fh
    if dataset not in fh:
        raise ReductionError(f"HDF5 file {fh.filename} has no dataset {dataset}")
    node = fh[dataset]
    if not isinstance(node, h5py.Dataset):
        raise ReductionError(f"{dataset} in {fh.filename} is not a dataset")
    refuse_escapes(fh, dataset, node)
    if fh.swmr_mode:
        node.refresh()
    if node.ndim not in (1, 2, 3):
        raise ReductionError(f"{fh.filename}:{dataset} has shape {node.shape}; expected a "
                             "frame stack (n, ny, nx), a frame or a 1D attribute")
    return node


def frame_stored(node: h5py.Dataset, index: int) -> bool:
    """Whether frame ``index`` of a chunked stack has its chunk stored in the file.

    An SWMR reader can see a dataset extended before the writer stored the new frame's
    chunk; reading it then returns the fill value (zeros), which must not be scored as a
    frame. Datasets that are not chunked, and chunks holding several frames of which only
    some were written, cannot be told apart this way (``True``).
    """
    chunks = node.chunks
    if chunks is None or node.ndim < 2:
        return True
    origin = (index - index % chunks[0],) + (0,) * (node.ndim - 1)
    try:
        return node.id.get_chunk_info_by_coord(origin).byte_offset is not None
    except Exception:  # noqa: BLE001 - an HDF5 without the chunk query: let the read decide
        return True


def hdf5_entry(node: h5py.Dataset, index: int | None = None) -> NDArray:
    """Return element ``index`` of a dataset from :func:`hdf5_dataset`.

    That is frame ``index`` of a stack, a 2D dataset (``index`` None or 0), or value
    ``index`` of a 1D one.

    Raises
    ------
    ReductionError
        Index out of range, or a frame of the stack whose chunk is not stored yet
        (:func:`frame_stored`), or HDF5 failing to read it.
    """
    try:
        if node.ndim == 2:
            if index:
                raise ReductionError(f"{node.file.filename}:{node.name} is one 2D frame, "
                                     f"index {index} asked")
            return np.asarray(node[()])
        i = 0 if index is None else int(index)
        if not 0 <= i < node.shape[0]:
            raise ReductionError(f"{node.file.filename}:{node.name} holds {node.shape[0]} "
                                 f"entries, index {i} asked")
        if node.ndim == 3 and not frame_stored(node, i):
            raise ReductionError(f"{node.file.filename}:{node.name} frame {i} is not written "
                                 "yet (its chunk is not stored)")
        return np.asarray(node[i])
    except OSError as exc:
        raise ReductionError(f"cannot read {node.name} from {node.file.filename}: "
                             f"{exc}") from exc


def read_hdf5_frame(path: str | Path, dataset: str = DEFAULT_HDF5_DATASET,
                    index: int | None = None) -> NDArray:
    """Read one element of an HDF5 dataset.

    That is frame ``index`` of an ``(n, ny, nx)`` stack, a 2D dataset (``index`` None or
    0), or value ``index`` of a 1D one (an NDAttribute).

    The file is opened with :func:`open_hdf5` (no file locking, SWMR when written so) and
    closed again. This is the project's one HDF5 frame reader (``live.frames.ReadCache``
    keeps the same files open for a batch of frames).

    Raises
    ------
    ReductionError
        File missing or unreadable, dataset missing, index out of range (with the sizes).
    """
    fh = open_hdf5(path)
    try:
        with fh:
            return hdf5_entry(hdf5_dataset(fh, dataset), index)
    except OSError as exc:
        raise ReductionError(f"cannot read {dataset} from {path}: {exc}") from exc
