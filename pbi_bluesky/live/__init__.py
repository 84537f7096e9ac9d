"""Live anomaly detection inside Bluesky: the scoring callback and its verdict channel."""

from pbi_bluesky.live.callback import ANALYSIS_STREAM, LiveScorer
from pbi_bluesky.live.channel import FrameResult, VerdictChannel
from pbi_bluesky.live.frames import AssetRegistry, FrameError, image_keys
from pbi_bluesky.live.remote import make_publisher, serve_remote_scorer

__all__ = [
    "ANALYSIS_STREAM",
    "AssetRegistry",
    "FrameError",
    "FrameResult",
    "LiveScorer",
    "VerdictChannel",
    "image_keys",
    "make_publisher",
    "serve_remote_scorer",
]
