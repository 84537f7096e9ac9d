"""Per-run journals: a spooled run the disk refused documents of is replayed from memory.

A :class:`~pbi_bluesky.store.spool.SpoolSink` writes every document of a run to the run's
spool file, and a replay (:mod:`.replay`) writes a failed run downstream again from that
file. A full disk breaks that: a document the disk refused is forwarded from memory, but
if the run's writer then fails too (Tiled down at the same moment), the file replay
misses it, and a run whose start never reached the disk has no usable file at all.

So a run gets a :class:`Journal` at its first refused document: the ordered list of all
its records, each either a byte span of its spool file (consecutive records on disk are
one span: a few entries per run, whatever its length) or, for a record the disk refused,
its encoded bytes in memory. A replay of such a run reads the journal instead of the file;
once the run is written whole downstream the journal is dropped. Journals hold at most
``max_bytes`` of refused records in all (the spool's memory budget); a run whose refused
records do not fit loses its journal and is replayed from its file as before, with the
loss counted and its reason given.

Why a journal replayed from memory rather than "healing" the spool file (rewriting it
whole once the disk takes writes again): the disk may stay full for the rest of the
process's life, and a heal needs room for a second copy of the file, so a replay from
memory would be needed anyway; the journal is that replay, with no second path to keep
correct. The promise is "nothing lost while the process lives": a journal is memory only,
so a crash still loses the refused records (the file replay then counts them as today).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pbi_bluesky.codec import decode_document
from pbi_bluesky.store.recordlog import READ_CHUNK, Scan
from pbi_bluesky.store.spoolfile import is_spool_record

__all__ = ["Journal", "JournalError", "Journals"]


class JournalError(OSError):
    """The spool file no longer holds the records a journal points at."""


@dataclass
class Journal:
    """The ordered records of one run: spans of its spool file and refused records.

    Parameters
    ----------
    path
        The run's spool file (in ``pending/``).
    """

    path: Path
    entries: list[list[int] | bytes] = field(default_factory=list)
    """``[start, end]`` byte spans of the file, or one refused record's encoded bytes."""
    held: int = 0
    """Bytes of refused records kept in memory."""
    closed: bool = False
    """The run's stop document was taken: the journal is complete."""

    def on_disk(self, offset: int, length: int) -> None:
        """Add a record written to the file at ``offset`` (joined to the last span)."""
        last = self.entries[-1] if self.entries else None
        if isinstance(last, list) and last[1] == offset:
            last[1] = offset + length
        else:
            self.entries.append([offset, offset + length])

    def in_memory(self, data: bytes) -> None:
        """Add a record the disk refused (its encoded bytes)."""
        self.entries.append(data)
        self.held += len(data)

    def records(self) -> Iterator[tuple[str, dict]]:
        """Yield the run's documents in order, ``(name, doc)``.

        Records on disk are streamed (memory bounded by a record). Raises
        :class:`JournalError` if the file does not hold a span whole.
        """
        for entry in self.entries:
            if isinstance(entry, bytes):
                yield decode_document(entry)
                continue
            start, end = entry
            scan = Scan(self.path, valid=is_spool_record, start=start)
            for offset, _, record in scan:
                if offset >= end:
                    break
                yield record["name"], record["doc"]
            if scan.end < end:
                raise JournalError(f"{self.path}: bytes {start}-{end} expected, the file "
                                   f"holds records up to {scan.end} ({scan.error or 'short'})")

    def raw(self) -> Iterator[bytes]:
        """Yield the run's encoded records in order (file spans in chunks): a spool file."""
        for entry in self.entries:
            if isinstance(entry, bytes):
                yield entry
                continue
            start, end = entry
            with open(self.path, "rb") as fh:
                fh.seek(start)
                while start < end:
                    chunk = fh.read(min(READ_CHUNK, end - start))
                    if not chunk:
                        raise JournalError(f"{self.path}: short at byte {start} of {end}")
                    start += len(chunk)
                    yield chunk


class Journals:
    """The journals of one spool, keyed by spool file stem, bounded in bytes.

    Parameters
    ----------
    max_bytes
        Bytes of refused records all journals together may hold in memory.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.held = 0
        """Bytes of refused records held now."""
        self.peak = 0
        self._runs: dict[str, Journal] = {}
        self._given_up: set[str] = set()

    def __contains__(self, stem: str) -> bool:
        return stem in self._runs

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._runs))

    def get(self, stem: str) -> Journal | None:
        """Return the journal of a run, if it has one."""
        return self._runs.get(stem)

    def refused(self, stem: str, path: Path, on_disk: int, data: bytes) -> str:
        """Keep a record the disk refused; returns what became of it (for the loss list).

        ``on_disk``: bytes of the run's file before it (they become the journal's first
        span when this is the run's first refused record).
        """
        if stem in self._given_up:
            return "not kept: this run's journal is over the memory budget"
        journal = self._runs.get(stem)
        if self.held + len(data) > self.max_bytes:
            earlier = ""
            if journal is not None:
                self.held -= journal.held
                del self._runs[stem]
                kept = sum(isinstance(e, bytes) for e in journal.entries)
                earlier = f", and the {kept} refused before it kept so far"
            self._given_up.add(stem)
            return (f"not kept: journals over the memory budget of {self.max_bytes} bytes; "
                    f"a replay of this run misses it{earlier}")
        if journal is None:
            journal = self._runs[stem] = Journal(path)
            if on_disk:
                journal.on_disk(0, on_disk)
        journal.in_memory(data)
        self.held += len(data)
        self.peak = max(self.peak, self.held)
        return "kept in memory: a replay of this run reads it from its journal"

    def spooled(self, stem: str, offset: int, length: int) -> None:
        """Note a record written to the file (only runs with a journal need it)."""
        journal = self._runs.get(stem)
        if journal is not None:
            journal.on_disk(offset, length)

    def close(self, stem: str) -> None:
        """Mark a run's journal complete (its stop document was taken)."""
        journal = self._runs.get(stem)
        if journal is not None:
            journal.closed = True

    def drop(self, stem: str) -> None:
        """Forget a run (written whole downstream, or set aside)."""
        journal = self._runs.pop(stem, None)
        if journal is not None:
            self.held -= journal.held
        self._given_up.discard(stem)
