"""The one process launcher: a service, an IOC or an agent as a subprocess on loopback.

:class:`Process` starts a command with its log in a file, polls :meth:`Process.ready` until
the process answers, and always stops it (``stop()``, the context manager, or at interpreter
exit); ``kill()`` injects a crash and ``restart()`` keeps the port. Subclasses name the
command, the environment and the readiness probe (the pattern of ``ophyd_async.testing``:
one small helper every fixture builds on).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pbi_bluesky.infra.ports import free_port, port_open

__all__ = ["Process", "ServiceError", "find_binary", "free_port", "port_open"]

logger = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A service did not start; the message carries the end of its log."""


def find_binary(name: str) -> str:
    """An executable beside this interpreter (the venv's ``bin/``), else on ``PATH``."""
    here = Path(sys.executable).with_name(name)
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"{name} not found next to {sys.executable} or on PATH")
    return found


class Process:
    """A subprocess with a log file, stopped at exit."""

    name = "service"

    def __init__(self, workdir: str | Path | None = None) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"pbi-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        atexit.register(self.stop)

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        return port_open(self.port)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "<no log>"

    def start(self, timeout: float = 60.0) -> Process:
        if self.process is not None and self.process.poll() is None:
            return self
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env(), cwd=self.workdir,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self.process.returncode}; "
                                   f"log:\n{self.log_tail()}")
            if self.ready():
                logger.info("%s up on 127.0.0.1:%d", self.name, self.port)
                return self
            time.sleep(0.1)
        self.stop()
        raise ServiceError(f"{self.name} not ready within {timeout:g} s; log:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (no clean shutdown), to inject a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def restart(self, timeout: float = 60.0) -> Process:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
