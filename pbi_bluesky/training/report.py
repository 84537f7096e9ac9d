"""The training report written into a bundle by ``pbi model train``.

It is what a person checks before promoting a model.

``report.html`` (self-contained but for its PNG figures beside it) and ``report.json`` (the
same numbers):

* the normals' curves per recipe: median and the 5-95 % band on the model's q grid
  (``curves.png``), with the relative spread per recipe;
* the embedding map: the network's embedding of every training normal projected on its
  first two principal components (``embedding.png``), coloured by recipe;
* the calibration: method, size per recipe, smallest reachable p-value, threshold;
* the expected false-positive rate per recipe with its bound: split conformal calls a
  normal curve anomalous with probability ``k / (n + 1)`` (``k`` calibration ranks
  flaggable out of ``n``: at most alpha), and the rate this particular calibration gives is
  Beta(k, n + 1 - k) distributed: its 95 % upper bound is reported, with the risk that it
  exceeds alpha plus the tolerance;
* the runs refused, and why (training from Tiled).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from pbi_bluesky.profile import Profile

__all__ = ["REPORT_FILES", "write_report"]

REPORT_FILES = ("report.html", "report.json", "curves.png", "embedding.png")


def _fpr_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    from scipy.stats import beta

    sizes = summary.get("n_calibration_per_recipe") or {}
    rows = []
    for group, level in (summary.get("flag_level") or {}).items():
        n = int(summary["n_calibration"] if group == "all" else sizes.get(group, 0))
        k = int(round(level * (n + 1)))
        upper = float(beta.ppf(0.95, k, n + 1 - k)) if k > 0 else 0.0
        rows.append({"recipe": group, "n_calibration": n, "expected_fpr": float(level),
                     "fpr_upper_95": upper, "alpha": summary.get("alpha"),
                     "risk_fpr_above_alpha_plus_tolerance":
                         (summary.get("fpr_risk") or {}).get(group),
                     "tolerance": summary.get("fpr_tolerance")})
    return rows


def _curves(detector: Any, intensity: np.ndarray, recipes: list[str], path: Path
            ) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = detector.grid.q
    spread = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for recipe in sorted(set(recipes)):
        rows = intensity[[r == recipe for r in recipes]]
        lo, mid, hi = np.percentile(rows, [5, 50, 95], axis=0)
        line = ax.plot(q, mid, label=f"{recipe} (n={len(rows)})")[0]
        ax.fill_between(q, lo, hi, color=line.get_color(), alpha=0.25)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(np.abs(mid) > 0, (hi - lo) / (2 * np.abs(mid)), np.nan)
        spread[recipe] = {"frames": len(rows),
                          "median_relative_half_band": float(np.nanmedian(rel)),
                          "max_relative_half_band": float(np.nanmax(rel))}
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=max(1e-6, float(np.nanmin(np.abs(intensity))) or 1e-6))
    ax.set_xlabel("q (1/A)")
    ax.set_ylabel("I(q) (as reduced)")
    ax.set_title("training normals: median and 5-95 % band per recipe")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return spread


def _embedding(detector: Any, intensity: np.ndarray, sigma: np.ndarray, recipes: list[str],
               path: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.array([detector.recipes.index(r) for r in recipes])
    emb = np.asarray(detector._embed(intensity, sigma, idx), dtype=np.float64)
    centred = emb - emb.mean(0)
    _u, s, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T if vt.shape[0] >= 2 else np.c_[centred[:, :1], 0 * centred[:, :1]]
    explained = (s[:2] ** 2 / max(float((s ** 2).sum()), 1e-300)).tolist()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for recipe in sorted(set(recipes)):
        sel = idx == detector.recipes.index(recipe)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=12, label=recipe)
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f} %)")
    ax.set_ylabel(f"PC2 ({100 * (explained[1] if len(explained) > 1 else 0):.0f} %)")
    ax.set_title("embedding of the training normals (PCA)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"dimensions": int(emb.shape[1]), "pca_explained_variance": explained}


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out: str | Path, detector: Any, profiles: list[Profile], recipes: list[str],
                 *, refused: list[dict[str, Any]] | None = None,
                 source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``report.html``, ``report.json`` and the figures into the bundle folder ``out``.

    Parameters
    ----------
    out
        The bundle folder.
    detector
        The trained detector.
    profiles, recipes
        The training normals and their recipes.
    refused
        Runs refused (``uid``, ``sample``, ``reason``), when trained from Tiled.
    source
        How the normals were selected (Tiled selection, or the manifest).

    Returns
    -------
    dict
        The report's numbers (as in ``report.json``).
    """
    out = Path(out)
    intensity, sigma = detector.resample(profiles)
    summary = detector.calibration_summary()
    report: dict[str, Any] = {
        "source": source or {},
        "recipes": list(detector.recipes),
        "frames": len(profiles),
        "frames_per_recipe": {r: recipes.count(r) for r in sorted(set(recipes))},
        "q_grid": {"q_min": detector.grid.q_min, "q_max": detector.grid.q_max,
                   "npt": detector.grid.npt},
        "curves": _curves(detector, intensity, recipes, out / "curves.png"),
        "embedding": _embedding(detector, intensity, sigma, recipes, out / "embedding.png"),
        "calibration": {k: summary.get(k) for k in (
            "method", "mondrian", "folds", "n_calibration", "n_calibration_per_recipe",
            "alpha", "alpha_source", "smallest_p", "threshold", "validity")},
        "false_positive_rate": _fpr_rows(summary),
        "refused_runs": list(refused or []),
        "metrics": dict(getattr(detector, "metrics", {}) or {}),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    cal = report["calibration"]
    spread_rows = [{"recipe": k, **v} for k, v in report["curves"].items()]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>pbi_bluesky training "
        "report</title><style>body{font-family:sans-serif;max-width:60em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}"
        "</style></head><body>",
        "<h1>Training report</h1>",
        f"<p>{len(profiles)} normal frames, recipes {html.escape(str(report['recipes']))}; "
        f"q grid {detector.grid.q_min:.4g}..{detector.grid.q_max:.4g} 1/A "
        f"({detector.grid.npt} points).</p>",
        f"<p>Source: <code>{html.escape(json.dumps(report['source']))}</code></p>",
        "<h2>Normals per recipe and their spread</h2><img src='curves.png' alt='curves'>",
        _table(spread_rows, ["recipe", "frames", "median_relative_half_band",
                             "max_relative_half_band"]),
        "<h2>Embedding map</h2><img src='embedding.png' alt='embedding'>",
        "<h2>Calibration</h2>",
        f"<p>Method {html.escape(str(cal['method']))} "
        f"({'per recipe' if cal['mondrian'] else 'pooled over recipes'}), "
        f"{cal['n_calibration']} calibration normals "
        f"({html.escape(str(cal['n_calibration_per_recipe']))}); alpha {cal['alpha']} "
        f"({html.escape(str(cal['alpha_source']))}); smallest reachable p "
        f"{cal['smallest_p']:.4g}; threshold {cal['threshold']:.4g}.</p>",
        f"<p>{html.escape(str(cal['validity']))}</p>",
        "<h2>Expected false-positive rate</h2>",
        _table(report["false_positive_rate"], ["recipe", "n_calibration", "expected_fpr",
                                               "fpr_upper_95", "alpha",
                                               "risk_fpr_above_alpha_plus_tolerance"]),
        "<h2>Runs refused</h2>",
        _table(report["refused_runs"], ["uid", "sample", "reason"]) if report["refused_runs"]
        else "<p>None.</p>",
        "</body></html>",
    ]
    (out / "report.html").write_text("\n".join(parts))
    return report
