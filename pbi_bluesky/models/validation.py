"""A sanity check stored in ``model.json``: calibration normals against transformed copies.

It uses the same kinds of transforms the network was trained on, so it checks the fit, not
performance on real anomalies (``make bench-models`` measures that, with kinds training
never saw).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from pbi_bluesky.models.augment import TRANSFORMS, synthetic_anomaly

__all__ = ["synthetic_check"]


def synthetic_check(detector: Any, intensity: NDArray, sigma: NDArray, labels: NDArray,
                    folds: list[NDArray]) -> dict[str, Any]:
    """AUC and recall at alpha of calibration normals against transformed copies.

    The copies get the transforms of :mod:`~.augment` with another seed than training,
    scored by the model that did not train on the original curve (``folds[k]`` are the
    calibration normals of ``detector.models[k]``); recall uses the pooled threshold (the
    models agreeing on a score).

    Parameters
    ----------
    detector
        The fitted cross-conformal detector.
    intensity, sigma, labels
        Curves on the model grid, their uncertainties and recipe indices.
    folds
        Indices of the calibration normals of each of ``detector.models``.
    """
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(detector.training.seed + 1)
    q = detector.grid.q
    normal, fake = [], []
    for model, cal in zip(detector.models, folds, strict=True):
        copies = np.array([synthetic_anomaly(q, intensity[i], sigma[i],
                                             TRANSFORMS[j % len(TRANSFORMS)], rng)
                           for j, i in enumerate(cal)])
        normal.append(model._single_scores(intensity[cal], sigma[cal], labels[cal]))
        fake.append(model._single_scores(copies, sigma[cal], labels[cal]))
    normal_s, fake_s = np.concatenate(normal), np.concatenate(fake)
    flagged = fake_s > detector.threshold
    y = np.r_[np.zeros(len(normal_s)), np.ones(len(fake_s))]
    auc = roc_auc_score(y, np.r_[normal_s, fake_s])
    return {"what": "calibration normals vs transformed copies (scale, upturn, shift, "
                    "broaden, offset: the kinds of the training negatives, so not an "
                    "independent estimate)",
            "n": int(len(fake_s)), "auc_roc": round(float(auc), 4),
            "recall_at_alpha": round(float(flagged.mean()), 4)}
