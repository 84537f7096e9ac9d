"""``pbi review``: the flagged runs of a catalog in a browser, with labels (issue 19).

The catalog reads and label writes (:mod:`~pbi_bluesky.review.data`), the web app: routes
and HTML (:mod:`~pbi_bluesky.review.app`), its plots (:mod:`~pbi_bluesky.review.plots`).
"""

from pbi_bluesky.review.app import build_app
from pbi_bluesky.review.data import ReviewData, normal_band

__all__ = ["ReviewData", "build_app", "normal_band"]
