"""False-positive rate and recall of the calibrated verdict at the training-set sizes users
have, and per recipe at the default model's size.

``grid`` (issue 9): one recipe (25:75) with 50, 100 and 300 normals, and five recipes with
30 each, at alpha 0.01 and 0.05 (and the default alpha where 0.01 is out of reach); each
model, trained with default settings otherwise, scores 2000 fresh normals (false-positive
rate) and 300 anomalies of the PS/PMMA kinds at severities uniform in [0.3, 1] (recall).

``recipes``: 100 normals per recipe (the default model's size) at alpha 0.01, default
calibration (a pooled split: 150 calibration normals) against cross-conformal calibration
(every normal calibrates, so each recipe has 100 and Mondrian calibration is possible);
pooled and per-recipe false-positive rates on 400 fresh normals per recipe.

Usage: ``python benchmarks/bench_calibration.py [--seeds 0 1 2] [--sections grid recipes]``;
the last line is JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from pbi_bluesky.models import AnomalyDetector, CalibrationError, QGrid, TrainingConfig
from pbi_bluesky.profile import Profile
from pbi_bluesky.simulate import (
    PS_PMMA,
    SAMPLE_ANOMALIES,
    Instrument,
    applicable_anomalies,
    apply_anomaly,
    nominal_state,
    simulate_profile,
)

ONE = "25:75"
CELLS = [("one", 50, None), ("one", 50, 0.01), ("one", 50, 0.05), ("one", 100, 0.01),
         ("one", 100, 0.05), ("one", 300, 0.01), ("one", 300, 0.05), ("five", 30, 0.01),
         ("five", 30, 0.05)]


def _arrays(profiles, grid):
    pairs = [grid.resample(p) for p in profiles]
    return np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])


def _population(rng, instrument, recipes, n_per, grid):
    profiles, labels = [], []
    for recipe in recipes:
        for _ in range(n_per):
            profiles.append(simulate_profile(nominal_state(PS_PMMA, recipe, rng), instrument,
                                             rng))
            labels.append(recipe)
    return profiles, labels


def _anomalies(rng, instrument, recipes, n, grid):
    profiles, labels = [], []
    kinds = [k for k in SAMPLE_ANOMALIES if k != "mislabelled"]
    for i in range(n):
        recipe = recipes[i % len(recipes)]
        usable = [k for k in kinds if k in applicable_anomalies(recipe)]
        state = apply_anomaly(nominal_state(PS_PMMA, recipe, rng), usable[i % len(usable)],
                              rng.uniform(0.3, 1.0), rng)
        profiles.append(simulate_profile(state, instrument, rng))
        labels.append(recipe)
    return _arrays(profiles, grid), labels


def _rates(detector, arrays, recipes):
    verdicts = detector.score_arrays(*arrays, recipes, explain="none")
    flagged = np.array([v.is_anomaly for v in verdicts])
    rec = np.array(recipes)
    return float(flagged.mean()), {r: float(flagged[rec == r].mean()) for r in sorted(set(recipes))}


def grid_section(seeds: list[int]) -> dict:
    grid, instrument = QGrid(), Instrument()
    out: dict = {}
    for seed in seeds:
        rng = np.random.default_rng(500 + seed)
        one_train, _ = _population(rng, instrument, [ONE], 300, grid)
        five_train, five_rec = _population(rng, instrument, PS_PMMA.recipes, 30, grid)
        one_fresh = _arrays(_population(rng, instrument, [ONE], 2000, grid)[0], grid)
        five_fresh_p, five_fresh_rec = _population(rng, instrument, PS_PMMA.recipes, 400, grid)
        five_fresh = _arrays(five_fresh_p, grid)
        one_bad = _anomalies(rng, instrument, [ONE], 300, grid)
        five_bad = _anomalies(rng, instrument, list(PS_PMMA.recipes), 300, grid)
        for population, n, alpha in CELLS:
            key = f"{population}x{n}@{alpha or 'default'}"
            if population == "one":
                train, rec = one_train[:n], [ONE] * n
                fresh, fresh_rec, bad = one_fresh, [ONE] * 2000, one_bad
            else:
                train, rec, fresh, fresh_rec, bad = (five_train, five_rec, five_fresh,
                                                     five_fresh_rec, five_bad)
            cfg = TrainingConfig(seed=seed, alpha=alpha, attributions=False)
            try:
                detector = AnomalyDetector(training=cfg).fit(train, rec, progress=False)
            except CalibrationError as exc:
                out.setdefault(key, {})[seed] = {"error": str(exc)}
                print(f"seed {seed} {key}: refused: {str(exc)[:110]}...", flush=True)
                continue
            fpr, per = _rates(detector, fresh, fresh_rec)
            recall, _ = _rates(detector, bad[0], bad[1])
            c = detector.calibration_summary()
            row = {"method": c["method"], "mondrian": c["mondrian"], "alpha": detector.alpha,
                   "n_calibration": c["n_calibration"], "smallest_p": c["smallest_p"],
                   "fpr": fpr, "fpr_per_recipe": per, "recall": recall}
            out.setdefault(key, {})[seed] = row
            print(f"seed {seed} {key}: {c['method']}{' Mondrian' if c['mondrian'] else ''}, "
                  f"alpha {detector.alpha}, {c['n_calibration']} calibration normals, smallest "
                  f"p {c['smallest_p']:.4f}: FPR {fpr:.4f} on {len(fresh_rec)} fresh normals"
                  f", recall {recall:.3f}", flush=True)
    summary = {}
    for key, per_seed in out.items():
        rows = [r for r in per_seed.values() if "error" not in r]
        if not rows:
            summary[key] = {"refused": True}
            continue
        summary[key] = {"method": rows[0]["method"], "alpha": rows[0]["alpha"],
                        "n_calibration": rows[0]["n_calibration"],
                        "fpr_mean": float(np.mean([r["fpr"] for r in rows])),
                        "fpr_max": float(max(r["fpr"] for r in rows)),
                        "recall_mean": float(np.mean([r["recall"] for r in rows]))}
    print("\n== small-data grid: mean (max) over seeds ==")
    for key, s in summary.items():
        if s.get("refused"):
            print(f"{key:18} refused (alpha out of reach): a clear error")
            continue
        print(f"{key:18} {s['method']:5} alpha {s['alpha']:<5} n_cal {s['n_calibration']:4}  "
              f"FPR {s['fpr_mean']:.4f} ({s['fpr_max']:.4f})  recall {s['recall_mean']:.3f}")
    return {"seeds": out, "summary": summary}


def recipes_section(seeds: list[int], fresh: int) -> dict:
    grid, instrument = QGrid(), Instrument()
    out: dict = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        train, rec = _population(rng, instrument, PS_PMMA.recipes, 100, grid)
        f_p, f_rec = _population(np.random.default_rng(1000 + seed), instrument,
                                 PS_PMMA.recipes, fresh, grid)
        f_arrays = _arrays(f_p, grid)
        for method in ("auto", "cross"):
            cfg = TrainingConfig(seed=seed, alpha=0.01, calibration=method, attributions=False)
            detector = AnomalyDetector(training=cfg).fit(
                [Profile(p.q_inv_angstrom, p.intensity, p.sigma) for p in train], rec,
                progress=False)
            pooled, per = _rates(detector, f_arrays, f_rec)
            c = detector.calibration_summary()
            label = f"{c['method']}{' Mondrian' if c['mondrian'] else ' pooled'}"
            out.setdefault(method, {})[seed] = {"calibration": label, "pooled": pooled,
                                                "per_recipe": per}
            print(f"seed {seed} {label}: pooled FPR {pooled:.4f} on {len(f_rec)} fresh normals; "
                  "per recipe " + ", ".join(f"{r} {v:.4f}" for r, v in per.items()),
                  flush=True)
    summary = {}
    for method, per_seed in out.items():
        pooled = [s["pooled"] for s in per_seed.values()]
        per_all = [v for s in per_seed.values() for v in s["per_recipe"].values()]
        summary[method] = {"calibration": next(iter(per_seed.values()))["calibration"],
                           "pooled_mean": float(np.mean(pooled)), "pooled_max": float(max(pooled)),
                           "per_recipe_min": float(min(per_all)),
                           "per_recipe_max": float(max(per_all))}
        s = summary[method]
        print(f"{s['calibration']:22} pooled FPR mean {s['pooled_mean']:.4f} (max "
              f"{s['pooled_max']:.4f}) at alpha 0.01; per-recipe range "
              f"{s['per_recipe_min']:.4f}-{s['per_recipe_max']:.4f}")
    return {"seeds": out, "summary": summary, "fresh_per_recipe": fresh}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sections", nargs="+", default=["grid", "recipes"],
                        choices=["grid", "recipes"])
    parser.add_argument("--fresh", type=int, default=400, help="fresh normals per recipe")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {"threads": args.threads}
    with threadpool_limits(args.threads):
        if "grid" in args.sections:
            out["grid"] = grid_section(args.seeds)
        if "recipes" in args.sections:
            out["recipes"] = recipes_section(args.seeds, args.fresh)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
