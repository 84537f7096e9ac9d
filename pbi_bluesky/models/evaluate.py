"""Compare the default detector with the paper's pipeline and baselines on one split.

Normals are split (stratified by recipe, seeded) into training, calibration and test
parts; every anomaly goes to the test part. Each baseline is fitted on the training part
and thresholded by conformal p-values from the calibration part at the same ``alpha``,
so all detectors are judged with the same rule. The default detector is trained on
training + calibration normals (it holds out its own calibration split inside) unless a
trained model is given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from pbi_bluesky.models.baselines import BASELINES, make_baseline
from pbi_bluesky.models.calibration import conformal_p_values
from pbi_bluesky.models.detector import AnomalyDetector
from pbi_bluesky.models.fitted import PART_NAMES
from pbi_bluesky.models.settings import TrainingConfig

__all__ = ["EvaluationResult", "metrics_for", "evaluate_arrays", "format_report"]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Scores, verdicts and metrics of every detector on one test set."""

    labels: NDArray[np.int64]
    kinds: NDArray[np.str_]
    scores: dict[str, NDArray] = field(default_factory=dict)
    flagged: dict[str, NDArray] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    embedding: NDArray | None = None
    test_recipes: list[str] = field(default_factory=list)
    test_index: NDArray | None = None
    """Row of every test curve in the arrays given to :func:`evaluate_arrays`."""
    alpha: float = 0.01
    """The false-positive rate every detector was thresholded at."""
    detector: AnomalyDetector | None = None
    """The default detector that was evaluated (trained here unless given)."""


def metrics_for(labels: NDArray, scores: NDArray, flagged: NDArray,
                kinds: NDArray) -> dict[str, Any]:
    """Return AUC-ROC, AUPRC, precision, recall, F1 and FPR, overall and per anomaly kind.

    Parameters
    ----------
    labels
        1 for an anomaly, 0 for a normal.
    scores
        Anomaly scores (higher: more anomalous), for the AUCs.
    flagged
        The detector's decisions, for precision, recall, F1 and FPR.
    kinds
        Anomaly kind of each curve (``"normal"`` for normals); each kind is scored
        against all normals.
    """

    def block(y, s, f):
        tp = int(np.sum(f & (y == 1)))
        fp = int(np.sum(f & (y == 0)))
        fn = int(np.sum(~f & (y == 1)))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out = {"n": int(len(y)), "precision": precision, "recall": recall, "f1": f1,
               "fpr": fp / max(int(np.sum(y == 0)), 1)}
        if 0 < y.sum() < len(y):
            out["auc_roc"] = float(roc_auc_score(y, s))
            out["auprc"] = float(average_precision_score(y, s))
        return out

    result = {"overall": block(labels, scores, flagged), "per_kind": {}}
    normal = kinds == "normal"
    for kind in sorted(set(kinds) - {"normal"}):
        sel = normal | (kinds == kind)
        result["per_kind"][kind] = block(labels[sel], scores[sel], flagged[sel])
    return result


def _split(recipe_idx: NDArray, rng: np.random.Generator, fractions=(0.6, 0.2),
           n_fit: int | list[int] | None = None):
    """Per recipe: train, calibration and test indices.

    ``n_fit`` fixes train + cal: one count for every recipe, or one per recipe index.
    """
    train, cal, test = [], [], []
    for k in np.unique(recipe_idx):
        idx = rng.permutation(np.nonzero(recipe_idx == k)[0])
        if n_fit is not None:
            n_fit_k = n_fit if isinstance(n_fit, int) else n_fit[k]
            if n_fit_k >= len(idx):
                raise ValueError(f"n_fit_per_recipe={n_fit_k} leaves no test normals for a "
                                 f"recipe with {len(idx)} normals")
            share = fractions[0] / (fractions[0] + fractions[1])
            n_train = int(round(share * n_fit_k))
            n_cal = n_fit_k - n_train
        else:
            n_train = int(round(fractions[0] * len(idx)))
            n_cal = int(round(fractions[1] * len(idx)))
        train += list(idx[:n_train])
        cal += list(idx[n_train : n_train + n_cal])
        test += list(idx[n_train + n_cal :])
    return np.array(train), np.array(cal), np.array(test)


def evaluate_arrays(
    intensity: NDArray, sigma: NDArray, recipes: list[str], labels: NDArray, kinds: NDArray,
    *, detector: AnomalyDetector | None = None, training: TrainingConfig | None = None,
    baselines: tuple[str, ...] = tuple(BASELINES), alpha: float | None = None, seed: int = 0,
    progress: bool = False, n_fit_per_recipe: int | dict[str, int] | None = None,
    nproc: int = 1,
) -> EvaluationResult:
    """Run the comparison on curves already resampled to the model grid.

    ``nproc`` > 1 trains the network data-parallel in that many processes (DDP).

    Normals are split per recipe 60/20/20 into training, calibration and test, or, with
    ``n_fit_per_recipe`` (one count, or a count per recipe name), that many per recipe go
    to training + calibration (3:1) and the rest to the test split.

    Parameters
    ----------
    intensity, sigma
        Curves on the model grid and their uncertainties, shape (n, npt).
    recipes
        Recipe of each curve.
    labels, kinds
        1 for an anomaly, 0 for a normal, and the anomaly kind (``"normal"`` for normals).
    detector
        A fitted detector to judge; default: one is trained on the training and
        calibration normals with ``training``.
    training
        Settings of that detector; default ``TrainingConfig(alpha=alpha, seed=seed)``.
    baselines
        Names of the baselines compared (:data:`~.baselines.BASELINES`).
    alpha
        Level of the trained detector; every method is judged at the detector's alpha.
    seed
        Seed of the split (and of the default training).
    progress
        Show the training progress.
    n_fit_per_recipe
        See above.
    nproc
        See above.
    """
    from pbi_bluesky.profile import Profile

    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    kinds = np.asarray(kinds)
    normal_idx = np.nonzero(labels == 0)[0]
    recipe_names = sorted(set(recipes))
    recipe_idx = np.array([recipe_names.index(r) for r in recipes])
    n_fit = n_fit_per_recipe
    if isinstance(n_fit, dict):
        missing = sorted(set(recipe_names) - set(n_fit))
        if missing:
            raise ValueError(f"n_fit_per_recipe has no count for recipe(s) {missing}")
        n_fit = [int(n_fit[r]) for r in recipe_names]
    tr, ca, te = _split(recipe_idx[normal_idx], rng, n_fit=n_fit)
    train, cal = normal_idx[tr], normal_idx[ca]
    test = np.sort(np.concatenate([normal_idx[te], np.nonzero(labels == 1)[0]]))
    result = EvaluationResult(labels[test], kinds[test],
                              test_recipes=[recipes[i] for i in test], test_index=test)
    if detector is None:
        cfg = training or TrainingConfig(alpha=alpha, seed=seed)
        detector = AnomalyDetector(training=cfg)
        fit_idx = np.concatenate([train, cal])
        grid_q = detector.grid.q
        profiles = [Profile(grid_q, intensity[i], sigma[i]) for i in fit_idx]
        detector.fit(profiles, [recipes[i] for i in fit_idx], progress=progress, nproc=nproc)
    alpha = result.alpha = detector.alpha  # every detector is judged at the same alpha
    result.detector = detector
    verdicts = detector.score_arrays(intensity[test], sigma[test],
                                     [recipes[i] for i in test], explain="none")
    result.scores["pbi"] = np.array([v.score for v in verdicts])
    result.flagged["pbi"] = np.array([v.is_anomaly for v in verdicts])
    det_idx = np.array([detector.recipes.index(recipes[i]) for i in test])
    if len(detector.calibration_parts) and detector.models[0].subspaces:
        result.scores.update(ablations(detector, intensity[test], sigma[test], det_idx,
                                       result.flagged))
    result.embedding = detector._embed(intensity[test], sigma[test], det_idx)
    for name in baselines:
        model = make_baseline(name)
        model.fit(intensity[train], sigma[train], recipe_idx[train], len(recipe_names))
        cal_scores = model.score(intensity[cal], sigma[cal], recipe_idx[cal])
        scores = model.score(intensity[test], sigma[test], recipe_idx[test])
        result.scores[name] = scores
        result.flagged[name] = conformal_p_values(scores, cal_scores) <= alpha
    for name, scores in result.scores.items():
        result.metrics[name] = metrics_for(result.labels, scores, result.flagged[name],
                                           result.kinds)
    return result


def ablations(detector: AnomalyDetector, intensity: NDArray, sigma: NDArray,
              recipe_idx: NDArray, flagged: dict[str, NDArray]) -> dict[str, NDArray]:
    """Return ablation scores: each part of the default score alone, and the score without it.

    Rows are ``pbi_<part>_part`` (one part alone) and ``pbi_without_<part>`` (the score
    without that part), thresholded by the same conformal rule against the calibration
    normals' parts; ``flagged`` is filled in.

    Every row reuses the trained models (parts are recombined, nothing is retrained). For a
    cross-conformal detector the parts are averaged over its models and compared with the
    pooled out-of-fold parts, an approximation used for these rows only.
    """
    parts = detector.score_parts(intensity, sigma, recipe_idx)
    cal = detector.calibration_parts
    weights = detector.models[0].part_weights()
    out: dict[str, NDArray] = {}
    for j, part in enumerate(PART_NAMES):
        if weights[j] == 0 or cal.shape[1] <= j:
            continue
        out[f"pbi_{part}_part"] = parts[:, j]
        flagged[f"pbi_{part}_part"] = conformal_p_values(parts[:, j], cal[:, j]) <= detector.alpha
    if int((weights > 0).sum()) > 2:
        combine = detector.models[0]._combine
        for j, part in enumerate(PART_NAMES):
            if weights[j] == 0:
                continue
            w = weights.copy()
            w[j] = 0.0
            scores = combine(parts, w)
            out[f"pbi_without_{part}"] = scores
            flagged[f"pbi_without_{part}"] = (
                conformal_p_values(scores, combine(cal, w)) <= detector.alpha)
    return out


def format_report(result: EvaluationResult) -> str:
    """Text table of the overall metrics and per-kind AUC-ROC."""
    kinds = sorted(set(result.kinds) - {"normal"})
    head = f"{'detector':22}{'AUC':>7}{'AUPRC':>7}{'prec':>7}{'recall':>7}{'F1':>7}{'FPR':>7}"
    head += "".join(f"{k[:11]:>12}" for k in kinds)
    lines = [head, "-" * len(head)]
    for name, m in result.metrics.items():
        o = m["overall"]
        row = (f"{name:22}{o.get('auc_roc', float('nan')):7.3f}{o.get('auprc', float('nan')):7.3f}"
               f"{o['precision']:7.3f}{o['recall']:7.3f}{o['f1']:7.3f}{o['fpr']:7.3f}")
        row += "".join(f"{m['per_kind'][k].get('auc_roc', float('nan')):12.3f}" for k in kinds)
        lines.append(row)
    lines.append("(per-kind columns: AUC-ROC of that kind against the test normals)")
    return "\n".join(lines)


def plot_report(result: EvaluationResult, out_dir: str | Path) -> list[Path]:
    """ROC curves of every detector and a PCA map of the default detector's embeddings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, scores in result.scores.items():
        fpr, tpr, _ = roc_curve(result.labels, scores)
        auc = result.metrics[name]["overall"].get("auc_roc", float("nan"))
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(fontsize=8)
    ax.set_title("ROC on the test split")
    fig.tight_layout()
    roc_path = out / "roc.png"
    fig.savefig(roc_path, dpi=110)
    plt.close(fig)
    paths = [roc_path]
    if result.embedding is not None and len(result.embedding) > 2:
        xy = PCA(n_components=2).fit_transform(result.embedding)
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        recipes = sorted(set(result.test_recipes))
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(recipes)))
        for recipe, colour in zip(recipes, colours, strict=True):
            sel = np.array([r == recipe for r in result.test_recipes])
            ok = sel & (result.labels == 0)
            bad = sel & (result.labels == 1)
            ax.scatter(*xy[ok].T, s=12, color=colour, label=f"{recipe} normal")
            ax.scatter(*xy[bad].T, s=22, color=colour, marker="x", label=f"{recipe} anomaly")
        ax.set_title("embedding map (PCA of the 128-d embeddings)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        emb_path = out / "embedding_map.png"
        fig.savefig(emb_path, dpi=110)
        plt.close(fig)
        paths.append(emb_path)
    return paths
