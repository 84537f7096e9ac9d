"""The spool's file format: one file of msgpack records per run, read back whole or torn.

A record is ``{"name": <document name>, "doc": <document>}`` encoded by
:mod:`pbi_bluesky.codec` (arrays as raw bytes, never pickle). A file is named after its
run's uid when that is a safe file name (:func:`spool_stem`); a crash mid-append leaves a
torn last record, which :func:`read_spool_file` drops and reports. :mod:`.spool` writes
and forwards these files; this module only knows their format.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from pbi_bluesky.codec import DecodeError, unpacker

__all__ = ["SUFFIX", "SpoolFile", "abort_stop", "fsync_dir", "read_spool_file", "spool_stem"]

SUFFIX = ".spool"


@dataclass
class SpoolFile:
    """What a spool file holds."""

    docs: list[tuple[str, dict]]
    torn: bool = False
    """The last record was cut off (a crash while appending) and was dropped."""
    error: str = ""


READ_CHUNK = 1 << 20
"""Bytes fed to the unpacker at a time when reading a spool file (its memory stays bounded
by the largest record, not by the file)."""


def read_spool_file(path: str | Path) -> SpoolFile:
    """Read all complete documents of one spooled run, in order.

    Never raises for a torn or corrupt tail, or a record too large to read (reported in
    :attr:`SpoolFile.torn` / :attr:`SpoolFile.error`).
    """
    docs: list[tuple[str, dict]] = []
    up = unpacker()
    end = 0  # byte offset just after the last complete record
    size = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(READ_CHUNK):
                size += len(chunk)
                up.feed(chunk)
                for record in up:
                    if not (isinstance(record, dict) and isinstance(record.get("name"), str)
                            and isinstance(record.get("doc"), dict)):
                        return SpoolFile(docs, torn=True, error="corrupt record dropped")
                    docs.append((record["name"], record["doc"]))
                    end = up.tell()
    except OSError as exc:
        return SpoolFile(docs, error=f"cannot read {path}: {exc}")
    except msgpack.BufferFull:
        return SpoolFile(docs, torn=True, error=f"a record at byte {end} is larger than the "
                         "reader's buffer: it and the rest of the file dropped")
    except (ValueError, DecodeError) as exc:
        return SpoolFile(docs, torn=True, error=f"corrupt record dropped: {exc}")
    # bytes after the last complete record: a torn append
    torn = end < size
    return SpoolFile(docs, torn=torn, error="torn last record dropped" if torn else "")


_SAFE_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def spool_stem(run: str) -> str:
    """Return the spool file name of a run.

    Its uid when that is a safe file name (no path separator, no '..'), else a digest
    of it.
    """
    if _SAFE_UID.fullmatch(run) and ".." not in run:
        return run
    return "unsafe-" + hashlib.sha256(run.encode("utf-8", "replace")).hexdigest()[:40]


def abort_stop(start: dict[str, Any]) -> dict[str, Any]:
    """Compose the ``exit_status="abort"`` stop of a run whose writer died before its stop."""
    return {"uid": str(uuid.uuid4()), "run_start": start["uid"], "time": time.time(),
            "exit_status": "abort",
            "reason": "pbi spool: the run ended without a stop document (its writer process "
                      "crashed or was killed); closed on replay",
            "num_events": {}}


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
