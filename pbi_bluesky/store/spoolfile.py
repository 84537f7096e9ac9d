"""The spool's file format: one file of msgpack records per run, read back whole or torn.

A record is ``{"name": <document name>, "doc": <document>}`` encoded by
:mod:`pbi_bluesky.codec` (arrays as raw bytes, never pickle). A file is named after its
run's uid when that is a safe file name (:func:`spool_stem`); a crash mid-append leaves a
torn last record, which :func:`read_spool_file` drops and reports. :mod:`.spool` writes
and forwards these files; this module only knows their format.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pbi_bluesky.store.recordlog import Scan, fsync_dir

__all__ = ["SUFFIX", "SpoolFile", "abort_stop", "fsync_dir", "is_spool_record", "read_spool_file",
           "spool_stem"]

SUFFIX = ".spool"


@dataclass
class SpoolFile:
    """What a spool file holds."""

    docs: list[tuple[str, dict]]
    torn: bool = False
    """The last record was cut off (a crash while appending) and was dropped."""
    error: str = ""


def is_spool_record(record: object) -> bool:
    """Whether a decoded record is a spool record (``{"name": str, "doc": dict}``)."""
    return (isinstance(record, dict) and isinstance(record.get("name"), str)
            and isinstance(record.get("doc"), dict))


def read_spool_file(path: str | Path) -> SpoolFile:
    """Read all complete documents of one spooled run, in order.

    Never raises for a torn or corrupt tail, or a record too large to read (reported in
    :attr:`SpoolFile.torn` / :attr:`SpoolFile.error`). The file is read by the record
    log's :class:`~pbi_bluesky.store.recordlog.Scan` (memory bounded by a record).
    """
    scan = Scan(path, valid=is_spool_record)
    docs = [(record["name"], record["doc"]) for _, _, record in scan]
    return SpoolFile(docs, torn=scan.torn, error=scan.error)


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
