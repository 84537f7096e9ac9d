"""The one process launcher: a service, an IOC or an agent as a subprocess on loopback.

:class:`Process` starts a command with its log in a file, polls :meth:`Process.ready` until
the process answers, and always stops it (``stop()``, the context manager, or at interpreter
exit); ``kill()`` injects a crash and ``restart()`` keeps the port. Subclasses name the
command, the environment and the readiness probe (the pattern of ``ophyd_async.testing``:
one small helper every fixture builds on).
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pbi_bluesky.infra.ports import free_port, port_open

__all__ = ["Process", "ServiceError", "die_with_parent", "find_binary", "free_port",
           "port_open", "redact", "write_private"]

logger = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A service did not start; the message carries the end of its log."""


def find_binary(name: str) -> str:
    """Find an executable beside this interpreter (the venv's ``bin/``), else on ``PATH``."""
    here = Path(sys.executable).with_name(name)
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"{name} not found next to {sys.executable} or on PATH")
    return found


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """Return a ``preexec_fn`` for :class:`subprocess.Popen` tying the child to its parent.

    The child gets SIGKILL when the process that started it dies, however it dies (SIGKILL
    included).

    Linux only (``prctl(PR_SET_PDEATHSIG)``), and only when called on the main thread: the
    kernel sends the signal when the *thread* that forked exits, so a child started from a
    short-lived thread would be killed with that thread. Elsewhere returns ``None`` (no
    ``preexec_fn``; the child is stopped by ``stop()`` or at exit only).
    """
    if not sys.platform.startswith("linux") or \
            threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: do not outlive it
            os._exit(1)

    return preexec


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, readable by its owner only (mode 0600).

    For a service's settings with a password in them, which must never go on a command line.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # also when the file was there already
        out.write(text)
    return path


def redact(text: str, secrets: list[str] | tuple[str, ...]) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _pump(stream: IO[bytes], log_path: Path, secrets: tuple[str, ...]) -> None:
    """Copy a child's output into its log, line by line, with the secrets redacted."""
    encoded = [s.encode() for s in secrets if s]
    with stream, open(log_path, "ab") as log:
        for line in iter(stream.readline, b""):
            for secret in encoded:
                line = line.replace(secret, b"***")
            log.write(line)
            log.flush()


class Process:
    """A subprocess with a log file, stopped at exit.

    Parameters
    ----------
    workdir
        Folder for the log and the service's data; default a new ``tempfile.mkdtemp``
        folder, removed by :meth:`stop` (a given folder is kept).
    """

    name = "service"

    def __init__(self, workdir: str | Path | None = None) -> None:
        self._temporary = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"pbi-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._pump: threading.Thread | None = None
        atexit.register(self.stop)

    def secrets(self) -> list[str]:
        """Strings never written to the log (replaced by ``***``); none by default."""
        return []

    def command(self) -> list[str]:
        """Return the command line to run (no secret on it)."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Return the environment of the process (secrets go here, not on the command line)."""
        return dict(os.environ)

    def ready(self) -> bool:
        """Return whether the service answers (by default: its port accepts connections)."""
        return port_open(self.port)

    def log_tail(self, n: int = 3000) -> str:
        """Return the last ``n`` characters of the log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "<no log>"

    def start(self, timeout: float = 60.0) -> Process:
        """Start the process and wait until it is ready; return self."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        secrets = tuple(s for s in self.secrets() if s)
        command = self.command()
        leaked = [i for i, arg in enumerate(command) if redact(arg, secrets) != arg]
        if leaked:
            raise ServiceError(f"{self.name}: a secret is on the command line (argument "
                               f"{leaked[0]}); pass it in the environment")
        if secrets:  # the output goes through a pump that redacts them
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, env=self.env(),
                                            cwd=self.workdir, start_new_session=True,
                                            preexec_fn=die_with_parent())
            self._pump = threading.Thread(target=_pump, name=f"{self.name}-log", daemon=True,
                                          args=(self.process.stdout, self.log_path, secrets))
            self._pump.start()
        else:
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(command, stdout=log,
                                                stderr=subprocess.STDOUT, env=self.env(),
                                                cwd=self.workdir, start_new_session=True,
                                                preexec_fn=die_with_parent())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._join_pump()  # the whole log first
                raise ServiceError(f"{self.name} exited with {self.process.returncode}; "
                                   f"log:\n{self.log_tail()}")
            if self.ready():
                logger.info("%s up on 127.0.0.1:%d", self.name, self.port)
                return self
            time.sleep(0.1)
        self._terminate()
        message = f"{self.name} not ready within {timeout:g} s; log:\n{self.log_tail()}"
        self.stop()
        raise ServiceError(message)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout`` s).

        A working folder made by the launcher itself is removed.
        """
        self._terminate(timeout)
        if self._temporary:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _terminate(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        try:
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
        finally:
            self._join_pump()

    def _join_pump(self) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.join(5.0)

    def kill(self) -> None:
        """SIGKILL (no clean shutdown), to inject a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None
        self._join_pump()

    def restart(self, timeout: float = 60.0) -> Process:
        """Stop and start again: same port, same folder, same data."""
        self._terminate()
        return self.start(timeout)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
