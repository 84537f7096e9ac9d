"""Detection quality and speed of the anomaly models, measured in one run.

Quality: for each seed, simulate PS/PMMA profiles (200 normals per recipe: 100 for
training + calibration, as in the paper, and 100 for the test split, so the false-positive
rate at alpha = 0.01 is measured on 500 test normals; 50 anomalies of every kind at
severities drawn uniformly in [0, 1]), then compare the default detector, the paper's
pipeline and the baselines on the same split (``pbi_bluesky.models.evaluate``).

Speed (2-core CPU, threads set explicitly): training time and peak memory, one profile
scored end to end (resample, embed, one-class SVM, p-value), batch throughput, and the
descriptor fit + exact Shapley attribution of a flagged profile.

Usage: ``python benchmarks/bench_models.py [--seeds 0 1 2]``; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from pbi_bluesky.models import AnomalyDetector, QGrid, TrainingConfig
from pbi_bluesky.models.evaluate import evaluate_arrays, format_report
from pbi_bluesky.simulate import (
    PS_PMMA,
    SAMPLE_ANOMALIES,
    Instrument,
    applicable_anomalies,
    apply_anomaly,
    nominal_state,
    simulate_profile,
)


def simulate(seed: int, n_normal: int = 200, n_anomaly: int = 50):
    rng = np.random.default_rng(seed)
    instrument = Instrument()
    grid = QGrid()
    rows = []
    for recipe in PS_PMMA.recipes:
        for _ in range(n_normal):
            rows.append((simulate_profile(nominal_state(PS_PMMA, recipe, rng), instrument, rng),
                         recipe, 0, "normal"))
    for kind in SAMPLE_ANOMALIES:
        recipes = [r for r in PS_PMMA.recipes if kind in applicable_anomalies(r)]
        for i in range(n_anomaly):
            recipe = recipes[i % len(recipes)]
            state = apply_anomaly(nominal_state(PS_PMMA, recipe, rng), kind, rng.uniform(), rng)
            rows.append((simulate_profile(state, instrument, rng), recipe, 1, kind))
    pairs = [grid.resample(p) for p, *_ in rows]
    return (np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]),
            [r[1] for r in rows], np.array([r[2] for r in rows]), np.array([r[3] for r in rows]),
            [r[0] for r in rows])


def speed(profiles, recipes, labels) -> dict[str, float]:
    normal = [i for i, y in enumerate(labels) if y == 0]
    train = [i for i in normal if (i % 200) < 100]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    detector = AnomalyDetector(training=TrainingConfig(seed=0)).fit(
        [profiles[i] for i in train], [recipes[i] for i in train], progress=False)
    train_s = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    one = profiles[normal[0]]
    for _ in range(20):
        detector.score([one], recipes[normal[0]], explain="none")
    times = []
    for _ in range(300):
        t = time.perf_counter()
        detector.score([one], recipes[normal[0]], explain="none")
        times.append(time.perf_counter() - t)
    intensity, sigma = detector.resample(profiles)
    reps = int(np.ceil(5000 / len(intensity)))
    big_i, big_s = np.tile(intensity, (reps, 1))[:5000], np.tile(sigma, (reps, 1))[:5000]
    exp = (recipes * reps)[:5000]
    t = time.perf_counter()
    detector.score_arrays(big_i, big_s, exp, explain="none")
    batch_s = time.perf_counter() - t
    t = time.perf_counter()
    detector.score_arrays(big_i, big_s, exp, explain="none", predict=False)
    batch_np_s = time.perf_counter() - t
    anomalies = [i for i, y in enumerate(labels) if y == 1][:40]
    att = []
    for i in anomalies:
        t = time.perf_counter()
        detector.explain(intensity[i], sigma[i], recipes[i])
        att.append(time.perf_counter() - t)
    return {
        "train_500_profiles_s": round(train_s, 2),
        "train_peak_rss_mb": round(max(rss1, rss0) / 1024, 1),
        "score_one_profile_median_ms": round(1e3 * float(np.median(times)), 3),
        "score_one_profile_p95_ms": round(1e3 * float(np.percentile(times, 95)), 3),
        "batch_profiles_per_s": round(5000 / batch_s, 1),
        "batch_profiles_per_s_without_recipe_prediction": round(5000 / batch_np_s, 1),
        "attribution_median_ms": round(1e3 * float(np.median(att)), 2),
        "attribution_p95_ms": round(1e3 * float(np.percentile(att, 95)), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(2)
    out: dict = {"threads": 2, "seeds": {}, "speed": {}}
    with threadpool_limits(2):
        for seed in args.seeds:
            intensity, sigma, recipes, labels, kinds, profiles = simulate(seed)
            result = evaluate_arrays(intensity, sigma, recipes, labels, kinds,
                                     training=TrainingConfig(seed=seed), seed=seed,
                                     n_fit_per_recipe=100)
            print(f"\n== seed {seed}: {int((labels == 0).sum())} normals, "
                  f"{int(labels.sum())} anomalies; test split only below ==")
            print(format_report(result))
            out["seeds"][seed] = result.metrics
            if seed == args.seeds[0]:
                out["speed"] = speed(profiles, recipes, labels)
    names = list(out["seeds"][args.seeds[0]])
    print("\n== mean over seeds (overall) ==")
    summary = {}
    for name in names:
        vals = {k: float(np.mean([out["seeds"][s][name]["overall"].get(k, np.nan)
                                  for s in args.seeds]))
                for k in ("auc_roc", "auprc", "precision", "recall", "f1", "fpr")}
        worst_kind = min(
            np.mean([out["seeds"][s][name]["per_kind"][k]["auc_roc"] for s in args.seeds])
            for k in out["seeds"][args.seeds[0]][name]["per_kind"])
        vals["worst_kind_auc_roc"] = float(worst_kind)
        summary[name] = vals
        print(f"{name:18} AUC {vals['auc_roc']:.3f}  F1 {vals['f1']:.3f}  "
              f"FPR {vals['fpr']:.3f}  worst-kind AUC {worst_kind:.3f}")
    out["summary"] = summary
    print("\n== speed ==")
    for k, v in out["speed"].items():
        print(f"{k:32} {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
