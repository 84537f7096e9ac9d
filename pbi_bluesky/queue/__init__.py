"""The beamline through bluesky-queueserver: the RE Manager running the project's profile
(:class:`REManager`) and the plans as the queue server offers them
(:mod:`pbi_bluesky.queue.plans`)."""

from pbi_bluesky.queue.server import PROFILE_DIR, REManager, connect_api

__all__ = ["PROFILE_DIR", "REManager", "connect_api"]
