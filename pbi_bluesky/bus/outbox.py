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
        self._fh: Any = None
        self._last_fsync = 0.0
        self.appended = 0
        self.torn = 0

    def __len__(self) -> int:
        """Records not yet sent (reads the file)."""
        return max(0, len(self._records()) - self._sent())

    @property
    def pending(self) -> bool:
        """Whether anything is waiting (cheap: no read)."""
        return self.path.exists() and self.path.stat().st_size > 0

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append records (each ``{"run", "name", "doc"}``) durably, in order."""
        if not records:
            return
        if self._fh is None:
            self._truncate_torn()
            self._fh = open(self.path, "ab")
        for record in records:
            self._fh.write(msgpack.packb(record, use_bin_type=True))
        self._fh.flush()
        now = time.monotonic()
        if now - self._last_fsync >= self.fsync_interval:
            os.fsync(self._fh.fileno())
            self._last_fsync = now
        self.appended += len(records)

    def _truncate_torn(self) -> None:
        """Cut a torn last record off before appending (records after it would be
        unreadable)."""
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
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], 0
        up = unpacker()
        up.feed(data)
        out: list[dict[str, Any]] = []
        end = 0
        try:
            for record in up:
                if not (isinstance(record, dict) and isinstance(record.get("name"), str)
                        and isinstance(record.get("doc"), bytes)):
                    break
                out.append(record)
                end = up.tell()
        except (ValueError, DecodeError):
            pass
        if end < len(data):
            self.torn += 1
            logger.warning("outbox %s: torn or corrupt last record dropped (%d bytes)",
                           self.path, len(data) - end)
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
        """Send every waiting record with ``send(list_of_records)`` (which raises if the
        broker is unreachable), ``chunk`` at a time; returns how many were sent. On
        success the outbox is empty (files removed); on failure what is left stays."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
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
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
