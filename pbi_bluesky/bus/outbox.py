"""The publisher's local outbox: documents kept on disk while the broker is unreachable.

One append-only file of msgpack records (``{"run", "name", "doc"}``, the document already
encoded by :mod:`pbi_bluesky.codec`), flushed to the operating system after every batch and
fsynced at most every ``fsync_interval`` seconds. Sending it resumes where the last attempt
stopped: the number of records already on the broker is kept beside it
(``<name>.sent``, written atomically). A torn last record (a crash while appending) is
dropped and reported. Once everything is sent both files are removed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import msgpack

from pbi_bluesky.codec import DecodeError, unpacker

__all__ = ["Outbox"]

logger = logging.getLogger(__name__)


class Outbox:
    """Records waiting for the broker, in order.

    Parameters
    ----------
    path
        The outbox file (its folder is created).
    fsync_interval
        Longest time between fsyncs (the power-cut loss bound), seconds.
    """

    def __init__(self, path: str | Path, *, fsync_interval: float = 0.2) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sent_path = self.path.with_suffix(self.path.suffix + ".sent")
        self.fsync_interval = float(fsync_interval)
        self._fd: int | None = None
        self._last_fsync = 0.0
        self.appended = 0
        self.torn = 0

    def __len__(self) -> int:
        """Return the number of records not yet sent (reads the file)."""
        return max(0, len(self._records()) - self._sent())

    @property
    def pending(self) -> bool:
        """Whether anything is waiting (cheap: no read)."""
        return self.path.exists() and self.path.stat().st_size > 0

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append records (each ``{"run", "name", "doc"}``) durably, in order.

        All of them or none (on an error such as a full disk the file is cut back and it raises).
        """
        if not records:
            return
        if self._fd is None:
            self._truncate_torn()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        data = b"".join(msgpack.packb(record, use_bin_type=True) for record in records)
        pos = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            now = time.monotonic()
            if now - self._last_fsync >= self.fsync_interval:
                os.fsync(self._fd)
                self._last_fsync = now
        except OSError:
            try:
                os.ftruncate(self._fd, pos)
            except OSError:
                logger.exception("outbox %s: cannot cut back a failed append", self.path)
            raise
        self.appended += len(records)

    def _truncate_torn(self) -> None:
        """Cut a torn last record off before appending.

        Records after it would be unreadable.
        """
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        _records, end = self._scan()
        if end < size:
            with open(self.path, "r+b") as fh:
                fh.truncate(end)

    def _records(self) -> list[dict[str, Any]]:
        return self._scan()[0]

    def _scan(self) -> tuple[list[dict[str, Any]], int]:
        up = unpacker()
        out: list[dict[str, Any]] = []
        end = size = 0
        try:
            with open(self.path, "rb") as fh:
                while chunk := fh.read(1 << 20):  # memory bounded by a record, not the file
                    size += len(chunk)
                    up.feed(chunk)
                    for record in up:
                        if not (isinstance(record, dict) and isinstance(record.get("name"), str)
                                and isinstance(record.get("doc"), bytes)):
                            raise DecodeError("not an outbox record")
                        out.append(record)
                        end = up.tell()
        except FileNotFoundError:
            return [], 0
        except (ValueError, DecodeError, msgpack.BufferFull):
            size = max(size, end + 1)
        if end < size:
            self.torn += 1
            logger.warning("outbox %s: torn or corrupt last record dropped (%d bytes)",
                           self.path, size - end)
        return out, end

    def _sent(self) -> int:
        try:
            return int(self.sent_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _mark_sent(self, n: int) -> None:
        tmp = self.sent_path.with_suffix(".tmp")
        tmp.write_text(str(n))
        os.replace(tmp, self.sent_path)

    def drain(self, send: Any, chunk: int = 500) -> int:
        """Send every waiting record with ``send(list_of_records)``, ``chunk`` at a time.

        ``send`` raises if the broker is unreachable. Returns how many were sent. On
        success the outbox is empty (files removed); on failure what is left stays.
        """
        self.close()
        records = self._records()
        done = self._sent()
        sent = 0
        while done < len(records):
            batch = records[done:done + chunk]
            send(batch)
            done += len(batch)
            sent += len(batch)
            self._mark_sent(done)
        self.path.unlink(missing_ok=True)
        self.sent_path.unlink(missing_ok=True)
        return sent

    def close(self) -> None:
        """Fsync and close the file (the next append reopens it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
