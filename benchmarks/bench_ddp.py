"""Data-parallel training (``pbi train --nproc 2``) against one process, on bench_models' data.

Usage::

    python benchmarks/bench_ddp.py [--seeds 0 1 2] [--nproc 2]

For each seed, the PS/PMMA split of ``bench_models.py`` (200 normals per recipe, 100 of them
for training + calibration, 50 anomalies of each kind) is trained twice with the default
settings: once in one process and once with torch DistributedDataParallel over ``--nproc``
CPU processes (gloo), and both are scored on the same test split at the same alpha.
Reported per seed and as a mean: AUC-ROC, F1, false-positive rate, worst-kind AUC and the
network training time of each, and the DDP - one-process differences. "Within noise"
means the differences are no larger than the seed-to-seed spread of the one-process model
(printed beside them). Each process of the DDP run gets ``threads / nproc`` torch threads,
so both runs use the same cores. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_data import blends  # noqa: E402

from pbi_bluesky.models import TrainingConfig  # noqa: E402
from pbi_bluesky.models.evaluate import evaluate_arrays  # noqa: E402

KEYS = ("auc_roc", "f1", "fpr", "worst_kind_auc_roc")


def _row(result) -> dict:
    m = result.metrics["pbi"]
    per_kind = [v["auc_roc"] for v in m["per_kind"].values()]
    return {"auc_roc": m["overall"]["auc_roc"], "f1": m["overall"]["f1"],
            "fpr": m["overall"]["fpr"], "worst_kind_auc_roc": float(min(per_kind)),
            "train_seconds": result.detector.metrics["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {"nproc": args.nproc, "threads": args.threads, "seeds": {}}
    for seed in args.seeds:
        data = blends(seed)
        rows = {}
        for mode, nproc in (("one_process", 1), ("ddp", args.nproc)):
            t0 = time.perf_counter()
            result = evaluate_arrays(data["intensity"], data["sigma"], data["recipes"],
                                     data["labels"], data["kinds"],
                                     training=TrainingConfig(seed=seed), seed=seed,
                                     n_fit_per_recipe=100, baselines=(), nproc=nproc)
            rows[mode] = _row(result)
            rows[mode]["wall_seconds"] = round(time.perf_counter() - t0, 1)
            r = rows[mode]
            print(f"seed {seed} {mode:11}: AUC {r['auc_roc']:.4f} F1 {r['f1']:.3f} "
                  f"FPR {r['fpr']:.3f} worst kind {r['worst_kind_auc_roc']:.3f}; network "
                  f"trained in {r['train_seconds']:.1f} s", flush=True)
        out["seeds"][seed] = rows
    mean = {mode: {k: float(np.mean([out["seeds"][s][mode][k] for s in args.seeds]))
                   for k in (*KEYS, "train_seconds")} for mode in ("one_process", "ddp")}
    spread = {k: float(np.std([out["seeds"][s]["one_process"][k] for s in args.seeds]))
              for k in KEYS}
    diff = {k: mean["ddp"][k] - mean["one_process"][k] for k in KEYS}
    out.update(mean=mean, difference=diff, one_process_seed_spread=spread,
               # a spread needs two seeds at least; with one the verdict is left open
               within_noise=({k: abs(diff[k]) <= max(spread[k], 1e-3) for k in KEYS}
                             if len(args.seeds) > 1 else None),
               speed_up=mean["one_process"]["train_seconds"] / mean["ddp"]["train_seconds"])
    print("\nmean over seeds   AUC      F1      FPR    worst kind  train s")
    for mode in ("one_process", "ddp"):
        m = mean[mode]
        print(f"{mode:15} {m['auc_roc']:.4f}  {m['f1']:.3f}  {m['fpr']:.4f}  "
              f"{m['worst_kind_auc_roc']:.3f}      {m['train_seconds']:.1f}")
    print("difference      " + "  ".join(f"{k} {v:+.4f}" for k, v in diff.items()))
    print("seed spread (1p) " + "  ".join(f"{k} {v:.4f}" for k, v in spread.items()))
    verdict = out["within_noise"] or "needs 2 or more --seeds"
    print(f"within noise: {verdict}; training speed-up {out['speed_up']:.2f}x "
          f"(same {args.threads} cores)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
