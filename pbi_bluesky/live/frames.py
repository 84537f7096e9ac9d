"""Getting frames out of bluesky documents: inline arrays, Resource/Datum, StreamResource.

event_model's ``Filler`` fills Resource/Datum through handlers but only caches
StreamResource/StreamDatum, so the HDF5 files are read here directly with h5py
(``/entry/data/data`` as areaDetector writes it, or the dataset named in the document).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from numpy.typing import NDArray

__all__ = ["FrameError", "AssetRegistry", "image_keys"]


class FrameError(ValueError):
    """A frame could not be obtained from the documents; the message says why."""


def image_keys(descriptor: dict[str, Any]) -> list[str]:
    """Data keys of a descriptor that hold 2D images."""
    return [k for k, v in descriptor.get("data_keys", {}).items()
            if len(v.get("shape") or []) >= 2 and int(np.prod(v["shape"][-2:])) > 1]


def _read_hdf5(path: str | Path, dataset: str, index: int) -> NDArray:
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FrameError(f"HDF5 file {path} not found")
    try:
        with h5py.File(path, "r") as fh:
            data = fh[dataset]
            if data.ndim == 2:
                if index != 0:
                    raise FrameError(f"{path}:{dataset} holds one frame, index {index} asked")
                return np.asarray(data[()])
            if index >= data.shape[0]:
                raise FrameError(f"{path}:{dataset} has {data.shape[0]} frames, {index} asked")
            return np.asarray(data[index])
    except (OSError, KeyError) as exc:
        raise FrameError(f"cannot read {dataset} from {path}: {exc}") from exc


class AssetRegistry:
    """Resource/Datum and StreamResource documents of one run, resolved to frames."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.datums: dict[str, dict[str, Any]] = {}
        self.stream_resources: dict[str, dict[str, Any]] = {}

    def add_resource(self, doc: dict[str, Any]) -> None:
        self.resources[doc["uid"]] = doc

    def add_datum(self, doc: dict[str, Any]) -> None:
        self.datums[doc["datum_id"]] = doc

    def add_stream_resource(self, doc: dict[str, Any]) -> None:
        self.stream_resources[doc["uid"]] = doc

    def frame_from_datum(self, datum_id: str) -> NDArray:
        datum = self.datums.get(datum_id)
        if datum is None:
            raise FrameError(f"datum {datum_id} was never received")
        resource = self.resources.get(datum["resource"])
        if resource is None:
            raise FrameError(f"resource {datum['resource']} of datum {datum_id} never received")
        spec = resource.get("spec", "")
        if spec not in ("AD_HDF5", "AD_HDF5_SWMR", "PBI_HDF5"):
            raise FrameError(f"resource spec {spec!r} is not an HDF5 spec this scorer reads")
        path = Path(resource.get("root", "")) / resource["resource_path"]
        kwargs = datum.get("datum_kwargs", {})
        per_point = int(resource.get("resource_kwargs", {}).get("frame_per_point", 1))
        index = int(kwargs.get("point_number", kwargs.get("index", 0))) * per_point
        dataset = resource.get("resource_kwargs", {}).get("dataset", "/entry/data/data")
        return _read_hdf5(path, dataset, index)

    def frame_from_stream(self, stream_resource: str, index: int) -> NDArray:
        res = self.stream_resources.get(stream_resource)
        if res is None:
            raise FrameError(f"stream resource {stream_resource} never received")
        uri = urlparse(res["uri"])
        dataset = res.get("parameters", {}).get("dataset", "/entry/data/data")
        return _read_hdf5(uri.path, dataset, index)
