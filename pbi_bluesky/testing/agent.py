"""``pbi agent`` as a subprocess following a queue stack, for the demo, tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pbi_bluesky.agent import DEFAULT_POLICY_FILE
from pbi_bluesky.testing.launch import die_with_parent
from pbi_bluesky.testing.qserver import QueueStack

__all__ = ["AgentProcess"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class AgentProcess:
    """Run ``pbi agent`` as a subprocess following a :class:`QueueStack`.

    Its log and status file are in ``workdir``; :meth:`kill` is a SIGKILL, to test restarts.

    Parameters
    ----------
    stack : QueueStack
        The queue server, Redis and Tiled the agent works with.
    workdir : str or Path
        Folder for the agent's log and status file.
    policy : str or Path
        The rescan policy file (``--policy``).
    poll_s : float
        Seconds between steps (``--poll``).
    since : float, optional
        Follow analysis runs from this time (epoch s).
    feed : bool
        ``False`` polls Tiled only (``--no-feed``).
    raw_wait_s : float, optional
        Bound on the wait for a flagged run's raw run (``--raw-wait``).
    lease : bool
        Hold the standby lease (``--lease``).
    feed_url : str, optional
        Overrides the stack's verdict feed.
    """

    def __init__(self, stack: QueueStack, workdir: str | Path, *,
                 policy: str | Path = DEFAULT_POLICY_FILE, poll_s: float = 0.5,
                 since: float | None = None, feed: bool = True,
                 raw_wait_s: float | None = None, lease: bool = False,
                 feed_url: str | None = None) -> None:
        self.stack, self.policy, self.poll_s = stack, Path(policy), float(poll_s)
        self.feed, self.raw_wait_s = feed, raw_wait_s
        self.lease, self.feed_url = lease, feed_url
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.status_path = self.workdir / "agent_status.json"
        self.log_path = self.workdir / "agent.log"
        self.since = since
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """Return the ``pbi agent`` command line (no secret on it)."""
        cmd = [sys.executable, "-m", "pbi_bluesky.cli", "queue", "agent",
               "--queue", self.stack.zmq_control_addr, "--config", str(self.stack.config_path),
               "--policy", str(self.policy), "--poll", str(self.poll_s),
               "--status-file", str(self.status_path)]
        if not self.feed:
            cmd.append("--no-feed")
        if self.feed_url:
            cmd += ["--feed-url", self.feed_url]
        if self.lease:
            cmd.append("--lease")
        if self.raw_wait_s is not None:
            cmd += ["--raw-wait", str(self.raw_wait_s)]
        if self.since is not None:
            from datetime import datetime

            cmd += ["--since", datetime.fromtimestamp(self.since).isoformat()]
        return cmd

    def start(self) -> AgentProcess:
        """Start the agent and return self."""
        self.status_path.unlink(missing_ok=True)
        env = {**self.stack.agent_env(), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT),
                                                         os.environ.get("PYTHONPATH")) if p)}
        env.pop("PBI_BEAMLINE_CONFIG", None)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log,
                                            stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True,
                                            preexec_fn=die_with_parent())
        return self

    def alive(self) -> bool:
        """Return whether the agent process is running."""
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any]:
        """Return the agent's last status (``{}`` before its first poll)."""
        try:
            return json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}

    def wait_running(self, timeout: float = 60.0, standby: bool = False) -> dict[str, Any]:
        """Wait for the first completed step (``standby``: or the agent standing by).

        Raises with the log if neither comes.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status.get("steps", 0) >= 1 or (standby and status.get("state") == "standby"):
                return status
            if not self.alive():
                break
            time.sleep(0.2)
        raise RuntimeError(f"pbi agent did not start; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        """Return the last ``n`` characters of the agent's log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "<no log>"

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the agent finishes its step); returns the exit code."""
        proc, self.process = self.process, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: the agent dies wherever it is."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
