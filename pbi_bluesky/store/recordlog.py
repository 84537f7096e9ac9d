"""One record log for the spool and the bus outbox: appended, fsync'd, torn-tail tolerant.

A record log is a file of concatenated msgpack objects (the spool's ``{"name", "doc"}``
records encoded by :mod:`pbi_bluesky.codec`, the outbox's ``{"run", "name", "doc"}``
records). Both formats were already that framing, so files written by earlier versions
read unchanged.

* :class:`RecordLog` appends encoded records: each append is written whole or not at all
  (on an error the file is cut back to its last complete record and the error raised), is
  flushed to the operating system at once and fsynced at most every ``fsync_interval``
  seconds (or at once when asked: group commit). ``max_bytes`` bounds the file: an append
  that would pass it raises :class:`LogFull` and writes nothing.
* :class:`Scan` reads records back one at a time (memory bounded by the largest record,
  not by the file), with each record's byte offset, and reports a torn or corrupt tail
  (what a crash mid-append leaves) instead of raising.
* :func:`read_at` reads one record back by its offset and length (the spool forwards
  documents it did not keep in memory that way).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack

from pbi_bluesky.codec import DecodeError, unpacker

__all__ = ["LogFull", "RecordLog", "Scan", "fsync_dir", "read_at"]

logger = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
"""Bytes fed to the unpacker at a time while scanning."""


class LogFull(OSError):
    """An append would take the log past its ``max_bytes`` (nothing was written)."""

    def __init__(self, path: Path, size: int, adding: int, limit: int) -> None:
        super().__init__(errno.EFBIG, f"record log {path} holds {size} bytes; {adding} more "
                         f"would pass its bound of {limit} bytes")


def fsync_dir(path: Path) -> None:
    """Make a folder's entries durable (after a file was created, moved or removed)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RecordLog:
    """An append-only file of records.

    Parameters
    ----------
    path
        The log file (created on the first append; its folder must exist).
    fsync_interval
        Longest time between fsyncs (the power-cut loss bound), seconds.
    max_bytes
        Bound on the file's size; ``None``: unbounded.
    """

    def __init__(self, path: str | Path, *, fsync_interval: float = 0.2,
                 max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.fsync_interval = float(fsync_interval)
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self._fd: int | None = None
        self._size = 0
        self._last_fsync = 0.0
        self.cut = 0
        """Torn or corrupt tails cut off when opening."""

    @property
    def is_open(self) -> bool:
        """Whether the file is open for appending."""
        return self._fd is not None

    def open(self, *, cut_torn: bool = True) -> bool:
        """Open the file for appending; True if this created it.

        With ``cut_torn`` a torn or corrupt tail is cut off first (records appended after
        it would be unreadable).
        """
        if self._fd is not None:
            return False
        created = not self.path.exists()
        if not created and cut_torn:
            scan = Scan(self.path)
            for _ in scan:
                pass
            if scan.torn:
                self.cut += 1
                logger.warning("record log %s: %s; cut back to byte %d", self.path,
                               scan.error, scan.end)
                with open(self.path, "r+b") as fh:
                    fh.truncate(scan.end)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.lseek(self._fd, 0, os.SEEK_END)
        self._last_fsync = time.monotonic()
        if created:
            fsync_dir(self.path.parent)  # the new file's name survives a power cut
        return created

    @property
    def size(self) -> int:
        """Bytes in the file (as this writer knows it)."""
        return self._size

    def append(self, data: bytes, *, sync: bool = False) -> int:
        """Append encoded records whole; returns the byte offset they start at.

        Raises :class:`LogFull` past ``max_bytes`` and ``OSError`` on a disk error (the
        file cut back to where it was: no torn record in the middle of the log).
        """
        if self._fd is None:
            self.open()
        assert self._fd is not None
        pos = self._size
        if self.max_bytes is not None and pos + len(data) > self.max_bytes:
            raise LogFull(self.path, pos, len(data), self.max_bytes)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            now = time.monotonic()
            if sync or now - self._last_fsync >= self.fsync_interval:
                os.fsync(self._fd)
                self._last_fsync = now
        except OSError:
            try:
                os.ftruncate(self._fd, pos)
            except OSError:
                logger.exception("record log %s: cannot cut back a failed append", self.path)
            raise
        self._size = pos + len(data)
        return pos

    def sync(self) -> None:
        """Fsync what was appended."""
        if self._fd is not None:
            os.fsync(self._fd)
            self._last_fsync = time.monotonic()

    def close(self) -> None:
        """Fsync and close the file (the next append reopens it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class Scan:
    """Iterate over the records of a log: ``(offset, length, record)``, in order.

    Never raises for a torn or corrupt tail, a record too large for the reader, or an
    unreadable file: iteration stops and :attr:`torn` / :attr:`error` say why.
    :attr:`end` is the byte offset just after the last complete record.

    Parameters
    ----------
    path
        The log file (a missing file has no records).
    valid
        Tells a well-formed record; the first one that is not ends the scan as corrupt.
    start
        Byte offset to start at (a record boundary).
    """

    def __init__(self, path: str | Path, valid: Callable[[Any], bool] | None = None,
                 start: int = 0) -> None:
        self.path = Path(path)
        self.valid = valid
        self.start = int(start)
        self.end = self.start
        self.torn = False
        self.error = ""

    def __iter__(self) -> Iterator[tuple[int, int, Any]]:
        """Yield each complete record with its offset and length."""
        up = unpacker()
        size = self.start
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.start)
                while chunk := fh.read(READ_CHUNK):
                    size += len(chunk)
                    up.feed(chunk)
                    for record in up:
                        if self.valid is not None and not self.valid(record):
                            self.torn, self.error = True, "corrupt record dropped"
                            return
                        offset, self.end = self.end, self.start + up.tell()
                        yield offset, self.end - offset, record
        except FileNotFoundError:
            return
        except OSError as exc:
            self.error = f"cannot read {self.path}: {exc}"
            return
        except msgpack.BufferFull:
            self.torn = True
            self.error = (f"a record at byte {self.end} is larger than the reader's buffer: "
                          "it and the rest of the file dropped")
            return
        except (ValueError, DecodeError) as exc:
            self.torn, self.error = True, f"corrupt record dropped: {exc}"
            return
        if self.end < size:  # bytes after the last complete record: a torn append
            self.torn, self.error = True, "torn last record dropped"


def read_at(path: str | Path, offset: int, length: int) -> bytes:
    """Read one record's bytes back by its offset and length (raises if short)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(length)
    if len(data) != length:
        raise OSError(errno.EIO, f"{path}: {length} bytes expected at {offset}, "
                      f"{len(data)} read")
    return data
