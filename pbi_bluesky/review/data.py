"""What ``pbi review`` reads and writes: one catalog, and the bundles that scored its runs.

Its one job is the catalog side of the review page (:mod:`pbi_bluesky.review.app` serves
it): :class:`ReviewData` opens the catalog lazily and answers the page's questions (the
flagged runs, filtered; the failed analyses; one run's analysis, frames, attributions,
label and decision) and writes labels with the key it keeps; :func:`normal_band` reads the
recipe's reference curve and batch scatter from the model bundle that scored a run.
"""

from __future__ import annotations

import json
import logging
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FILTERS", "LIMIT", "ReviewData", "normal_band"]

logger = logging.getLogger(__name__)

FILTERS = ("recipe", "since", "decision", "label", "model", "limit")
"""The index's query parameters (:meth:`ReviewData.index` takes them as a dict)."""
LIMIT = 200
"""Flagged runs the index shows (the newest; ``?limit=N`` shows more)."""


@lru_cache(maxsize=16)
def _bundle_arrays(path: str, mtime: float) -> tuple[list[str], dict[str, np.ndarray]] | None:
    root = Path(path)
    try:
        doc = json.loads((root / "model.json").read_text())
        with np.load(root / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("references", "scatter")}
    except (OSError, KeyError, ValueError) as exc:
        logger.info("no normal band from %s: %s", path, exc)
        return None
    return list(doc["recipes"]), arrays


def normal_band(model_path: str | None, recipe: str | None) -> dict[str, np.ndarray] | None:
    """Return the recipe's reference curve and batch scatter.

    They come from the model bundle that scored the run (what its normals spread over);
    None where the bundle is not readable.

    Parameters
    ----------
    model_path
        The bundle folder recorded in the analysis run (``model_path``).
    recipe
        The sample's nominal recipe.
    """
    if not model_path or not recipe:
        return None
    try:
        mtime = (Path(model_path) / "arrays.npz").stat().st_mtime
    except OSError:
        return None
    found = _bundle_arrays(str(model_path), mtime)
    if found is None or recipe not in found[0]:
        return None
    k = found[0].index(recipe)
    return {"reference": found[1]["references"][k], "scatter": found[1]["scatter"][k]}


class ReviewData:
    """What the page reads and writes: one catalog, opened lazily.

    Parameters
    ----------
    tiled, api_key, data_dir
        The catalog (as ``pbi catalog flagged`` takes it); the key is kept here only.
    """

    def __init__(self, tiled: str | None = None, *, api_key: str | None = None,
                 data_dir: str | Path | None = None) -> None:
        self.tiled, self._api_key, self.data_dir = tiled, api_key, data_dir
        self._runs: Any = None
        self._lock = threading.Lock()

    @property
    def runs(self) -> Any:
        """The runs container (plain tiled containers; arrays read node by node)."""
        from pbi_bluesky.store import open_runs

        with self._lock:
            if self._runs is None:
                self._runs = open_runs(self.tiled, api_key=self._api_key,
                                       data_dir=self.data_dir, metadata_only=True,
                                       must_exist=True)
            return self._runs

    def check(self) -> None:
        """Open the catalog now (raises where it is missing or down)."""
        _ = self.runs

    def index(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        """Return the flagged runs newest first, filtered (keys of :data:`FILTERS`)."""
        from pbi_bluesky.store import flagged_runs

        try:
            limit = int(filters.get("limit") or LIMIT)
        except ValueError:
            raise ValueError(f"limit must be a whole number, got {filters['limit']!r}"
                             ) from None
        rows = flagged_runs(self.runs, limit=max(1, limit),
                            composition=filters.get("recipe") or None,
                            since=filters.get("since") or None,
                            decision=filters.get("decision") or None,
                            label=filters.get("label") or None,
                            model=filters.get("model") or None)
        return rows[::-1]

    def failed(self) -> list[dict[str, Any]]:
        """Analyses that scored no frame (newest first, at most 50), with their reasons."""
        from tiled.queries import Key

        from pbi_bluesky.store.search import search_metadata

        results = self.runs.search(Key("start.pbi_analysis") == True)  # noqa: E712
        results = results.search(Key("stop.pbi_summary.verdict") == "failed")
        out = []
        for uid, md in search_metadata(results.sort(("start.time", -1)), page_size=50):
            start, stop = md.get("start") or {}, md.get("stop") or {}
            out.append({"raw_uid": start.get("raw_uid"), "analysis_uid": uid,
                        "time": start.get("time"), "sample": start.get("sample"),
                        "failures": (stop.get("pbi_summary") or {}).get("failures", [])})
            if len(out) >= 50:
                break
        return sorted(out, key=lambda r: -(r["time"] or 0))

    def _node(self, *path: str) -> Any:
        """Return the node at ``path`` under the runs (one request), or None if missing."""
        try:
            return self.runs[path]
        except KeyError:
            return None

    def run(self, raw_uid: str, *, curves: bool = False, attributions: bool = True
            ) -> dict[str, Any] | None:
        """Return a raw run's analysis: start, stop, label, decision, frames, attributions.

        One search finds the analysis, labels and decisions (they all carry the raw
        run's uid) with their metadata only; the frame table is read by its path (no
        request per level of the tree).

        Parameters
        ----------
        raw_uid
            The raw run's uid.
        curves
            Also read the frames' q, intensity and sigma (the I(q) plot needs them, the
            page does not); else ``curves`` is None and ``has_curves`` says whether they
            are there.
        attributions
            Read the attribution table (else ``attributions`` is ``{}``).

        Returns
        -------
        dict or None
            ``analysis_uid``, ``start``, ``stop``, ``frames``, ``has_curves``, ``curves``,
            ``attributions`` (frame number -> feature -> value), ``label`` and
            ``decision`` (newest records' start documents, or None); None where the raw
            run has no analysis.
        """
        from tiled.queries import Key

        from pbi_bluesky.store.curves import analysis_frames
        from pbi_bluesky.store.labels import LABEL
        from pbi_bluesky.store.search import search_metadata

        # one query: the analyses, labels and decisions of a raw run all carry its uid
        related = list(search_metadata(self.runs.search(Key("start.raw_uid") == raw_uid)))

        def newest(keep: Any) -> tuple[str, dict[str, Any]] | None:
            chosen = [(uid, md) for uid, md in related if keep(md.get("start") or {})]
            return max(chosen, key=lambda f: f[1]["start"].get("time", 0), default=None)

        found = newest(lambda start: start.get("pbi_analysis") is True)
        if found is None:
            return None
        uid, md = found
        out: dict[str, Any] = {"analysis_uid": uid, "start": md["start"],
                               "stop": md.get("stop") or {}, "frames": [], "curves": None,
                               "has_curves": False, "attributions": {}}
        stream = self._node(uid, "pbi_anomaly")
        if stream is not None:
            # the curves as table columns (this version) or array nodes (older catalogs)
            frames = analysis_frames(stream, curves=curves)
            if frames.table is not None:
                out["frames"] = frames.table.to_dict("records")
            out["has_curves"] = frames.layout != "none"
            out["curves"] = frames.curves
        table = self._node(uid, "pbi_attribution", "internal") if attributions else None
        if table is not None:
            for row in table.read().to_dict("records"):
                try:
                    out["attributions"][int(row["raw_seq_num"])] = json.loads(
                        row["attributions"])
                except (ValueError, TypeError):
                    continue
        for key, purpose in (("label", LABEL), ("decision", "pbi_decision")):
            record = newest(lambda start, p=purpose: start.get("purpose") == p)
            out[key] = dict(record[1]["start"]) if record else None
        return out

    def label(self, raw_uid: str, label: str, note: str | None, by: str | None
              ) -> dict[str, Any]:
        """Write a label (:func:`~pbi_bluesky.store.labels.label_run`)."""
        from pbi_bluesky.store import label_run

        return label_run(self.runs, raw_uid, label, note=note, by=by)
