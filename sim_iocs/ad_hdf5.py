"""The NDFileHDF5 plugin (``HDF1:``): the areaDetector HDF5 layout, written with h5py.

File layout (ADCore's default layout XML)::

    /entry                                NXentry
    /entry/data/data                      (N, ny, nx) <i4, one frame per array
    /entry/instrument/detector/data       hard link to /entry/data/data
    /entry/instrument/NDAttributes/<a>    (N,) one value per frame for every NDAttribute,
                                          plus NDArrayUniqueId, NDArrayTimeStamp,
                                          NDArrayEpicsTSSec, NDArrayEpicsTSnSec

Each frame is flushed as it is written, so the file can be read while it is open: with
``SWMRMode`` On the file is written in SWMR mode (readers open it with ``swmr=True``),
otherwise readers must open it with ``locking=False``. ``Compression`` None and zlib
(``ZLevel``) are written; the other codecs are reported and written uncompressed.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from caproto.server import pvproperty

from sim_iocs.ad_common import (
    COMPRESSIONS,
    NO_YES,
    NDArray,
    enum_pair,
    enum_pv,
    number_pair,
    string_pair,
)
from sim_iocs.ad_plugins import NDFileGroup

__all__ = ["H5Stream", "NDFileHDF5Group"]

log = logging.getLogger(__name__)

BUILTIN_ATTRIBUTES = {
    "NDArrayUniqueId": "<i4", "NDArrayTimeStamp": "<f8", "NDArrayEpicsTSSec": "<u4",
    "NDArrayEpicsTSnSec": "<u4",
}
"""Per-frame datasets the HDF5 plugin always records (as ADCore does)."""
ATTRIBUTE_CHUNK = 16384


class H5Stream:
    """One open areaDetector HDF5 file (all methods block: run them in a worker thread)."""

    def __init__(self, path: Path, shape: tuple[int, int], attributes: dict[str, tuple],
                 *, swmr: bool, chunk_frames: int, compression: str | None, zlevel: int,
                 store_attributes: bool) -> None:
        import h5py

        self.path = path
        self.n = 0
        self._file = h5py.File(path, "w", libver="latest" if swmr else "earliest")
        f = self._file
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        kw: dict[str, Any] = {}
        if compression == "zlib":
            kw = {"compression": "gzip", "compression_opts": int(np.clip(zlevel, 0, 9))}
        ny, nx = shape
        self.data = data.create_dataset("data", shape=(0, ny, nx), maxshape=(None, ny, nx),
                                        chunks=(max(1, chunk_frames), ny, nx), dtype="<i4",
                                        **kw)
        self.data.attrs["signal"] = 1
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        detector = instrument.create_group("detector")
        detector.attrs["NX_class"] = "NXdetector"
        detector["data"] = self.data
        group = instrument.create_group("NDAttributes")
        group.attrs["NX_class"] = "NXcollection"
        self.attrs: dict[str, Any] = {}
        specs = {k: (None, v, "", "BUILTIN", "") for k, v in BUILTIN_ATTRIBUTES.items()}
        if store_attributes:
            specs.update(attributes)
        for name, (_, dtype, desc, kind, source) in specs.items():
            ds = group.create_dataset(name, shape=(0,), maxshape=(None,),
                                      chunks=(ATTRIBUTE_CHUNK,), dtype=np.dtype(dtype))
            ds.attrs["NDAttrName"] = name
            ds.attrs["NDAttrDescription"] = desc
            ds.attrs["NDAttrSourceType"] = {"EPICS_PV": "NDAttrSourceEPICSPV",
                                            "PARAM": "NDAttrSourceParam"}.get(
                                                kind, "NDAttrSourceDriver")
            ds.attrs["NDAttrSource"] = source
            self.attrs[name] = ds
        if swmr:
            f.swmr_mode = True
        f.flush()

    def append(self, array: NDArray) -> None:
        """Append one frame and its attributes, then flush."""
        i = self.n
        self.data.resize(i + 1, axis=0)
        self.data[i] = array.data
        sec, nsec = array.epics_ts
        builtin = {"NDArrayUniqueId": array.unique_id,
                   "NDArrayTimeStamp": array.timestamp - 631152000.0,
                   "NDArrayEpicsTSSec": sec, "NDArrayEpicsTSnSec": nsec}
        for name, ds in self.attrs.items():
            if name in builtin:
                value = builtin[name]
            elif name in array.attributes:
                value = array.attributes[name][0]
            else:
                kind = ds.dtype.kind
                value = np.nan if kind == "f" else (b"" if kind == "S" else 0)
            ds.resize(i + 1, axis=0)
            ds[i] = value
        self.n = i + 1
        self.flush()

    def flush(self) -> None:
        """Make everything written so far visible to readers."""
        self.data.flush()
        for ds in self.attrs.values():
            ds.flush()
        self._file.flush()

    def close(self) -> None:
        """Flush and close."""
        if self._file.id.valid:
            self._file.close()


class NDFileHDF5Group(NDFileGroup):
    """``NDFileHDF5.template``: HDF5-specific settings of the file plugin.

    The composition sets ``attribute_layout`` (a callable returning the NDAttributes of
    the arrays to come: ``name -> (value, dtype, description, type, source)``).
    """

    compression = enum_pair("Compression", COMPRESSIONS, 0)
    zlevel = number_pair("ZLevel", 6)
    swmr_mode = enum_pair("SWMRMode", ("Off", "On"), 0)
    swmr_active = enum_pv("SWMRActive_RBV", ("Off", "Active"), read_only=True)
    swmr_supported = enum_pv("SWMRSupported_RBV", ("Not Supported", "Supported"), 1,
                             read_only=True)
    flush_now = enum_pv("FlushNow", ("Done", "Flush"))
    num_frames_flush = number_pair("NumFramesFlush", 0)
    num_frames_chunks = number_pair("NumFramesChunks", 0)
    chunk_size_auto = enum_pair("ChunkSizeAuto", NO_YES, 0)
    num_row_chunks = number_pair("NumRowChunks", 0)
    num_col_chunks = number_pair("NumColChunks", 0)
    num_extra_dims = number_pair("NumExtraDims", 0)
    position_mode = enum_pair("PositionMode", ("Off", "On"), 0)
    xml_file_name = string_pair("XMLFileName")
    xml_valid = enum_pv("XMLValid_RBV", NO_YES, 1, read_only=True)
    store_attr = enum_pair("StoreAttr", NO_YES, 1)
    store_perform = enum_pair("StorePerform", NO_YES, 0)
    num_data_bits = number_pair("NumDataBits", 0)
    data_bits_offset = number_pair("DataBitsOffset", 0)
    boundary_align = number_pair("BoundaryAlign", 0)
    boundary_threshold = number_pair("BoundaryThreshold", 65536)
    szip_num_pixels = number_pair("SZipNumPixels", 16)
    run_time = pvproperty(name="RunTime", value=0.0, read_only=True)
    io_speed = pvproperty(name="IOSpeed", value=0.0, read_only=True)

    attribute_layout: Any = staticmethod(lambda: {})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stream: H5Stream | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hdf5")

    @property
    def file_is_open(self) -> bool:  # type: ignore[override]
        """True while a file is open for writing."""
        return self._stream is not None

    @flush_now.putter
    async def flush_now(self, instance: Any, value: str) -> str:
        """Flush the open file to disk (FlushNow), then read Done."""
        if value != "Done" and self._stream is not None:
            async with self._io_lock:
                if self._stream is not None:
                    await self._run(self._stream.flush)
        return "Done"

    @xml_file_name.setpoint.putter
    async def xml_file_name(obj: Any, instance: Any, value: str) -> str:
        """Accept the name; a custom layout is logged as not simulated and XMLValid reads No."""
        if value.strip():
            log.error("%sXMLFileName %r: custom HDF5 layouts are not simulated; the default "
                      "areaDetector layout is written", obj.parent.prefix, value)
            await obj.parent.xml_valid.write("No")
        else:
            await obj.parent.xml_valid.write("Yes")
        await obj.readback.write(value)
        return value

    async def _run(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def open_file(self, path: Path, shape: tuple[int, int]) -> None:
        """Open ``path`` for frames of ``shape`` with the plugin's current settings."""
        codec = str(self.compression.readback.value)
        if codec not in ("None", "zlib"):
            log.warning("%sCompression %s is not available in the simulation: writing "
                        "uncompressed", self.prefix, codec)
        swmr = str(self.swmr_mode.readback.value) == "On"
        chunk = int(self.num_frames_chunks.readback.value)
        layout = {**self.attribute_layout(), **self.attributes_now()}
        self._stream = await self._run(lambda: H5Stream(
            path, shape, layout, swmr=swmr, chunk_frames=max(1, chunk),
            compression=codec if codec == "zlib" else None,
            zlevel=int(self.zlevel.readback.value),
            store_attributes=str(self.store_attr.readback.value) == "Yes"))
        await self.swmr_active.write("Active" if swmr else "Off")
        if chunk == 0:
            await self.num_frames_chunks.readback.write(1)
        log.info("%s opened %s (SWMR %s)", self.prefix, path, "on" if swmr else "off")

    async def write_array(self, array: NDArray) -> None:
        """Append one frame, with this plugin's own attributes, to the open file."""
        if self._stream is None:
            raise OSError("no file open")
        own = self.attributes_now()
        if own:
            array = NDArray(array.data, array.unique_id, array.timestamp,
                            {**array.attributes, **own})
        await self._run(self._stream.append, array)

    def close_now(self) -> None:
        """Close an open file at once (IOC shutdown), so it is left consistent.

        A write still running on the file thread (its task was cancelled, the thread was
        not) ends first, or the file would be closed under it.
        """
        self._executor.shutdown(wait=True)
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
            log.info("%s closed %s at shutdown (%d frames)", self.prefix, stream.path, stream.n)

    async def close_file(self) -> None:
        """Close the open file, if any, on the file thread."""
        stream, self._stream = self._stream, None
        if stream is not None:
            await self._run(stream.close)
            await self.swmr_active.write("Off")
            log.info("%s closed %s (%d frames)", self.prefix, stream.path, stream.n)
