"""Live anomaly detection inside Bluesky.

The scoring callback (:class:`LiveScorer`), its
inbox, attribution thread, verdict channel and verdict feed (Redis stream), the live plot
and the remote (0MQ) scorer. The per-frame engine it runs is :mod:`pbi_bluesky.scoring`,
shared with the bus workers.
"""

from pbi_bluesky.live.callback import LiveScorer
from pbi_bluesky.live.channel import VerdictChannel
from pbi_bluesky.live.feed import FeedReader, VerdictFeed
from pbi_bluesky.live.inbox import Inbox
from pbi_bluesky.live.remote import make_publisher, serve_remote_scorer
from pbi_bluesky.scoring import ANALYSIS_STREAM, ATTRIBUTION_STREAM, FrameResult

__all__ = [
    "ANALYSIS_STREAM",
    "ATTRIBUTION_STREAM",
    "FeedReader",
    "FrameResult",
    "Inbox",
    "LiveScorer",
    "VerdictChannel",
    "VerdictFeed",
    "make_publisher",
    "serve_remote_scorer",
]
