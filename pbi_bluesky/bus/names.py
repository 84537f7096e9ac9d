"""Redis key names of one beamline's document bus, and the broker connection.

Only the documents stream follows the facility's layout (NSLS-II's Kafka topics):
``{beamline}.bluesky.runengine.documents``, each entry keyed by its run's start uid. The
rest is this package's own working state, under ``{beamline}.pbi.``:

==============================  ===============================================================
``….pbi.frames``                 per-frame work items (consumer group ``pbi-scorers``)
``….pbi.results``                notifications: a run began, a frame's result is in, a run ended
``….pbi.dead``                   dead letters: the entry, where it came from, why
``….pbi.run.<uid>``              the run ledger: context documents, frame counts, state
``….pbi.run.<uid>.results``      results by frame key (``<stream>/<seq_num>``): write-once
``….pbi.run.<uid>.parts``        parts of frames not yet complete (the dispatcher's join)
``….pbi.run.<uid>.emitted``      frame keys already dispatched (duplicate documents)
``….pbi.run.<uid>.datums``       Datum documents by datum id
``….pbi.open``                   runs not yet closed
``….pbi.cells`` / ``background``  empty-cell frames not yet resolved, and the resolved background
``….pbi.coordinator``            the coordinator lease (one worker dispatches and assembles)
``….pbi.stats`` / ``errors``      counters; last unexpected error per work item
``….pbi.workers``                worker name -> time of its last heartbeat
``….pbi.publisher.<token>``      the last sequence number taken from one publisher (dedupe)
==============================  ===============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["COORDINATOR_GROUP", "PASSWORD_ENV", "SCORER_GROUP", "BusNames", "connect",
           "frame_key"]

PASSWORD_ENV = "PBI_REDIS_PASSWORD"
"""Where bus clients find the broker's password by default (``bus.password_env``)."""

COORDINATOR_GROUP = "pbi-coordinator"
"""The coordinator's group on the documents and results streams (one consumer at a time)."""
SCORER_GROUP = "pbi-scorers"
"""The scorer workers' group on the frames stream."""


def frame_key(stream: str, seq_num: int) -> str:
    """Return the identity of a frame within its raw run: bluesky numbers events per stream."""
    return f"{stream}/{int(seq_num)}"


@dataclass(frozen=True)
class BusNames:
    """Key names for one beamline (see the module docstring)."""

    beamline: str

    def __post_init__(self) -> None:
        if not self.beamline or any(c.isspace() for c in self.beamline):
            raise ValueError(f"beamline name {self.beamline!r} must be a non-empty word")

    @property
    def documents(self) -> str:
        """The documents stream, in the facility's layout (entries keyed by start uid)."""
        return f"{self.beamline}.bluesky.runengine.documents"

    def _pbi(self, suffix: str) -> str:
        return f"{self.beamline}.pbi.{suffix}"

    @property
    def frames(self) -> str:
        """Per-frame work items (consumer group ``pbi-scorers``)."""
        return self._pbi("frames")

    @property
    def results(self) -> str:
        """Notifications: a run began, a frame's result is in, a run ended."""
        return self._pbi("results")

    @property
    def dead(self) -> str:
        """Dead letters: the entry, where it came from, why."""
        return self._pbi("dead")

    @property
    def open_runs(self) -> str:
        """Runs not yet closed."""
        return self._pbi("open")

    @property
    def cells(self) -> str:
        """Empty-cell frames, in order."""
        return self._pbi("cells")

    @property
    def background(self) -> str:
        """The resolved background."""
        return self._pbi("background")

    @property
    def lease(self) -> str:
        """The coordinator lease (one worker dispatches and assembles)."""
        return self._pbi("coordinator")

    @property
    def stats(self) -> str:
        """Counters."""
        return self._pbi("stats")

    @property
    def workers(self) -> str:
        """Worker name -> time of its last heartbeat."""
        return self._pbi("workers")

    @property
    def errors(self) -> str:
        """Last unexpected error per work item."""
        return self._pbi("errors")

    @property
    def cursor(self) -> str:
        """Last results-stream entry the assembler has written."""
        return self._pbi("assembler.cursor")

    def publisher(self, token: str) -> str:
        """Return the key of the last sequence number the broker took from a publisher."""
        return self._pbi(f"publisher.{token}")

    def run(self, uid: str) -> str:
        """Return the run ledger's key: context documents, frame counts, state."""
        return self._pbi(f"run.{uid}")

    def run_results(self, uid: str) -> str:
        """Return the key of a run's results by frame key (write-once)."""
        return self._pbi(f"run.{uid}.results")

    def run_parts(self, uid: str) -> str:
        """Return the key of a run's parts of frames not yet complete (the dispatcher's join)."""
        return self._pbi(f"run.{uid}.parts")

    def run_emitted(self, uid: str) -> str:
        """Return the key of a run's frame keys already dispatched (duplicate documents)."""
        return self._pbi(f"run.{uid}.emitted")

    def run_datums(self, uid: str) -> str:
        """Return the key of a run's Datum documents by datum id."""
        return self._pbi(f"run.{uid}.datums")

    def run_keys(self, uid: str) -> list[str]:
        """Every key of one run (for expiry once it is closed)."""
        return [self.run(uid), self.run_results(uid), self.run_parts(uid),
                self.run_emitted(uid), self.run_datums(uid)]


def connect(url: str, *, socket_timeout: float = 5.0, connect_timeout: float = 2.0,
            password_env: str | None = PASSWORD_ENV) -> Any:
    """Return a Redis client (binary replies) with bounded timeouts.

    A broker that is down is an error after ``connect_timeout`` seconds, never a hang.

    Parameters
    ----------
    url : str
        ``redis://host:port/db``; a password in it is used, but the URL is then a secret
        (logs show it through :func:`pbi_bluesky.infra.secrets.redact_url`).
    socket_timeout, connect_timeout : float
        Seconds.
    password_env : str, optional
        Environment variable holding the broker's password (``bus.password_env``, default
        ``PBI_REDIS_PASSWORD``); unset or empty: no password (unless the URL has one).
    """
    import redis

    from pbi_bluesky.infra.secrets import env_secret

    kwargs: dict[str, Any] = {}
    password = env_secret(password_env)
    if password is not None:
        kwargs["password"] = password
    return redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                socket_connect_timeout=connect_timeout,
                                health_check_interval=10, decode_responses=False, **kwargs)
