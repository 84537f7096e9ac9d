"""The analysis run every scorer writes for each raw run (live, bus, rescore).

One analysis run per raw run with images (``event_model.compose_run``): stream
``pbi_anomaly`` (one event per frame: status, verdict, reduced curve) and stream
``pbi_attribution`` (one event per flagged frame, later: fitted descriptors and Shapley
values). The start document carries the provenance (model sha256, reduction settings,
geometry); the stop document the frame ledger (``pbi_summary``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from event_model import compose_run

from pbi_bluesky.scoring.result import FrameResult

__all__ = ["AnalysisRun", "explain_frame"]

logger = logging.getLogger(__name__)

def _calibration(model: Any) -> dict[str, Any] | None:
    summary = getattr(model, "calibration_summary", None)
    if summary is None:
        return None
    try:
        return json.loads(json.dumps(summary(), default=float))
    except Exception:  # noqa: BLE001 - provenance is best effort, never fatal
        return None


def _data_keys(npt: int) -> dict[str, dict[str, Any]]:
    number = {"dtype": "number", "shape": [], "source": "pbi_bluesky"}
    string = {"dtype": "string", "shape": [], "source": "pbi_bluesky"}
    array = {"dtype": "array", "shape": [npt], "source": "pbi_bluesky", "dtype_numpy": "<f8"}
    return {
        "raw_seq_num": {**number, "dtype": "integer", "dtype_numpy": "<i8"},
        "status": string, "reason": string,
        "score": number, "threshold": number, "p_value": number, "hyperscore": number,
        "is_anomaly": {**number, "dtype": "boolean", "dtype_numpy": "|b1"},
        "predicted_composition": string, "expected_composition": string,
        "q": {**array, "units": "1/angstrom"}, "intensity": {**array, "units": "1/cm"},
        "sigma": {**array, "units": "1/cm"},
    }


_EXPLAIN_KEYS = {
    "raw_seq_num": {"dtype": "integer", "shape": [], "source": "pbi_bluesky",
                    "dtype_numpy": "<i8"},
    "status": {"dtype": "string", "shape": [], "source": "pbi_bluesky"},
    "top_attribution": {"dtype": "string", "shape": [], "source": "pbi_bluesky"},
    "attributions": {"dtype": "string", "shape": [], "source": "pbi_bluesky"},
    "features": {"dtype": "string", "shape": [], "source": "pbi_bluesky"},
}


@dataclass
class AnalysisRun:
    """Documents and the frame ledger of one analysis run."""

    raw_uid: str
    bundle: Any
    verdicts: Any
    explanations: Any
    q: np.ndarray
    threshold: float
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("scored", "failed", "shed", "flagged", "explained", "attribution_skipped"), 0))
    max_score: float = float("-inf")
    min_p_value: float = float("inf")
    seq: int = 0
    explain_seq: int = 0
    reasons: list[str] = field(default_factory=list)

    @classmethod
    def begin(cls, start: dict[str, Any], model: Any, model_info: dict[str, Any],
              reduction: dict[str, Any], stream: str, explain_stream: str, *,
              live: bool = True, extra: dict[str, Any] | None = None) -> AnalysisRun:
        """Compose the start document and both descriptors.

        ``live=False`` (a re-scoring of an archived run) leaves out ``pbi_analysis``, the
        key ``pbi flagged`` and the agent select live analyses by; ``extra`` adds keys.
        """
        metadata = {
            "pbi_analysis": True if live else None,
            "raw_uid": start["uid"],
            "raw_scan_id": start.get("scan_id"),
            "sample": start.get("sample"),
            "slot": start.get("slot"),
            "sample_type": start.get("sample_type"),
            "purpose": start.get("purpose"),
            "rescan_of": start.get("rescan_of"),
            "pbi_agent": start.get("pbi_agent"),
            "expected_composition": start.get("composition"),
            "beamline": start.get("beamline"),
            "model_path": model_info.get("path"),
            "model_sha256": model_info.get("model_sha256"),
            "model_registry": model_info.get("registry"),
            "model_registry_version": model_info.get("registry_version"),
            "model_origin": model_info.get("origin"),
            "model_recipes": list(model.recipes),
            "package_version": model_info.get("package_version"),
            "alpha": model.alpha,
            "threshold": model.threshold,
            "calibration": _calibration(model),
            "q_grid": {"q_min": model.grid.q_min, "q_max": model.grid.q_max,
                       "npt": model.grid.npt, "spacing": "log", "unit": "1/angstrom"},
            "reduction": {k: v for k, v in reduction.items()
                          if isinstance(v, (str, int, float, bool, type(None), list, dict))},
            **(extra or {}),
        }
        bundle = compose_run(metadata={k: v for k, v in metadata.items() if v is not None})
        config = {"pbi": {"data": {"model_sha256": model_info.get("model_sha256") or "",
                                   "threshold": float(model.threshold)},
                          "timestamps": {"model_sha256": time.time(), "threshold": time.time()},
                          "data_keys": {
                              "model_sha256": {"dtype": "string", "shape": [],
                                               "source": "pbi_bluesky"},
                              "threshold": {"dtype": "number", "shape": [],
                                            "source": "pbi_bluesky"}}}}
        verdicts = bundle.compose_descriptor(name=stream, data_keys=_data_keys(model.grid.npt),
                                             configuration=config)
        explanations = bundle.compose_descriptor(name=explain_stream, data_keys=_EXPLAIN_KEYS)
        return cls(start["uid"], bundle, verdicts, explanations, np.asarray(model.grid.q),
                   float(model.threshold))

    def record(self, result: FrameResult, resampled: tuple[np.ndarray, np.ndarray] | None
               ) -> dict:
        """Count one frame and compose its event."""
        key = "scored" if result.status in ("scored", "reference") else result.status
        self.counts[key] = self.counts.get(key, 0) + 1
        self.counts["flagged"] += int(result.is_anomaly)
        if np.isfinite(result.score):
            self.max_score = max(self.max_score, result.score)
        if np.isfinite(result.p_value):
            self.min_p_value = min(self.min_p_value, result.p_value)
        if result.reason and result.status != "reference":
            self.reasons.append(f"frame {result.raw_seq_num}: {result.reason}")
        nan = np.full(self.q.size, np.nan)
        intensity, sigma = resampled if resampled is not None else (nan, nan)
        data = {
            "raw_seq_num": result.raw_seq_num, "status": result.status,
            "reason": result.reason, "score": result.score, "threshold": result.threshold,
            "p_value": result.p_value, "hyperscore": result.hyperscore,
            "is_anomaly": result.is_anomaly,
            "predicted_composition": result.predicted_composition,
            "expected_composition": result.expected_composition,
            "q": self.q, "intensity": np.asarray(intensity), "sigma": np.asarray(sigma),
        }
        now = time.time()
        self.seq += 1
        # validate=False: event_model's jsonschema check of three 400-point curves cost
        # ~8 ms of CPU per frame; the layout is fixed here and checked by the tests
        return self.verdicts.compose_event(data=data, timestamps=dict.fromkeys(data, now),
                                           seq_num=self.seq, validate=False)

    def explanation(self, result: FrameResult, status: str,
                    features: dict[str, Any]) -> dict:
        """Compose one attribution event."""
        data = {"raw_seq_num": result.raw_seq_num, "status": status,
                "top_attribution": result.top_attribution,
                "attributions": json.dumps(result.attributions),
                "features": json.dumps(features)}
        self.explain_seq += 1
        return self.explanations.compose_event(
            data=data, timestamps=dict.fromkeys(data, time.time()), seq_num=self.explain_seq,
            validate=False)

    def explained(self, result: FrameResult, status: str, features: dict[str, Any]) -> dict:
        """Count one attribution outcome and compose its event.

        The outcome comes from :func:`explain_frame`.
        """
        self.counts["explained" if status == "explained" else "attribution_skipped"] += 1
        return self.explanation(result, status, features)

    def stop_doc(self, received: int, raw_stop: dict[str, Any], dropped_control: int,
                 extra: dict[str, Any] | None = None) -> dict:
        """Return the stop document with the frame ledger (``extra``: more summary entries)."""
        c = self.counts
        accounted = c["scored"] + c["failed"] + c["shed"]
        verdict = ("anomalous" if c["flagged"] else
                   "failed" if c["scored"] == 0 and received else "normal")
        summary = {
            "frames": received, "scored": c["scored"], "failed": c["failed"],
            "shed": c["shed"], "flagged": c["flagged"], "accounted": accounted,
            "explained": c["explained"], "attribution_skipped": c["attribution_skipped"],
            "max_score": self.max_score if np.isfinite(self.max_score) else None,
            "min_p_value": self.min_p_value if np.isfinite(self.min_p_value) else None,
            "verdict": verdict, "raw_exit_status": raw_stop.get("exit_status"),
            "failures": self.reasons[:20], "control_documents_dropped": dropped_control,
            **(extra or {}),
        }
        if accounted != received:
            logger.error("run %s: %d frames received but %d accounted for", self.raw_uid[:8],
                         received, accounted)
        stop = self.bundle.compose_stop(
            exit_status="success" if accounted == received else "fail",
            reason=json.dumps(summary))
        return {**stop, "pbi_summary": summary}


def explain_frame(model: Any, result: FrameResult, intensity: np.ndarray, sigma: np.ndarray,
                  recipe: str) -> tuple[str, dict[str, Any]]:
    """Explain one flagged frame: fitted descriptors and exact Shapley values.

    Fills ``result.attributions`` and ``result.top_attribution``; returns the status
    (``"explained"`` or ``"failed: ..."``) and the features. Never raises.
    """
    try:
        table = model.explain(intensity, sigma, recipe)
    except Exception as exc:  # noqa: BLE001 - a failed fit is reported, not fatal
        logger.info("attribution of frame %d failed: %s", result.raw_seq_num, exc)
        return f"failed: {exc}", {}
    result.attributions = {k: float(v["shapley"]) for k, v in table.items()}
    result.top_attribution = next(iter(result.attributions), "")
    features = {k: {"value": float(v["value"]), "z": float(v["z"])} for k, v in table.items()}
    return "explained", features
