"""People's labels of flagged runs: small ``pbi_label`` records in the same catalog.

A label says that a flagged raw run was a **false alarm** or a confirmed **defect**. It is a
detector-less run (a start and a stop document, ``event_model.compose_run``) in the
``runs`` container, beside the raw and analysis runs, and never edits them:

* ``purpose == "pbi_label"``, ``label`` (one of :data:`LABELS`), ``raw_uid``;
* who (``labelled_by``), when (the start document's ``time``), ``note``;
* which analysis it judges: ``analysis_uid``, ``model_sha256``, ``model_path``, and the
  recipe, sample and slot copied from the analysis run so searches find labels alone.

A run may be labelled more than once; the newest label counts (:func:`labels_of`), the
older ones stay as history.
"""

from __future__ import annotations

import getpass
import logging
from typing import Any

from event_model import compose_run

from pbi_bluesky.store.curves import CURVE_KEYS, analysis_curves

__all__ = ["LABEL", "LABELS", "LabelError", "label_run", "labelled_frames", "labels_of"]

logger = logging.getLogger(__name__)

LABEL = "pbi_label"
"""The ``purpose`` of a label record."""
LABELS = ("false-alarm", "defect")
"""What a person may say about a flagged run."""


class LabelError(ValueError):
    """A label that cannot be written: unknown run, a run never flagged, a bad label."""


def labels_of(runs: Any) -> dict[str, dict[str, Any]]:
    """Raw run uid -> start document of its newest ``pbi_label`` record.

    Parameters
    ----------
    runs
        The ``runs`` container (:func:`~pbi_bluesky.store.open_runs`).
    """
    from tiled.queries import Key

    from pbi_bluesky.store.search import search_metadata

    out: dict[str, dict[str, Any]] = {}
    for _, md in search_metadata(runs.search(Key("start.purpose") == LABEL)):
        start = md.get("start") or {}
        raw = start.get("raw_uid")
        if raw and (raw not in out or start.get("time", 0) >= out[raw].get("time", 0)):
            out[raw] = start
    return out


def labelled_frames(runs: Any, label: str) -> list[dict[str, Any]]:
    """Return the reduced frames of every run whose newest label is ``label``.

    The frames are read back from the labelled analysis run (its ``pbi_anomaly`` stream:
    ``q``, ``intensity``, ``sigma``, by :func:`~pbi_bluesky.store.curves.analysis_curves`,
    either layout); frames with non-finite values are left out, and so is
    a run whose analysis or curves are missing (it is listed in ``skipped``).

    Parameters
    ----------
    runs
        The ``runs`` container (:func:`~pbi_bluesky.store.open_runs`).
    label
        One of :data:`LABELS`.

    Returns
    -------
    list of dict
        One per labelled run, oldest label first: ``raw_uid``, ``analysis_uid``,
        ``recipe``, ``label`` (the record's start document) and ``profiles`` (a list of
        :class:`~pbi_bluesky.profile.Profile`); runs that could not be read carry
        ``profiles == []`` and ``skipped`` (why).
    """
    import numpy as np
    from tiled.queries import Key

    from pbi_bluesky.profile import Profile

    if label not in LABELS:
        raise LabelError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    out = []
    chosen = [(raw, rec) for raw, rec in labels_of(runs).items() if rec.get("label") == label]
    for raw_uid, record in sorted(chosen, key=lambda kv: kv[1].get("time", 0)):
        row: dict[str, Any] = {"raw_uid": raw_uid, "analysis_uid": record.get("analysis_uid"),
                               "recipe": record.get("expected_composition"),
                               "label": record, "profiles": []}
        out.append(row)
        found = runs.search(Key("start.raw_uid") == raw_uid)
        if not row["analysis_uid"] or row["analysis_uid"] not in found:
            row["skipped"] = "its analysis run is not in the catalog"
            continue
        node = found[row["analysis_uid"]]
        row["recipe"] = row["recipe"] or node.metadata["start"].get("expected_composition")
        # the curves as table columns (this version) or array nodes (older catalogs)
        curves = analysis_curves(node["pbi_anomaly"]) if "pbi_anomaly" in node else None
        if not row["recipe"] or curves is None:
            row["skipped"] = "no recipe or no reduced curves in its analysis"
            continue
        q, inten, sig = (curves[k] for k in CURVE_KEYS)
        for qi, ii, si in zip(q, inten, sig, strict=True):
            if np.isfinite(ii).all() and np.isfinite(si).all():
                row["profiles"].append(Profile(qi, ii, si, {"raw_uid": raw_uid}))
        if not row["profiles"]:
            row["skipped"] = "no finite frame in its analysis"
    return out


def _flagged_analysis(runs: Any, raw_uid: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Return the uid, start and stop documents of the analysis that flagged ``raw_uid``.

    That is the live analysis of ``raw_uid`` that flagged it (the newest if several);
    :class:`LabelError` when there is none.
    """
    from tiled.queries import Key

    results = runs.search(Key("start.pbi_analysis") == True)  # noqa: E712 - a Tiled query
    results = results.search(Key("start.raw_uid") == raw_uid)
    found = [(uid, node.metadata) for uid, node in results.items()]
    if not found:
        if raw_uid in runs:
            raise LabelError(f"raw run {raw_uid} has no live analysis in this catalog, so it "
                             f"was never flagged: only flagged runs can be labelled "
                             f"(`pbi catalog flagged` lists them)")
        raise LabelError(f"no run {raw_uid!r} in this catalog (give the full raw run uid; "
                         f"`pbi catalog flagged` lists the flagged ones)")
    flagged = [(uid, md["start"], md.get("stop") or {}) for uid, md in found
               if ((md.get("stop") or {}).get("pbi_summary") or {}).get("flagged")]
    if not flagged:
        raise LabelError(f"raw run {raw_uid} was never flagged (its analysis found no "
                         f"anomalous frame): only flagged runs can be labelled")
    return max(flagged, key=lambda f: f[1].get("time", 0))


def label_run(runs: Any, raw_uid: str, label: str, *, note: str | None = None,
              by: str | None = None, writer: Any = None) -> dict[str, Any]:
    """Write a label record for the flagged raw run ``raw_uid``; returns its start document.

    Parameters
    ----------
    runs
        The ``runs`` container (opened writable: with the API key where the server needs one).
    raw_uid
        The flagged raw run's uid.
    label
        One of :data:`LABELS`.
    note
        Free text (why).
    by
        Who labels (default: the login name).
    writer
        A callable ``(name, doc)`` taking the record's documents (default: a
        ``bluesky_tiled_plugins.TiledWriter`` on ``runs``).

    Raises
    ------
    LabelError
        If ``label`` is not one of :data:`LABELS`, ``raw_uid`` is not in the catalog, or
        its analysis never flagged it.
    """
    if label not in LABELS:
        raise LabelError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    analysis_uid, start, stop = _flagged_analysis(runs, raw_uid)
    try:
        by = by or getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers): say so
        by = "unknown"
    metadata = {
        "purpose": LABEL, "plan_name": "pbi label", "label": label, "raw_uid": raw_uid,
        "labelled_by": by, "note": note or "", "analysis_uid": analysis_uid,
        "model_sha256": start.get("model_sha256"), "model_path": start.get("model_path"),
        "expected_composition": start.get("expected_composition"),
        "sample": start.get("sample"), "slot": start.get("slot"),
        "max_score": (stop.get("pbi_summary") or {}).get("max_score"),
    }
    bundle = compose_run(metadata={k: v for k, v in metadata.items() if v is not None})
    if writer is None:
        from bluesky_tiled_plugins import TiledWriter

        writer = TiledWriter(runs)
    writer("start", bundle.start_doc)
    writer("stop", bundle.compose_stop(exit_status="success"))
    logger.info("labelled raw run %s %s (by %s)", raw_uid[:8], label, by)
    return dict(bundle.start_doc)
