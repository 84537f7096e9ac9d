"""Finding flagged runs in the catalog."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pbi_bluesky.store.search import PAGE_SIZE, search_metadata

__all__ = ["DECISIONS", "RECORD_PURPOSES", "analysis_of", "cells_before", "decisions_of",
           "flagged_runs", "parse_query", "search_metadata", "select_runs", "to_epoch"]

DECISIONS = ("confirmed", "transient", "no verdict", "skipped", "failed")
"""What a ``pbi_decision`` record may say about a flagged raw run (the in-plan
``survey_and_rescan`` and the agent, ``pbi agent``, write them)."""


def to_epoch(since: datetime | float | str | None) -> float | None:
    """Return a time given as a datetime, an ISO string or epoch seconds, in epoch seconds."""
    if since is None:
        return None
    if isinstance(since, datetime):
        return since.timestamp()
    if isinstance(since, str):
        return datetime.fromisoformat(since).timestamp()
    return float(since)


def flagged_runs(
    runs: Any,
    *,
    composition: str | None = None,
    since: datetime | float | str | None = None,
    min_score: float | None = None,
    decision: str | None = None,
    label: str | None = None,
    model: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Raw runs whose live analysis flagged at least one frame, newest last.

    Parameters
    ----------
    runs
        The ``runs`` container (see :func:`~pbi_bluesky.store.open_runs`).
    composition
        Only samples with this nominal recipe.
    since
        Only analyses started at or after this time (datetime, ISO string or epoch s).
    min_score
        Only analyses whose highest frame score is at least this.
    decision
        Only raw runs with this decision (one of :data:`DECISIONS`, e.g. ``"confirmed"``).
    label
        Only raw runs whose newest label is this (one of
        :data:`~pbi_bluesky.store.labels.LABELS`), or ``"none"`` for unlabelled runs.
    model
        Only analyses by this model: a prefix of its sha256, or its path.
    limit
        Only the newest ``limit`` matching runs: the server sorts by start time and only
        the pages needed are read (the review page's index at 10^4 runs).

    Returns
    -------
    list of dict
        One row per flagged raw run. Each row carries ``decision`` (``None`` while
        undecided) and ``decision_uid``, the ``pbi_decision`` record linking the raw runs
        and analysis runs it rests on; ``label``, ``label_by``, ``label_note``,
        ``label_time`` and ``label_uid`` (the newest ``pbi_label`` record, ``None`` when
        unlabelled); ``p_value``, the smallest exact conformal p-value of its frames
        (floored at ``1/(n+1)``), and ``p_estimate``, the estimated p-value of its highest
        score from the fitted tail of the calibration scores
        (:func:`~pbi_bluesky.models.tail.tail_p_estimate`), which still ranks flags
        beyond the floor; ``model_sha256``.
    """
    from pbi_bluesky.models.tail import tail_p_estimate
    from pbi_bluesky.store.labels import LABELS, labels_of

    if decision is not None and decision not in DECISIONS:
        raise ValueError(f"decision must be one of {list(DECISIONS)}, got {decision!r}")
    if label is not None and label not in (*LABELS, "none"):
        raise ValueError(f"label must be one of {[*LABELS, 'none']}, got {label!r}")
    from tiled.queries import Comparison, Key

    results = runs.search(Key("start.pbi_analysis") == True)  # noqa: E712 - a Tiled query
    results = results.search(Comparison("gt", "stop.pbi_summary.flagged", 0))
    if composition is not None:
        results = results.search(Key("start.expected_composition") == composition)
    epoch = to_epoch(since)
    if epoch is not None:
        results = results.search(Comparison("ge", "start.time", epoch))
    if min_score is not None:
        results = results.search(Comparison("ge", "stop.pbi_summary.max_score", min_score))
    decided = decisions_of(runs)
    labelled = labels_of(runs)
    out: list[dict[str, Any]] = []
    if limit is not None and limit <= 0:
        return []
    if limit is not None:
        items = search_metadata(results.sort(("start.time", -1)),
                                page_size=min(limit, PAGE_SIZE))
    else:
        items = search_metadata(results)
    for uid, md in items:
        start, stop = md["start"], md.get("stop") or {}
        summary = stop.get("pbi_summary", {})
        record = decided.get(start.get("raw_uid"), {})
        if decision is not None and record.get("classification") != decision:
            continue
        tag = labelled.get(start.get("raw_uid"), {})
        if label is not None and (tag.get("label") or "none") != label:
            continue
        sha = start.get("model_sha256") or ""
        if model is not None and not (sha.startswith(model) or start.get("model_path") == model):
            continue
        tails = (start.get("calibration") or {}).get("tail") or {}
        tail = tails.get(start.get("expected_composition")) or tails.get("all")
        out.append({
            "raw_uid": start.get("raw_uid"),
            "analysis_uid": uid,
            "sample": start.get("sample"),
            "slot": start.get("slot"),
            "composition": start.get("expected_composition"),
            "time": start.get("time"),
            "verdict": summary.get("verdict"),
            "flagged": summary.get("flagged"),
            "frames": summary.get("frames"),
            "max_score": summary.get("max_score"),
            "rescan": start.get("rescan_of"),
            "decision": record.get("classification"),
            "decision_uid": record.get("uid"),
            "label": tag.get("label"),
            "label_by": tag.get("labelled_by"),
            "label_note": tag.get("note"),
            "label_time": tag.get("time"),
            "label_uid": tag.get("uid"),
            "p_value": summary.get("min_p_value"),
            "p_estimate": tail_p_estimate(tail, summary.get("max_score")),
            "model_sha256": sha or None,
        })
        if limit is not None and len(out) >= limit:
            break  # read no further page
    return sorted(out, key=lambda r: r["time"] or 0)


def decisions_of(runs: Any) -> dict[str, dict[str, Any]]:
    """Raw run uid -> start document of its newest ``pbi_decision`` record."""
    from tiled.queries import Key

    out: dict[str, dict[str, Any]] = {}
    for _, md in search_metadata(runs.search(Key("start.purpose") == "pbi_decision")):
        start = md.get("start") or {}
        raw = start.get("raw_uid")
        if raw and (raw not in out or start.get("time", 0) >= out[raw].get("time", 0)):
            out[raw] = start
    return out


def analysis_of(runs: Any, raw_uid: str) -> Any | None:
    """Return the analysis run of a raw run, if there is one."""
    from tiled.queries import Key

    results = runs.search(Key("start.pbi_analysis") == True)  # noqa: E712 - a Tiled query
    results = results.search(Key("start.raw_uid") == raw_uid)
    uids = list(results)
    return results[uids[0]] if uids else None


RECORD_PURPOSES = ("pbi_decision", "pbi_request", "pbi_agent_request")
"""Start-document ``purpose`` values of records that are not raw runs."""


def parse_query(item: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` as (key, value).

    The value is read as JSON where it parses (numbers, booleans), else kept as text.
    """
    if "=" not in item:
        raise ValueError(f"query {item!r}: expected KEY=VALUE")
    key, value = item.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def select_runs(runs: Any, *, since: Any = None, until: Any = None,
                query: list[str] | tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """Return the raw runs matching the selection, oldest first.

    Analyses and decision/request records are left out; each run comes as (uid, start
    document).
    """
    from tiled.queries import Comparison, Key

    results = runs
    if (t := to_epoch(since)) is not None:
        results = results.search(Comparison("ge", "start.time", t))
    if (t := to_epoch(until)) is not None:
        results = results.search(Comparison("le", "start.time", t))
    for item in query:
        key, value = parse_query(item)
        results = results.search(Key(key) == value)
    out = []
    for uid, node in results.items():
        start = node.metadata.get("start") or {}
        if start.get("pbi_analysis") or start.get("pbi_rescore") or \
                start.get("purpose") in RECORD_PURPOSES or start.get("raw_uid"):
            continue
        out.append((start.get("time") or 0.0, uid, start))
    return [(uid, start) for _t, uid, start in sorted(out, key=lambda r: (r[0], r[1]))]


def cells_before(runs: Any, selected: list[tuple[str, dict]]) -> dict[str, str]:
    """Return, for each selected sample run, the latest empty-cell run started before it.

    That is the background the live scorer would have subtracted, searched in the whole
    catalog.
    """
    from tiled.queries import Key

    cells = sorted((node.metadata["start"].get("time") or 0.0, uid) for uid, node in
                   runs.search(Key("sample_type") == "empty_cell").items()
                   if not node.metadata["start"].get("raw_uid"))
    out = {}
    for uid, start in selected:
        if start.get("sample_type") == "empty_cell":
            continue
        before = [c for t, c in cells if t < (start.get("time") or 0.0)]
        if before:
            out[uid] = before[-1]
    return out
