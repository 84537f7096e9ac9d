"""Live anomaly detection inside Bluesky: the scoring callback and its verdict channel."""

from pbi_bluesky.live.callback import ANALYSIS_STREAM, ATTRIBUTION_STREAM, LiveScorer
from pbi_bluesky.live.channel import FrameResult, VerdictChannel
from pbi_bluesky.live.frames import AssetRegistry, FrameError, PathNotAllowed, image_keys
from pbi_bluesky.live.inbox import Inbox
from pbi_bluesky.live.remote import make_publisher, serve_remote_scorer

__all__ = [
    "ANALYSIS_STREAM",
    "ATTRIBUTION_STREAM",
    "AssetRegistry",
    "FrameError",
    "FrameResult",
    "Inbox",
    "LiveScorer",
    "PathNotAllowed",
    "VerdictChannel",
    "image_keys",
    "make_publisher",
    "serve_remote_scorer",
]
