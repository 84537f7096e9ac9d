"""One retry policy for the whole project: stamina, with tiled's own ``should_retry``.

Everything that talks to a service (Tiled, Redis, the queue server) retries through
:func:`retrying` or :func:`retry`, never through a hand-written backoff loop. Whether an
error is an *outage* (retry) or a *refusal* (do not) is decided in one place,
:func:`should_retry`:

* for HTTP (Tiled's client, httpx): ``tiled.client.utils.should_retry`` as tiled itself
  uses it: 5xx and 429 (with its ``Retry-After``) and transport errors are retried, other
  4xx, unsupported or malformed requests are not;
* connection and timeout errors of any stack (``ConnectionError``, ``TimeoutError``, which
  the Redis client and :class:`~pbi_bluesky.store.CatalogUnavailable` subclass or raise);
* a database that is busy or gone (``OperationalError`` of SQLAlchemy or sqlite3, e.g.
  "database is locked" from an embedded catalog) is an outage too.

Anything else (a ``KeyError`` from a writer that never saw a run, a validation error, a
404) is a refusal: retrying it would only repeat it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import stamina

__all__ = ["SERVICE", "RetryPolicy", "retry", "retrying", "should_retry"]

F = TypeVar("F", bound=Callable[..., Any])


def _operational_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.OperationalError]
    try:
        from sqlalchemy.exc import OperationalError
    except ImportError:  # pragma: no cover - SQLAlchemy comes with tiled[server]
        pass
    else:
        errors.append(OperationalError)
    return tuple(errors)


def _redis_errors() -> tuple[type[BaseException], ...]:
    try:
        from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError
    except ImportError:  # the redis client is an extra of the core install
        return ()
    return (ConnectionError, TimeoutError, BusyLoadingError)


def should_retry(exc: BaseException) -> bool | float:
    """Tell whether ``exc`` is an outage worth retrying or a refusal.

    ``True``, or the seconds to wait that a 429's ``Retry-After`` asked for, for an outage;
    ``False`` for a refusal. See the module docstring.
    """
    try:
        from tiled.client.utils import should_retry as tiled_should_retry
    except ImportError:  # pragma: no cover - tiled[client] is a core dependency
        tiled_should_retry = None
    if tiled_should_retry is not None and isinstance(exc, Exception):
        verdict = tiled_should_retry(exc)
        if verdict:
            return verdict
        import httpx

        if isinstance(exc, httpx.HTTPError):
            return False  # tiled says it is a refusal (a 4xx, a malformed request)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return isinstance(exc, _operational_errors() + _redis_errors())


class RetryPolicy:
    """A named set of stamina settings (attempts, total timeout, backoff).

    Parameters
    ----------
    name : str
        The policy's name, for logs.
    attempts : int or None
        Most attempts (``None``: bounded by ``timeout`` only).
    timeout : float or None
        Most seconds for all attempts together (``None``: bounded by ``attempts`` only).
    wait_initial : float
        First backoff (s).
    wait_max : float
        Longest backoff (s).
    wait_jitter : float
        Random extra backoff (s).
    """

    def __init__(self, name: str, *, attempts: int | None, timeout: float | None,
                 wait_initial: float, wait_max: float, wait_jitter: float = 0.1) -> None:
        self.name = name
        self.kwargs: dict[str, Any] = {"attempts": attempts, "timeout": timeout,
                                       "wait_initial": wait_initial, "wait_max": wait_max,
                                       "wait_jitter": wait_jitter}

    def __repr__(self) -> str:
        return f"RetryPolicy({self.name!r}, {self.kwargs})"


SERVICE = RetryPolicy("service", attempts=5, timeout=30.0, wait_initial=0.2, wait_max=5.0)
"""A request to a service: up to 5 tries within 30 s, waits from 0.2 s doubling to 5 s."""


def retrying(policy: RetryPolicy = SERVICE, **overrides: Any) -> Iterator[Any]:
    """``for attempt in retrying(): with attempt: ...`` (stamina's ``retry_context``)."""
    return stamina.retry_context(on=should_retry, **{**policy.kwargs, **overrides})


def retry(policy: RetryPolicy = SERVICE, **overrides: Any) -> Callable[[F], F]:
    """Return a decorator that retries a function on :func:`should_retry` errors.

    The attempts and waits follow ``policy``; ``overrides`` (stamina keywords such as
    ``attempts``) replace its settings.
    """
    return stamina.retry(on=should_retry, **{**policy.kwargs, **overrides})
