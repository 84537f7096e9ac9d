"""A live plot of the scorer's results: each frame's score and its reduced I(q).

Add it as a sink of the :class:`~pbi_bluesky.live.LiveScorer`
(``LiveScorer(..., sinks=[ScorePlot()])``); it follows the analysis documents. It is a
bluesky ``QtAwareCallback``, so with a Qt backend the drawing happens on the main thread,
as bluesky's own ``LivePlot`` does; with a non-interactive backend it can save a PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from bluesky.callbacks.mpl_plotting import QtAwareCallback

__all__ = ["ScorePlot"]

logger = logging.getLogger(__name__)


class ScorePlot(QtAwareCallback):
    """Score per frame (threshold dashed, flagged frames red) and I(q) per frame.

    Parameters
    ----------
    stream
        The analysis stream holding the verdicts.
    max_curves
        Curves kept on the I(q) axes (the oldest are removed).
    fig
        A matplotlib figure to draw into (default: a new one).
    """

    def __init__(self, stream: str = "pbi_anomaly", *, max_curves: int = 30,
                 fig: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stream, self.max_curves = stream, int(max_curves)
        self._fig = fig
        self._descriptors: set[str] = set()
        self._points: list[tuple[float, bool]] = []
        self._threshold: float | None = None
        self._label = ""
        self.frames_plotted = 0

    def _axes(self) -> tuple[Any, Any]:
        import matplotlib.pyplot as plt

        if self._fig is None:
            self._fig = plt.figure("pbi live scores", figsize=(11, 4.2))
        if not self._fig.axes:
            ax_s, ax_q = self._fig.subplots(1, 2)
            ax_s.set_xlabel("frame")
            ax_s.set_ylabel("anomaly score")
            ax_q.set_xlabel("q (1/Å)")
            ax_q.set_ylabel("I(q) (1/cm)")
            ax_q.set_xscale("log")
            ax_q.set_yscale("log")
        return self._fig.axes[0], self._fig.axes[1]

    def start(self, doc: dict[str, Any]) -> None:
        """Take the sample label and the threshold from an analysis run's start."""
        self._label = f"{doc.get('sample') or ''} slot {doc.get('slot')}"
        self._threshold = doc.get("threshold")

    def descriptor(self, doc: dict[str, Any]) -> None:
        """Remember the descriptors of the verdict stream (others are not plotted)."""
        if doc.get("name") == self.stream:
            self._descriptors.add(doc["uid"])

    def event(self, doc: dict[str, Any]) -> None:
        """Plot a scored frame's score and its I(q) (other statuses are skipped)."""
        if doc.get("descriptor") not in self._descriptors:
            return
        data = doc["data"]
        if data.get("status") != "scored":
            return
        flagged = bool(data.get("is_anomaly"))
        self._points.append((float(data.get("score", np.nan)), flagged))
        ax_s, ax_q = self._axes()
        scores = np.array([p[0] for p in self._points])
        flags = np.array([p[1] for p in self._points])
        x = np.arange(1, len(scores) + 1)
        ax_s.cla()
        ax_s.set_xlabel("frame")
        ax_s.set_ylabel("anomaly score")
        ax_s.plot(x, scores, color="0.6", lw=0.8)
        ax_s.scatter(x[~flags], scores[~flags], s=12, color="tab:blue", label="normal")
        ax_s.scatter(x[flags], scores[flags], s=18, color="crimson", label="flagged")
        if self._threshold is not None and np.isfinite(self._threshold):
            ax_s.axhline(self._threshold, ls="--", color="k", lw=0.8, label="threshold")
        ax_s.legend(fontsize=7, loc="upper left")
        q, i = np.asarray(data.get("q", [])), np.asarray(data.get("intensity", []))
        if q.size and i.size == q.size:
            ax_q.plot(q, np.clip(i, 1e-4, None), lw=1.6 if flagged else 0.8,
                      color="crimson" if flagged else "0.5",
                      label=self._label if flagged else None)
            while len(ax_q.lines) > self.max_curves:
                ax_q.lines[0].remove()
            if flagged:
                ax_q.legend(fontsize=7)
        self.frames_plotted += 1
        self._fig.canvas.draw_idle()

    def save(self, path: str | Path) -> Path:
        """Write the current figure as a PNG."""
        self._axes()
        path = Path(path)
        self._fig.savefig(path, dpi=100)
        return path
