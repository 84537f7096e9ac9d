"""The beamline through bluesky-queueserver.

The plans as the queue server offers them
(:mod:`pbi_bluesky.queue.plans`), the profile folder and an API client. The RE Manager
process itself is started by :class:`pbi_bluesky.testing.REManager`.
"""

from pbi_bluesky.queue.api import PROFILE_DIR, connect_api

__all__ = ["PROFILE_DIR", "connect_api"]
