"""The publisher's local outbox: documents kept on disk while the broker is unreachable.

One append-only file of msgpack records (``{"run", "name", "doc", "pub", "seq"}``: the
document already encoded by :mod:`pbi_bluesky.codec`, and the publisher's token and sequence
number that let the broker refuse a repeat; files of earlier versions lack the last two),
flushed to the operating system after every batch and
fsynced at most every ``fsync_interval`` seconds. Sending it resumes where the last attempt
stopped: the number of records already on the broker is kept beside it
(``<name>.sent``, written atomically). A torn last record (a crash while appending) is
dropped and reported. Once everything is sent both files are removed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import msgpack

from pbi_bluesky.store.recordlog import RecordLog, Scan

__all__ = ["Outbox"]

logger = logging.getLogger(__name__)


def _is_outbox_record(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("name"), str)
            and isinstance(record.get("doc"), bytes))


class Outbox:
    """Records waiting for the broker, in order, in the spool's record log format.

    The file is a :class:`~pbi_bluesky.store.recordlog.RecordLog` (appends whole or not at
    all, group-committed fsyncs, a torn tail cut off before appending, bounded by
    ``max_bytes``) read back by its :class:`~pbi_bluesky.store.recordlog.Scan` one record
    at a time, so draining a large outbox holds one chunk in memory, not the file.

    Parameters
    ----------
    path
        The outbox file (its folder is created).
    fsync_interval
        Longest time between fsyncs (the power-cut loss bound), seconds.
    max_bytes
        Bound on the outbox file; past it :meth:`append` raises
        :class:`~pbi_bluesky.store.recordlog.LogFull` (the publisher keeps the batch in
        memory and retries). ``None``: unbounded.
    """

    def __init__(self, path: str | Path, *, fsync_interval: float = 0.2,
                 max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.sent_path = self.path.with_suffix(self.path.suffix + ".sent")
        self.fsync_interval = float(fsync_interval)
        self._log = RecordLog(self.path, fsync_interval=fsync_interval, max_bytes=max_bytes)
        self.appended = 0
        self._torn = 0
        if self.sent_path.exists() and not self.path.exists():
            # a count whose outbox is gone (a crash between the two removals of an older
            # version): it would make the next outbox's first records count as sent
            logger.warning("outbox %s: dropping the sent count of an outbox that is gone",
                           self.path)
            self.sent_path.unlink(missing_ok=True)

    @property
    def torn(self) -> int:
        """Torn or corrupt tails dropped so far (what a crash while appending leaves)."""
        return self._torn + self._log.cut

    def __len__(self) -> int:
        """Return the number of records not yet sent (reads the file)."""
        return max(0, sum(1 for _ in self._scan()) - self._sent())

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
        data = b"".join(msgpack.packb(record, use_bin_type=True) for record in records)
        self._log.append(data)
        self.appended += len(records)

    def _scan(self) -> Any:
        """Yield the complete records in order; a torn tail is counted and reported."""
        scan = Scan(self.path, valid=_is_outbox_record)
        for _, _, record in scan:
            yield record
        if scan.torn:
            self._torn += 1
            logger.warning("outbox %s: %s", self.path, scan.error)

    def _records(self) -> list[dict[str, Any]]:
        """Return every complete record (the whole file in memory: for tests and tools)."""
        return list(self._scan())

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
        done = self._sent()
        seen = sent = 0
        batch: list[dict[str, Any]] = []
        for record in self._scan():
            seen += 1
            if seen <= done:
                continue  # on the broker already (an earlier, partial drain)
            batch.append(record)
            if len(batch) >= chunk:
                send(batch)
                sent += len(batch)
                self._mark_sent(done + sent)
                batch = []
        if batch:
            send(batch)
            sent += len(batch)
            self._mark_sent(done + sent)
        # the count first: a crash between the two removals then resends the outbox (the
        # broker refuses the repeats by their sequence numbers) instead of leaving a count
        # that would skip the next outbox's records
        self.sent_path.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)
        return sent

    def close(self) -> None:
        """Fsync and close the file (the next append reopens it)."""
        self._log.close()
