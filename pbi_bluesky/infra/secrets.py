"""Secrets stay out of command lines, log lines and reprs.

* :func:`redact_url` turns ``redis://:pw@host:6379/0`` into ``redis://:***@host:6379/0``
  before a URL is logged or shown;
* :func:`env_secret` reads a secret from the environment variable a setting names (secrets
  never live in ``beamline.yaml`` nor on a command line, where ``/proc/PID/cmdline`` shows
  them to every local account).
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "env_secret", "redact_url"]

REDACTED = "***"
_SECRET_QUERY_KEYS = ("password", "api_key", "apikey", "token", "key", "secret")


def redact_url(url: str | None) -> str | None:
    """Return ``url`` with its secrets replaced by ``***``.

    Its password (``user:PASSWORD@``) and any key, token or password in the query string
    are replaced; anything else unchanged.

    Parameters
    ----------
    url
        Any URL (Redis, HTTP...); ``None`` passes through.

    Returns
    -------
    str or None
        The URL safe to log.
    """
    if not url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can take apart: show none of it
        return REDACTED
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if k.lower() in _SECRET_QUERY_KEYS else v)
                           for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def env_secret(name: str | None) -> str | None:
    """Return the value of the environment variable ``name``.

    ``None`` when it is unset or empty, or no name is given.
    """
    if not name:
        return None
    return os.environ.get(name) or None
