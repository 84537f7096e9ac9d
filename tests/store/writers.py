"""Downstream writers for the spool tests (one that keeps documents, one that refuses
events, one that hangs) and a spool disk that fills up."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable

from pbi_bluesky.store.recordlog import RecordLog


class Memory:
    """A downstream writer that keeps documents (and can be 'down')."""

    def __init__(self):
        self.up = True
        self.error: Exception = ConnectionError("downstream is down")
        self.docs: list[tuple[str, dict]] = []
        self.deleted: list[str] = []

    def factory(self):
        if not self.up:
            raise self.error
        return self

    def __call__(self, name, doc):
        if not self.up:
            raise self.error
        self.docs.append((name, doc))

    def delete(self, uid):
        self.deleted.append(uid)
        self.docs = [(n, d) for n, d in self.docs if d.get("uid") != uid
                     and d.get("run_start") != uid]

    def delete_run(self, uid):
        """Delete every document of a run (events through their descriptors), as
        ``Catalog.delete_partial`` does in Tiled."""
        self.deleted.append(uid)
        descs = {d["uid"] for n, d in self.docs if n == "descriptor" and d["run_start"] == uid}
        self.docs = [(n, d) for n, d in self.docs if d.get("uid") != uid
                     and d.get("run_start") != uid and d.get("descriptor") not in descs]

    def of_run(self, uid):
        """The (name, uid) of each document of one run downstream, in order."""
        descs = {d["uid"] for n, d in self.docs if n == "descriptor" and d["run_start"] == uid}
        return [(n, d["uid"]) for n, d in self.docs
                if d.get("uid") == uid or d.get("run_start") == uid
                or d.get("descriptor") in descs]

    def runs(self):
        return {d["uid"] for n, d in self.docs if n == "start"}

    def stop_of(self, uid):
        return next(d for n, d in self.docs if n == "stop" and d["run_start"] == uid)


class RefusingEvents(Memory):
    """A writer that refuses every event for its content (as Tiled refuses a wrong shape)."""

    def __call__(self, name, doc):
        if name == "event":
            raise ValueError("operands could not be broadcast together")
        super().__call__(name, doc)


class FullDisk:
    """The spool's disk: while ``full``, appends and new spool files fail with ENOSPC (what a
    disk out of blocks or inodes does). ``restore()`` puts the real methods back; with
    ``monkeypatch`` the test does."""

    def __init__(self, monkeypatch=None) -> None:
        self.full = False
        self.real = RecordLog.open, RecordLog.append
        real_open, real_append = self.real
        disk = self

        def open_(log, **kwargs):
            if disk.full and not log.path.exists():
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(log, **kwargs)

        def append(log, data, **kwargs):
            if disk.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_append(log, data, **kwargs)

        if monkeypatch is not None:
            monkeypatch.setattr(RecordLog, "open", open_)
            monkeypatch.setattr(RecordLog, "append", append)
        else:
            RecordLog.open, RecordLog.append = open_, append

    def restore(self) -> None:
        RecordLog.open, RecordLog.append = self.real


def blocked_factory(mem: Memory) -> tuple[Callable, threading.Event, threading.Event]:
    """A writer factory whose writers hang on every document until ``release`` is set
    (``entered`` is set when the first document arrives), then keep it in ``mem``."""
    entered, release = threading.Event(), threading.Event()

    def factory():
        def write(name, doc):
            entered.set()
            release.wait(30)
            mem(name, doc)
        return write

    return factory, entered, release
