"""False-positive rate of the calibrated verdict on fresh normals, pooled and per recipe.

For each seed, the default detector is trained as in ``bench_models.py`` (100 simulated
PS/PMMA normals per recipe, alpha = 0.01, one pooled conformal calibration set), then
scores ``--fresh`` new normals per recipe from another random stream. The conformal
guarantee is for the pooled rate (on average over calibration sets, for the recipe mix of
the calibration set); the per-recipe rates show how far each recipe strays from it.

Usage: ``python benchmarks/bench_calibration.py [--seeds 0 1 2] [--fresh 400]``; the last
line is JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from bench_models import simulate  # noqa: E402  (benchmarks/ is the working directory)
from threadpoolctl import threadpool_limits

from pbi_bluesky.models import AnomalyDetector, TrainingConfig
from pbi_bluesky.profile import Profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fresh", type=int, default=400, help="fresh normals per recipe")
    parser.add_argument("--alpha", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(2)
    out: dict = {"alpha": args.alpha, "fresh_per_recipe": args.fresh, "seeds": {}}
    with threadpool_limits(2):
        for seed in args.seeds:
            intensity, sigma, recipes, labels, _, _ = simulate(seed, n_normal=100, n_anomaly=0)
            detector = AnomalyDetector(training=TrainingConfig(seed=seed, alpha=args.alpha))
            grid_q = detector.grid.q
            detector.fit([Profile(grid_q, a, b) for a, b in zip(intensity, sigma, strict=True)],
                         recipes, progress=False)
            f_int, f_sig, f_rec, *_ = simulate(1000 + seed, n_normal=args.fresh, n_anomaly=0)
            verdicts = detector.score_arrays(f_int, f_sig, f_rec, explain="none")
            flagged = np.array([v.is_anomaly for v in verdicts])
            rec = np.array(f_rec)
            per = {r: float(flagged[rec == r].mean()) for r in detector.recipes}
            out["seeds"][seed] = {"pooled": float(flagged.mean()), "per_recipe": per}
            print(f"seed {seed}: pooled FPR {flagged.mean():.4f} on {len(flagged)} fresh "
                  f"normals; per recipe " + ", ".join(f"{r} {v:.4f}" for r, v in per.items()),
                  flush=True)
    pooled = [s["pooled"] for s in out["seeds"].values()]
    per_all = [v for s in out["seeds"].values() for v in s["per_recipe"].values()]
    out["summary"] = {"pooled_mean": float(np.mean(pooled)), "pooled_max": float(max(pooled)),
                      "per_recipe_min": float(min(per_all)),
                      "per_recipe_max": float(max(per_all))}
    print(f"pooled FPR mean {np.mean(pooled):.4f} (max {max(pooled):.4f}) at alpha "
          f"{args.alpha}; per-recipe range {min(per_all):.4f}-{max(per_all):.4f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
