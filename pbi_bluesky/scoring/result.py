"""What happened to one frame: the record every scorer (live, bus, rescore) produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FrameResult"]


@dataclass
class FrameResult:
    """What happened to one frame: scored (with its verdict) or failed (with why)."""

    raw_uid: str
    raw_seq_num: int
    status: str  # "scored" | "failed" | "shed" | "reference" | "reduced" (no model)
    reason: str = ""
    score: float = float("nan")
    threshold: float = float("nan")
    is_anomaly: bool = False
    p_value: float = float("nan")
    hyperscore: float = float("nan")
    predicted_composition: str = ""
    expected_composition: str = ""
    top_attribution: str = ""
    attributions: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
