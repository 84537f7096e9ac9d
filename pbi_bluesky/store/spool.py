"""A local, append-only spool in front of a document writer (Tiled), so nothing is lost.

Every document of a run is appended to ``<spool>/pending/<run uid>.jsonl`` *before* it
is forwarded to the downstream writer. When the run's stop document has been written
downstream, the file moves to ``<spool>/done/``. If the downstream writer fails (Tiled is
down), the run stays pending and no further documents of that run are forwarded;
:meth:`SpoolSink.replay` (or ``pbi replay-spool``) later deletes any partial copy from
the catalog and writes the whole run again. Arrays are stored losslessly (base64).
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SpoolSink", "encode_doc", "decode_doc", "read_spool_file"]

logger = logging.getLogger(__name__)

Writer = Callable[[str, dict], Any]


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        data = np.ascontiguousarray(obj)
        return {"__ndarray__": base64.b64encode(data.tobytes()).decode("ascii"),
                "dtype": data.dtype.str, "shape": list(data.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(obj)).decode("ascii")}
    raise TypeError(f"cannot spool {type(obj).__name__}")


def _hook(obj: dict) -> Any:
    if "__bytes__" in obj:
        return base64.b64decode(obj["__bytes__"])
    if "__ndarray__" in obj:
        raw = base64.b64decode(obj["__ndarray__"])
        return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
    return obj


def encode_doc(name: str, doc: dict) -> str:
    """One spool line."""
    return json.dumps({"name": name, "doc": doc}, default=_default)


def decode_doc(line: str) -> tuple[str, dict]:
    """Inverse of :func:`encode_doc`."""
    record = json.loads(line, object_hook=_hook)
    return record["name"], record["doc"]


def read_spool_file(path: str | Path) -> list[tuple[str, dict]]:
    """All documents of one spooled run, in order."""
    with open(path) as fh:
        return [decode_doc(line) for line in fh if line.strip()]


class SpoolSink:
    """Spool documents locally, then forward them to ``writer_factory()``'s writer.

    Parameters
    ----------
    spool_dir
        Folder for the spool (``pending/`` and ``done/`` inside).
    writer_factory
        Returns a fresh downstream writer (e.g. ``lambda: TiledWriter(runs)``); called
        lazily and again after failures, so a server that comes back is picked up.
    delete_partial
        Called with a run uid before a replay, to remove a partial copy downstream.
    """

    def __init__(
        self,
        spool_dir: str | Path,
        writer_factory: Callable[[], Writer] | None,
        *,
        delete_partial: Callable[[str], None] | None = None,
    ) -> None:
        self.root = Path(spool_dir)
        (self.root / "pending").mkdir(parents=True, exist_ok=True)
        (self.root / "done").mkdir(parents=True, exist_ok=True)
        self.writer_factory = writer_factory
        self.delete_partial = delete_partial
        self._writer: Writer | None = None
        self._run_of: dict[str, str] = {}  # descriptor / resource uid -> run uid
        self._failed: set[str] = set()
        self._lock = threading.Lock()

    def _run_uid(self, name: str, doc: dict) -> str | None:
        if name == "start":
            return doc["uid"]
        if name in ("descriptor", "stop", "resource", "stream_resource"):
            run = doc.get("run_start")
            if name in ("descriptor", "resource", "stream_resource") and run:
                self._run_of[doc["uid"]] = run
            return run
        if name in ("event", "event_page", "stream_datum", "stream_datum_page"):
            return self._run_of.get(doc.get("descriptor", ""))
        if name in ("datum", "datum_page"):
            return self._run_of.get(doc.get("resource", ""))
        return None

    def pending(self) -> list[str]:
        """Run uids whose documents are not (completely) downstream yet."""
        return sorted(p.stem for p in (self.root / "pending").glob("*.jsonl"))

    def __call__(self, name: str, doc: dict) -> None:
        with self._lock:
            run = self._run_uid(name, doc)
            if run is None:
                logger.warning("spool: cannot tell which run a %s document belongs to", name)
                return
            path = self.root / "pending" / f"{run}.jsonl"
            with path.open("a") as fh:
                fh.write(encode_doc(name, doc) + "\n")
            if run in self._failed or self.writer_factory is None:
                return
            try:
                if self._writer is None:
                    self._writer = self.writer_factory()
                self._writer(name, doc)
            except Exception as exc:  # noqa: BLE001 - the spool keeps everything
                self._failed.add(run)
                self._writer = None
                logger.warning("spool: downstream writer failed on %s of run %s (%s); the "
                               "run stays in %s for replay", name, run[:8], exc, path.parent)
                return
            if name == "stop":
                shutil.move(str(path), self.root / "done" / path.name)

    def replay(self) -> dict[str, str]:
        """Write every pending run downstream again; returns {run uid: outcome}."""
        outcomes: dict[str, str] = {}
        with self._lock:
            for path in sorted((self.root / "pending").glob("*.jsonl")):
                run = path.stem
                docs = read_spool_file(path)
                if not docs or docs[-1][0] != "stop":
                    outcomes[run] = "incomplete (no stop document yet)"
                    continue
                try:
                    if self.delete_partial is not None:
                        self.delete_partial(run)
                    writer = self.writer_factory() if self.writer_factory else None
                    if writer is None:
                        raise RuntimeError("no downstream writer configured")
                    for name, doc in docs:
                        writer(name, doc)
                except Exception as exc:  # noqa: BLE001
                    outcomes[run] = f"failed: {exc}"
                    continue
                shutil.move(str(path), self.root / "done" / path.name)
                self._failed.discard(run)
                outcomes[run] = "written"
        return outcomes
