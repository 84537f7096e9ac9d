"""The settings of a fit and the record of a score.

:class:`TrainingConfig` (stored in every model bundle) and :class:`Verdict` (one scored
profile). Shared by the default detector, the paper's pipeline and the bundle reader.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["TrainingConfig", "Verdict"]


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of :meth:`~.detector.AnomalyDetector.fit` (stored in the bundle).

    ``alpha=None`` is the default false-positive rate: 0.01 where the normals reach it,
    else the smallest of 0.02, 0.05, 0.1 they reach (see :mod:`~.conformal`); an alpha
    given explicitly that the normals cannot reach is a :class:`~.conformal.CalibrationError`.
    ``calibration`` is ``"auto"``, ``"split"`` or ``"cross"``; ``folds`` the K of
    cross-conformal calibration; ``negatives`` the synthetic negative kinds used in
    training (None: all of :data:`~.augment.NEGATIVES`); ``attributions=False`` skips the
    descriptor fits (no Shapley explanations, faster training).
    """

    epochs: int = 80
    batch_size: int = 128
    learning_rate: float = 1e-3
    margin: float = 0.3
    mining: str = "semi-hard"
    synthetic_per_normal: float = 1.0
    calibration_fraction: float = 0.3
    nu: float = 0.05
    alpha: float | None = None
    seed: int = 0
    subspace_components: int = 3
    subspace_weight: float = 3.0
    likelihood_components: int = 5
    likelihood_weight: float = 1.0
    # the low-q part counts one-sided (max(z, 0)): its spread on normals is about half that
    # of the two-sided parts, so weight 2 gives it the same say
    low_q_weight: float = 2.0
    calibration: str = "auto"
    folds: int = 5
    negatives: tuple[str, ...] | None = None
    attributions: bool = True

    def __post_init__(self) -> None:
        from pbi_bluesky.models.augment import NEGATIVES

        if self.negatives is not None:
            kinds = tuple(self.negatives)
            unknown = sorted(set(kinds) - set(NEGATIVES))
            if unknown:
                raise ValueError(f"unknown negative kind(s) {unknown}; known: {NEGATIVES}")
            object.__setattr__(self, "negatives", kinds)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a plain, JSON-ready dict (``negatives`` as a list)."""
        out = asdict(self)
        if self.negatives is not None:
            out["negatives"] = list(self.negatives)
        return out


@dataclass
class Verdict:
    """The result of scoring one profile."""

    score: float
    threshold: float
    is_anomaly: bool
    p_value: float
    hyperscore: float
    predicted_composition: str
    expected_composition: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the verdict as a plain dict."""
        return asdict(self)
