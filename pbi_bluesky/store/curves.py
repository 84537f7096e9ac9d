"""Read an analysis run's frames and reduced curves, whichever layout wrote them.

An analysis run's ``pbi_anomaly`` stream has one event per frame: the verdict (status,
score, ...) and the frame's reduced curve (``q``, ``intensity``, ``sigma``, 1-D arrays).

* This version writes the curves as list columns of the stream's table
  (:data:`CURVES_IN_TABLE`, ``TiledWriter(max_array_size=-1)``): 7 write requests per
  analysis run instead of 14 (``benchmarks/bench_tiled_writes.py``).
* Catalogs written by older versions (and bluesky-tiled-plugins' default, arrays of more
  than 16 elements) hold them as array nodes beside the table (``pbi_anomaly/intensity``).

Every reader of analysis runs goes through :func:`analysis_frames` or
:func:`analysis_curves`, which read both layouts, from a stream given as a plain tiled
``Container`` (``open_runs(metadata_only=True)``) or as bluesky-tiled-plugins' composite
stream client.

Reading a list column through tiled's dataframe client converts it to strings (dask's
``dataframe.convert-string``, on by default with pandas 3): the table is read here with that
conversion off, so the curves come back as the float64 arrays written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CURVES_IN_TABLE", "CURVE_KEYS", "AnalysisFrames", "analysis_curves",
           "analysis_frames"]

CURVE_KEYS = ("q", "intensity", "sigma")
"""The data keys of a frame's reduced curve in the ``pbi_anomaly`` stream."""

CURVES_IN_TABLE = -1
"""``TiledWriter``'s ``max_array_size`` that writes every array as a table column."""

TABLE = "internal"  # the stream's table node, as bluesky-tiled-plugins names it


@dataclass(frozen=True)
class AnalysisFrames:
    """One analysis stream read back.

    Attributes
    ----------
    table : pandas.DataFrame or None
        One row per frame (event), the stream's table without the curve columns; None when
        the stream has no table (no event was written).
    curves : dict of str to numpy.ndarray, or None
        ``q``, ``intensity`` and ``sigma``, float64 of shape (frames, points); None when
        the stream holds no curves.
    layout : str
        Where the curves were: ``"table"`` (list columns, this version), ``"arrays"``
        (array nodes, older versions) or ``"none"``.
    """

    table: Any
    curves: dict[str, np.ndarray] | None
    layout: str


def _base(stream: Any) -> Any:
    """Return the stream as a plain container (a composite client's ``.base``, no request)."""
    return getattr(stream, "base", stream)


def _read_table(table: Any, columns: list[str] | None = None) -> Any:
    """Read a tiled table with list columns kept as arrays (not dask's strings)."""
    import dask

    with dask.config.set({"dataframe.convert-string": False}):
        return table.read(columns=columns)


def _stack(column: Any) -> np.ndarray:
    """Stack a column of 1-D arrays (one per frame) into float64 (frames, points)."""
    rows = [np.asarray(v, dtype=np.float64) for v in column]
    if not rows:
        return np.empty((0, 0))
    return np.stack(rows)


def _from_arrays(base: Any) -> dict[str, np.ndarray]:
    return {k: np.atleast_2d(np.asarray(base[k].read(), dtype=np.float64))
            for k in CURVE_KEYS}


def analysis_frames(stream: Any, *, curves: bool = True) -> AnalysisFrames:
    """Read an analysis stream's table and curves (both layouts).

    New layout: one table read (the curves are columns of it). Old layout: the table and
    the three array nodes.

    Parameters
    ----------
    stream
        The ``pbi_anomaly`` node of an analysis run: a plain tiled ``Container`` or a
        composite (``BlueskyEventStream``) client.
    curves
        Also read the curves. With False the table is read without its curve columns and
        ``curves`` is None, while ``layout`` still says where the curves are (the review
        page's table needs no curves; its plot reads them).

    Returns
    -------
    AnalysisFrames
        The table without the curve columns, the curves, and which layout held them.
    """
    base = _base(stream)
    keys = set(base)
    table = None
    if TABLE in keys:
        node = base[TABLE]
        columns = list(getattr(node, "columns", None) or [])
        if not curves and set(CURVE_KEYS) <= set(columns):
            rest = [c for c in columns if c not in CURVE_KEYS]
            return AnalysisFrames(_read_table(node, rest), None, "table")
        table = _read_table(node)
        if set(CURVE_KEYS) <= set(table.columns):
            curves = {k: _stack(table[k]) for k in CURVE_KEYS}
            return AnalysisFrames(table.drop(columns=list(CURVE_KEYS)), curves, "table")
    if set(CURVE_KEYS) <= keys:
        return AnalysisFrames(table, _from_arrays(base) if curves else None, "arrays")
    return AnalysisFrames(table, None, "none")


def analysis_curves(stream: Any) -> dict[str, np.ndarray] | None:
    """Return an analysis stream's curves (both layouts), reading nothing else.

    Parameters
    ----------
    stream
        The ``pbi_anomaly`` node of an analysis run (plain ``Container`` or composite
        client).

    Returns
    -------
    dict of str to numpy.ndarray, or None
        ``q``, ``intensity`` and ``sigma``, float64 of shape (frames, points), frames in
        event order; None when the stream holds no curves.
    """
    base = _base(stream)
    keys = set(base)
    if set(CURVE_KEYS) <= keys:
        return _from_arrays(base)
    if TABLE in keys:
        table = base[TABLE]
        if set(CURVE_KEYS) <= set(table.columns):
            frame = _read_table(table, list(CURVE_KEYS))
            return {k: _stack(frame[k]) for k in CURVE_KEYS}
    return None
