"""Where the queue server's profile lives, and a client of a running RE Manager."""

from __future__ import annotations

from typing import Any

from pbi_bluesky.infra.resources import profile_dir

__all__ = ["PROFILE_DIR", "PUBLIC_KEY_ENV", "connect_api"]

PROFILE_DIR = profile_dir()
"""The profile folder: ``startup/``, ``user_group_permissions.yaml``, ``beamline.yaml``."""


PUBLIC_KEY_ENV = "QSERVER_ZMQ_PUBLIC_KEY"
"""The server's CurveZMQ public key, for clients (the variable ``qserver`` reads too)."""


def connect_api(zmq_control_addr: str, *, timeout_s: float = 5.0,
                public_key: str | None = None) -> Any:
    """Return a ``bluesky_queueserver_api.zmq.REManagerAPI`` for a control address.

    No HTTP server is needed; requests time out after ``timeout_s``.

    Parameters
    ----------
    zmq_control_addr
        ``tcp://host:port`` of the RE Manager's control socket.
    timeout_s
        Send and receive timeout of each request.
    public_key
        The server's CurveZMQ public key when its control channel is encrypted (default:
        ``QSERVER_ZMQ_PUBLIC_KEY`` from the environment, if set).
    """
    import os

    from bluesky_queueserver_api.zmq import REManagerAPI

    public_key = public_key or os.environ.get(PUBLIC_KEY_ENV) or None
    return REManagerAPI(zmq_control_addr=zmq_control_addr, timeout_recv=float(timeout_s),
                        timeout_send=float(timeout_s), zmq_public_key=public_key)
