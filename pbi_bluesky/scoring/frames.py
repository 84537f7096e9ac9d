"""Getting frames out of bluesky documents: inline arrays, Resource/Datum, StreamResource.

* Resource/Datum (stock ophyd, spec ``AD_HDF5`` / ``AD_HDF5_SWMR``) are read through the
  ``area_detector_handlers`` handler registered for the spec.
* StreamResource/StreamDatum (ophyd-async) are read with
  :func:`pbi_bluesky.reduction.read_hdf5_frame` (event_model's ``Filler`` only caches them).

A :class:`~pbi_bluesky.scoring.reads.ReadCache` serves one batch of frames (see
:mod:`pbi_bluesky.scoring.reads`); :meth:`AssetRegistry.prefetch` reads a batch's stack
entries into it.

Paths come from documents, so they are untrusted: every file must resolve (symlinks followed)
inside one of the configured data roots, ``file://`` URIs must name this host, and anything
else is a :class:`FrameError` that names the path. Inside a confined file, a dataset that
reaches outside it (HDF5 external link, virtual dataset, external storage) is refused too
(:func:`pbi_bluesky.reduction.refuse_escapes`). Nothing here executes code from a document.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from numpy.typing import NDArray

from pbi_bluesky.reduction import ReductionError, read_hdf5_frame, refuse_escapes
from pbi_bluesky.scoring.reads import ReadCache, read_rows

__all__ = ["AssetRegistry", "FrameError", "PathNotAllowed", "ReadCache", "confine",
           "image_keys"]

logger = logging.getLogger(__name__)

HDF5_SPECS = ("AD_HDF5", "AD_HDF5_SWMR")
AD_DATASET = "/entry/data/data"
"""areaDetector's frame dataset: where the AD_HDF5 handlers read a datum's frames (their
hard-coded key), and the dataset of a StreamResource that names none."""
LOCAL_HOSTS = ("", "localhost", "127.0.0.1")


class FrameError(ValueError):
    """A frame could not be obtained from the documents; the message says why."""


class PathNotAllowed(FrameError):
    """A document points at a file outside the configured data roots."""


def image_keys(descriptor: dict[str, Any]) -> list[str]:
    """Return the data keys of a descriptor that hold 2D images (or stacks of them)."""
    return [k for k, v in descriptor.get("data_keys", {}).items()
            if len(v.get("shape") or []) >= 2 and int(np.prod(v["shape"][-2:])) > 1]


def confine(path: str | Path, roots: tuple[str, ...]) -> Path:
    """``path`` resolved (symlinks and ``..`` followed) if it lies inside one of ``roots``.

    Raises
    ------
    PathNotAllowed
        Naming the path and the roots (or saying that none are configured).
    """
    if not roots:
        raise PathNotAllowed(f"frame file {path}: no data roots are configured, so no file "
                             "named by a document is read (LiveScorer(data_roots=[...]) or "
                             "scorer.data_roots in beamline.yaml)")
    resolved = Path(os.path.realpath(path))
    for root in roots:
        base = Path(os.path.realpath(root))
        if resolved == base or base in resolved.parents:
            return resolved
    raise PathNotAllowed(f"frame file {path} (resolves to {resolved}) is outside the data "
                         f"roots {list(roots)}: not read")


def path_from_uri(uri: str) -> str:
    """Return the local path of a ``file://`` URI (this host only)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("file", ""):
        raise PathNotAllowed(f"URI {uri!r}: scheme {parsed.scheme!r} is not a local file")
    if parsed.netloc not in LOCAL_HOSTS:
        raise PathNotAllowed(f"URI {uri!r} names host {parsed.netloc!r}, not this machine")
    return unquote(parsed.path)


_HANDLERS: dict[str, type] = {}


def _handlers() -> dict[str, type]:
    """area-detector-handlers' AD_HDF5 handlers, opening files without HDF5 file locks.

    The detector's HDF5 plugin holds its file open (and locked) for the whole run in Stream
    mode; the stock handlers open with HDF5's default locking, which then fails with
    "unable to lock file" (and a file written in SWMR mode needs an SWMR reader).
    Everything else is the stock handler.
    """
    if not _HANDLERS:
        import h5py
        from area_detector_handlers.handlers import (
            AreaDetectorHDF5Handler,
            AreaDetectorHDF5SWMRHandler,
        )

        class Unlocked(AreaDetectorHDF5Handler):
            def open(self) -> None:
                if self._file:
                    return
                try:  # a writer in SWMR mode (SWMRMode = On) needs an SWMR reader
                    self._file = h5py.File(self._filename, "r", swmr=True, locking=False)
                except (OSError, ValueError):
                    self._file = h5py.File(self._filename, "r", locking=False)
                _refuse_escapes(self._file)

        class UnlockedSWMR(AreaDetectorHDF5SWMRHandler):
            def open(self) -> None:
                if self._file:
                    return
                self._file = h5py.File(self._filename, "r", swmr=True, locking=False)
                _refuse_escapes(self._file)

        def _refuse_escapes(fh: Any) -> None:
            try:
                refuse_escapes(fh, AD_DATASET, fh.get(AD_DATASET))
            except ReductionError:
                fh.close()
                raise

        _HANDLERS.update({"AD_HDF5": Unlocked, "AD_HDF5_SWMR": UnlockedSWMR})
    return _HANDLERS


class AssetRegistry:
    """Resource/Datum and StreamResource documents of one run, resolved to frames.

    Parameters
    ----------
    roots
        Folders frames may be read from.
    """

    def __init__(self, roots: tuple[str, ...] = ()) -> None:
        self.roots = tuple(roots)
        self.resources: dict[str, dict[str, Any]] = {}
        self.datums: dict[str, dict[str, Any]] = {}
        self.stream_resources: dict[str, dict[str, Any]] = {}

    def add_resource(self, doc: dict[str, Any]) -> None:
        """Keep a Resource document, by uid, for the datums that name it."""
        self.resources[doc["uid"]] = doc

    def add_datum(self, doc: dict[str, Any]) -> None:
        """Keep a Datum document, by datum id, for the events that name it."""
        self.datums[doc["datum_id"]] = doc

    def add_stream_resource(self, doc: dict[str, Any]) -> None:
        """Keep a StreamResource document, by uid, for the StreamDatums that name it."""
        self.stream_resources[doc["uid"]] = doc

    def _datum_location(self, datum_id: str) -> tuple[str, Path, int, int]:
        """(spec, confined file, frames per point, point number) of a datum."""
        datum = self.datums.get(datum_id)
        if datum is None:
            raise FrameError(f"datum {datum_id} was never received")
        resource = self.resources.get(datum["resource"])
        if resource is None:
            raise FrameError(f"resource {datum['resource']} of datum {datum_id} never received")
        spec = resource.get("spec", "")
        if spec not in HDF5_SPECS:
            raise FrameError(f"resource spec {spec!r} is not one this scorer reads "
                             f"({', '.join(HDF5_SPECS)})")
        rel = str(resource.get("resource_path", ""))
        path = confine(Path(resource.get("root", "") or "/") / rel.lstrip("/")
                       if resource.get("root") else rel, self.roots)
        fpp = int(resource.get("resource_kwargs", {}).get("frame_per_point", 1))
        point = int(datum.get("datum_kwargs", {}).get("point_number", 0))
        return spec, path, fpp, point

    def frame_from_datum(self, datum_id: str, cache: ReadCache | None = None) -> NDArray:
        """Return the frame of one datum.

        Read through ``cache`` (the row :meth:`prefetch` read, else read from the batch's
        open file), or with the spec's area-detector handler when no cache is given.
        """
        spec, path, fpp, point = self._datum_location(datum_id)
        if cache is None:
            return self._read_handler(spec, path, fpp, point)
        # through the batch's open file: a handler would open a second (SWMR) handle on it
        try:
            return cache.entry(path, AD_DATASET, point * fpp)
        except ReductionError as exc:
            raise FrameError(str(exc)) from exc

    @staticmethod
    def _read_handler(spec: str, path: Path, fpp: int, point: int) -> NDArray:
        if not path.is_file():
            raise FrameError(f"HDF5 file {path} not found")
        try:
            handler = _handlers()[spec](str(path), frame_per_point=fpp)
        except (OSError, TypeError, ValueError) as exc:
            raise FrameError(f"cannot open {path} with the {spec} handler: {exc}") from exc
        try:
            block = np.asarray(handler(point))
        except (OSError, KeyError, ValueError, IndexError) as exc:
            raise FrameError(f"{path}: point {point} unreadable: {exc}") from exc
        finally:
            handler.close()
        if block.ndim == 3:
            if block.shape[0] < 1:
                raise FrameError(f"{path}: point {point} holds no frame")
            return block[0]
        return block

    def _stream_location(self, stream_resource: str, cache: ReadCache | None = None
                         ) -> tuple[Path, str]:
        """Return the confined file and dataset of a StreamResource (resolved once per batch)."""
        key = (id(self), stream_resource)
        if cache is not None and key in cache.locations:
            return cache.locations[key]
        res = self.stream_resources.get(stream_resource)
        if res is None:
            raise FrameError(f"stream resource {stream_resource} never received")
        mimetype = res.get("mimetype", "application/x-hdf5")
        if mimetype not in ("application/x-hdf5", "application/x-hdf5-swmr"):
            raise FrameError(f"stream resource mimetype {mimetype!r} is not HDF5")
        params = res.get("parameters") or {}
        if not isinstance(params, dict):
            raise FrameError(f"stream resource {stream_resource}: parameters {params!r} are "
                             "not a mapping")
        dataset = params.get("dataset", AD_DATASET)
        if not isinstance(dataset, str):
            raise FrameError(f"stream resource {stream_resource}: dataset {dataset!r} is not "
                             "a string")
        found = (confine(path_from_uri(res["uri"]), self.roots), dataset)
        if cache is not None:
            cache.locations[key] = found
        return found

    def value_from_stream(self, stream_resource: str, index: int,
                          cache: ReadCache | None = None) -> NDArray:
        """Return entry ``index`` of the dataset a StreamResource describes.

        The entry is a frame or an attribute; it is read through ``cache`` when given.
        """
        path, dataset = self._stream_location(stream_resource, cache)
        try:
            if cache is None:
                return read_hdf5_frame(path, dataset, index)
            return cache.entry(path, dataset, int(index))
        except ReductionError as exc:
            raise FrameError(str(exc)) from exc

    def prefetch(self, wanted: list[tuple[str, Any]], cache: ReadCache) -> None:
        """Read the frames of a batch into ``cache``.

        :func:`~pbi_bluesky.scoring.reads.read_rows` reads runs of consecutive frames into
        reused memory. ``wanted``: ``("stream", (stream resource, index))`` or
        ``("datum", datum id)`` values. A datum's frame is the first of its point in
        ``/entry/data/data``, where the AD_HDF5 handlers slice it
        (``point * frame_per_point``; the test suite checks the rows against the handler).
        Anything unreadable is left to the frame-by-frame read, which fails that frame with
        the reason.
        """
        by_location: dict[tuple[Path, str], set[int]] = {}
        for kind, payload in wanted:
            try:
                if kind == "stream":
                    path, dataset = self._stream_location(payload[0], cache)
                    index = int(payload[1])
                else:
                    _spec, path, fpp, point = self._datum_location(payload)
                    dataset, index = AD_DATASET, point * fpp
            except Exception:  # noqa: BLE001 - the frame-by-frame read reports it
                continue
            by_location.setdefault((path, dataset), set()).add(index)
        for (path, dataset), indices in by_location.items():
            try:
                read_rows(cache, path, dataset, sorted(indices))
            except Exception:  # noqa: BLE001 - the frame-by-frame read reports it
                logger.debug("prefetch from %s:%s failed", path, dataset, exc_info=True)
