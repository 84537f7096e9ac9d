"""Normals from raw runs in Tiled: train on what the beamline measured, score a selection.

:func:`collect_normals` selects raw runs in a catalog (``KEY=VALUE`` queries on their start
documents and a time range, as ``pbi catalog rescore`` does), reads their frames back the way
re-scoring does (Tiled serves inline frames, Resource/Datum and StreamResource files alike:
:func:`~pbi_bluesky.scoring.tiled.run_frames`) and reduces each with the live scorer's own
:class:`~pbi_bluesky.scoring.engine.FrameScorer` in ``reduce_only`` mode: the run's recorded
geometry, its I0 and transmission readings, its ``thickness_cm`` and the empty-cell run
measured before it. The recipe is the start document's ``composition``.

A run that cannot be used is refused as a whole, with its reason, never dropped silently:
no geometry, no thickness, no recipe, no empty-cell run before it, a frame that cannot be
read or reduced, or a frame that does not cover the q grid. Frames are read ``chunk`` at a
time and dropped once reduced; only the 1D profiles are kept, so memory grows with the
number of frames by a few kilobytes each, never by a frame. A run costs four requests to
Tiled (its lookup, its streams, its image stream's parts, one read of its scalar table),
made for the next run on a thread while this one is reduced
(:class:`~pbi_bluesky.scoring.tiled.RunOpener`, one run ahead, no frame read ahead).

:func:`score_selection` answers "how would this model have judged these runs": one record
per frame, nothing written anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pbi_bluesky.models import CoverageError, QGrid
from pbi_bluesky.profile import Profile
from pbi_bluesky.scoring.engine import FrameScorer
from pbi_bluesky.scoring.tiled import FrameReads, RunOpener, run_frames
from pbi_bluesky.store.queries import cells_before, select_runs

__all__ = ["TiledNormals", "collect_normals", "score_selection", "selection_record"]

logger = logging.getLogger(__name__)


def selection_record(uri: str | None, query: tuple[str, ...] | list[str], since: Any,
                     until: Any) -> dict[str, Any]:
    """How runs were selected, as recorded in a bundle's ``model.json`` (no API key)."""
    return {"tiled": uri, "query": list(query),
            "since": None if since is None else str(since),
            "until": None if until is None else str(until)}


@dataclass
class TiledNormals:
    """Normal profiles collected from Tiled, and what became of every selected run.

    Attributes
    ----------
    profiles, recipes
        One reduced profile per frame of the runs used, and its recipe.
    used
        One entry per run learnt from: ``uid``, ``sample``, ``composition``, ``frames``.
    refused
        One entry per run refused: ``uid``, ``sample``, ``reason``.
    cells
        Uids of the empty-cell runs selected (backgrounds, not normals).
    selection
        The selection (:func:`selection_record`).
    reads
        Frames read from their files under the data roots and through Tiled's array
        endpoint, with the reasons for the latter (:class:`~pbi_bluesky.scoring.tiled.FrameReads`).
    """

    profiles: list[Profile] = field(default_factory=list)
    recipes: list[str] = field(default_factory=list)
    used: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)
    reads: FrameReads = field(default_factory=FrameReads)

    @property
    def run_uids(self) -> list[str]:
        """Uids of the runs learnt from, in the order read."""
        return [r["uid"] for r in self.used]

    def summary(self) -> dict[str, Any]:
        """Return the counts and reasons, for the command line and ``model.json``."""
        return {"selected": len(self.used) + len(self.refused) + len(self.cells),
                "used": len(self.used), "refused": len(self.refused),
                "empty_cells": len(self.cells), "frames": len(self.profiles),
                "per_recipe": {r: self.recipes.count(r) for r in sorted(set(self.recipes))},
                "refused_runs": list(self.refused), "reads": self.reads.as_dict()}


class _Backgrounds:
    """Empty-cell profiles by cell-run uid, each reduced once (its last frame)."""

    def __init__(self, runs: Any, scorer: FrameScorer, chunk: int,
                 reads: FrameReads | None = None) -> None:
        self.runs, self.scorer, self.chunk, self.reads = runs, scorer, chunk, reads
        self._done: dict[str, Profile | str] = {}

    def get(self, cell_uid: str) -> Profile | str:
        """Return the cell's profile, or the reason it cannot serve as a background."""
        if cell_uid not in self._done:
            profile: Profile | str = f"empty-cell run {cell_uid} has no usable frame"
            try:
                for batch in run_frames(self.scorer, self.runs[cell_uid], cell_uid,
                                        self.chunk, None, self.reads):
                    for outcome in self.scorer.process(batch):
                        if outcome.result.status == "reference" and outcome.profile is not None:
                            profile = outcome.profile
                        elif outcome.result.status == "failed":
                            profile = (f"empty-cell run {cell_uid} frame "
                                       f"{outcome.result.raw_seq_num}: {outcome.result.reason}")
            except Exception as exc:  # noqa: BLE001 - the run is refused with the reason
                profile = f"empty-cell run {cell_uid} unreadable: {type(exc).__name__}: {exc}"
            self._done[cell_uid] = profile
        return self._done[cell_uid]


def _run_profiles(scorer: FrameScorer, opened: Callable[[], Any], uid: str, chunk: int,
                  background: Profile, grid: QGrid | None, reads: FrameReads | None = None
                  ) -> tuple[list[Profile], str | None]:
    """Return a run's reduced profiles, or the reason the run is refused.

    ``opened()`` returns the run (its node, or :class:`~pbi_bluesky.scoring.tiled.OpenedRun`).
    """
    profiles: list[Profile] = []
    try:
        for batch in run_frames(scorer, opened(), uid, chunk, background, reads):
            for outcome in scorer.process(batch):
                result = outcome.result
                if result.status != "reduced" or outcome.profile is None:
                    return [], f"frame {result.raw_seq_num}: {result.reason or result.status}"
                if grid is not None:
                    try:
                        grid.resample(outcome.profile)
                    except CoverageError as exc:
                        return [], (f"frame {result.raw_seq_num} does not cover the q grid "
                                    f"{grid.q_min:.4g}..{grid.q_max:.4g} 1/A: {exc}")
                profiles.append(outcome.profile)
    except Exception as exc:  # noqa: BLE001 - an unreadable frame refuses its run
        return [], f"unreadable frame: {type(exc).__name__}: {exc}"
    if not profiles:
        return [], "no image frames in this run"
    return profiles, None


def collect_normals(runs: Any, scorer: FrameScorer, *, query: tuple[str, ...] | list[str] = (),
                    since: Any = None, until: Any = None, grid: QGrid | None = None,
                    chunk: int = 16, uri: str | None = None,
                    progress: Callable[[str, str | None], None] | None = None
                    ) -> TiledNormals:
    """Reduce the frames of the selected raw runs as normals (see the module docstring).

    Parameters
    ----------
    runs
        The catalog's runs container (:func:`~pbi_bluesky.store.runs_container`).
    scorer
        A ``FrameScorer(reduce_only=True, ...)`` holding the reduction settings (mask,
        dark, q bins, data keys; geometry only where runs do not record theirs).
    query, since, until
        The selection (``KEY=VALUE`` equality on start-document keys; start-time range).
    grid
        The model's q grid, if fixed already: a run with a frame that does not cover it
        is refused. ``None``: the caller chooses a grid the profiles cover.
    chunk
        Frames read at a time.
    uri
        The catalog's address, recorded in :attr:`TiledNormals.selection`.
    progress
        Called with (run uid, reason or ``None``) after each sample run.

    Returns
    -------
    TiledNormals
        The profiles, their recipes, the runs used and the runs refused with reasons.
    """
    if scorer.model is not None:
        raise ValueError("collect_normals needs a FrameScorer(reduce_only=True): normals are "
                         "reduced, not scored")
    selected = select_runs(runs, since=since, until=until, query=query)
    cells = cells_before(runs, selected)
    out = TiledNormals(selection=selection_record(uri, query, since, until))
    backgrounds = _Backgrounds(runs, scorer, chunk, out.reads)
    order = [uid for uid, start in selected
             if start.get("sample_type") != "empty_cell" and uid in cells]
    with RunOpener(scorer, runs, order) as opener:  # the next run's requests meanwhile
        for uid, start in selected:
            if start.get("sample_type") == "empty_cell":
                out.cells.append(uid)
                continue
            sample = start.get("sample")
            reason: str | None = None
            profiles: list[Profile] = []
            if uid not in cells:
                reason = ("no empty-cell run (sample_type='empty_cell') measured before it: "
                          "its profiles would include the cell's scattering")
            else:
                background = backgrounds.get(cells[uid])
                if isinstance(background, str):
                    reason = background
                else:
                    profiles, reason = _run_profiles(
                        scorer, lambda uid=uid: opener.get(uid), uid, chunk, background, grid,
                        out.reads)
            if reason is not None:
                out.refused.append({"uid": uid, "sample": sample, "reason": reason})
                logger.info("run %s (%s) refused: %s", uid[:8], sample, reason)
            else:
                recipe = str(start["composition"])
                out.profiles.extend(profiles)
                out.recipes.extend([recipe] * len(profiles))
                out.used.append({"uid": uid, "sample": sample, "composition": recipe,
                                 "frames": len(profiles)})
            if progress is not None:
                progress(uid, reason)
    return out


def score_selection(runs: Any, scorer: FrameScorer, *, query: tuple[str, ...] | list[str] = (),
                    since: Any = None, until: Any = None, chunk: int = 16
                    ) -> Iterator[dict[str, Any]]:
    """Score every frame of the selected raw runs with ``scorer``'s model; write nothing.

    Each sample run is reduced with the empty-cell run measured before it (none: no
    background, as the live scorer does before the first cell). Yields one record per
    frame: ``raw_uid``, ``seq_num``, ``sample``, ``composition``, ``status`` and either
    ``score``, ``p_value``, ``is_anomaly`` (status ``"scored"``), ``error`` (the reason a
    frame or its run could not be scored) or, for an empty-cell frame, status
    ``"reference"``.
    """
    if scorer.model is None:
        raise ValueError("score_selection needs a FrameScorer with a model")
    selected = select_runs(runs, since=since, until=until, query=query)
    cells = cells_before(runs, selected)
    backgrounds = _Backgrounds(runs, scorer, chunk)
    with RunOpener(scorer, runs, [uid for uid, _start in selected]) as opener:
        for uid, start in selected:
            base = {"raw_uid": uid, "sample": start.get("sample"),
                    "composition": start.get("composition")}
            background = None
            if uid in cells:
                found = backgrounds.get(cells[uid])
                if isinstance(found, str):
                    yield {**base, "seq_num": None, "status": "failed", "error": found}
                    continue
                background = found
            try:
                for batch in run_frames(scorer, opener.get(uid), uid, chunk, background):
                    for outcome in scorer.process(batch):
                        r = outcome.result
                        record = {**base, "seq_num": r.raw_seq_num, "status": r.status}
                        if r.status == "scored":
                            record.update(score=r.score, p_value=r.p_value,
                                          is_anomaly=bool(r.is_anomaly),
                                          predicted_composition=r.predicted_composition)
                        elif r.status != "reference":
                            record["error"] = r.reason or r.status
                        yield record
            except Exception as exc:  # noqa: BLE001 - the run's remaining frames are unreadable
                yield {**base, "seq_num": None, "status": "failed",
                       "error": f"unreadable frame: {type(exc).__name__}: {exc}"}
