"""Downstream writers for the spool tests: one that keeps documents, one that hangs."""

from __future__ import annotations

import threading
from collections.abc import Callable


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
