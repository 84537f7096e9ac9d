"""Where the queue server's profile lives, and a client of a running RE Manager."""

from __future__ import annotations

from typing import Any

from pbi_bluesky.infra.resources import profile_dir

__all__ = ["PROFILE_DIR", "connect_api"]

PROFILE_DIR = profile_dir()
"""The profile folder: ``startup/``, ``user_group_permissions.yaml``, ``beamline.yaml``."""


def connect_api(zmq_control_addr: str, *, timeout_s: float = 5.0) -> Any:
    """A ``bluesky_queueserver_api.zmq.REManagerAPI`` for a control address (no HTTP
    server needed); requests time out after ``timeout_s``."""
    from bluesky_queueserver_api.zmq import REManagerAPI

    return REManagerAPI(zmq_control_addr=zmq_control_addr, timeout_recv=float(timeout_s),
                        timeout_send=float(timeout_s))
