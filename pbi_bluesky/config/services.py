"""The service sections of ``beamline.yaml``: ``tiled``, ``scorer``, ``bus`` and ``feed``.

Where runs are written, which model scores them, and the Redis bus and verdict feed. No
secret is ever a field: each section names the environment variable its key or password
is read from, and a key, token or password in the file (or in a URL) is refused. The
hardware sections and the loader are in :mod:`pbi_bluesky.config.beamline`, which
re-exports these classes.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pbi_bluesky.config.strict import (
    Count,
    EnvName,
    KeyFault,
    NonNegative,
    Positive,
    StrictModel,
)
from pbi_bluesky.config.strict import expand_path as _expand

__all__ = ["BusConfig", "FeedConfig", "ScorerConfig", "TiledConfig"]


def _refuse_secret_keys(data: Any, keys: tuple[str, ...], hint: str) -> Any:
    if isinstance(data, dict):
        found = sorted(str(k) for k in data if str(k).lower() in keys)
        if found:
            raise KeyFault(found[0], f"secrets never live in beamline.yaml; {hint}")
    return data


def _no_credentials(url: str | None, what: str) -> str | None:
    if url is None:
        return url
    parts = urlsplit(url)
    if parts.password is not None or (parts.username and parts.scheme.startswith("http")):
        raise ValueError(f"{what} holds credentials (user:password@): secrets never live in "
                         "beamline.yaml")
    if any(k.lower() in ("api_key", "apikey", "token", "password")
           for k in parse_qs(parts.query)):
        raise ValueError(f"{what} holds a key in its query string: secrets never live in "
                         "beamline.yaml")
    return url


class TiledConfig(StrictModel):
    """Where runs are written.

    A Tiled server, or the embedded catalog when ``uri`` is null. The API key is read from
    the environment variable ``api_key_env``; it is never a field, so it appears in no
    repr, dump or log line.

    ``memory_mib`` bounds, in MiB, the documents each spool holds in memory on their way
    to Tiled and each Tiled writer's cache of events (default 256, see
    :mod:`pbi_bluesky.infra.memory`): past it the spool forwards documents from its file
    and the writer writes its cached events early. Nothing is dropped and the RunEngine
    never waits on it.
    """

    uri: str | None = None
    api_key_env: EnvName = "PBI_TILED_API_KEY"
    memory_mib: Count = 256

    @model_validator(mode="before")
    @classmethod
    def _no_key_in_file(cls, data: Any) -> Any:
        return _refuse_secret_keys(data, ("api_key", "apikey", "key", "token", "password"),
                                   "export the key in the environment variable named by "
                                   "tiled.api_key_env")

    @field_validator("uri")
    @classmethod
    def _no_credentials_in_uri(cls, uri: str | None) -> str | None:
        return _no_credentials(uri, "the Tiled URI")

    @property
    def api_key(self) -> str | None:
        """The key from the environment (never stored in, or logged from, the file)."""
        return os.environ.get(self.api_key_env) or None


class ScorerConfig(StrictModel):
    """Live-scorer settings (see :class:`pbi_bluesky.live.LiveScorer`).

    Parameters
    ----------
    model
        Model bundle folder; null: the model shipped with pbi_bluesky.
    queue_size, overflow, put_timeout_s
        The in-process scorer's bounded inbox: ``block`` waits up to ``put_timeout_s``
        for room, then sheds; ``shed`` sheds at once (every shed frame is counted).
    npt
        q bins of the reduction.
    batch_size
        Most frames reduced and scored in one pass (in-process and on each bus worker).
    data_roots
        Folders, besides the detector's read path, frame files may be read from.
    registry
        Model registry folder (``pbi model promote``): its current model, once one is
        promoted, replaces ``model`` (which stays the fallback); scorers follow it at each
        run start, never mid-run.
    """

    model: str | None = None
    registry: str | None = None
    queue_size: Count = 64
    overflow: Literal["block", "shed"] = "block"
    put_timeout_s: NonNegative = 0.5
    npt: Count = 400
    batch_size: Count = 16
    data_roots: tuple[str, ...] = ()

    _model_path = field_validator("model", "registry")(_expand)

    @field_validator("data_roots")
    @classmethod
    def _roots(cls, roots: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        return tuple(_expand(r, info) for r in roots)


class BusConfig(StrictModel):
    """The document bus shared by the ``pbi worker`` processes (:mod:`pbi_bluesky.bus`).

    Parameters
    ----------
    url
        Redis URL of the broker, e.g. ``redis://bus-host:6379/0`` (no password in it;
        ``pbi worker --broker`` overrides it per worker).
    claim_idle_s
        Seconds a work item may stay unacknowledged before another worker takes it.
    claim_every_s
        How often a worker looks for such items (default ``claim_idle_s / 2``).
    max_deliveries
        Deliveries before a work item is dead-lettered.
    lease_s
        The coordinator's lease: another worker takes over this long after it dies.
    retention_s
        How long finished runs' bus records (and dead letters) are kept.
    stream_retention_s
        How long entries every consumer group has acknowledged stay on the bus's streams
        before the coordinator trims them.
    idle_close_s
        A run with no document for this long and no stop is closed by the coordinator (a
        stop with exit status ``abort``, reason "no stop within N s", counted).
    tiled_batch
        Analysis events per Tiled write (each write cost ~0.4 s of server time here,
        whatever its size).
    password_env
        Environment variable holding the broker's password (``requirepass``), read by every
        bus client (workers, the session's publisher); unset: no password.
    """

    url: str | None = None
    claim_idle_s: Positive = 10.0
    claim_every_s: Positive | None = None
    max_deliveries: Count = 3
    lease_s: Positive = 10.0
    retention_s: Positive = 86400.0
    stream_retention_s: Positive = 600.0
    idle_close_s: Positive = 3600.0
    tiled_batch: Count = 256
    password_env: EnvName = "PBI_REDIS_PASSWORD"

    @model_validator(mode="before")
    @classmethod
    def _no_password_in_file(cls, data: Any) -> Any:
        return _refuse_secret_keys(data, ("password", "token", "key"),
                                   "give it to the workers through their environment")

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: str | None) -> str | None:
        return _no_credentials(url, "the bus URL")


class FeedConfig(StrictModel):
    """The verdict feed.

    The session publishes every analysis run's verdict to a Redis stream (usually on the
    Redis the queue server already runs) and ``pbi queue agent`` follows it
    (:mod:`pbi_bluesky.live.feed`); with ``url`` null there is no feed and the agent polls
    Tiled.

    Parameters
    ----------
    url
        Redis URL, e.g. ``redis://qserver-host:6379/0`` (no password in it: the password,
        if the server needs one, is read from the variable ``password_env``).
    stream
        Name of the stream (one per queue server; the agents' lease key is derived from it).
    maxlen
        Approximate bound of the stream (``XADD MAXLEN ~``): older verdicts are trimmed.
    password_env
        Environment variable holding the Redis password (unset: no password).
    lease_s
        The agents' lease on this Redis: a standby agent takes over this long after the
        holder dies (at most; the holder renews it every third of it).
    """

    url: str | None = None
    stream: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$")] = "pbi:verdicts"
    maxlen: Count = 10000
    password_env: EnvName = "PBI_FEED_PASSWORD"
    lease_s: Positive = 3.0

    @model_validator(mode="before")
    @classmethod
    def _no_password_in_file(cls, data: Any) -> Any:
        return _refuse_secret_keys(data, ("password", "token", "key"),
                                   "export it in the variable named by feed.password_env")

    @field_validator("url")
    @classmethod
    def _no_credentials_in_url(cls, url: str | None) -> str | None:
        return _no_credentials(url, "the feed URL")

    @property
    def password(self) -> str | None:
        """The Redis password from the environment (never stored in the file)."""
        return os.environ.get(self.password_env) or None
