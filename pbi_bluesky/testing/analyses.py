"""Analysis runs scored by a real model, written to a catalog without a beamline.

For tests and benchmarks of what reads analyses (``pbi review``, labels, recalibration):
the curves are scored by the model itself (:meth:`AnomalyDetector.score_arrays` and
:meth:`explain`, as the live scorer does) and written through the same
:class:`~pbi_bluesky.scoring.analysis.AnalysisRun` documents and ``TiledWriter`` as a live
session, so the catalog holds exactly what a beamline would leave there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from event_model import compose_run

from pbi_bluesky.scoring.analysis import AnalysisRun, explain_frame
from pbi_bluesky.scoring.result import FrameResult

__all__ = ["write_scored_run"]


def write_scored_run(runs: Any, model: Any, intensity: np.ndarray, sigma: np.ndarray,
                     recipe: str, *, model_info: dict[str, Any] | None = None,
                     md: dict[str, Any] | None = None, fail_reason: str | None = None,
                     writer: Any = None) -> tuple[str, str]:
    """Write a raw run (start/stop, no images) and its scored analysis run.

    Parameters
    ----------
    runs
        The ``runs`` container.
    model
        A trained detector.
    intensity, sigma
        Resampled curves on the model's grid, shape (frames, npt): one frame each.
    recipe
        The sample's nominal recipe.
    model_info
        ``path`` and ``model_sha256`` of the bundle (as the live scorer records them).
    md
        More raw start metadata (sample, slot, ...).
    fail_reason
        Record every frame as failed with this reason instead of scoring it.
    writer
        A callable taking ``(name, doc)`` (default: a ``TiledWriter`` on ``runs`` writing
        the curves as table columns, as a session does).

    Returns
    -------
    tuple of str
        The raw run's uid and the analysis run's uid.
    """
    if writer is None:
        from bluesky_tiled_plugins import TiledWriter

        from pbi_bluesky.store.curves import CURVES_IN_TABLE

        # the curves as table columns, as the session's writer (Catalog.writer) lays them
        writer = TiledWriter(runs, max_array_size=CURVES_IN_TABLE)
    intensity, sigma = np.atleast_2d(intensity), np.atleast_2d(sigma)
    raw = compose_run(metadata={"plan_name": "count", "composition": recipe,
                                "sample": "sample", "slot": 1, **(md or {})})
    writer("start", raw.start_doc)
    raw_stop = raw.compose_stop(exit_status="success")
    writer("stop", raw_stop)
    run = AnalysisRun.begin(raw.start_doc, model, dict(model_info or {}), {}, "pbi_anomaly",
                            "pbi_attribution")
    writer("start", run.bundle.start_doc)
    writer("descriptor", run.verdicts.descriptor_doc)
    writer("descriptor", run.explanations.descriptor_doc)
    uid = raw.start_doc["uid"]
    if fail_reason is None:
        verdicts = model.score_arrays(intensity, sigma, [recipe] * len(intensity),
                                      explain="none")
    else:
        verdicts = [None] * len(intensity)
    for seq, (verdict, inten, sig) in enumerate(zip(verdicts, intensity, sigma, strict=True)):
        if verdict is None:
            result = FrameResult(uid, seq + 1, "failed", reason=fail_reason,
                                 expected_composition=recipe)
            writer("event", run.record(result, None))
            continue
        result = FrameResult(uid, seq + 1, "scored", score=verdict.score,
                             threshold=verdict.threshold, is_anomaly=verdict.is_anomaly,
                             p_value=verdict.p_value, hyperscore=verdict.hyperscore,
                             predicted_composition=verdict.predicted_composition,
                             expected_composition=verdict.expected_composition)
        writer("event", run.record(result, (inten, sig)))
        if result.is_anomaly:
            status, features = explain_frame(model, result, inten, sig, recipe)
            writer("event", run.explained(result, status, features))
    writer("stop", run.stop_doc(len(intensity), raw_stop, 0))
    return uid, run.bundle.start_doc["uid"]
