"""Recalibrate a trained detector with more calibration normals (issue 19, item 3).

Frames a person labelled false alarms are normals the calibration did not know. They join
the calibration set, scored out of sample (no model trained on them), and the conformal
thresholds follow; the network is not refitted.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pbi_bluesky.models.conformal import Calibration
from pbi_bluesky.profile import Profile

__all__ = ["add_calibration_normals", "flag_runs", "label_report", "unflagged_defects"]


def _levels(detector: Any) -> dict[str, dict[str, Any]]:
    s = detector.calibration_summary()
    per = s.get("n_calibration_per_recipe", {})
    out: dict[str, dict[str, Any]] = {}
    for name in detector.recipes:
        key = name if s.get("mondrian") else "all"
        out[name] = {"n": per.get(name, 0), "flag_level": s["flag_level"].get(key),
                     "fpr_risk": s["fpr_risk"].get(key),
                     "threshold": (s.get("threshold_per_recipe") or {}).get(
                         name, s.get("threshold"))}
    return out


def add_calibration_normals(detector: Any, profiles: list[Profile],
                            recipes: list[str]) -> list[dict[str, Any]]:
    """Add normals to ``detector``'s calibration in place; return a per-recipe table.

    Parameters
    ----------
    detector : AnomalyDetector
        A trained detector (its calibration is replaced).
    profiles : list of Profile
        The new normals (for example the frames of runs labelled false alarms).
    recipes : list of str
        Each profile's recipe; one the model was trained on.

    Returns
    -------
    list of dict
        Per recipe: ``recipe``, ``added``, old and new ``n``, ``flag_level`` (the expected
        false-positive rate), ``fpr_risk`` (the bound's risk) and ``threshold``.
    """
    if detector.calibration is None:
        raise ValueError("this detector is not trained (no calibration)")
    if len(profiles) != len(recipes) or not profiles:
        raise ValueError("give one recipe per profile, and at least one profile")
    idx = np.array([detector._recipe_index(r) for r in recipes], dtype=np.int64)
    before = _levels(detector)
    intensity, sigma = detector.resample(profiles)
    cal = detector.calibration
    k = cal.n_members
    member = np.arange(len(idx), dtype=np.int64) % k  # out of sample for every member
    scores = np.empty(len(idx))
    for m in range(k):
        sel = member == m
        if sel.any():
            scores[sel] = detector.models[m]._single_scores(intensity[sel], sigma[sel], idx[sel])
    parts = np.array([detector.models[m]._score_parts(intensity[i:i + 1], sigma[i:i + 1],
                                                      idx[i:i + 1])[0]
                      for i, m in enumerate(member)])
    detector.calibration = Calibration(
        cal.method, cal.mondrian, np.concatenate([cal.scores, scores]),
        np.concatenate([cal.member, member]), np.concatenate([cal.group, idx]), k,
        cal.alpha_source, cal.tolerance)
    if (len(detector.calibration_parts) == len(cal.scores)
            and detector.calibration_parts.shape[1:] == parts.shape[1:]):
        detector.calibration_parts = np.concatenate([detector.calibration_parts, parts])
    after = _levels(detector)
    return [{"recipe": name, "added": int((idx == g).sum()),
             **{f"old_{key}": v for key, v in before[name].items()},
             **{f"new_{key}": v for key, v in after[name].items()}}
            for g, name in enumerate(detector.recipes)]


def flag_runs(detector: Any, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score each labelled run's frames with ``detector``; a run is flagged if any frame is.

    Parameters
    ----------
    detector : AnomalyDetector
        The candidate model.
    groups : list of dict
        One per run, with ``raw_uid``, ``recipe`` and ``profiles`` (as
        :func:`~pbi_bluesky.store.labelled_frames` returns them). Runs with no profiles,
        or a recipe the model does not know, come back with ``flagged None`` and a
        ``skipped`` reason.

    Returns
    -------
    list of dict
        Per run: ``raw_uid``, ``recipe``, ``frames``, ``frames_flagged``, ``flagged``
        (bool or None), ``max_score`` and ``threshold`` (of its highest-scoring frame).
    """
    out = []
    for g in groups:
        row: dict[str, Any] = {"raw_uid": g["raw_uid"], "recipe": g.get("recipe"),
                               "frames": len(g.get("profiles") or []), "frames_flagged": 0,
                               "flagged": None, "max_score": None, "threshold": None}
        out.append(row)
        if g.get("skipped") or not g.get("profiles"):
            row["skipped"] = g.get("skipped") or "no frames"
            continue
        if g.get("recipe") not in detector.recipes:
            row["skipped"] = (f"recipe {g.get('recipe')!r} is not one this model was "
                              f"trained on")
            continue
        intensity, sigma = detector.resample(g["profiles"])
        verdicts = detector.score_arrays(intensity, sigma, [g["recipe"]] * len(intensity),
                                         explain="none")
        top = max(verdicts, key=lambda v: v.score)
        row.update(frames_flagged=int(sum(v.is_anomaly for v in verdicts)),
                   flagged=any(v.is_anomaly for v in verdicts),
                   max_score=float(top.score), threshold=float(top.threshold))
    return out


def label_report(detector: Any, defects: list[dict[str, Any]],
                 false_alarms: list[dict[str, Any]]) -> dict[str, Any]:
    """Recall on runs labelled defects and the rate still flagged of false-alarm runs.

    Parameters
    ----------
    detector : AnomalyDetector
        The candidate model.
    defects, false_alarms : list of dict
        Labelled runs with their frames (:func:`~pbi_bluesky.store.labelled_frames`).

    Returns
    -------
    dict
        ``defects``: ``runs`` (scored), ``flagged``, ``recall`` (None without runs),
        ``frames``, ``frames_flagged``; ``false_alarms``: ``runs``, ``flagged``,
        ``false_alarm_rate``, ``frames``, ``frames_flagged``; ``per_recipe``: the same
        counts per recipe; ``runs``: one row per labelled run (:func:`flag_runs`, with
        ``label``); ``skipped``: runs that could not be scored.
    """
    rows = ([{**r, "label": "defect"} for r in flag_runs(detector, defects)]
            + [{**r, "label": "false-alarm"} for r in flag_runs(detector, false_alarms)])

    def counts(selected: list[dict[str, Any]], rate: str) -> dict[str, Any]:
        scored = [r for r in selected if r["flagged"] is not None]
        n, k = len(scored), sum(bool(r["flagged"]) for r in scored)
        return {"runs": n, "flagged": k, rate: (k / n if n else None),
                "frames": sum(r["frames"] for r in scored),
                "frames_flagged": sum(r["frames_flagged"] for r in scored)}

    def both(selected: list[dict[str, Any]]) -> dict[str, Any]:
        return {"defects": counts([r for r in selected if r["label"] == "defect"], "recall"),
                "false_alarms": counts([r for r in selected if r["label"] == "false-alarm"],
                                       "false_alarm_rate")}

    recipes = sorted({r["recipe"] for r in rows if r["flagged"] is not None})
    return {**both(rows),
            "per_recipe": {name: both([r for r in rows if r["recipe"] == name])
                           for name in recipes},
            "runs": rows, "skipped": [r for r in rows if r.get("skipped")]}


def unflagged_defects(before: list[dict[str, Any]], after: list[dict[str, Any]]
                      ) -> dict[str, list[str]]:
    """Return, per recipe, the defect runs flagged ``before`` but not ``after``.

    Parameters
    ----------
    before, after : list of dict
        :func:`flag_runs` of the same labelled defects under the old and the new model.
    """
    was = {r["raw_uid"]: r for r in before if r["flagged"]}
    out: dict[str, list[str]] = {}
    for r in after:
        if r["raw_uid"] in was and r["flagged"] is False:
            out.setdefault(r["recipe"], []).append(r["raw_uid"])
    return out
