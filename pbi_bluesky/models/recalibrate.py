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

__all__ = ["add_calibration_normals"]


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
