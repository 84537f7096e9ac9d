"""areaDetector plugin templates: NDPluginBase, NDStdArrays (``image1:``) and NDFile.

A plugin takes the arrays of the port its ``NDArrayPort`` names, when ``EnableCallbacks``
is Enable: in the driver's own task when ``BlockingCallbacks`` is Yes, otherwise through a
queue of ``QueueSize`` arrays (full queue: ``DroppedArrays`` + 1), as ``NDPluginDriver``
does. :class:`NDFileGroup` implements the NDFile.template state machine (Single, Capture and
Stream modes, ``AutoIncrement``/``FileNumber``, ``FileTemplate``, ``LazyOpen``,
``NumCapture``/``NumCaptured_RBV``) over a writer that a format plugin supplies (NDFileHDF5
in :mod:`sim_iocs.ad_hdf5`). ``FilePath`` is confined to the IOC's data root.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from caproto import ChannelType
from caproto.server import pvproperty

from sim_iocs.ad_common import (
    DISABLE_ENABLE,
    FILE_WRITE_MODES,
    NO_YES,
    NDArray,
    TemplateError,
    enum_pair,
    enum_pv,
    format_file_template,
    is_on,
    number_pair,
    rbv_pair,
    string_pair,
    string_pv,
    subscription_backlog,
)
from sim_iocs.ad_driver import NDArrayBaseGroup

__all__ = ["NDFileGroup", "NDPluginBaseGroup", "confined_directory", "make_std_arrays_class"]

log = logging.getLogger(__name__)


class NDPluginBaseGroup(NDArrayBaseGroup):
    """``NDPluginBase.template``: source port, callbacks, queue."""

    plugin_type = pvproperty(name="PluginType_RBV", value="", dtype=ChannelType.STRING,
                             read_only=True)
    nd_array_port = rbv_pair(name="NDArrayPort", value="", dtype=ChannelType.STRING)
    nd_array_address = number_pair("NDArrayAddress", 0)
    enable_callbacks = enum_pair("EnableCallbacks", DISABLE_ENABLE, 0)
    blocking_callbacks = enum_pair("BlockingCallbacks", NO_YES, 0)
    queue_size = number_pair("QueueSize", 20, lower_ctrl_limit=1, upper_ctrl_limit=1000)
    queue_free = pvproperty(name="QueueFree", value=20, read_only=True)
    dropped_arrays = number_pair("DroppedArrays", 0)
    execution_time = pvproperty(name="ExecutionTime_RBV", value=0.0, units="ms",
                                read_only=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def receive(self, array: NDArray, port: str) -> None:
        """Take an array from ``port``: process it now, queue it, or ignore it."""
        if str(self.nd_array_port.readback.value) != port:
            return
        if not is_on(self.enable_callbacks.readback.value):
            return
        if is_on(self.blocking_callbacks.readback.value):
            await self._process_one(array)
            return
        size = max(1, int(self.queue_size.readback.value))
        if self._queue is None or self._queue.maxsize != size:
            await self.drain()
            self._queue = asyncio.Queue(maxsize=size)
            if self._worker is not None:
                self._worker.cancel()
            self._worker = asyncio.get_running_loop().create_task(self._work(self._queue))
        try:
            self._queue.put_nowait(array)
        except asyncio.QueueFull:
            await self.dropped_arrays.readback.write(
                int(self.dropped_arrays.readback.value) + 1)
            log.warning("%s: queue full, array %d dropped", self.prefix, array.unique_id)
        await self.queue_free.write(size - self._queue.qsize())

    async def drain(self) -> None:
        """Wait until every queued array has been processed."""
        if self._queue is not None:
            await self._queue.join()

    async def _work(self, queue: asyncio.Queue) -> None:
        while True:
            array = await queue.get()
            try:
                await self._process_one(array)
            except Exception:  # a plugin error must not stop the worker
                log.exception("%s: processing array %d failed", self.prefix, array.unique_id)
            finally:
                queue.task_done()
                await self.queue_free.write(queue.maxsize - queue.qsize())

    async def _process_one(self, array: NDArray) -> None:
        t0 = time.perf_counter()
        await self.describe_array(array)
        await self.process(array)
        await self.count_array()
        await self.execution_time.write(1e3 * (time.perf_counter() - t0))

    async def process(self, array: NDArray) -> None:
        """Do what the plugin does with an array (override)."""


def make_std_arrays_class(n_pixels: int) -> type[NDPluginBaseGroup]:
    """Return the NDStdArrays plugin class for frames of ``n_pixels`` (static waveform length)."""

    class NDStdArraysGroup(NDPluginBaseGroup):
        """``NDStdArrays.template``: the last array as a flat int32 waveform (``ArrayData``)."""

        array_data = pvproperty(name="ArrayData", value=np.zeros(n_pixels, dtype=np.int32),
                                dtype=ChannelType.LONG, max_length=n_pixels, read_only=True,
                                max_subscription_backlog=subscription_backlog(n_pixels),
                                doc="last frame, row-major, module gaps = -1")

        async def process(self, array: NDArray) -> None:
            await self.array_data.write(array.data.ravel())

    return NDStdArraysGroup


def confined_directory(path: str, root: Path, create_depth: int) -> tuple[Path | None, str]:
    """Resolve ``path`` inside ``root`` (creating folders as ``CreateDirectory`` says).

    Returns the directory, or None and the reason. ``create_depth`` < 0 creates up to
    ``-create_depth`` missing trailing levels, > 0 creates missing levels deeper than that
    many path components, 0 creates nothing (NDFile.template's ``CreateDirectory``).
    """
    if not path:
        return None, "FilePath is empty"
    p = Path(path)
    if not p.is_absolute():
        return None, f"FilePath {path!r} is relative: give an absolute path inside {root}"
    resolved = Path(os.path.realpath(p))
    if not resolved.is_relative_to(root):
        return None, f"FilePath {path!r} is outside the data root {root}: refused"
    if not resolved.is_dir():
        missing = [q for q in [resolved, *resolved.parents] if not q.exists()]
        first_missing_depth = len(missing[-1].parts) - 1 if missing else 0
        allowed = (0 < len(missing) <= -create_depth) if create_depth < 0 else (
            create_depth > 0 and first_missing_depth > create_depth)
        if not allowed:
            return None, (f"FilePath {path!r} does not exist (CreateDirectory={create_depth} "
                          "creates none of it)")
        try:
            resolved.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return None, f"FilePath {path!r}: cannot create: {exc}"
    if not os.access(resolved, os.W_OK):
        return None, f"FilePath {path!r} is not writable"
    return resolved, ""


class NDFileGroup(NDPluginBaseGroup):
    """``NDFile.template`` and the NDPluginFile capture state machine.

    A subclass provides ``open_file(path, array_shape)``, ``write_array(array)``,
    ``close_file()`` (coroutines) and ``file_is_open``.
    """

    file_path = string_pair("FilePath", doc="folder; the IOC adds a trailing '/'")
    file_path_exists = enum_pv("FilePathExists_RBV", NO_YES, read_only=True)
    file_name = string_pair("FileName")
    file_number = number_pair("FileNumber", 0)
    file_template = string_pair("FileTemplate", "%s%s_%3.3d.h5")
    full_file_name = string_pv("FullFileName_RBV")
    auto_increment = enum_pair("AutoIncrement", NO_YES, 0)
    auto_save = enum_pair("AutoSave", NO_YES, 0)
    file_write_mode = enum_pair("FileWriteMode", FILE_WRITE_MODES, 0)
    num_capture = number_pair("NumCapture", 1, lower_ctrl_limit=0)
    num_captured = pvproperty(name="NumCaptured_RBV", value=0, read_only=True)
    capture = enum_pair("Capture", ("Done", "Capture"))
    lazy_open = enum_pair("LazyOpen", NO_YES, 0)
    write_file = enum_pair("WriteFile", ("Done", "Write"))
    write_status = enum_pv("WriteStatus", ("Write OK", "Write error"), read_only=True)
    write_message = string_pv("WriteMessage")
    create_directory = pvproperty(name="CreateDirectory", value=0, doc="CreateDirectory")
    delete_driver_file = enum_pair("DeleteDriverFile", NO_YES, 0)
    array_size0_w = pvproperty(name="ArraySize0", value=0, read_only=True)
    array_size1_w = pvproperty(name="ArraySize1", value=0, read_only=True)

    file_is_open: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._directory: Path | None = None
        self._capturing = False
        self._buffer: list[NDArray] = []
        self._last: NDArray | None = None
        self._io_lock = asyncio.Lock()

    # -- setpoints with behaviour ------------------------------------------------------------
    @file_path.setpoint.putter
    async def file_path(obj: Any, instance: Any, value: str) -> str:
        """Set FilePath: add the trailing '/', confine it to the data root, set FilePathExists."""
        plugin: NDFileGroup = obj.parent
        text = value.strip()
        if text and not text.endswith("/"):
            text += "/"
        root = plugin.data_root or Path("/nonexistent")
        plugin._directory, why = confined_directory(text, root,
                                                    int(plugin.create_directory.value))
        if why:
            log.error("%sFilePath: %s", plugin.prefix, why)
            await plugin.report(why, error=True)
        await plugin.file_path_exists.write("Yes" if plugin._directory else "No")
        await obj.readback.write(text)
        return text

    @capture.setpoint.putter
    async def capture(obj: Any, instance: Any, value: str) -> str:
        """Start (Capture) or stop (Done) capturing; stays Done if the start is refused."""
        plugin: NDFileGroup = obj.parent
        log.info("%sCapture = %s (%s mode)", plugin.prefix, value, plugin._mode())
        if is_on(value):
            return "Capture" if await plugin.start_capture() else "Done"
        await plugin.stop_capture()
        return "Done"

    @write_file.setpoint.putter
    async def write_file(obj: Any, instance: Any, value: str) -> str:
        """Write the captured arrays, else the last array, into one new file (WriteFile)."""
        plugin: NDFileGroup = obj.parent
        if is_on(value):
            arrays = plugin._buffer if plugin._buffer else (
                [plugin._last] if plugin._last is not None else [])
            if not arrays:
                await plugin.report("WriteFile: no array to write", error=True)
            else:
                await plugin.write_arrays(arrays)
        return "Done"

    # -- the state machine -----------------------------------------------------------------------
    def _mode(self) -> str:
        return str(self.file_write_mode.readback.value)

    async def report(self, message: str, error: bool = False) -> None:
        """Show a message in WriteMessage / WriteStatus (and the IOC log for errors)."""
        await self.write_message.write(message[:1000])
        await self.write_status.write("Write error" if error else "Write OK")

    async def next_file_name(self) -> Path | None:
        """Return the next file's path from FileTemplate (None, reported, if it cannot be made)."""
        if self._directory is None:
            await self.report(f"FilePath {self.file_path.readback.value!r} is not usable "
                              "(FilePathExists_RBV = No): nothing written", error=True)
            return None
        try:
            name = format_file_template(str(self.file_template.readback.value),
                                        str(self.file_path.readback.value),
                                        str(self.file_name.readback.value),
                                        int(self.file_number.readback.value))
        except TemplateError as exc:
            await self.report(str(exc), error=True)
            log.error("%s%s", self.prefix, exc)
            return None
        path = Path(os.path.realpath(name))
        if not path.is_relative_to(self.data_root or Path("/nonexistent")):
            msg = f"file {name!r} falls outside the data root {self.data_root}: refused"
            log.error("%s%s", self.prefix, msg)
            await self.report(msg, error=True)
            return None
        return path

    async def _opened(self, path: Path) -> None:
        await self.full_file_name.write(str(path))
        if is_on(self.auto_increment.readback.value):
            n = int(self.file_number.readback.value) + 1
            await self.file_number.setpoint.write(n, verify_value=False)
            await self.file_number.readback.write(n)
        await self.report(f"opened {path}")

    async def start_capture(self) -> bool:
        """Capture = 1; False (reported) when it cannot start."""
        mode = self._mode()
        if self._capturing:
            return True
        if mode == "Single":
            await self.report("Capture is for FileWriteMode Capture or Stream", error=True)
            return False
        if mode == "Capture" and int(self.num_capture.readback.value) <= 0:
            await self.report("NumCapture must be > 0 in Capture mode", error=True)
            return False
        if self._directory is None:
            await self.report(f"FilePath {self.file_path.readback.value!r} is not usable",
                              error=True)
            return False
        await self.num_captured.write(0)
        self._buffer = []
        if mode == "Stream" and not is_on(self.lazy_open.readback.value):
            ny, nx = int(self.array_size1.value), int(self.array_size0.value)
            if not (ny and nx):
                await self.report("no NDArray received yet: acquire one frame first "
                                  "(or LazyOpen = Yes)", error=True)
                return False
            if not await self._open((ny, nx)):
                return False
        self._capturing = True
        await self.capture.readback.write("Capture")
        return True

    async def _open(self, shape: tuple[int, int]) -> bool:
        path = await self.next_file_name()
        if path is None:
            return False
        try:
            async with self._io_lock:
                await self.open_file(path, shape)
        except OSError as exc:
            log.error("%scannot open %s: %s", self.prefix, path, exc)
            await self.report(f"cannot open {path}: {exc}", error=True)
            return False
        await self._opened(path)
        return True

    async def stop_capture(self) -> None:
        """Capture = 0: close the stream file, or save the Capture-mode buffer."""
        was = self._capturing
        self._capturing = False
        if was and self._mode() == "Capture" and self._buffer and is_on(
                self.auto_save.readback.value):
            await self.write_arrays(self._buffer)
        if self.file_is_open:
            async with self._io_lock:
                await self.close_file()
            await self.report(f"closed {self.full_file_name.value}")
        await self.capture.readback.write("Done")
        await self.capture.setpoint.write("Done", verify_value=False)

    async def write_arrays(self, arrays: list[NDArray]) -> None:
        """Write ``arrays`` into one new file (Single and Capture modes, WriteFile)."""
        if not await self._open(arrays[0].data.shape):
            return
        try:
            async with self._io_lock:
                for a in arrays:
                    await self.write_array(a)
                await self.close_file()
        except OSError as exc:
            log.error("%swrite failed: %s", self.prefix, exc)
            await self.report(f"write failed: {exc}", error=True)
            return
        self._buffer = []
        await self.report(f"wrote {len(arrays)} frame(s) to {self.full_file_name.value}")

    async def describe_array(self, array: NDArray) -> None:
        """Publish the array's description, and its width and height as ArraySize0/1."""
        await super().describe_array(array)
        ny, nx = array.data.shape
        await self.array_size0_w.write(nx)
        await self.array_size1_w.write(ny)

    async def process(self, array: NDArray) -> None:
        """Keep the array as the last one, and file it as FileWriteMode says.

        Single: saved when AutoSave is on. While capturing: buffered (Capture) or written
        (Stream), and capturing stops after NumCapture arrays.
        """
        self._last = array
        mode = self._mode()
        if mode == "Single":
            if is_on(self.auto_save.readback.value):
                await self.write_arrays([array])
            return
        if not self._capturing:
            return
        n_capture = int(self.num_capture.readback.value)
        if mode == "Capture":
            self._buffer.append(array)
        else:
            if not self.file_is_open and not await self._open(array.data.shape):
                await self.stop_capture()
                return
            try:
                async with self._io_lock:
                    await self.write_array(array)
            except OSError as exc:
                log.error("%swrite failed: %s", self.prefix, exc)
                await self.report(f"write failed: {exc}", error=True)
                await self.stop_capture()
                return
        captured = int(self.num_captured.value) + 1
        await self.num_captured.write(captured)
        if n_capture > 0 and captured >= n_capture:
            await self.stop_capture()

    # -- format hooks ----------------------------------------------------------------------
    async def open_file(self, path: Path, shape: tuple[int, int]) -> None:  # pragma: no cover
        """Open a new file at ``path`` for frames of ``shape`` (format hook)."""
        raise NotImplementedError

    async def write_array(self, array: NDArray) -> None:  # pragma: no cover
        """Append one array to the open file (format hook)."""
        raise NotImplementedError

    async def close_file(self) -> None:  # pragma: no cover
        """Close the open file (format hook)."""
        raise NotImplementedError
