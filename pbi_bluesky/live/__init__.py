"""Live anomaly detection inside Bluesky: the scoring callback, its per-frame core (shared
with the bus workers of :mod:`pbi_bluesky.bus`) and its verdict channel."""

from pbi_bluesky.live.callback import ANALYSIS_STREAM, ATTRIBUTION_STREAM, LiveScorer
from pbi_bluesky.live.channel import FrameResult, VerdictChannel
from pbi_bluesky.live.core import FrameInput, FrameScorer, Outcome
from pbi_bluesky.live.frames import AssetRegistry, FrameError, PathNotAllowed, image_keys
from pbi_bluesky.live.inbox import Inbox
from pbi_bluesky.live.remote import make_publisher, serve_remote_scorer

__all__ = [
    "ANALYSIS_STREAM",
    "ATTRIBUTION_STREAM",
    "AssetRegistry",
    "FrameError",
    "FrameInput",
    "FrameResult",
    "FrameScorer",
    "Inbox",
    "LiveScorer",
    "Outcome",
    "PathNotAllowed",
    "VerdictChannel",
    "image_keys",
    "make_publisher",
    "serve_remote_scorer",
]
