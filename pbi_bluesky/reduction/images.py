"""Reading detector images (TIFF, EDF, CBF via fabio; HDF5/NeXus via h5py)."""

from __future__ import annotations

import logging
from pathlib import Path

import fabio
import h5py
import numpy as np
from numpy.typing import NDArray

from .errors import ReductionError

__all__ = ["HDF5_SUFFIXES", "as_frame", "read_image"]

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
