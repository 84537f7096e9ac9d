"""Server-rendered SVG plots (matplotlib Agg): no JavaScript library in the page."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

__all__ = ["attribution_svg", "curve_svg"]


def _svg(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    return buf.getvalue()


def _figure(rows: int = 1, height: float = 3.2) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, height * rows))
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    return fig, axes


def curve_svg(q: np.ndarray, intensity: np.ndarray, sigma: np.ndarray,
              band: dict[str, np.ndarray] | None, title: str) -> bytes:
    """I(q) against the recipe's normal band, and the residual in units of the band.

    Parameters
    ----------
    q, intensity, sigma
        The frame's reduced curve on the model grid.
    band
        ``reference`` and ``scatter`` of the recipe (:func:`~.app.normal_band`), or None.
    title
        Figure title.
    """
    fig, (top, bottom) = _figure(2, 2.8)
    good = np.isfinite(intensity) & (intensity > 0)
    if band is not None:
        ref, spread = band["reference"], band["scatter"]
        lo = np.clip(ref - 2 * spread, ref * 1e-3, None)
        top.fill_between(q, lo, ref + 2 * spread, color="0.8", label="normal band (±2σ)")
        top.plot(q, ref, color="0.4", lw=1, label="recipe reference")
    top.errorbar(q[good], intensity[good], yerr=np.asarray(sigma)[good], fmt=".", ms=2,
                 color="C3", lw=0.5, label="this frame")
    top.set(xscale="log", yscale="log", ylabel="I(q) [1/cm]", title=title)
    top.legend(fontsize=7)
    if band is not None:
        z = (intensity - band["reference"]) / np.sqrt(np.asarray(sigma) ** 2
                                                      + band["scatter"] ** 2)
        bottom.axhspan(-2, 2, color="0.85")
        bottom.plot(q, z, color="C3", lw=1)
        bottom.set(ylabel="residual [σ]")
    else:
        bottom.text(0.5, 0.5, "no normal band: the model bundle is not readable here",
                    ha="center", va="center", transform=bottom.transAxes)
    bottom.set(xscale="log", xlabel="q [1/Å]")
    return _svg(fig)


def attribution_svg(attributions: dict[str, float], title: str) -> bytes:
    """Horizontal bars of the Shapley attributions of one flagged frame."""
    items = sorted(attributions.items(), key=lambda kv: abs(kv[1]))
    fig, (ax,) = _figure(1, 0.35 * max(len(items), 3) + 0.8)
    names = [k for k, _ in items]
    values = [v for _, v in items]
    ax.barh(names, values, color=["C3" if v > 0 else "C0" for v in values])
    ax.set(xlabel="Shapley attribution to the score", title=title)
    return _svg(fig)
