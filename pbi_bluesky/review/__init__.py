"""``pbi review``: the flagged runs of a catalog in a browser, with labels (issue 19)."""

from pbi_bluesky.review.app import ReviewData, build_app, normal_band

__all__ = ["ReviewData", "build_app", "normal_band"]
